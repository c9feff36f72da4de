//! XFetch (`#[cached(early)]`) in a simulation on the **real** cache: how many recomputes run
//! per value life, and whether any reader sees a miss (issue 13's "done when").
//!
//! One `Cache::memory()` per β, one key, `ttl = "1s"`, a body that sleeps 50 ms and logs each
//! run (when it started and finished, and which reader task ran it, if any). 10,000 reader
//! tasks on a multi-thread tokio runtime (2 workers) read the key, each after a first wait
//! uniform in [0, 1.5) s and then every 1-2 s (uniform jitter from a seeded xorshift, the seed
//! printed): about 6,700 reads/s in all. The first call (the only cold load) is made before
//! the readers start. Each β runs for `XFETCH_SECS` seconds (default 50).
//!
//! What is measured, per β:
//!
//! - **Value lives.** Every value readers saw (plus the first) was stored when its body
//!   finished (`w`), and would expire at `w + ttl`. A value's life lasts until the next value
//!   is stored; the recomputes of that life are the bodies started during it (the first load is
//!   in no life). Ideally every life has exactly one, started before its expiry. The last
//!   (unfinished) life is left out. A life whose next value came after its expiry is an
//!   *expiry*: readers in the gap miss.
//! - **Misses.** A reader *sees a miss* when its lookup finds no fresh value, so that the call
//!   waits for a body (its own or a concurrent one): the cache counts it in
//!   `stats_of(name).misses` (the first call's miss is subtracted). Cross-checked with the
//!   reader's own view: a call slower than 25 ms whose value came from a body that started
//!   after the call did.
//! - **Readers that waited for a recompute.** An early recompute that runs inline in the
//!   reader whose draw chose it makes that reader wait for the body although the value was
//!   fresh: the body records the reader task that ran it (a task-local), so such calls are
//!   counted apart from misses. A recompute run in a background task (what `early` does
//!   since the body owns its arguments) has no reader: the task-local is not inherited by
//!   `tokio::spawn`, so such bodies are counted as "in a background task", and a reader can
//!   then only wait for one by joining it after its own value expired (a miss, counted as
//!   "waited for another's body"). The reader latency shows whether anyone waited at all.
//!
//! Printed: the distribution of recomputes per value life (0, 1, 2, 3+), the share with
//! exactly one, how long before expiry the recomputes started, the misses, the waits, and
//! the reader latency p50/p99/max.
//!
//! With `XFETCH_REDIS=1`, β = 1 runs a third time on a Redis cache, against a private
//! `redis-server` the bench starts on a free loopback port (`tests/src/redis_server.rs`), where
//! a hit is a `GET` + `PTTL` round trip.
//!
//! The readers' jitter is deterministic (`XFETCH_SEED`); the cache's own XFetch draws are not
//! (a per-thread generator seeded from the clock), nor is the scheduling, so runs differ.
//!
//! ```text
//! cargo bench -p cache-runtime --bench xfetch
//! XFETCH_SECS=30 XFETCH_SEED=7 XFETCH_REDIS=1 cargo bench -p cache-runtime --bench xfetch
//! ```
//!
//! Without `--bench` (`cargo test --benches`) it runs a short smoke version (200 readers, 3 s).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use serde::{Deserialize, Serialize};

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

/// The key's time to live (the attribute's `ttl = "1s"`).
const TTL: Duration = Duration::from_secs(1);
/// The body's duration: the recompute.
const BODY: Duration = Duration::from_millis(50);
/// A call slower than this waited for a body (a hit takes microseconds).
const SLOW: Duration = Duration::from_millis(25);
/// The one key every reader reads.
const ID: u64 = 13;

/// What the body returns: which run produced the value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reading {
    generation: usize,
}

/// One run of a body.
#[derive(Debug, Clone, Copy)]
struct Run {
    started: Instant,
    finished: Option<Instant>,
    /// The reader task whose call ran the body (`None`: the warm-up call, or a background task).
    runner: Option<usize>,
}

/// The body's log of its runs, one per function.
struct Runs(Mutex<Vec<Run>>);

impl Runs {
    const fn new() -> Runs {
        Runs(Mutex::new(Vec::new()))
    }

