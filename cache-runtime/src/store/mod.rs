//! Where entries live: in process ([`memory`]) or in Redis ([`redis`]).

pub(crate) mod memory;
pub(crate) mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::codec::Entry;
use crate::error::Result;

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

    /// A short name for logs and `Debug`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}
