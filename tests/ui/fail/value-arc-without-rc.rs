use std::sync::Arc;

use cache_runtime::cached;

// serde implements `Serialize` for `Arc<T>` only with its `rc` feature.
#[cached(key = "name:<id>", ttl = "1m")]
async fn name(id: u64) -> Arc<String> {
    Arc::new(id.to_string())
}

fn main() {
    drop(name(1));
}
