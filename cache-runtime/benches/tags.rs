//! Tags on Redis, each against its baseline in the same run:
//!
//! 1. `invalidate_tag` of 1,000 tagged keys among 1,000,000 unrelated ones, against
//!    `SCAN MATCH okla:tagged:* COUNT 1000` + `UNLINK` of the same keys (goal: at least 50x).
//! 2. The hit of a `#[cached]` function with three tags against the same function without
//!    (goal: at most 1.02x: reads never look at tags), on Redis and on the memory store.
//! 3. The write-through (`#[cache_put]`) of a value with three tags against none.
//!
//! ```text
//! cargo bench -p cache-runtime --bench tags
//! ```
//!
//! It starts its own `redis-server` (`DEBUG POPULATE` for the unrelated keys), and prints
//! the ratios of medians measured alternately at the end.

#![allow(missing_docs)]

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cache_runtime::{cache_put, cached, Cache};
use criterion::{BenchmarkId, Criterion};

#[path = "../../tests/src/redis_server.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_server;

const UNRELATED_KEYS: u64 = 1_000_000;
const TAGGED: u64 = 1_000;

static REDIS: OnceLock<Cache> = OnceLock::new();
static MEMORY: OnceLock<Cache> = OnceLock::new();

fn redis() -> &'static Cache {
    REDIS.get().expect("set in main")
}

fn memory() -> &'static Cache {
    MEMORY.get_or_init(Cache::memory)
}

#[cache_put(key = "tagged:<id>", ttl = "10m", tags = ["make:ford"], cache = redis())]
async fn put_tagged(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(key = "vehicle:<id>", ttl = "10m", cache = redis())]
async fn redis_plain(id: u64) -> Result<Option<u64>, String> {
    Ok(Some(id))
}

#[cached(key = "tvehicle:<id>", ttl = "10m", tags = ["vehicle:<id>", "make:<make>", "listings"], cache = redis())]
async fn redis_tagged(id: u64, make: &str) -> Result<Option<u64>, String> {
    Ok(Some(id + make.len() as u64))
}

#[cached(key = "vehicle:<id>", ttl = "10m", cache = memory())]
async fn memory_plain(id: u64) -> Result<Option<u64>, String> {
    Ok(Some(id))
}

#[cached(key = "tvehicle:<id>", ttl = "10m", tags = ["vehicle:<id>", "make:<make>", "listings"], cache = memory())]
async fn memory_tagged(id: u64, make: &str) -> Result<Option<u64>, String> {
    Ok(Some(id + make.len() as u64))
}

#[cache_put(key = "wvehicle:<id>", ttl = "10m", cache = redis())]
async fn write_plain(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cache_put(key = "wtvehicle:<id>", ttl = "10m", tags = ["vehicle:<id>", "make:kia", "listings"], cache = redis())]
async fn write_tagged(id: u64) -> Result<u64, String> {
    Ok(id)
}

/// Writes the 1,000 tagged keys, 100 at a time in flight (untimed).
async fn fill_tagged() {
    for chunk in 0..TAGGED / 100 {
        let puts = (chunk * 100..(chunk + 1) * 100).map(put_tagged);
        for put in futures_util::future::join_all(puts).await {
            put.unwrap();
        }
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
            .arg("okla:tagged:*")
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

/// The median time of `a` and of `b` (`batch` calls each), measured alternately `rounds`
/// times so that both share the machine's noise.
fn medians<A, AF, B, BF>(
    runtime: &tokio::runtime::Runtime,
    rounds: usize,
    batch: u64,
    mut a: A,
    mut b: B,
) -> (Duration, Duration)
where
    A: FnMut(u64) -> AF,
    AF: Future,
    B: FnMut(u64) -> BF,
    BF: Future,
{
    let (mut first, mut second) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for round in 0..rounds as u64 {
            let started = Instant::now();
            for i in 0..batch {
                a(round * batch + i).await;
            }
            first.push(started.elapsed() / u32::try_from(batch).unwrap());
            let started = Instant::now();
            for i in 0..batch {
                b(round * batch + i).await;
            }
            second.push(started.elapsed() / u32::try_from(batch).unwrap());
        }
    });
    first.sort();
    second.sort();
    (first[first.len() / 2], second[second.len() / 2])
}

