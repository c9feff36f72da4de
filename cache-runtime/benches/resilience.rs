//! Resilience figures (issue 5, "Speed"): what a `#[cached]` call costs when Redis is down and
//! the circuit breaker is open, and what the `metrics` feature adds to a hit.
//!
//! One criterion run, one process, one tokio (current-thread) runtime:
//!
//! | benchmark                      | what one iteration does                                          |
//! |--------------------------------|------------------------------------------------------------------|
//! | `breaker_open/bare_body`       | the body alone: builds and returns a small `Vehicle`              |
//! | `breaker_open/cached_attr`     | the same body under `#[cached(key = "vehicle:<id>", ttl = "15m")]` on a Redis cache whose server was **killed**: the breaker is open, so the read and the write are skipped at once and the body runs |
//! | `memory_hit/moka_baseline`     | `moka::future::Cache<String, Vehicle>::get(&format!("vehicle:{id}"))` |
//! | `memory_hit/cached_attr`       | a `#[cached]` hit on a memory cache (its counters exist before any `metrics` recorder) |
//! | `memory_hit/cached_attr_recorded` | with `--features metrics` only: the same hit on a cache whose counters were created after a `metrics` recorder was installed (a trivial one whose counters are atomics), so every hit also increments a `metrics` counter |
//!
//! The bench starts a private `redis-server` (the test helper `tests/src/redis_server.rs`) on a
//! free loopback port, builds the cache with the default timeouts (connect 1 s, command
//! 500 ms), connects, then kills the server and calls until the breaker opens. It checks that
//! every measured breaker-open call ran its body and that every measured hit was a hit.
//!
//! After criterion, it times subject and baseline again in alternating batches (so machine
//! noise hits both alike) and prints:
//!
//! ```text
//! breaker open: cached_attr 1.9 us/call, bare body 0.05 us/call: overhead 1.8 us per call (goal < 1000 us; the seeds waited up to a 5 s connect timeout)
//! before the breaker opened: 2 calls with Redis just killed took 301 ms in all
//! ratio memory hit cached/moka [metrics feature off]: 1.30x   (the cache's own counters are always on)
//! ratio hit with metrics feature / without: 1.01x
//! ```
//!
//! The `metrics` feature is chosen at compile time, so its cost is measured by two runs, one
//! command each:
//!
//! ```text
//! cargo bench -p cache-runtime --bench resilience                       # feature off
//! cargo bench -p cache-runtime --bench resilience --features metrics    # feature on
//! ```
//!
//! Each run writes its memory-hit ratio (against moka, measured in the same run) to
//! `target/release/resilience-hit-ratio-{plain,metrics}.txt`; the second run reads the other
//! file and prints `ratio hit with metrics feature / without` (ratios, not raw times, so the
//! two runs need not see the same machine speed).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_runtime::{cached, BreakerState, Cache};
use criterion::{criterion_group, Criterion};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

#[path = "support/interleaved.rs"]
mod interleaved;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;
use interleaved::interleaved;

use redis_server::RedisServer;

/// The id every case uses.
const ID: u64 = 42;
const TTL: Duration = Duration::from_secs(15 * 60);

/// A small row, what a body typically returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    model: String,
}

/// What the "database" returns, immediately.
fn load_vehicle(id: u64) -> Vehicle {
    Vehicle { id, dealer_id: 7_311, model: "Civic EX".to_owned() }
}

// ---- subjects -------------------------------------------------------------------------------

/// The Redis cache whose server the fixture kills.
static DOWN_CACHE: OnceLock<Cache> = OnceLock::new();
/// Memory cache whose counters are created before any `metrics` recorder exists.
static MEMORY_CACHE: LazyLock<Cache> = LazyLock::new(Cache::memory);
/// Memory cache whose counters are created after the bench's recorder is installed.
#[cfg(feature = "metrics")]
static RECORDED_CACHE: LazyLock<Cache> = LazyLock::new(Cache::memory);

/// Times each body ran.
static DOWN_LOADS: AtomicU64 = AtomicU64::new(0);
static MEMORY_LOADS: AtomicU64 = AtomicU64::new(0);
#[cfg(feature = "metrics")]
static RECORDED_LOADS: AtomicU64 = AtomicU64::new(0);

fn down_cache() -> &'static Cache {
    DOWN_CACHE.get().expect("the Redis cache is built by the fixture")
}

/// The baseline of (a): the body, called directly.
async fn bare_vehicle(id: u64) -> Option<Vehicle> {
    Some(load_vehicle(id))
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = down_cache())]
async fn down_vehicle(id: u64) -> Option<Vehicle> {
    DOWN_LOADS.fetch_add(1, Relaxed);
    Some(load_vehicle(id))
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = &*MEMORY_CACHE)]
async fn memory_vehicle(id: u64) -> Option<Vehicle> {
    MEMORY_LOADS.fetch_add(1, Relaxed);
    Some(load_vehicle(id))
}

