//! `#[cached]` against its peers on one Redis, in one criterion run: the same workload through
//!
//! | contender          | what it is                                                                 |
//! |--------------------|----------------------------------------------------------------------------|
//! | `hand_written`     | redis-rs cache-aside on a `ConnectionManager`: `GET`; on a miss load, then `SET EX`; `serde_json` |
//! | `cached_attr_lock` | `#[cached(key = "vehicle:<id>", ttl = "15m", lock, cache = ...)]` over this crate's Redis store |
//! | `cached_crate`     | the `cached` crate: `#[concurrent_cached]` with an `AsyncRedisCache` (TTL 15 min, also on a `ConnectionManager`) |
//!
//! and three workloads, all on one multi-thread tokio runtime (worker threads = cores):
//!
//! 1. `sequential_hit`: one task calls the function in a loop over 100 warm keys; latency per hit.
//! 2. `hit_64_tasks`: 64 tasks each make 100 hits over the same 100 warm keys; hits per second.
//! 3. `cold_200`: 200 concurrent callers of one cold key (a fresh key every round); the body
//!    sleeps 50 ms (the "database") and counts its runs; time until every caller has returned.
//!
//! Every body counts its runs: the warm-up is the only time the hit workloads run a body, and
//! the bench checks that. It starts a private `redis-server` on a free loopback port (the test
//! helper `tests/src/redis_server.rs`), never a shared server, so `redis-server` must be on
//! `PATH`.
//!
//! After criterion, the three contenders are timed again in alternating batches (the order
//! rotates every round, so machine noise hits all alike) and the bench prints the ratios against
//! the hand-written code and the body-run counts of the cold-key stampede:
//!
//! ```text
//! sequential hit latency vs hand-written (lower is better): cached_attr_lock 1.04x, cached_crate 1.00x
//! 64-task hit throughput vs hand-written (higher is better): cached_attr_lock 0.95x, cached_crate 0.97x
//! 200 concurrent callers of a cold key, body runs per round: hand_written 200,200,200,200,200; ...
//! ```
//!
//! Measured figures and the machine they come from: `docs/benchmarks.md`.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p cache-runtime --bench peers
//! cargo bench -p cache-runtime --bench peers -- cold_200   # criterion filter; the report always prints
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_runtime::Cache;
use cached::AsyncRedisCache;
use criterion::{criterion_group, Criterion, Throughput};
use redis::aio::ConnectionManager;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

const TTL: Duration = Duration::from_secs(15 * 60);
/// The warm keys of the hit workloads are `vehicle:1` ..= `vehicle:100`.
const WARM_KEYS: u64 = 100;
/// Tasks and hits per task of one round of the throughput workload.
const TASKS: u64 = 64;
const HITS_PER_TASK: u64 = 100;
/// Concurrent callers of one cold key.
const COLD_CALLERS: usize = 200;
/// How long the "database" takes to answer.
const BODY_TIME: Duration = Duration::from_millis(50);
/// Cold keys are fresh ids from here on, never warm ones.
static NEXT_COLD_ID: AtomicU64 = AtomicU64::new(1_000_000);

/// A realistic cached row: two ids, a few strings, a small list (the same as in `hit.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    make: String,
    model: String,
    price: u32,
    features: Vec<String>,
}

/// What the "database" returns.
fn vehicle_row(id: u64) -> Vehicle {
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

/// The body every contender runs on a miss: count the run, wait for the "database".
async fn load_vehicle(runs: &AtomicU64, id: u64) -> Result<Vehicle, String> {
    runs.fetch_add(1, Relaxed);
    tokio::time::sleep(BODY_TIME).await;
    Ok(vehicle_row(id))
}

// ---- the contenders -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    HandWritten,
    CachedAttr,
    CachedCrate,
}

use Contender::{CachedAttr, CachedCrate, HandWritten};

const CONTENDERS: [Contender; 3] = [HandWritten, CachedAttr, CachedCrate];

/// Body runs per contender, indexed by [`Contender::index`].
static BODY_RUNS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            HandWritten => "hand_written",
            CachedAttr => "cached_attr_lock",
            CachedCrate => "cached_crate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn body_runs(self) -> u64 {
        BODY_RUNS[self.index()].load(Relaxed)
    }

    async fn call(self, id: u64) -> Result<Vehicle, String> {
        match self {
            HandWritten => hand_written_vehicle(id).await,
            CachedAttr => attr_vehicle(id).await,
            CachedCrate => crate_vehicle(id).await,
        }
    }
}

