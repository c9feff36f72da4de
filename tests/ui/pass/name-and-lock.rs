//! `name = "..."` (the name in stats and metrics) and the `lock` flag.

use cache_runtime::{cached, default_cache};

#[cached(key = "vehicle:<id>", ttl = "500ms", name = "vehicle_by_id", lock)]
async fn get_vehicle(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(lock, name = "dealer_by_id", ttl = "1m30s", key = "dealer:<id>")]
async fn get_dealer(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(get_vehicle(1).await, Some(1));
        assert_eq!(get_vehicle(1).await, Some(1));
        assert_eq!(get_dealer(2).await, Some(2));
        assert_eq!(default_cache().stats_of("vehicle_by_id").hits, 1);
        assert_eq!(default_cache().stats_of("dealer_by_id").misses, 1);
        assert_eq!(default_cache().stats_of("get_vehicle").hits, 0);
    });
}
