//! Choosing the store from configuration: the memory store in development and tests, Redis
//! in production, from environment variables (the same shape works for a config file).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `REDIS_URL` | Redis to use; unset means the in-process memory store | unset |
//! | `CACHE_PREFIX` | namespace of every key in Redis | `okla:` |
//! | `CACHE_MEMORY_MB` | bound of the memory store | 128 |
//! | `CACHE_COMMAND_TIMEOUT_MS` | bound of one Redis command | 500 |
//! | `CACHE_CONNECT_TIMEOUT_MS` | bound of one connection attempt | 1000 |
//!
//! ```text
//! cargo run -p examples --bin store_from_config
//! REDIS_URL=redis://127.0.0.1:6379 CACHE_PREFIX=demo: cargo run -p examples --bin store_from_config
//! ```

use std::time::Duration;

use cache_runtime::{cached, Cache, CacheBuilder};

/// The cache settings, read once at start-up.
#[derive(Debug)]
struct CacheConfig {
    redis_url: Option<String>,
    prefix: String,
    memory_mb: u64,
    command_timeout: Duration,
    connect_timeout: Duration,
}

impl CacheConfig {
    fn from_env() -> Result<CacheConfig, String> {
        fn var(name: &str) -> Option<String> {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        }
        fn number(name: &str, default: u64) -> Result<u64, String> {
            var(name).map_or(Ok(default), |v| {
                v.trim().parse().map_err(|_| format!("{name}={v:?} is not a number"))
            })
        }
        Ok(CacheConfig {
            redis_url: var("REDIS_URL"),
            prefix: var("CACHE_PREFIX").unwrap_or_else(|| "okla:".to_owned()),
            memory_mb: number("CACHE_MEMORY_MB", 128)?,
            command_timeout: Duration::from_millis(number("CACHE_COMMAND_TIMEOUT_MS", 500)?),
            connect_timeout: Duration::from_millis(number("CACHE_CONNECT_TIMEOUT_MS", 1000)?),
        })
    }

    /// Fails on a malformed URL only: a Redis that is down is found (and survived) later.
    async fn build(&self) -> Result<Cache, cache_runtime::Error> {
        let builder: CacheBuilder = Cache::builder();
        let builder = match &self.redis_url {
            Some(url) => builder
                .redis(url.clone())
                .prefix(self.prefix.clone())
                .command_timeout(self.command_timeout)
                .connect_timeout(self.connect_timeout),
            None => builder.memory_capacity(self.memory_mb * 1024 * 1024),
        };
        builder.build().await
    }
}

/// Uses the default cache: no `cache = ...` needed once `set_default` ran.
#[cached(key = "greeting:<name>", ttl = "30s")]
async fn greeting(name: &str) -> String {
    format!("hello, {name}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = CacheConfig::from_env()?;
    let cache = config.build().await?;
    println!("{config:#?}\n-> {cache:?}");
    cache_runtime::set_default(cache.clone());

    greeting("world").await;
    greeting("world").await;
    let stats = cache.stats_of("greeting");
    println!("greeting: hits {} misses {} errors {}", stats.hits, stats.misses, stats.errors);
    assert_eq!(stats.hits + stats.misses, 2);
    Ok(())
}
