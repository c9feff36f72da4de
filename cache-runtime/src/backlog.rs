//! Removals that could not reach Redis (down, timing out, breaker open) are kept here and
//! replayed in the background until they land (the replay runs in `write.rs`): an outage
//! delays an invalidation, it does not lose it.
//!
//! - The backlog is deduplicated and bounded ([`MAX_PENDING`]). Past the bound it shrinks
//!   into scopes that cover all of it: with a prefix, one "remove everything under this
//!   cache's prefix"; without one (where that is refused, since it would reach other
//!   applications' keys), each key or pattern widens to its first level (`vehicle:42` ->
//!   `vehicle:*`, served by that level's invalidation index), so nothing is dropped.
//! - While a removal of a key is pending, this process never serves that key from Redis
//!   (what Redis holds may predate the write): reads load and overwrite it.
//! - The replay needs no further call: a task retries, with a back-off from 50 ms to 1 s,
//!   while the backlog is not empty. [`Cache::health`](crate::Cache::health) and
//!   `cache_pending_invalidations` show its size.
//! - If the process dies with a backlog, other processes serve the old values until their
//!   TTL ends: the TTL is then the bound.
//! - Something can wait for the replay: [`Backlog::hold_until_replayed`] keeps a value
//!   (behind Sentinel, the new primary's hand-over, which holds its commands back) until a
//!   replay round that started after it landed every kept removal, then drops it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::error::ErrorKind;
use crate::scope::Scope;

/// The most removals kept before they shrink into wider scopes.
pub(crate) const MAX_PENDING: usize = 10_000;

/// Whether a removal that failed this way is worth replaying.
pub(crate) fn retryable(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Unavailable)
}

/// One kept removal. `stamp` is the latest push it stands for: a push that arrives while
/// a replay applies it re-stamps it, and the replay then leaves it for the next round (the
/// removal it applied may have run before that push's write).
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub(crate) scope: Scope,
    pub(crate) stamp: u64,
}

/// The backlog of one cache.
pub(crate) struct Backlog {
    /// `scopes.len()`, readable without the lock: the hit path only loads this.
    count: AtomicUsize,
    scopes: Mutex<Vec<Kept>>,
    /// Stamps every push, so a replay removes only what it applied (see [`Kept`]).
    pushes: AtomicU64,
    /// A replay task runs.
    replaying: AtomicBool,
    /// The cache has no prefix on a shared store: [`Scope::All`] would be refused.
    unprefixed: bool,
    /// Values dropped once what was kept before them has been replayed
    /// ([`Backlog::hold_until_replayed`]).
    held: Mutex<Vec<Box<dyn Send>>>,
    /// Wakes a replay task that waits out its back-off.
    wake: Arc<Notify>,
}

impl Backlog {
    /// An empty backlog; `unprefixed` for a Redis cache without a prefix.
    pub(crate) fn new(unprefixed: bool) -> Backlog {
        Backlog {
            count: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
            pushes: AtomicU64::new(0),
            replaying: AtomicBool::new(false),
            unprefixed,
            held: Mutex::new(Vec::new()),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Keeps `value` until a replay round that starts after this call has landed every
    /// removal kept now (or they were dropped as unable to succeed), then drops it; the
    /// replay is woken. The caller makes sure a replay runs.
    #[cfg(any(test, feature = "redis"))]
    pub(crate) fn hold_until_replayed(&self, value: Box<dyn Send>) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).push(value);
        self.wake.notify_one();
    }

