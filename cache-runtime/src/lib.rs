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
//!   [`Stats::errors`], and a circuit breaker ([`BreakerState`]) stops calls from waiting on
//!   a Redis that is known down.
//!
//! Build a Redis cache with [`Cache::builder`] and make it the default with [`set_default`],
//! or name a cache per function with `cache = <expr>`.
//!
//! ## Cargo features
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `redis` | on | the Redis and Redis Cluster stores, the near cache, cross-process `lock` leases and wake-ups, the load-shape fingerprint (serde-reflection) |
//! | `msgpack` | on | [`Codec::MessagePack`] |
//! | `postcard` | on | [`Codec::Postcard`] |
//! | `lz4` | on | [`CacheBuilder::compress_above`] |
//! | `uuid` | off | [`KeyPart`] for `uuid::Uuid` |
//! | `metrics` | off | the counters through the `metrics` facade too |
//! | `axum` | off | `admin::router`: stats, health, metrics and invalidation over HTTP |
//!
//! JSON is always there. `cache-runtime = { version = "0.1", default-features = false }` is a
//! memory-only cache without redis-rs, the other codecs, lz4 or serde-reflection. [`Codec`]
//! keeps its variants in every build: [`CacheBuilder::build`] refuses one whose feature is
//! off with [`Error::InvalidConfig`] naming the feature, and a stored value written with it
//! by another build is a miss that is left in place (a `schema` error), like another
//! release's value.
//!
//! ## Invalidation
//!
//! [`invalidates`] removes keys and glob patterns after a function succeeds, and
//! [`cache_put`] writes its result through. [`check_invalidations`] finds invalidation
//! patterns that can match no cached key (a typo such as `"homepgae:*"`); call it in a test.
//!
//! ### How pattern invalidation avoids scanning Redis
//!
//! Every key written through the cache is recorded in up to two *index* sorted sets, named
//! after the key's first one and first two `:`-terminated prefixes: `dealer:7:vehicles` is
//! recorded in `__idx:dealer:` and `__idx:dealer:7:` (under the cache's prefix, e.g.
//! `okla:__idx:dealer:`). Each member's score is its expiry time in milliseconds.
//!
//! A pattern is served by the deepest index its literal text names: `homepage:*` reads
//! `__idx:homepage:`, `dealer:7:*` reads `__idx:dealer:7:`, `dealer:*:vehicles` reads
//! `__idx:dealer:`. The index is walked with `ZSCAN ... MATCH <pattern>`, and the matching
//! keys are `UNLINK`ed. The cost is proportional to the keys under that prefix, whatever
//! else the database holds. A pattern without a `:`-terminated literal prefix (`*:vehicles`,
//! `home*`) falls back to `SCAN MATCH` over the database, counted in
//! [`Stats::pattern_scans`].
//!
//! ### What the index costs
//!
//! - A hit: unchanged, one `GET`.
//! - A write: one round trip, one Lua script holding the `SET` plus, per index, `ZADD GT`,
//!   `ZREMRANGEBYSCORE -inf <now>` (drops members whose keys have expired, so an index never
//!   grows beyond the live keys) and a `PEXPIRE` so an index outlives its longest-lived
//!   member by an hour. It runs on the *server's* clock, so writers whose clocks disagree
//!   cannot prune each other's members.
//! - Memory: one sorted-set member per key and index (the key's text and a score).
//!
//! Invalidation does not remove members: a key refilled meanwhile keeps its entry, and the
//! members of removed keys expire with their scores (an `UNLINK` of a missing key costs
//! nothing).
//!
//! On Redis Cluster, an index lives in one slot and its keys in others: a write sends its
//! index updates first and the write after them, and pattern invalidation reads one index
//! and unlinks per slot.
//!
//! ### Tags
//!
//! `tags = ["make:<f.make>"]` on [`cached`] and [`cache_put`] stores a value with its
//! rendered tags; [`Cache::invalidate_tag`] and `#[invalidates(tags = [...])]` remove every
//! key stored with a tag. Each tag keeps a set of its keys beside the indexes, written with
//! the value (or with a load's pending marker), pruned by expiry; reads never look at tags.
//! See `docs/tags.md` for the design, Redis Cluster and eviction.
//!
//! ## Consistency
//!
//! The promise (see the README's "Consistency" section for the user-facing statement and
//! its bounds): once an invalidation or write-through has returned, no call that starts
//! afterwards, in any process, returns a value loaded before it.
//!
//! The mechanism is the lease idea of *Scaling Memcache at Facebook* (NSDI 2013), adapted so
//! that the hit path stays one `GET` and patterns work:
//!
//! 1. A miss about to run the body places a **pending marker** at the key itself (a value
//!    starting with a NUL byte, which no stored value has: JSON never does, and every
//!    envelope starts with `cr`), in the same script that indexes the key.
//!    Readers take it for a miss; concurrent loaders (other processes) adopt it.
//! 2. The body reads the database only after that.
//! 3. The value is stored only if the key still holds that marker (compare-and-set script).
//!
//! Every write-through replaces the marker and every invalidation removes it, a pattern one
//! included, since the marker is indexed like a value. So the store itself refuses a load
//! that an invalidation overtook. Why the marker lives *at the key* and not in a version
//! key beside it: no second key to keep in the same slot on a cluster, no extra read on a
//! hit, and patterns need no per-key bookkeeping. The argument, for an invalidation `I`
//! that completes before a read starts: if `I` removed the marker, the load cannot store;
//! if `I` ran before the marker was placed, the body read the database after the write.
//!
//! In-process, an invalidation detaches the loads it covers from single flight, and a
//! leader hands its value to the callers that waited on it only once the store confirmed
//! its ticket (the fill was accepted, or the marker was still there), and only to those that
//! joined before it asked the store (a later one may have started after a write that landed
//! just after the fill, so it reads the store for itself); a refused ticket sends
//! them to load again, and a value that could not be checked (Redis failing) goes only to
//! the callers that joined before the body started, for whom it is fresh in any case. Refreshes replace a value only if
//! the key still holds the very value (bytes, and a remaining TTL no longer than when read)
//! they started from. Indexes are trusted only while they hold a sentinel member, so an
//! index that Redis evicted is noticed and rebuilt with one `SCAN` instead of silently
//! missing keys; invalidations that cannot reach Redis are kept and replayed.

