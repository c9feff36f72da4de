//! Rate limits shared by every process on the store: `#[rate_limit]` on a login (a refused
//! call never runs the body), above `#[cached]` on a paid pricing API (cache hits are free),
//! and `Cache::rate_limit` by hand, with what an HTTP 429 answer carries.
//!
//! ```text
//! cargo run -p examples --bin rate_limit
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin rate_limit
//! ```

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cache_runtime::{cached, rate_limit, Cache, RateLimited};

#[derive(Debug)]
enum LoginError {
    TooManyAttempts(RateLimited),
}

impl From<RateLimited> for LoginError {
    fn from(limited: RateLimited) -> Self {
        LoginError::TooManyAttempts(limited)
    }
}

static PASSWORD_CHECKS: AtomicU32 = AtomicU32::new(0);

/// At most 3 attempts per second and client address.
#[rate_limit(key = "login:<ip>", limit = 3, per = "1s", cache = cache)]
async fn login(cache: &Cache, ip: IpAddr, user: &str) -> Result<String, LoginError> {
    PASSWORD_CHECKS.fetch_add(1, Ordering::SeqCst); // the expensive part: never over the limit
    Ok(format!("session of {user}"))
}

static PRICING_CALLS: AtomicU32 = AtomicU32::new(0);

/// The pricing partner allows 2 calls a minute in all: misses are charged, hits are free.
#[rate_limit(key = "pricing-api", limit = 2, per = "1m", cache = cache)]
#[cached(key = "price:<vehicle>", ttl = "10m", cache = cache)]
async fn market_price(cache: &Cache, vehicle: u64) -> Result<u64, RateLimited> {
    PRICING_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(15_000 + vehicle * 10)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A prefix of its own per run: limiters outlive `clear()`, so a rerun starts afresh.
    let prefix = format!("recipes:rate_limit:{}:", std::process::id());
    let cache = examples::cache_from_env(&prefix).await?;
    let ip: IpAddr = "203.0.113.9".parse()?;

    // 1. The fourth attempt within a second is refused before the body runs.
    for attempt in 1..=4 {
        match login(&cache, ip, "rosa").await {
            Ok(session) => println!("attempt {attempt}: {session}"),
            Err(LoginError::TooManyAttempts(limited)) => {
                println!("attempt {attempt}: refused, retry after {:?}", limited.retry_after);
                assert_eq!(attempt, 4);
                assert!(limited.retry_after <= Duration::from_secs(1));
                // Exactly when the first attempt leaves the window, one more is admitted.
                tokio::time::sleep(limited.retry_after + Duration::from_millis(10)).await;
            }
        }
    }
    assert_eq!(PASSWORD_CHECKS.load(Ordering::SeqCst), 3);
    login(&cache, ip, "rosa").await.map_err(|e| format!("{e:?}"))?;
    println!("attempt 5, after waiting `retry_after`: admitted");

    // 2. Above `#[cached]`: only misses reach the limiter.
    for vehicle in [1, 1, 1, 2, 2] {
        println!("price of {vehicle}: {}", market_price(&cache, vehicle).await?);
    }
    let refused = market_price(&cache, 3).await.unwrap_err();
    println!("price of 3: refused ({refused}); hits of 1 and 2 still answer");
    assert_eq!(market_price(&cache, 1).await?, 15_010);
    assert_eq!(PRICING_CALLS.load(Ordering::SeqCst), 2);

    // 3. By hand: what an HTTP handler needs for `429` and the `RateLimit-*` headers
    // (whole seconds, rounded up).
    let seconds = |duration: Duration| duration.as_millis().div_ceil(1000);
    for _ in 0..3 {
        let decision = cache.rate_limit("export:dealer-7", 2, Duration::from_secs(60)).await?;
        println!(
            "export: allowed={} RateLimit-Remaining: {} RateLimit-Reset: {} Retry-After: {}",
            decision.allowed,
            decision.remaining,
            seconds(decision.reset_after),
            seconds(decision.retry_after),
        );
    }
    let stats = cache.stats_of("login");
    println!("login: {} admitted, {} refused", stats.rate_allowed, stats.rate_limited);
    assert_eq!((stats.rate_allowed, stats.rate_limited), (4, 1));
    Ok(())
}
