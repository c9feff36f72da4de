//! Stampede protection across processes (`#[cached(..., lock)]`).
//!
//! Within a process, single flight ([`crate::flight`]) already lets one caller per key
//! load. With `lock`, that local leader also coordinates with the other processes sharing
//! the Redis server:
//!
//! 1. It tries to take a lease, `SET <prefix>#load:{key} <token> NX PX <lease>`.
//! 2. The holder looks at the cache once more (a value may have landed meanwhile), runs the
//!    body while renewing the lease every third of it, stores the value, then releases the
//!    lease with a compare-and-delete script that also publishes on
//!    `<prefix>#filled:<key>` (`1`: stored, `0`: failed, `2:<token>`: an absent result the
//!    store confirmed, by the holder `<token>`).
//! 3. Everyone else subscribes (one pub/sub connection per cache), looks at the value and
//!    the lease's remaining time in one round trip, and sleeps until the message or the end
//!    of the lease, whichever comes first. On `1` it reads the value; on `0` or a lapsed
//!    lease (its holder died) it tries to take the lease itself. It takes `2:<token>` as its
//!    own answer only from the holder its last look saw, and only if that holder (or an
//!    earlier one it saw) had not begun to settle then; otherwise it reads for itself.
//! 4. Nobody waits longer than the builder's `lock_wait`: past it, or when Redis fails, the
//!    caller runs its own body. A hit never touches any of this.
//!
//! A caller that finds the lease held records its wait as a `cache.lock_wait` span (INFO,
//! inside its `cache.load`), with `cache.function`, `cache.key` (unless keys are redacted)
//! and, when the wait ends, `cache.outcome`: `woken` (another process's load answered),
//! `took_lease` (it loads under the lease after all), `timed_out` (past `lock_wait`: it
//! loads without the lease), `failed` (Redis failed: it loads without the lease).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::{record_key, Load};
use crate::core::CacheCore;
use crate::flight::{Landed, Leader};
use crate::log_limit::LogKind;
use crate::notify::Signal;
use crate::shape::Shape;
use crate::store::lease::{new_token, LeaseKind, Wakeup};

/// How a lock wait ended: the `cache.outcome` of its `cache.lock_wait` span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitEnd {
    Woken,
    TookLease,
    TimedOut,
    Failed,
}

impl WaitEnd {
    fn as_str(self) -> &'static str {
        match self {
            WaitEnd::Woken => "woken",
            WaitEnd::TookLease => "took_lease",
            WaitEnd::TimedOut => "timed_out",
            WaitEnd::Failed => "failed",
        }
    }
}

/// The `cache.lock_wait` span of one call, opened when it first finds the lease held.
struct Wait(Option<Span>);

impl Wait {
    /// The span, opened now if it is not yet (a child of the current `cache.load`).
    fn span(&mut self, core: &CacheCore, counters: &crate::stats::Counters, key: &str) -> Span {
        self.0
            .get_or_insert_with(|| {
                let span = tracing::info_span!(
                    "cache.lock_wait",
                    cache.function = counters.name(),
                    cache.key = Empty,
                    cache.outcome = Empty,
                );
                record_key(core, &span, key);
                span
            })
            .clone()
    }

    /// Records how the wait ended, if there was one.
    fn end(&self, end: WaitEnd) {
        if let Some(span) = &self.0 {
            span.record("cache.outcome", end.as_str());
        }
    }
}

