//! When things go wrong: values that do not decode, Redis killed mid-run, Redis down at start,
//! and Redis coming back. The cache is a mirror: annotated calls always return their body's
//! result, failures are counted in `errors`, and caching resumes by itself.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use cache_tests::RedisServer;
use serde_json::json;

use crate::{eventually, redis_cache, stored_json, DbError, Raw, Vehicle};

/// How long Redis may take to be used again after it comes back.
const RECOVERY: Duration = Duration::from_secs(5);

#[tokio::test]
async fn an_undecodable_value_is_a_miss_and_is_overwritten() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        CALLS.fetch_add(1, SeqCst);
        Ok(Some(Vehicle::new(id)))
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    // Garbage, another service's data, an old schema: none of them decodes as a Vehicle.
    let garbage = ["not json", "{\"vin\":\"WVW\"}", "42", "", "\u{0}\u{ff}"];
    for (i, junk) in garbage.iter().enumerate() {
        let id = i as u64;
        let key = format!("t:vehicle:{id}");
        raw.set(&key, junk).await;
        let errors_before = cache.stats().errors;

        assert_eq!(get_vehicle(&cache, id).await, Ok(Some(Vehicle::new(id))), "{junk:?}");
        assert_eq!(CALLS.load(SeqCst), i + 1, "{junk:?} is a miss: the body runs");
        // An empty string reads like a missing key (the hit is a bounded `GETRANGE`, which
        // answers "" for both): a miss that the fresh value replaces, without an error.
        if !junk.is_empty() {
            assert!(cache.stats().errors > errors_before, "{junk:?} is counted as an error");
        }
        // The fresh value replaced the garbage, with the TTL.
        assert_eq!(
            stored_json(&raw, &key).await,
            json!({"id": id, "dealer_id": 0, "model": format!("model-{id}")})
        );
        let pttl = raw.pttl(&key).await;
        assert!((899_000..=900_000).contains(&pttl), "{junk:?}: PTTL {pttl}");
        // And is a hit from now on.
        assert_eq!(get_vehicle(&cache, id).await, Ok(Some(Vehicle::new(id))));
        assert_eq!(CALLS.load(SeqCst), i + 1);
    }
    let stats = cache.stats_of("get_vehicle");
    assert_eq!(stats.hits, garbage.len() as u64, "{stats:?}");
    assert_eq!(stats.loads, garbage.len() as u64, "{stats:?}");
    assert!(stats.errors >= garbage.len() as u64 - 1, "{stats:?}");
}

#[tokio::test]
async fn redis_killed_mid_run_calls_return_body_results_then_caching_resumes() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        CALLS.fetch_add(1, SeqCst);
        Ok(Some(Vehicle::new(id)))
    }

    let mut server = RedisServer::start();
    let cache = redis_cache(&server).await;
    assert_eq!(get_vehicle(&cache, 1).await, Ok(Some(Vehicle::new(1))));
    assert_eq!(get_vehicle(&cache, 1).await, Ok(Some(Vehicle::new(1))));
    assert_eq!(CALLS.load(SeqCst), 1);
    assert_eq!(cache.stats().errors, 0);

    server.kill();
    // The first call after the kill discovers the failure.
    assert_eq!(get_vehicle(&cache, 1).await, Ok(Some(Vehicle::new(1))));
    let started = Instant::now();
    for round in 0..5 {
        // Cached before the kill, but unreachable now: the body answers.
        assert_eq!(get_vehicle(&cache, 1).await, Ok(Some(Vehicle::new(1))), "round {round}");
        assert_eq!(get_vehicle(&cache, 2).await, Ok(Some(Vehicle::new(2))), "round {round}");
    }
    let down_for = started.elapsed();
    assert_eq!(CALLS.load(SeqCst), 12, "every call ran its body while Redis was down");
    let stats = cache.stats_of("get_vehicle");
    assert!(stats.errors >= 1, "{stats:?}");
    assert_eq!(stats.hits, 1, "no hits while down: {stats:?}");
    // The programmatic `get` has no body to fall back on: it reports the failure.
    let got = cache.get::<Vehicle>("vehicle:1").await;
    assert!(got.is_err(), "get with Redis down: {got:?}");

    server.restart(); // empty: persistence is off
    let raw = Raw::connect(&server).await;
    let resumed = eventually(RECOVERY, || async {
        get_vehicle(&cache, 3).await.unwrap();
        raw.exists("t:vehicle:3").await
    })
    .await;
    assert!(resumed, "caching did not resume within {RECOVERY:?} of Redis coming back");
    let calls = CALLS.load(SeqCst);
    assert_eq!(get_vehicle(&cache, 3).await, Ok(Some(Vehicle::new(3))));
    assert_eq!(CALLS.load(SeqCst), calls, "a hit again");

    // Once the failure is known, calls do not wait on Redis again (circuit breaker): ten
    // calls take about as long as their bodies, not ten reconnect attempts.
    assert!(down_for < Duration::from_secs(1), "10 calls with Redis known down took {down_for:?}");
}