    /// The values held now, for a replay round that starts: it drops them if it lands
    /// everything, or gives them back with [`Backlog::hold_again`].
    pub(crate) fn take_held(&self) -> Vec<Box<dyn Send>> {
        std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Held values whose round did not land everything.
    pub(crate) fn hold_again(&self, values: Vec<Box<dyn Send>>) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).extend(values);
    }

    /// What wakes the replay task from its back-off.
    pub(crate) fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// How many removals wait.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Whether a pending removal covers `key`. A pending tag removal covers every key:
    /// which keys carry the tag is known to the store only.
    pub(crate) fn covers(&self, key: &str) -> bool {
        if self.len() == 0 {
            return false;
        }
        self.lock().iter().any(|kept| kept.scope.covers(key) || matches!(kept.scope, Scope::Tag(_)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.scopes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `scope` for replay.
    pub(crate) fn push(&self, scope: Scope) {
        let stamp = self.pushes.fetch_add(1, Ordering::Relaxed) + 1;
        let mut scopes = self.lock();
        // Already covered: the covering removal stands for this push too.
        let covering = scopes.iter_mut().find(|kept| match &scope {
            Scope::Key(key) => kept.scope.covers(key),
            _ => kept.scope == scope || kept.scope == Scope::All,
        });
        if let Some(kept) = covering {
            kept.stamp = stamp;
            return;
        }
        if scope == Scope::All && !self.unprefixed {
            scopes.clear();
        }
        scopes.push(Kept { scope, stamp });
        if scopes.len() > MAX_PENDING {
            self.shrink(&mut scopes);
        }
        self.count.store(scopes.len(), Ordering::Release);
    }

    /// Replaces an overflowing backlog with fewer scopes that cover all of it.
    fn shrink(&self, scopes: &mut Vec<Kept>) {
        let stamp = scopes.iter().map(|kept| kept.stamp).max().unwrap_or(0);
        if !self.unprefixed {
            tracing::warn!(
                pending = scopes.len(),
                "invalidation backlog full: it collapses into clearing this cache's prefix when Redis returns"
            );
            scopes.clear();
            scopes.push(Kept { scope: Scope::All, stamp });
            return;
        }
        let before = scopes.len();
        let mut wider: Vec<Kept> = Vec::new();
        for kept in scopes.drain(..) {
            let scope = kept.scope.coarsened().unwrap_or(kept.scope);
            if !wider.iter().any(|other| other.scope == scope) {
                // Stamped with the newest push: a replay running now leaves it in place.
                wider.push(Kept { scope, stamp });
            }
        }
        tracing::warn!(
            before,
            after = wider.len(),
            "invalidation backlog full on a cache without a prefix: keys and patterns widen to their first level (`vehicle:*`)"
        );
        *scopes = wider;
    }

    /// `applied` landed (or can never land): forget it, unless it was pushed again since.
    pub(crate) fn remove(&self, applied: &Kept) {
        let mut scopes = self.lock();
        scopes.retain(|kept| kept.scope != applied.scope || kept.stamp != applied.stamp);
        self.count.store(scopes.len(), Ordering::Release);
    }

    /// What waits now.
    pub(crate) fn snapshot(&self) -> Vec<Kept> {
        self.lock().clone()
    }

    /// Claims the replay: `true` when no replay task ran and the caller must start one.
    pub(crate) fn claim_replay(&self) -> bool {
        !self.replaying.swap(true, Ordering::AcqRel)
    }

    /// No replay task runs (none could be started).
    pub(crate) fn stop_replay(&self) {
        self.replaying.store(false, Ordering::Release);
    }

    /// The replay task stops. Returns `false` when a removal arrived
    /// meanwhile and this task must go on (it claimed the replay again).
    pub(crate) fn release_replay(&self) -> bool {
        self.stop_replay();
        // A push racing with this sees `replaying` false and starts a task, or we go on.
        self.len() == 0 || !self.claim_replay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefixed_backlog_collapses_into_all() {
        let backlog = Backlog::new(false);
        for i in 0..=MAX_PENDING {
            backlog.push(Scope::Key(format!("row:{i}")));
        }
        let kept: Vec<Scope> = backlog.snapshot().into_iter().map(|kept| kept.scope).collect();
        assert_eq!(kept, vec![Scope::All]);
        assert!(backlog.covers("anything"));
    }

    #[test]
    fn an_unprefixed_backlog_widens_and_drops_nothing() {
        let backlog = Backlog::new(true);
        for i in 0..=MAX_PENDING {
            backlog.push(Scope::Key(format!("row:{i}")));
        }
        backlog.push(Scope::Key("plain".into()));
        backlog.push(Scope::Pattern("dealer:7:*".into()));
        assert!(backlog.covers("row:1") && backlog.covers("row:9999") && backlog.covers("plain"));
        assert!(backlog.covers("dealer:7:vehicles"));
        assert!(backlog.snapshot().iter().all(|kept| kept.scope != Scope::All));
        assert!(backlog.len() <= 3, "{:?}", backlog.snapshot());
    }

    #[test]
    fn a_push_during_a_replay_survives_its_removal() {
        let backlog = Backlog::new(false);
        backlog.push(Scope::Key("row:1".into()));
        let applying = backlog.snapshot().remove(0);
        backlog.push(Scope::Key("row:1".into())); // a new write's removal fails meanwhile
        backlog.remove(&applying);
        assert!(backlog.covers("row:1"), "the newer removal is still to replay");
        let applying = backlog.snapshot().remove(0);
        backlog.remove(&applying);
        assert_eq!(backlog.len(), 0);
    }
}