static REDIS_URL: OnceLock<String> = OnceLock::new();
static ATTR_CACHE: OnceLock<Cache> = OnceLock::new();
static HAND_CONNECTION: OnceLock<ConnectionManager> = OnceLock::new();

fn redis_url() -> &'static str {
    REDIS_URL.get().expect("the redis-server is started by the fixture")
}

fn attr_cache() -> &'static Cache {
    ATTR_CACHE.get().expect("the cache is built by the fixture")
}

/// (a) This crate: cache-aside, single flight and the cross-process lock from one attribute.
#[cache_runtime::cached(key = "vehicle:<id>", ttl = "15m", lock, cache = attr_cache())]
async fn attr_vehicle(id: u64) -> Result<Vehicle, String> {
    load_vehicle(&BODY_RUNS[CachedAttr.index()], id).await
}

/// (b) What a service writes by hand.
async fn hand_written_vehicle(id: u64) -> Result<Vehicle, String> {
    let mut connection = HAND_CONNECTION.get().expect("connected by the fixture").clone();
    let key = format!("peers-hand:vehicle:{id}");
    let cached: Option<Vec<u8>> = connection.get(&key).await.map_err(|e| e.to_string())?;
    if let Some(vehicle) = cached.and_then(|json| serde_json::from_slice(&json).ok()) {
        return Ok(vehicle);
    }
    let vehicle = load_vehicle(&BODY_RUNS[HandWritten.index()], id).await?;
    let json = serde_json::to_vec(&vehicle).map_err(|e| e.to_string())?;
    let () = connection.set_ex(&key, json, TTL.as_secs()).await.map_err(|e| e.to_string())?;
    Ok(vehicle)
}

/// (c) The `cached` crate's Redis store, built on the first call.
#[cached::macros::concurrent_cached(
    ty = "AsyncRedisCache<u64, Vehicle>",
    create = {
        AsyncRedisCache::builder("vehicle")
            .namespace("peers-crate")
            .connection_string(redis_url())
            .connection_manager(true)
            .ttl(TTL)
            .build()
            .await
            .expect("an AsyncRedisCache on the bench's redis-server")
    },
    map_error = r##"|e| e.to_string()"##
)]
async fn crate_vehicle(id: u64) -> Result<Vehicle, String> {
    load_vehicle(&BODY_RUNS[CachedCrate.index()], id).await
}

// ---- setup ----------------------------------------------------------------------------------

/// The runtime every workload runs on; the Redis clients are made on it (their connection
/// drivers are tasks of this runtime).
struct Fixture {
    runtime: Runtime,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// The bench's redis-server. Statics are never dropped, so it lives here and [`StopServer`]
/// kills it when `main` returns or unwinds.
static SERVER: Mutex<Option<RedisServer>> = Mutex::new(None);

/// Kills the bench's redis-server (if one was started) on drop.
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

impl Fixture {
    fn new() -> Fixture {
        let server = RedisServer::start();
        let client = server.client();
        REDIS_URL.set(server.url()).expect("started once");
        *SERVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async {
            let cache = Cache::builder()
                .redis(redis_url())
                .prefix("peers-attr:")
                .build()
                .await
                .expect("a Redis cache");
            ATTR_CACHE.set(cache).expect("built once");
            let connection = ConnectionManager::new(client)
                .await
                .expect("a connection to the bench's redis-server");
            HAND_CONNECTION.set(connection).expect("connected once");
        });
        let fixture = Fixture { runtime };
        fixture.warm();
        fixture
    }

    /// Fills the warm keys through each contender (one body run per key), then checks that a
    /// second pass is all hits with the right values.
    fn warm(&self) {
        self.runtime.block_on(async {
            for contender in CONTENDERS {
                for pass in 0..2 {
                    let mut callers = JoinSet::new();
                    for id in 1..=WARM_KEYS {
                        callers.spawn(async move { (id, contender.call(id).await) });
                    }
                    while let Some(joined) = callers.join_next().await {
                        let (id, vehicle) = joined.expect("a warm-up call panicked");
                        assert_eq!(vehicle, Ok(vehicle_row(id)), "{}", contender.name());
                    }
                    assert_eq!(
                        contender.body_runs(),
                        WARM_KEYS,
                        "{}: pass {pass} did not run each body once",
                        contender.name()
                    );
                }
            }
        });
    }
}

/// Checks that the hit workloads ran no body: `before` is [`body_runs_all`] from before them.
fn check_no_body_ran(before: [u64; 3], workload: &str) {
    for contender in CONTENDERS {
        assert_eq!(
            contender.body_runs(),
            before[contender.index()],
            "{}: a body ran during {workload}: not all hits",
            contender.name()
        );
    }
}