#[cfg(feature = "metrics")]
#[cached(key = "vehicle:<id>", ttl = "15m", cache = &*RECORDED_CACHE)]
async fn recorded_vehicle(id: u64) -> Option<Vehicle> {
    RECORDED_LOADS.fetch_add(1, Relaxed);
    Some(load_vehicle(id))
}

async fn moka_get(moka: &moka::future::Cache<String, Vehicle>, id: u64) -> Option<Vehicle> {
    moka.get(&format!("vehicle:{id}")).await
}

/// A `metrics` recorder that does the least a real one does: counters are atomics (one
/// `fetch_add` per increment); gauges and histograms are no-ops.
#[cfg(feature = "metrics")]
mod recorder {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

    pub(crate) struct AtomicRecorder;

    impl metrics::Recorder for AtomicRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(AtomicU64::new(0)))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
}

// ---- setup ----------------------------------------------------------------------------------

struct Fixture {
    runtime: Runtime,
    moka: moka::future::Cache<String, Vehicle>,
    /// Calls made after the kill until the breaker opened, and how long they took in all.
    before_open: (u64, Duration),
}

impl Fixture {
    fn new() -> Fixture {
        let mut server = RedisServer::start();
        let url = server.url();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (moka, before_open) = runtime.block_on(async {
            let cache =
                Cache::builder().redis(url).prefix("bench:").build().await.expect("a Redis cache");
            DOWN_CACHE.set(cache).expect("built once");
            // Connected and working, then Redis dies.
            assert_eq!(down_vehicle(ID).await, Some(load_vehicle(ID)));
            assert_eq!(down_cache().stats().errors, 0, "Redis answered before the kill");
            server.kill();
            let killed = Instant::now();
            let mut calls = 0;
            while down_cache().breaker_state() != BreakerState::Open {
                calls += 1;
                assert!(calls <= 10, "the breaker did not open after {calls} calls");
                assert_eq!(down_vehicle(ID).await, Some(load_vehicle(ID)));
            }
            let before_open = (calls, killed.elapsed());

            for _ in 0..2 {
                assert_eq!(memory_vehicle(ID).await, Some(load_vehicle(ID)));
            }
            #[cfg(feature = "metrics")]
            {
                metrics::set_global_recorder(recorder::AtomicRecorder)
                    .unwrap_or_else(|_| panic!("no recorder was installed before"));
                for _ in 0..2 {
                    assert_eq!(recorded_vehicle(ID).await, Some(load_vehicle(ID)));
                }
            }
            let moka =
                moka::future::Cache::builder().max_capacity(10_000).time_to_live(TTL).build();
            moka.insert(format!("vehicle:{ID}"), load_vehicle(ID)).await;
            (moka, before_open)
        });
        *SERVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        Fixture { runtime, moka, before_open }
    }

    /// The breaker stayed open (every breaker-open call ran its body, none hit) and every
    /// memory call after the warm-up was a hit.
    fn check(&self) {
        let down = down_cache().stats_of("down_vehicle");
        assert_eq!(down.hits, 0, "nothing hits (the warm-up call was the miss): {down:?}");
        assert_eq!(down.loads, DOWN_LOADS.load(Relaxed), "{down:?}");
        assert_ne!(down_cache().breaker_state(), BreakerState::Closed, "Redis is dead");
        assert_eq!(MEMORY_LOADS.load(Relaxed), 1, "memory_vehicle body ran again: not a hit");
        assert_eq!(MEMORY_CACHE.stats_of("memory_vehicle").misses, 1);
        #[cfg(feature = "metrics")]
        {
            assert_eq!(RECORDED_LOADS.load(Relaxed), 1, "recorded_vehicle body ran again");
            assert_eq!(RECORDED_CACHE.stats_of("recorded_vehicle").misses, 1);
        }
    }
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// The bench's (killed) redis-server: kept so its directory is removed at the end.
static SERVER: Mutex<Option<RedisServer>> = Mutex::new(None);

/// Drops the bench's redis-server (if one was started) when `main` returns or unwinds.
struct StopServer;

impl Drop for StopServer {
    fn drop(&mut self) {
        let server = SERVER.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(server);
    }
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(Fixture::new)
}

// ---- criterion ------------------------------------------------------------------------------

// `fixture()` is called inside the closures: `--list` then starts no redis-server.
fn breaker_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_open");
    group.bench_function("bare_body", |b| {
        let f = fixture();
        b.to_async(&f.runtime).iter(|| async { black_box(bare_vehicle(black_box(ID)).await) });
    });
    group.bench_function("cached_attr", |b| {
        let f = fixture();
        b.to_async(&f.runtime).iter(|| async { black_box(down_vehicle(black_box(ID)).await) });
    });
    group.finish();
}

