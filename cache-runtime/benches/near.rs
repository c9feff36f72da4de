//! The near cache (`CacheBuilder::near_cache`): what a hit costs, and how stale it can be.
//!
//! 1. **Hit cost**, sequentially on a current-thread runtime, timed in alternating batches
//!    (the method of `hit.rs`: machine noise hits subject and baseline alike; the median of
//!    the per-round ratios is reported):
//!    - `near`: a `#[cached(key = "vehicle:<id>", ttl = "15m")]` hit served by the near
//!      cache of a Redis cache;
//!    - `hand-written`: `GET` on a redis-rs `ConnectionManager` + `serde_json::from_slice`
//!      (the baseline of `hit.rs`);
//!    - `moka`: `moka::future::Cache<String, Vehicle>::get(&format!("vehicle:{id}"))` (the
//!      baseline of `hit.rs`), and the same on `moka::sync::Cache`.
//! 2. **Staleness**: 1,000 trials of: fill the near cache, `DEL` the raw key from a plain
//!    redis-rs connection, then read until the near cache stops serving the key (a
//!    multi-thread runtime, the reader yielding between reads). Reported: p50/p99/max from
//!    the moment the `DEL` is sent, and from its reply.
//!
//! ```text
//! cargo bench -p cache-runtime --bench near
//! ```

use std::future::Future;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use redis::aio::ConnectionManager;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

#[path = "support/interleaved.rs"]
mod interleaved;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;
use interleaved::interleaved;

use redis_server::RedisServer;

const ID: u64 = 42;
const PREFIX: &str = "bench:";
const TTL: Duration = Duration::from_secs(15 * 60);

/// The row of `hit.rs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    make: String,
    model: String,
    price: u32,
    features: Vec<String>,
}

fn load_vehicle(id: u64) -> Vehicle {
    Vehicle {
        id,
        dealer_id: 7_311,
        make: "Honda".to_owned(),
        model: "Civic EX 2.0 CVT".to_owned(),
        price: 23_450,
        features: ["sunroof", "heated seats", "apple carplay", "lane assist", "backup camera"]
            .map(str::to_owned)
            .to_vec(),
    }
}

static NEAR: OnceLock<Cache> = OnceLock::new();

#[cached(key = "vehicle:<id>", ttl = "15m", cache = NEAR.get().unwrap())]
async fn near_vehicle(id: u64) -> Result<Option<Vehicle>, String> {
    Ok(Some(load_vehicle(id)))
}

