use cache_runtime::{rate_limit, RateLimited};

#[rate_limit(key = "login:<ip>", per = "1m")]
async fn login(ip: u32) -> Result<(), RateLimited> {
    let _ = ip;
    Ok(())
}

fn main() {
    let _ = login(7);
}
