use cache_runtime::cached;

#[cached(key = "vehicle:<id>", ttl = "15m")]
async fn get_vehicle(id: u64) -> Option<u64> {
    let price = ;
    Some(id + price)
}

fn main() {
    let _ = get_vehicle(42);
}
