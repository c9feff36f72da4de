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
//!    `<prefix>#filled:<key>` (`1`: stored, `0`: failed).
//! 3. Everyone else subscribes (one pub/sub connection per cache), looks at the value and
//!    the lease's remaining time in one round trip, and sleeps until the message or the end
//!    of the lease, whichever comes first. On `1` it reads the value; on `0` or a lapsed
//!    lease (its holder died) it tries to take the lease itself.
//! 4. Nobody waits longer than the builder's `lock_wait`: past it, or when Redis fails, the
//!    caller runs its own body. A hit never touches any of this.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::Cache;
use crate::error::ErrorKind;
use crate::flight::{Landed, Leader};
use crate::load::{Began, Load, Permit};
use crate::lock::{new_token, RELEASE};
use crate::notify::{Signal, FILLED};
use crate::shape::{Outcome, Shape};
use crate::store::redis::RedisStore;
use crate::store::Store;

/// Where the lease of a load lives: a hash tag keeps it in the key's own slot family.
fn load_lock_key(prefix: &str, key: &str) -> String {
    format!("{prefix}#load:{{{key}}}")
}

impl<T> Load<'_, T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Leads the flight under a cross-process lease (Redis only).
    pub(crate) async fn locked<S, R, Fut>(
        &self,
        load: impl FnOnce() -> Fut,
        leader: &mut Leader<'_>,
    ) -> R
    where
        S: Shape<R, Value = T>,
        Fut: Future<Output = R>,
    {
        let Store::Redis(redis) = &self.cache.inner.store else {
            return self.lead::<S, R, Fut>(load, leader).await;
        };
        let (cache, counters, key) = (self.cache, self.counters, self.key);
        let settings = &cache.inner.settings;
        let deadline = Instant::now() + settings.lock_wait;
        let lock_key = load_lock_key(&cache.inner.prefix, key);
        let channel = redis.notifier().channel(FILLED, key);
        let token = new_token();
        // The first attempt follows a miss, so it tries the lease before looking again.
        let mut look_first = false;
        loop {
            let (woken, live) = redis.notifier().register(&channel);
            if !look_first {
                match redis.try_lease(&lock_key, &token, settings.lock_lease).await {
                    Ok(true) => {
                        let held = HeldLease {
                            cache: cache.clone(),
                            lock_key: lock_key.clone(),
                            token: token.clone(),
                            channel: channel.clone(),
                            done: false,
                        };
                        return self.holding::<S, R, Fut>(redis, load, leader, held).await;
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(key, %error, "could not take the load lock; loading without it");
                        counters.error(error.kind());
                        break;
                    }
                }
            }
            look_first = false;
            let lease_left = match redis.get_and_lease(key, &lock_key).await {
                Ok((Some(entry), _)) => match entry.take(self.cloner) {
                    Ok(value) => {
                        leader.publish(Landed::Value(entry));
                        counters.coalesced();
                        return S::from_value(value);
                    }
                    Err(_) => {
                        counters.error(ErrorKind::Decode);
                        break;
                    }
                },
                Ok((None, lease_left)) => lease_left,
                Err(error) => {
                    counters.error(error.kind());
                    break;
                }
            };
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(key, "waited lock_wait for another process's load; loading here");
                break;
            }
            if lease_left.is_zero() {
                continue; // released or lapsed: try to take it
            }
            let until = deadline.min(now + lease_left + Duration::from_millis(2));
            if !live {
                // First use of the subscription: wait for it, then look again.
                redis.notifier().wait_subscribed(until - now).await;
                look_first = true;
                continue;
            }
            match tokio::time::timeout_at(until.into(), woken).await {
                // The value landed: read it before contending.
                Ok(Ok(Signal::Ready)) => look_first = true,
                // The holder's body failed: a stale value answers without another run.
                Ok(Ok(Signal::Failed)) => {
                    if let Some(value) =
                        self.stale.as_ref().and_then(|entry| entry.take(self.cloner).ok())
                    {
                        leader.publish(Landed::Failed);
                        counters.stale();
                        return S::from_value(value);
                    }
                }
                _ => {}
            }
        }
        // Redis failing, or waited too long: load without cross-process coordination.
        self.lead::<S, R, Fut>(load, leader).await
    }

    /// Holding the lease: take a fill ticket (or find the value landed), load while
    /// renewing, fill, release and wake waiters.
    async fn holding<S, R, Fut>(
        &self,
        redis: &RedisStore,
        load: impl FnOnce() -> Fut,
        leader: &mut Leader<'_>,
        mut held: HeldLease,
    ) -> R
    where
        S: Shape<R, Value = T>,
        Fut: Future<Output = R>,
    {
        let permit = match self.begin().await {
            Began::Present(value, entry) => {
                leader.publish(Landed::Value(entry));
                held.release(true).await;
                self.counters.coalesced();
                return S::from_value(value);
            }
            Began::Ticket(ticket) => Permit::Ticket(ticket),
            Began::Failed => Permit::None,
        };
        leader.loading();
        let lease = self.cache.inner.settings.lock_lease;
        let (key, lock_key, token) = (self.key, held.lock_key.clone(), held.token.clone());
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                let renewed: Result<u64, _> = redis
                    .script(RENEW, &[&lock_key], &[&token, &lease.as_millis().to_string()])
                    .await;
                if !matches!(renewed, Ok(1)) {
                    tracing::warn!(key, "lost the load lock while loading (lease ran out)");
                    std::future::pending::<()>().await;
                }
            }
        };
        let returned = tokio::select! {
            biased;
            returned = self.body(load) => returned,
            () = renew => unreachable!("renewal never ends"),
        };
        let stored = self.finish::<S, R>(&returned, &permit, Some(leader)).await;
        // Waiters hear "failed" only when the body failed (they may then serve a stale
        // value); anything else, stored or not, sends them to look again.
        held.release(stored || !matches!(S::outcome(&returned), Outcome::Failed)).await;
        returned
    }
}

