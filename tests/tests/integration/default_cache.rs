//! The process-wide default cache, used by attributes without `cache = ...`.
//!
//! This is the only test of the binary that touches the default: tests run in parallel and
//! would otherwise see each other's default.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::{cached, default_cache, set_default, Cache};
use cache_tests::RedisServer;
use serde_json::json;

use crate::{redis_cache, stored_json, Raw};

#[tokio::test]
async fn attributes_without_cache_use_the_default_set_by_set_default() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "default:<id>", ttl = "1m")]
    async fn by_default(id: u64) -> u64 {
        CALLS.fetch_add(1, SeqCst);
        id + 1
    }

    // Before `set_default`: the built-in memory cache.
    assert_eq!(by_default(1).await, 2);
    assert_eq!(by_default(1).await, 2);
    assert_eq!(CALLS.load(SeqCst), 1);
    assert_eq!(default_cache().stats_of("by_default").hits, 1);

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache: Cache = redis_cache(&server).await;
    set_default(cache.clone());

    // Now the Redis cache: a cold store, so a miss, stored under its prefix.
    assert_eq!(by_default(1).await, 2);
    assert_eq!(by_default(1).await, 2);
    assert_eq!(CALLS.load(SeqCst), 2);
    assert_eq!(raw.keys().await, ["t:default:1"]);
    assert_eq!(stored_json(&raw, "t:default:1").await, json!(2));
    let stats = cache.stats_of("by_default");
    assert_eq!((stats.hits, stats.misses, stats.loads), (1, 1, 1), "{stats:?}");
    assert_eq!(default_cache().stats(), cache.stats(), "default_cache() is the cache we set");
}
