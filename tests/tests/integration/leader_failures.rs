//! Single flight when the leader's body panics: the callers that were waiting on it are not
//! stranded; one of them becomes the new leader and every one gets a value, in bounded time,
//! over the memory store, over Redis, and over Redis with `lock` across two processes
//! (two `Cache` handles).
//!
//! The panics are expected: their messages in the test output come from the spawned leader.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use cache_tests::RedisServer;
use tokio::task::JoinSet;

use crate::{redis_cache, Raw};

const FOLLOWERS: usize = 20;

/// How long the followers may take in all: far less than a lock lease (5 s by default).
const BOUND: Duration = Duration::from_secs(1);

/// Spawns `call(0)` (the leader, whose body panics), then, while its body runs, `FOLLOWERS`
/// more calls; checks the leader panicked and every follower got `expected` within `BOUND`.
async fn followers_survive_a_panicking_leader<F, Fut>(call: F, expected: Option<u64>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<u64>> + Send + 'static,
{
    let leader = tokio::spawn(call());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let mut followers = JoinSet::new();
    for _ in 0..FOLLOWERS {
        followers.spawn(tokio::time::timeout(Duration::from_secs(5), call()));
    }
    let joined = leader.await;
    assert!(joined.as_ref().is_err_and(|e| e.is_panic()), "the leader's body panics: {joined:?}");
    while let Some(joined) = followers.join_next().await {
        let got = joined
            .expect("a follower does not panic")
            .expect("a follower is not stranded by the panicked leader");
        assert_eq!(got, expected);
    }
    let took = started.elapsed();
    assert!(took < BOUND, "the followers took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_followers_survive_a_panicking_leader() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "flaky:<id>", ttl = "1m", cache = cache)]
    async fn flaky(cache: Cache, id: u64) -> Option<u64> {
        let call = CALLS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(call > 0, "the first body run panics");
        Some(id * 10)
    }

    let cache = Cache::memory();
    followers_survive_a_panicking_leader(|| flaky(cache.clone(), 7), Some(70)).await;
    assert_eq!(CALLS.load(SeqCst), 2, "one follower became the leader");
    assert_eq!(flaky(cache.clone(), 7).await, Some(70));
    assert_eq!(CALLS.load(SeqCst), 2, "and its value is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_followers_survive_a_panicking_leader() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "flaky:<id>", ttl = "1m", cache = cache)]
    async fn flaky(cache: Cache, id: u64) -> Option<u64> {
        let call = CALLS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(call > 0, "the first body run panics");
        Some(id * 10)
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    followers_survive_a_panicking_leader(|| flaky(cache.clone(), 7), Some(70)).await;
    assert_eq!(CALLS.load(SeqCst), 2, "one follower became the leader");
    assert_eq!(raw.keys().await, ["t:flaky:7"]);
}

/// With `lock`, the panicked leader also held the cross-process lease: waiters in another
/// process are told it failed (not left to wait out the 5 s lease) and one of them loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lock_waiters_in_another_process_survive_a_panicking_leader() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "flaky-locked:<id>", ttl = "1m", lock, cache = cache)]
    async fn flaky(cache: Cache, id: u64) -> Option<u64> {
        let call = CALLS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(call > 0, "the first body run panics");
        Some(id * 10)
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let a = redis_cache(&server).await;
    let b = redis_cache(&server).await;
    // Process A's leader panics; process B's callers wait on its lease.
    let leader = tokio::spawn(flaky(a.clone(), 3));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let started = Instant::now();
    let mut waiters = JoinSet::new();
    for _ in 0..FOLLOWERS {
        waiters.spawn(tokio::time::timeout(Duration::from_secs(8), flaky(b.clone(), 3)));
    }
    assert!(leader.await.is_err_and(|e| e.is_panic()));
    while let Some(joined) = waiters.join_next().await {
        let got = joined.unwrap().expect("a waiter is not stranded");
        assert_eq!(got, Some(30));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the waiters took {took:?}: they waited out the dead leader's lease"
    );
    assert_eq!(CALLS.load(SeqCst), 2, "one waiter took over the load");
    assert_eq!(raw.keys().await, ["t:flaky-locked:3"]);
}
