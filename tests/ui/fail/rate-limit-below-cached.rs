use cache_runtime::{cached, rate_limit, RateLimited};

// Below `#[cached]`, the limiter would run before the cache lookup and charge hits.
#[cached(key = "price:<id>", ttl = "1m")]
#[rate_limit(key = "pricing-api", limit = 5, per = "1m")]
async fn price(id: u64) -> Result<u64, RateLimited> {
    Ok(id * 100)
}

fn main() {
    let _ = price(7);
}
