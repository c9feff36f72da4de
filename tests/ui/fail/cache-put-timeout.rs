use cache_runtime::cache_put;

#[cache_put(key = "price:<id>", ttl = "15m", stale = "1h", timeout = "200ms")]
async fn set_price(id: u64) -> Result<u32, String> {
    Ok(id as u32)
}

fn main() {
    let _ = set_price(1);
}
