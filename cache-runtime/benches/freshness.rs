//! Background refresh and the soft timeout (issue 13's "done when"), on the **real** cache,
//! memory and Redis. No criterion: it prints its own figures.
//!
//! **Part A, a hot key across refreshes.** A function with a 100 ms body
//! (`tokio::time::sleep`), one key read by 64 tasks in a loop, each pausing `FRESH_PAUSE_MS`
//! (default 2 ms, a `tokio::time::sleep`) between reads, for `FRESH_SECS` seconds (default
//! 10) per variant, on a 2-worker multi-thread tokio runtime. Every call's latency is
//! recorded. Variants, each on a cache of its own (memory), or its own key (Redis):
//!
//! - **hits only** (control): `ttl = "1h", refresh = "59m"`, so the lookup is the one a
//!   refreshing function makes (on Redis a `GET` + `PTTL`) but no refresh falls in the run:
//!   the latency of a hit on this machine under this load.
//! - **background refresh**: `#[cached(ttl = "1s", refresh = "500ms")]`, this branch: the hit
//!   that finds the value older than 500 ms spawns the recompute and returns the current
//!   value.
//! - **inline refresh** (baseline, the behaviour before this branch): the same policy through
//!   the same runtime entry point that `#[cached]` expands to, `__private::cached`, but with
//!   the body run in the caller (`Inline`: what the attribute generated for every function
//!   before, and what a body borrowing its caller's arguments still gets): the hit that
//!   triggers the refresh runs the body itself and waits for it. Everything else (lookup,
//!   flight, lease on Redis, fill) is the same code.
//! - **early**: `#[cached(ttl = "1s", early)]` (XFetch, β = 1), recomputing in the
//!   background too.
//!
//! Printed per variant: calls, bodies (the first load + recomputes), the cache's counters,
//! latency p50/p99/p99.9/p99.99/max, p99/p50, and the calls that took over 50 ms (they waited
//! for a body). Criterion: p99 within 2x of the p50 hit.
//!
//! **Part B, the soft timeout.** `#[cached(ttl = "200ms", stale = "1h", timeout = "50ms")]`
//! with a 2 s body. After the first load, each of `FRESH_ROUNDS` rounds (default 3) waits
//! until the value is 250 ms old (expired, kept for `stale`), then 64 tasks call at once
//! (released by a barrier); each call's latency and the value it got are recorded. Then the
//! bench waits for the body to finish and calls once more: that call must get the new value
//! (landed in the background). Criterion: every caller within timeout + 5 ms = 55 ms.
//! Baseline in the same run: the same function without `timeout` (callers wait for the body).
//!
//! Redis: a private `redis-server` the bench starts on a free loopback port
//! (`tests/src/redis_server.rs`); set `FRESH_REDIS=0` to skip it.
//!
//! ```text
//! cargo bench -p cache-runtime --bench freshness
//! FRESH_SECS=20 FRESH_PAUSE_MS=1 cargo bench -p cache-runtime --bench freshness
//! ```
//!
//! Without `--bench` (`cargo test --benches`) it runs a short smoke version (memory only,
//! 1 s per variant, one timeout round).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::__private::{CachedFn, CountersSlot, PlainShape, Policy, Shaped};
use cache_runtime::{cached, Cache};
use serde::{Deserialize, Serialize};

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

/// Part A's body.
const HOT_BODY: Duration = Duration::from_millis(100);
/// Part B's body.
const SLOW_BODY: Duration = Duration::from_secs(2);
/// Part B's `timeout`.
const TIMEOUT: Duration = Duration::from_millis(50);
/// Part B's allowance over `timeout`.
const ALLOWANCE: Duration = Duration::from_millis(5);
/// Part B's `ttl`.
const SOFT_TTL: Duration = Duration::from_millis(200);
/// Tasks reading the key (part A) or calling at once (part B).
const TASKS: usize = 64;
/// A call slower than this waited for a body.
const WAITED: Duration = Duration::from_millis(50);
/// The one key.
const ID: u64 = 13;

/// What the body returns: which run produced the value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reading {
    id: u64,
    generation: usize,
}

/// One run of a body.
#[derive(Debug, Clone, Copy)]
struct Run {
    started: Instant,
    finished: Option<Instant>,
}

/// The "database": logs each run of a function's body. A handle (cloned into background
/// bodies).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Run>>>);

impl Log {
    async fn body(&self, id: u64, took: Duration) -> Reading {
        let generation = {
            let mut runs = self.0.lock().unwrap();
            runs.push(Run { started: Instant::now(), finished: None });
            runs.len() - 1
        };
        tokio::time::sleep(took).await;
        self.0.lock().unwrap()[generation].finished = Some(Instant::now());
        Reading { id, generation }
    }

    fn runs(&self) -> Vec<Run> {
        self.0.lock().unwrap().clone()
    }
}

