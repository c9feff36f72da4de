//! The programmatic API (`get`, `set`, `get_or_load`, `prometheus`) over Redis: same store,
//! same prefix and same counters as the attributes; bad input is refused with nothing stored.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Cache, Error, DIRECT_CALLS};
use cache_tests::RedisServer;
use serde_json::json;

use crate::{redis_cache, stored_json, DbError, Raw, Vehicle};

#[tokio::test]
async fn get_and_set_round_trip_under_the_prefix() {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(
        cache.get::<Vehicle>("vehicle:42").await.unwrap(),
        None,
        "a missing key is Ok(None)"
    );
    cache.set("vehicle:42", &Vehicle::new(42), Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get::<Vehicle>("vehicle:42").await.unwrap(), Some(Vehicle::new(42)));

    assert_eq!(raw.keys().await, ["t:vehicle:42"]);
    assert_eq!(
        stored_json(&raw, "t:vehicle:42").await,
        json!({"id": 42, "dealer_id": 4, "model": "model-42"})
    );
    let pttl = raw.pttl("t:vehicle:42").await;
    assert!((59_000..=60_000).contains(&pttl), "PTTL {pttl}");

    // `set` replaces the value and its TTL; unsized values work.
    cache.set("greeting", "hello", Duration::from_millis(1500)).await.unwrap();
    cache.set("greeting", "bonjour", Duration::from_secs(3600)).await.unwrap();
    assert_eq!(cache.get::<String>("greeting").await.unwrap().as_deref(), Some("bonjour"));
    assert!(raw.pttl("t:greeting").await > 3_000_000);

    // A value of another type does not decode: reported as absent and counted.
    assert_eq!(cache.get::<u64>("greeting").await.unwrap(), None);

    let direct = cache.stats_of(DIRECT_CALLS);
    assert_eq!((direct.hits, direct.misses), (2, 2), "{direct:?}");
    assert!(direct.errors >= 1, "{direct:?}");
    assert_eq!(cache.stats(), direct);
}

#[tokio::test]
async fn get_or_load_loads_once_and_does_not_store_errors() {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    let calls = AtomicUsize::new(0);
    let ttl = Duration::from_secs(120);

    let failed: Result<u32, Error> = cache
        .get_or_load("price:1", ttl, || async {
            calls.fetch_add(1, SeqCst);
            Err(Error::InvalidConfig("the database said no".into()))
        })
        .await;
    assert!(failed.is_err());
    assert!(!raw.exists("t:price:1").await, "an Err is not stored");

    for _ in 0..3 {
        let price: Result<u32, Error> = cache
            .get_or_load("price:1", ttl, || async {
                calls.fetch_add(1, SeqCst);
                Ok(1999)
            })
            .await;
        assert_eq!(price.unwrap(), 1999);
    }
    assert_eq!(calls.load(SeqCst), 2, "the loader ran for the Err and for the first Ok only");
    assert_eq!(stored_json(&raw, "t:price:1").await, json!(1999));
    let pttl = raw.pttl("t:price:1").await;
    assert!((119_000..=120_000).contains(&pttl), "PTTL {pttl}");
    let direct = cache.stats_of(DIRECT_CALLS);
    assert_eq!((direct.hits, direct.misses, direct.loads), (2, 2, 2), "{direct:?}");
}

