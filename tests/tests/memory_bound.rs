//! The process's memory for entries stays within 1.5x of `memory_capacity` and of
//! `near_cache`, and the in-process rate limiter is bounded, measured as resident memory
//! (`VmRSS` in `/proc/self/status`).
//!
//! RSS is per process and the allocator keeps what a case freed, so the one test runs each
//! case serially in a fresh child process (this binary, re-run with `MEMORY_BOUND_CASE`
//! set), which reports its peak RSS growth over the baseline it read before filling.
//!
//! Small and large entries are measured in separate processes for the memory store: after
//! small entries are evicted, the allocator (glibc) keeps their freed memory in the middle of
//! its heap, where 16 KiB values do not fit, so one process filled with both grows by about
//! the sum of the two peaks (case `memory_both`, run by hand; figures in
//! `docs/benchmarks.md`).

use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use cache_tests::RedisServer;
use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;

/// What the allocator may hold beyond the entries (its own slack, moka's and tokio's
/// bookkeeping, redis client buffers): a fixed allowance on top of 1.5x the setting.
const ALLOWANCE: u64 = 4 * MIB;

const CASE_VAR: &str = "MEMORY_BOUND_CASE";

/// A typical small value: a few fields, about 70 bytes of JSON (under a key with two index
/// levels, the second its own: `vehicle:<id>:`).
#[derive(Clone, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    make: String,
    model: String,
    price: u32,
}

/// A large value: 16 KiB of text.
#[derive(Clone, Serialize, Deserialize)]
struct Page {
    id: u64,
    body: String,
}

#[cached(key = "vehicle:<id>:spec", ttl = "1h", cache = cache)]
async fn vehicle(cache: &Cache, id: u64) -> Vehicle {
    vehicle_value(id)
}

fn vehicle_value(id: u64) -> Vehicle {
    Vehicle { id, make: "Volkswagen".into(), model: format!("Golf {}", id % 10), price: 19_990 }
}

#[cached(key = "dealer:<dealer>:page:<id>", ttl = "1h", cache = cache)]
async fn page(cache: &Cache, dealer: u64, id: u64) -> Page {
    let _ = dealer;
    page_value(id)
}

fn page_value(id: u64) -> Page {
    Page { id, body: format!("{id:>16384}") }
}

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("kB");
    kib * 1024
}

/// Peak RSS growth over a baseline, sampled while filling.
struct Meter {
    baseline: u64,
    peak: u64,
}

impl Meter {
    fn start() -> Meter {
        let baseline = rss();
        Meter { baseline, peak: baseline }
    }

    fn sample(&mut self) {
        self.peak = self.peak.max(rss());
    }

    fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.baseline)
    }
}

/// Fills `cache` with `small` small entries, then `large` large ones (16 KiB, two index
/// levels per key), through `#[cached]` (each value with its typed copy) and `set`.
async fn fill(cache: &Cache, small: u64, large: u64, meter: &mut Meter) {
    for id in 0..small {
        vehicle(cache, id).await;
        if id % 5_000 == 0 {
            meter.sample();
        }
    }
    meter.sample();
    for id in 0..large {
        page(cache, id % 100, id).await;
        if id % 32 == 0 {
            let body = format!("{id:>16384}");
            cache.set(&format!("raw:{id}"), &body, Duration::from_secs(3600)).await.unwrap();
            meter.sample();
        }
    }
    meter.sample();
}

/// `memory_capacity(8 MiB)` filled with 100,000 small entries, or with 1,000 large ones
/// (in separate processes: see the module docs for the two in one process).
async fn memory_case(small: u64, large: u64) -> (u64, u64) {
    let setting = 8 * MIB;
    let cache = Cache::builder().memory_capacity(setting).build().await.unwrap();
    vehicle(&cache, u64::MAX).await; // warm up
    let mut meter = Meter::start();
    fill(&cache, small, large, &mut meter).await;
    (setting, meter.growth())
}

/// Run by hand, for the memory store's `ENTRY_OVERHEAD`: `entries` values of a `u64` under
/// `k:<n>` in a store of 1 GiB (nothing evicted), so the RSS growth per entry is what one
/// costs (docs/benchmarks.md).
async fn memory_calibrate_case(entries: u64) -> (u64, u64) {
    let setting = 1 << 30;
    let cache = Cache::builder().memory_capacity(setting).build().await.unwrap();
    let ttl = Duration::from_secs(3600);
    cache.set("warm", &0_u64, ttl).await.unwrap();
    let mut meter = Meter::start();
    for n in 0..entries {
        cache.set(&format!("k:{n}"), &n, ttl).await.unwrap();
        if n % 5_000 == 0 {
            meter.sample();
        }
    }
    meter.sample();
    println!("memory: RSS grew {} bytes per entry", meter.growth() / entries);
    (setting, meter.growth())
}

