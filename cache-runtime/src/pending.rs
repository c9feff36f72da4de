//! Invalidations that could not reach Redis (down, timing out, breaker open) are kept here
//! and replayed in the background until they land: an outage delays an invalidation, it
//! does not lose it.
//!
//! - The backlog is deduplicated and bounded ([`MAX_PENDING`]); past the bound it collapses
//!   into one "remove everything under this cache's prefix", which covers all of it.
//! - While an invalidation of a key is pending, this process never serves that key from
//!   Redis (what Redis holds may predate the write): reads load and overwrite it.
//! - The replay needs no further call: a task retries, with a back-off from 50 ms to 1 s,
//!   while the backlog is not empty. [`Cache::health`] and `cache_pending_invalidations`
//!   show its size.
//! - If the process dies with a backlog, other processes serve the old values until their
//!   TTL ends: the TTL is then the bound.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::{Cache, CacheInner};
use crate::error::{ErrorKind, Result};
use crate::glob;

/// The most invalidations kept before they collapse into one `clear`.
pub(crate) const MAX_PENDING: usize = 10_000;

/// One invalidation waiting for Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PendingTarget {
    Key(String),
    Pattern(String),
    /// Everything under the cache's prefix (`clear()`, or an overflowing backlog).
    All,
}

impl PendingTarget {
    fn covers(&self, key: &str) -> bool {
        match self {
            PendingTarget::Key(pending) => pending == key,
            PendingTarget::Pattern(pattern) => glob::matches(pattern, key),
            PendingTarget::All => true,
        }
    }
}

/// The backlog of one cache.
#[derive(Default)]
pub(crate) struct Pending {
    /// `targets.len()`, readable without the lock: the hit path only loads this.
    count: AtomicUsize,
    targets: Mutex<Vec<PendingTarget>>,
    replaying: AtomicBool,
}

/// Whether an invalidation that failed this way is worth replaying.
pub(crate) fn retryable(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Unavailable)
}

impl Pending {
    /// How many invalidations wait.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Whether a pending invalidation covers `key`.
    pub(crate) fn covers(&self, key: &str) -> bool {
        if self.len() == 0 {
            return false;
        }
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets.iter().any(|target| target.covers(key))
    }

    fn push(&self, target: PendingTarget) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if targets.contains(&target) || targets.contains(&PendingTarget::All) {
            return;
        }
        if target == PendingTarget::All || targets.len() >= MAX_PENDING {
            tracing::warn!(
                pending = targets.len(),
                "invalidation backlog full: it collapses into clearing this cache's prefix when Redis returns"
            );
            targets.clear();
            targets.push(PendingTarget::All);
        } else {
            targets.push(target);
        }
        self.count.store(targets.len(), Ordering::Release);
    }

    fn remove(&self, target: &PendingTarget) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets.retain(|kept| kept != target);
        self.count.store(targets.len(), Ordering::Release);
    }

    fn snapshot(&self) -> Vec<PendingTarget> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Cache {
    /// Keeps an invalidation that failed for a connection reason, and makes sure the replay
    /// task runs.
    pub(crate) fn keep_pending(&self, target: PendingTarget) {
        tracing::warn!(?target, "invalidation kept for replay when Redis answers");
        self.inner.pending.push(target);
        if self.inner.pending.replaying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.pending.replaying.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(replay(Arc::downgrade(&self.inner)));
    }

    /// Runs one kept invalidation against the store.
    async fn apply(&self, target: &PendingTarget) -> Result<u64> {
        match target {
            PendingTarget::Key(key) => self.inner.store.remove(key).await,
            PendingTarget::Pattern(pattern) => {
                self.inner.store.remove_matching(pattern).await.map(|removed| removed.keys)
            }
            PendingTarget::All => self.inner.store.clear().await,
        }
    }
}

/// The replay task: runs until the backlog is empty or the cache is dropped.
async fn replay(inner: std::sync::Weak<CacheInner>) {
    let mut delay = Duration::from_millis(50);
    loop {
        tokio::time::sleep(delay).await;
        let Some(inner) = inner.upgrade() else { return };
        let cache = Cache { inner };
        let mut failed = false;
        for target in cache.inner.pending.snapshot() {
            match cache.apply(&target).await {
                Ok(removed) => {
                    tracing::info!(?target, removed, "pending invalidation replayed");
                    cache.inner.stats.counters(crate::DIRECT_CALLS).invalidated(removed);
                    cache.inner.pending.remove(&target);
                }
                Err(error) if retryable(error.kind()) => {
                    failed = true;
                    break;
                }
                Err(error) => {
                    tracing::warn!(?target, %error, "pending invalidation dropped: it cannot succeed");
                    cache.inner.pending.remove(&target);
                }
            }
        }
        if !failed {
            delay = Duration::from_millis(50);
        } else {
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        // Stop only when empty; a push racing with this check sees `replaying` false
        // afterwards and starts a new task.
        if cache.inner.pending.len() == 0 {
            cache.inner.pending.replaying.store(false, Ordering::Release);
            if cache.inner.pending.len() == 0
                || cache.inner.pending.replaying.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
    }
}
