use std::collections::HashMap;

use cache_runtime::cached_batch;

#[cached_batch(key = "vehicle:<ids>", ttl = "15m")]
async fn vehicles(ids: &[u32]) -> Result<HashMap<u64, String>, String> {
    Ok(ids.iter().map(|id| (u64::from(*id), id.to_string())).collect())
}

fn main() {
    let _ = vehicles(&[1]);
}
