use cache_runtime::cache_put;

#[cache_put(key = "vehicle:<id>", ttl = "15m", lock)]
async fn save_vehicle(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {
    let _ = save_vehicle(1);
}
