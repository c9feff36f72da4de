//! The contract on Redis Cluster: the same test bodies run against a standalone server and
//! against a local 3-master cluster (`*_standalone` / `*_cluster`), plus cluster faults: a
//! master killed (without replicas: calls answer from their bodies; with replicas: failover,
//! then caching resumes) and a slot migration during traffic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::{cache_put, cached, invalidates, Cache};
use cache_tests::{RedisCluster, RedisServer};
use redis::aio::ConnectionLike;

/// Where the contract runs.
enum Deployment {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Deployment {
    fn standalone() -> Deployment {
        Deployment::Standalone(RedisServer::start())
    }

    fn cluster() -> Deployment {
        Deployment::Cluster(RedisCluster::start(3, 0))
    }

    /// A cache with `prefix` (another "process" when called twice).
    async fn cache(&self, prefix: &str) -> Cache {
        let builder = Cache::builder().prefix(prefix).command_timeout(Duration::from_secs(2));
        let builder = match self {
            Deployment::Standalone(server) => builder.redis(server.url()),
            Deployment::Cluster(cluster) => builder.redis_cluster(cluster.urls()),
        };
        builder.build().await.expect("cache")
    }

    /// A raw connection for looking at what the cache stored.
    async fn raw(&self) -> Raw {
        match self {
            Deployment::Standalone(server) => Raw(Box::new(server.connection().await)),
            Deployment::Cluster(cluster) => Raw(Box::new(cluster.connection().await)),
        }
    }
}

/// `redis-cli` for tests, over either kind of connection.
struct Raw(Box<dyn ConnectionLike + Send>);

impl Raw {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &mut redis::Cmd) -> T {
        cmd.query_async(&mut RawRef(&mut *self.0)).await.expect("raw command")
    }
    async fn exists(&mut self, key: &str) -> bool {
        self.query::<u64>(redis::cmd("EXISTS").arg(key)).await == 1
    }
    async fn get(&mut self, key: &str) -> Option<String> {
        self.query(redis::cmd("GET").arg(key)).await
    }
    /// Every key matching `pattern`, on every primary.
    async fn keys(&mut self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.query(redis::cmd("KEYS").arg(pattern)).await;
        keys.sort();
        keys
    }
}

/// Lets a boxed connection be passed where redis-rs wants `&mut impl ConnectionLike`.
struct RawRef<'a>(&'a mut (dyn ConnectionLike + Send));

impl ConnectionLike for RawRef<'_> {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.0.req_packed_command(cmd)
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }
    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Runs a contract body on both deployments.
