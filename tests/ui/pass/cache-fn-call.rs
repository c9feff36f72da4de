//! `cache = some_fn()`: a function returning the cache, by value or by reference.

use std::sync::OnceLock;

use cache_runtime::{cached, Cache};

fn vehicles_cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::memory)
}

fn fresh_cache() -> Cache {
    vehicles_cache().clone()
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = vehicles_cache())]
async fn by_reference(id: u64) -> u64 {
    id + 1
}

#[cached(key = "dealer:<id>", ttl = "15m", cache = fresh_cache())]
async fn by_value(id: u64) -> u64 {
    id + 2
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(by_reference(1).await, 2);
        assert_eq!(by_reference(1).await, 2);
        assert_eq!(by_value(1).await, 3);
        assert_eq!(by_value(1).await, 3);
        assert_eq!(vehicles_cache().stats_of("by_reference").hits, 1);
        assert_eq!(vehicles_cache().stats_of("by_value").hits, 1);
    });
}
