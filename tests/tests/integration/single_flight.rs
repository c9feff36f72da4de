//! Single flight: concurrent misses of one key inside a process run the body once, over the
//! memory store and over Redis, with annotated futures handed to `tokio::spawn`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use cache_tests::RedisServer;
use tokio::task::JoinSet;

use crate::{redis_cache, stored_json, DbError, Raw, Vehicle};

const CALLERS: usize = 1000;

/// Starts `CALLERS` tasks with `tokio::spawn` (so the futures must be `Send + 'static`), all
/// calling at once, and returns their results.
async fn stampede<F, Fut, T>(call: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..CALLERS).map(|_| tokio::spawn(call())).collect();
    let mut results = Vec::with_capacity(CALLERS);
    for handle in handles {
        results.push(handle.await.expect("no caller panics"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stampede_runs_the_body_once() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn get_vehicle(cache: Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        CALLS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Some(Vehicle::new(id)))
    }

    let cache = Cache::memory();
    let results = stampede(|| get_vehicle(cache.clone(), 42)).await;
    assert_eq!(results.len(), CALLERS);
    for result in results {
        assert_eq!(result, Ok(Some(Vehicle::new(42))));
    }
    assert_eq!(CALLS.load(SeqCst), 1, "one body run for {CALLERS} concurrent callers");
    let stats = cache.stats_of("get_vehicle");
    assert_eq!(stats.loads, 1, "{stats:?}");
    assert_eq!(stats.hits + stats.misses, CALLERS as u64, "one lookup per call: {stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    // Afterwards: a plain hit.
    assert_eq!(get_vehicle(cache.clone(), 42).await, Ok(Some(Vehicle::new(42))));
    assert_eq!(CALLS.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stampede_runs_the_body_once() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn get_vehicle(cache: Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        CALLS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Some(Vehicle::new(id)))
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    let results = stampede(|| get_vehicle(cache.clone(), 42)).await;
    for result in results {
        assert_eq!(result, Ok(Some(Vehicle::new(42))));
    }
    assert_eq!(CALLS.load(SeqCst), 1, "one body run for {CALLERS} concurrent callers");
    let stats = cache.stats_of("get_vehicle");
    assert_eq!(stats.loads, 1, "{stats:?}");
    assert_eq!(stats.hits + stats.misses, CALLERS as u64, "one lookup per call: {stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(raw.keys().await, ["t:vehicle:42"]);
    assert_eq!(stored_json(&raw, "t:vehicle:42").await["model"], "model-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_load_concurrently() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "slow:<id>", ttl = "1m", cache = cache)]
    async fn slow(cache: Cache, id: u64) -> u64 {
        CALLS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        id
    }

    let cache = Cache::memory();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for id in 0..20 {
        for _ in 0..5 {
            tasks.spawn(slow(cache.clone(), id));
        }
    }
    let mut sum = 0;
    while let Some(joined) = tasks.join_next().await {
        sum += joined.unwrap();
    }
    assert_eq!(sum, 5 * (0..20).sum::<u64>());
    assert_eq!(CALLS.load(SeqCst), 20, "one load per key");
    // 20 loads of 100 ms in sequence would take 2 s: flights of different keys are independent.
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_strand_the_other_callers() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn get_vehicle(cache: Cache, id: u64) -> Option<Vehicle> {
        CALLS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some(Vehicle::new(id))
    }

    let server = RedisServer::start();
    let cache = redis_cache(&server).await;

    // The first caller gives up (its future is dropped) while its body runs.
    let leader = tokio::spawn(tokio::time::timeout(
        Duration::from_millis(30),
        get_vehicle(cache.clone(), 9),
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut followers = JoinSet::new();
    for _ in 0..20 {
        followers
            .spawn(tokio::time::timeout(Duration::from_secs(5), get_vehicle(cache.clone(), 9)));
    }
    assert!(leader.await.unwrap().is_err(), "the first caller timed out");
    while let Some(joined) = followers.join_next().await {
        let got = joined.unwrap().expect("a follower never hangs on a cancelled leader");
        assert_eq!(got, Some(Vehicle::new(9)));
    }
    assert_eq!(CALLS.load(SeqCst), 2, "one new leader took over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_errors_reach_every_caller_and_are_not_cached() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    // Set when the first run of the body ends; runs that start before it are counted.
    static FIRST_DONE: AtomicBool = AtomicBool::new(false);
    static BESIDE_FIRST: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "broken:<id>", ttl = "1m", cache = cache)]
    async fn broken(cache: Cache, id: u64) -> Result<u64, DbError> {
        let nth = CALLS.fetch_add(1, SeqCst);
        if nth > 0 && !FIRST_DONE.load(SeqCst) {
            BESIDE_FIRST.fetch_add(1, SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        if nth == 0 {
            FIRST_DONE.store(true, SeqCst);
        }
        Err(DbError(format!("no row {id}")))
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    let mut tasks = JoinSet::new();
    for _ in 0..50 {
        tasks.spawn(tokio::time::timeout(Duration::from_secs(5), broken(cache.clone(), 1)));
    }
    while let Some(joined) = tasks.join_next().await {
        let got = joined.unwrap().expect("no caller hangs");
        assert_eq!(got, Err(DbError("no row 1".into())));
    }
    // The misses share one flight: the other callers wait for its leader's body, which runs
    // alone. An error is not shared (`E` need not be `Clone`), so once the leader fails each
    // of them runs its own body: one run per caller, none while the leader's ran.
    assert_eq!(BESIDE_FIRST.load(SeqCst), 0, "bodies ran beside the leader's: no single flight");
    assert_eq!(CALLS.load(SeqCst), 50, "one body run per caller");
    assert!(raw.keys().await.is_empty(), "Err is never stored");
}
