//! Tags (`tags = [...]`, `#[invalidates(tags = [...])]`, `Cache::invalidate_tag`) on the
//! memory store, a standalone Redis and a 3-master Redis Cluster: what a user observes.
//!
//! | test | shows |
//! |---|---|
//! | `only_tagged_values_go_*` | a tag removes the values stored with it, nothing else (not a key named like the tag, not the other tags' values); `Stats::invalidated` counts them; `#[invalidates(tags)]` too |
//! | `read_your_writes_across_caches_*` | an invalidation from one `Cache` (another process) is seen by the next call of another, near cache included |
//! | `a_gated_load_does_not_store_*` | a load whose body runs across `invalidate_tag` (here or in another process) returns its value but does not store it |
//! | `placeholder_values_are_encoded_*` | `"*"` and `"a:b"` render their own tags; `invalidate_tag("make:*")` is refused |
//! | `eviction_does_not_make_a_tag_incomplete` | under `allkeys-lru` pressure, and with a tag set lost, every tagged key still goes |
//! | `an_outage_during_invalidate_tag_is_replayed` | Redis hung during the call: the error is returned, calls meanwhile load, the removal lands when Redis answers |
//! | `membership_is_pruned_and_measured` | a hot tag holds its live keys only; bytes per member |
//! | `check_invalidations_reports_undeclared_tags` | an invalidated tag nobody declares is reported |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cache_put, cached, invalidates, Cache, Error};
use cache_tests::{RedisCluster, RedisServer};
use redis::aio::ConnectionLike;
use tokio::sync::{Notify, Semaphore};

/// The database behind the functions: a version that writes bump, and an optional gate
/// that holds loads until released.
struct Db {
    version: AtomicU64,
    loads: AtomicU64,
    gated: AtomicBool,
    entered: Notify,
    release: Semaphore,
}

impl Default for Db {
    fn default() -> Db {
        Db {
            version: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            gated: AtomicBool::new(false),
            entered: Notify::new(),
            release: Semaphore::new(0),
        }
    }
}

impl Db {
    async fn load(&self, what: String) -> String {
        self.loads.fetch_add(1, SeqCst);
        let version = self.version.load(SeqCst);
        if self.gated.load(SeqCst) {
            self.entered.notify_one();
            self.release.acquire().await.expect("open").forget();
        }
        format!("{what} v{version}")
    }
}

#[cached(
    key = "search:<make>:<max>",
    ttl = "10m",
    tags = ["make:<make>", "price:<bucket>", "listings"],
    cache = cache
)]
async fn search(cache: &Cache, db: &Db, make: &str, max: u32, bucket: u32) -> String {
    db.load(format!("search {make} {max}")).await
}

#[cached(key = "dealer:<dealer>:page", ttl = "10m", tags = ["vehicle:<vehicle>"], cache = cache)]
async fn dealer_page(cache: &Cache, db: &Db, dealer: u64, vehicle: u64) -> String {
    db.load(format!("dealer {dealer} showing {vehicle}")).await
}

#[cache_put(key = "vehicle:<id>", ttl = "10m", tags = ["vehicle:<id>", "make:<make>"], cache = cache)]
async fn save_vehicle(cache: &Cache, id: u64, make: &str) -> Result<String, String> {
    Ok(format!("vehicle {id} {make}"))
}

#[invalidates(tags = ["vehicle:<id>"], cache = cache)]
async fn reprice(cache: &Cache, db: &Db, id: u64) -> Result<(), String> {
    db.version.fetch_add(1, SeqCst);
    let _ = id;
    Ok(())
}

/// A typo: no function declares a `mkae:` tag.
#[invalidates(tags = ["mkae:<make>"], cache = cache)]
async fn typo(cache: &Cache, make: &str) {
    let _ = make;
}

