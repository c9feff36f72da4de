//! Hit latency on a local 3-master Redis Cluster against a standalone server, one run:
//! the same `#[cached]` function, warmed, called in alternating batches on each deployment.
//!
//! ```text
//! cargo bench -p cache-tests --bench cluster_hit
//! ```

use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use cache_tests::{RedisCluster, RedisServer};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Vehicle {
    id: u64,
    make: String,
    price: u32,
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
async fn vehicle(cache: &Cache, id: u64) -> Result<Vehicle, String> {
    Ok(Vehicle { id, make: "Honda".into(), price: 20_000 })
}

/// Mean time per hit over `calls` hits spread across 100 keys.
async fn batch(cache: &Cache, calls: u64) -> Duration {
    let started = Instant::now();
    for i in 0..calls {
        vehicle(cache, i % 100).await.unwrap();
    }
    started.elapsed() / u32::try_from(calls).unwrap()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    if std::env::args().any(|arg| arg == "--list" || arg == "--test") {
        return; // `cargo test --benches` runs benches as tests: nothing to check here.
    }
    let server = RedisServer::start();
    let cluster = RedisCluster::start(3, 0);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let standalone = Cache::builder().redis(server.url()).prefix("b:").build().await.unwrap();
        let clustered =
            Cache::builder().redis_cluster(cluster.urls()).prefix("b:").build().await.unwrap();
        for cache in [&standalone, &clustered] {
            batch(cache, 200).await; // warm: fill the keys, open connections
        }
        let (mut alone, mut spread) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            alone.push(batch(&standalone, 1000).await);
            spread.push(batch(&clustered, 1000).await);
        }
        let (alone, spread) = (median(alone), median(spread));
        println!(
            "hit latency, median of 15 batches of 1000: standalone {alone:?}, cluster {spread:?}"
        );
        println!("ratio cluster/standalone: {:.2}x", spread.as_secs_f64() / alone.as_secs_f64());
        assert_eq!(standalone.stats().errors + clustered.stats().errors, 0);
    });
}
