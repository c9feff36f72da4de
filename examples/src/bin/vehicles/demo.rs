//! `vehicles demo`: the same workload twice, on the database alone and through the cached
//! service, then a burst of concurrent cold reads, then the report.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_runtime::Stats;
use examples::marketplace::Marketplace;
use indicatif::{ProgressBar, ProgressStyle};

use crate::workload::{self, Op, MIX};
use crate::Setup;

/// Callers in the burst of cold reads.
const BURST: usize = 200;
/// Vehicles compared between the cache and the database after the run.
const CHECKED: i64 = 300;
/// Reads of one unknown vehicle after the run, within its `absent_ttl`.
const ABSENT_READS: u64 = 100;

/// What one run measured.
struct Run {
    took: Duration,
    /// Per-request latencies, sorted, each with the kind of its request.
    latencies: Vec<(Duration, &'static str)>,
    queries: u64,
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        self.latencies[((self.latencies.len() - 1) as f64 * p).round() as usize].0
    }

    /// The kinds of the slowest 1% of requests, most frequent first: what the p99 waits for.
    fn tail(&self) -> String {
        let slowest = &self.latencies[self.latencies.len() - self.latencies.len().div_ceil(100)..];
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for (_, kind) in slowest {
            match kinds.iter_mut().find(|(k, _)| k == kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((kind, 1)),
            }
        }
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let kinds: Vec<String> = kinds.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        format!("{} requests: {}", slowest.len(), kinds.join(", "))
    }
}

/// `DEMO_SLOW_MS`: requests at least this slow are printed to stderr as they finish, with
/// the UTC time they started (to line up with the `tracing` lines, e.g. sqlx's slow
/// statements), to find what a tail request waited for.
fn slow_threshold() -> Option<Duration> {
    let ms: f64 = std::env::var("DEMO_SLOW_MS").ok()?.parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1e3))
}

/// `HH:MM:SS.micros` UTC of `at`.
fn utc(at: SystemTime) -> String {
    let micros = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros();
    let (seconds, micros) = (micros / 1_000_000, micros % 1_000_000);
    let day = seconds % 86_400;
    format!("{:02}:{:02}:{:02}.{micros:06}", day / 3600, day / 60 % 60, day % 60)
}

/// With `DEMO_SLOW_MS`: two canaries that sleep 1 ms in a loop and print each wake-up at
/// least half the threshold late, one an OS thread outside the runtime, one a task on it.
/// A stall both see is the process (or the machine) not running; one only the task sees is
/// the runtime's workers busy or blocked.
fn start_canaries(slow: Duration) {
    let late = slow / 2;
    std::thread::spawn(move || loop {
        let (started, wall) = (Instant::now(), SystemTime::now());
        std::thread::sleep(Duration::from_millis(1));
        let took = started.elapsed();
        if took >= late {
            eprintln!("canary thread: asleep from {} for {took:.1?}", utc(wall));
        }
    });
    tokio::spawn(async move {
        loop {
            let (started, wall) = (Instant::now(), SystemTime::now());
            tokio::time::sleep(Duration::from_millis(1)).await;
            let took = started.elapsed();
            if took >= late {
                eprintln!("canary task: asleep from {} for {took:.1?}", utc(wall));
            }
        }
    });
}

#[derive(Clone)]
enum Target {
    Database,
    Cached,
}

