//! Invalidation by key and by pattern: `#[invalidates]` after a write removes the exact keys
//! it names and every key matching its globs; placeholder values are encoded, so a value
//! can never widen a pattern.
//!
//! ```text
//! cargo run -p examples --bin invalidate_pattern
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin invalidate_pattern
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::{cached, invalidates, Cache};

static LOADS: AtomicU32 = AtomicU32::new(0);

#[cached(key = "dealer:<dealer>:vehicles", ttl = "5m", cache = cache)]
async fn dealer_vehicles(cache: &Cache, dealer: &str) -> Vec<u64> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    vec![1, 2, 3]
}

#[cached(key = "dealer:<dealer>:reviews", ttl = "1h", cache = cache)]
async fn dealer_reviews(cache: &Cache, dealer: &str) -> Vec<String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    vec![format!("{dealer} is great")]
}

#[cached(key = "homepage:<section>", ttl = "10m", cache = cache)]
async fn homepage(cache: &Cache, section: &str) -> Vec<u64> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    vec![section.len() as u64]
}

/// Everything of one dealer, plus every homepage section.
#[invalidates("dealer:<dealer>:*", "homepage:*", cache = cache)]
async fn dealer_updated(cache: &Cache, dealer: &str) -> Result<(), String> {
    let _ = dealer; // write the database here; on Err nothing is invalidated
    Ok(())
}

async fn warm(cache: &Cache) {
    for dealer in ["autos-perez", "motors-diaz", "*"] {
        dealer_vehicles(cache, dealer).await;
        dealer_reviews(cache, dealer).await;
    }
    for section in ["featured", "latest"] {
        homepage(cache, section).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = examples::cache_from_env("recipes:invalidate_pattern:").await?;
    cache.clear().await?;
    warm(&cache).await; // 8 keys
    assert_eq!(LOADS.swap(0, Ordering::SeqCst), 8);

    dealer_updated(&cache, "autos-perez").await?;
    warm(&cache).await;
    println!(
        "after dealer_updated(\"autos-perez\"): {} of 8 keys reloaded",
        LOADS.load(Ordering::SeqCst)
    );
    assert_eq!(LOADS.swap(0, Ordering::SeqCst), 4); // its 2 keys + 2 homepage sections

    // A dealer literally named "*" is encoded (`dealer:%2A:*`): it matches only itself.
    dealer_updated(&cache, "*").await?;
    warm(&cache).await;
    assert_eq!(LOADS.swap(0, Ordering::SeqCst), 4);

    // The same by hand; both return how many keys went.
    let removed = cache.invalidate("dealer:motors-diaz:reviews").await?
        + cache.invalidate_pattern("homepage:*").await?;
    println!("invalidate + invalidate_pattern removed {removed} keys");
    assert_eq!(removed, 3);

    // Fails on a pattern that can match no cached key (a typo such as "homepgae:*").
    cache_runtime::check_invalidations()?;
    Ok(())
}
