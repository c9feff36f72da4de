//! The four attributes on the methods of `#[async_trait]` impls of a `dyn`-compatible
//! trait, `#[rate_limit]` above `#[cached]`, with a background body (`refresh`).

use async_trait::async_trait;
use cache_runtime::{cache_put, cached, invalidates, rate_limit, Cache, RateLimited};

#[derive(Debug)]
struct DbError;

impl From<RateLimited> for DbError {
    fn from(_: RateLimited) -> Self {
        DbError
    }
}

#[async_trait]
trait VehicleRepo: Send + Sync {
    async fn get(&self, id: u64) -> Result<Option<String>, DbError>;
    async fn fresh(&self, id: u64, region: &str) -> Result<String, DbError>;
    async fn update(&self, id: u64) -> Result<(), DbError>;
    async fn save(&self, id: u64) -> Result<String, DbError>;
}

#[derive(Clone)]
struct Db {
    cache: Cache,
    rate: u64,
}

#[async_trait]
impl VehicleRepo for Db {
    #[rate_limit(key = "repo", limit = 100, per = "1s", cache = self.cache)]
    #[cached(key = "vehicle:<id>", ttl = "15m", cache = self.cache)]
    async fn get(&self, id: u64) -> Result<Option<String>, DbError> {
        Ok(Some(format!("{}", id * self.rate)))
    }

    #[cached(key = "fresh:<region>:<id>", ttl = "15m", refresh = "1m", cache = self.cache)]
    async fn fresh(&self, id: u64, region: &str) -> Result<String, DbError> {
        Ok(format!("{region}{}", id * self.rate))
    }

    #[invalidates("vehicle:<id>", cache = self.cache)]
    async fn update(&self, id: u64) -> Result<(), DbError> {
        Ok(())
    }

    #[cache_put(key = "vehicle:<id>", ttl = "15m", cache = self.cache)]
    async fn save(&self, id: u64) -> Result<String, DbError> {
        Ok(id.to_string())
    }
}

fn main() {
    let repo: Box<dyn VehicleRepo> = Box::new(Db { cache: Cache::memory(), rate: 2 });
    drop(repo.get(1));
}