#[tokio::test]
async fn the_api_and_the_attributes_share_keys_and_store() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        CALLS.fetch_add(1, SeqCst);
        Ok(Some(Vehicle::new(id)))
    }

    let server = RedisServer::start();
    let cache = redis_cache(&server).await;

    // Written by hand (a warm-up job, say), read by the annotated function.
    let warmed = Vehicle { id: 5, dealer_id: 1, model: "warmed".into() };
    cache.set("vehicle:5", &warmed, Duration::from_secs(60)).await.unwrap();
    assert_eq!(get_vehicle(&cache, 5).await, Ok(Some(warmed)));
    assert_eq!(CALLS.load(SeqCst), 0);

    // Written by the annotated function, read by hand.
    get_vehicle(&cache, 6).await.unwrap();
    assert_eq!(cache.get::<Vehicle>("vehicle:6").await.unwrap(), Some(Vehicle::new(6)));
    assert_eq!(CALLS.load(SeqCst), 1);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    let minute = Duration::from_secs(60);

    assert!(matches!(cache.get::<u32>("").await, Err(Error::InvalidKey { .. })));
    assert!(matches!(cache.get::<u32>("a b").await, Err(Error::InvalidKey { .. })));
    assert!(matches!(cache.set("", &1, minute).await, Err(Error::InvalidKey { .. })));
    assert!(matches!(cache.set("with space", &1, minute).await, Err(Error::InvalidKey { .. })));
    assert!(matches!(cache.set("line\nbreak", &1, minute).await, Err(Error::InvalidKey { .. })));
    assert!(matches!(cache.set("k", &1, Duration::ZERO).await, Err(Error::InvalidTtl { .. })));
    assert!(matches!(
        cache.set("k", &1, Duration::from_micros(10)).await,
        Err(Error::InvalidTtl { .. })
    ));

    let calls = AtomicUsize::new(0);
    let loader = || async {
        calls.fetch_add(1, SeqCst);
        Ok::<u32, Error>(1)
    };
    assert!(matches!(cache.get_or_load("", minute, loader).await, Err(Error::InvalidKey { .. })));
    assert!(matches!(
        cache.get_or_load("k", Duration::ZERO, loader).await,
        Err(Error::InvalidTtl { .. })
    ));
    assert_eq!(calls.load(SeqCst), 0, "input is checked before the loader runs");

    // The errors say what was wrong.
    let message = cache.set("k", &1, Duration::ZERO).await.unwrap_err().to_string();
    assert!(message.contains("time to live"), "{message}");
    let message = cache.get::<u32>("").await.unwrap_err().to_string();
    assert!(message.contains("empty"), "{message}");

    assert!(raw.keys().await.is_empty(), "nothing was stored: {:?}", raw.keys().await);
    assert_eq!(cache.stats().errors, 0, "bad input is not a backend failure");
}

#[tokio::test]
async fn build_refuses_a_malformed_url_and_bad_settings() {
    let built = Cache::builder().redis("not a url").build().await;
    assert!(matches!(built, Err(Error::InvalidUrl { .. })), "{built:?}");
    let built = Cache::builder().redis("http://127.0.0.1:6379").build().await;
    assert!(built.is_err(), "not a Redis scheme: {built:?}");
    let built = Cache::builder().redis("redis://127.0.0.1:1/").prefix("t:*").build().await;
    assert!(matches!(built, Err(Error::InvalidConfig(_))), "glob in prefix: {built:?}");
    let built = Cache::builder().command_timeout(Duration::ZERO).build().await;
    assert!(matches!(built, Err(Error::InvalidConfig(_))), "zero timeout: {built:?}");
}

#[tokio::test]
async fn prometheus_exposes_counters_per_function() {
    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        Some(Vehicle::new(id))
    }

    #[cached(key = "dealer:<id>", ttl = "1m", cache = cache, name = "dealers")]
    async fn get_dealer(cache: &Cache, id: u64) -> String {
        format!("dealer {id}")
    }

    #[cached(key = "odd:<id>", ttl = "1m", cache = cache, name = "odd \"name\" \\ here")]
    async fn oddly_named(cache: &Cache, id: u64) -> u64 {
        id
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    for _ in 0..3 {
        get_vehicle(&cache, 1).await;
    }
    get_dealer(&cache, 1).await;
    oddly_named(&cache, 1).await;
    raw.set("t:dealer:2", "garbage").await;
    get_dealer(&cache, 2).await;

    let metrics = cache.prometheus();
    for line in [
        "# TYPE cache_hits_total counter",
        "cache_hits_total{function=\"get_vehicle\"} 2",
        "cache_misses_total{function=\"get_vehicle\"} 1",
        "cache_loads_total{function=\"get_vehicle\"} 1",
        "cache_errors_total{function=\"get_vehicle\",kind=\"connection\"} 0",
        "cache_hits_total{function=\"dealers\"} 0",
        "cache_misses_total{function=\"dealers\"} 2",
        "cache_loads_total{function=\"dealers\"} 2",
        "cache_errors_total{function=\"dealers\",kind=\"decode\"} 1",
        "# TYPE cache_breaker_state gauge",
        "cache_breaker_state{state=\"closed\"} 1",
        "# TYPE cache_load_duration_seconds histogram",
        "cache_load_duration_seconds_count{function=\"get_vehicle\"} 1",
        "cache_load_duration_seconds_bucket{function=\"dealers\",le=\"+Inf\"} 2",
        // Label values are escaped.
        r#"cache_loads_total{function="odd \"name\" \\ here"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
    }
    assert!(!metrics.contains("function=\"get_dealer\""), "{metrics}");
}
