//! The in-process store, on moka: bounded by bytes, each entry expiring after its own TTL,
//! with the same prefix index as the Redis store so that pattern invalidation does not walk
//! every entry.
//!
//! Every change of a key is one step of [`MemoryStore::change`] (moka's `and_compute_with`,
//! which runs the changes of one key one at a time): a fill's "is my marker still there?"
//! and its write are one step, which no removal can fall between. A write is numbered and
//! indexed only inside its step ([`Step`]), so the prefix index always names each key's
//! latest write, and no value is ever stored without being found by the next pattern or
//! tag invalidation.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::{Begun, FillPlan, Found, Marker, Ticket, Touch, Version};
use crate::codec::Entry;
use crate::tags::tag_level;
use crate::{glob, index};

/// Keys by index level (`dealer:`, `dealer:7:`), each with the write number of its current
/// value: an eviction notice for an older value (delivered late) must not un-index a key
/// that was written again.
type PrefixIndex = Mutex<HashMap<String, HashMap<String, u64>>>;

fn unindex(prefixes: &PrefixIndex, key: &str, write: u64, tags: &[String]) {
    let mut prefixes = prefixes.lock().unwrap_or_else(|e| e.into_inner());
    let tag_levels: Vec<String> = tags.iter().map(|tag| tag_level(tag)).collect();
    for level in index::levels(key).chain(tag_levels.iter().map(String::as_str)) {
        if let Some(keys) = prefixes.get_mut(level) {
            if keys.get(key) == Some(&write) {
                keys.remove(key);
            }
            if keys.is_empty() {
                prefixes.remove(level);
            }
        }
    }
}

/// Adds `key` (written as `write`) to every level of the index it belongs to and to the
/// set of each of its tags (see `tags.rs`); returns what that costs ([`INDEX_ENTRY`] per
/// level or tag, [`INDEX_LEVEL`] for a level or tag set it creates), which the entry's
/// weight carries.
fn index_key(
    prefixes: &mut HashMap<String, HashMap<String, u64>>,
    key: &str,
    write: u64,
    tags: &[String],
) -> u32 {
    let mut weight = 0;
    let tag_levels: Vec<String> = tags.iter().map(|tag| tag_level(tag)).collect();
    for level in index::levels(key).chain(tag_levels.iter().map(String::as_str)) {
        if !prefixes.contains_key(level) {
            weight += level.len() + INDEX_LEVEL;
            prefixes.insert(level.to_owned(), HashMap::new());
        }
        weight += key.len() + INDEX_ENTRY;
        prefixes.get_mut(level).expect("inserted above").insert(key.to_owned(), write);
    }
    u32::try_from(weight).unwrap_or(u32::MAX)
}

/// The tags an entry is stored with, shared (a `Stored` is cloned when a change of its key
/// replaces it while a reader holds it).
type Tags = Option<Arc<[String]>>;

fn shared_tags(tags: &[String]) -> Tags {
    (!tags.is_empty()).then(|| tags.into())
}

/// What an entry costs besides its key's bytes, its [`Entry::weight`] and its index
/// entries: moka's bookkeeping (its table slot, the key's `Arc`, the access, write and timer
/// deque nodes), the `Stored` in its `Arc` and the allocator's headers. Calibrated from RSS:
/// 100,000 entries of a `u64` under `k:<n>` grew the process by 698 bytes each, of which the
/// key, its index entry and the `Entry` account for about 250 (`tests/tests/memory_bound.rs`,
/// docs/benchmarks.md): 448. Since the store moved to `moka::sync` with `Arc<Stored>` values,
/// the case `memory_calibrate` of that test (50,000 such entries, run by hand) grows by 774
/// bytes each, against 736 for the `future` cache of `Stored` values on the same machine:
/// 40 more.
const ENTRY_OVERHEAD: usize = 488;

/// One key in one level of the prefix index besides its bytes: the `String`, the write
/// number and the hash table's slot at its load factor, with the allocator's header.
const INDEX_ENTRY: usize = 64;

