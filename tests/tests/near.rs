//! The near cache (`CacheBuilder::near_cache`) against real Redis servers: hits from process
//! memory, eviction by writes of any client (a plain redis-rs client that knows nothing of
//! this crate), no stale reads while tracking is down (CLIENT KILL of the tracking
//! connection, a Redis restart), the TTL and byte bounds, and `near = false`.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use cache_tests::{RedisCluster, RedisServer};

const PREFIX: &str = "n:";

async fn near_cache(urls: &[String], cluster: bool, max_bytes: u64) -> Cache {
    let builder = Cache::builder().prefix(PREFIX).near_cache(max_bytes);
    let builder = match cluster {
        true => builder.redis_cluster(urls.iter().cloned()),
        false => builder.redis(urls[0].clone()),
    };
    let cache = builder.build().await.expect("a near cache builds");
    wait_live(&cache).await;
    cache
}

async fn wait_live(cache: &Cache) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.near_cache_live() {
        assert!(Instant::now() < deadline, "tracking never became live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads `key` until it returns `expected`; returns how long that took, panics after 2 s.
async fn until_reads(cache: &Cache, key: &str, expected: Option<u64>) -> Duration {
    let started = Instant::now();
    loop {
        if cache.get::<u64>(key).await.expect("get") == expected {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{key} never read {expected:?}");
        tokio::task::yield_now().await;
    }
}

async fn plain_set(connection: &mut redis::aio::MultiplexedConnection, key: &str, value: u64) {
    redis::cmd("SET")
        .arg(format!("{PREFIX}{key}"))
        .arg(value.to_string())
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(connection)
        .await
        .expect("SET");
}

#[tokio::test]
async fn hits_come_from_memory_and_a_plain_client_write_evicts_them() {
    let server = RedisServer::start();
    let cache = near_cache(&[server.url()], false, 1 << 20).await;
    let mut plain = server.connection().await;

    cache.set("price:1", &10_u64, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get::<u64>("price:1").await.unwrap(), Some(10)); // fills L1
    assert_eq!(cache.get::<u64>("price:1").await.unwrap(), Some(10));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.near_hits), (2, 1), "{stats:?}");
    assert!(cache.prometheus().contains("cache_near_hits_total{function=\"direct\"} 1\n"));

    // A client that knows nothing of this crate writes, then deletes the raw key.
    plain_set(&mut plain, "price:1", 11).await;
    let took = until_reads(&cache, "price:1", Some(11)).await;
    assert!(took < Duration::from_millis(50), "evicted after {took:?}");
    let _: u64 = redis::cmd("DEL").arg("n:price:1").query_async(&mut plain).await.unwrap();
    until_reads(&cache, "price:1", None).await;

    // This process's own writes are exact at once (read-your-writes).
    cache.set("price:2", &1_u64, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get::<u64>("price:2").await.unwrap(), Some(1));
    assert_eq!(cache.get::<u64>("price:2").await.unwrap(), Some(1));
    cache.set("price:2", &2_u64, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get::<u64>("price:2").await.unwrap(), Some(2));
    cache.invalidate("price:2").await.unwrap();
    assert_eq!(cache.get::<u64>("price:2").await.unwrap(), None);
    cache.set("price:2", &3_u64, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get::<u64>("price:2").await.unwrap(), Some(3));
    assert_eq!(cache.get::<u64>("price:2").await.unwrap(), Some(3));
    cache.invalidate_pattern("price:*").await.unwrap();
    assert_eq!(cache.get::<u64>("price:2").await.unwrap(), None);
}

#[tokio::test]
async fn annotated_functions_use_it_unless_near_is_false() {
    static NEAR_LOADS: AtomicU64 = AtomicU64::new(0);
    static FAR_LOADS: AtomicU64 = AtomicU64::new(0);

    #[cached(key = "near:<id>", ttl = "1m", cache = cache)]
    async fn with_near(cache: &Cache, id: u64) -> u64 {
        NEAR_LOADS.fetch_add(1, SeqCst);
        id
    }

    #[cached(key = "far:<id>", ttl = "1m", cache = cache, near = false)]
    async fn without_near(cache: &Cache, id: u64) -> u64 {
        FAR_LOADS.fetch_add(1, SeqCst);
        id
    }

    let server = RedisServer::start();
    let cache = near_cache(&[server.url()], false, 1 << 20).await;
    for _ in 0..5 {
        assert_eq!(with_near(&cache, 1).await, 1);
        assert_eq!(without_near(&cache, 1).await, 1);
    }
    assert_eq!((NEAR_LOADS.load(SeqCst), FAR_LOADS.load(SeqCst)), (1, 1));
    let (near, far) = (cache.stats_of("with_near"), cache.stats_of("without_near"));
    // The miss, one hit from Redis that fills L1, then L1.
    assert_eq!((near.hits, near.near_hits), (4, 3), "{near:?}");
    assert_eq!((far.hits, far.near_hits), (4, 0), "{far:?}");
}

#[tokio::test]
async fn an_entry_never_outlives_its_redis_ttl() {
    let server = RedisServer::start();
    let cache = near_cache(&[server.url()], false, 1 << 20).await;
    cache.set("short", &1_u64, Duration::from_millis(300)).await.unwrap();
    assert_eq!(cache.get::<u64>("short").await.unwrap(), Some(1));
    assert_eq!(cache.get::<u64>("short").await.unwrap(), Some(1));
    assert_eq!(cache.stats().near_hits, 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(cache.get::<u64>("short").await.unwrap(), None);
}

#[tokio::test]
async fn memory_stays_within_max_bytes() {
    let server = RedisServer::start();
    let max = 64 * 1024;
    let cache = near_cache(&[server.url()], false, max).await;
    let value = "x".repeat(200);
    for i in 0..3000 {
        let key = format!("bulk:{i}");
        cache.set(&key, &value, Duration::from_secs(60)).await.unwrap();
        assert_eq!(cache.get::<String>(&key).await.unwrap().as_deref(), Some(value.as_str()));
    }
    let (entries, bytes) = cache.near_cache_size().unwrap();
    assert!(bytes <= max, "{bytes} bytes in {entries} entries");
    assert!(entries > 50, "{entries} entries");
}

/// The id of the connection with client tracking on (flag `t` in `CLIENT LIST`).
async fn tracking_client_id(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(connection).await.unwrap();
    list.lines()
        .find(|line| {
            line.split(' ')
                .any(|field| field.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
        })
        .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no tracking connection in:\n{list}"))
}

#[tokio::test]
async fn client_kill_of_the_tracking_connection_never_serves_a_changed_value() {
    let server = RedisServer::start();
    let cache = near_cache(&[server.url()], false, 1 << 20).await;
    let mut plain = server.connection().await;
    for round in 0..5_u64 {
        plain_set(&mut plain, "k", round * 10).await;
        until_reads(&cache, "k", Some(round * 10)).await;
        assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(round * 10));
        let near_hits = cache.stats().near_hits;
        assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(round * 10));
        assert_eq!(cache.stats().near_hits, near_hits + 1, "served from L1");

        let id = tracking_client_id(&mut plain).await;
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut plain)
            .await
            .unwrap();
        // Changed while no tracking connection hears it.
        plain_set(&mut plain, "k", round * 10 + 1).await;
        // The disconnect is seen as soon as the socket closes: a few ms at most.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(round * 10 + 1), "round {round}");
        wait_live(&cache).await;
        assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(round * 10 + 1));
        assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(round * 10 + 1));
    }
}

