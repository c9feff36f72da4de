use cache_runtime::cached;

#[cached(key = "price:<id>", ttl = "15m", timeout = "200ms")]
async fn price(id: u64) -> Result<u32, String> {
    Ok(id as u32)
}

fn main() {
    let _ = price(1);
}
