//! What a `lock` waiter in another process may take while the load lease is held: never a
//! copy kept past its TTL (the grace period of `refresh`), although that copy is still in
//! Redis while the holder refreshes it.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Cache};
use cache_tests::RedisServer;

use crate::PREFIX;

static VERSION: AtomicU64 = AtomicU64::new(0);
static SLOW_MS: AtomicU64 = AtomicU64::new(0);

#[cached(key = "graced:<id>", ttl = "400ms", refresh = "100ms", lock, cache = cache)]
async fn graced(cache: &Cache, id: u64) -> Result<u64, String> {
    let _ = (cache, id);
    tokio::time::sleep(Duration::from_millis(SLOW_MS.load(SeqCst))).await;
    Ok(VERSION.fetch_add(1, SeqCst) + 1)
}

/// Instance A's background refresh holds the lease with a slow body while the value passes
/// its TTL; instance B then misses and waits on the lease. B must get the refreshed value
/// (or load one itself), never the expired copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_lock_never_serves_a_grace_copy_across_processes() {
    let server = RedisServer::start();
    let build =
        || async { Cache::builder().redis(server.url()).prefix(PREFIX).build().await.unwrap() };
    let (a, b) = (build().await, build().await);

    assert_eq!(graced(&a, 1).await.unwrap(), 1, "a miss loads version 1");
    SLOW_MS.store(1500, SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Past the refresh age: A answers at once and refreshes in the background, under the
    // lease, for 1.5 s.
    assert_eq!(graced(&a, 1).await.unwrap(), 1);
    // Past the TTL (400 ms): the copy is kept only for the refresh to replace it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let read = graced(&b, 1).await.unwrap();
    assert!(read >= 2, "another process served the copy kept past its TTL (version {read})");
}