#[tokio::test]
async fn a_redis_restart_never_serves_a_value_changed_meanwhile() {
    let mut server = RedisServer::start();
    let cache = near_cache(&[server.url()], false, 1 << 20).await;
    cache.set("k", &1_u64, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
    assert_eq!(cache.stats().near_hits, 1);

    server.restart(); // the data is gone
    let mut plain = server.connection().await;
    plain_set(&mut plain, "k", 2).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Never 1: L1 was flushed when the connection dropped.
        match cache.get::<u64>("k").await {
            Ok(Some(value)) => {
                assert_eq!(value, 2);
                if cache.near_cache_live() {
                    break;
                }
            }
            Ok(None) => panic!("k is in Redis"),
            Err(_) => {} // reconnecting
        }
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_live(&cache).await;
    let near_hits = cache.stats().near_hits;
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(2));
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(2));
    assert!(cache.stats().near_hits > near_hits, "L1 serves again after re-tracking");
    plain_set(&mut plain, "k", 3).await;
    until_reads(&cache, "k", Some(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_every_primary_is_tracked() {
    let cluster = RedisCluster::start(3, 0);
    let cache = near_cache(&cluster.urls(), true, 1 << 20).await;
    let mut plain = cluster.connection().await;
    for i in 0..30_u64 {
        let key = format!("c:{i}");
        cache.set(&key, &i, Duration::from_secs(60)).await.unwrap();
        // The push for our own SET may arrive after the first read filled L1 and evict it
        // once more (harmless): read until L1 serves.
        let near_hits = cache.stats().near_hits;
        while cache.stats().near_hits == near_hits {
            assert_eq!(cache.get::<u64>(&key).await.unwrap(), Some(i));
        }
    }
    for i in 0..30_u64 {
        let key = format!("c:{i}");
        let _: () = redis::cmd("SET")
            .arg(format!("{PREFIX}{key}"))
            .arg((i + 100).to_string())
            .query_async(&mut plain)
            .await
            .unwrap();
    }
    for i in 0..30_u64 {
        let key = format!("c:{i}");
        let took = until_reads(&cache, &key, Some(i + 100)).await;
        assert!(took < Duration::from_millis(50), "{key} evicted after {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_resharding_keeps_l1_coherent() {
    let cluster = RedisCluster::start(3, 0);
    let cache = near_cache(&cluster.urls(), true, 1 << 20).await;
    let keys: Vec<String> = (0..40).map(|i| format!("r:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        cache.set(key, &(i as u64), Duration::from_secs(60)).await.unwrap();
        until_reads(&cache, key, Some(i as u64)).await;
    }
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.reshard(0, 1, 2000);
        cluster
    })
    .await
    .unwrap();
    let mut plain = cluster.connection().await;
    for (i, key) in keys.iter().enumerate() {
        let _: () = redis::cmd("SET")
            .arg(format!("{PREFIX}{key}"))
            .arg((i + 1000).to_string())
            .query_async(&mut plain)
            .await
            .unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let took = until_reads(&cache, key, Some(i as u64 + 1000)).await;
        assert!(took < Duration::from_millis(50), "{key} evicted after {took:?}");
    }
    wait_live(&cache).await;
}

/// `early` and `refresh` with a near cache: hits served from process memory still draw
/// XFetch's recompute (and see the refresh age), so a hot key is recomputed before it
/// expires and nobody misses, while most hits never leave the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_hits_still_recompute_early() {
    static LOADS: AtomicU64 = AtomicU64::new(0);

    #[cached(key = "hot:<id>", ttl = "1s", early, cache = cache)]
    async fn hot(cache: &Cache, id: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        LOADS.fetch_add(1, SeqCst) + id
    }

    let server = RedisServer::start();
    let cache = near_cache(&[server.url()], false, 1 << 20).await;
    hot(&cache, 1).await;
    let started = Instant::now();
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                while started.elapsed() < Duration::from_secs(3) {
                    hot(&cache, 1).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let stats = cache.stats_of("hot");
    assert_eq!(stats.misses, 1, "only the first call missed: {stats:?}");
    assert!(stats.near_hits > stats.hits / 2, "most hits stay in process: {stats:?}");
    let loads = LOADS.load(SeqCst);
    assert!((3..=8).contains(&loads), "about one recompute per second: {loads} ({stats:?})");
}
