//! Cache-aside: read the cache, on a miss load from the database and store the value.
//!
//! `#[cached]` does it for a whole function; `Cache::get_or_load` does it for one block.
//!
//! ```text
//! cargo run -p examples --bin cache_aside
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin cache_aside
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cache_runtime::{cached, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    model: String,
    price: u32,
}

/// Stands in for the database: counts its queries.
static QUERIES: AtomicU32 = AtomicU32::new(0);

async fn query_vehicle(id: u64) -> Result<Option<Vehicle>, String> {
    QUERIES.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok((id <= 100).then(|| Vehicle {
        id,
        model: format!("Corolla #{id}"),
        price: 15_000 + id as u32,
    }))
}

/// On a hit the body does not run. `Ok(None)` (no such vehicle) and `Err` are not cached.
#[cached(key = "vehicle:<id>", ttl = "15m", cache = cache)]
async fn get_vehicle(cache: &Cache, id: u64) -> Result<Option<Vehicle>, String> {
    query_vehicle(id).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = examples::cache_from_env("recipes:cache_aside:").await?;
    cache.clear().await?; // start cold (Redis may hold an earlier run's values)

    let first = get_vehicle(&cache, 7).await?; // miss: one query
    let second = get_vehicle(&cache, 7).await?; // hit: no query
    assert_eq!(first, second);
    assert_eq!(get_vehicle(&cache, 999).await?, None); // unknown: not cached
    assert_eq!(get_vehicle(&cache, 999).await?, None); // so queried again
    println!("#[cached]: 4 calls, {} queries", QUERIES.load(Ordering::SeqCst));
    assert_eq!(QUERIES.load(Ordering::SeqCst), 3);

    // The same by hand, for code that is not a function of its own.
    let ttl = Duration::from_secs(60);
    for _ in 0..3 {
        let price: u32 = cache
            .get_or_load("price:7", ttl, || async {
                let v = query_vehicle(7).await?.ok_or("no vehicle 7")?;
                Ok::<_, Box<dyn std::error::Error>>(v.price)
            })
            .await?;
        assert_eq!(price, 15_007);
    }
    println!("get_or_load: 3 calls, {} query", QUERIES.load(Ordering::SeqCst) - 3);

    let stats = cache.stats_of("get_vehicle");
    println!("get_vehicle: hits {} misses {} loads {}", stats.hits, stats.misses, stats.loads);
    Ok(())
}
