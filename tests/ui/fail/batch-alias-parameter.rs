use std::collections::HashMap;

use cache_runtime::cached_batch;

type Ids = Vec<u64>;

#[cached_batch(key = "vehicle:<ids>", ttl = "15m")]
async fn vehicles(ids: Ids) -> HashMap<u64, String> {
    ids.iter().map(|id| (*id, id.to_string())).collect()
}

fn main() {
    let _ = vehicles(vec![1]);
}