// ---- Part A's functions ------------------------------------------------------------------

#[cached(key = "hits:<id>", ttl = "1h", refresh = "59m", cache = cache)]
async fn hits_only(cache: &Cache, log: &Log, id: u64) -> Reading {
    log.body(id, HOT_BODY).await
}

#[cached(key = "refresh:<id>", ttl = "1s", refresh = "500ms", cache = cache)]
async fn background_refresh(cache: &Cache, log: &Log, id: u64) -> Reading {
    log.body(id, HOT_BODY).await
}

#[cached(key = "early:<id>", ttl = "1s", early, cache = cache)]
async fn early_refresh(cache: &Cache, log: &Log, id: u64) -> Reading {
    log.body(id, HOT_BODY).await
}

/// The baseline: `#[cached(key = "inline:<id>", ttl = "1s", refresh = "500ms")]` as the
/// attribute expands it, except that the body goes to `__private::cached` (run in the caller)
/// instead of `__private::cached_detached` (may run on a task of its own).
async fn inline_refresh(cache: &Cache, log: &Log, id: u64) -> Reading {
    static FUNCTION: CachedFn = CachedFn {
        name: "inline_refresh",
        policy: Policy::new(Duration::from_secs(1), false, None, Some(Duration::from_millis(500))),
        counters: CountersSlot::new(),
    };
    cache_runtime::__private::cached::<PlainShape, Reading, _, _>(
        Shaped::default(),
        cache,
        &FUNCTION,
        format!("inline:{id}").into(),
        Vec::new(),
        Some(Reading::clone),
        || log.body(id, HOT_BODY),
    )
    .await
}

// ---- Part B's functions ------------------------------------------------------------------

#[cached(key = "soft:<id>", ttl = "200ms", stale = "1h", timeout = "50ms", cache = cache)]
async fn soft_timeout(cache: &Cache, log: &Log, id: u64) -> Reading {
    log.body(id, SLOW_BODY).await
}

#[cached(key = "wait:<id>", ttl = "200ms", stale = "1h", cache = cache)]
async fn no_timeout(cache: &Cache, log: &Log, id: u64) -> Reading {
    log.body(id, SLOW_BODY).await
}

// ---- Measuring -----------------------------------------------------------------------------

