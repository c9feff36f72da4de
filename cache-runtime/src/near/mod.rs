//! The near cache: an in-process copy (L1) of hot Redis entries, kept coherent by Redis
//! itself through client-side caching in broadcasting mode ([`tracking`]).
//!
//! An L1 entry is served only while the tracking connections are *live*: tracking was
//! switched on (`CLIENT TRACKING ON BCAST PREFIX <prefix>`) on every node and answered its
//! latest health ping. On every disconnect L1 is flushed and serves nothing until tracking is
//! back.
//!
//! **The fill race.** A read captures an [`Epoch`] (the connection generation and a per-shard
//! invalidation counter, by key hash) before it reads Redis, and inserts what it read only if
//! the epoch is unchanged. Every invalidation bumps the counter of its key's shard (or the
//! generation) and removes the key under the same shard lock as the insert's check, so a
//! value whose invalidation arrived (from Redis, or from this process's own write) while it
//! was being read is never inserted afterwards.
//!
//! **Bounds.** An entry expires when its Redis entry does (`PTTL` read with the value, in the
//! same round trip): a read finds it expired and answers a miss (and drops it), and the
//! tracking task drops every expired entry about once a second ([`Near::drop_expired`]), so
//! an expired entry that nobody reads again does not keep its memory. The byte bound counts
//! what an entry costs in process memory: its key, its stored bytes, its typed copy
//! (estimated, see `Entry::weight`) and a per-entry overhead measured from RSS.
//!
//! **The map** is a `quick_cache::sync::Cache` (sharded `RwLock`s of a hash table, CLOCK-Pro
//! eviction by weight): under 64 tasks hitting one key it served 1.4-1.8x the hits of
//! `moka::sync::Cache` on the same machine and run (docs/benchmarks.md, issue 25). It has no
//! per-entry expiry: `Held::expires` is checked on every read instead.

pub(crate) mod tracking;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::codec::{Cloner, Entry};
use crate::policy::Policy;
use crate::scope::Scope;
use crate::store::{Found, Version};

/// Shards of the invalidation counters (and of the lock between an insert and an eviction).
const SHARDS: usize = 64;

/// What an entry costs besides its key's bytes and its [`Entry::weight`] (stored bytes and
/// typed copy): quick_cache's bookkeeping (its table slot, and the slab entry holding the key
/// `String`, the `Held` and the hash), and the allocator's headers. Calibrated from RSS:
/// 50,000 `#[cached]` hits filling a near cache grew the process by 471 bytes each (747 on
/// moka), of which the key and the entry with its copy account for about 340
/// (`tests/tests/memory_bound.rs`, case `near_calibrate`; docs/benchmarks.md). Weighed, such
/// an entry counts 551 bytes: `Entry::weight`'s estimate of the copy errs high.
const ENTRY_OVERHEAD: usize = 128;

/// How long an entry whose Redis key has no expiry (written by another client) is kept at
/// most; tracking evicts it on any change before that.
const NO_EXPIRY_CAP: Duration = Duration::from_secs(3600);

/// One value held in process.
#[derive(Clone)]
struct Held {
    entry: Arc<Entry>,
    /// The value's age when it was read from Redis.
    age_at_read: Duration,
    read_at: Instant,
    /// When the Redis entry expires.
    expires: Instant,
}

impl Held {
    fn age(&self) -> Duration {
        self.age_at_read.saturating_add(self.read_at.elapsed())
    }
}

/// Weighs an entry as what it costs in process memory (see [`ENTRY_OVERHEAD`]).
#[derive(Clone, Copy)]
struct Weigh;

impl quick_cache::Weighter<String, Held> for Weigh {
    fn weight(&self, key: &String, held: &Held) -> u64 {
        (key.len() + held.entry.weight() + ENTRY_OVERHEAD) as u64
    }
}

/// The map of held entries.
type Entries = quick_cache::sync::Cache<String, Held, Weigh>;

/// What a read must still see unchanged to insert its value (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Epoch {
    generation: u64,
    shard: usize,
    count: u64,
}