/// `near_cache(setting)` filled by `small` Redis hits of small values, then `large` of
/// large ones.
async fn near_case(setting: u64, small: u64, large: u64) -> (u64, u64) {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis(server.url())
        .prefix("mb:")
        .near_cache(setting)
        .build()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.near_cache_live() {
        assert!(Instant::now() < deadline, "tracking never became live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vehicle(&cache, u64::MAX).await;
    // Redis holds the values first (pipelined plain JSON, as a previous release wrote), so
    // that each `#[cached]` call below is one Redis hit that fills the near cache.
    let mut plain = server.connection().await;
    let mut meter = Meter::start();
    for chunk in (0..small).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for &id in chunk {
            let json = serde_json::to_string(&vehicle_value(id)).unwrap();
            pipe.cmd("SET").arg(format!("mb:vehicle:{id}:spec")).arg(json).arg("EX").arg(3600);
        }
        pipe.query_async::<()>(&mut plain).await.unwrap();
    }
    for id in 0..large {
        let json = serde_json::to_string(&page_value(id)).unwrap();
        let key = format!("mb:dealer:{}:page:{id}", id % 100);
        redis::cmd("SET")
            .arg(key)
            .arg(json)
            .arg("EX")
            .arg(3600)
            .query_async::<()>(&mut plain)
            .await
            .unwrap();
    }
    fill(&cache, small, large, &mut meter).await;
    let (entries, bytes) = cache.near_cache_size().expect("a near cache");
    assert!(entries > 0, "the near cache was filled");
    println!(
        "near: {entries} entries weighed {} bytes each; RSS grew {} bytes per entry",
        bytes / entries,
        meter.growth() / entries
    );
    (setting, meter.growth())
}

/// 400,000 distinct keys on the in-process limiter, an hour's window each.
async fn rate_limit_case() -> (u64, u64) {
    let cache = Cache::memory();
    cache.rate_limit("warm", 10, Duration::from_secs(3600)).await.unwrap();
    let mut meter = Meter::start();
    for i in 0..400_000_u64 {
        let decision =
            cache.rate_limit(&format!("client:{i}"), 10, Duration::from_secs(3600)).await.unwrap();
        assert!(decision.allowed);
        if i % 20_000 == 0 {
            meter.sample();
        }
    }
    meter.sample();
    // The bound: `LOCAL_LIMITER_BYTES`, 16 MiB.
    (16 * MIB, meter.growth())
}

async fn run_case(name: &str) -> (u64, u64) {
    match name {
        "memory_small" => memory_case(100_000, 0).await,
        "memory_large" => memory_case(0, 1_000).await,
        "memory_both" => memory_case(100_000, 1_000).await,
        "near" => near_case(4 * MIB, 30_000, 400).await,
        // Run by hand, for the near cache's `ENTRY_OVERHEAD`: nothing evicted, so the RSS
        // growth per entry is what one costs (docs/benchmarks.md).
        "near_calibrate" => near_case(1 << 30, 50_000, 0).await,
        "memory_calibrate" => memory_calibrate_case(50_000).await,
        "rate_limit" => rate_limit_case().await,
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn entries_stay_within_their_settings() {
    if let Ok(name) = std::env::var(CASE_VAR) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let started = Instant::now();
        let (setting, growth) = runtime.block_on(run_case(&name));
        println!(
            "case={name} setting={setting} growth={growth} ratio={:.2} took={:?}",
            growth as f64 / setting as f64,
            started.elapsed()
        );
        return;
    }
    let mut failures = Vec::new();
    for name in ["memory_small", "memory_large", "near", "rate_limit"] {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "entries_stay_within_their_settings",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CASE_VAR, name)
            .output()
            .expect("the case runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "case {name} failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|line| line.find("case=").map(|at| &line[at..]))
            .expect("a report");
        println!("{line}");
        let field = |key: &str| -> u64 {
            let prefix = format!("{key}=");
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(prefix.as_str()))
                .and_then(|value| value.parse().ok())
                .expect("a number")
        };
        let (setting, growth) = (field("setting"), field("growth"));
        let bound = setting + setting / 2 + ALLOWANCE;
        if growth > bound {
            failures.push(format!(
                "{name}: RSS grew {} MiB, over 1.5 x {} MiB + {} MiB",
                growth / MIB,
                setting / MIB,
                ALLOWANCE / MIB
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