    /// The "database": logs the run, sleeps 50 ms, returns the run's number.
    async fn body(&self) -> Reading {
        let runner = READER.try_with(|reader| *reader).ok();
        let generation = {
            let mut runs = self.0.lock().unwrap();
            runs.push(Run { started: Instant::now(), finished: None, runner });
            runs.len() - 1
        };
        tokio::time::sleep(BODY).await;
        self.0.lock().unwrap()[generation].finished = Some(Instant::now());
        Reading { generation }
    }

    fn take(&self) -> Vec<Run> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

tokio::task_local! {
    /// The reader task making the current call.
    static READER: usize;
}

static CACHE_BETA_1: LazyLock<Cache> = LazyLock::new(Cache::memory);
static CACHE_BETA_2: LazyLock<Cache> = LazyLock::new(Cache::memory);
static RUNS_BETA_1: Runs = Runs::new();
static RUNS_BETA_2: Runs = Runs::new();
static RUNS_REDIS: Runs = Runs::new();

/// The Redis cache (`XFETCH_REDIS=1`), on a redis-server the bench starts.
static REDIS_CACHE: OnceLock<Cache> = OnceLock::new();

fn redis_cache() -> &'static Cache {
    REDIS_CACHE.get().expect("the Redis cache is built in main")
}

#[cached(key = "xfetch:<id>", ttl = "1s", early, cache = &*CACHE_BETA_1)]
async fn xfetch_beta_1(id: u64) -> Reading {
    let _ = id;
    RUNS_BETA_1.body().await
}

#[cached(key = "xfetch:<id>", ttl = "1s", early = 2.0, cache = &*CACHE_BETA_2)]
async fn xfetch_beta_2(id: u64) -> Reading {
    let _ = id;
    RUNS_BETA_2.body().await
}

#[cached(key = "xfetch:<id>", ttl = "1s", early, cache = redis_cache())]
async fn xfetch_redis_beta_1(id: u64) -> Reading {
    let _ = id;
    RUNS_REDIS.body().await
}

