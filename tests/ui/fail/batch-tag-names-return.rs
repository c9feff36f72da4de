use std::collections::HashMap;

use cache_runtime::cached_batch;

#[cached_batch(key = "vehicle:<ids>", ttl = "15m", tags = ["make:<return.make>"])]
async fn vehicles(ids: &[u64]) -> HashMap<u64, String> {
    ids.iter().map(|id| (*id, id.to_string())).collect()
}

fn main() {
    let _ = vehicles(&[1]);
}