#[tokio::test]
async fn build_succeeds_while_redis_is_down_and_caching_starts_when_it_comes_up() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "n:<n>", ttl = "1m", cache = cache)]
    async fn double(cache: &Cache, n: u64) -> Option<u64> {
        CALLS.fetch_add(1, SeqCst);
        Some(n * 2)
    }

    let mut server = RedisServer::start();
    server.kill();
    let cache = Cache::builder()
        .redis(server.url())
        .prefix("t:")
        .build()
        .await
        .expect("build() succeeds while Redis is down");

    assert_eq!(double(&cache, 21).await, Some(42));
    assert_eq!(double(&cache, 21).await, Some(42));
    assert_eq!(CALLS.load(SeqCst), 2, "nothing is cached while Redis is down");
    assert!(cache.stats().errors >= 1, "{:?}", cache.stats());
    assert_eq!(cache.stats().hits, 0);

    server.restart();
    let raw = Raw::connect(&server).await;
    let started = eventually(RECOVERY, || async {
        double(&cache, 21).await;
        raw.exists("t:n:21").await
    })
    .await;
    assert!(started, "caching did not start within {RECOVERY:?} of Redis coming up");
    let calls = CALLS.load(SeqCst);
    assert_eq!(double(&cache, 21).await, Some(42));
    assert_eq!(CALLS.load(SeqCst), calls, "a hit");
    assert_eq!(stored_json(&raw, "t:n:21").await, json!(42));
}

#[tokio::test]
async fn get_or_load_falls_back_on_its_loader_while_redis_is_down() {
    let mut server = RedisServer::start();
    let cache = redis_cache(&server).await;
    server.kill();
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let got: Result<String, cache_runtime::Error> = cache
            .get_or_load("greeting:en", Duration::from_secs(60), || async {
                calls.fetch_add(1, SeqCst);
                Ok("hello".to_owned())
            })
            .await;
        assert_eq!(got.unwrap(), "hello");
    }
    assert_eq!(calls.load(SeqCst), 3);
    assert!(cache.stats_of(cache_runtime::DIRECT_CALLS).errors >= 1);
    assert!(cache.set("greeting:en", "hello", Duration::from_secs(60)).await.is_err());
}

#[tokio::test]
async fn a_hung_redis_costs_at_most_a_timeout_then_calls_stop_waiting() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        CALLS.fetch_add(1, SeqCst);
        Some(Vehicle::new(id))
    }

    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis(server.url())
        .prefix("t:")
        .command_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    assert_eq!(get_vehicle(&cache, 1).await, Some(Vehicle::new(1)));

    server.pause(); // connections stay open, nothing is answered
    let started = Instant::now();
    assert_eq!(get_vehicle(&cache, 1).await, Some(Vehicle::new(1)));
    let first = started.elapsed();
    // The read times out after the command timeout (200 ms) and the body answers.
    assert!(first < Duration::from_millis(1500), "first call with Redis hung took {first:?}");
    let started = Instant::now();
    for id in 0..5 {
        assert_eq!(get_vehicle(&cache, id).await, Some(Vehicle::new(id)));
    }
    let next = started.elapsed();
    assert_eq!(CALLS.load(SeqCst), 7);
    assert!(cache.stats().errors >= 1, "{:?}", cache.stats());
    server.resume();

    let raw = Raw::connect(&server).await;
    let resumed = eventually(RECOVERY, || async {
        get_vehicle(&cache, 9).await;
        raw.exists("t:vehicle:9").await
    })
    .await;
    assert!(resumed, "caching did not resume within {RECOVERY:?} of Redis answering again");

    // Once the failure is known, calls do not each wait for a timeout (circuit breaker).
    assert!(next < Duration::from_millis(500), "5 calls with Redis known hung took {next:?}");
}
