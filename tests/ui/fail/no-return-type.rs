use cache_runtime::cached;

#[cached(key = "vehicle:<id>", ttl = "15m")]
async fn touch_vehicle(id: u64) {
    let _ = id;
}

fn main() {
    let _ = touch_vehicle(42);
}
