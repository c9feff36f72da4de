//! Invalidation as a user observes it: `#[invalidates]` removes exactly the keys it names (and
//! nothing else: not another vehicle, not a `homepage2:` neighbour, not another prefix, not an
//! unrelated application's keys), only after `Ok`; placeholder values cannot inject a glob;
//! `clear()` is confined to its prefix; the programmatic API validates its patterns and serves
//! `prefix:*` patterns from an index that stays bounded; `#[cache_put]` writes through; a Redis
//! outage never fails the annotated call. The last tests run the same semantics on the memory
//! store.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cache_put, cached, invalidates, Cache, Error, DIRECT_CALLS};
use cache_tests::RedisServer;

use crate::{redis_cache, stored_json, DbError, Raw, Vehicle, INDEX_NAMESPACE, PREFIX};

/// Every key of the server, index keys included, sorted.
async fn all_keys(raw: &Raw) -> BTreeSet<String> {
    let mut con = raw.0.clone();
    redis::cmd("KEYS").arg("*").query_async(&mut con).await.expect("KEYS")
}

/// `ZCARD key`.
async fn zcard(raw: &Raw, key: &str) -> u64 {
    let mut con = raw.0.clone();
    redis::cmd("ZCARD").arg(key).query_async(&mut con).await.expect("ZCARD")
}

/// The cache's entries (no index keys), as a set.
async fn entries(raw: &Raw) -> BTreeSet<String> {
    raw.keys().await.into_iter().collect()
}

fn set_of<const N: usize>(keys: [&str; N]) -> BTreeSet<String> {
    keys.into_iter().map(str::to_owned).collect()
}