async fn hand_written(connection: &ConnectionManager, id: u64) -> Result<Option<Vehicle>, String> {
    let mut connection = connection.clone();
    let bytes: Option<Vec<u8>> =
        connection.get(format!("{PREFIX}hand:vehicle:{id}")).await.map_err(|e| e.to_string())?;
    match bytes {
        Some(json) => serde_json::from_slice(&json).map(Some).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    let server = RedisServer::start();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let (connection, moka, moka_sync) = runtime.block_on(async {
        let cache = Cache::builder()
            .redis(server.url())
            .prefix(PREFIX)
            .near_cache(64 << 20)
            .build()
            .await
            .expect("a near cache");
        while !cache.near_cache_live() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        NEAR.set(cache).expect("once");
        let connection = ConnectionManager::new(server.client()).await.expect("a connection");
        let moka: moka::future::Cache<String, Vehicle> =
            moka::future::Cache::builder().max_capacity(10_000).time_to_live(TTL).build();
        moka.insert(format!("vehicle:{ID}"), load_vehicle(ID)).await;
        let moka_sync: moka::sync::Cache<String, Vehicle> =
            moka::sync::Cache::builder().max_capacity(10_000).time_to_live(TTL).build();
        moka_sync.insert(format!("vehicle:{ID}"), load_vehicle(ID));
        // Warm: the miss, a Redis hit that fills L1, then near hits.
        let near = NEAR.get().unwrap();
        while near.stats().near_hits == 0 {
            assert_eq!(near_vehicle(ID).await.unwrap(), Some(load_vehicle(ID)));
        }
        // The baseline reads the same value as plain JSON, stored by hand.
        let json = serde_json::to_vec(&load_vehicle(ID)).unwrap();
        let _: () =
            connection.clone().set(format!("{PREFIX}hand:vehicle:{ID}"), json).await.unwrap();
        assert_eq!(hand_written(&connection, ID).await.unwrap(), Some(load_vehicle(ID)));
        (connection, moka, moka_sync)
    });
    let near = NEAR.get().unwrap();
    let before = near.stats();

    let (vs_redis, near_ns, hand_ns) = interleaved(
        &runtime,
        40,
        200,
        || async { near_vehicle(ID).await.unwrap() },
        || hand_written(&connection, ID),
    );
    let (vs_moka, near_ns2, moka_ns) = interleaved(
        &runtime,
        60,
        20_000,
        || async { near_vehicle(ID).await.unwrap() },
        || async { moka.get(&format!("vehicle:{ID}")).await },
    );
    let (vs_sync, near_ns3, sync_ns) = interleaved(
        &runtime,
        60,
        20_000,
        || async { near_vehicle(ID).await.unwrap() },
        || async { moka_sync.get(&format!("vehicle:{ID}")) },
    );
    let after = near.stats();
    assert_eq!(after.misses, before.misses, "every measured call was a hit");
    assert_eq!(after.hits - before.hits, after.near_hits - before.near_hits, "all from L1");
    println!(
        "near hit vs hand-written GET + serde_json: {:.1}x faster ({near_ns:.0} ns vs {hand_ns:.0} ns; target >= 30x)",
        1.0 / vs_redis
    );
    println!(
        "near hit vs moka::future get: {vs_moka:.2}x ({near_ns2:.0} ns vs {moka_ns:.0} ns; target <= 1.3x)"
    );
    println!("near hit vs moka::sync get: {vs_sync:.2}x ({near_ns3:.0} ns vs {sync_ns:.0} ns)");

    // ---- throughput with 64 tasks on a multi-threaded runtime ----
    // The hand-written side needs a connection made on that runtime (its driver task lives
    // there); near hits touch no connection.
    let threaded = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let moka_shared = std::sync::Arc::new(moka_sync.clone());
    let (tput_ratio, near_rate, hand_rate, moka_rate) = threaded.block_on(async {
        let connection = ConnectionManager::new(server.client()).await.expect("a connection");
        async fn rate<F, Fut>(tasks: usize, per_task: usize, call: F) -> f64
        where
            F: Fn() -> Fut + Clone + Send + 'static,
            Fut: Future + Send,
        {
            let started = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let call = call.clone();
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            black_box(call().await);
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.await.expect("a task");
            }
            (tasks * per_task) as f64 / started.elapsed().as_secs_f64()
        }
        let (mut ratios, mut nears, mut hands, mut mokas) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            let moka = moka_shared.clone();
            mokas.push(
                rate(64, 2_000, move || {
                    let moka = moka.clone();
                    async move { moka.get(&format!("vehicle:{ID}")) }
                })
                .await,
            );
            let near = rate(64, 2_000, || async { near_vehicle(ID).await.unwrap() }).await;
            let connection = connection.clone();
            let hand = rate(64, 50, move || {
                let connection = connection.clone();
                async move { hand_written(&connection, ID).await.unwrap() }
            })
            .await;
            ratios.push(near / hand);
            nears.push(near);
            hands.push(hand);
        }
        for list in [&mut ratios, &mut nears, &mut hands, &mut mokas] {
            list.sort_by(f64::total_cmp);
        }
        (ratios[3], nears[3], hands[3], mokas[3])
    });
    println!(
        "64 tasks: near hits {near_rate:.0}/s vs hand-written {hand_rate:.0}/s: {tput_ratio:.1}x the throughput (target >= 20x); bare moka::sync get + clone {moka_rate:.0}/s"
    );
    drop(runtime);

    // ---- staleness ----
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (from_sent, from_reply) = runtime.block_on(async {
        let cache = Cache::builder()
            .redis(server.url())
            .prefix("stale:")
            .near_cache(1 << 20)
            .build()
            .await
            .expect("a near cache");
        while !cache.near_cache_live() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut plain = server.connection().await;
        let (mut from_sent, mut from_reply) = (Vec::new(), Vec::new());
        for trial in 0..1000_u64 {
            cache.set("k", &trial, Duration::from_secs(60)).await.unwrap();
            // Until L1 serves it (the push for our own SET may evict the first fill).
            let hits = cache.stats().near_hits;
            while cache.stats().near_hits == hits {
                assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(trial));
            }
            let sent = Instant::now();
            let _: u64 =
                redis::cmd("DEL").arg("stale:k").query_async(&mut plain).await.expect("DEL");
            let replied = Instant::now();
            while cache.get::<u64>("k").await.unwrap().is_some() {
                tokio::task::yield_now().await;
            }
            let gone = Instant::now();
            from_sent.push(gone - sent);
            from_reply.push(gone.saturating_duration_since(replied));
        }
        from_sent.sort();
        from_reply.sort();
        (from_sent, from_reply)
    });
    for (what, sorted) in [("DEL sent", &from_sent), ("DEL reply", &from_reply)] {
        println!(
            "staleness from {what} to L1 no longer serving, 1000 trials: p50 {:?}, p99 {:?}, max {:?} (target p99 <= 2ms)",
            percentile(sorted, 0.5),
            percentile(sorted, 0.99),
            sorted[sorted.len() - 1]
        );
    }
}