fn main() {
    let server = redis_server::RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut connection = runtime.block_on(async {
        let mut connection = server.connection().await;
        for chunk in 0..10 {
            redis::cmd("DEBUG")
                .arg("POPULATE")
                .arg(UNRELATED_KEYS / 10)
                .arg(format!("unrelated{chunk}"))
                .query_async::<()>(&mut connection)
                .await
                .unwrap();
        }
        let cache = Cache::builder().redis(server.url()).prefix("okla:").build().await.unwrap();
        assert!(REDIS.set(cache).is_ok(), "set once");
        // Warm the hit keys.
        for id in 0..1000 {
            redis_plain(id).await.unwrap();
            redis_tagged(id, "audi").await.unwrap();
            memory_plain(id).await.unwrap();
            memory_tagged(id, "audi").await.unwrap();
        }
        connection
    });

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let mut group = criterion.benchmark_group("invalidate 1000 tagged keys among 1M");
    group.bench_function(BenchmarkId::from_parameter("invalidate_tag"), |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    fill_tagged().await;
                    let started = Instant::now();
                    assert_eq!(redis().invalidate_tag("make:ford").await.unwrap(), TAGGED);
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
                    fill_tagged().await;
                    let started = Instant::now();
                    assert_eq!(scan_and_unlink(&mut connection).await, TAGGED);
                    total += started.elapsed();
                }
                total
            })
        });
    });
    group.finish();

    let mut group = criterion.benchmark_group("hit");
    for (name, tagged) in [("redis untagged", false), ("redis 3 tags", true)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    match tagged {
                        true => redis_tagged(7, "audi").await.unwrap(),
                        false => redis_plain(7).await.unwrap(),
                    }
                })
            });
        });
    }
    group.finish();

    // The ratios, from alternating medians.
    let (mut tag, mut scan) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for _ in 0..9 {
            fill_tagged().await;
            let started = Instant::now();
            redis().invalidate_tag("make:ford").await.unwrap();
            tag.push(started.elapsed());
            fill_tagged().await;
            let started = Instant::now();
            scan_and_unlink(&mut connection).await;
            scan.push(started.elapsed());
        }
    });
    tag.sort();
    scan.sort();
    let (tag, scan) = (tag[tag.len() / 2], scan[scan.len() / 2]);
    println!(
        "invalidate 1000 tagged keys among 1M: invalidate_tag {tag:?}, SCAN+UNLINK {scan:?}: {:.0}x faster (goal: at least 50x)",
        scan.as_secs_f64() / tag.as_secs_f64()
    );
    let (plain, tagged) = medians(
        &runtime,
        31,
        200,
        |i| async move { redis_plain(i % 1000).await.unwrap() },
        |i| async move { redis_tagged(i % 1000, "audi").await.unwrap() },
    );
    println!(
        "hit on Redis: untagged {plain:?}, 3 tags {tagged:?}: {:.3}x (goal: at most 1.02x)",
        tagged.as_secs_f64() / plain.as_secs_f64()
    );
    let (plain, tagged) = medians(
        &runtime,
        31,
        2000,
        |i| async move { memory_plain(i % 1000).await.unwrap() },
        |i| async move { memory_tagged(i % 1000, "audi").await.unwrap() },
    );
    println!(
        "hit on the memory store: untagged {plain:?}, 3 tags {tagged:?}: {:.3}x (the tags are rendered per call)",
        tagged.as_secs_f64() / plain.as_secs_f64()
    );
    let (plain, tagged) = medians(
        &runtime,
        31,
        200,
        |i| async move { write_plain(i).await.unwrap() },
        |i| async move { write_tagged(i).await.unwrap() },
    );
    println!(
        "write-through on Redis: untagged {plain:?}, 3 tags {tagged:?}: {:.2}x",
        tagged.as_secs_f64() / plain.as_secs_f64()
    );
    criterion.final_summary();
}