/// The `q` quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A duration in µs below 1 ms, else in ms.
fn show(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

/// Part A's settings.
#[derive(Debug, Clone, Copy)]
struct Hot {
    run_for: Duration,
    pause: Duration,
}

/// Part A's figures for one variant.
struct HotFigures {
    variant: &'static str,
    calls: usize,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    p9999: Duration,
    max: Duration,
    waited: usize,
    bodies: usize,
}

/// Part A for one variant: the first load, then 64 readers for `run_for`.
async fn hot_key<F, Fut>(
    variant: &'static str,
    name: &str,
    cache: Cache,
    read: F,
    hot: Hot,
) -> HotFigures
where
    F: Fn(Cache, Log) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Reading> + Send,
{
    let log = Log::default();
    assert_eq!(read(cache.clone(), log.clone()).await.generation, 0, "the first load");
    let begun = Instant::now();
    let end = begun + hot.run_for;
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (cache, log) = (cache.clone(), log.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                while Instant::now() < end {
                    let started = Instant::now();
                    let reading = read(cache.clone(), log.clone()).await;
                    latencies.push(started.elapsed());
                    assert_eq!(reading.id, ID);
                    tokio::time::sleep(hot.pause).await;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a reader task"));
    }
    let elapsed = begun.elapsed();
    // Let a recompute still running finish, so the counters are settled.
    tokio::time::sleep(HOT_BODY * 2).await;
    latencies.sort();
    let stats = cache.stats_of(name);
    let runs = log.runs();
    let figures = HotFigures {
        variant,
        calls: latencies.len(),
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        p999: quantile(&latencies, 0.999),
        p9999: quantile(&latencies, 0.9999),
        max: quantile(&latencies, 1.0),
        waited: latencies.iter().filter(|&&latency| latency > WAITED).count(),
        bodies: runs.len(),
    };
    let mean_body =
        runs.iter().filter_map(|run| Some(run.finished? - run.started)).sum::<Duration>()
            / runs.len().max(1) as u32;
    println!();
    println!(
        "{variant} (`{name}`): {TASKS} tasks, {} calls in {:.1} s ({:.0} calls/s)",
        figures.calls,
        elapsed.as_secs_f64(),
        figures.calls as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  bodies: {} (1 first load + {} recomputes), mean body {}",
        runs.len(),
        runs.len() - 1,
        show(mean_body)
    );
    println!(
        "  cache stats: hits {}, misses {}, loads {}, refreshes {}, coalesced {}, errors {}, background failures {}",
        stats.hits,
        stats.misses,
        stats.loads,
        stats.refreshes,
        stats.coalesced,
        stats.errors,
        stats.background_failures
    );
    println!(
        "  latency: p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
        show(figures.p50),
        show(figures.p99),
        show(figures.p999),
        show(figures.p9999),
        show(figures.max)
    );
    println!(
        "  p99/p50 = {:.1}x [criterion: <= 2x: {}]   calls > {}: {}",
        ratio(figures.p99, figures.p50),
        if figures.p99 <= figures.p50 * 2 { "met" } else { "NOT met" },
        show(WAITED),
        figures.waited
    );
    figures
}

fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "no"
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

/// Part A on one store: the four variants, then a summary against the baseline.
async fn part_a(store: &str, cache: impl Fn() -> Cache, hot: Hot) {
    println!();
    println!(
        "== Part A, {store}: 100 ms body, {TASKS} tasks reading one key, {} ms pause between reads, {} s per variant",
        hot.pause.as_millis(),
        hot.run_for.as_secs_f64()
    );
    let all = [
        hot_key(
            "hits only (control)",
            "hits_only",
            cache(),
            |cache, log| async move { hits_only(&cache, &log, ID).await },
            hot,
        )
        .await,
        hot_key(
            "background refresh",
            "background_refresh",
            cache(),
            |cache, log| async move { background_refresh(&cache, &log, ID).await },
            hot,
        )
        .await,
        hot_key(
            "inline refresh (baseline)",
            "inline_refresh",
            cache(),
            |cache, log| async move { inline_refresh(&cache, &log, ID).await },
            hot,
        )
        .await,
        hot_key(
            "early (XFetch, background)",
            "early_refresh",
            cache(),
            |cache, log| async move { early_refresh(&cache, &log, ID).await },
            hot,
        )
        .await,
    ];
    println!();
    println!("  summary, {store}:");
    println!(
        "  {:<28} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9}",
        "variant", "calls", "bodies", "p50", "p99", "p99.9", "p99.99", "max", "p99/p50", "> 50 ms"
    );
    for figures in &all {
        println!(
            "  {:<28} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7.1}x {:>9}",
            figures.variant,
            figures.calls,
            figures.bodies,
            show(figures.p50),
            show(figures.p99),
            show(figures.p999),
            show(figures.p9999),
            show(figures.max),
            ratio(figures.p99, figures.p50),
            figures.waited
        );
    }
    let (control, background, inline, early) = (&all[0], &all[1], &all[2], &all[3]);
    println!(
        "  inline / background: p99.9 {:.1}x, p99.99 {:.1}x, max {:.1}x; calls > 50 ms {} vs {}",
        ratio(inline.p999, background.p999),
        ratio(inline.p9999, background.p9999),
        ratio(inline.max, background.max),
        inline.waited,
        background.waited
    );
    println!(
        "  background / control: p50 {:.2}x, p99 {:.2}x, max {:.2}x; early / control: p50 {:.2}x, p99 {:.2}x, max {:.2}x",
        ratio(background.p50, control.p50),
        ratio(background.p99, control.p99),
        ratio(background.max, control.max),
        ratio(early.p50, control.p50),
        ratio(early.p99, control.p99),
        ratio(early.max, control.max)
    );
    // The criterion as written compares with the p50 hit; the control shows what a hit's own
    // p99 is on this machine (scheduling noise), which no refresh strategy can go below.
    println!(
        "  p99 <= 2 x control's p99 (refresh adds no tail beyond a plain hit's): background {}, inline {}, early {}",
        yes(background.p99 <= control.p99 * 2),
        yes(inline.p99 <= control.p99 * 2),
        yes(early.p99 <= control.p99 * 2)
    );
}

/// Part B for one variant: the first load, then `rounds` rounds of 64 callers holding an
/// expired value.
async fn slow_body<F, Fut>(
    variant: &str,
    name: &str,
    cache: Cache,
    read: F,
    rounds: usize,
    criterion: bool,
) where
    F: Fn(Cache, Log) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Reading> + Send,
{
    let log = Log::default();
    let first = Instant::now();
    assert_eq!(read(cache.clone(), log.clone()).await.generation, 0, "the first load");
    println!();
    println!("{variant} (`{name}`): first load {}", show(first.elapsed()));
    let mut all = Vec::new();
    let mut met = true;
    for round in 0..rounds {
        // The value in the store: the last body's; wait until it is past its ttl.
        let current = log.runs().len() - 1;
        let stored = log.runs()[current].finished.expect("the last body finished");
        let expired_at = stored + SOFT_TTL + Duration::from_millis(50);
        tokio::time::sleep_until(expired_at.into()).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let callers: Vec<_> = (0..TASKS)
            .map(|_| {
                let (cache, log, barrier) = (cache.clone(), log.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let started = Instant::now();
                    let reading = read(cache, log).await;
                    (started.elapsed(), reading.generation)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut stale = 0;
        for caller in callers {
            let (latency, generation) = caller.await.expect("a caller");
            latencies.push(latency);
            stale += usize::from(generation == current);
        }
        let answered = Instant::now();
        latencies.sort();
        // The body started by this round: wait for it, then call once more.
        let runs = log.runs();
        let body = *runs.get(current + 1).expect("the round started a body");
        while log.runs()[current + 1].finished.is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let landed = log.runs()[current + 1].finished.expect("finished");
        let next_started = Instant::now();
        let next = read(cache.clone(), log.clone()).await;
        let next_latency = next_started.elapsed();
        let within = latencies.last().is_some_and(|&max| max <= TIMEOUT + ALLOWANCE);
        met &= within;
        println!(
            "  round {}: {TASKS} callers, value age when the body started {} ({} got the stale value #{current}, {} a new one); latency min {}  p50 {}  p99 {}  max {}",
            round + 1,
            show(body.started.saturating_duration_since(stored)),
            stale,
            TASKS - stale,
            show(latencies[0]),
            show(quantile(&latencies, 0.5)),
            show(quantile(&latencies, 0.99)),
            show(*latencies.last().expect("callers")),
            );
        println!(
            "    bodies started: {} (#{} at +{} after the value expired), ran {}, landed {}; next call: value #{} ({}) in {}",
            log.runs().len() - 1 - current,
            current + 1,
            show(body.started.saturating_duration_since(stored + SOFT_TTL)),
            show(landed - body.started),
            match landed.checked_duration_since(answered) {
                Some(after) => format!("{} after the last caller was answered", show(after)),
                None => "before the last caller was answered".to_owned(),
            },
            next.generation,
            if next.generation == current + 1 { "the new value" } else { "NOT the new value" },
            show(next_latency)
        );
        all.extend(latencies);
    }
    all.sort();
    let stats = cache.stats_of(name);
    println!(
        "  all {} callers: min {}  p50 {}  p99 {}  max {}{}",
        all.len(),
        show(all[0]),
        show(quantile(&all, 0.5)),
        show(quantile(&all, 0.99)),
        show(*all.last().expect("callers")),
        match criterion {
            true => format!(
                "   [criterion: max <= {}: {}]",
                show(TIMEOUT + ALLOWANCE),
                if met { "met" } else { "NOT met" }
            ),
            false => String::new(),
        }
    );
    println!(
        "  cache stats: hits {}, misses {}, loads {}, coalesced {}, stale {}, errors {}, background failures {}",
        stats.hits,
        stats.misses,
        stats.loads,
        stats.coalesced,
        stats.stale,
        stats.errors,
        stats.background_failures
    );
}

/// Part B on one store.
async fn part_b(store: &str, cache: impl Fn() -> Cache, rounds: usize) {
    println!();
    println!(
        "== Part B, {store}: 2 s body, ttl 200 ms, stale 1 h; {TASKS} callers at once on the expired value, {rounds} rounds"
    );
    slow_body(
        "timeout = \"50ms\"",
        "soft_timeout",
        cache(),
        |cache, log| async move { soft_timeout(&cache, &log, ID).await },
        rounds,
        true,
    )
    .await;
    slow_body(
        "no timeout (baseline)",
        "no_timeout",
        cache(),
        |cache, log| async move { no_timeout(&cache, &log, ID).await },
        rounds,
        false,
    )
    .await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let full = has("--bench") && !has("--test") && !has("--list");
    if has("--list") {
        return;
    }
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let (hot, rounds, redis) = match full {
        true => (
            Hot {
                run_for: Duration::from_secs(env("FRESH_SECS").unwrap_or(10)),
                pause: Duration::from_millis(env("FRESH_PAUSE_MS").unwrap_or(2)),
            },
            env("FRESH_ROUNDS").unwrap_or(3) as usize,
            env("FRESH_REDIS") != Some(0),
        ),
        false => {
            (Hot { run_for: Duration::from_secs(1), pause: Duration::from_millis(2) }, 1, false)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "freshness: 2 tokio workers; part A {} s per variant; part B {rounds} rounds",
        hot.run_for.as_secs_f64()
    );
    runtime.block_on(async {
        part_a("memory", Cache::memory, hot).await;
        part_b("memory", Cache::memory, rounds).await;
    });
    if redis {
        let server = RedisServer::start();
        let cache = runtime
            .block_on(Cache::builder().redis(server.url()).prefix("bench:").build())
            .expect("a Redis cache");
        println!();
        println!("Redis: a private redis-server on {}", server.url());
        runtime.block_on(async {
            part_a("Redis", || cache.clone(), hot).await;
            part_b("Redis", || cache.clone(), rounds).await;
        });
        drop(server);
    }
}
