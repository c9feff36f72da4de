//! `#[invalidates]` with exact keys and patterns, `#[cache_put]` write-through, both stacked
//! on one function, and `check_invalidations` passing for templates that match.

use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::{cache_put, cached, invalidates, Cache};
use serde::{Deserialize, Serialize};

static LOADS: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    price: u32,
}

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(key = "vehicle:<id>", ttl = "15m", cache = self.cache)]
    async fn vehicle(&self, id: u64) -> Result<Option<Vehicle>, String> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        Ok(Some(Vehicle { id, dealer_id: 7, price: 100 }))
    }

    #[cached(key = "dealer:<dealer_id>:vehicles", ttl = "5m", cache = self.cache)]
    async fn dealer_vehicles(&self, dealer_id: u64) -> Vec<u64> {
        vec![dealer_id]
    }

    #[cache_put(key = "vehicle:<v.id>", ttl = "15m", cache = self.cache)]
    #[invalidates("dealer:<v.dealer_id>:vehicles", "dealer:*", cache = self.cache)]
    async fn save(&self, v: Vehicle) -> Result<Vehicle, String> {
        Ok(v)
    }

    #[invalidates("vehicle:<id>", cache = self.cache, name = "delete")]
    async fn delete(&mut self, id: u64) {
        let _ = id;
    }
}

fn main() {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let mut service = Service { cache: Cache::memory() };
        service.vehicle(1).await.unwrap();
        service.dealer_vehicles(7).await;
        let saved = service.save(Vehicle { id: 1, dealer_id: 7, price: 90 }).await.unwrap();
        // Written through: a hit with the new price, no load.
        assert_eq!(service.vehicle(1).await.unwrap(), Some(saved));
        assert_eq!(LOADS.load(Ordering::SeqCst), 1);
        assert_eq!(service.cache.stats_of("save").invalidated, 1);
        service.delete(1).await;
        service.vehicle(1).await.unwrap();
        assert_eq!(LOADS.load(Ordering::SeqCst), 2);
        cache_runtime::check_invalidations().unwrap();
    });
}
