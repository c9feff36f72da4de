//! The generated code raises no warning in the user's crate: one-line bodies, unused `_`
//! parameters, raw identifiers, pattern-bound placeholders, generic keys, `<return>`.
#![deny(warnings)]
#![deny(clippy::pedantic)]

use cache_runtime::{cache_put, cached, invalidates, Cache};
use serde::{Deserialize, Serialize};

#[derive(Clone)]
pub struct Pricing {
    cache: Cache,
    rate: u64,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Row {
    pub id: u64,
    pub dealer: u64,
}

impl Pricing {
    #[cached(key = "price:<id>", ttl = "1m", cache = self.cache)]
    pub async fn price(&self, id: u64) -> u64 { id * self.rate }

    #[cached(key = "refreshed:<id>", ttl = "1m", refresh = "10s", cache = self.cache)]
    pub async fn refreshed(&self, id: u64, _: &str, note: Option<String>) -> u64 { id * self.rate + u64::from(note.is_some()) }

    #[cached(key = "kind:<type>", ttl = "1m", cache = self.cache)]
    pub async fn kind(&self, r#type: &str) -> String { r#type.to_owned() }

    #[cached(key = "pair:<a>:<b>", ttl = "1m", cache = self.cache)]
    pub async fn pair(&self, (a, b): (u64, u64)) -> u64 { a + b }

    #[cached(key = "generic:<T>:<id>", ttl = "1m", refresh = "10s", cache = self.cache)]
    pub async fn generic<T: Default + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static>(&self, id: u64) -> Option<T> { let _ = id; Some(T::default()) }

    #[invalidates("dealer:<return.dealer>:rows", "row:<id>", cache = self.cache)]
    #[cache_put(key = "row:<return.id>", ttl = "1m", cache = self.cache)]
    pub async fn create(&self, id: u64) -> Result<Row, String> { Ok(Row { id, dealer: self.rate }) }
}

fn main() {
    let pricing = Pricing { cache: Cache::memory(), rate: 2 };
    drop(pricing.price(1));
    drop(pricing.refreshed(1, "x", None));
    drop(pricing.kind("a"));
    drop(pricing.pair((1, 2)));
    drop(pricing.generic::<u64>(1));
    drop(pricing.create(1));
}
