//! Stampede protection: 200 callers miss the same cold key at once; the slow body runs once.
//!
//! Within one process every `#[cached]` function shares concurrent misses (single flight).
//! `lock` extends that across processes on one Redis: one takes a lease and loads, the
//! others wait for the value to land. With `REDIS_URL` set, this program stands in for two
//! processes with two separate cache handles.
//!
//! ```text
//! cargo run -p examples --bin stampede_lock
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin stampede_lock
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};

static LOADS: AtomicU32 = AtomicU32::new(0);

/// An expensive aggregate, e.g. the homepage's "most viewed" section.
#[cached(key = "most-viewed:<day>", ttl = "10m", lock, cache = cache)]
async fn most_viewed(cache: &Cache, day: u32) -> Result<Vec<u64>, String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(vec![u64::from(day), 42, 7])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let first = examples::cache_from_env("recipes:stampede_lock:").await?;
    first.clear().await?;
    let mut handles = vec![first];
    if std::env::var_os("REDIS_URL").is_some() {
        // A second, independent handle: its own connection and in-process flights.
        handles.push(examples::cache_from_env("recipes:stampede_lock:").await?);
    }

    let started = Instant::now();
    let callers: Vec<_> = (0..200)
        .map(|i| {
            let cache = handles[i % handles.len()].clone();
            tokio::spawn(async move { most_viewed(&cache, 20_260_121).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await??, vec![20_260_121, 42, 7]);
    }
    let loads = LOADS.load(Ordering::SeqCst);
    println!(
        "200 concurrent callers on {} cache handle(s): {loads} load in {:.0?}",
        handles.len(),
        started.elapsed()
    );
    for (n, cache) in handles.iter().enumerate() {
        let s = cache.stats_of("most_viewed");
        println!(
            "  handle {n}: misses {} loads {} coalesced {} hits {}",
            s.misses, s.loads, s.coalesced, s.hits
        );
    }
    assert_eq!(loads, 1);
    Ok(())
}
