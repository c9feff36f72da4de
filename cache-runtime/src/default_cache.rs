//! The process-wide default cache used by attributes without `cache = ...`.

use std::sync::OnceLock;

use arc_swap::ArcSwap;

use crate::cache::{Cache, CacheInner};

static DEFAULT: OnceLock<ArcSwap<CacheInner>> = OnceLock::new();

fn slot() -> &'static ArcSwap<CacheInner> {
    DEFAULT.get_or_init(|| ArcSwap::from(Cache::memory().inner))
}

/// Makes `cache` the one used by `#[cached]`, `#[invalidates]` and `#[cache_put]` when they
/// have no `cache = ...` argument. Until this is called they share a process-wide memory
/// cache. Calls already running keep the cache they started with.
pub fn set_default(cache: Cache) {
    slot().store(cache.inner);
}

/// The current default cache.
pub fn default_cache() -> Cache {
    Cache { inner: slot().load_full() }
}
