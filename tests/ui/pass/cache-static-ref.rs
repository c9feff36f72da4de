//! `cache = &CACHE_REF`: a reference to a cache kept in a `LazyLock` static, deref-coerced
//! to `&Cache`.

use std::sync::LazyLock;

use cache_runtime::{cached, Cache};

static CACHE_REF: LazyLock<Cache> = LazyLock::new(Cache::memory);

#[cached(key = "vehicle:<id>", ttl = "15m", cache = &CACHE_REF)]
async fn get_vehicle(id: u64) -> u64 {
    id * 2
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(get_vehicle(21).await, 42);
        assert_eq!(get_vehicle(21).await, 42);
        assert_eq!(CACHE_REF.stats_of("get_vehicle").hits, 1);
    });
}
