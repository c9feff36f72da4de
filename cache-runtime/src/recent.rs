//! The writes and removals the Redis primary acknowledged lately, kept behind Sentinel so
//! that a failover loses none of them.
//!
//! Redis replicates asynchronously: what the primary acknowledged a moment before a
//! failover may not have reached the replica that Sentinel promotes, and the old primary
//! goes on acknowledging writes until Sentinel demotes it (seconds after the promotion);
//! all of that is gone once it resyncs from the new primary. A lost removal would let the
//! new primary serve the old value; a lost write-through would bring back the value it
//! replaced.
//!
//! So every acknowledged write or removal leaves its [`Scope`] here for [`RETAIN`], counted
//! back from the newest acknowledgement (not from the change: a primary that crashed was
//! replaced only after Sentinel's `down-after-milliseconds`, often longer than that, and
//! what it lost is its last moments' writes); when
//! the store moves to a new primary (`store/redis/sentinel.rs`), everything kept is handed
//! to the replay backlog (`write.rs`) *before* the new primary takes a command: this
//! process reads none of those keys from Redis until their removal has landed there. A
//! write-through is replayed as the removal of its key (the next read loads it again).
//! An acknowledgement that arrives after the change (sent to the old primary) goes to
//! the backlog directly.
//!
//! Bounded: at most [`MAX_KEPT`] scopes; past that they shrink like the backlog (into
//! "everything under the prefix", or first-level patterns without a prefix).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::scope::Scope;

/// How long before the newest acknowledgement an acknowledged write is still handed over:
/// longer than a primary goes on acknowledging writes that do not reach its replica (the
/// replication lag; a demoted primary's seconds before Sentinel reconfigures it; an
/// isolated one's `min-replicas-max-lag`, see docs/failover.md).
pub(crate) const RETAIN: Duration = Duration::from_secs(15);

/// The most scopes kept before they shrink into wider ones.
pub(crate) const MAX_KEPT: usize = 10_000;

/// The recent writes of one cache (empty and unused unless the store follows failovers).
pub(crate) struct Recent {
    /// Whether writes are kept at all (a store behind Sentinel).
    enabled: bool,
    /// The cache has no prefix: [`Scope::All`] would be refused on replay.
    unprefixed: bool,
    kept: Mutex<HashMap<Scope, Instant>>,
}

impl Recent {
    /// Kept writes when `enabled`; `unprefixed` for a cache without a prefix.
    pub(crate) fn new(enabled: bool, unprefixed: bool) -> Recent {
        Recent { enabled, unprefixed, kept: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Scope, Instant>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The primary acknowledged a write covering `scope`, sent while the store was at
    /// primary generation `sent_on`; `now_on` reads the generation now. Returns `false`
    /// when the primary changed since the write was sent: the caller keeps it in the
    /// backlog instead (the change's hand-over already ran).
    pub(crate) fn acknowledged(
        &self,
        scope: &Scope,
        sent_on: u64,
        now_on: impl FnOnce() -> u64,
    ) -> bool {
        if !self.enabled {
            return true;
        }
        let mut kept = self.lock();
        // Read under the lock: a hand-over bumps the generation before it takes the lock.
        if now_on() != sent_on {
            return false;
        }
        self.insert(&mut kept, scope, Instant::now());
        true
    }

    /// Keeps `scope`, acknowledged at `now` (the newest acknowledgement).
    fn insert(&self, kept: &mut HashMap<Scope, Instant>, scope: &Scope, now: Instant) {
        kept.insert(scope.clone(), now);
        if kept.len() > MAX_KEPT {
            kept.retain(|_, at| now.duration_since(*at) < RETAIN);
        }
        if kept.len() > MAX_KEPT {
            self.shrink(kept, now);
        }
    }

    /// Replaces an overflowing set with fewer scopes that cover all of it.
    fn shrink(&self, kept: &mut HashMap<Scope, Instant>, now: Instant) {
        if !self.unprefixed {
            kept.clear();
            kept.insert(Scope::All, now);
            return;
        }
        let wider: HashMap<Scope, Instant> =
            kept.drain().map(|(scope, _)| (scope.coarsened().unwrap_or(scope), now)).collect();
        *kept = wider;
    }

    /// Everything acknowledged within [`RETAIN`] of the newest acknowledgement, forgotten
    /// here: the primary changed.
    #[cfg(any(test, feature = "redis"))]
    pub(crate) fn take(&self) -> Vec<Scope> {
        let mut kept = self.lock();
        let Some(newest) = kept.values().max().copied() else { return Vec::new() };
        kept.drain()
            .filter(|(_, at)| newest.duration_since(*at) < RETAIN)
            .map(|(scope, _)| scope)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_kept_until_a_change_takes_them() {
        let recent = Recent::new(true, false);
        assert!(recent.acknowledged(&Scope::Key("a".into()), 0, || 0));
        assert!(recent.acknowledged(&Scope::Pattern("b:*".into()), 0, || 0));
        assert!(recent.acknowledged(&Scope::Key("a".into()), 0, || 0));
        let mut taken = recent.take();
        taken.sort_by_key(|scope| scope.text().to_owned());
        assert_eq!(taken, vec![Scope::Key("a".into()), Scope::Pattern("b:*".into())]);
        assert!(recent.take().is_empty(), "taken once");
    }

    #[test]
    fn an_acknowledgement_from_the_previous_primary_is_refused() {
        let recent = Recent::new(true, false);
        assert!(!recent.acknowledged(&Scope::Key("a".into()), 0, || 1));
        assert!(recent.take().is_empty());
    }

    #[test]
    fn an_overflow_shrinks_into_covering_scopes() {
        let prefixed = Recent::new(true, false);
        let unprefixed = Recent::new(true, true);
        for i in 0..=MAX_KEPT {
            let key = Scope::Key(format!("row:{i}"));
            assert!(prefixed.acknowledged(&key, 0, || 0));
            assert!(unprefixed.acknowledged(&key, 0, || 0));
        }
        assert_eq!(prefixed.take(), vec![Scope::All]);
        assert_eq!(unprefixed.take(), vec![Scope::Pattern("row:*".into())]);
    }

    #[test]
    fn the_retention_counts_back_from_the_newest_acknowledgement() {
        // A crashed primary is replaced after `down-after-milliseconds` (30 s by default):
        // its last writes are older than RETAIN by the time of the change, and still kept.
        let recent = Recent::new(true, false);
        let now = Instant::now();
        let ago = |secs| now.checked_sub(Duration::from_secs(secs)).unwrap();
        let mut kept = recent.lock();
        recent.insert(&mut kept, &Scope::Key("long-before".into()), ago(60));
        recent.insert(&mut kept, &Scope::Key("before".into()), ago(40));
        recent.insert(&mut kept, &Scope::Key("last".into()), ago(30));
        drop(kept);
        let mut taken = recent.take();
        taken.sort_by_key(|scope| scope.text().to_owned());
        assert_eq!(taken, vec![Scope::Key("before".into()), Scope::Key("last".into())]);
    }

    #[test]
    fn a_disabled_set_keeps_nothing() {
        let recent = Recent::new(false, false);
        assert!(recent.acknowledged(&Scope::Key("a".into()), 0, || 0));
        assert!(recent.take().is_empty());
    }
}
