use cache_runtime::{cached, rate_limit, RateLimited};

// Another attribute between them does not hide the order.
#[cached(key = "price:<id>", ttl = "1m")]
#[tracing::instrument]
#[rate_limit(key = "pricing-api", limit = 5, per = "1m")]
async fn price(id: u64) -> Result<u64, RateLimited> {
    Ok(id * 100)
}

fn main() {
    drop(price(7));
}
