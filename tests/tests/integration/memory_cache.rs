//! `#[cached]` over the in-process memory store: the same semantics as over Redis.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cached, Cache};
use serde::{Deserialize, Serialize};

use crate::{DbError, Vehicle};

#[tokio::test]
async fn miss_then_hit_with_counters() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        CALLS.fetch_add(1, SeqCst);
        Ok(Some(Vehicle::new(id)))
    }

    let cache = Cache::memory();
    assert_eq!(get_vehicle(&cache, 42).await, Ok(Some(Vehicle::new(42))));
    assert_eq!(get_vehicle(&cache, 42).await, Ok(Some(Vehicle::new(42))));
    assert_eq!(get_vehicle(&cache, 43).await, Ok(Some(Vehicle::new(43))));
    assert_eq!(CALLS.load(SeqCst), 2);

    let stats = cache.stats_of("get_vehicle");
    assert_eq!((stats.hits, stats.misses, stats.loads, stats.errors), (1, 2, 2, 0), "{stats:?}");
    assert_eq!(cache.stats(), stats);
    // The programmatic API reads the same store under the rendered key.
    assert_eq!(cache.get::<Vehicle>("vehicle:42").await.unwrap(), Some(Vehicle::new(42)));
}

#[tokio::test]
async fn a_memory_cache_from_the_builder_works_too() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "sq:<n>", ttl = "1m", cache = cache)]
    async fn square(cache: &Cache, n: u64) -> u64 {
        CALLS.fetch_add(1, SeqCst);
        n * n
    }

    let cache = Cache::builder().memory_capacity(1024 * 1024).build().await.unwrap();
    assert_eq!(square(&cache, 12).await, 144);
    assert_eq!(square(&cache, 12).await, 144);
    assert_eq!(CALLS.load(SeqCst), 1);
    assert_eq!(cache.stats().hits, 1);
}

#[tokio::test]
async fn separate_memory_caches_do_not_share_entries() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "n:<n>", ttl = "1m", cache = cache)]
    async fn number(cache: &Cache, n: u64) -> u64 {
        CALLS.fetch_add(1, SeqCst);
        n
    }

    let (a, b) = (Cache::memory(), Cache::memory());
    number(&a, 1).await;
    number(&b, 1).await;
    assert_eq!(CALLS.load(SeqCst), 2);
    // A clone is the same cache.
    number(&a.clone(), 1).await;
    assert_eq!(CALLS.load(SeqCst), 2);
    assert_eq!(a.stats().hits, 1);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "short:<id>", ttl = "300ms", cache = cache)]
    async fn short_lived(cache: &Cache, id: u32) -> u32 {
        CALLS.fetch_add(1, SeqCst);
        id
    }

    #[cached(key = "long:<id>", ttl = "1h", cache = cache)]
    async fn long_lived(cache: &Cache, id: u32) -> u32 {
        CALLS.fetch_add(1, SeqCst);
        id
    }

    let cache = Cache::memory();
    assert_eq!(short_lived(&cache, 1).await, 1);
    assert_eq!(long_lived(&cache, 1).await, 1);
    assert_eq!(short_lived(&cache, 1).await, 1);
    assert_eq!(CALLS.load(SeqCst), 2, "hit before expiry");

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(short_lived(&cache, 1).await, 1);
    assert_eq!(CALLS.load(SeqCst), 3, "miss after the TTL");
    assert_eq!(long_lived(&cache, 1).await, 1);
    assert_eq!(CALLS.load(SeqCst), 3, "the 1h entry is still there");
    let short = cache.stats_of("short_lived");
    assert_eq!((short.hits, short.misses, short.loads), (1, 2, 2), "{short:?}");
    assert_eq!(cache.get::<u32>("short:1").await.unwrap(), Some(1), "stored again");
}

#[tokio::test]
async fn plain_return_values_are_always_cached() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "words:<n>", ttl = "1m", cache = cache)]
    async fn words(cache: &Cache, n: usize) -> Vec<String> {
        CALLS.fetch_add(1, SeqCst);
        (0..n).map(|i| format!("w{i}")).collect()
    }

    let cache = Cache::memory();
    let mut first = words(&cache, 2).await;
    assert_eq!(first, ["w0", "w1"]);
    // The caller owns what it got: changing it does not change the cached value.
    first.push("mutated".into());
    assert_eq!(words(&cache, 2).await, ["w0", "w1"]);
    assert!(words(&cache, 0).await.is_empty());
    assert!(words(&cache, 0).await.is_empty());
    assert_eq!(CALLS.load(SeqCst), 2);
}