impl<T> Load<'_, T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Whether a value read through the lease is older than the policy's TTL, by the write
    /// time in its header (values without one, `cr1` and plain JSON, cannot tell: they are
    /// taken as fresh, as a plain `GET` takes them).
    fn past_ttl(&self, entry: &crate::codec::Entry) -> bool {
        let Some(stamp) = crate::format::Stamp::of(&entry.json) else { return false };
        let age_ms = crate::format::now_ms().saturating_sub(stamp.written_ms);
        u128::from(age_ms) >= self.policy.ttl.as_millis()
    }

    /// Leads the flight under a cross-process lease (Redis only).
    pub(crate) async fn locked<S, R, Fut>(
        &self,
        load: impl FnOnce() -> Fut,
        leader: &mut Leader,
    ) -> R
    where
        S: Shape<R, Value = T>,
        Fut: Future<Output = R>,
    {
        let (core, counters, key) = (self.core, self.counters, self.key);
        let store = core.store();
        let settings = core.settings();
        let deadline = Instant::now() + settings.lock_wait;
        let token = new_token();
        // The first attempt follows a miss, so it tries the lease before looking again.
        let mut look_first = false;
        // Whether a look saw the lease held by a holder that had not begun to settle.
        let mut before_settling = false;
        // The holder whose absent result this call may take: the one its last look saw,
        // once `before_settling` (see the `Signal::Absent` arm below).
        let mut fresh_holder: Option<String> = None;
        let mut wait = Wait(None);
        loop {
            let woken = store.watch(LeaseKind::Load, key);
            if !look_first {
                match store.try_load_lease(key, &token, settings.lock_lease).await {
                    Ok(true) => {
                        wait.end(WaitEnd::TookLease);
                        drop(wait); // the wait ends here; the load runs in `cache.load`
                        let held = HeldLease {
                            core: Arc::clone(core),
                            key: key.to_owned(),
                            token: token.clone(),
                            done: false,
                        };
                        return self.holding::<S, R, Fut>(load, leader, held).await;
                    }
                    Ok(false) => {
                        wait.span(core, counters, key);
                    }
                    Err(error) => {
                        if let Some(suppressed) = core.log(LogKind::LoadFailed) {
                            let (key, error) = (core.shown(key), core.shown_error(&error, key));
                            tracing::warn!(%key, %error, suppressed, "could not take the load lock; loading without it");
                        }
                        counters.error(error.kind());
                        wait.end(WaitEnd::Failed);
                        break;
                    }
                }
            }
            look_first = false;
            let span = wait.span(core, counters, key);
            let peek = store.peek_with_lease(key).instrument(span.clone()).await.map(|peek| {
                // Seen held and not yet settling: this call started before its holder began
                // to confirm what it loaded, so that outcome is fresh for it (the rule of
                // `Follower::before_settling`, across processes). A later holder, too, can
                // settle only after this look.
                if !peek.lease_left.is_zero() && !peek.settling {
                    before_settling = true;
                }
                fresh_holder =
                    peek.holder.filter(|_| before_settling && !peek.lease_left.is_zero());
                (peek.entry, peek.lease_left)
            });
            let lease_left = match peek {
                Ok((Some(entry), _)) if entry.is_absent() => match S::absent() {
                    Some(absent) => {
                        // Read before followers that join now started: they look again.
                        leader.publish(Landed::Refused);
                        self.coalesced();
                        wait.end(WaitEnd::Woken);
                        return absent;
                    }
                    None => {
                        wait.end(WaitEnd::Woken);
                        break;
                    }
                },
                // A copy kept past its TTL (a refresh's grace period, or for `stale`): the
                // lease's holder is replacing it; wait for that, as for a missing value.
                Ok((Some(entry), lease_left)) if self.past_ttl(&entry) => lease_left,
                Ok((Some(entry), _)) => match entry.take(self.cloner) {
                    Ok(value) => {
                        // Read before followers that join now started: they look again.
                        let _ = entry;
                        leader.publish(Landed::Refused);
                        self.coalesced();
                        wait.end(WaitEnd::Woken);
                        return S::from_value(value);
                    }
                    Err(error) => {
                        counters.error(error.kind());
                        wait.end(WaitEnd::Failed);
                        break;
                    }
                },
                Ok((None, lease_left)) => lease_left,
                Err(error) => {
                    counters.error(error.kind());
                    wait.end(WaitEnd::Failed);
                    break;
                }
            };
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(key = %core.shown(key), "waited lock_wait for another process's load; loading here");
                wait.end(WaitEnd::TimedOut);
                break;
            }
            if lease_left.is_zero() {
                continue; // released or lapsed: try to take it
            }
            let until = deadline.min(now + lease_left + Duration::from_millis(2));
            if let Wakeup::NotSubscribed = woken {
                // First use of the subscription: wait for it, then look again.
                store.wait_subscribed(until - now).instrument(span).await;
                look_first = true;
                continue;
            }
            let heard = woken.wait(until).instrument(span).await;
            match heard.as_ref().map(|woken| woken.signal) {
                // The value landed: read it before contending.
                Some(Signal::Ready) => look_first = true,
                // The holder's body found nothing, and the store confirmed it: so do we, if
                // the signal comes from the holder our last look saw, and we looked before
                // it (or an earlier holder) settled: its confirmation came after that look,
                // so after this call started. Otherwise read for ourselves: a write may
                // have landed between its confirmation and this signal, or the signal is
                // an earlier holder's, published before this call started and delivered
                // only now (the subscription reads messages when it gets to them).
                Some(Signal::Absent)
                    if fresh_holder.is_none()
                        || heard.and_then(|woken| woken.holder).as_deref()
                            != fresh_holder.as_deref() =>
                {
                    look_first = true
                }
                Some(Signal::Absent) => {
                    if let Some(absent) = S::absent() {
                        // Read before followers that join now started: they look again.
                        leader.publish(Landed::Refused);
                        self.coalesced();
                        wait.end(WaitEnd::Woken);
                        return absent;
                    }
                    look_first = true;
                }
                // The holder's body failed: a stale value answers without another run.
                Some(Signal::Failed) => {
                    if let Some(value) = self.take_stale() {
                        leader.publish(Landed::Failed);
                        wait.end(WaitEnd::Woken);
                        return S::from_value(value);
                    }
                }
                None => {}
            }
        }
        // Redis failing, or waited too long: load without cross-process coordination.
        self.lead::<S, R, Fut>(load, leader).await
    }

    /// Holding the lease: take a fill ticket (or find the value landed), load while
    /// renewing, fill, release and wake waiters.
    async fn holding<S, R, Fut>(
        &self,
        load: impl FnOnce() -> Fut,
        leader: &mut Leader,
        mut held: HeldLease,
    ) -> R
    where
        S: Shape<R, Value = T>,
        Fut: Future<Output = R>,
    {
        let permit = match self.permit::<S, R>(leader).await {
            Ok(permit) => permit,
            Err((answer, signal)) => {
                held.release(signal).await;
                return answer;
            }
        };
        leader.loading();
        let lease = self.core.settings().lock_lease;
        let (store, key, token) = (self.core.store(), self.key, held.token.clone());
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                let renewed = store.extend_lease(LeaseKind::Load, key, &token, lease).await;
                if !matches!(renewed, Ok(true)) {
                    tracing::warn!(key = %self.core.shown(key), "lost the load lock while loading (lease ran out)");
                    std::future::pending::<()>().await;
                }
            }
        };
        let returned = tokio::select! {
            biased;
            returned = self.body(load) => returned,
            () = renew => unreachable!("renewal never ends"),
        };
        held.settle().await;
        let signal = self
            .finish(self.landed::<S, R>(&returned, Some(&*leader)), &permit, Some(leader))
            .await;
        held.release(signal).await;
        returned
    }
}

