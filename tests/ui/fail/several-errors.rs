use cache_runtime::cached;

#[cached(key = "vehicle:<vehicle_id>", ttl = "15x", expire = "1h", lock = true)]
fn get_vehicle(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {
    let _ = get_vehicle(42);
}
