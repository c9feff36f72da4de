use cache_runtime::cache_put;

#[cache_put(key = "vehicle:<id>", ttl = "15m", tags = ["listings", ""])]
async fn save(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {
    let _ = save(1);
}