macro_rules! contract {
    ($body:ident) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$body(super::Deployment::standalone()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$body(super::Deployment::cluster()).await;
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    price: u32,
}

struct Catalog {
    cache: Cache,
    loads: AtomicU32,
    /// The "database" behind `vehicle`: prices changed by `traffic` (100 by default).
    prices: Mutex<HashMap<u64, u32>>,
}

impl Catalog {
    fn new(cache: Cache) -> Catalog {
        Catalog { cache, loads: AtomicU32::new(0), prices: Mutex::default() }
    }

    /// The price of vehicle `id` in the database.
    fn price(&self, id: u64) -> u32 {
        self.prices.lock().unwrap().get(&id).copied().unwrap_or(100)
    }

    /// Raises the price of vehicle `id` in the database by one; returns the new price.
    fn raise_price(&self, id: u64) -> u32 {
        let mut prices = self.prices.lock().unwrap();
        let price = prices.entry(id).or_insert(100);
        *price += 1;
        *price
    }

    #[cached(key = "vehicle:<id>", ttl = "15m", lock, cache = self.cache)]
    async fn vehicle(&self, id: u64) -> Result<Option<Vehicle>, String> {
        self.loads.fetch_add(1, SeqCst);
        let price = self.price(id);
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(Some(Vehicle { id, dealer_id: id % 3, price }))
    }

    #[cached(key = "dealer:<dealer_id>:vehicles", ttl = "5m", cache = self.cache)]
    async fn dealer_vehicles(&self, dealer_id: u64) -> Vec<u64> {
        self.loads.fetch_add(1, SeqCst);
        vec![dealer_id, dealer_id + 3]
    }

    #[cached(key = "homepage:<section>", ttl = "1m", cache = self.cache)]
    async fn homepage(&self, section: &str) -> String {
        self.loads.fetch_add(1, SeqCst);
        format!("<{section}>")
    }

    #[cache_put(key = "vehicle:<v.id>", ttl = "15m", cache = self.cache)]
    #[invalidates("dealer:<v.dealer_id>:vehicles", "homepage:*", cache = self.cache)]
    async fn save(&self, v: Vehicle) -> Result<Vehicle, String> {
        Ok(v)
    }
}

async fn cache_aside_stores_prefixed_keys_and_hits(deployment: Deployment) {
    let catalog = Catalog::new(deployment.cache("t:").await);
    let mut raw = deployment.raw().await;
    for id in 0..20 {
        assert_eq!(catalog.vehicle(id).await.unwrap().unwrap().id, id);
    }
    for id in 0..20 {
        catalog.vehicle(id).await.unwrap();
    }
    assert_eq!(catalog.loads.load(SeqCst), 20);
    let stats = catalog.cache.stats_of("vehicle");
    assert_eq!((stats.hits, stats.misses, stats.loads, stats.errors), (20, 20, 20, 0), "{stats:?}");
    assert_eq!(
        raw.get("t:vehicle:7").await.as_deref().map(cache_tests::stored_payload),
        Some(r#"{"id":7,"dealer_id":1,"price":100}"#)
    );
    let pttl: i64 = raw.query(redis::cmd("PTTL").arg("t:vehicle:7")).await;
    assert!((899_000..=900_000).contains(&pttl), "PTTL {pttl}");
}
contract!(cache_aside_stores_prefixed_keys_and_hits);

async fn concurrent_misses_in_two_processes_run_the_body_once(deployment: Deployment) {
    let a = Arc::new(Catalog::new(deployment.cache("t:").await));
    let b_cache = deployment.cache("t:").await;
    let loads = Arc::new(AtomicU32::new(0));
    let mut calls = Vec::new();
    for i in 0..200 {
        let (a, b_cache, loads) = (a.clone(), b_cache.clone(), loads.clone());
        calls.push(tokio::spawn(async move {
            if i % 2 == 0 {
                a.vehicle(42).await.unwrap().unwrap()
            } else {
                // The same function in "another process": a second cache on the same Redis.
                let b = Catalog::new(b_cache);
                let vehicle = b.vehicle(42).await.unwrap().unwrap();
                loads.fetch_add(b.loads.load(SeqCst), SeqCst);
                vehicle
            }
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().id, 42);
    }
    assert_eq!(a.loads.load(SeqCst) + loads.load(SeqCst), 1, "one body run across both processes");
}
contract!(concurrent_misses_in_two_processes_run_the_body_once);

async fn lease_locks_exclude_and_fencing_tokens_increase(deployment: Deployment) {
    let (one, two) = (deployment.cache("t:").await, deployment.cache("t:").await);
    let lease = Duration::from_secs(5);
    let first = one.try_lock("payment:1", lease).await.unwrap().expect("free");
    assert!(two.try_lock("payment:1", lease).await.unwrap().is_none(), "held by the other process");
    let started = Instant::now();
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let token = first.fencing_token();
        assert!(first.release().await.unwrap());
        token
    });
    let second = two.lock("payment:1", lease, Duration::from_secs(3)).await.unwrap();
    let first_token = releaser.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "woken by the release: {:?}",
        started.elapsed()
    );
    assert!(second.fencing_token() > first_token);
    assert!(second.extend(lease).await.unwrap());
    assert!(second.release().await.unwrap());
}
contract!(lease_locks_exclude_and_fencing_tokens_increase);

async fn write_through_and_invalidation_by_key_and_pattern(deployment: Deployment) {
    let catalog = Catalog::new(deployment.cache("t:").await);
    let mut raw = deployment.raw().await;
    catalog.vehicle(1).await.unwrap();
    for dealer in 0..3 {
        catalog.dealer_vehicles(dealer).await;
    }
    for section in ["hero", "deals", "new", "suv"] {
        catalog.homepage(section).await;
    }
    let loads = catalog.loads.load(SeqCst);
    let saved = catalog.save(Vehicle { id: 1, dealer_id: 1, price: 90 }).await.unwrap();
    assert_eq!(catalog.vehicle(1).await.unwrap(), Some(saved), "written through");
    assert_eq!(catalog.loads.load(SeqCst), loads, "a hit, no load");
    assert!(!raw.exists("t:dealer:1:vehicles").await);
    assert!(raw.exists("t:dealer:0:vehicles").await && raw.exists("t:dealer:2:vehicles").await);
    assert!(raw.keys("t:homepage:*").await.is_empty(), "every homepage section went");
    let stats = catalog.cache.stats_of("save");
    assert_eq!((stats.invalidated, stats.pattern_scans), (5, 0), "served by the index: {stats:?}");
    // A pattern no index serves scans every primary.
    assert_eq!(catalog.cache.invalidate_pattern("*:vehicles").await.unwrap(), 2);
    assert!(raw.keys("t:dealer:*").await.is_empty());
    assert_eq!(catalog.cache.stats().pattern_scans, 1);
}
contract!(write_through_and_invalidation_by_key_and_pattern);

async fn clear_removes_this_prefix_on_every_node(deployment: Deployment) {
    let (mine, other) =
        (Catalog::new(deployment.cache("t:").await), Catalog::new(deployment.cache("u:").await));
    let mut raw = deployment.raw().await;
    for id in 0..30 {
        mine.vehicle(id).await.unwrap();
    }
    other.vehicle(1).await.unwrap();
    let held =
        mine.cache.try_lock("job:nightly", Duration::from_secs(30)).await.unwrap().expect("free");
    raw.query::<()>(redis::cmd("SET").arg("unrelated").arg("1")).await;
    assert_eq!(mine.cache.clear().await.unwrap(), 30);
    // Data keys go; the indexes stay (their members expire with the keys).
    assert!(raw.keys("t:vehicle:*").await.is_empty());
    assert!(raw.exists("u:vehicle:1").await && raw.exists("unrelated").await);
    assert!(
        mine.cache.try_lock("job:nightly", Duration::from_secs(1)).await.unwrap().is_none(),
        "locks survive"
    );
    held.release().await.unwrap();
}
contract!(clear_removes_this_prefix_on_every_node);

async fn health_reports_the_store(deployment: Deployment) {
    let cache = deployment.cache("t:").await;
    let health = cache.health().await;
    assert!(health.reachable, "{health:?}");
    assert!(
        health.round_trip_ms.is_some() && health.used_memory_bytes.unwrap_or(0) > 0,
        "{health:?}"
    );
    assert!(health.connected_clients.unwrap_or(0) >= 1, "{health:?}");
}
contract!(health_reports_the_store);

#[cached(key = "session:<token>", ttl = "3s", idle = "1s", cache = cache)]
async fn session(cache: &Cache, token: &str) -> Option<String> {
    Some(format!("loaded {token}"))
}

/// `idle`: hits extend a value written by `set` for 500 ms past that, and its index entry
/// with it (on a cluster, the index lives in another slot), so a pattern still finds it
/// after another write to the level pruned the passed members.
async fn idle_hits_slide_and_keep_the_key_indexed(deployment: Deployment) {
    let cache = deployment.cache("t:").await;
    cache.set("session:a", "set a", Duration::from_millis(500)).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(session(&cache, "a").await.as_deref(), Some("set a"));
    }
    cache.set("session:b", "other", Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.invalidate_pattern("session:*").await.unwrap(), 2);
    assert_eq!(session(&cache, "a").await.as_deref(), Some("loaded a"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(cache.stats_of("session").misses, 1);
    session(&cache, "a").await;
    assert_eq!(cache.stats_of("session").misses, 2, "unread for longer than idle: gone");
}
contract!(idle_hits_slide_and_keep_the_key_indexed);

/// What [`traffic`] did.
#[derive(Debug)]
struct Traffic {
    /// Calls of `vehicle`.
    calls: u32,
    /// Runs of its body during the traffic: the other calls were answered by the cache.
    loads: u32,
    /// Price changes whose cache update (write or invalidation) returned `Ok`.
    confirmed: u32,
    /// Price changes whose cache update failed (Redis down): not confirmed.
    unconfirmed: u32,
}

/// Calls `vehicle(id)` for ids 0..100 in rounds until `until` (at least [`MIN_ROUNDS`]),
/// and after each round, while `writing` is set, changes two prices the way the application
/// would: the database first, then the cache, by writing the new value through
/// (`Cache::set`) or by invalidating the key.
///
/// Every answer must be for the right id, with a price no older than the last change the
/// cache confirmed (its update returned `Ok`) and no newer than the database: an old price
/// served after a confirmed write or invalidation (one lost in a migration, sent to the
/// wrong node, or undone by a failover) fails. Until a change is confirmed the cache may
/// still hold the price before it. Calls and changes are made in turn, never concurrently,
/// so nothing else can make an answer stale.
/// The fewest rounds over the 100 ids that [`traffic`] makes.
const MIN_ROUNDS: u64 = 5;

async fn traffic(catalog: Arc<Catalog>, until: Instant, writing: Arc<AtomicBool>) -> Traffic {
    let mut confirmed: Vec<u32> = (0..100).map(|id| catalog.price(id)).collect();
    let loads_before = catalog.loads.load(SeqCst);
    let (mut calls, mut confirmed_changes, mut unconfirmed_changes) = (0, 0, 0);
    let mut round = 0u64;
    // At least a few rounds, however slow a loaded machine is: the first round of each id
    // misses, and the callers judge the hits of the later ones.
    while Instant::now() < until || round < MIN_ROUNDS {
        for id in 0..100u64 {
            let vehicle = catalog.vehicle(id).await.expect("the body never fails").expect("exists");
            assert_eq!(vehicle.id, id);
            let (oldest, newest) = (confirmed[id as usize], catalog.price(id));
            assert!(
                (oldest..=newest).contains(&vehicle.price),
                "vehicle {id} served at price {}: the cache confirmed {oldest}, the database \
                 holds {newest}",
                vehicle.price
            );
            calls += 1;
        }
        if writing.load(SeqCst) {
            for change in 0..2 {
                let id = (2 * round + change) % 100;
                let price = catalog.raise_price(id);
                let key = format!("vehicle:{id}");
                let updated = if (round + change).is_multiple_of(2) {
                    let vehicle = Vehicle { id, dealer_id: id % 3, price };
                    catalog.cache.set(&key, &vehicle, Duration::from_secs(900)).await
                } else {
                    catalog.cache.invalidate(&key).await.map(drop)
                };
                if updated.is_ok() {
                    confirmed[id as usize] = price;
                    confirmed_changes += 1;
                } else {
                    unconfirmed_changes += 1;
                }
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Traffic {
        calls,
        loads: catalog.loads.load(SeqCst) - loads_before,
        confirmed: confirmed_changes,
        unconfirmed: unconfirmed_changes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_then_failover_and_caching_resumes() {
    let mut cluster = RedisCluster::start(3, 1);
    let cache = Cache::builder()
        .redis_cluster(cluster.urls())
        .prefix("t:")
        .command_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let catalog = Arc::new(Catalog::new(cache.clone()));
    for id in 0..100 {
        catalog.vehicle(id).await.unwrap();
    }
    let started = Instant::now();
    let writing = Arc::new(AtomicBool::new(true));
    let load =
        tokio::spawn(traffic(catalog.clone(), started + Duration::from_secs(6), writing.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No change in flight as the primary dies: what it confirmed has reached its replica
    // (replication is asynchronous; a write confirmed just before the kill could be lost).
    writing.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.nodes()[0].kill(); // a primary; its replica takes over after the node timeout
    writing.store(true, SeqCst);
    let traffic = load.await.unwrap();
    eprintln!(
        "master killed: {traffic:?} in {:?}, all correct ({} changes unconfirmed while Redis \
         was down); stats {:?}",
        started.elapsed(),
        traffic.unconfirmed,
        cache.stats_of("vehicle")
    );
    assert!(traffic.confirmed > 0, "prices changed during the traffic: {traffic:?}");
    assert!(traffic.loads < traffic.calls, "the cache answered calls: {traffic:?}");
    // After failover every key is served from the cache again (replicas had the data or
    // the bodies refilled it).
    let loads_before = catalog.loads.load(SeqCst);
    let recovered = Instant::now();
    loop {
        for id in 0..100 {
            catalog.vehicle(id).await.unwrap();
        }
        let loads_now = catalog.loads.load(SeqCst);
        if recovered.elapsed() > Duration::from_secs(1) && {
            for id in 0..100 {
                catalog.vehicle(id).await.unwrap();
            }
            catalog.loads.load(SeqCst) == loads_now
        } {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(15),
            "caching did not resume after failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "caching resumed {:?} after the traffic ended ({} reloads)",
        recovered.elapsed(),
        catalog.loads.load(SeqCst) - loads_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_without_replicas_calls_answer_from_their_bodies() {
    let mut cluster = RedisCluster::start(3, 0);
    let cache = Cache::builder()
        .redis_cluster(cluster.urls())
        .prefix("t:")
        .command_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let catalog = Arc::new(Catalog::new(cache.clone()));
    cluster.nodes()[1].kill();
    let started = Instant::now();
    for id in 0..50 {
        assert_eq!(catalog.vehicle(id).await.unwrap().unwrap().id, id);
    }
    let took = started.elapsed();
    eprintln!(
        "no replicas, a master down: 50 calls in {took:?}, stats {:?}",
        cache.stats_of("vehicle")
    );
    assert!(took < Duration::from_secs(10), "bounded by timeouts and the breaker: {took:?}");
    assert!(cache.stats().errors >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slot_migration_during_traffic_keeps_answers_correct() {
    let cluster = RedisCluster::start(3, 0);
    let cache = Cache::builder().redis_cluster(cluster.urls()).prefix("t:").build().await.unwrap();
    let catalog = Arc::new(Catalog::new(cache.clone()));
    let started = Instant::now();
    let writing = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn(traffic(catalog.clone(), started + Duration::from_secs(4), writing));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reshard = tokio::task::spawn_blocking(move || {
        cluster.reshard(0, 1, 1000);
        cluster
    });
    let traffic = load.await.unwrap();
    let _cluster = reshard.await.unwrap();
    let stats = cache.stats_of("vehicle");
    eprintln!("1000 slots migrated during traffic: {traffic:?}, all correct; stats {stats:?}");
    assert!(traffic.confirmed > 0, "prices changed during the traffic: {traffic:?}");
    assert!(stats.hits > stats.misses, "the cache kept serving: {stats:?}");
}