#[tokio::test]
async fn invalidates_removes_exactly_its_keys_after_ok_and_nothing_after_err() {
    static VEHICLE_LOADS: AtomicUsize = AtomicUsize::new(0);
    static DEALER_LOADS: AtomicUsize = AtomicUsize::new(0);
    static HOMEPAGE_LOADS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        VEHICLE_LOADS.fetch_add(1, SeqCst);
        Ok(Some(Vehicle::new(id)))
    }

    #[cached(key = "dealer:<dealer_id>:vehicles", ttl = "15m", cache = cache)]
    async fn dealer_vehicles(cache: &Cache, dealer_id: u64) -> Result<Vec<u64>, DbError> {
        DEALER_LOADS.fetch_add(1, SeqCst);
        Ok(vec![dealer_id * 10 + 1])
    }

    #[cached(key = "homepage:<section>", ttl = "15m", cache = cache)]
    async fn homepage(cache: &Cache, section: &str) -> String {
        HOMEPAGE_LOADS.fetch_add(1, SeqCst);
        format!("<h1>{section}</h1>")
    }

    /// A neighbour whose name starts like `homepage`: `homepage:*` must not touch it.
    #[cached(key = "homepage2:<section>", ttl = "15m", cache = cache)]
    async fn homepage2(cache: &Cache, section: &str) -> String {
        format!("<h2>{section}</h2>")
    }

    #[invalidates(
        "vehicle:<v.id>",
        "dealer:<v.dealer_id>:vehicles",
        "homepage:*",
        cache = cache
    )]
    async fn update_vehicle(cache: &Cache, v: &Vehicle, fail: bool) -> Result<(), DbError> {
        if fail {
            return Err(DbError(format!("cannot update {}", v.id)));
        }
        Ok(())
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    let other_prefix = Cache::builder().redis(server.url()).prefix("u:").build().await.unwrap();

    // Vehicle 11 belongs to dealer 1, vehicle 21 to dealer 2.
    let (v11, v21) = (Vehicle::new(11), Vehicle::new(21));
    for cache in [&cache, &other_prefix] {
        get_vehicle(cache, 11).await.unwrap();
        get_vehicle(cache, 21).await.unwrap();
        dealer_vehicles(cache, 1).await.unwrap();
        dealer_vehicles(cache, 2).await.unwrap();
        homepage(cache, "featured").await;
        homepage(cache, "deals").await;
        homepage2(cache, "x").await;
    }
    // Another application's keys, some of which look like ours without the prefix.
    raw.set("homepage:featured", "not ours").await;
    raw.set("vehicle:11", "not ours").await;
    raw.set("t-other:homepage:1", "not ours").await;
    let before = entries(&raw).await;
    assert_eq!(before.len(), 2 * 7 + 3, "{before:?}");
    let loads =
        (VEHICLE_LOADS.load(SeqCst), DEALER_LOADS.load(SeqCst), HOMEPAGE_LOADS.load(SeqCst));
    assert_eq!(loads, (4, 4, 4));

    // Err: the update failed, the cached data is still right: nothing is invalidated.
    assert_eq!(update_vehicle(&cache, &v11, true).await, Err(DbError("cannot update 11".into())));
    assert_eq!(entries(&raw).await, before, "nothing removed after Err");
    assert_eq!(cache.stats_of("update_vehicle").invalidated, 0);

    // Ok: exactly the three targets (four keys) go.
    assert_eq!(update_vehicle(&cache, &v11, false).await, Ok(()));
    let gone =
        set_of(["t:vehicle:11", "t:dealer:1:vehicles", "t:homepage:featured", "t:homepage:deals"]);
    for key in &gone {
        assert!(!raw.exists(key).await, "{key} was invalidated");
    }
    let expected: BTreeSet<String> = before.difference(&gone).cloned().collect();
    assert_eq!(entries(&raw).await, expected, "only the targets are removed");
    for survivor in [
        "t:vehicle:21",
        "t:dealer:2:vehicles",
        "t:homepage2:x",
        "u:vehicle:11",
        "u:homepage:featured",
        "homepage:featured",
        "vehicle:11",
    ] {
        assert!(raw.exists(survivor).await, "{survivor} must stay");
    }
    let stats = cache.stats_of("update_vehicle");
    assert_eq!(stats.invalidated, 4, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(cache.stats().invalidated, 4);
    assert_eq!(other_prefix.stats().invalidated, 0);

    // What the user sees next: the invalidated reads run their bodies, the others hit.
    assert_eq!(get_vehicle(&cache, 11).await, Ok(Some(v11.clone())));
    assert_eq!(VEHICLE_LOADS.load(SeqCst), 5, "vehicle 11 reloads");
    assert_eq!(get_vehicle(&cache, 21).await, Ok(Some(v21)));
    assert_eq!(VEHICLE_LOADS.load(SeqCst), 5, "vehicle 21 is still a hit");
    dealer_vehicles(&cache, 1).await.unwrap();
    dealer_vehicles(&cache, 2).await.unwrap();
    assert_eq!(DEALER_LOADS.load(SeqCst), 5, "only dealer 1 reloads");
    homepage(&cache, "featured").await;
    homepage(&cache, "deals").await;
    assert_eq!(HOMEPAGE_LOADS.load(SeqCst), 6, "both homepage sections reload");
    // The other application's look-alike keys are untouched.
    assert_eq!(raw.get("homepage:featured").await.as_deref(), Some("not ours"));
    assert_eq!(raw.get("vehicle:11").await.as_deref(), Some("not ours"));

    // Invalidating again when the keys are present again works the same way (the index
    // still finds the re-written homepage keys).
    assert_eq!(update_vehicle(&cache, &v11, false).await, Ok(()));
    assert_eq!(cache.stats_of("update_vehicle").invalidated, 8);
    assert!(!raw.exists("t:homepage:deals").await);
}

#[tokio::test]
async fn invalidates_on_a_method_uses_self_cache_and_its_name() {
    struct Inventory {
        cache: Cache,
    }

    impl Inventory {
        #[cached(key = "stock:<sku>", ttl = "15m", cache = self.cache)]
        async fn stock(&self, sku: &str) -> u64 {
            sku.len() as u64
        }

        /// Not a `Result`: every return invalidates.
        #[invalidates("stock:<sku>", "stock-page:*", cache = self.cache, name = "restock")]
        async fn add_stock(&self, sku: &str, amount: u64) -> u64 {
            let _ = sku;
            amount
        }

        #[cached(key = "stock-page:<page>", ttl = "15m", cache = self.cache)]
        async fn stock_page(&self, page: u32) -> Vec<String> {
            vec![format!("page {page}")]
        }
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let inventory = Inventory { cache: redis_cache(&server).await };
    inventory.stock("A-1").await;
    inventory.stock("B-2").await;
    inventory.stock_page(1).await;
    inventory.stock_page(2).await;
    assert_eq!(inventory.add_stock("A-1", 5).await, 5);
    assert_eq!(entries(&raw).await, set_of(["t:stock:B-2"]));
    let stats = inventory.cache.stats_of("restock");
    assert_eq!(stats.invalidated, 3, "{stats:?}");
    assert_eq!(inventory.cache.stats_of("add_stock").invalidated, 0);
}

#[tokio::test]
async fn placeholder_values_cannot_inject_a_glob_into_an_invalidation() {
    #[cached(key = "dealer:<dealer_id>:vehicles", ttl = "15m", cache = cache)]
    async fn dealer_vehicles(cache: &Cache, dealer_id: String) -> Vec<String> {
        vec![format!("car of {dealer_id}")]
    }

    #[invalidates("dealer:<dealer_id>:vehicles", cache = cache)]
    async fn touch_dealer(cache: &Cache, dealer_id: String) -> Result<(), DbError> {
        let _ = dealer_id;
        Ok(())
    }

    /// A pattern template: the placeholder is still literal, only the template's `*` globs.
    #[invalidates("dealer:<dealer_id>:*", cache = cache)]
    async fn touch_everything_of_dealer(cache: &Cache, dealer_id: &str) -> Result<(), DbError> {
        let _ = dealer_id;
        Ok(())
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    // Dealers literally named like globs, and ordinary ones each glob would match.
    let dealers = ["*", "?", "[a-z]", "a", "b", "7", "x*y"];
    // How each weird name is stored: percent-encoded, never a glob.
    let weird = [("*", "%2A"), ("?", "%3F"), ("[a-z]", "%5Ba-z%5D")];

    for (name, encoded) in weird {
        for attribute in ["exact template", "pattern template"] {
            for dealer in dealers {
                dealer_vehicles(&cache, dealer.to_owned()).await;
            }
            let before = entries(&raw).await;
            assert_eq!(before.len(), dealers.len(), "{before:?}");
            let target = format!("t:dealer:{encoded}:vehicles");
            assert!(before.contains(&target), "{target} in {before:?}");

            if attribute == "exact template" {
                touch_dealer(&cache, name.to_owned()).await.unwrap();
            } else {
                touch_everything_of_dealer(&cache, name).await.unwrap();
            }
            let after = entries(&raw).await;
            let removed: Vec<_> = before.difference(&after).collect();
            assert_eq!(
                removed,
                [&target],
                "{attribute} with dealer {name:?} removes dealer {name:?} only"
            );
        }
    }
    assert_eq!(cache.stats_of("touch_dealer").invalidated, 3);
    assert_eq!(cache.stats_of("touch_everything_of_dealer").invalidated, 3);
}

#[tokio::test]
async fn clear_removes_this_prefix_only_and_refuses_an_empty_prefix() {
    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        Some(Vehicle::new(id))
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    let other = Cache::builder().redis(server.url()).prefix("u:").build().await.unwrap();
    let ttl = Duration::from_secs(60);

    get_vehicle(&cache, 1).await;
    get_vehicle(&cache, 2).await;
    cache.set("dealer:1:vehicles", &[1, 2], ttl).await.unwrap();
    cache.set("config", "flat", ttl).await.unwrap(); // no `:`: not indexed
    get_vehicle(&other, 1).await;
    other.set("dealer:1:vehicles", &[3], ttl).await.unwrap();
    raw.set("unrelated", "x").await;
    raw.set("t-not-the-prefix:1", "x").await;
    raw.set("vehicle:1", "x").await;

    let index_keys = |keys: &BTreeSet<String>, prefix: &str| -> Vec<String> {
        let namespace = format!("{prefix}{INDEX_NAMESPACE}");
        keys.iter().filter(|k| k.starts_with(&namespace)).cloned().collect()
    };
    let before = all_keys(&raw).await;
    assert_eq!(
        index_keys(&before, PREFIX),
        ["t:#idx:dealer:", "t:#idx:dealer:1:", "t:#idx:vehicle:"],
        "{before:?}"
    );

    assert_eq!(cache.clear().await.unwrap(), 4, "the count of data keys");
    let after = all_keys(&raw).await;
    // Indexes stay (deleting one would drop the entries of keys written meanwhile); their
    // members expire with their keys.
    assert_eq!(
        after.iter().filter(|k| k.starts_with(PREFIX)).cloned().collect::<Vec<_>>(),
        index_keys(&before, PREFIX),
        "no `t:` data key is left: {after:?}"
    );
    let expected: BTreeSet<String> =
        before.iter().filter(|k| !k.starts_with(PREFIX) || k.contains('#')).cloned().collect();
    assert_eq!(after, expected, "other prefixes and raw keys stay");
    assert!(!index_keys(&after, "u:").is_empty(), "u:'s indexes stay");
    assert_eq!(cache.stats().invalidated, 4);
    assert_eq!(cache.clear().await.unwrap(), 0, "nothing left to clear");

    // The cleared cache works as before: a miss, then pattern invalidation through a fresh
    // index.
    assert_eq!(get_vehicle(&cache, 1).await, Some(Vehicle::new(1)));
    assert_eq!(cache.stats_of("get_vehicle").loads, 3);
    assert_eq!(cache.invalidate_pattern("vehicle:*").await.unwrap(), 1);

    // A Redis cache without a prefix: clear() would be FLUSHDB; it is refused.
    let unprefixed = Cache::builder().redis(server.url()).build().await.unwrap();
    unprefixed.set("session:1", "s", ttl).await.unwrap();
    let before = all_keys(&raw).await;
    let refused = unprefixed.clear().await;
    assert!(matches!(refused, Err(Error::InvalidConfig(_))), "{refused:?}");
    assert_eq!(all_keys(&raw).await, before, "nothing removed");
}

#[tokio::test]
async fn programmatic_invalidation_counts_validates_and_uses_the_index() {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    let ttl = Duration::from_secs(60);
    for key in [
        "vehicle:1",
        "homepage:featured",
        "homepage:deals",
        "homepage2:x",
        "dealer:1:vehicles",
        "dealer:2:vehicles",
        "dealer:2:photos",
        "fleet:3:vehicles",
    ] {
        cache.set(key, &key.len(), ttl).await.unwrap();
    }
    raw.set("x:9:vehicles", "not ours").await;
    raw.set("homepage:raw", "not ours").await;

    assert_eq!(cache.invalidate("vehicle:1").await.unwrap(), 1);
    assert_eq!(cache.invalidate("vehicle:1").await.unwrap(), 0, "already gone");
    assert_eq!(cache.invalidate("vehicle:404").await.unwrap(), 0);
    assert!(matches!(cache.invalidate("").await, Err(Error::InvalidKey { .. })));

    let before = entries(&raw).await;
    for bad in ["", "a[", "a]", "a b", "homepage:[", "homepage:*\\"] {
        let refused = cache.invalidate_pattern(bad).await;
        assert!(matches!(refused, Err(Error::InvalidPattern { .. })), "{bad:?}: {refused:?}");
    }
    assert_eq!(entries(&raw).await, before, "invalid patterns remove nothing");

    // An indexed pattern: served from `t:#idx:homepage:`, no scan.
    assert_eq!(cache.invalidate_pattern("homepage:*").await.unwrap(), 2);
    assert_eq!(cache.stats().pattern_scans, 0);
    assert!(raw.exists("t:homepage2:x").await, "the neighbour stays");
    assert!(raw.exists("homepage:raw").await, "not the cache's key");
    assert_eq!(cache.invalidate_pattern("homepage:*").await.unwrap(), 0);

    // A deeper index, and a `?`.
    assert_eq!(cache.invalidate_pattern("dealer:?:photos").await.unwrap(), 1);
    assert_eq!(cache.stats().pattern_scans, 0);

    // No `:`-terminated literal prefix: the SCAN fallback, counted.
    assert_eq!(cache.invalidate_pattern("*:vehicles").await.unwrap(), 3);
    assert_eq!(cache.stats().pattern_scans, 1);
    assert!(raw.exists("x:9:vehicles").await, "not the cache's key");
    assert_eq!(entries(&raw).await, set_of(["homepage:raw", "t:homepage2:x", "x:9:vehicles"]));

    let direct = cache.stats_of(DIRECT_CALLS);
    assert_eq!(direct.invalidated, 1 + 2 + 1 + 3, "{direct:?}");
    assert_eq!(direct.pattern_scans, 1, "{direct:?}");
    assert_eq!(direct.errors, 0, "{direct:?}");
}

#[tokio::test]
async fn the_index_stays_bounded_by_the_live_keys() {
    #[cached(key = "short:<id>", ttl = "300ms", cache = cache)]
    async fn short(cache: &Cache, id: u64) -> u64 {
        id
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    // A load's index entry covers its fill window too: keep it short here.
    let cache = Cache::builder()
        .redis(server.url())
        .prefix(PREFIX)
        .fill_window(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let short_index = "t:#idx:short:";
    let mixed_index = "t:#idx:mixed:";
    const HOUR_MS: i64 = 3_600_000;

    // `mixed:` also holds one long-lived key, so its index outlives the short ones.
    cache.set("mixed:long", &0, Duration::from_secs(3600)).await.unwrap();
    for id in 0..50 {
        short(&cache, id).await;
        cache.set(&format!("mixed:{id}"), &id, Duration::from_millis(300)).await.unwrap();
    }
    // Every key, plus the sentinel that marks a complete index (this server never evicts).
    assert_eq!(zcard(&raw, short_index).await, 50 + 1);
    assert_eq!(zcard(&raw, mixed_index).await, 51 + 1);
    let pttl = raw.pttl(short_index).await;
    assert!((HOUR_MS..=HOUR_MS + 500).contains(&pttl), "an hour past its keys: {pttl}");

    tokio::time::sleep(Duration::from_millis(700)).await;
    short(&cache, 50).await;
    cache.set("mixed:50", &50, Duration::from_millis(300)).await.unwrap();

    assert_eq!(zcard(&raw, short_index).await, 1 + 1, "expired members are pruned");
    assert_eq!(
        zcard(&raw, mixed_index).await,
        2 + 1,
        "expired members are pruned from a long-lived index too"
    );
    let pttl = raw.pttl(mixed_index).await;
    assert!(
        (2 * HOUR_MS - 60_000..=2 * HOUR_MS).contains(&pttl),
        "the index lives an hour past its longest key: PTTL {pttl}"
    );
    assert_eq!(cache.invalidate_pattern("mixed:*").await.unwrap(), 2);
    assert!(!raw.exists("t:mixed:long").await && !raw.exists("t:mixed:50").await);
}

#[tokio::test]
async fn cache_put_writes_through_so_the_next_read_is_a_hit() {
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        LOADS.fetch_add(1, SeqCst);
        Ok(Some(Vehicle::new(id)))
    }

    #[cache_put(key = "vehicle:<v.id>", ttl = "15m", cache = cache)]
    async fn save_vehicle(cache: &Cache, v: Vehicle, fail: bool) -> Result<Vehicle, DbError> {
        if fail {
            return Err(DbError(format!("cannot save {}", v.id)));
        }
        Ok(v)
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    let renamed = Vehicle { model: "renamed".into(), ..Vehicle::new(5) };
    assert_eq!(save_vehicle(&cache, renamed.clone(), false).await, Ok(renamed.clone()));
    assert_eq!(stored_json(&raw, "t:vehicle:5").await["model"], "renamed");
    let pttl = raw.pttl("t:vehicle:5").await;
    assert!((899_000..=900_000).contains(&pttl), "PTTL {pttl}");
    assert_eq!(get_vehicle(&cache, 5).await, Ok(Some(renamed)));
    assert_eq!(LOADS.load(SeqCst), 0, "a hit: the body did not run");
    assert_eq!(cache.stats_of("get_vehicle").hits, 1);

    // A put overwrites a stale cached value.
    get_vehicle(&cache, 6).await.unwrap();
    let updated = Vehicle { model: "updated".into(), ..Vehicle::new(6) };
    save_vehicle(&cache, updated.clone(), false).await.unwrap();
    assert_eq!(get_vehicle(&cache, 6).await, Ok(Some(updated)));
    assert_eq!(LOADS.load(SeqCst), 1);

    // Err stores nothing (and leaves an existing value alone).
    assert!(save_vehicle(&cache, Vehicle::new(7), true).await.is_err());
    assert!(!raw.exists("t:vehicle:7").await);
    let before = raw.get("t:vehicle:6").await;
    assert!(save_vehicle(&cache, Vehicle::new(6), true).await.is_err());
    assert_eq!(raw.get("t:vehicle:6").await, before);

    // Written-through keys are indexed like any other: pattern invalidation finds them.
    assert_eq!(cache.invalidate_pattern("vehicle:*").await.unwrap(), 2);
    assert_eq!(cache.stats_of("save_vehicle").errors, 0);
}

#[tokio::test]
async fn invalidation_with_redis_down_never_fails_the_call() {
    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        Some(Vehicle::new(id))
    }

    #[cached(key = "homepage:<section>", ttl = "15m", cache = cache)]
    async fn homepage(cache: &Cache, section: &str) -> String {
        section.to_owned()
    }

    #[invalidates("vehicle:<v.id>", "homepage:*", cache = cache)]
    async fn update_vehicle(cache: &Cache, v: &Vehicle) -> Result<u64, DbError> {
        Ok(v.id)
    }

    let mut server = RedisServer::start();
    let cache = redis_cache(&server).await;
    get_vehicle(&cache, 1).await;
    homepage(&cache, "featured").await;

    server.kill();
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(update_vehicle(&cache, &Vehicle::new(1)).await, Ok(1));
    }
    let took = started.elapsed();
    let stats = cache.stats_of("update_vehicle");
    assert!(stats.errors >= 1, "the failure is counted: {stats:?}");
    assert_eq!(stats.invalidated, 0, "{stats:?}");
    assert!(took < Duration::from_secs(3), "3 updates took {took:?}");
}

#[test]
fn every_invalidation_declared_in_this_binary_can_match_a_cached_key() {
    if let Err(dead) = cache_runtime::check_invalidations() {
        panic!("{dead}");
    }
    // The check did look at this module's declarations.
    assert!(cache_runtime::declarations()
        .any(|d| d.file.ends_with("invalidation.rs")
            && d.template == "dealer:<v.dealer_id>:vehicles"));
}

#[tokio::test]
async fn memory_store_invalidates_exact_keys_and_patterns() {
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
    async fn get_vehicle(cache: &Cache, id: u64) -> Result<Option<Vehicle>, DbError> {
        LOADS.fetch_add(1, SeqCst);
        Ok(Some(Vehicle::new(id)))
    }

    #[cached(key = "homepage:<section>", ttl = "15m", cache = cache)]
    async fn homepage(cache: &Cache, section: &str) -> String {
        LOADS.fetch_add(100, SeqCst);
        section.to_owned()
    }

    #[invalidates("vehicle:<v.id>", "homepage:*", cache = cache)]
    async fn update_vehicle(cache: &Cache, v: &Vehicle, fail: bool) -> Result<(), DbError> {
        if fail {
            return Err(DbError("no".into()));
        }
        Ok(())
    }

    let cache = Cache::memory();
    let ttl = Duration::from_secs(60);
    get_vehicle(&cache, 1).await.unwrap();
    get_vehicle(&cache, 2).await.unwrap();
    homepage(&cache, "featured").await;
    cache.set("homepage2:x", "neighbour", ttl).await.unwrap();
    cache.set("dealer:1:vehicles", &[1], ttl).await.unwrap();
    cache.set("fleet:2:vehicles", &[2], ttl).await.unwrap();
    assert_eq!(LOADS.load(SeqCst), 102);

    assert!(update_vehicle(&cache, &Vehicle::new(1), true).await.is_err());
    assert_eq!(cache.stats_of("update_vehicle").invalidated, 0);
    get_vehicle(&cache, 1).await.unwrap();
    assert_eq!(LOADS.load(SeqCst), 102, "still cached after Err");

    update_vehicle(&cache, &Vehicle::new(1), false).await.unwrap();
    assert_eq!(cache.stats_of("update_vehicle").invalidated, 2);
    get_vehicle(&cache, 1).await.unwrap();
    get_vehicle(&cache, 2).await.unwrap();
    homepage(&cache, "featured").await;
    assert_eq!(LOADS.load(SeqCst), 203, "vehicle 1 and the homepage reload, 2 hits");
    assert_eq!(cache.get::<String>("homepage2:x").await.unwrap().as_deref(), Some("neighbour"));

    assert_eq!(cache.invalidate("vehicle:2").await.unwrap(), 1);
    assert_eq!(cache.invalidate("vehicle:2").await.unwrap(), 0);
    for bad in ["", "a[", "a]", "a b"] {
        assert!(cache.invalidate_pattern(bad).await.is_err(), "{bad:?}");
    }
    assert_eq!(cache.invalidate_pattern("*:vehicles").await.unwrap(), 2);
    assert_eq!(cache.invalidate_pattern("homepage:*").await.unwrap(), 1);
    assert!(cache.get::<Vehicle>("vehicle:1").await.unwrap().is_some());
    assert!(cache.get::<String>("homepage2:x").await.unwrap().is_some());
    assert_eq!(cache.stats_of(DIRECT_CALLS).invalidated, 4);
}

#[tokio::test]
async fn memory_store_clear_and_glob_injection() {
    #[cached(key = "dealer:<dealer_id>:vehicles", ttl = "15m", cache = cache)]
    async fn dealer_vehicles(cache: &Cache, dealer_id: &str) -> Vec<String> {
        vec![dealer_id.to_owned()]
    }

    #[invalidates("dealer:<dealer_id>:vehicles", cache = cache)]
    async fn touch_dealer(cache: &Cache, dealer_id: &str) -> Result<(), DbError> {
        let _ = dealer_id;
        Ok(())
    }

    #[invalidates("dealer:<dealer_id>:*", cache = cache)]
    async fn touch_everything_of_dealer(cache: &Cache, dealer_id: &str) -> Result<(), DbError> {
        let _ = dealer_id;
        Ok(())
    }

    let cache = Cache::memory();
    let other = Cache::memory();
    let dealers = ["*", "?", "[a-z]", "a", "b", "7"];
    let cached_dealers = |cache: Cache| async move {
        let mut present = Vec::new();
        for dealer in dealers {
            let key = format!(
                "dealer:{}:vehicles",
                match dealer {
                    "*" => "%2A",
                    "?" => "%3F",
                    "[a-z]" => "%5Ba-z%5D",
                    plain => plain,
                }
            );
            if cache.get::<Vec<String>>(&key).await.unwrap().is_some() {
                present.push(dealer);
            }
        }
        present
    };

    for weird in ["*", "?", "[a-z]"] {
        for exact in [true, false] {
            for dealer in dealers {
                dealer_vehicles(&cache, dealer).await;
            }
            assert_eq!(cached_dealers(cache.clone()).await, dealers);
            if exact {
                touch_dealer(&cache, weird).await.unwrap();
            } else {
                touch_everything_of_dealer(&cache, weird).await.unwrap();
            }
            let expected: Vec<&str> = dealers.into_iter().filter(|d| *d != weird).collect();
            assert_eq!(
                cached_dealers(cache.clone()).await,
                expected,
                "dealer {weird:?} (exact template: {exact}) removes that dealer only"
            );
        }
    }

    // clear() empties this cache only.
    for dealer in dealers {
        dealer_vehicles(&cache, dealer).await;
    }
    dealer_vehicles(&other, "a").await;
    assert_eq!(cache.clear().await.unwrap(), dealers.len() as u64);
    assert!(cached_dealers(cache.clone()).await.is_empty());
    assert_eq!(cached_dealers(other.clone()).await, ["a"]);
    assert_eq!(cache.clear().await.unwrap(), 0);
}

/// A pretend price row, and a load that reads it slowly (as a slow query would).
struct SlowPrices {
    cache: Cache,
    price: std::sync::atomic::AtomicU32,
}

impl SlowPrices {
    #[cached(key = "price:<id>", ttl = "15m", cache = self.cache)]
    async fn price(&self, id: u64) -> u32 {
        let _ = id;
        let read = self.price.load(SeqCst); // the database read happens first...
        tokio::time::sleep(Duration::from_millis(150)).await; // ...then the slow rest
        read
    }

    #[invalidates("price:<id>", cache = self.cache)]
    async fn reprice(&self, id: u64, price: u32) -> Result<(), DbError> {
        let _ = id;
        self.price.store(price, SeqCst);
        Ok(())
    }
}

/// The classic cache-aside race: a load reads the old price, an update writes the new one
/// and invalidates, then the load finishes. Its old value is returned to its caller but must
/// not be stored, or every later read would serve the old price for the whole TTL.
async fn a_load_running_during_an_invalidation_is_not_stored(cache: Cache) {
    let prices =
        std::sync::Arc::new(SlowPrices { cache, price: std::sync::atomic::AtomicU32::new(100) });
    let slow_read = tokio::spawn({
        let prices = prices.clone();
        async move { prices.price(1).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    prices.reprice(1, 200).await.unwrap();
    assert_eq!(slow_read.await.unwrap(), 100, "the racing read answers with what it read");
    assert_eq!(
        prices.price(1).await,
        200,
        "the next read sees the new price, not a stored old one"
    );
    assert_eq!(prices.price(1).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_load_running_during_an_invalidation_is_not_stored() {
    let server = RedisServer::start();
    a_load_running_during_an_invalidation_is_not_stored(redis_cache(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_load_running_during_an_invalidation_is_not_stored() {
    a_load_running_during_an_invalidation_is_not_stored(Cache::memory()).await;
}
