//! Where entries live: in process ([`memory`]) or in Redis ([`redis`]).

mod link;
pub(crate) mod memory;
pub(crate) mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::codec::Entry;
use crate::error::Result;

/// What a pattern invalidation removed.
pub(crate) struct Removed {
    /// Keys removed.
    pub(crate) keys: u64,
    /// Whether the keyspace had to be scanned (no index serves the pattern).
    pub(crate) scanned: bool,
}

/// The store behind a [`Cache`](crate::Cache). An enum rather than a trait object: there are
/// two stores, and static dispatch keeps the hit path free of boxing.
pub(crate) enum Store {
    Memory(memory::MemoryStore),
    Redis(redis::RedisStore),
}

impl Store {
    /// The entry under `key` (without the cache's prefix), if any.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>> {
        match self {
            Store::Memory(store) => Ok(store.get(key).await),
            Store::Redis(store) => store.get(key).await,
        }
    }

    /// The entry under `key` and its age, for entries stored with `lifetime`.
    pub(crate) async fn get_aged(
        &self,
        key: &str,
        lifetime: Duration,
    ) -> Result<Option<(Arc<Entry>, Duration)>> {
        match self {
            Store::Memory(store) => Ok(store.get_aged(key).await),
            Store::Redis(store) => store.get_aged(key, lifetime).await,
        }
    }

    /// Stores `entry` under `key` for `ttl`.
    pub(crate) async fn set(&self, key: &str, entry: &Arc<Entry>, ttl: Duration) -> Result<()> {
        match self {
            Store::Memory(store) => {
                store.set(key, Arc::clone(entry), ttl).await;
                Ok(())
            }
            Store::Redis(store) => store.set(key, entry, ttl).await,
        }
    }

    /// Removes `key`; returns how many keys went (0 or 1).
    pub(crate) async fn remove(&self, key: &str) -> Result<u64> {
        match self {
            Store::Memory(store) => Ok(store.remove(key).await),
            Store::Redis(store) => store.remove(key).await,
        }
    }

    /// Removes the keys matching a glob.
    pub(crate) async fn remove_matching(&self, pattern: &str) -> Result<Removed> {
        match self {
            Store::Memory(store) => {
                Ok(Removed { keys: store.remove_matching(pattern).await, scanned: false })
            }
            Store::Redis(store) => store.remove_matching(pattern).await,
        }
    }

    /// Removes every key of this cache.
    pub(crate) async fn clear(&self) -> Result<u64> {
        match self {
            Store::Memory(store) => Ok(store.clear().await),
            Store::Redis(store) => store.clear().await,
        }
    }

    /// A short name for logs and `Debug`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}