//! ## Stampede protection, stale values, early refresh
//!
//! - Within a process, concurrent misses of a key always share one run of the body.
//! - `#[cached(..., lock)]` extends that across processes sharing a Redis: one process takes
//!   a lease (`SET NX PX`, renewed while the body runs) and loads; the others are woken by a
//!   pub/sub message when the value lands, and take over if the holder dies. A hit never
//!   touches the lock. Tune it with [`CacheBuilder::lock_lease`] and
//!   [`CacheBuilder::lock_wait`].
//! - `stale = "1h"` keeps a value that long in all and serves it, once expired, when the
//!   body fails ([`Stats::stale`]).
//! - `refresh = "12m"` recomputes a value older than that in the background, started by a
//!   hit that returns the current value at once, once across processes
//!   ([`Stats::refreshes`]); `early` does the same with XFetch's probability; with `stale`,
//!   `timeout = "200ms"` answers a caller with the expired value once the body took that long,
//!   while the body goes on ([`Stats::background_failures`] counts bodies that fail after
//!   their caller was answered).
//! - [`Cache::lock`] and [`Cache::try_lock`] offer the lease lock directly, with fencing
//!   tokens ([`LockGuard`]).
//!
//! ## Rate limits
//!
//! [`rate_limit`] refuses calls over `limit` per `per` under a key template, across every
//! process sharing the store, before the body runs; [`Cache::rate_limit`] is the same by
//! hand, with what an HTTP 429 answer needs ([`RateDecision`]). The window is exact (no
//! window of length `per` admits more than `limit`); the choice against GCRA, the memory
//! it costs per key and the one-script Redis protocol are argued on [`Cache::rate_limit`].

#![cfg_attr(docsrs, feature(doc_cfg))]

// Lets the attributes' `::cache_runtime::...` paths resolve inside this crate's own tests.
#[allow(unused_extern_crates)]
extern crate self as cache_runtime;

mod backlog;
mod batch_shape;
mod breaker;
mod cache;
mod codec;
mod core;
mod count;
mod default_cache;
mod error;
mod flight;
mod format;
mod glob;
mod health;
mod index;
mod invalidate;
mod key;
mod load;
mod lock;
mod log_limit;
mod metric_families;
#[cfg(feature = "redis")]
mod near;
#[cfg(not(feature = "redis"))]
#[path = "near/off.rs"]
mod near;
mod notify;
mod policy;
mod prometheus;
mod rate_limit;
mod read;
mod read_many;
mod recent;
mod registry;
mod scope;
mod shape;
mod stats;
mod store;
mod tags;
mod write;

#[cfg(feature = "axum")]
pub mod admin;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use breaker::BreakerState;
pub use cache::builder::CacheBuilder;
pub use cache::Cache;
pub use default_cache::{default_cache, set_default};
pub use error::{BackendError, Error, ErrorKind, Result};
pub use format::Codec;
pub use health::Health;
pub use key::{KeyPart, KeyWriter};
pub use lock::LockGuard;
pub use rate_limit::{FailMode, RateDecision, RateLimited, MAX_RATE_LIMIT};
pub use registry::{
    check_invalidations, declarations, DeadInvalidations, Declaration, DeclarationKind,
};
pub use stats::{Stats, StatsReport, DIRECT_CALLS};
#[cfg(feature = "redis")]
pub use store::endpoint::redact_url;

/// `#[derive(KeyPart)]`: enums of unit variants (rendered by name) and newtypes (rendered as
/// their field), beside the trait as serde exports its derives.
pub use cache_macros::KeyPart;
#[doc(inline)]
pub use cache_macros::{cache_put, cached, cached_batch, invalidates, rate_limit};
