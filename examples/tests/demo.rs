//! Runs the built `vehicles demo` with a small workload against a private Redis and a fresh
//! SQLite file, and checks its machine-readable report.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use cache_tests::RedisServer;
use common::TempDir;

/// The `key=value` pairs of the demo's `REPORT ...` line.
fn report(stdout: &str) -> HashMap<String, f64> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("REPORT "))
        .unwrap_or_else(|| panic!("no REPORT line in:\n{stdout}"));
    line.split_whitespace()
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("key=value");
            let value = value.parse().unwrap_or_else(|_| panic!("{pair}: not a number"));
            (key.to_owned(), value)
        })
        .collect()
}

fn run_demo(redis: Option<&RedisServer>, requests: usize) -> HashMap<String, f64> {
    let dir = TempDir::new("demo");
    let mut command = Command::new(env!("CARGO_BIN_EXE_vehicles"));
    command
        .args(["demo", "--requests", &requests.to_string(), "--database-url"])
        .arg(dir.sqlite_url())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    if let Some(redis) = redis {
        command.env("REDIS_URL", redis.url());
    }
    let started = Instant::now();
    let output = command.output().expect("cannot run the vehicles binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "vehicles demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{stdout}(in {:.1?})", started.elapsed());
    report(&stdout)
}

fn check(report: &HashMap<String, f64>, requests: usize) {
    assert_eq!(report["requests"], requests as f64);
    assert!(report["hit_rate"] > 0.0, "{report:?}");
    assert!(
        report["db_queries"] < requests as f64,
        "the cached run sent fewer queries than requests: {report:?}"
    );
    assert!(report["db_queries"] < report["db_queries_uncached"], "{report:?}");
    assert_eq!(report["burst_loads"], 1.0, "{report:?}");
    // A missing id is read from the database once, then served by the cached absence
    // (`absent_ttl`) for the other reads.
    assert!(report["absent_reads"] > 1.0, "{report:?}");
    assert_eq!(report["absent_queries"], 1.0, "negative caching: {report:?}");
    // Price changes invalidated keys, and no vehicle read through the cache afterwards
    // differs from the database.
    assert!(report["invalidated"] > 0.0, "{report:?}");
    assert_eq!(report["stale_reads"], 0.0, "{report:?}");
    assert_eq!(report["errors"], 0.0, "{report:?}");
}

#[test]
fn demo_against_redis_and_sqlite() {
    let redis = RedisServer::start();
    let report = run_demo(Some(&redis), 2_000);
    check(&report, 2_000);
}

#[test]
fn demo_with_the_memory_store() {
    let report = run_demo(None, 2_000);
    check(&report, 2_000);
}
