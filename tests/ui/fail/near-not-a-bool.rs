use cache_runtime::cached;

#[cached(key = "vehicle:<id>", ttl = "15m", near = "no")]
async fn get_vehicle(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {
    let _ = get_vehicle(42);
}
