use cache_runtime::cached;

#[cached(key = "vehicle:<id>", ttl = "0s")]
async fn get_vehicle(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {
    let _ = get_vehicle(42);
}
