use cache_runtime::cached;

#[cached(key = "vehicle:*", ttl = "15m")]
async fn all_vehicles() -> Vec<u64> {
    vec![1, 2, 3]
}

fn main() {
    let _ = all_vehicles();
}