/// The lease a refresh holds: across processes on Redis, nothing to hold on the memory
/// store (the refresh's flight is enough there).
pub(crate) struct RefreshLease(Option<HeldLease>);

impl RefreshLease {
    pub(crate) async fn release(&mut self, stored: bool) {
        if let Some(held) = &mut self.0 {
            held.release(stored).await;
        }
    }
}

impl Cache {
    /// Takes the lease for refreshing `key`; `None` when another process holds it (or Redis
    /// fails: then nobody refreshes now, and the current value is served).
    pub(crate) async fn refresh_lease(&self, key: &str) -> Option<RefreshLease> {
        let Store::Redis(redis) = &self.inner.store else {
            return Some(RefreshLease(None));
        };
        let lock_key = load_lock_key(&self.inner.prefix, key);
        let token = new_token();
        if !matches!(
            redis.try_lease(&lock_key, &token, self.inner.settings.lock_lease).await,
            Ok(true)
        ) {
            return None;
        }
        let channel = redis.notifier().channel(FILLED, key);
        Some(RefreshLease(Some(HeldLease {
            cache: self.clone(),
            lock_key,
            token,
            channel,
            done: false,
        })))
    }
}

/// Extends the lease if still held by this token.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// The lease of a running load. If the load is cancelled or panics, `Drop` releases the
/// lease in the background and tells waiters it failed, so they need not wait for it to
/// lapse.
struct HeldLease {
    cache: Cache,
    lock_key: String,
    token: String,
    channel: String,
    done: bool,
}

impl HeldLease {
    async fn release(&mut self, stored: bool) {
        self.done = true;
        let Store::Redis(redis) = &self.cache.inner.store else { return };
        let outcome = if stored { "1" } else { "0" };
        let released: Result<u64, _> =
            redis.script(RELEASE, &[&self.lock_key], &[&self.token, &self.channel, outcome]).await;
        if let Err(error) = released {
            tracing::warn!(lock = %self.lock_key, %error, "could not release the load lock; it lapses after its lease");
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
        let cache = self.cache.clone();
        let (lock_key, token, channel) = (
            std::mem::take(&mut self.lock_key),
            std::mem::take(&mut self.token),
            std::mem::take(&mut self.channel),
        );
        runtime.spawn(async move {
            if let crate::store::Store::Redis(redis) = &cache.inner.store {
                let _: Result<u64, _> =
                    redis.script(RELEASE, &[&lock_key], &[&token, &channel, "0"]).await;
            }
        });
    }
}
