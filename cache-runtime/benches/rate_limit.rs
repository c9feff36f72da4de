//! What a rate-limit decision costs on Redis (issue 14), against the hand-written fixed
//! window everybody writes first, in one criterion run on one private `redis-server`:
//!
//! | contender          | what one decision is |
//! |--------------------|----------------------|
//! | `fixed_window`     | redis-rs on a `ConnectionManager`: one pipeline of `INCR key` + `PEXPIRE key <window> NX`; admitted when the count is at most the limit |
//! | `script_by_hand`   | the same Lua script as `Cache::rate_limit`'s, sent by hand (`EVALSHA` of a `redis::Script` built once) on the same kind of connection: the algorithm's own cost, without the crate |
//! | `cache_rate_limit` | `Cache::rate_limit(key, limit, per)`: the exact sliding window, one Lua script (`EVALSHA`) |
//! | `rate_limit_attr`  | a `#[rate_limit(key = "user:<id>", limit = 100, per = "1s", cache = ...)]` function with an empty body: key rendering, counters and the script |
//!
//! Each is one round trip. Two workloads, limit 100 per second:
//!
//! 1. `admitted`: decisions rotate over 1,000 keys, so every key sees a few dozen calls a
//!    second and every call is admitted (the sliding window's `ZADD` path).
//! 2. `refused`: one key, hammered: after the first 100 calls of each second every call is
//!    refused (the sliding window's `ZRANGE` path).
//!
//! After criterion, the contenders are timed again in alternating batches (the order
//! rotates every round, so noise hits all alike); the bench prints the median of the
//! per-round ratios against `fixed_window`, sequential (one task) and with 64 tasks:
//!
//! ```text
//! admitted, sequential latency vs fixed window (lower is better): script_by_hand 1.45x, cache_rate_limit 1.57x, rate_limit_attr 1.56x
//! ```
//!
//! Figures and the machine: `docs/benchmarks.md`.
//!
//! ```text
//! cargo bench -p cache-runtime --bench rate_limit
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_runtime::{rate_limit, Cache, RateLimited};
use criterion::{criterion_group, Criterion};
use redis::aio::ConnectionManager;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

const LIMIT: u64 = 100;
const PER: Duration = Duration::from_secs(1);
/// Keys of the `admitted` workload.
const KEYS: u64 = 1_000;

struct Fixture {
    runtime: Runtime,
    cache: Cache,
    connection: ConnectionManager,
    /// The next key of the `admitted` workload.
    next: AtomicU64,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();
/// The bench's redis-server, dropped (killed, its directory removed) at the end.
static SERVER: Mutex<Option<RedisServer>> = Mutex::new(None);

struct StopServer;

impl Drop for StopServer {
    fn drop(&mut self) {
        drop(SERVER.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let server = RedisServer::start();
        let url = server.url();
        *SERVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (cache, connection) = runtime.block_on(async {
            let cache =
                Cache::builder().redis(url.as_str()).prefix("bench:").build().await.unwrap();
            let client = redis::Client::open(url.as_str()).unwrap();
            let connection = ConnectionManager::new(client).await.unwrap();
            (cache, connection)
        });
        Fixture { runtime, cache, connection, next: AtomicU64::new(0) }
    })
}

/// The hand-written fixed window: `INCR` + `PEXPIRE NX` in one pipeline.
async fn fixed_window(connection: &ConnectionManager, key: u64) -> bool {
    let mut connection = connection.clone();
    let key = format!("fixed:user:{key}");
    let (count, _): (u64, i64) = redis::pipe()
        .cmd("INCR")
        .arg(&key)
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(PER.as_millis() as u64)
        .arg("NX")
        .query_async(&mut connection)
        .await
        .expect("fixed window");
    count <= LIMIT
}

/// A copy of `DECIDE` in `cache-runtime/src/rate_limit.rs` (private there).
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local stamp = t[1] .. string.format('%06d', tonumber(t[2]))
local now = tonumber(stamp)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  local member, n = stamp, 0
  while redis.call('ZADD', KEYS[1], 'NX', stamp, member) == 0 do
    n = n + 1
    member = stamp .. '.' .. n
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, limit - count - 1, 0, window}
end
local freeing = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
return {0, 0, tonumber(freeing[2]) + window - now, tonumber(newest[2]) + window - now}",
    )
});

/// The script by hand: `EVALSHA` of a script hashed once.
async fn script_by_hand(connection: &ConnectionManager, key: u64) -> bool {
    let mut connection = connection.clone();
    let (allowed, _, _, _): (i64, i64, i64, i64) = SCRIPT
        .key(format!("byhand:user:{key}"))
        .arg(LIMIT)
        .arg(PER.as_micros() as u64)
        .arg(PER.as_millis() as u64)
        .invoke_async(&mut connection)
        .await
        .expect("script");
    allowed == 1
}

async fn cache_rate_limit(cache: &Cache, key: u64) -> bool {
    cache.rate_limit(&format!("user:{key}"), LIMIT, PER).await.expect("valid input").allowed
}

