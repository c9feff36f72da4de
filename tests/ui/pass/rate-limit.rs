//! `#[rate_limit]` on free functions and methods, alone and above `#[cached]` (with and
//! without `charge_hits`), with the default cache and `cache = ...`; the futures stay `Send`.

use std::net::IpAddr;

use cache_runtime::{cached, rate_limit, Cache, RateLimited};

#[derive(Debug)]
enum ApiError {
    Limited(RateLimited),
    Invalid,
}

impl From<RateLimited> for ApiError {
    fn from(limited: RateLimited) -> Self {
        ApiError::Limited(limited)
    }
}

#[rate_limit(key = "login:<ip>", limit = 2, per = "1m")]
async fn login(ip: IpAddr, password: &str) -> Result<String, ApiError> {
    if password.is_empty() {
        return Err(ApiError::Invalid);
    }
    Ok(format!("session for {ip}"))
}

struct Service {
    cache: Cache,
}

impl Service {
    #[rate_limit(key = "search:<user>", limit = 10, per = "1s", cache = self.cache, fail_closed)]
    #[cached(key = "search:<user>:<query>", ttl = "1m", cache = self.cache)]
    async fn search(&self, user: u64, query: &str) -> Result<Vec<String>, ApiError> {
        Ok(vec![format!("{user}:{query}")])
    }

    #[rate_limit(key = "quote:<id>", limit = 1, per = "500ms", cache = &self.cache, charge_hits, name = "quotes")]
    #[cached(key = "quote:<id>", ttl = "1m", cache = self.cache)]
    async fn quote(&self, id: u64) -> Result<u64, RateLimited> {
        Ok(id)
    }

    #[rate_limit(key = "reset:<id>", limit = 1, per = "1h", cache = self.cache, fail_open)]
    async fn reset(&mut self, id: u64) -> std::result::Result<(), ApiError> {
        let _ = id;
        Ok(())
    }
}

fn assert_send<T: Send>(_: &T) {}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert!(matches!(login(ip, "").await, Err(ApiError::Invalid)));
        assert!(login(ip, "pw").await.is_ok());
        assert!(matches!(login(ip, "pw").await, Err(ApiError::Limited(_))));

        let mut service = Service { cache: Cache::memory() };
        let call = service.search(1, "civic");
        assert_send(&call);
        assert_eq!(call.await.unwrap(), ["1:civic"]);
        assert_eq!(service.quote(3).await.unwrap(), 3);
        assert!(service.quote(3).await.is_err(), "charge_hits: the hit is charged");
        assert_eq!(service.cache.stats_of("quotes").rate_limited, 1);
        assert!(service.reset(1).await.is_ok());
        assert!(service.reset(1).await.is_err());
    });
}