/// A level of the prefix index besides its name (an outer slot and an inner table): keys
/// `k:<n>:x`, each creating its own second level, measured 323 bytes more than `k:<n>`.
const INDEX_LEVEL: usize = 320;

/// What moka weighs an entry as: what it costs in process memory (see [`ENTRY_OVERHEAD`]),
/// the expired value a marker keeps included.
fn weigh(key: &str, stored: &Stored) -> u32 {
    let value = |stored: &Stored| {
        stored.index_weight as usize + stored.entry.as_ref().map_or(0, |entry| entry.weight())
    };
    let kept =
        stored.kept.as_ref().map_or(0, |kept| std::mem::size_of::<Stored>() + 16 + value(kept));
    u32::try_from(key.len() + ENTRY_OVERHEAD + value(stored) + kept).unwrap_or(u32::MAX)
}

#[derive(Clone)]
struct Stored {
    /// The value, or `None` for a pending marker (a load is running, see `store/mod.rs`).
    entry: Option<Arc<Entry>>,
    /// A marker's expired value kept for stale fallback, restored if the load stores
    /// nothing.
    kept: Option<Box<Stored>>,
    /// Unique per write in this store: names markers and values.
    write: u64,
    /// What its index entries cost (see [`index_key`]).
    index_weight: u32,
    /// The tags whose sets hold it (see [`index_key`]).
    tags: Tags,
    /// When it expires (kept across a restore, see `abandon`).
    expires: Instant,
    stored_at: Instant,
}

/// Expires every entry at its own expiry, also when it is overwritten.
struct PerEntryTtl;

impl moka::Expiry<String, Arc<Stored>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &String,
        stored: &Arc<Stored>,
        now: Instant,
    ) -> Option<Duration> {
        Some(stored.expires.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &String,
        stored: &Arc<Stored>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(stored.expires.saturating_duration_since(now))
    }
}

/// Changes that run before the next change takes its key (tests).
#[cfg(test)]
type OtherChanges = Box<dyn FnOnce(&MemoryStore) + Send>;

/// moka's `sync` cache, not its `future` one: no step of a change waits for anything but
/// the key's lock, and a hit is a plain call. Values are shared (`Arc<Stored>`): a read
/// clones one `Arc`. Under callgrind, in a bare loop of gets of this map's shape, the `sync`
/// get took about 420 instructions less than the `future` one, and reading an `Arc<Stored>`
/// about 90 less than copying a `Stored` (figures of the hit path: `benches/hot.rs`, part
/// `prof-memory-hit`).
pub(crate) struct MemoryStore {
    entries: moka::sync::Cache<String, Arc<Stored>>,
    prefixes: Arc<PrefixIndex>,
    writes: AtomicU64,
    /// `Cache::lock` within this process.
    locks: LocalLocks,
    /// Runs at the start of the next change, before it waits for its key: the changes of
    /// other callers that got the key first (tests).
    #[cfg(test)]
    before_change: Mutex<Option<OtherChanges>>,
}