/// Runs `ops` on `concurrency` tasks, each taking the next request when it is done.
async fn drive(
    service: &Marketplace,
    ops: &Arc<Vec<Op>>,
    concurrency: usize,
    target: Target,
    label: &str,
) -> Result<Run, String> {
    let bar = ProgressBar::new(ops.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:<10} [{bar:40}] {pos:>6}/{len} {elapsed:>4}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    let queries_before = service.db().queries();
    let next = Arc::new(AtomicUsize::new(0));
    let slow = slow_threshold();
    let label: Arc<str> = Arc::from(label);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (service, ops, next, bar, target, label) = (
                service.clone(),
                Arc::clone(ops),
                Arc::clone(&next),
                bar.clone(),
                target.clone(),
                Arc::clone(&label),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(ops.len() / concurrency + 1);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(op) = ops.get(i) else {
                        return Ok(latencies);
                    };
                    let (started, wall) = (Instant::now(), SystemTime::now());
                    match target {
                        Target::Database => workload::uncached(service.db(), op).await,
                        Target::Cached => workload::cached(&service, op).await,
                    }
                    .map_err(|e| format!("{op:?}: {e}"))?;
                    let took = started.elapsed();
                    if slow.is_some_and(|slow| took >= slow) {
                        eprintln!(
                            "slow request: {label}: started {} took {took:.1?} {op:?}",
                            utc(wall)
                        );
                    }
                    latencies.push((took, op.kind()));
                    bar.inc(1);
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(ops.len());
    for worker in workers {
        let done: Result<Vec<_>, String> = worker.await.map_err(|e| e.to_string())?;
        latencies.extend(done?);
    }
    let took = started.elapsed();
    bar.finish();
    latencies.sort_unstable();
    Ok(Run { took, latencies, queries: service.db().queries() - queries_before })
}

/// `BURST` callers read one cold vehicle at the same moment. Returns the loads and the
/// database queries they caused, and the vehicle's id.
async fn burst(service: &Marketplace, id: i64) -> Result<(u64, u64), String> {
    service.cache().invalidate(&format!("vehicle:{id}")).await.map_err(|e| e.to_string())?;
    let loads_before = service.cache().stats_of("vehicle").loads;
    let queries_before = service.db().queries();
    let start = Arc::new(tokio::sync::Barrier::new(BURST));
    let callers: Vec<_> = (0..BURST)
        .map(|_| {
            let (service, start) = (service.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                service.vehicle(id).await
            })
        })
        .collect();
    for caller in callers {
        let vehicle = caller.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        if vehicle.is_none() {
            return Err(format!("vehicle {id} is missing"));
        }
    }
    Ok((
        service.cache().stats_of("vehicle").loads - loads_before,
        service.db().queries() - queries_before,
    ))
}

/// `ABSENT_READS` reads, one after the other, of vehicle `id`, which does not exist (and was
/// not read before): the first queries the database, the others are answered by the cached
/// absence (`absent_ttl`). Returns the database queries they caused.
async fn absent(service: &Marketplace, id: i64) -> Result<u64, String> {
    let queries_before = service.db().queries();
    for _ in 0..ABSENT_READS {
        if let Some(vehicle) = service.vehicle(id).await.map_err(|e| e.to_string())? {
            return Err(format!("vehicle {id} should not exist: {vehicle:?}"));
        }
    }
    Ok(service.db().queries() - queries_before)
}

/// Reads the hottest vehicles through the cache and from the database: how many differ.
async fn stale_reads(service: &Marketplace) -> Result<u64, String> {
    let mut stale = 0;
    for id in 1..=CHECKED {
        let cached = service.vehicle(id).await.map_err(|e| e.to_string())?;
        let fresh = service.db().vehicle(id).await.map_err(|e| e.to_string())?;
        stale += u64::from(cached != fresh);
    }
    Ok(stale)
}

fn plural(n: u64, what: &str) -> String {
    match (n, what.strip_suffix('y')) {
        (1, _) => format!("1 {what}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {what}s"),
    }
}

fn us(duration: Duration) -> u128 {
    duration.as_micros()
}

fn line(label: &str, run: &Run) {
    println!(
        "{label:<10} {:>9} {:>9.2?} {:>9.0}/s {:>10.1?} {:>10.1?} {:>10.1?} {:>11}",
        run.latencies.len(),
        run.took,
        run.latencies.len() as f64 / run.took.as_secs_f64(),
        run.percentile(0.50),
        run.percentile(0.99),
        run.percentile(0.999),
        run.queries,
    );
}

