use cache_runtime::cached;

#[cached(key = "vehicle:<id>", ttl = "15m", tags = [])]
async fn vehicle(id: u64) -> u64 {
    id
}

fn main() {
    let _ = vehicle(1);
}
