//! [`Cache::health`]: is the store reachable, how fast, and what Redis says about itself.

#[cfg(feature = "redis")]
use std::time::Duration;

use serde::Serialize;

use crate::breaker::BreakerState;
use crate::core::CacheCore;
use crate::store::Probe;

/// A snapshot of the store's health, as the admin `/cache/health` route shows it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// `"memory"` or `"redis"`.
    pub store: &'static str,
    /// Whether the store answered (always true for the memory store).
    pub reachable: bool,
    /// Round trip of a `PING`, in milliseconds.
    pub round_trip_ms: Option<f64>,
    /// The circuit breaker in front of Redis.
    pub breaker: BreakerState,
    /// Redis `used_memory` (bytes), or the memory store's weighed size.
    pub used_memory_bytes: Option<u64>,
    /// Redis `connected_clients`.
    pub connected_clients: Option<u64>,
    /// Redis `evicted_keys`: keys dropped under `maxmemory`.
    pub evicted_keys: Option<u64>,
    /// Redis `keyspace_hits` (server-wide, every client).
    pub keyspace_hits: Option<u64>,
    /// Redis `keyspace_misses` (server-wide, every client).
    pub keyspace_misses: Option<u64>,
    /// Entries in the memory store.
    pub entries: Option<u64>,
    /// Invalidations that could not reach Redis yet and are being replayed (the backlog of
    /// `cache_pending_invalidations`).
    pub pending_invalidations: u64,
    /// Why the store is unreachable.
    pub error: Option<String>,
    /// Permissions the Redis user lacks (checked by this call), each as
    /// `"+grant: what fails without it"`, in the terms of the README's `ACL SETUSER` line.
    /// Empty when nothing is missing (and for the memory store, or a Redis older than 7,
    /// which cannot tell).
    pub missing_permissions: Vec<String>,
    /// Why the near cache serves nothing now (client tracking refused, or not connected),
    /// if the cache has one and it is not live.
    pub near_cache_error: Option<String>,
}

/// [`Cache::health`](crate::Cache::health): probes the store.
pub(crate) async fn probe(core: &CacheCore) -> Health {
    let mut health = Health {
        store: core.kind(),
        reachable: true,
        round_trip_ms: None,
        breaker: core.store().breaker_state(),
        used_memory_bytes: None,
        connected_clients: None,
        evicted_keys: None,
        keyspace_hits: None,
        keyspace_misses: None,
        entries: None,
        pending_invalidations: u64::try_from(core.backlog().len()).unwrap_or(u64::MAX),
        error: None,
        missing_permissions: Vec::new(),
        near_cache_error: core.near().and_then(|near| near.trouble()),
    };
    match core.store().probe().await {
        Probe::Memory { entries, bytes } => {
            health.entries = Some(entries);
            health.used_memory_bytes = Some(bytes);
            health.round_trip_ms = Some(0.0);
        }
        #[cfg(feature = "redis")]
        Probe::Redis { round_trip, info } => {
            health.missing_permissions =
                core.store().missing_permissions(core.near().is_some()).await;
            health.round_trip_ms = Some(millis(round_trip));
            // A cluster answers per primary: sum over them.
            // No INFO at all (not permitted): no figures, rather than zeros.
            let field = |name: &str| {
                let figures = info.iter().map(|node| info_field(node, name));
                figures.sum::<Option<u64>>().filter(|_| !info.is_empty())
            };
            health.used_memory_bytes = field("used_memory");
            health.connected_clients = field("connected_clients");
            health.evicted_keys = field("evicted_keys");
            health.keyspace_hits = field("keyspace_hits");
            health.keyspace_misses = field("keyspace_misses");
        }
        #[cfg(feature = "redis")]
        Probe::Unreachable(error) => {
            health.reachable = false;
            health.error = Some(error.to_string());
        }
    }
    health
}

#[cfg(feature = "redis")]
fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A numeric `name:value` line of `INFO`.
#[cfg(feature = "redis")]
fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    #[test]
    fn reads_info_fields() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1K\r\nevicted_keys:3\r\n";
        assert_eq!(super::info_field(info, "used_memory"), Some(1024));
        assert_eq!(super::info_field(info, "evicted_keys"), Some(3));
        assert_eq!(super::info_field(info, "keyspace_hits"), None);
    }
}
