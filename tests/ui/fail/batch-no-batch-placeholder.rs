use std::collections::HashMap;

use cache_runtime::cached_batch;

#[cached_batch(key = "vehicle:<id>", ttl = "15m")]
async fn vehicles(id: u64) -> HashMap<u64, String> {
    HashMap::from([(id, String::new())])
}

fn main() {
    let _ = vehicles(1);
}
