//! `self: Arc<Self>` methods under every attribute, a background body included.

use std::sync::Arc;

use cache_runtime::{cache_put, cached, invalidates, rate_limit, Cache, RateLimited};

struct Service {
    cache: Cache,
    rate: u64,
}

impl Service {
    #[cached(key = "price:<self.rate>:<id>", ttl = "1m", cache = self.cache)]
    async fn price(self: Arc<Self>, id: u64) -> u64 {
        id * self.rate
    }

    #[cached(key = "fresh:<id>", ttl = "1m", refresh = "10s", cache = self.cache)]
    async fn fresh(self: Arc<Self>, id: u64) -> u64 {
        id * self.rate
    }

    #[cache_put(key = "price:<self.rate>:<id>", ttl = "1m", cache = self.cache)]
    async fn set(self: Arc<Self>, id: u64) -> u64 {
        id
    }

    #[invalidates("price:*", cache = self.cache)]
    async fn clear(self: Arc<Self>) {}

    #[rate_limit(key = "limited", limit = 5, per = "1m", cache = self.cache)]
    async fn limited(self: Arc<Self>) -> Result<(), RateLimited> {
        Ok(())
    }
}

fn main() {
    let service = Arc::new(Service { cache: Cache::memory(), rate: 2 });
    drop(service.clone().price(1));
    drop(service.clone().fresh(1));
    drop(service.clone().set(1));
    drop(service.clone().clear());
    drop(service.limited());
}
