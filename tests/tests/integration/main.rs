//! Cross-crate integration tests of cache-runtime: `#[cached]` and the programmatic API over
//! the memory store and over real Redis servers.
//!
//! Every test that needs Redis starts its own `redis-server` ([`cache_tests::RedisServer`]) on
//! a free loopback port, builds its own [`Cache`] with the prefix `t:`, and inspects the server
//! directly through a raw connection, the way an operator with `redis-cli` would. Tests in this
//! binary run in parallel, so they never use the process-wide default cache, except the single
//! test in `default_cache.rs`.

mod bounds_keys;
mod bounds_size;
mod coherence_gaps;
mod default_cache;
mod failures;
mod invalidation;
mod keys;
mod leader_failures;
mod lease_reads;
mod lock_api;
mod memory_cache;
mod programmatic;
mod redis_cache;
mod single_flight;
mod write_path;

use std::future::Future;
use std::time::{Duration, Instant};

use cache_runtime::Cache;
use cache_tests::RedisServer;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

/// The prefix of every Redis cache built by these tests.
const PREFIX: &str = "t:";

/// Where the runtime keeps its pattern-invalidation indexes, after a cache's prefix.
const INDEX_NAMESPACE: &str = "#idx:";

/// A typical cached row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    model: String,
}

impl Vehicle {
    fn new(id: u64) -> Vehicle {
        Vehicle { id, dealer_id: id / 10, model: format!("model-{id}") }
    }
}

/// A typical database error: never cached.
#[derive(Debug, Clone, PartialEq)]
struct DbError(String);

/// A Redis cache on `server` with the prefix `t:`.
async fn redis_cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis(server.url())
        .prefix(PREFIX)
        .build()
        .await
        .expect("a cache for a valid URL builds")
}

/// Direct access to a test's Redis server, like `redis-cli`.
#[derive(Clone)]
struct Raw(MultiplexedConnection);

impl Raw {
    async fn connect(server: &RedisServer) -> Raw {
        Raw(server.connection().await)
    }

    /// `GET key`, as text.
    async fn get(&self, key: &str) -> Option<String> {
        let mut con = self.0.clone();
        redis::cmd("GET").arg(key).query_async(&mut con).await.expect("GET")
    }

    /// `SET key value` (no expiry).
    async fn set(&self, key: &str, value: &str) {
        let mut con = self.0.clone();
        redis::cmd("SET").arg(key).arg(value).query_async::<()>(&mut con).await.expect("SET");
    }

    /// `PTTL key`: milliseconds left, -1 without expiry, -2 when the key does not exist.
    async fn pttl(&self, key: &str) -> i64 {
        let mut con = self.0.clone();
        redis::cmd("PTTL").arg(key).query_async(&mut con).await.expect("PTTL")
    }

    /// `EXISTS key`.
    async fn exists(&self, key: &str) -> bool {
        let mut con = self.0.clone();
        let n: u64 = redis::cmd("EXISTS").arg(key).query_async(&mut con).await.expect("EXISTS");
        n == 1
    }

    /// The cached entries of the server, sorted (test servers hold a handful of keys): every
    /// key except the runtime's own invalidation indexes (`<prefix>#idx:...`), which are
    /// bookkeeping, not entries.
    async fn keys(&self) -> Vec<String> {
        let mut con = self.0.clone();
        let mut keys: Vec<String> =
            redis::cmd("KEYS").arg("*").query_async(&mut con).await.expect("KEYS");
        keys.retain(|key| {
            !key.split_once(':').is_some_and(|(_, rest)| rest.starts_with(INDEX_NAMESPACE))
        });
        keys.sort();
        keys
    }
}

/// The stored JSON under `key` (inside its envelope), parsed: panics when the key is
/// missing or not JSON.
async fn stored_json(raw: &Raw, key: &str) -> serde_json::Value {
    let text = raw.get(key).await.unwrap_or_else(|| panic!("no key {key:?} in Redis"));
    serde_json::from_str(cache_tests::stored_payload(&text))
        .unwrap_or_else(|e| panic!("{key:?} holds {text:?}, not JSON: {e}"))
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes; returns whether it did.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Cache` can be shared freely between tasks and threads.
#[test]
fn cache_is_a_send_sync_static_clone_handle() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
    assert_handle::<Cache>();
    assert_error::<cache_runtime::Error>();
}
