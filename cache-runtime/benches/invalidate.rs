//! Pattern invalidation with 1,000,000 unrelated keys in Redis: `#[invalidates("homepage:*")]`
//! (served by the prefix index) against `SCAN MATCH okla:homepage:* COUNT 1000` + `UNLINK`
//! over the same database, side by side in one run. Each iteration first writes the 10
//! `homepage:` keys through the cache (untimed), then times one invalidation.
//!
//! ```text
//! cargo bench -p cache-runtime --bench invalidate
//! ```
//!
//! It starts its own `redis-server` (with `DEBUG POPULATE` enabled to create the unrelated
//! keys quickly), and prints the ratio of the two medians at the end.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use cache_runtime::{invalidates, Cache};
use criterion::{BenchmarkId, Criterion};

#[path = "../../tests/src/redis_server.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_server;

const UNRELATED_KEYS: u64 = 1_000_000;
const SECTIONS: [&str; 10] =
    ["hero", "featured", "deals", "new", "suv", "trucks", "ev", "used", "local", "news"];

#[invalidates("homepage:*", cache = cache)]
async fn publish_homepage(cache: &Cache) -> Result<(), String> {
    Ok(())
}

async fn fill_homepage(cache: &Cache) {
    for section in SECTIONS {
        cache
            .set(&format!("homepage:{section}"), &"<section html>", Duration::from_secs(600))
            .await
            .unwrap();
    }
}

/// The hand-written alternative: walk the keyspace with `SCAN MATCH` and unlink what matches.
async fn scan_and_unlink(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("okla:homepage:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await
            .unwrap();
        if !keys.is_empty() {
            removed +=
                redis::cmd("UNLINK").arg(&keys).query_async::<u64>(connection).await.unwrap();
        }
        if next == 0 {
            return removed;
        }
        cursor = next;
    }
}

fn main() {
    let server = redis_server::RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (cache, mut connection) = runtime.block_on(async {
        let mut connection = server.connection().await;
        // In chunks, each well inside the connection's response timeout.
        for chunk in 0..10 {
            redis::cmd("DEBUG")
                .arg("POPULATE")
                .arg(UNRELATED_KEYS / 10)
                .arg(format!("unrelated{chunk}"))
                .query_async::<()>(&mut connection)
                .await
                .unwrap();
        }
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut connection).await.unwrap();
        assert_eq!(keys, UNRELATED_KEYS);
        let cache = Cache::builder().redis(server.url()).prefix("okla:").build().await.unwrap();
        (cache, connection)
    });

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let mut group = criterion.benchmark_group("invalidate homepage:* among 1M keys");
    group.bench_function(BenchmarkId::from_parameter("#[invalidates] (index)"), |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    fill_homepage(&cache).await;
                    let started = Instant::now();
                    publish_homepage(&cache).await.unwrap();
                    total += started.elapsed();
                }
                total
            })
        });
    });
    group.bench_function(BenchmarkId::from_parameter("SCAN MATCH COUNT 1000 + UNLINK"), |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    fill_homepage(&cache).await;
                    let started = Instant::now();
                    assert_eq!(scan_and_unlink(&mut connection).await, SECTIONS.len() as u64);
                    total += started.elapsed();
                }
                total
            })
        });
    });
    group.finish();

    // Side-by-side medians for the ratio, alternating the two to share the machine's noise.
    let (mut index, mut scan) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for _ in 0..15 {
            fill_homepage(&cache).await;
            let started = Instant::now();
            publish_homepage(&cache).await.unwrap();
            index.push(started.elapsed());
            fill_homepage(&cache).await;
            let started = Instant::now();
            scan_and_unlink(&mut connection).await;
            scan.push(started.elapsed());
        }
    });
    index.sort();
    scan.sort();
    let (index, scan) = (index[index.len() / 2], scan[scan.len() / 2]);
    println!(
        "median: index {index:?}, SCAN {scan:?}; the index is {:.0}x faster (goal: at least 50x)",
        scan.as_secs_f64() / index.as_secs_f64()
    );
    let stats = cache.stats_of("publish_homepage");
    assert_eq!(stats.pattern_scans, 0, "the pattern must be served by the index");
    criterion.final_summary();
}