impl MemoryStore {
    /// A store whose entries (keys, stored bytes, typed copies, index entries and the
    /// bookkeeping of each) cost at most about `capacity_bytes` of process memory.
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        let prefixes = Arc::new(PrefixIndex::default());
        let entries = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, stored: &Arc<Stored>| weigh(key, stored))
            .expire_after(PerEntryTtl)
            .eviction_listener({
                let prefixes = Arc::clone(&prefixes);
                move |key: Arc<String>, stored: Arc<Stored>, cause| {
                    // A replaced value's key is still there (and was indexed anew). The
                    // entries of a tag the new value lacks stay until that tag is
                    // invalidated (`remove_tagged` drops them).
                    if cause != RemovalCause::Replaced {
                        let tags = stored.tags.as_deref().unwrap_or_default();
                        unindex(&prefixes, &key, stored.write, tags);
                    }
                }
            })
            .build();
        MemoryStore {
            entries,
            prefixes,
            writes: AtomicU64::new(1),
            locks: LocalLocks::default(),
            #[cfg(test)]
            before_change: Mutex::default(),
        }
    }

    /// The in-process locks.
    pub(crate) fn locks(&self) -> &LocalLocks {
        &self.locks
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.entries.get(key).and_then(|stored| stored.entry.clone())
    }

    /// A hit for `idle`: the value, its expiry moved to `now + min(idle, cap - age)` (one
    /// compute on the key, so no write falls in between); `None` for a marker or a value at
    /// least `cap` old. Values without a write time (absent results) are left as they are.
    pub(crate) fn get_touched(&self, key: &str, touch: Touch) -> Option<Arc<Entry>> {
        let mut found = None;
        self.change(key, |current, _| {
            match current {
                Some(mut stored) => match stored.entry.as_ref().map(|entry| entry.stamp()) {
                    Some(Some(stamp)) => {
                        let age = stamp.age();
                        if age < touch.cap {
                            found.clone_from(&stored.entry);
                            let left = touch.idle.min(touch.cap - age);
                            stored.expires = Instant::now() + left;
                            Op::Put(stored) // same write number: same value, index kept
                        } else {
                            Op::Nop
                        }
                    }
                    Some(None) => {
                        found = stored.entry;
                        Op::Nop
                    }
                    None => Op::Nop, // a marker: a miss
                },
                None => Op::Nop,
            }
        });
        found
    }

    /// When a stored value expires.
    fn expiry(stored: &Stored) -> Instant {
        stored.expires
    }

    /// A value's age: by the write time in its header (see `format.rs`), as on every store;
    /// since it was stored here for one without (an absent result).
    fn age(stored: &Stored) -> Duration {
        stored
            .entry
            .as_ref()
            .and_then(|entry| entry.stamp())
            .map_or_else(|| stored.stored_at.elapsed(), |stamp| stamp.age())
    }

    /// The entry, its age, and its write number.
    pub(crate) fn get_aged(&self, key: &str) -> Option<Found> {
        let read_at = Instant::now();
        let stored = self.entries.get(key)?;
        let age = Self::age(&stored);
        match (&stored.entry, &stored.kept) {
            (Some(entry), _) => Some(Found {
                load_time: entry.stamp().and_then(|stamp| stamp.load_time),
                entry: Arc::clone(entry),
                age,
                read_at,
                version: Version::Memory(stored.write),
            }),
            // A load is running; the expired value it replaced still serves as stale.
            (None, Some(kept)) if Self::expiry(kept) > Instant::now() => Some(Found {
                entry: kept.entry.clone()?,
                age: Duration::MAX,
                load_time: None,
                read_at,
                version: Version::Memory(kept.write),
            }),
            (None, _) => None,
        }
    }

    /// Runs `step` as one change of `key`: it gets what the key holds (`None` also for an
    /// expired entry) and the [`Step`] that numbers and indexes new writes, and answers
    /// what to do. No other change of the key runs meanwhile.
    ///
    /// What the key holds is handed over as a copy (its `Arc`s shared; the map keeps the
    /// original until the step's answer replaces it).
    fn change(&self, key: &str, step: impl FnOnce(Option<Stored>, &Step<'_>) -> Op<Stored>) {
        #[cfg(test)]
        {
            let others = self.before_change.lock().unwrap().take();
            if let Some(others) = others {
                others(self);
            }
        }
        let within = Step { store: self, key };
        self.entries.entry_by_ref(key).and_compute_with(|current| {
            let current = current.map(|entry| Arc::unwrap_or_clone(entry.into_value()));
            match step(current, &within) {
                Op::Put(stored) => Op::Put(Arc::new(stored)),
                Op::Remove => Op::Remove,
                Op::Nop => Op::Nop,
            }
        });
    }

    pub(crate) fn set(&self, key: &str, entry: Arc<Entry>, ttl: Duration, tags: &[String]) {
        // Numbered and indexed inside the step, never before it (see `Step`).
        self.change(key, |_, step| Op::Put(step.stored(Some(entry), ttl, tags)));
    }

    pub(crate) fn begin_fill(&self, key: &str, plan: &FillPlan<'_>) -> Begun {
        let mut begun = None;
        self.change(key, |current, step| {
            match current {
                Some(mut marker @ Stored { entry: None, .. }) => {
                    begun = Some(Begun::Ticket(Ticket::Adopted(Marker::Memory(marker.write))));
                    // Shared by a load stored with other tags: the marker joins their
                    // sets too, so invalidating any of them voids it.
                    let own = marker.tags.as_deref().unwrap_or_default();
                    let missing: Vec<String> =
                        plan.tags.iter().filter(|tag| !own.contains(tag)).cloned().collect();
                    if missing.is_empty() {
                        Op::Nop
                    } else {
                        marker.index_weight += step.index(marker.write, &missing);
                        let all: Vec<String> = own.iter().cloned().chain(missing).collect();
                        marker.tags = shared_tags(&all);
                        Op::Put(marker)
                    }
                }
                Some(stored @ Stored { entry: Some(_), .. }) if !plan.force => {
                    let absent = stored.entry.as_ref().is_some_and(|entry| entry.is_absent());
                    if absent || Self::age(&stored) < plan.fresh_for {
                        begun = stored.entry.map(Begun::Present);
                        Op::Nop
                    } else {
                        // Expired, kept for `stale`: the marker keeps it meanwhile.
                        let left = Self::expiry(&stored).saturating_duration_since(Instant::now());
                        let mut marker = step.stored(None, plan.window.max(left), plan.tags);
                        marker.kept = Some(Box::new(stored));
                        begun = Some(Begun::Ticket(Ticket::Marker(Marker::Memory(marker.write))));
                        Op::Put(marker)
                    }
                }
                _ => {
                    let marker = step.stored(None, plan.window, plan.tags);
                    begun = Some(Begun::Ticket(Ticket::Marker(Marker::Memory(marker.write))));
                    Op::Put(marker)
                }
            }
        });
        begun.expect("the compute closure always runs")
    }

    /// Stores `entry` if `ticket` still names what the key holds.
    pub(crate) fn fill(
        &self,
        key: &str,
        ticket: &Ticket,
        entry: Arc<Entry>,
        ttl: Duration,
        tags: &[String],
    ) -> bool {
        let mut stored = false;
        self.change(key, |current, step| {
            let holds = current.is_some_and(|current| {
                match ticket {
                    Ticket::Marker(Marker::Memory(write))
                    | Ticket::Adopted(Marker::Memory(write)) => {
                        current.entry.is_none() && current.write == *write
                    }
                    Ticket::Replace { version: Version::Memory(write), .. } => {
                        current.entry.is_some() && current.write == *write
                    }
                    // Redis markers and versions, in a build with Redis.
                    #[allow(unreachable_patterns)]
                    _ => false,
                }
            });
            stored = holds;
            match holds {
                true => Op::Put(step.stored(Some(entry), ttl, tags)),
                false => Op::Nop,
            }
        });
        stored
    }

    /// A load stores nothing: whether its marker is still there; removed (putting back the
    /// expired value it kept) if this load placed it.
    pub(crate) fn abandon(&self, key: &str, ticket: &Ticket) -> bool {
        let (write, own) = match ticket {
            Ticket::Marker(Marker::Memory(write)) => (*write, true),
            Ticket::Adopted(Marker::Memory(write)) => (*write, false),
            _ => return false,
        };
        let mut held = false;
        self.change(key, |current, step| {
            match current {
                Some(Stored { entry: None, write: current, kept, .. }) if current == write => {
                    held = true;
                    match kept {
                        _ if !own => Op::Nop,
                        Some(kept) if Self::expiry(&kept) > Instant::now() => {
                            // Its own expiry and age, as before the load.
                            let restored = *kept;
                            step.index(
                                restored.write,
                                restored.tags.as_deref().unwrap_or_default(),
                            );
                            Op::Put(restored)
                        }
                        _ => Op::Remove,
                    }
                }
                _ => Op::Nop,
            }
        });
        held
    }

    /// Removes `key`; counts a removed value (not a removed marker).
    pub(crate) fn remove(&self, key: &str) -> u64 {
        let mut removed = 0;
        self.change(key, |current, _| match current {
            Some(current) => {
                removed = u64::from(current.entry.is_some());
                Op::Remove
            }
            None => Op::Nop,
        });
        removed
    }

    /// Removes the keys matching `pattern`: the keys of the index level the pattern names,
    /// or (for patterns without one) a walk over every entry.
    pub(crate) fn remove_matching(&self, pattern: &str) -> u64 {
        let matching: Vec<String> = match index::for_pattern(pattern) {
            Some(level) => {
                let prefixes = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
                prefixes
                    .get(level)
                    .map(|keys| {
                        keys.keys().filter(|key| glob::matches(pattern, key)).cloned().collect()
                    })
                    .unwrap_or_default()
            }
            None => self
                .entries
                .iter()
                .filter(|(key, _)| glob::matches(pattern, key))
                .map(|(key, _)| key.as_str().to_owned())
                .collect(),
        };
        let mut removed = 0;
        for key in matching {
            removed += self.remove(&key);
        }
        removed
    }

    /// Removes the keys stored with `tag` (values and pending markers); counts removed
    /// values.
    pub(crate) fn remove_tagged(&self, tag: &str) -> u64 {
        let tagged: Vec<String> = {
            let level = tag_level(tag);
            let mut prefixes = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
            let tagged = prefixes.remove(&level).unwrap_or_default();
            tagged.into_keys().collect()
        };
        let mut removed = 0;
        for key in tagged {
            removed += self.remove(&key);
        }
        removed
    }

    /// Entries and their weighed size in bytes.
    pub(crate) fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    pub(crate) fn clear(&self) -> u64 {
        self.remove_matching("*")
    }
}

