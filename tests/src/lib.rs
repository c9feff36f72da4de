//! Integration tests for cache-runtime and the helper they share.
//!
//! The tests themselves live in `tests/` (cross-crate integration tests against real Redis
//! servers) and `ui/` (trybuild compile-pass and compile-fail cases for the attributes). This
//! library holds [`RedisServer`], which starts a private `redis-server` process per test on a
//! free loopback port, so tests never touch a shared server's data and can kill, pause and
//! restart their own, [`DelayProxy`], which can hold one client command back to open a
//! race's window deterministically, and [`LatencyProxy`], which adds a fixed round trip to
//! every exchange with a server (the benches' stand-in for a network hop).

pub mod http;
pub mod latency_proxy;
pub mod lock_workers;
pub mod proxy;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod tls;
pub use latency_proxy::LatencyProxy;
pub use proxy::DelayProxy;
pub use redis_cluster::RedisCluster;
pub use redis_sentinel::RedisSentinel;
pub use redis_server::RedisServer;

/// The JSON inside a value as the cache stores it:
/// `cr2:j:-:<fingerprint>:<written>:<delta>:<json>` (JSON codec, uncompressed) or the
/// previous release's `cr1:j:-:<fingerprint>:<json>` give `<json>`; anything else (plain
/// JSON, someone else's data) is returned as it is.
pub fn stored_payload(stored: &str) -> &str {
    if let Some(rest) = stored.strip_prefix("cr2:j:-:") {
        return rest.splitn(4, ':').nth(3).unwrap_or(stored);
    }
    match stored.strip_prefix("cr1:j:-:") {
        Some(rest) => rest.split_once(':').map_or(stored, |(_, json)| json),
        None => stored,
    }
}
