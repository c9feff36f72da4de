//! Attribute-driven caching for async Rust.
//!
//! Annotate an async function with [`cached`] and its results are cached under a key built
//! from its arguments, in an in-process store or in Redis:
//!
//! ```
//! use cache_runtime::cached;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Vehicle { id: u64, model: String }
//!
//! #[derive(Debug)]
//! struct DbError;
//!
//! #[cached(key = "vehicle:<id>", ttl = "15m")]
//! async fn get_vehicle(id: u64) -> Result<Option<Vehicle>, DbError> {
//!     // query the database; runs only on a miss
//!     Ok(Some(Vehicle { id, model: "Civic".into() }))
//! }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! get_vehicle(42).await.unwrap();
//! get_vehicle(42).await.unwrap(); // a hit: the body does not run
//! assert_eq!(cache_runtime::default_cache().stats_of("get_vehicle").hits, 1);
//! # });
//! ```
//!
//! - Key templates (`"vehicle:<id>"`, `"dealer:<v.dealer_id>"`) are checked against the
//!   signature at compile time; placeholder values are encoded so that no value can inject a
//!   `:` or a glob character and two argument lists never share a key (see [`KeyPart`]).
//! - `Err` and `None` are never cached. Concurrent misses of one key run the body once.
//! - The cache is a mirror, never the source of truth: if Redis is down or holds garbage,
//!   the function runs its body and returns its result; the failure is counted in
//!   [`Stats::errors`].
//!
//! ## Invalidation
//!
//! [`invalidates`] removes keys and glob patterns after a function succeeds, and
//! [`cache_put`] writes its result through; pattern invalidation reads an index instead of
//! scanning Redis (the design and its costs are described on
//! [`Cache::invalidate_pattern`]). [`check_invalidations`] finds invalidation patterns that
//! can match no cached key.
//!
//! Build a Redis cache with [`Cache::builder`] and make it the default with [`set_default`],
//! or name a cache per function with `cache = <expr>`.

#![cfg_attr(docsrs, feature(doc_cfg))]

// Lets the attributes' `::cache_runtime::...` paths resolve inside this crate's own tests.
#[allow(unused_extern_crates)]
extern crate self as cache_runtime;

mod breaker;
mod builder;
mod cache;
mod codec;
mod default_cache;
mod error;
mod flight;
mod glob;
mod index;
mod invalidate;
mod key;
mod lock;
mod notify;
mod prometheus;
mod registry;
mod shape;
mod stampede;
mod stats;
mod store;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use breaker::BreakerState;
pub use builder::CacheBuilder;
pub use cache::Cache;
pub use default_cache::{default_cache, set_default};
pub use error::{Error, Result};
pub use key::{KeyPart, KeyWriter};
pub use lock::LockGuard;
pub use registry::{
    check_invalidations, declarations, DeadInvalidations, Declaration, DeclarationKind,
};
pub use stats::{Stats, DIRECT_CALLS};

#[doc(inline)]
pub use cache_macros::{cache_put, cached, invalidates};
