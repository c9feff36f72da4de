//! Accuracy of `#[rate_limit(limit = 100, per = "1s")]` under saturation (issue 14): many
//! callers hammer one key for 5 s; the exact sliding window admits 100 calls per second,
//! so 500 in all (up to 600 when the callers' 5 s do not start at the same instant: a sixth
//! window opens for the late ones).
//!
//! - Redis: 4 OS processes (`rate_worker`) x 50 tasks on one private `redis-server`.
//! - Memory store: one process, 200 tasks.
//!
//! Both also check that no window of 0.9 s held more than 100 admitted calls: the times are
//! taken by the callers when a call returned, which can be tens of milliseconds after the
//! decision on a loaded machine, so a full second would be checked with a false alarm now
//! and then. A fixed window (200 calls around a boundary) or GCRA (up to 199 in a second
//! after the start) would still fail it.
//!
//! ```text
//! cargo test -p cache-tests --test rate_limit_accuracy -- --nocapture
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cache_runtime::{rate_limit, Cache, RateLimited};
use cache_tests::lock_workers::LockWorker;
use cache_tests::RedisServer;

const RUN: Duration = Duration::from_secs(5);
const ADMITTED: std::ops::RangeInclusive<usize> = 500..=600;
/// The windows checked for more than 100 admitted calls, in µs.
const WINDOW_CHECKED: u128 = 900_000;

/// The most calls found in any window of `window` among sorted times (µs).
fn busiest_window(times: &[u128], window: u128) -> usize {
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    busiest
}

#[test]
fn redis_four_processes_of_fifty_tasks_admit_100_per_second() {
    let redis = RedisServer::start();
    let exe = env!("CARGO_BIN_EXE_rate_worker");
    let env = [("TASKS", "50"), ("DURATION_MS", "5000"), ("KEY_ID", "7")];
    let mut workers: Vec<LockWorker> =
        (0..4).map(|_| LockWorker::spawn(exe, &redis.url(), &env)).collect();
    let started = Instant::now();
    workers.iter_mut().for_each(LockWorker::go);
    let (mut times, mut refused, mut errors) = (Vec::new(), 0, 0);
    for worker in workers {
        for (micros, outcome) in worker.results() {
            if outcome == "admitted" {
                times.push(micros.as_micros());
            } else {
                let counts: Vec<u64> = outcome
                    .split(',')
                    .map(|part| part.split_once('=').unwrap().1.parse().unwrap())
                    .collect();
                refused += counts[0];
                errors += counts[1];
            }
        }
    }
    let took = started.elapsed();
    times.sort_unstable();
    let busiest = busiest_window(&times, WINDOW_CHECKED);
    println!(
        "redis: 4 processes x 50 tasks for 5 s: {} admitted, {refused} refused, {errors} errors, busiest 0.9 s window {busiest}, test took {took:.2?}",
        times.len()
    );
    assert!(ADMITTED.contains(&times.len()), "{} admitted", times.len());
    assert!(busiest <= 100, "{busiest} calls admitted within one second");
    assert!(refused > 10 * times.len() as u64, "the callers were not hammering: {refused}");
    assert_eq!(errors, 0);
    assert!(took < Duration::from_secs(7), "{took:?}");
}

static CACHE: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Cache::memory);
static BODY_RUNS: AtomicU64 = AtomicU64::new(0);

#[rate_limit(key = "hammer:<id>", limit = 100, per = "1s", cache = &*CACHE)]
async fn hammered(id: u64) -> Result<(), RateLimited> {
    BODY_RUNS.fetch_add(1, Relaxed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_two_hundred_tasks_admit_100_per_second() {
    let started = Instant::now();
    let deadline = started + RUN;
    let callers: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                let (mut admitted, mut refused) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    match hammered(7).await {
                        Ok(()) => admitted.push(started.elapsed().as_micros()),
                        Err(_) => refused += 1,
                    }
                    tokio::task::yield_now().await;
                }
                (admitted, refused)
            })
        })
        .collect();
    let (mut times, mut refused) = (Vec::new(), 0);
    for caller in callers {
        let (admitted, refusals) = caller.await.unwrap();
        times.extend(admitted);
        refused += refusals;
    }
    times.sort_unstable();
    let busiest = busiest_window(&times, WINDOW_CHECKED);
    println!(
        "memory: 200 tasks for 5 s: {} admitted, {refused} refused, busiest 0.9 s window {busiest}",
        times.len()
    );
    assert!(ADMITTED.contains(&times.len()), "{} admitted", times.len());
    assert_eq!(times.len() as u64, BODY_RUNS.load(Relaxed));
    assert!(busiest <= 100, "{busiest} calls admitted within one second");
    let stats = CACHE.stats_of("hammered");
    assert_eq!((stats.rate_allowed, stats.rate_limited), (times.len() as u64, refused));
}