/// One change of one key, inside [`MemoryStore::change`]: the only place a write is
/// numbered and indexed. Moka runs the changes of a key one at a time, so a key's new
/// writes are numbered in the order they apply, and its index entries name the write it
/// holds: an eviction notice (`unindex`, possibly late) takes a key out of the index only if
/// nothing was indexed for it since. A write numbered outside its key's step (before
/// waiting for a change of the key that was running) could be overtaken by a later-numbered
/// one, a load's marker, whose removal by a pattern invalidation of another key un-indexes
/// the key; the write would then be stored where no pattern or tag invalidation finds it.
struct Step<'a> {
    store: &'a MemoryStore,
    key: &'a str,
}

impl Step<'_> {
    /// A new write: numbered and indexed (before it is visible, so that a pattern
    /// invalidation running meanwhile finds it).
    fn stored(&self, entry: Option<Arc<Entry>>, ttl: Duration, tags: &[String]) -> Stored {
        let write = self.store.writes.fetch_add(1, Ordering::Relaxed);
        let index_weight = self.index(write, tags);
        let stored_at = Instant::now();
        let tags = shared_tags(tags);
        Stored { entry, kept: None, write, index_weight, tags, expires: stored_at + ttl, stored_at }
    }

    /// Indexes the key as its write `write`, stored with `tags` (see [`index_key`]).
    fn index(&self, write: u64, tags: &[String]) -> u32 {
        let mut prefixes = self.store.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        index_key(&mut prefixes, self.key, write, tags)
    }
}