/// The L1 of one cache.
pub(crate) struct Near {
    entries: Entries,
    /// Invalidation counters by key hash; an insert checks, and an eviction bumps, under
    /// the shard's lock.
    shards: Box<[Mutex<u64>]>,
    /// Bumped on every flush (disconnect, pattern invalidation, `clear`, `FLUSHALL`).
    generation: AtomicU64,
    /// Tracking is on for every node and answered its last health ping.
    live: AtomicBool,
    /// The tracking session that made L1 live: a disconnect notice from an older session's
    /// connection must not deafen a newer one.
    session: AtomicU64,
    /// The Redis prefix: pushed keys are full keys.
    prefix: String,
    hasher: std::collections::hash_map::RandomState,
    /// Why tracking is not live, while it is not (for `health()`).
    trouble: Mutex<Option<String>>,
}

impl Near {
    /// An L1 whose entries cost at most about `max_bytes` of memory, for the cache whose Redis keys start with `prefix`.
    /// It serves nothing until tracking is live.
    pub(crate) fn new(max_bytes: u64, prefix: &str) -> Near {
        // The item estimate sizes quick_cache's shards and its ghost list (keys recently
        // evicted): a small entry weighs about 1 KiB.
        let items = usize::try_from(max_bytes / 1024).unwrap_or(usize::MAX).max(64);
        let entries = Entries::with_weighter(items, max_bytes, Weigh);
        Near {
            entries,
            shards: (0..SHARDS).map(|_| Mutex::new(0)).collect(),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(false),
            session: AtomicU64::new(0),
            prefix: prefix.to_owned(),
            hasher: std::collections::hash_map::RandomState::new(),
            trouble: Mutex::new(None),
        }
    }

