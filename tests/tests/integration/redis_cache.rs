//! `#[cached]` over Redis: hits and misses, counters, the stored key, its TTL and its JSON,
//! which return values are cached, methods and field placeholders.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Cache, Stats};
use cache_tests::RedisServer;
use serde_json::json;

use crate::{redis_cache, stored_json, DbError, Raw, Vehicle};

#[tokio::test]
async fn miss_then_hit_counts_and_stores_prefixed_json_with_ttl() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        CALLS.fetch_add(1, SeqCst);
        Ok(Some(Vehicle::new(id)))
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(get_vehicle(&cache, 42).await, Ok(Some(Vehicle::new(42))));
    assert_eq!(CALLS.load(SeqCst), 1, "a miss runs the body");
    assert_eq!(get_vehicle(&cache, 42).await, Ok(Some(Vehicle::new(42))));
    assert_eq!(CALLS.load(SeqCst), 1, "a hit does not run the body");

    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.loads, stats.errors), (1, 1, 1, 0), "{stats:?}");
    assert_eq!(cache.stats_of("get_vehicle"), stats, "one function: its counters are the totals");
    assert_eq!(cache.stats_of("no_such_function"), Stats::default());

    // The key is `prefix + rendered template`, with the TTL as its Redis expiry.
    assert_eq!(raw.keys().await, ["t:vehicle:42"]);
    let pttl = raw.pttl("t:vehicle:42").await;
    assert!((899_000..=900_000).contains(&pttl), "PTTL of a 15m entry: {pttl}");

    // The value is readable JSON, as another service or an operator would read it.
    assert_eq!(
        stored_json(&raw, "t:vehicle:42").await,
        json!({"id": 42, "dealer_id": 4, "model": "model-42"})
    );

    // Another argument is another key and another load.
    assert_eq!(get_vehicle(&cache, 7).await, Ok(Some(Vehicle::new(7))));
    assert_eq!(CALLS.load(SeqCst), 2);
    assert_eq!(raw.keys().await, ["t:vehicle:42", "t:vehicle:7"]);
    let stats = cache.stats_of("get_vehicle");
    assert_eq!((stats.hits, stats.misses, stats.loads), (1, 2, 2), "{stats:?}");
}

#[tokio::test]
async fn ttl_units_become_the_redis_expiry_and_entries_expire() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "long:<id>", ttl = "1h30m", cache = cache)]
    async fn long_lived(cache: &Cache, id: u32) -> u32 {
        CALLS.fetch_add(1, SeqCst);
        id
    }

    #[cached(key = "short:<id>", ttl = "300ms", cache = cache)]
    async fn short_lived(cache: &Cache, id: u32) -> u32 {
        CALLS.fetch_add(1, SeqCst);
        id
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(long_lived(&cache, 1).await, 1);
    let pttl = raw.pttl("t:long:1").await;
    assert!((5_399_000..=5_400_000).contains(&pttl), "PTTL of a 1h30m entry: {pttl}");

    assert_eq!(short_lived(&cache, 2).await, 2);
    let pttl = raw.pttl("t:short:2").await;
    assert!((1..=300).contains(&pttl), "PTTL of a 300ms entry: {pttl}");
    assert_eq!(short_lived(&cache, 2).await, 2);
    assert_eq!(CALLS.load(SeqCst), 2, "hit before expiry");

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!raw.exists("t:short:2").await, "Redis expired the entry");
    assert_eq!(short_lived(&cache, 2).await, 2);
    assert_eq!(CALLS.load(SeqCst), 3, "after the TTL the body runs again");
    let stats = cache.stats_of("short_lived");
    assert_eq!((stats.hits, stats.misses, stats.loads), (1, 2, 2), "{stats:?}");
}

#[tokio::test]
async fn name_argument_overrides_the_stats_and_metrics_name() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "price:<id>", ttl = "1m", cache = cache, name = "pricing.by_id")]
    async fn price(cache: &Cache, id: u64) -> u64 {
        CALLS.fetch_add(1, SeqCst);
        id * 100
    }

    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    for _ in 0..3 {
        assert_eq!(price(&cache, 5).await, 500);
    }
    assert_eq!(CALLS.load(SeqCst), 1);

    let named = cache.stats_of("pricing.by_id");
    assert_eq!((named.hits, named.misses, named.loads, named.errors), (2, 1, 1, 0), "{named:?}");
    assert_eq!(cache.stats_of("price"), Stats::default(), "the identifier is not the name");
    assert_eq!(cache.stats(), named);

    let metrics = cache.prometheus();
    assert!(metrics.contains("cache_hits_total{function=\"pricing.by_id\"} 2\n"), "{metrics}");
    assert!(!metrics.contains("function=\"price\""), "{metrics}");
}