fn body_runs_all() -> [u64; 3] {
    CONTENDERS.map(Contender::body_runs)
}

// ---- the workloads --------------------------------------------------------------------------

/// The warm key of the `n`-th call.
fn warm_id(n: u64) -> u64 {
    n % WARM_KEYS + 1
}

/// Workload 1: `calls` hits one after another from one task; the elapsed time.
fn sequential_hits(runtime: &Runtime, contender: Contender, calls: u64) -> Duration {
    runtime
        .block_on(runtime.spawn(async move {
            let started = Instant::now();
            for n in 0..calls {
                black_box(contender.call(warm_id(n)).await.expect("a hit"));
            }
            started.elapsed()
        }))
        .expect("the sequential task panicked")
}

/// Workload 2: one round of [`TASKS`] tasks making [`HITS_PER_TASK`] hits each; the elapsed
/// time from the first spawn until the last task finished.
fn concurrent_hits(runtime: &Runtime, contender: Contender) -> Duration {
    runtime.block_on(async move {
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for task in 0..TASKS {
            tasks.spawn(async move {
                for n in 0..HITS_PER_TASK {
                    // Each task starts at another key, so the 64 tasks spread over all 100.
                    black_box(contender.call(warm_id(task * 37 + n)).await.expect("a hit"));
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("a hit task panicked");
        }
        started.elapsed()
    })
}

/// Workload 3: [`COLD_CALLERS`] concurrent callers of one fresh key; (elapsed time until all
/// returned, body runs).
fn cold_stampede(runtime: &Runtime, contender: Contender) -> (Duration, u64) {
    let id = NEXT_COLD_ID.fetch_add(1, Relaxed);
    let runs_before = contender.body_runs();
    let elapsed = runtime.block_on(async move {
        let started = Instant::now();
        let mut callers = JoinSet::new();
        for _ in 0..COLD_CALLERS {
            callers.spawn(contender.call(id));
        }
        while let Some(joined) = callers.join_next().await {
            let vehicle = joined.expect("a cold caller panicked");
            assert_eq!(vehicle, Ok(vehicle_row(id)), "{}", contender.name());
        }
        started.elapsed()
    });
    (elapsed, contender.body_runs() - runs_before)
}

// ---- criterion ------------------------------------------------------------------------------

// `fixture()` is called inside the closures: `--list` then starts no redis-server.
fn sequential_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequential_hit");
    group.throughput(Throughput::Elements(1));
    for contender in CONTENDERS {
        group.bench_function(contender.name(), |b| {
            let f = fixture();
            let before = body_runs_all();
            b.iter_custom(|calls| sequential_hits(&f.runtime, contender, calls));
            check_no_body_ran(before, "sequential_hit");
        });
    }
    group.finish();
}

fn hit_64_tasks(c: &mut Criterion) {
    let mut group = c.benchmark_group("hit_64_tasks");
    group.throughput(Throughput::Elements(TASKS * HITS_PER_TASK));
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    for contender in CONTENDERS {
        group.bench_function(contender.name(), |b| {
            let f = fixture();
            let before = body_runs_all();
            b.iter_custom(|rounds| {
                (0..rounds).map(|_| concurrent_hits(&f.runtime, contender)).sum()
            });
            check_no_body_ran(before, "hit_64_tasks");
        });
    }
    group.finish();
}

fn cold_200(c: &mut Criterion) {
    let mut group = c.benchmark_group("cold_200");
    group.sample_size(10).measurement_time(Duration::from_secs(6));
    for contender in CONTENDERS {
        group.bench_function(contender.name(), |b| {
            let f = fixture();
            b.iter_custom(|rounds| {
                (0..rounds).map(|_| cold_stampede(&f.runtime, contender).0).sum()
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = sequential_hit, hit_64_tasks, cold_200
}

// ---- alternating batches --------------------------------------------------------------------

/// Per contender: the time of each of `rounds` batches. Every round times one batch of each
/// contender, in an order that rotates from round to round, after one untimed round.
fn alternating(rounds: usize, mut batch: impl FnMut(Contender) -> Duration) -> [Vec<Duration>; 3] {
    for contender in CONTENDERS {
        batch(contender);
    }
    let mut times: [Vec<Duration>; 3] = Default::default();
    for round in 0..rounds {
        for k in 0..CONTENDERS.len() {
            let contender = CONTENDERS[(round + k) % CONTENDERS.len()];
            times[contender.index()].push(batch(contender));
        }
    }
    times
}

/// Median over rounds of `f(subject batch, baseline batch of the same round)`.
fn median_ratio(subject: &[Duration], baseline: &[Duration], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut ratios: Vec<f64> =
        subject.iter().zip(baseline).map(|(s, b)| f(s.as_secs_f64(), b.as_secs_f64())).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn report() {
    let f = fixture();
    let runtime = &f.runtime;
    let before = body_runs_all();

    const SEQ_ROUNDS: usize = 40;
    const SEQ_BATCH: u64 = 1_000;
    let seq = alternating(SEQ_ROUNDS, |c| sequential_hits(runtime, c, SEQ_BATCH));
    const TPUT_ROUNDS: usize = 30;
    let tput = alternating(TPUT_ROUNDS, |c| concurrent_hits(runtime, c));
    check_no_body_ran(before, "the alternating batches");

    const COLD_ROUNDS: usize = 5;
    let mut cold: [Vec<(Duration, u64)>; 3] = Default::default();
    for round in 0..COLD_ROUNDS {
        for k in 0..CONTENDERS.len() {
            let contender = CONTENDERS[(round + k) % CONTENDERS.len()];
            cold[contender.index()].push(cold_stampede(runtime, contender));
        }
    }

    let hand = HandWritten.index();
    let seq_calls = (SEQ_ROUNDS as u64 * SEQ_BATCH) as f64;
    let tput_hits = (TPUT_ROUNDS as u64 * TASKS * HITS_PER_TASK) as f64;
    println!();
    println!(
        "alternating batches ({SEQ_ROUNDS} rounds of {SEQ_BATCH} sequential hits; {TPUT_ROUNDS} \
         rounds of {TASKS} tasks x {HITS_PER_TASK} hits; {COLD_ROUNDS} cold rounds of \
         {COLD_CALLERS} callers):"
    );
    println!(
        "  {:<18} {:>12} {:>10} {:>14} {:>10} {:>22} {:>16}",
        "contender",
        "seq ns/hit",
        "seq ratio",
        "64-task hit/s",
        "tput ratio",
        "cold body runs/round",
        "cold ms (median)"
    );
    for contender in CONTENDERS {
        let i = contender.index();
        let seq_ns = seq[i].iter().sum::<Duration>().as_nanos() as f64 / seq_calls;
        let seq_ratio = median_ratio(&seq[i], &seq[hand], |s, b| s / b);
        let ops = tput_hits / tput[i].iter().sum::<Duration>().as_secs_f64();
        let tput_ratio = median_ratio(&tput[i], &tput[hand], |s, b| b / s);
        let runs: Vec<String> = cold[i].iter().map(|(_, runs)| runs.to_string()).collect();
        let cold_ms = median(cold[i].iter().map(|(t, _)| *t).collect()).as_secs_f64() * 1e3;
        println!(
            "  {:<18} {seq_ns:>12.0} {seq_ratio:>9.2}x {ops:>14.0} {tput_ratio:>9.2}x {:>22} {cold_ms:>16.1}",
            contender.name(),
            runs.join(","),
        );
    }
    let ratio = |times: &[Vec<Duration>; 3], c: Contender, f: fn(f64, f64) -> f64| {
        median_ratio(&times[c.index()], &times[hand], f)
    };
    println!(
        "sequential hit latency vs hand-written (lower is better): cached_attr_lock {:.2}x, \
         cached_crate {:.2}x",
        ratio(&seq, CachedAttr, |s, b| s / b),
        ratio(&seq, CachedCrate, |s, b| s / b),
    );
    println!(
        "64-task hit throughput vs hand-written (higher is better): cached_attr_lock {:.2}x, \
         cached_crate {:.2}x",
        ratio(&tput, CachedAttr, |s, b| b / s),
        ratio(&tput, CachedCrate, |s, b| b / s),
    );
    println!(
        "{COLD_CALLERS} concurrent callers of a cold key, body runs per round: {}",
        CONTENDERS
            .map(|c| {
                let runs: Vec<String> =
                    cold[c.index()].iter().map(|(_, runs)| runs.to_string()).collect();
                format!("{} {}", c.name(), runs.join(","))
            })
            .join("; ")
    );
}

fn main() {
    let _stop_server = StopServer;
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only a real benchmark run (`cargo bench`) prints the report; `cargo test --benches`
    // (no `--bench`), `--test`, `--list` and `--profile-time` do not.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--bench") && !has("--test") && !has("--list") && !has("--profile-time") {
        report();
    }
}
