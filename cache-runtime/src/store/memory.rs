//! The in-process store, on moka: bounded by bytes, each entry expiring after its own TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::Entry;

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
}

impl MemoryStore {
    /// A store holding at most about `capacity_bytes` of keys and JSON-encoded values.
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        let entries = moka::future::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, stored: &Stored| {
                let bytes = key.len() + stored.entry.json.len() + ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        MemoryStore { entries }
    }

    pub(crate) async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.entries.get(key).await.map(|stored| stored.entry)
    }

    /// The entry and how long ago it was stored.
    pub(crate) async fn get_aged(&self, key: &str) -> Option<(Arc<Entry>, Duration)> {
        self.entries.get(key).await.map(|stored| (stored.entry, stored.stored_at.elapsed()))
    }

    pub(crate) async fn set(&self, key: &str, entry: Arc<Entry>, ttl: Duration) {
        self.entries.insert(key.to_owned(), Stored { entry, ttl, stored_at: Instant::now() }).await;
    }
}

impl MemoryStore {
    pub(crate) async fn remove(&self, key: &str) -> u64 {
        u64::from(self.entries.remove(key).await.is_some())
    }

    /// Removes the keys matching `pattern` (a walk over this process's entries).
    pub(crate) async fn remove_matching(&self, pattern: &str) -> u64 {
        let matching: Vec<std::sync::Arc<String>> = self
            .entries
            .iter()
            .filter(|(key, _)| crate::glob::matches(pattern, key))
            .map(|(key, _)| key)
            .collect();
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