/// The lease a refresh holds (on a store other processes share; nothing otherwise).
pub(crate) struct RefreshLease(Option<HeldLease>);

impl RefreshLease {
    /// Marks the lease settling: the refresh is about to confirm its outcome (see
    /// [`HeldLease::settle`]).
    pub(crate) async fn settle(&mut self) {
        if let Some(held) = &mut self.0 {
            held.settle().await;
        }
    }

    /// Releases the lease, telling waiters what became of the refresh.
    pub(crate) async fn release(&mut self, signal: Signal) {
        if let Some(held) = &mut self.0 {
            held.release(signal).await;
        }
    }
}

/// Takes the lease for refreshing `key`; `None` when another process holds it (or Redis
/// fails: then nobody refreshes now, and the current value is served).
pub(crate) async fn refresh_lease(core: &Arc<CacheCore>, key: &str) -> Option<RefreshLease> {
    if !core.store().shared() {
        return Some(RefreshLease(None));
    }
    let token = new_token();
    let lease = core.settings().lock_lease;
    if !matches!(core.store().try_load_lease(key, &token, lease).await, Ok(true)) {
        return None;
    }
    Some(RefreshLease(Some(HeldLease {
        core: Arc::clone(core),
        key: key.to_owned(),
        token,
        done: false,
    })))
}

/// The load lease of a running load. If the load is cancelled or panics, `Drop` releases
/// the lease in the background and tells waiters it failed, so they need not wait for it
/// to lapse.
struct HeldLease {
    core: Arc<CacheCore>,
    key: String,
    token: String,
    done: bool,
}

impl HeldLease {
    /// Marks the lease settling before the holder confirms its outcome with the store, so
    /// that a waiter whose look comes later knows a write may land between that
    /// confirmation and the release's signal, and reads the store for itself. A failure
    /// (Redis failing, when the confirmation most likely fails too) is logged.
    async fn settle(&mut self) {
        let store = self.core.store();
        if let Err(error) = store.settle_load_lease(&self.key, &self.token).await {
            let (key, error) =
                (self.core.shown(&self.key), self.core.shown_error(&error, &self.key));
            tracing::debug!(%key, %error, "could not mark the load lease settling");
        }
    }

    /// Releases the lease, telling waiters what became of the load.
    async fn release(&mut self, signal: Signal) {
        self.done = true;
        let store = self.core.store();
        if let Err(error) =
            store.release_lease(LeaseKind::Load, &self.key, &self.token, signal).await
        {
            if let Some(suppressed) = self.core.log(LogKind::LoadFailed) {
                let (key, error) =
                    (self.core.shown(&self.key), self.core.shown_error(&error, &self.key));
                tracing::warn!(%key, %error, suppressed, "could not release the load lock; it lapses after its lease");
            }
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (core, key, token) = (
            Arc::clone(&self.core),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        runtime.spawn(async move {
            let _ = core.store().release_lease(LeaseKind::Load, &key, &token, Signal::Failed).await;
        });
    }
}
