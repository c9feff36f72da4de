//! Code shared by the example programs of [cache-runtime](cache_runtime).
//!
//! - [`marketplace`]: the vehicles marketplace behind the `vehicles` binary (`vehicles demo`,
//!   `vehicles serve`): a database layer over SQLite or PostgreSQL, a service whose functions
//!   carry `#[cached]`, `#[invalidates]` and `#[cache_put]`, and an axum HTTP API.
//! - [`cache_from_env`]: the cache the recipes use: Redis when `REDIS_URL` is set, else the
//!   in-process memory store.
//!
//! Run `cargo run --release -p examples --bin vehicles -- demo`; the recipes are listed in
//! `examples/README.md`.

pub mod marketplace;

use cache_runtime::Cache;

/// Redis (with `prefix`) when `REDIS_URL` is set, else the in-process memory store.
///
/// `store_from_config.rs` shows the longer form: every builder option read from the
/// environment.
///
/// # Errors
///
/// A malformed `REDIS_URL`. A Redis that is down is not an error: the cache connects lazily
/// and every cached function runs its body until Redis answers.
pub async fn cache_from_env(prefix: &str) -> Result<Cache, cache_runtime::Error> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Cache::builder().redis(url).prefix(prefix).build().await,
        _ => Ok(Cache::memory()),
    }
}