/// Where the tests run.
enum Deployment {
    Memory,
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Deployment {
    async fn cache(&self, prefix: &str) -> Cache {
        self.build(prefix, |builder| builder).await
    }

    async fn build(
        &self,
        prefix: &str,
        more: impl FnOnce(cache_runtime::CacheBuilder) -> cache_runtime::CacheBuilder,
    ) -> Cache {
        let builder = Cache::builder().prefix(prefix).command_timeout(Duration::from_secs(2));
        let builder = match self {
            Deployment::Memory => return Cache::memory(),
            Deployment::Standalone(server) => builder.redis(server.url()),
            Deployment::Cluster(cluster) => builder.redis_cluster(cluster.urls()),
        };
        more(builder).build().await.expect("cache")
    }

    /// A second handle on the same store (another process), or `None` for the memory store.
    async fn other(&self, prefix: &str) -> Option<Cache> {
        match self {
            Deployment::Memory => None,
            _ => Some(self.cache(prefix).await),
        }
    }
}

async fn query<T: redis::FromRedisValue>(
    raw: &mut Box<dyn ConnectionLike + Send>,
    cmd: &mut redis::Cmd,
) -> T {
    let value = raw.req_packed_command(cmd).await.expect("raw command");
    redis::from_redis_value(value).expect("reply")
}

async fn only_tagged_values_go(deployment: Deployment) {
    let cache = deployment.cache("tags:").await;
    let db = Db::default();
    let v0 = |what: &str| format!("{what} v0");
    assert_eq!(search(&cache, &db, "ford", 20_000, 2).await, v0("search ford 20000"));
    assert_eq!(search(&cache, &db, "audi", 20_000, 2).await, v0("search audi 20000"));
    assert_eq!(search(&cache, &db, "ford", 40_000, 4).await, v0("search ford 40000"));
    assert_eq!(dealer_page(&cache, &db, 7, 42).await, v0("dealer 7 showing 42"));
    save_vehicle(&cache, 42, "ford").await.unwrap();
    // A key spelled like a tag is not stored with it.
    cache.set("make:ford", &"plain", Duration::from_secs(600)).await.unwrap();
    assert_eq!(db.loads.load(SeqCst), 4);
    db.version.store(1, SeqCst);
    let before = cache.stats().invalidated;

    assert_eq!(cache.invalidate_tag("price:4").await.unwrap(), 1, "one search in that bucket");
    assert_eq!(cache.stats().invalidated - before, 1, "counted in Stats::invalidated");
    assert_eq!(search(&cache, &db, "ford", 40_000, 4).await, "search ford 40000 v1");
    assert_eq!(search(&cache, &db, "ford", 20_000, 2).await, v0("search ford 20000"), "kept");

    // `make:ford`: the remaining ford search and the written vehicle.
    assert_eq!(cache.invalidate_tag("make:ford").await.unwrap(), 3);
    assert_eq!(search(&cache, &db, "ford", 20_000, 2).await, "search ford 20000 v1");
    assert_eq!(search(&cache, &db, "audi", 20_000, 2).await, v0("search audi 20000"), "kept");
    assert_eq!(cache.get::<String>("vehicle:42").await.unwrap(), None);
    assert_eq!(cache.get::<String>("make:ford").await.unwrap().as_deref(), Some("plain"));
    assert_eq!(dealer_page(&cache, &db, 7, 42).await, v0("dealer 7 showing 42"), "kept");

    // `#[invalidates(tags = ["vehicle:<id>"])]`.
    reprice(&cache, &db, 42).await.unwrap();
    assert_eq!(dealer_page(&cache, &db, 7, 42).await, "dealer 7 showing 42 v2");
    assert_eq!(search(&cache, &db, "audi", 20_000, 2).await, v0("search audi 20000"), "kept");
    assert_eq!(cache.invalidate_tag("nobody:uses-this").await.unwrap(), 0);
}

#[tokio::test]
async fn only_tagged_values_go_memory() {
    only_tagged_values_go(Deployment::Memory).await;
}

#[tokio::test]
async fn only_tagged_values_go_standalone() {
    only_tagged_values_go(Deployment::Standalone(RedisServer::start())).await;
}

#[tokio::test]
async fn only_tagged_values_go_cluster() {
    only_tagged_values_go(Deployment::Cluster(RedisCluster::start(3, 0))).await;
}

async fn read_your_writes_across_caches(deployment: Deployment) {
    // `reader` has a near cache: its copies must go too.
    let reader = deployment.build("ryw:", |builder| builder.near_cache(1 << 20)).await;
    let writer = deployment.cache("ryw:").await;
    let db = Db::default();
    for round in 0..20u64 {
        db.version.store(round, SeqCst);
        // Twice: the second is a hit (near or Redis) of this round's value.
        for _ in 0..2 {
            let got = search(&reader, &db, "ford", 1, 0).await;
            assert_eq!(got, format!("search ford 1 v{round}"), "round {round}");
        }
        db.version.store(round + 1, SeqCst);
        assert_eq!(writer.invalidate_tag("listings").await.unwrap(), 1, "round {round}");
        // The near cache's copy goes by Redis' push (a staleness bound): wait for it.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let got = search(&reader, &db, "ford", 1, 0).await;
            if got == format!("search ford 1 v{}", round + 1) {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: still {got}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // And the writer's own process reads its write at once, through its own cache.
        let seen = search(&writer, &db, "ford", 1, 0).await;
        assert_eq!(seen, format!("search ford 1 v{}", round + 1));
    }
    // In the reader's own process, with its near cache: at once.
    db.version.store(100, SeqCst);
    reader.invalidate_tag("make:ford").await.unwrap();
    assert_eq!(search(&reader, &db, "ford", 1, 0).await, "search ford 1 v100");
}

#[tokio::test]
async fn read_your_writes_across_caches_standalone() {
    read_your_writes_across_caches(Deployment::Standalone(RedisServer::start())).await;
}

#[tokio::test]
async fn read_your_writes_across_caches_cluster() {
    read_your_writes_across_caches(Deployment::Cluster(RedisCluster::start(3, 0))).await;
}

/// A load whose body runs while the tag is invalidated (by this cache, and by another
/// process when there is one) returns its value but never stores it.
async fn a_gated_load_does_not_store(deployment: Deployment) {
    let cache = deployment.cache("gate:").await;
    let other = deployment.other("gate:").await;
    let invalidators: Vec<&Cache> = std::iter::once(&cache).chain(other.as_ref()).collect();
    for (round, invalidator) in invalidators.into_iter().enumerate() {
        let db = Arc::new(Db::default());
        db.gated.store(true, SeqCst);
        let bucket = u32::try_from(round).unwrap();
        let loading = {
            let (cache, db) = (cache.clone(), Arc::clone(&db));
            tokio::spawn(async move { search(&cache, &db, "ford", 9 + bucket, bucket).await })
        };
        db.entered.notified().await; // the body read version 0 and waits
        db.version.store(1, SeqCst); // the write...
        let tag = format!("price:{bucket}");
        invalidator.invalidate_tag(&tag).await.unwrap(); // ...and its invalidation
        db.gated.store(false, SeqCst);
        db.release.add_permits(1);
        let max = 9 + bucket;
        let got = loading.await.unwrap();
        assert_eq!(got, format!("search ford {max} v0"), "its caller gets its value");
        // Not stored: the next call loads the new version.
        let got = search(&cache, &db, "ford", max, bucket).await;
        assert_eq!(got, format!("search ford {max} v1"));
        assert_eq!(db.loads.load(SeqCst), 2, "round {round}");
    }
}

#[tokio::test]
async fn a_gated_load_does_not_store_memory() {
    a_gated_load_does_not_store(Deployment::Memory).await;
}

#[tokio::test]
async fn a_gated_load_does_not_store_standalone() {
    a_gated_load_does_not_store(Deployment::Standalone(RedisServer::start())).await;
}

#[tokio::test]
async fn a_gated_load_does_not_store_cluster() {
    a_gated_load_does_not_store(Deployment::Cluster(RedisCluster::start(3, 0))).await;
}

async fn placeholder_values_are_encoded(deployment: Deployment) {
    let cache = deployment.cache("enc:").await;
    let db = Db::default();
    for make in ["*", "a:b", "a"] {
        search(&cache, &db, make, 1, 0).await;
    }
    assert_eq!(db.loads.load(SeqCst), 3);
    assert_eq!(cache.invalidate_tag("make:a%3Ab").await.unwrap(), 1, "`a:b` is its own tag");
    assert_eq!(cache.invalidate_tag("make:%2A").await.unwrap(), 1, "`*` is its own tag");
    search(&cache, &db, "a", 1, 0).await;
    assert_eq!(db.loads.load(SeqCst), 3, "`make:a` kept");
    assert_eq!(cache.invalidate_tag("make:a").await.unwrap(), 1);
    for bad in ["make:*", "", "make:#1", "a b", "price:[0]"] {
        let error = cache.invalidate_tag(bad).await.unwrap_err();
        assert!(matches!(error, Error::InvalidTag { .. }), "{bad:?}: {error}");
    }
}

#[tokio::test]
async fn placeholder_values_are_encoded_memory() {
    placeholder_values_are_encoded(Deployment::Memory).await;
}

#[tokio::test]
async fn placeholder_values_are_encoded_standalone() {
    placeholder_values_are_encoded(Deployment::Standalone(RedisServer::start())).await;
}

#[tokio::test]
async fn placeholder_values_are_encoded_cluster() {
    placeholder_values_are_encoded(Deployment::Cluster(RedisCluster::start(3, 0))).await;
}

/// Under `allkeys-lru` a tag set may be evicted like any key: its loss is noticed and the
/// invalidation stays complete.
#[tokio::test]
async fn eviction_does_not_make_a_tag_incomplete() {
    let server =
        RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"]);
    let cache = Cache::builder().redis(server.url()).prefix("lru:").build().await.unwrap();
    let mut raw = server.connection().await;
    let db = Db::default();
    let filler = "x".repeat(16 * 1024);
    for round in 0..3u32 {
        for max in 0..50 {
            search(&cache, &db, "ford", max, round).await;
        }
        // Pressure: unrelated values until Redis evicted a few hundred keys.
        let evicted = |info: String| -> u64 {
            info.lines()
                .find_map(|line| line.strip_prefix("evicted_keys:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        let start: u64 =
            evicted(redis::cmd("INFO").arg("stats").query_async(&mut raw).await.unwrap());
        let mut n = 0;
        while evicted(redis::cmd("INFO").arg("stats").query_async(&mut raw).await.unwrap())
            < start + 300
        {
            let mut pipe = redis::pipe();
            for _ in 0..50 {
                pipe.cmd("SET").arg(format!("lru:filler:{round}:{n}")).arg(&filler).ignore();
                n += 1;
            }
            let () = pipe.query_async(&mut raw).await.unwrap();
        }
        if round == 2 {
            // And a set lost for sure (as if evicted), its keys still there.
            let () =
                redis::cmd("DEL").arg("lru:#tag:make:ford").query_async(&mut raw).await.unwrap();
            search(&cache, &db, "ford", 1000, round).await; // a write re-creates the set
        }
        let surviving: Vec<String> =
            redis::cmd("KEYS").arg("lru:search:ford:*").query_async(&mut raw).await.unwrap();
        cache.invalidate_tag("make:ford").await.unwrap();
        let left: Vec<String> =
            redis::cmd("KEYS").arg("lru:search:ford:*").query_async(&mut raw).await.unwrap();
        assert!(
            left.is_empty(),
            "round {round}: {} of {} tagged keys left",
            left.len(),
            surviving.len()
        );
    }
}

/// Redis hangs while `invalidate_tag` runs: the call fails, calls meanwhile run their body,
/// and the removal lands once Redis answers.
#[tokio::test]
async fn an_outage_during_invalidate_tag_is_replayed() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis(server.url())
        .prefix("out:")
        .command_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let db = Db::default();
    assert_eq!(search(&cache, &db, "ford", 1, 0).await, "search ford 1 v0");
    assert_eq!(search(&cache, &db, "audi", 1, 0).await, "search audi 1 v0");
    db.version.store(1, SeqCst);
    server.pause();
    let error = cache.invalidate_tag("make:ford").await.unwrap_err();
    assert!(!matches!(error, Error::InvalidTag { .. }), "{error}");
    // Meanwhile: no old value (the body answers).
    assert_eq!(search(&cache, &db, "ford", 1, 0).await, "search ford 1 v1");
    server.resume();
    let mut raw = server.connection().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let exists: u64 =
            redis::cmd("EXISTS").arg("out:search:ford:1").query_async(&mut raw).await.unwrap();
        if exists == 0 && cache.stats().invalidated >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the kept tag removal never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(search(&cache, &db, "ford", 1, 0).await, "search ford 1 v1");
    assert_eq!(
        search(&cache, &db, "audi", 1, 0).await,
        "search audi 1 v0",
        "another tag's value stays"
    );
}

/// A hot tag holds its live keys only, and what a member costs in Redis.
#[tokio::test]
async fn membership_is_pruned_and_measured() {
    let server = RedisServer::start();
    let cache = Cache::builder().redis(server.url()).prefix("hot:").build().await.unwrap();
    let mut raw: Box<dyn ConnectionLike + Send> = Box::new(server.connection().await);
    let db = Db::default();
    const MEMBERS: u32 = 10_000;
    for max in 0..MEMBERS {
        search(&cache, &db, "ford", max, 0).await;
    }
    let card: u64 = query(&mut raw, redis::cmd("ZCARD").arg("hot:#tag:make:ford")).await;
    assert_eq!(card, u64::from(MEMBERS) + 1, "members and the sentinel");
    let bytes: u64 =
        query(&mut raw, redis::cmd("MEMORY").arg("USAGE").arg("hot:#tag:make:ford")).await;
    let per_member = bytes / u64::from(MEMBERS);
    println!("tag set of {MEMBERS} members (`search:ford:<n>`, 15-19 bytes): {bytes} bytes, {per_member} bytes per member");
    assert!(per_member < 160, "{per_member} bytes per member");

    // Keys that expire leave the set as the tag is written again.
    #[cache_put(key = "brief:<n>", ttl = "100ms", tags = ["brief"], cache = cache)]
    async fn brief(cache: &Cache, n: u32) -> Result<u32, String> {
        Ok(n)
    }
    for n in 0..1000 {
        brief(&cache, n).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    brief(&cache, 5000).await.unwrap();
    let card: u64 = query(&mut raw, redis::cmd("ZCARD").arg("hot:#tag:brief")).await;
    assert_eq!(card, 2, "the new member and the sentinel: the expired ones were pruned");

    // Keys removed by the tag leave it at once (standalone: in the same script).
    assert_eq!(cache.invalidate_tag("make:ford").await.unwrap(), u64::from(MEMBERS));
    let card: u64 = query(&mut raw, redis::cmd("ZCARD").arg("hot:#tag:make:ford")).await;
    assert_eq!(card, 1, "the sentinel only");
}

#[test]
fn check_invalidations_reports_undeclared_tags() {
    let dead = cache_runtime::check_invalidations().unwrap_err();
    let templates: Vec<&str> = dead.dead.iter().map(|d| d.template).collect();
    assert_eq!(templates, ["mkae:<make>"], "{dead}");
    assert!(dead.to_string().contains("tag \"mkae:<make>\" in `typo`"), "{dead}");
    // Keep the typo "used".
    let _ = typo;
}
