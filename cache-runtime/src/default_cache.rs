//! The process-wide default cache used by attributes without `cache = ...`.

use std::sync::OnceLock;

use arc_swap::ArcSwap;

use std::sync::Arc;

use crate::cache::Cache;
use crate::core::CacheCore;

static DEFAULT: OnceLock<ArcSwap<CacheCore>> = OnceLock::new();

fn slot() -> &'static ArcSwap<CacheCore> {
    DEFAULT.get_or_init(|| ArcSwap::from(Arc::clone(Cache::memory().core())))
}

/// Makes `cache` the one used by `#[cached]`, `#[invalidates]` and `#[cache_put]` when they
/// have no `cache = ...` argument. Until this is called they share a process-wide memory
/// cache. Calls already running keep the cache they started with.
pub fn set_default(cache: Cache) {
    slot().store(Arc::clone(cache.core()));
}

/// The current default cache.
pub fn default_cache() -> Cache {
    Cache::from_core(slot().load_full())
}
