//! A `mut` parameter, used in the key and changed in the body (the key is rendered first).

use cache_runtime::{cached, Cache};

thread_local! {
    static CACHE: Cache = Cache::memory();
}

#[cached(key = "page:<page>", ttl = "15m", cache = CACHE.with(Clone::clone))]
async fn page(mut page: u32, mut size: u32) -> Vec<u32> {
    if page == 0 {
        page = 1;
    }
    size = size.min(3);
    ((page - 1) * size..page * size).collect()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(page(0, 10).await, vec![0, 1, 2]);
        assert_eq!(page(2, 2).await, vec![2, 3]);
        let cache = CACHE.with(Clone::clone);
        assert_eq!(
            cache.get::<Vec<u32>>("page:0").await.unwrap(),
            Some(vec![0, 1, 2])
        );
    });
}
