//! Cost of a cache **miss that fills** through `#[cached]` (with the fill protocol that
//! keeps invalidations from being undone), next to hand-written cache-aside.
//!
//! | subject | what one call does |
//! |---|---|
//! | hand-written | `GET` (nil), the body, `SET key json PX ttl`: two round trips, no index, no protection |
//! | `#[cached]` | `GET` (nil), begin-fill script (marker + index entries), the body, fill script: three round trips |
//! | `#[cached(stale = ...)]` | `GET`+`PTTL` pipeline, begin-fill, the body, fill: three round trips |
//!
//! Every call uses a fresh key, so every call misses. Subject and baseline run in
//! alternating batches on one current-thread runtime against a private `redis-server`, so
//! machine noise hits both alike; the bench prints the median of the per-round ratios.
//!
//! ```text
//! cargo bench -p cache-runtime --bench miss
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use redis::aio::ConnectionManager;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;

const PREFIX: &str = "bench:";
const BATCH: u64 = 500;
const ROUNDS: usize = 9;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    make: String,
    model: String,
    price: u32,
}

fn load_vehicle(id: u64) -> Vehicle {
    Vehicle { id, make: "Honda".into(), model: "Civic EX 2.0 CVT".into(), price: 23_450 }
}

static CACHE: OnceLock<Cache> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(1);

fn cache() -> &'static Cache {
    CACHE.get().expect("built in main")
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = cache())]
async fn cached_vehicle(id: u64) -> Option<Vehicle> {
    Some(load_vehicle(id))
}

#[cached(key = "vehicle:<id>", ttl = "15m", stale = "1h", cache = cache())]
async fn cached_vehicle_stale(id: u64) -> Option<Vehicle> {
    Some(load_vehicle(id))
}

/// Hand-written cache-aside on a miss: `GET`, body, `SET PX`.
async fn hand_written(connection: &ConnectionManager, id: u64) -> Option<Vehicle> {
    let mut connection = connection.clone();
    let key = format!("{PREFIX}vehicle:{id}");
    let bytes: Option<Vec<u8>> = connection.get(&key).await.ok()?;
    if let Some(json) = bytes {
        return serde_json::from_slice(&json).ok();
    }
    let vehicle = load_vehicle(id);
    let json = serde_json::to_vec(&vehicle).ok()?;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(json)
        .arg("PX")
        .arg(15 * 60 * 1000)
        .query_async(&mut connection)
        .await
        .ok()?;
    Some(vehicle)
}

/// Mean time per call of `BATCH` calls, each on a fresh key.
async fn batch<F, Fut>(call: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Option<Vehicle>>,
{
    let started = Instant::now();
    for _ in 0..BATCH {
        let id = NEXT.fetch_add(1, Relaxed);
        assert_eq!(call(id).await, Some(load_vehicle(id)));
    }
    started.elapsed() / BATCH as u32
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let server = redis_server::RedisServer::start();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let built = Cache::builder().redis(server.url()).prefix(PREFIX).build().await.unwrap();
        CACHE.set(built).expect("once");
        let connection = ConnectionManager::new(server.client()).await.unwrap();
        // Warm up connections and scripts.
        batch(|id| hand_written(&connection, id)).await;
        batch(cached_vehicle).await;
        batch(cached_vehicle_stale).await;
        let (mut plain, mut stale, mut hand) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let h = batch(|id| hand_written(&connection, id)).await;
            let p = batch(cached_vehicle).await;
            let s = batch(cached_vehicle_stale).await;
            hand.push(h.as_secs_f64());
            plain.push(p.as_secs_f64() / h.as_secs_f64());
            stale.push(s.as_secs_f64() / h.as_secs_f64());
        }
        let stats = cache().stats();
        assert_eq!(stats.errors, 0, "{stats:?}");
        println!("miss and fill, {ROUNDS} rounds of {BATCH} fresh keys each (median):");
        println!("hand-written GET + SET: {:.1} µs per call", median(hand) * 1e6);
        println!("ratio #[cached] miss/hand-written: {:.2}x", median(plain));
        println!("ratio #[cached(stale)] miss/hand-written: {:.2}x", median(stale));
    });
}
