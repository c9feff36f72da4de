//! Waiters' extra latency over the body's duration with `#[cached(lock)]`: 4 processes x
//! 100 callers of one cold key whose body takes 200 ms, several rounds on fresh keys. Prints
//! the median and p99 caller latency minus the body's duration (goal: median within 25 ms).
//!
//! ```text
//! cargo bench -p cache-tests --bench stampede_latency
//! ```

use std::time::Duration;

use cache_tests::lock_workers::Stampede;
use cache_tests::RedisServer;

const BODY_MS: u64 = 200;
const ROUNDS: u64 = 7;

fn main() {
    if std::env::args().any(|arg| arg == "--list" || arg == "--test") {
        return; // `cargo test --benches` runs benches as tests: nothing to check here.
    }
    let server = RedisServer::start();
    let body = Duration::from_millis(BODY_MS);
    let (mut medians, mut p99s) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let stampede = Stampede::run(
            env!("CARGO_BIN_EXE_lock_worker"),
            &server.url(),
            4,
            100,
            BODY_MS,
            100 + round,
        );
        assert!(stampede.outcomes.iter().all(|outcome| outcome.starts_with("ok:")));
        let (median, p99) = (stampede.quantile(0.5) - body, stampede.quantile(0.99) - body);
        println!("round {round}: median +{median:?}, p99 +{p99:?}");
        medians.push(median);
        p99s.push(p99);
    }
    medians.sort();
    p99s.sort();
    let middle = medians.len() / 2;
    println!(
        "4 processes x 100 callers, {BODY_MS} ms body, median of {ROUNDS} rounds: median caller +{:?}, p99 caller +{:?} over the body",
        medians[middle], p99s[middle]
    );
}