/// In-process locks ([`Cache::lock`](crate::Cache::lock) on the memory store; the interface
/// is `store/lease.rs`).
///
/// Fencing tokens come from one counter for every resource of the store, so a resource's
/// next token is greater than any token ever handed out for it without remembering
/// anything per resource: a released or expired lease leaves nothing behind once swept.
#[derive(Default)]
pub(crate) struct LocalLocks {
    held: Mutex<Held>,
    released: Notify,
}

/// The leases held, by resource: holder and end.
#[derive(Default)]
struct Held {
    leases: HashMap<String, (String, Instant)>,
    /// The last fencing token handed out, for any resource.
    fence: u64,
    /// Leases held at which expired ones are swept next (amortized: the table doubles in
    /// between).
    sweep_at: usize,
}

/// Leases the table holds before its first sweep of expired ones.
const FIRST_SWEEP: usize = 1024;

impl LocalLocks {
    pub(crate) fn try_acquire(&self, resource: &str, token: &str, lease: Duration) -> Option<u64> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if held.leases.get(resource).is_some_and(|(_, until)| *until > now) {
            return None;
        }
        if held.leases.len() >= held.sweep_at.max(FIRST_SWEEP) {
            held.leases.retain(|_, (_, until)| *until > now);
            held.sweep_at = held.leases.len() * 2;
        }
        held.leases.insert(resource.to_owned(), (token.to_owned(), now + lease));
        held.fence += 1;
        Some(held.fence)
    }

    /// Leases in the table (held, or expired and not swept yet).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock().unwrap().leases.len()
    }

    pub(crate) fn extend(&self, resource: &str, token: &str, lease: Duration) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.leases.get_mut(resource) {
            Some((owner, until)) if owner == token && *until > Instant::now() => {
                *until = Instant::now() + lease;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn release(&self, resource: &str, token: &str) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let owned = held
            .leases
            .get(resource)
            .is_some_and(|(owner, until)| owner == token && *until > Instant::now());
        if owned {
            held.leases.remove(resource);
            self.released.notify_waiters();
        }
        owned
    }

    pub(crate) fn remaining(&self, resource: &str) -> Option<Duration> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.leases
            .get(resource)
            .and_then(|(_, until)| until.checked_duration_since(Instant::now()))
    }

    /// A wake-up on the next release, registered now (so a release between this call and
    /// the wait is not missed).
    pub(crate) fn watch(&self) -> Pin<Box<Notified<'_>>> {
        let mut notified = Box::pin(self.released.notified());
        notified.as_mut().enable();
        notified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry::from_json(b"1".to_vec()))
    }

    fn indexed(store: &MemoryStore, level: &str) -> usize {
        store.prefixes.lock().unwrap().get(level).map_or(0, HashMap::len)
    }

    const PLAN: FillPlan<'static> = FillPlan {
        lifetime: Duration::from_secs(60),
        fresh_for: Duration::from_secs(60),
        window: Duration::from_secs(60),
        force: false,
        lookup: false,
        tags: &[],
    };

    fn tag_size(store: &MemoryStore, tag: &str) -> usize {
        let prefixes = store.prefixes.lock().unwrap();
        prefixes.get(&tag_level(tag)).map_or(0, HashMap::len)
    }

    #[tokio::test]
    async fn tags_remove_their_keys_and_their_sets_shrink_as_keys_go() {
        let store = MemoryStore::new(1 << 24);
        let ttl = Duration::from_secs(60);
        let ford = ["make:ford".to_owned(), "listings".to_owned()];
        store.set("search:1", entry(), ttl, &ford);
        store.set("search:2", entry(), ttl, &["make:audi".to_owned()]);
        store.set("make:ford", entry(), ttl, &[]); // a key named like the tag
        store.set("short:1", entry(), Duration::from_millis(20), &ford);
        assert_eq!(tag_size(&store, "make:ford"), 2);
        // moka's expiry wheel works in steps of about a second.
        let started = Instant::now();
        while tag_size(&store, "make:ford") != 1 && started.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.entries.run_pending_tasks();
        }
        assert_eq!(tag_size(&store, "make:ford"), 1, "an expired key leaves the tag's set");

        // A load running under the tag: its marker is removed, its fill refused.
        let plan = FillPlan { tags: &ford, ..PLAN };
        let Begun::Ticket(ticket) = store.begin_fill("search:3", &plan) else { panic!() };
        assert_eq!(store.remove_tagged("make:ford"), 1, "values counted, markers not");
        assert!(!store.fill("search:3", &ticket, entry(), ttl, &ford));
        assert!(store.get("search:1").is_none());
        assert!(store.get("search:2").is_some() && store.get("make:ford").is_some());
        store.entries.run_pending_tasks();
        assert_eq!(tag_size(&store, "make:ford"), 0);
        assert_eq!(tag_size(&store, "listings"), 0, "the removed keys left their other tags");

        // A marker shared by a load with other tags joins their sets.
        let Begun::Ticket(first) = store.begin_fill("page:1", &plan) else { panic!() };
        let other = ["dealer:7".to_owned()];
        let Begun::Ticket(adopted) = store.begin_fill("page:1", &FillPlan { tags: &other, ..PLAN })
        else {
            panic!()
        };
        store.remove_tagged("dealer:7");
        assert!(!store.fill("page:1", &adopted, entry(), ttl, &other));
        assert!(!store.fill("page:1", &first, entry(), ttl, &ford));
    }

    #[tokio::test]
    async fn patterns_are_served_by_the_prefix_index() {
        let store = MemoryStore::new(1 << 20);
        let ttl = Duration::from_secs(60);
        for key in ["dealer:1:vehicles", "dealer:2:vehicles", "homepage:hero", "config"] {
            store.set(key, entry(), ttl, &[]);
        }
        // Overwriting keeps the key indexed (the late `Replaced` notice is ignored).
        store.set("dealer:1:vehicles", entry(), ttl, &[]);
        store.entries.run_pending_tasks();
        assert_eq!(indexed(&store, "dealer:"), 2);
        assert_eq!(store.remove_matching("dealer:*"), 2);
        store.entries.run_pending_tasks();
        assert_eq!(indexed(&store, "dealer:"), 0, "explicit removals leave the index");
        assert!(store.get("homepage:hero").is_some());
        assert_eq!(store.remove_matching("conf*"), 1, "no index level: a walk");
    }

    #[tokio::test]
    async fn expired_entries_leave_the_index() {
        let store = MemoryStore::new(1 << 20);
        store.set("short:1", entry(), Duration::from_millis(20), &[]);
        store.set("short:2", entry(), Duration::from_secs(60), &[]);
        // moka's expiry wheel works in steps of about a second.
        let started = Instant::now();
        while indexed(&store, "short:") != 1 && started.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.entries.run_pending_tasks();
        }
        assert_eq!(indexed(&store, "short:"), 1);
    }

    #[tokio::test]
    async fn a_fill_lands_only_while_its_marker_is_there() {
        let store = MemoryStore::new(1 << 20);
        let ttl = Duration::from_secs(60);
        let Begun::Ticket(ticket) = store.begin_fill("k:1", &PLAN) else {
            panic!("nothing stored yet")
        };
        assert!(store.get("k:1").is_none(), "a marker reads as a miss");
        // A second loader adopts the same marker.
        let Begun::Ticket(adopted) = store.begin_fill("k:1", &PLAN) else {
            panic!("a marker is not a value")
        };
        assert_eq!(store.remove_matching("k:*"), 0, "markers are found, not counted");
        assert!(!store.fill("k:1", &ticket, entry(), ttl, &[]), "invalidated: refused");
        assert!(!store.fill("k:1", &adopted, entry(), ttl, &[]));
        assert!(store.get("k:1").is_none());

        let Begun::Ticket(ticket) = store.begin_fill("k:1", &PLAN) else { panic!("removed") };
        assert!(store.fill("k:1", &ticket, entry(), ttl, &[]));
        assert!(!store.fill("k:1", &ticket, entry(), ttl, &[]), "a ticket is used once");
        assert!(matches!(store.begin_fill("k:1", &PLAN), Begun::Present(_)));
    }

    #[tokio::test]
    async fn a_write_through_voids_older_tickets_and_refreshes() {
        let store = MemoryStore::new(1 << 20);
        let ttl = Duration::from_secs(60);
        let Begun::Ticket(ticket) = store.begin_fill("k:1", &PLAN) else {
            panic!("nothing stored yet")
        };
        store.set("k:1", entry(), ttl, &[]);
        assert!(!store.fill("k:1", &ticket, entry(), ttl, &[]));
        let found = store.get_aged("k:1").unwrap();
        let refresh = Ticket::Replace { old: found.entry, version: found.version };
        store.set("k:1", entry(), ttl, &[]);
        assert!(!store.fill("k:1", &refresh, entry(), ttl, &[]), "the value changed");
    }

    /// A write-through that waits for its key (other changes of the key get it first) while
    /// a load places its marker there and a pattern invalidation of a sibling key removes
    /// that marker: once stored, the value must still be in the prefix index, or the next
    /// pattern invalidation misses it and the old value outlives it. (A write numbered or
    /// indexed before its step, as an earlier version did, fails this.)
    #[test]
    fn a_write_through_that_waited_for_its_key_stays_indexed() {
        let store = MemoryStore::new(1 << 20);
        let ttl = Duration::from_secs(60);
        let key = "grp:1:row:5";
        // Before the write-through gets its turn: a load begins (its marker), and a pattern
        // invalidation for another row of the group removes that marker.
        *store.before_change.lock().unwrap() = Some(Box::new(move |store: &MemoryStore| {
            assert!(matches!(store.begin_fill(key, &PLAN), Begun::Ticket(_)));
            assert_eq!(store.remove_matching("grp:1:*"), 0, "a marker is not counted");
        }));
        store.set(key, entry(), ttl, &[]);
        assert!(store.before_change.lock().unwrap().is_none(), "the other changes ran");
        assert!(store.get(key).is_some(), "the write-through stored its value");
        store.entries.run_pending_tasks();
        assert_eq!(store.remove_matching("grp:1:*"), 1, "the invalidation finds it");
        assert!(store.get(key).is_none(), "no value outlives the pattern invalidation");
    }

    #[test]
    fn the_lock_table_is_pruned_and_fencing_stays_monotonic() {
        let locks = LocalLocks::default();
        let lease = Duration::from_millis(1);
        let mut last = 0;
        for i in 0..100_000 {
            let resource = format!("order:{i}");
            let lease = if i % 2 == 0 { Duration::from_secs(60) } else { lease };
            let fence = locks.try_acquire(&resource, "t", lease).expect("free");
            assert!(fence > last);
            last = fence;
            if i % 2 == 0 {
                assert!(locks.release(&resource, "t"));
            } // else: its holder died, the lease runs out
        }
        std::thread::sleep(Duration::from_millis(2));
        locks.try_acquire("order:last", "t", lease);
        assert!(locks.len() <= 2 * FIRST_SWEEP, "{} leases kept", locks.len());
        // A pruned resource's next token is still greater than any it handed out.
        let again = locks.try_acquire("order:1", "t", Duration::from_secs(60)).expect("expired");
        assert!(again > last);
        assert!(locks.try_acquire("order:1", "u", lease).is_none(), "held");
    }

    #[tokio::test]
    async fn weights_count_the_index_and_the_typed_copy() {
        let store = MemoryStore::new(1 << 30);
        let ttl = Duration::from_secs(60);
        store.set("k:0", entry(), ttl, &[]); // creates the level `k:`
        store.set("k:1", entry(), ttl, &[]);
        store.set("k:2:x", entry(), ttl, &[]);
        store.set("k:3:x", entry(), ttl, &[]);
        let weight = |key: &str| weigh(key, &store.entries.get(key).unwrap()) as usize;
        let (one, two, shared) = (weight("k:1"), weight("k:2:x"), weight("k:3:x"));
        assert!(two >= one + INDEX_LEVEL + INDEX_ENTRY, "{one} {two}");
        assert_eq!(two, shared, "both created their own second level");
        let typed = Arc::new(
            Entry::encode(
                &String::from("abc"),
                Some(String::clone),
                &crate::format::Format::default(),
            )
            .unwrap(),
        );
        store.set("k:4", typed, ttl, &[]);
        assert!(weight("k:4") > one + 3 + std::mem::size_of::<String>());
    }
}
