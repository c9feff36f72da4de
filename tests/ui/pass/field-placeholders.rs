//! `<param.field>` and `<param.field.0>` placeholders: named fields and tuple indices, through
//! references and tuple parameters.

use cache_runtime::{cached, Cache};
use serde::{Deserialize, Serialize};

struct VehicleId(u64);

struct Dealer {
    id: u32,
}

struct Vehicle {
    id: VehicleId,
    dealer: Dealer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Price {
    cents: u64,
}

#[cached(key = "price:<v.dealer.id>:<v.id.0>", ttl = "15m", cache = CACHE.with(Clone::clone))]
async fn price(v: &Vehicle) -> Price {
    Price {
        cents: v.id.0 * 100,
    }
}

#[cached(key = "pair:<pair.0>:<pair.1>", ttl = "15m", cache = CACHE.with(Clone::clone))]
async fn pair(pair: (u64, &str)) -> u64 {
    pair.0
}

thread_local! {
    static CACHE: Cache = Cache::memory();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let v = Vehicle {
            id: VehicleId(42),
            dealer: Dealer { id: 7 },
        };
        assert_eq!(price(&v).await, Price { cents: 4200 });
        assert_eq!(pair((3, "x:y")).await, 3);
        let cache = CACHE.with(Clone::clone);
        assert_eq!(
            cache.get::<Price>("price:7:42").await.unwrap(),
            Some(Price { cents: 4200 })
        );
        assert_eq!(cache.get::<u64>("pair:3:x%3Ay").await.unwrap(), Some(3));
    });
}
