//! Hit latency over TLS against plain TCP, one run, one server (it listens on both): the
//! same `#[cached]` function, warmed, called in alternating batches through a cache on
//! `redis://` and one on `rediss://` (certificates made at start, `tls_root_cert`).
//!
//! ```text
//! cargo bench -p cache-tests --bench tls_hit
//! ```

use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use cache_tests::tls::{Certificates, TlsRedisServer};

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
    let certificates = Certificates::generate();
    let server = TlsRedisServer::start(&certificates, false, &[]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let plain = Cache::builder().redis(server.server.url()).prefix("b:").build().await.unwrap();
        let tls = Cache::builder()
            .redis(server.tls_url())
            .tls_root_cert(certificates.ca())
            .prefix("b:")
            .build()
            .await
            .unwrap();
        for cache in [&plain, &tls] {
            batch(cache, 200).await; // warm: fill the keys, open connections
        }
        let (mut tcp, mut encrypted) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            tcp.push(batch(&plain, 1000).await);
            encrypted.push(batch(&tls, 1000).await);
        }
        let (tcp, encrypted) = (median(tcp), median(encrypted));
        println!("hit latency, median of 15 batches of 1000: plain {tcp:?}, TLS {encrypted:?}");
        println!("ratio TLS/plain: {:.2}x", encrypted.as_secs_f64() / tcp.as_secs_f64());
        assert_eq!(plain.stats().errors + tls.stats().errors, 0);
    });
}
