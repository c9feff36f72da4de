use cache_runtime::cached;

#[cached(key = "#idx:vehicle:<id>", ttl = "15m")]
async fn vehicle(id: u64) -> u64 {
    id
}

fn main() {
    let _ = vehicle(42);
}
