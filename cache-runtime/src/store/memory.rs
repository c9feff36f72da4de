//! The in-process store, on moka: bounded by bytes, each entry expiring after its own TTL,
//! with the same prefix index as the Redis store so that pattern invalidation does not walk
//! every entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;

use crate::codec::Entry;
use crate::{glob, index};

/// Keys by index level (`dealer:`, `dealer:7:`), each with the instant its current value was
/// stored: an eviction notice for an older value (delivered late) must not un-index a key
/// that was written again.
type PrefixIndex = Mutex<HashMap<String, HashMap<String, Instant>>>;

fn unindex(prefixes: &PrefixIndex, key: &str, stored_at: Instant) {
    let mut prefixes = prefixes.lock().unwrap_or_else(|e| e.into_inner());
    for level in index::levels(key) {
        if let Some(keys) = prefixes.get_mut(level) {
            if keys.get(key) == Some(&stored_at) {
                keys.remove(key);
            }
            if keys.is_empty() {
                prefixes.remove(level);
            }
        }
    }
}

/// Per-entry bookkeeping besides the bytes moka weighs.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Clone)]
struct Stored {
    entry: Arc<Entry>,
    ttl: Duration,
    stored_at: Instant,
}

/// Expires every entry after the TTL it was stored with, also when it is overwritten.
struct PerEntryTtl;

impl moka::Expiry<String, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, stored: &Stored, _: Instant) -> Option<Duration> {
        Some(stored.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        stored: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(stored.ttl)
    }
}

pub(crate) struct MemoryStore {
    entries: moka::future::Cache<String, Stored>,
    prefixes: Arc<PrefixIndex>,
}

impl MemoryStore {
    /// A store holding at most about `capacity_bytes` of keys and JSON-encoded values.
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        let prefixes = Arc::new(PrefixIndex::default());
        let entries = moka::future::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, stored: &Stored| {
                let bytes = key.len() + stored.entry.json.len() + ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener({
                let prefixes = Arc::clone(&prefixes);
                move |key: Arc<String>, stored: Stored, cause| {
                    // A replaced value's key is still there (and was indexed anew).
                    if cause != RemovalCause::Replaced {
                        unindex(&prefixes, &key, stored.stored_at);
                    }
                }
            })
            .build();
        MemoryStore { entries, prefixes }
    }

    pub(crate) async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.entries.get(key).await.map(|stored| stored.entry)
    }

    /// The entry and how long ago it was stored.
    pub(crate) async fn get_aged(&self, key: &str) -> Option<(Arc<Entry>, Duration)> {
        self.entries.get(key).await.map(|stored| (stored.entry, stored.stored_at.elapsed()))
    }

    pub(crate) async fn set(&self, key: &str, entry: Arc<Entry>, ttl: Duration) {
        let stored_at = Instant::now();
        {
            let mut prefixes = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
            for level in index::levels(key) {
                prefixes.entry(level.to_owned()).or_default().insert(key.to_owned(), stored_at);
            }
        }
        self.entries.insert(key.to_owned(), Stored { entry, ttl, stored_at }).await;
    }
}

impl MemoryStore {
    pub(crate) async fn remove(&self, key: &str) -> u64 {
        u64::from(self.entries.remove(key).await.is_some())
    }

    /// Removes the keys matching `pattern`: the keys of the index level the pattern names,
    /// or (for patterns without one) a walk over every entry.
    pub(crate) async fn remove_matching(&self, pattern: &str) -> u64 {
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
            removed += self.remove(&key).await;
        }
        removed
    }

    /// Entries and their weighed size in bytes.
    pub(crate) async fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks().await;
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    pub(crate) async fn clear(&self) -> u64 {
        self.remove_matching("*").await
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

    #[tokio::test]
    async fn patterns_are_served_by_the_prefix_index() {
        let store = MemoryStore::new(1 << 20);
        let ttl = Duration::from_secs(60);
        for key in ["dealer:1:vehicles", "dealer:2:vehicles", "homepage:hero", "config"] {
            store.set(key, entry(), ttl).await;
        }
        // Overwriting keeps the key indexed (the late `Replaced` notice is ignored).
        store.set("dealer:1:vehicles", entry(), ttl).await;
        store.entries.run_pending_tasks().await;
        assert_eq!(indexed(&store, "dealer:"), 2);
        assert_eq!(store.remove_matching("dealer:*").await, 2);
        store.entries.run_pending_tasks().await;
        assert_eq!(indexed(&store, "dealer:"), 0, "explicit removals leave the index");
        assert!(store.get("homepage:hero").await.is_some());
        assert_eq!(store.remove_matching("conf*").await, 1, "no index level: a walk");
    }

    #[tokio::test]
    async fn expired_entries_leave_the_index() {
        let store = MemoryStore::new(1 << 20);
        store.set("short:1", entry(), Duration::from_millis(20)).await;
        store.set("short:2", entry(), Duration::from_secs(60)).await;
        // moka's expiry wheel works in steps of about a second.
        let started = Instant::now();
        while indexed(&store, "short:") != 1 && started.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.entries.run_pending_tasks().await;
        }
        assert_eq!(indexed(&store, "short:"), 1);
    }
}