pub(crate) async fn run(setup: Setup, requests: usize, concurrency: usize) -> Result<(), String> {
    let service = setup.service;
    let sizes = service.db().sizes().await.map_err(|e| e.to_string())?;
    // A Redis cache may hold values from an earlier run over data that has changed since.
    service.cache().clear().await.map_err(|e| format!("cannot clear the cache: {e}"))?;
    let mix: Vec<String> = MIX.iter().map(|(name, pct)| format!("{name} {pct}%")).collect();
    println!("vehicles demo");
    println!("  database  {}", setup.database);
    println!("  cache     {}", setup.store);
    println!(
        "  workload  {requests} requests from {concurrency} concurrent clients, hot keys first: {}",
        mix.join(", ")
    );
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        println!(); // the progress bars go below
    }

    let ops = Arc::new(workload::generate(requests, sizes));
    if let Some(slow) = slow_threshold() {
        start_canaries(slow);
    }
    let uncached = drive(&service, &ops, concurrency, Target::Database, "no cache").await?;
    let cached = drive(&service, &ops, concurrency, Target::Cached, "#[cached]").await?;
    let stats = service.cache().stats();
    let (burst_loads, burst_queries) = burst(&service, sizes.vehicles).await?;
    // An id past those the workload asks for: never read before.
    let absent_id = sizes.vehicles + 2 * workload::UNKNOWN_VEHICLES;
    let absent_queries = absent(&service, absent_id).await?;
    let stale = stale_reads(&service).await?;
    // With Redis: the same workload through a near cache, from a cold start.
    let near = match &setup.near {
        Some(near) => {
            near.cache().clear().await.map_err(|e| format!("cannot clear the cache: {e}"))?;
            let started = Instant::now();
            while !near.cache().near_cache_live() && started.elapsed() < Duration::from_secs(3) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let run = drive(near, &ops, concurrency, Target::Cached, "near").await?;
            let near_stats = near.cache().stats();
            Some((run, near_stats, stale_reads(near).await?))
        }
        None => None,
    };

    println!();
    println!(
        "{:<10} {:>9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>11}",
        "", "requests", "time", "throughput", "p50", "p99", "p99.9", "db queries"
    );
    line("no cache", &uncached);
    line("#[cached]", &cached);
    if let Some((run, _, _)) = &near {
        line("near", run);
    }
    println!();
    println!(
        "hit rate {:.1}% of {} cache lookups (hits {}, misses {}, loads {}, coalesced {}, errors {})",
        stats.hit_rate() * 100.0,
        stats.hits + stats.misses,
        stats.hits,
        stats.misses,
        stats.loads,
        stats.coalesced,
        stats.errors,
    );
    println!("slowest 1%, no cache: {}", uncached.tail());
    println!("slowest 1%, cached:   {}", cached.tail());
    println!(
        "database queries: {} for {requests} requests with the cache, {} without ({:.1}x fewer)",
        cached.queries,
        uncached.queries,
        uncached.queries as f64 / cached.queries.max(1) as f64,
    );
    println!(
        "invalidations: {} keys removed by {} price changes",
        service.cache().stats_of("save_price").invalidated,
        ops.iter().filter(|op| matches!(op, Op::UpdatePrice(..))).count(),
    );
    println!(
        "burst: {BURST} concurrent cold reads of vehicle:{}: {}, {}",
        sizes.vehicles,
        plural(burst_loads, "load"),
        plural(burst_queries, "database query"),
    );
    println!(
        "absent: {ABSENT_READS} reads of unknown vehicle:{absent_id}: {} (absent_ttl)",
        plural(absent_queries, "database query"),
    );
    println!(
        "check: {stale} of the {CHECKED} hottest vehicles read through the cache differ from the database"
    );
    if let Some((_, near_stats, near_stale)) = &near {
        println!(
            "near cache: {} of {} hits served from process memory (hit rate {:.1}%); check: {near_stale} of the {CHECKED} hottest vehicles differ from the database",
            near_stats.near_hits,
            near_stats.hits,
            near_stats.hit_rate() * 100.0,
        );
    }
    println!();
    println!("per function        hits   misses    loads refreshes  hit rate");
    for name in ["vehicle", "vehicles", "dealer_listing", "homepage_section_ids", "search", "user"]
    {
        let Stats { hits, misses, loads, refreshes, .. } = service.cache().stats_of(name);
        let rate = hits as f64 * 100.0 / (hits + misses).max(1) as f64;
        println!("  {name:<16} {hits:>7} {misses:>8} {loads:>8} {refreshes:>9} {rate:>8.1}%");
    }
    println!();
    println!(
        "REPORT requests={requests} db_queries={} db_queries_uncached={} hit_rate={:.4} \
         p50_us={} p99_us={} p999_us={} uncached_p50_us={} uncached_p99_us={} \
         uncached_p999_us={} loads={} burst_loads={burst_loads} burst_queries={burst_queries} \
         absent_reads={ABSENT_READS} absent_queries={absent_queries} invalidated={} stale_reads={stale} errors={}",
        cached.queries,
        uncached.queries,
        stats.hit_rate(),
        us(cached.percentile(0.50)),
        us(cached.percentile(0.99)),
        us(cached.percentile(0.999)),
        us(uncached.percentile(0.50)),
        us(uncached.percentile(0.99)),
        us(uncached.percentile(0.999)),
        stats.loads,
        service.cache().stats_of("save_price").invalidated,
        stats.errors,
    );
    if let Some((run, near_stats, near_stale)) = &near {
        println!(
            "REPORT near near_hits={} hits={} near_p50_us={} near_p99_us={} near_db_queries={} near_stale_reads={near_stale}",
            near_stats.near_hits,
            near_stats.hits,
            us(run.percentile(0.50)),
            us(run.percentile(0.99)),
            run.queries,
        );
    }
    Ok(())
}