#[rate_limit(key = "attr:user:<id>", limit = 100, per = "1s", cache = cache)]
async fn limited(cache: &Cache, id: u64) -> Result<(), RateLimited> {
    Ok(())
}

async fn rate_limit_attr(cache: &Cache, key: u64) -> bool {
    limited(cache, key).await.is_ok()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Admitted,
    Refused,
}

impl Workload {
    fn key(self, f: &Fixture) -> u64 {
        match self {
            Workload::Admitted => f.next.fetch_add(1, Relaxed) % KEYS,
            Workload::Refused => KEYS + 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Admitted => "admitted",
            Workload::Refused => "refused",
        }
    }
}

#[derive(Clone, Copy)]
enum Contender {
    Fixed,
    ByHand,
    Script,
    Attr,
}

const CONTENDERS: [(Contender, &str); 4] = [
    (Contender::Fixed, "fixed_window"),
    (Contender::ByHand, "script_by_hand"),
    (Contender::Script, "cache_rate_limit"),
    (Contender::Attr, "rate_limit_attr"),
];

async fn decide(f: &'static Fixture, contender: Contender, workload: Workload) -> bool {
    let key = workload.key(f);
    match contender {
        Contender::Fixed => fixed_window(&f.connection, key).await,
        Contender::ByHand => script_by_hand(&f.connection, key).await,
        Contender::Script => cache_rate_limit(&f.cache, key).await,
        Contender::Attr => rate_limit_attr(&f.cache, key).await,
    }
}

fn decisions(c: &mut Criterion) {
    for workload in [Workload::Admitted, Workload::Refused] {
        let mut group = c.benchmark_group(format!("rate_limit/{}", workload.name()));
        for (contender, name) in CONTENDERS {
            group.bench_function(name, |b| {
                let f = fixture();
                b.to_async(&f.runtime)
                    .iter(|| async move { black_box(decide(f, contender, workload).await) });
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decisions
}

/// One batch: `calls` decisions by `tasks` tasks; its duration and how many were admitted.
async fn batch(
    f: &'static Fixture,
    contender: Contender,
    workload: Workload,
    tasks: u64,
    calls: u64,
) -> (Duration, u64) {
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        set.spawn(async move {
            let mut admitted = 0;
            for _ in 0..calls / tasks {
                admitted += u64::from(decide(f, contender, workload).await);
            }
            admitted
        });
    }
    let mut admitted = 0;
    while let Some(done) = set.join_next().await {
        admitted += done.expect("a caller panicked");
    }
    (started.elapsed(), admitted)
}

/// Median over rounds of each contender's batch time divided by the fixed window's, the
/// contenders' order rotating every round; plus the share of admitted decisions.
fn ratios(workload: Workload, tasks: u64, rounds: usize, calls: u64) -> ([f64; 4], [f64; 4]) {
    let f = fixture();
    f.runtime.block_on(async {
        let mut per_round: Vec<[f64; 4]> = Vec::with_capacity(rounds);
        let mut admitted = [0u64; 4];
        for round in 0..rounds {
            let mut times = [Duration::ZERO; 4];
            for i in 0..4 {
                let which = (i + round) % 4;
                let (took, yes) = batch(f, CONTENDERS[which].0, workload, tasks, calls).await;
                times[which] = took;
                admitted[which] += yes;
            }
            let fixed = times[0].as_secs_f64();
            per_round.push(times.map(|time| time.as_secs_f64() / fixed));
        }
        let mut median = [0.0; 4];
        for (i, slot) in median.iter_mut().enumerate() {
            let mut column: Vec<f64> = per_round.iter().map(|ratios| ratios[i]).collect();
            column.sort_by(f64::total_cmp);
            *slot = column[rounds / 2];
        }
        let total = (rounds as u64 * calls) as f64;
        (median, admitted.map(|count| count as f64 / total))
    })
}

fn print_figures() {
    let f = fixture();
    // Single-task latency for reference, from one warm batch.
    let (took, _) = f.runtime.block_on(batch(f, Contender::Fixed, Workload::Admitted, 1, 2_000));
    println!();
    println!("fixed window, one task: {:.1} us per decision", took.as_secs_f64() * 1e6 / 2_000.0);
    for workload in [Workload::Admitted, Workload::Refused] {
        for (tasks, label) in [(1, "sequential latency"), (64, "64-task time per batch")] {
            let (ratio, admitted) = ratios(workload, tasks, 30, 1_280);
            println!(
                "{}, {label} vs fixed window (lower is better): script_by_hand {:.2}x, cache_rate_limit {:.2}x, rate_limit_attr {:.2}x   (admitted: {})",
                workload.name(),
                ratio[1],
                ratio[2],
                ratio[3],
                admitted.map(|share| format!("{:.0}%", share * 100.0)).join(" / "),
            );
        }
    }
    let stats = f.cache.stats();
    assert_eq!(stats.errors, 0, "{stats:?}");
}

fn main() {
    let _stop_server = StopServer;
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only a real benchmark run (`cargo bench`) prints the figures.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--bench") && !has("--test") && !has("--list") && !has("--profile-time") {
        print_figures();
    }
}