    /// Why the near cache serves nothing now (tracking refused or unreachable), if it does
    /// not; `None` once tracking is live.
    pub(crate) fn trouble(&self) -> Option<String> {
        if self.is_live() {
            return None;
        }
        self.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records why tracking is not live (`None`: it is).
    pub(crate) fn set_trouble(&self, reason: Option<String>) {
        *self.trouble.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    fn shard_of(&self, key: &str) -> usize {
        // Truncation is fine: only the low bits pick the shard.
        #[allow(clippy::cast_possible_truncation)]
        let hash = self.hasher.hash_one(key) as usize;
        hash % SHARDS
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, u64> {
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether L1 may serve and be filled now.
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// A value held for `key` that `policy` may serve now: fresh (younger than `ttl` and,
    /// with `refresh`, than the refresh age), decoded or cloned.
    #[cfg(test)]
    pub(crate) fn serve<T>(&self, key: &str, policy: &Policy, cloner: Cloner<T>) -> Option<T>
    where
        T: serde::de::DeserializeOwned + 'static,
    {
        match self.answer(key, policy, cloner, || Duration::ZERO) {
            Answer::Hit(value) => Some(value),
            Answer::Due | Answer::Miss => None,
        }
    }

    /// What L1 answers for `key`: a value to serve, one due for a recompute (`refresh` age
    /// reached, or XFetch's draw with the value's load time, else `mean_load()`, asked only
    /// then), or nothing.
    pub(crate) fn answer<T>(
        &self,
        key: &str,
        policy: &Policy,
        cloner: Cloner<T>,
        mean_load: impl FnOnce() -> Duration,
    ) -> Answer<T>
    where
        T: serde::de::DeserializeOwned + 'static,
    {
        if !self.is_live() {
            return Answer::Miss;
        }
        let Some(held) = self.entries.get(key) else { return Answer::Miss };
        let now = Instant::now();
        if held.expires <= now {
            // Expired in Redis too: a miss, and dropped (unless a newer read replaced it).
            self.entries.remove_if(key, |current| current.expires <= now);
            return Answer::Miss;
        }
        if policy.tracks_age() {
            let age = held.age();
            if age >= policy.ttl {
                return Answer::Miss; // the Redis path serves it stale or loads it
            }
            // The header is read only for XFetch's draw, not on every hit.
            let delta = match policy.early {
                Some(_) => crate::format::Stamp::of(&held.entry.json)
                    .and_then(|stamp| stamp.load_time)
                    .unwrap_or_else(mean_load),
                None => mean_load(),
            };
            if policy.recompute_now(age, delta) {
                return Answer::Due; // the Redis path refreshes it, from the stored value
            }
        }
        match held.entry.take(cloner) {
            Ok(value) => Answer::Hit(value),
            Err(_) => Answer::Miss,
        }
    }

    /// The epoch to check when inserting what a read that starts now returns; `None` while
    /// L1 is not live (nothing read now may be inserted).
    pub(crate) fn epoch(&self, key: &str) -> Option<Epoch> {
        if !self.is_live() {
            return None;
        }
        let shard = self.shard_of(key);
        let count = *self.lock(shard);
        let generation = self.generation.load(Ordering::Acquire);
        // Re-check: a disconnect between the two loads bumped the generation first.
        self.is_live().then_some(Epoch { generation, shard, count })
    }

    /// Holds `entry`, read from Redis as `found` after `epoch` was taken, if no invalidation
    /// of the key (and no flush) happened since, and L1 is live.
    pub(crate) fn insert(&self, key: &str, epoch: Epoch, found: &Found, entry: Arc<Entry>) {
        let Version::Redis(pttl) = found.version else { return };
        if found.age == Duration::MAX || pttl == -2 || pttl == 0 {
            return; // a value a pending marker keeps, or one about to expire
        }
        let left = u64::try_from(pttl).map_or(NO_EXPIRY_CAP, Duration::from_millis);
        let held = Held {
            entry,
            age_at_read: if pttl < 0 { Duration::ZERO } else { found.age },
            read_at: found.read_at,
            expires: found.read_at + left,
        };
        let count = self.lock(epoch.shard);
        if *count == epoch.count
            && self.generation.load(Ordering::Acquire) == epoch.generation
            && self.is_live()
        {
            self.entries.insert(key.to_owned(), held);
        }
    }

    /// Evicts what `scope` covers and voids the reads of it in flight.
    pub(crate) fn evict(&self, scope: &Scope) {
        match scope {
            Scope::Key(key) => self.evict_key(key),
            Scope::Pattern(pattern) => self.evict_matching(pattern),
            // Which keys carry the tag is known to the store only: every near copy goes
            // (a tag invalidation is a rarer event than a key's).
            Scope::Tag(_) | Scope::All => self.flush(),
        }
    }

    /// Evicts `key` and voids the reads of it in flight.
    fn evict_key(&self, key: &str) {
        let shard = self.shard_of(key);
        let mut count = self.lock(shard);
        *count += 1;
        self.entries.remove(key);
    }

    /// Evicts the keys matching `pattern` (a glob) and voids every read in flight.
    fn evict_matching(&self, pattern: &str) {
        let _locks = self.lock_all();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.retain(|key, _| !crate::glob::matches(pattern, key));
    }

    /// Drops everything and voids every read in flight (L1 stays live).
    pub(crate) fn flush(&self) {
        let _locks = self.lock_all();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// Drops every entry whose Redis entry has expired (a read would not serve it): run by
    /// the tracking task about once a second, so that expired entries nobody reads again
    /// do not hold memory until the byte bound evicts them.
    pub(crate) fn drop_expired(&self) {
        let now = Instant::now();
        self.entries.retain(|_, held| held.expires > now);
    }

    fn lock_all(&self) -> Vec<MutexGuard<'_, u64>> {
        (0..SHARDS).map(|shard| self.lock(shard)).collect()
    }

    /// Tracking is not known live: serve nothing, forget everything. A notice from `session`
    /// (a connection's disconnect) is ignored when a newer session made L1 live.
    pub(crate) fn deafen(&self, session: Option<u64>) {
        if session.is_some_and(|session| session != self.session.load(Ordering::Acquire)) {
            return;
        }
        self.live.store(false, Ordering::Release);
        self.flush();
    }

    /// Tracking is on for every node (session `session`): L1 may serve and fill again.
    pub(crate) fn hear(&self, session: u64) {
        self.session.store(session, Ordering::Release);
        self.live.store(true, Ordering::Release);
    }

    /// Handles an `invalidate` push: `keys` are full Redis keys, `None` means everything
    /// (`FLUSHDB`, `FLUSHALL`).
    pub(crate) fn invalidated<'a>(&self, keys: Option<impl Iterator<Item = &'a [u8]>>) {
        let Some(keys) = keys else {
            self.flush();
            return;
        };
        for full in keys {
            let Some(key) = full.strip_prefix(self.prefix.as_bytes()) else { continue };
            // The runtime's own keys (`#...`) are never held.
            if key.contains(&crate::key::RESERVED.as_bytes()[0]) {
                continue;
            }
            if let Ok(key) = std::str::from_utf8(key) {
                self.evict_key(key);
            }
        }
    }

    /// Entries and weighed bytes.
    pub(crate) fn size(&self) -> (u64, u64) {
        (self.entries.len() as u64, self.entries.weight())
    }
}

/// What the near cache answers for a key (see [`Near::answer`]).
pub(crate) enum Answer<T> {
    Hit(T),
    /// Held, but due for a recompute: the Redis path reads it and refreshes it.
    Due,
    Miss,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(json: &[u8], pttl: i64) -> Found {
        Found {
            entry: Arc::new(Entry::from_json(json.to_vec())),
            age: Duration::from_secs(1),
            load_time: None,
            read_at: Instant::now(),
            version: Version::Redis(pttl),
        }
    }

    fn policy() -> Policy {
        Policy::ttl(Duration::from_secs(60))
    }

    #[test]
    fn serves_nothing_until_live_and_after_deafen() {
        let near = Near::new(1 << 20, "p:");
        assert!(near.epoch("k").is_none());
        near.hear(1);
        let epoch = near.epoch("k").unwrap();
        let read = found(b"1", 5000);
        near.insert("k", epoch, &read, Arc::clone(&read.entry));
        assert_eq!(near.serve::<u32>("k", &policy(), None), Some(1));
        near.deafen(Some(0)); // an older session's notice: ignored
        assert_eq!(near.serve::<u32>("k", &policy(), None), Some(1));
        near.deafen(Some(1));
        assert_eq!(near.serve::<u32>("k", &policy(), None), None);
        near.hear(2);
        assert_eq!(near.serve::<u32>("k", &policy(), None), None, "flushed on deafen");
    }

    #[test]
    fn an_invalidation_during_the_read_voids_the_insert() {
        let near = Near::new(1 << 20, "p:");
        near.hear(1);
        let read = found(b"1", 5000);
        let epoch = near.epoch("k").unwrap();
        near.invalidated(Some([&b"p:k"[..]].into_iter()));
        near.insert("k", epoch, &read, Arc::clone(&read.entry));
        assert_eq!(near.serve::<u32>("k", &policy(), None), None);
        let epoch = near.epoch("k").unwrap();
        near.evict_matching("x*");
        near.insert("k", epoch, &read, Arc::clone(&read.entry));
        assert_eq!(near.serve::<u32>("k", &policy(), None), None, "a pattern voids all reads");
        let epoch = near.epoch("k").unwrap();
        near.insert("k", epoch, &read, Arc::clone(&read.entry));
        assert_eq!(near.serve::<u32>("k", &policy(), None), Some(1));
        near.invalidated(None::<std::iter::Empty<&[u8]>>);
        assert_eq!(near.serve::<u32>("k", &policy(), None), None, "a null push flushes");
    }

    #[test]
    fn an_expired_entry_is_not_served_and_is_dropped() {
        let near = Near::new(1 << 20, "p:");
        near.hear(1);
        // Read with 30 ms left in Redis.
        for key in ["read", "unread", "kept"] {
            let read = found(b"1", if key == "kept" { 60_000 } else { 30 });
            near.insert(key, near.epoch(key).unwrap(), &read, Arc::clone(&read.entry));
        }
        assert_eq!(near.serve::<u32>("read", &policy(), None), Some(1));
        assert_eq!(near.size().0, 3);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(near.serve::<u32>("read", &policy(), None), None, "expired with Redis");
        assert_eq!(near.size().0, 2, "the expired entry a read found is gone");
        near.drop_expired();
        assert_eq!(near.size().0, 1, "the sweep drops the unread expired entry");
        assert_eq!(near.serve::<u32>("kept", &policy(), None), Some(1));
        let (_, bytes) = near.size();
        let read = found(b"1", 60_000);
        let held = "kept".len() + read.entry.weight() + ENTRY_OVERHEAD;
        assert_eq!(bytes, held as u64, "only the live entry is weighed");
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let near = Near::new(64 * 1024, "");
        near.hear(1);
        for i in 0..10_000 {
            let key = format!("key:{i}");
            let read = found(&[b'7'; 100], 60_000);
            let epoch = near.epoch(&key).unwrap();
            near.insert(&key, epoch, &read, Arc::clone(&read.entry));
        }
        let (entries, bytes) = near.size();
        assert!(bytes <= 64 * 1024, "{bytes} bytes in {entries} entries");
        assert!(entries > 100, "{entries}");
    }
}
