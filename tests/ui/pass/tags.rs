//! `tags` on `#[cached]` and `#[cache_put]`, `#[invalidates]` with tags alone and with keys,
//! on free functions and methods, and `check_invalidations` passing for declared tags.

use cache_runtime::{cache_put, cached, invalidates, Cache};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Filter {
    make: String,
    max_price: u32,
}

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(
        key = "search:<f.make>:<f.max_price>",
        ttl = "15m",
        tags = ["make:<f.make>", "listings"],
        cache = self.cache
    )]
    async fn search(&self, f: &Filter) -> Vec<u64> {
        vec![u64::from(f.max_price)]
    }

    #[cache_put(key = "vehicle:<id>", ttl = "15m", tags = ["vehicle:<id>", "make:<make>"], cache = self.cache)]
    async fn save(&self, id: u64, make: &str) -> Result<u64, String> {
        let _ = make;
        Ok(id)
    }

    #[invalidates(tags = ["listings"], cache = self.cache)]
    async fn republish(&self) {}

    #[invalidates("vehicle:<id>", tags = ["make:<make>", "vehicle:<id>"], cache = self.cache)]
    async fn reprice(&self, id: u64, make: &str) -> Result<(), String> {
        let _ = (id, make);
        Ok(())
    }
}

#[cached(key = "free:<n>", ttl = "1m", tags = ["n:<n>"], stale = "1h", lock)]
async fn free(n: u32) -> Option<u32> {
    Some(n)
}

#[tokio::main]
async fn main() {
    let service = Service { cache: Cache::memory() };
    let ford = Filter { make: "ford".into(), max_price: 20_000 };
    assert_eq!(service.search(&ford).await, vec![20_000]);
    service.save(1, "ford").await.unwrap();
    service.reprice(1, "ford").await.unwrap();
    service.republish().await;
    assert_eq!(free(3).await, Some(3));
    cache_runtime::check_invalidations().unwrap();
}
