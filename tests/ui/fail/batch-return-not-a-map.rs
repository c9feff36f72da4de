use cache_runtime::cached_batch;

#[cached_batch(key = "vehicle:<ids>", ttl = "15m")]
async fn vehicles(ids: &[u64]) -> Vec<String> {
    ids.iter().map(u64::to_string).collect()
}

fn main() {
    let _ = vehicles(&[1]);
}