#[tokio::test]
async fn stats_are_kept_per_function_and_summed_in_totals() {
    #[cached(key = "a:<id>", ttl = "1m", cache = cache)]
    async fn fa(cache: &Cache, id: u8) -> u8 {
        id
    }

    #[cached(key = "b:<id>", ttl = "1m", cache = cache)]
    async fn fb(cache: &Cache, id: u8) -> u8 {
        id
    }

    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    let other = redis_cache(&server).await;

    fa(&cache, 1).await;
    fa(&cache, 1).await;
    fa(&cache, 1).await;
    fb(&cache, 1).await;
    fb(&cache, 2).await;

    let a = cache.stats_of("fa");
    let b = cache.stats_of("fb");
    assert_eq!((a.hits, a.misses, a.loads), (2, 1, 1), "{a:?}");
    assert_eq!((b.hits, b.misses, b.loads), (0, 2, 2), "{b:?}");
    let total = cache.stats();
    assert_eq!((total.hits, total.misses, total.loads), (2, 3, 3), "{total:?}");
    assert!((total.hit_rate() - 0.4).abs() < 1e-9, "{}", total.hit_rate());

    // Counters belong to a cache handle's own calls, although the store is shared: a second
    // cache on the same server hits what the first stored.
    assert_eq!(other.stats(), Stats::default());
    fa(&other, 1).await;
    assert_eq!(other.stats_of("fa").hits, 1);
    assert_eq!(cache.stats_of("fa").hits, 2);
}

#[tokio::test]
async fn plain_return_values_are_always_cached() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "models:<dealer>", ttl = "1m", cache = cache)]
    async fn models(cache: &Cache, dealer: u64) -> Vec<String> {
        CALLS.fetch_add(1, SeqCst);
        if dealer == 0 {
            Vec::new()
        } else {
            vec!["Civic".to_owned(), "Jazz".to_owned()]
        }
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(models(&cache, 3).await, ["Civic", "Jazz"]);
    assert_eq!(models(&cache, 3).await, ["Civic", "Jazz"]);
    // An empty value is a value like any other (only `None` and `Err` are not cached).
    assert!(models(&cache, 0).await.is_empty());
    assert!(models(&cache, 0).await.is_empty());
    assert_eq!(CALLS.load(SeqCst), 2);
    assert_eq!(stored_json(&raw, "t:models:3").await, json!(["Civic", "Jazz"]));
    assert_eq!(stored_json(&raw, "t:models:0").await, json!([]));
}

#[tokio::test]
async fn option_none_is_not_cached() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    /// `None` on the first run, `Some` afterwards.
    #[cached(key = "opt:<id>", ttl = "1m", cache = cache)]
    async fn find(cache: &Cache, id: u64) -> Option<Vehicle> {
        let run = CALLS.fetch_add(1, SeqCst);
        (run > 0).then(|| Vehicle::new(id))
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(find(&cache, 1).await, None);
    assert!(!raw.exists("t:opt:1").await, "None is not stored");
    assert_eq!(find(&cache, 1).await, Some(Vehicle::new(1)));
    assert_eq!(CALLS.load(SeqCst), 2, "after a None the body runs again");
    assert_eq!(find(&cache, 1).await, Some(Vehicle::new(1)));
    assert_eq!(CALLS.load(SeqCst), 2, "Some is cached");
    assert_eq!(
        stored_json(&raw, "t:opt:1").await,
        json!({"id": 1, "dealer_id": 0, "model": "model-1"})
    );
    let stats = cache.stats_of("find");
    assert_eq!((stats.hits, stats.misses, stats.loads), (1, 2, 2), "{stats:?}");
}

#[tokio::test]
async fn result_err_is_not_cached() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    /// `Err` on the first run, `Ok` afterwards.
    #[cached(key = "res:<id>", ttl = "1m", cache = cache)]
    async fn load(cache: &Cache, id: u64) -> Result<Vehicle, DbError> {
        match CALLS.fetch_add(1, SeqCst) {
            0 => Err(DbError("connection reset".into())),
            _ => Ok(Vehicle::new(id)),
        }
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(load(&cache, 2).await, Err(DbError("connection reset".into())));
    assert!(!raw.exists("t:res:2").await, "Err is not stored");
    assert_eq!(load(&cache, 2).await, Ok(Vehicle::new(2)));
    assert_eq!(load(&cache, 2).await, Ok(Vehicle::new(2)));
    assert_eq!(CALLS.load(SeqCst), 2);
    assert!(raw.exists("t:res:2").await);
    let stats = cache.stats_of("load");
    assert_eq!((stats.hits, stats.misses, stats.loads, stats.errors), (1, 2, 2, 0), "{stats:?}");
}