#[tokio::test]
async fn option_none_is_not_cached() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "opt:<id>", ttl = "1m", cache = cache)]
    async fn find(cache: &Cache, id: u64) -> Option<Vehicle> {
        let run = CALLS.fetch_add(1, SeqCst);
        (run > 0).then(|| Vehicle::new(id))
    }

    let cache = Cache::memory();
    assert_eq!(find(&cache, 1).await, None);
    assert_eq!(cache.get::<Vehicle>("opt:1").await.unwrap(), None, "None is not stored");
    assert_eq!(find(&cache, 1).await, Some(Vehicle::new(1)));
    assert_eq!(find(&cache, 1).await, Some(Vehicle::new(1)));
    assert_eq!(CALLS.load(SeqCst), 2);
    let stats = cache.stats_of("find");
    assert_eq!((stats.hits, stats.misses, stats.loads), (1, 2, 2), "{stats:?}");
}

#[tokio::test]
async fn result_err_is_not_cached() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "res:<id>", ttl = "1m", cache = cache)]
    async fn load(cache: &Cache, id: u64) -> Result<Vehicle, DbError> {
        match CALLS.fetch_add(1, SeqCst) {
            0 | 1 => Err(DbError("down".into())),
            _ => Ok(Vehicle::new(id)),
        }
    }

    let cache = Cache::memory();
    assert_eq!(load(&cache, 2).await, Err(DbError("down".into())));
    assert_eq!(load(&cache, 2).await, Err(DbError("down".into())), "Err is not cached");
    assert_eq!(cache.get::<Vehicle>("res:2").await.unwrap(), None);
    assert_eq!(load(&cache, 2).await, Ok(Vehicle::new(2)));
    assert_eq!(load(&cache, 2).await, Ok(Vehicle::new(2)));
    assert_eq!(CALLS.load(SeqCst), 3);
    let stats = cache.stats_of("load");
    assert_eq!((stats.hits, stats.misses, stats.loads, stats.errors), (1, 3, 3, 0), "{stats:?}");
}

#[tokio::test]
async fn result_option_err_and_none_are_not_cached() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "ro:<id>", ttl = "1m", cache = cache)]
    async fn load(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        match CALLS.fetch_add(1, SeqCst) {
            0 => Err(DbError("timeout".into())),
            1 => Ok(None),
            _ => Ok(Some(Vehicle::new(id))),
        }
    }

    let cache = Cache::memory();
    assert_eq!(load(&cache, 3).await, Err(DbError("timeout".into())));
    assert_eq!(load(&cache, 3).await, Ok(None));
    assert_eq!(cache.get::<Vehicle>("ro:3").await.unwrap(), None);
    assert_eq!(load(&cache, 3).await, Ok(Some(Vehicle::new(3))));
    assert_eq!(load(&cache, 3).await, Ok(Some(Vehicle::new(3))));
    assert_eq!(CALLS.load(SeqCst), 3);
}

/// A value type without `Clone`: memory hits decode it from its JSON instead.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Report {
    lines: Vec<String>,
}

#[tokio::test]
async fn values_without_clone_are_cached_too() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "report:<id>", ttl = "1m", cache = cache)]
    async fn report(cache: &Cache, id: u64) -> Report {
        CALLS.fetch_add(1, SeqCst);
        Report { lines: vec![format!("report {id}")] }
    }

    let cache = Cache::memory();
    assert_eq!(report(&cache, 1).await, Report { lines: vec!["report 1".into()] });
    assert_eq!(report(&cache, 1).await, Report { lines: vec!["report 1".into()] });
    assert_eq!(CALLS.load(SeqCst), 1);
}

#[tokio::test]
async fn two_functions_sharing_a_key_with_different_types_do_not_panic() {
    #[cached(key = "shared:<id>", ttl = "1m", cache = cache)]
    async fn as_number(cache: &Cache, id: u64) -> u64 {
        id
    }

    #[cached(key = "shared:<id>", ttl = "1m", cache = cache)]
    async fn as_text(cache: &Cache, id: u64) -> String {
        format!("#{id}")
    }

    let cache = Cache::memory();
    assert_eq!(as_number(&cache, 5).await, 5);
    // The stored `5` does not decode as a String: a miss, the body runs, nothing breaks.
    assert_eq!(as_text(&cache, 5).await, "#5");
    assert_eq!(as_text(&cache, 5).await, "#5");
    assert!(cache.stats_of("as_text").errors >= 1);
}
