//! A method taking `&self`, with `cache = self.cache` and a `<self.field>` placeholder.

use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::{cached, Cache};

struct VehicleService {
    cache: Cache,
    region: String,
    loads: AtomicU32,
}

impl VehicleService {
    #[cached(key = "vehicle:<self.region>:<id>", ttl = "15m", cache = self.cache)]
    async fn model(&self, id: u64) -> Option<String> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Some(format!("model-{id}-{}", self.region))
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = Cache::memory();
        let eu = VehicleService {
            cache: cache.clone(),
            region: "eu".into(),
            loads: AtomicU32::new(0),
        };
        let us = VehicleService {
            cache: cache.clone(),
            region: "us".into(),
            loads: AtomicU32::new(0),
        };
        assert_eq!(eu.model(7).await.as_deref(), Some("model-7-eu"));
        assert_eq!(eu.model(7).await.as_deref(), Some("model-7-eu"));
        assert_eq!(us.model(7).await.as_deref(), Some("model-7-us"));
        assert_eq!(eu.loads.load(Ordering::SeqCst), 1);
        assert_eq!(us.loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats_of("model").hits, 1);
        assert_eq!(cache_runtime::default_cache().stats_of("model").hits, 0);
    });
}