fn memory_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_hit");
    group.bench_function("moka_baseline", |b| {
        let f = fixture();
        b.to_async(&f.runtime).iter(|| async { black_box(moka_get(&f.moka, black_box(ID)).await) });
    });
    group.bench_function("cached_attr", |b| {
        let f = fixture();
        b.to_async(&f.runtime).iter(|| async { black_box(memory_vehicle(black_box(ID)).await) });
    });
    #[cfg(feature = "metrics")]
    group.bench_function("cached_attr_recorded", |b| {
        let f = fixture();
        b.to_async(&f.runtime).iter(|| async { black_box(recorded_vehicle(black_box(ID)).await) });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = breaker_open, memory_hit
}

// ---- interleaved figures --------------------------------------------------------------------

/// Where this run leaves its memory-hit ratio for the run with the other feature set.
fn ratio_file(variant: &str) -> Option<PathBuf> {
    // target/release/deps/resilience-<hash> -> target/release/
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join(format!("resilience-hit-ratio-{variant}.txt")))
}

fn print_figures() {
    let f = fixture();
    let (open_ratio, open_ns, body_ns) = interleaved(
        &f.runtime,
        60,
        2_000,
        || down_vehicle(black_box(ID)),
        || bare_vehicle(black_box(ID)),
    );
    let (hit_ratio, hit_ns, moka_ns) = interleaved(
        &f.runtime,
        100,
        5_000,
        || memory_vehicle(black_box(ID)),
        || moka_get(&f.moka, black_box(ID)),
    );
    #[cfg(feature = "metrics")]
    let recorded = interleaved(
        &f.runtime,
        100,
        5_000,
        || recorded_vehicle(black_box(ID)),
        || moka_get(&f.moka, black_box(ID)),
    );
    f.check();

    let overhead_us = (open_ns - body_ns) / 1000.0;
    let (calls, took) = f.before_open;
    println!();
    println!("interleaved batches (median of per-round ratios; mean per call):");
    println!(
        "breaker open: cached_attr {:.2} us/call, bare body {:.3} us/call: overhead {overhead_us:.2} us \
         per call (ratio {open_ratio:.1}x; goal < 1000 us; the seeds waited up to a 5 s connect timeout)",
        open_ns / 1000.0,
        body_ns / 1000.0,
    );
    println!(
        "before the breaker opened: {calls} calls with Redis just killed took {:.0} ms in all",
        took.as_secs_f64() * 1000.0
    );
    let variant = if cfg!(feature = "metrics") { "metrics" } else { "plain" };
    let feature = if cfg!(feature = "metrics") { "on" } else { "off" };
    println!("  memory hit cached_attr {hit_ns:>7.0} ns   moka_baseline {moka_ns:>7.0} ns");
    println!(
        "ratio memory hit cached/moka [metrics feature {feature}]: {hit_ratio:.2}x   \
         (the cache's own counters are always on)"
    );
    #[cfg(feature = "metrics")]
    {
        let (ratio, ns, baseline) = recorded;
        println!(
            "  memory hit cached_attr_recorded {ns:>7.0} ns   moka_baseline {baseline:>7.0} ns"
        );
        println!(
            "ratio memory hit cached/moka [metrics feature on, recorder installed]: {ratio:.2}x"
        );
        println!("ratio hit recorder installed / no recorder: {:.2}x", ratio / hit_ratio);
    }
    if let Some(path) = ratio_file(variant) {
        let _ = std::fs::write(&path, format!("{hit_ratio}\n"));
    }
    let other = if cfg!(feature = "metrics") { "plain" } else { "metrics" };
    let other_ratio = ratio_file(other)
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse::<f64>().ok());
    match other_ratio {
        Some(other_ratio) => {
            let (with, without) = if cfg!(feature = "metrics") {
                (hit_ratio, other_ratio)
            } else {
                (other_ratio, hit_ratio)
            };
            println!(
                "ratio hit with metrics feature / without: {:.2}x   (memory-hit/moka ratios: \
                 {with:.2}x with, {without:.2}x without; the other run's from {})",
                with / without,
                ratio_file(other).map(|p| p.display().to_string()).unwrap_or_default()
            );
        }
        None => println!(
            "ratio hit with metrics feature / without: run the bench {} `--features metrics` too",
            if cfg!(feature = "metrics") { "without" } else { "with" }
        ),
    }
}

fn main() {
    let _stop_server = StopServer;
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only a real benchmark run (`cargo bench`) prints the figures; `cargo test --benches`
    // (no `--bench`), `--test`, `--list` and `--profile-time` do not.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--bench") && !has("--test") && !has("--list") && !has("--profile-time") {
        print_figures();
    }
}
