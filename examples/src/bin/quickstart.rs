//! The quickstart demo: a vehicle lookup whose "database" takes 5 ms a query, called
//! without a cache and then through `#[cached]`, with a burst of concurrent cold reads.
//!
//! ```text
//! cargo run --release -p examples --bin quickstart                      # memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release -p examples --bin quickstart
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use serde::{Deserialize, Serialize};

/// A row of the vehicles table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    model: String,
    price: u32,
}

/// Queries issued to the pretend database.
static DB_QUERIES: AtomicU64 = AtomicU64::new(0);

/// The uncached data access: one query.
async fn query_vehicle(id: u64) -> Result<Option<Vehicle>, String> {
    DB_QUERIES.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok((id != 0).then(|| Vehicle {
        id,
        dealer_id: id % 7,
        model: format!("model-{id}"),
        price: 10_000 + id as u32,
    }))
}

/// The same access, cached for 15 minutes. Concurrent misses of one id run one query.
#[cached(key = "vehicle:<id>", ttl = "15m", lock)]
async fn get_vehicle(id: u64) -> Result<Option<Vehicle>, String> {
    query_vehicle(id).await
}

/// Request ids skewed to hot vehicles: a few ids get most of the traffic.
fn workload(requests: usize) -> Vec<u64> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..requests)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let uniform = (state % 10_000) as f64 / 10_000.0;
            1 + (uniform * uniform * uniform * 200.0) as u64
        })
        .collect()
}

/// Runs `ids` through `call` on 16 tasks; returns per-request latencies, sorted.
async fn drive<F, Fut>(ids: &[u64], call: F) -> Vec<Duration>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<Vehicle>, String>> + Send,
{
    let chunks: Vec<Vec<u64>> = ids.chunks(ids.len().div_ceil(16)).map(<[u64]>::to_vec).collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(chunk.len());
                for id in chunk {
                    let started = Instant::now();
                    call(id).await.expect("the pretend database does not fail");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(ids.len());
    for task in tasks {
        all.extend(task.await.expect("task panicked"));
    }
    all.sort();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn report(label: &str, latencies: &[Duration], took: Duration, queries: u64) {
    println!(
        "{label:<14} {:>6} requests in {:>7.1?}  p50 {:>9.1?}  p99 {:>9.1?}  database queries {queries}",
        latencies.len(),
        took,
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
    );
}

#[tokio::main]
async fn main() -> Result<(), cache_runtime::Error> {
    let cache = match std::env::var("REDIS_URL") {
        Ok(url) => Cache::builder().redis(url).prefix("quickstart:").build().await?,
        Err(_) => Cache::memory(),
    };
    println!("cache-runtime quickstart ({cache:?})\n");
    cache_runtime::set_default(cache.clone());
    let ids = workload(4_000);

    let started = Instant::now();
    let uncached = drive(&ids, query_vehicle).await;
    report("no cache", &uncached, started.elapsed(), DB_QUERIES.swap(0, Ordering::Relaxed));

    let started = Instant::now();
    let with_cache = drive(&ids, get_vehicle).await;
    report("#[cached]", &with_cache, started.elapsed(), DB_QUERIES.swap(0, Ordering::Relaxed));

    // A burst: 500 callers ask for the same cold vehicle at once.
    let burst: Vec<_> = (0..500).map(|_| tokio::spawn(get_vehicle(9_999))).collect();
    for call in burst {
        call.await.expect("task panicked").expect("no database error");
    }
    println!(
        "\nburst of 500 concurrent cold reads of one key: {} database query",
        DB_QUERIES.load(Ordering::Relaxed)
    );

    let stats = cache.stats_of("get_vehicle");
    println!(
        "get_vehicle: hits {}  misses {}  loads {}  coalesced {}  errors {}  hit rate {:.1}%",
        stats.hits,
        stats.misses,
        stats.loads,
        stats.coalesced,
        stats.errors,
        stats.hit_rate() * 100.0
    );
    println!("\nPrometheus (cache.prometheus()), counters:");
    for line in cache.prometheus().lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
    {
        println!("  {line}");
    }
    Ok(())
}
