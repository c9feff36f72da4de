//! `near = false` opts one function out of the cache's near cache; on a memory cache it
//! changes nothing.

use cache_runtime::{cached, default_cache};

#[cached(key = "vehicle:<id>", ttl = "15m", near = false)]
async fn get_vehicle(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(key = "dealer:<id>", ttl = "15m", near = true, lock)]
async fn get_dealer(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        assert_eq!(get_vehicle(1).await, Some(1));
        assert_eq!(get_vehicle(1).await, Some(1));
        assert_eq!(get_dealer(2).await, Some(2));
        assert_eq!(default_cache().stats_of("get_vehicle").hits, 1);
        assert_eq!(default_cache().stats_of("get_vehicle").near_hits, 0);
    });
}