/// A small seeded generator for the readers' jitter (splitmix64).
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`, to the microsecond.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_micros() as u64;
        low + Duration::from_micros(self.next() % span.max(1))
    }
}

/// One reader's call.
#[derive(Debug, Clone, Copy)]
struct Call {
    reader: usize,
    started: Instant,
    latency: Duration,
    generation: usize,
}

/// The simulation's settings.
#[derive(Debug, Clone, Copy)]
struct Setup {
    readers: usize,
    run_for: Duration,
    seed: u64,
}

/// One β's simulation on the runtime: warm-up call, readers, then the logs.
async fn simulate<F, Fut>(read: F, setup: Setup) -> (Vec<Call>, Instant)
where
    F: Fn(u64) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Reading> + Send,
{
    // The first load: the only cold miss.
    assert_eq!(read(ID).await.generation, 0);
    let begun = Instant::now();
    let end = begun + setup.run_for;
    let readers: Vec<_> = (0..setup.readers)
        .map(|reader| {
            let mut jitter =
                Jitter(setup.seed ^ (reader as u64).wrapping_mul(0xA076_1D64_78BD_642F));
            tokio::spawn(async move {
                let mut calls = Vec::new();
                tokio::time::sleep(jitter.between(Duration::ZERO, Duration::from_millis(1500)))
                    .await;
                while Instant::now() < end {
                    let started = Instant::now();
                    let reading = READER.scope(reader, read(ID)).await;
                    let latency = started.elapsed();
                    calls.push(Call { reader, started, latency, generation: reading.generation });
                    let pause =
                        jitter.between(Duration::from_millis(1000), Duration::from_millis(2000));
                    tokio::time::sleep(pause).await;
                }
                calls
            })
        })
        .collect();
    let mut calls = Vec::new();
    for reader in readers {
        calls.extend(reader.await.expect("a reader task"));
    }
    (calls, begun)
}

/// The `q` quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Analyses one β's logs and prints its figures.
fn report(
    beta: &str,
    name: &str,
    cache: &Cache,
    runs: &[Run],
    calls: &[Call],
    begun: Instant,
    setup: Setup,
) {
    let stats = cache.stats_of(name);
    let finished = |generation: usize| runs[generation].finished.expect("every body finished");

    // The values that were stored, in the order they were: those a call started after their
    // body finished read (the body's own caller gets its value even when it is not stored).
    let seen: BTreeSet<usize> = calls
        .iter()
        .filter(|call| call.started > finished(call.generation))
        .map(|call| call.generation)
        .chain([0])
        .collect();
    let mut values: Vec<usize> = seen.iter().copied().collect();
    values.sort_by_key(|&generation| finished(generation));
    let unseen = runs.len() - values.len();

    // Each value's life, up to the next value's store.
    let mut histogram = [0usize; 4];
    let (mut expiries, mut lives) = (0usize, 0usize);
    let mut lead = Vec::new(); // how long before the value's expiry its first recompute started
    let mut worst_gap = Duration::ZERO;
    let mut extra_after = Vec::new(); // when extra recomputes started, after the life's first
    let mut odd = Vec::new(); // lives without exactly one recompute, described
    for pair in values.windows(2) {
        let (stored, next) = (finished(pair[0]), finished(pair[1]));
        let expires = stored + TTL;
        let recomputes: Vec<usize> = (0..runs.len())
            .filter(|&run| runs[run].started >= stored && runs[run].started < next)
            .collect();
        let started: Vec<Instant> = recomputes.iter().map(|&run| runs[run].started).collect();
        if recomputes.len() != 1 && odd.len() < 10 {
            let detail: Vec<String> = recomputes
                .iter()
                .map(|&run| {
                    format!(
                        "#{run} at age {:.1} ms ({})",
                        (runs[run].started - stored).as_secs_f64() * 1e3,
                        if seen.contains(&run) { "stored" } else { "not stored" }
                    )
                })
                .collect();
            odd.push(format!(
                "value #{} stored at {:.3} s: {}",
                pair[0],
                (stored.saturating_duration_since(begun)).as_secs_f64(),
                detail.join(", ")
            ));
        }
        lives += 1;
        histogram[started.len().min(3)] += 1;
        if let Some(&first) = started.iter().min() {
            lead.push(expires.saturating_duration_since(first));
            for &extra in started.iter().filter(|&&s| s != first) {
                extra_after.push(extra - first);
            }
        }
        if next > expires {
            expiries += 1;
            worst_gap = worst_gap.max(next - expires);
        }
    }
    lead.sort();

    // The readers' view.
    let mut latencies: Vec<Duration> = calls.iter().map(|call| call.latency).collect();
    latencies.sort();
    let (mut own_recompute, mut own_miss, mut waited_other, mut slow_hit) = (0, 0, 0, 0);
    for call in calls.iter().filter(|call| call.latency > SLOW) {
        let run = runs[call.generation];
        if finished(call.generation) < call.started {
            slow_hit += 1; // a value that existed before the call: slow for other reasons
            continue;
        }
        if run.runner != Some(call.reader) || run.started < call.started {
            waited_other += 1;
            continue;
        }
        // The call ran the body itself: an early recompute if a fresh value existed then.
        let fresh = values
            .iter()
            .rev()
            .map(|&generation| finished(generation))
            .find(|&stored| stored <= run.started)
            .is_some_and(|stored| run.started < stored + TTL);
        match fresh {
            true => own_recompute += 1,
            false => own_miss += 1,
        }
    }
    let background = runs.iter().skip(1).filter(|run| run.runner.is_none()).count();
    let duration = calls.iter().map(|call| call.started).max().unwrap_or(begun) - begun;
    let mean_body: Duration =
        runs.iter().map(|run| finished_or(run) - run.started).sum::<Duration>()
            / runs.len().max(1) as u32;

    println!();
    println!(
        "β = {beta} (`{name}`): {} readers, {} calls in {:.1} s ({:.0} reads/s), seed {:#x}",
        setup.readers,
        calls.len(),
        duration.as_secs_f64(),
        calls.len() as f64 / duration.as_secs_f64().max(1e-9),
        setup.seed
    );
    println!(
        "  bodies: {} (1 first load + {} recomputes; {} in a background task), mean body {} (δ)",
        runs.len(),
        runs.len() - 1,
        background,
        ms(mean_body)
    );
    println!(
        "  cache stats: hits {}, misses {} (first call's included), loads {}, refreshes {}, coalesced {}, errors {}",
        stats.hits, stats.misses, stats.loads, stats.refreshes, stats.coalesced, stats.errors
    );
    println!("  value lives (complete): {lives}; bodies whose value was not stored: {unseen}");
    println!(
        "  recomputes per life:  0: {}   1: {}   2: {}   3+: {}",
        histogram[0], histogram[1], histogram[2], histogram[3]
    );
    println!(
        "  exactly one recompute: {:.1}% of lives ({} of {lives})   [criterion: >= 99%]",
        100.0 * histogram[1] as f64 / lives.max(1) as f64,
        histogram[1]
    );
    println!(
        "  first recompute started before expiry by: min {}  p50 {}  max {}",
        ms(quantile(&lead, 0.0)),
        ms(quantile(&lead, 0.5)),
        ms(quantile(&lead, 1.0))
    );
    if !extra_after.is_empty() {
        extra_after.sort();
        println!(
            "  extra recomputes started after the life's first by: min {}  p50 {}  max {}",
            ms(quantile(&extra_after, 0.0)),
            ms(quantile(&extra_after, 0.5)),
            ms(quantile(&extra_after, 1.0))
        );
    }
    for line in &odd {
        println!("    {line}");
    }
    println!(
        "  values that expired before the next was stored: {expiries} (longest gap {})",
        ms(worst_gap)
    );
    println!(
        "  misses after the first call: {} (cache stats)   [criterion: 0]",
        stats.misses.saturating_sub(1)
    );
    println!(
        "  calls > {}: {} ran an early recompute inline (waited for a recompute), {} ran a miss's load, {} waited for another's body, {} slow hits",
        ms(SLOW),
        own_recompute,
        own_miss,
        waited_other,
        slow_hit
    );
    // When the slow calls happened: one burst (a stall of the machine or of Redis) or spread.
    let mut slow_at: Vec<Duration> = calls
        .iter()
        .filter(|call| call.latency > SLOW)
        .map(|call| call.started.saturating_duration_since(begun))
        .collect();
    slow_at.sort();
    if let (Some(first), Some(last)) = (slow_at.first(), slow_at.last()) {
        let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
        for at in &slow_at {
            *per_second.entry(at.as_secs()).or_default() += 1;
        }
        let busiest = per_second.iter().max_by_key(|(_, &count)| count);
        println!(
            "  calls > {} started between {:.3} s and {:.3} s of the run; busiest second: {}",
            ms(SLOW),
            first.as_secs_f64(),
            last.as_secs_f64(),
            busiest.map_or(String::new(), |(second, count)| format!(
                "{second}-{} s, {count} calls",
                second + 1
            ))
        );
    }
    println!(
        "  reader latency: p50 {:.1} µs  p99 {:.1} µs  p99.99 {}  max {}",
        quantile(&latencies, 0.5).as_secs_f64() * 1e6,
        quantile(&latencies, 0.99).as_secs_f64() * 1e6,
        ms(quantile(&latencies, 0.9999)),
        ms(quantile(&latencies, 1.0))
    );
}

fn finished_or(run: &Run) -> Instant {
    run.finished.unwrap_or(run.started)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let full = has("--bench") && !has("--test") && !has("--list");
    if has("--list") {
        return;
    }
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let setup = match full {
        true => Setup {
            readers: 10_000,
            run_for: Duration::from_secs(env("XFETCH_SECS").unwrap_or(50)),
            seed: env("XFETCH_SEED").unwrap_or(0x5EED_0013),
        },
        false => Setup { readers: 200, run_for: Duration::from_secs(3), seed: 0x5EED_0013 },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "xfetch: ttl {} ms, body {} ms, memory store, {} readers each every 1-2 s (first read within 1.5 s), {} s per β, 2 tokio workers",
        TTL.as_millis(),
        BODY.as_millis(),
        setup.readers,
        setup.run_for.as_secs()
    );
    let (calls, begun) = runtime.block_on(simulate(xfetch_beta_1, setup));
    report("1", "xfetch_beta_1", &CACHE_BETA_1, &RUNS_BETA_1.take(), &calls, begun, setup);
    let (calls, begun) = runtime.block_on(simulate(xfetch_beta_2, setup));
    report("2", "xfetch_beta_2", &CACHE_BETA_2, &RUNS_BETA_2.take(), &calls, begun, setup);
    if full && std::env::var("XFETCH_REDIS").is_ok_and(|v| v == "1") {
        let server = RedisServer::start();
        let cache = runtime
            .block_on(Cache::builder().redis(server.url()).prefix("bench:").build())
            .expect("a Redis cache");
        REDIS_CACHE.set(cache).expect("built once");
        println!();
        println!("Redis (a private redis-server on {}):", server.url());
        let (calls, begun) = runtime.block_on(simulate(xfetch_redis_beta_1, setup));
        let runs = RUNS_REDIS.take();
        report("1", "xfetch_redis_beta_1", redis_cache(), &runs, &calls, begun, setup);
        drop(server);
    }
}
