//! A worker process for the cross-process rate-limit test (the same protocol as
//! `lock_worker`, driven by [`cache_tests::lock_workers::LockWorker`]): `TASKS` tasks
//! (default 50) hammer one `#[rate_limit(limit = 100, per = "1s")]` function on the key
//! `hammer:<KEY_ID>` against `REDIS_URL`, from the moment a line arrives on stdin for
//! `DURATION_MS` (default 5000).
//!
//! It prints one line per admitted call, `<unix time µs> admitted` (taken when the call
//! returned), then `<elapsed µs> refused=<n>,errors=<n>`.

use std::io::BufRead as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_runtime::{rate_limit, Cache, RateLimited};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Body runs: calls the limiter admitted.
static BODY_RUNS: AtomicU64 = AtomicU64::new(0);

#[rate_limit(key = "hammer:<id>", limit = 100, per = "1s", cache = cache)]
async fn hammered(cache: &Cache, id: u64) -> Result<(), RateLimited> {
    BODY_RUNS.fetch_add(1, Relaxed);
    Ok(())
}

#[tokio::main]
async fn main() {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL");
    let tasks = env_u64("TASKS", 50);
    let key_id = env_u64("KEY_ID", 1);
    let duration = Duration::from_millis(env_u64("DURATION_MS", 5000));
    let cache = Cache::builder().redis(url.as_str()).prefix("rateworker:").build().await.unwrap();
    // Connect (and load the script) before the start signal, as a running service would.
    assert!(cache.health().await.reachable, "Redis is not reachable");
    cache.rate_limit("warm-up", 1, Duration::from_millis(1)).await.unwrap();
    println!("ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");

    let started = Instant::now();
    let deadline = started + duration;
    let callers: Vec<_> = (0..tasks)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let (mut admitted, mut refused) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    match hammered(&cache, key_id).await {
                        Ok(()) => admitted.push(
                            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros(),
                        ),
                        Err(limited) => {
                            assert_eq!(limited.remaining, 0);
                            assert!(limited.retry_after <= Duration::from_secs(1), "{limited:?}");
                            refused += 1;
                        }
                    }
                    tokio::task::yield_now().await;
                }
                (admitted, refused)
            })
        })
        .collect();
    let mut refused = 0;
    let mut admitted = 0;
    for caller in callers {
        let (times, refusals) = caller.await.expect("caller panicked");
        refused += refusals;
        admitted += times.len() as u64;
        for time in times {
            println!("{time} admitted");
        }
    }
    assert_eq!(admitted, BODY_RUNS.load(Relaxed), "every admitted call ran the body once");
    let stats = cache.stats_of("hammered");
    assert_eq!((stats.rate_allowed, stats.rate_limited), (admitted, refused), "{stats:?}");
    println!("{} refused={refused},errors={}", started.elapsed().as_micros(), stats.errors);
}