#[tokio::test]
async fn result_option_err_and_none_are_not_cached() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    /// `Err`, then `Ok(None)`, then `Ok(Some)`.
    #[cached(key = "ro:<id>", ttl = "1m", cache = cache)]
    async fn load(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        match CALLS.fetch_add(1, SeqCst) {
            0 => Err(DbError("timeout".into())),
            1 => Ok(None),
            _ => Ok(Some(Vehicle::new(id))),
        }
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(load(&cache, 3).await, Err(DbError("timeout".into())));
    assert!(!raw.exists("t:ro:3").await, "Err is not stored");
    assert_eq!(load(&cache, 3).await, Ok(None));
    assert!(!raw.exists("t:ro:3").await, "Ok(None) is not stored");
    assert_eq!(load(&cache, 3).await, Ok(Some(Vehicle::new(3))));
    assert_eq!(load(&cache, 3).await, Ok(Some(Vehicle::new(3))));
    assert_eq!(CALLS.load(SeqCst), 3);
    assert!(raw.exists("t:ro:3").await);
    let stats = cache.stats_of("load");
    assert_eq!((stats.hits, stats.misses, stats.loads, stats.errors), (1, 3, 3, 0), "{stats:?}");
}

/// A repository whose methods cache through their own `Cache` field.
struct Repo {
    cache: Cache,
    region: String,
    calls: AtomicUsize,
}

impl Repo {
    #[cached(key = "repo:<self.region>:vehicle:<id>", ttl = "10m", cache = self.cache)]
    async fn vehicle(&self, id: u64) -> Option<Vehicle> {
        self.calls.fetch_add(1, SeqCst);
        Some(Vehicle { id, dealer_id: 0, model: self.region.clone() })
    }

    #[cached(key = "repo:<self.region>:dealer:<v.dealer_id>:<v.model>", ttl = "10m", cache = self.cache)]
    async fn dealer_of(&self, v: &Vehicle) -> String {
        self.calls.fetch_add(1, SeqCst);
        format!("dealer {} for {}", v.dealer_id, v.model)
    }
}

#[tokio::test]
async fn methods_use_self_cache_and_self_and_param_fields() {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    let eu = Repo { cache: cache.clone(), region: "eu-west".into(), calls: AtomicUsize::new(0) };
    let us = Repo { cache: cache.clone(), region: "us east".into(), calls: AtomicUsize::new(0) };

    assert_eq!(eu.vehicle(7).await.map(|v| v.model), Some("eu-west".into()));
    assert_eq!(eu.vehicle(7).await.map(|v| v.model), Some("eu-west".into()));
    assert_eq!(eu.calls.load(SeqCst), 1);
    // Same id, another `self.region`: another key, not the other repo's value.
    assert_eq!(us.vehicle(7).await.map(|v| v.model), Some("us east".into()));
    assert_eq!(us.calls.load(SeqCst), 1);

    let v = Vehicle { id: 1, dealer_id: 99, model: "Civic Type-R".into() };
    assert_eq!(eu.dealer_of(&v).await, "dealer 99 for Civic Type-R");
    assert_eq!(eu.dealer_of(&v).await, "dealer 99 for Civic Type-R");
    assert_eq!(eu.calls.load(SeqCst), 2);

    assert_eq!(
        raw.keys().await,
        [
            "t:repo:eu-west:dealer:99:Civic%20Type-R",
            "t:repo:eu-west:vehicle:7",
            "t:repo:us%20east:vehicle:7",
        ]
    );
    let stats = cache.stats_of("vehicle");
    assert_eq!((stats.hits, stats.misses, stats.loads), (1, 2, 2), "{stats:?}");
    assert_eq!(cache.stats_of("dealer_of").hits, 1);
}

#[tokio::test]
async fn a_prefix_namespaces_caches_sharing_a_server() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "greeting:<lang>", ttl = "1m", cache = cache)]
    async fn greeting(cache: &Cache, lang: &str) -> String {
        CALLS.fetch_add(1, SeqCst);
        format!("hello in {lang} from {}", cache.prefix())
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let a = redis_cache(&server).await;
    let b = Cache::builder().redis(server.url()).prefix("other:").build().await.unwrap();

    assert_eq!(greeting(&a, "en").await, "hello in en from t:");
    assert_eq!(greeting(&b, "en").await, "hello in en from other:");
    assert_eq!(greeting(&a, "en").await, "hello in en from t:");
    assert_eq!(greeting(&b, "en").await, "hello in en from other:");
    assert_eq!(CALLS.load(SeqCst), 2);
    assert_eq!(raw.keys().await, ["other:greeting:en", "t:greeting:en"]);
}
