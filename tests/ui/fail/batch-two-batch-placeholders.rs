use std::collections::HashMap;

use cache_runtime::cached_batch;

#[cached_batch(key = "pair:<left>:<right>", ttl = "15m")]
async fn pairs(left: &[u64], right: Vec<u64>) -> HashMap<u64, String> {
    let _ = (left, right);
    HashMap::new()
}

fn main() {
    let _ = pairs(&[1], vec![2]);
}
