//! The [`Cache`] handle and cache-aside: look up, on a miss load once, store, return.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::Entry;
use crate::core::{CacheCore, Settings, DEFAULT_MEMORY_CAPACITY};
use crate::error::{Error, Result};
use crate::glob;
use crate::health::{self, Health};
use crate::load::{self, body::Inline};
use crate::lock::{self, LockGuard};
use crate::policy::{validate_ttl, Policy, DIRECT_GET};
use crate::rate_limit::{self, FailMode, RateDecision};
use crate::read::{self, Read};
use crate::scope::Scope;
use crate::shape::ResultShape;
use crate::stats::{Stats, DIRECT_CALLS};
use crate::store::{Found, Store};
use crate::write::{self, Applied, Change};

pub(crate) mod builder;

use builder::CacheBuilder;

/// A cache: a store (in-process memory or Redis), its counters and its in-flight loads.
///
/// `Cache` is a cheap handle (an `Arc` inside): clone it into every service that needs it.
/// Annotated functions use the cache named by their `cache = ...` argument, or the process
/// default ([`set_default`](crate::set_default)).
///
/// ```
/// # async fn run() -> Result<(), cache_runtime::Error> {
/// use std::time::Duration;
///
/// let cache = cache_runtime::Cache::memory();
/// cache.set("greeting:en", "hello", Duration::from_secs(60)).await?;
/// assert_eq!(cache.get::<String>("greeting:en").await?, Some("hello".to_owned()));
/// assert_eq!(cache.stats().hits, 1);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone)]
pub struct Cache {
    core: Arc<CacheCore>,
}

impl Cache {
    /// An in-process cache bounded to 128 MiB (use [`Cache::builder`] to change the bound).
    pub fn memory() -> Cache {
        let store = Store::memory(DEFAULT_MEMORY_CAPACITY);
        Cache::from_core(Arc::new(CacheCore::new(store, Settings::default(), None)))
    }

    /// A builder for a Redis-backed (or bounded in-memory) cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// The handle of `core`.
    pub(crate) fn from_core(core: Arc<CacheCore>) -> Cache {
        Cache { core }
    }

    /// The core this handle shares.
    pub(crate) fn core(&self) -> &Arc<CacheCore> {
        &self.core
    }

    /// The prefix put before every key in Redis (empty for the memory store).
    pub fn prefix(&self) -> &str {
        self.core.store().prefix()
    }

    /// The value stored under `key` (a rendered key, without the prefix), decoded as `T`.
    ///
    /// A stored value that does not decode as `T` is reported as absent (and counted in
    /// [`Stats::errors`]), like any other miss.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for an empty key, one with whitespace, control characters or
    /// `#`, or one longer than [`max_key_bytes`](crate::CacheBuilder::max_key_bytes);
    /// [`Error::Backend`] when Redis fails.
    pub async fn get<T: DeserializeOwned + 'static>(&self, key: &str) -> Result<Option<T>> {
        self.core.check_key(key)?;
        let counters = self.core.counters(DIRECT_CALLS);
        let hold = |found: &Found, _: &T| Arc::clone(&found.entry);
        match read::read(&self.core, &counters, key, &DIRECT_GET, None, false, hold).await {
            Read::Hit { value, .. } => Ok(Some(value)),
            Read::Absent | Read::Miss(_) => Ok(None),
            Read::Failed(error) => Err(error),
        }
    }

    /// Stores `value` under `key` for `ttl`, replacing what was there.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`] (under one millisecond, or over 100 years),
    /// [`Error::Encode`] when `value` cannot be serialized, [`Error::Backend`] when Redis fails.
    /// A value that cannot be stored (not encodable, over `max_value_bytes`, refused by
    /// Redis under `OOM`) is not stored and removes the old one instead, so no later read
    /// returns it; invalid input changes nothing.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<()> {
        self.core.check_key(key)?;
        validate_ttl(ttl)?;
        let value = Entry::encode_unsized(value, &self.core.settings().format)
            .map(Arc::new)
            .map_err(|source| Error::Encode { key: key.to_owned(), source });
        let counters = self.core.counters(DIRECT_CALLS);
        write::apply(&self.core, &counters, Change::Put { key, value, ttl, tags: &[] })
            .await
            .map(drop)
    }

    /// [`set`](Self::set) with tags: stores `value` under `key` for `ttl`, stored with
    /// `tags` (rendered tags), so [`invalidate_tag`](Self::invalidate_tag) of any of them
    /// removes it, as it removes what `#[cached(tags = [...])]` and `#[cache_put(tags = [...])]`
    /// store. A value written without a tag (by [`set`](Self::set), or a function without
    /// `tags`) is not removed by that tag.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set), and [`Error::InvalidTag`] for a tag that
    /// [`invalidate_tag`](Self::invalidate_tag) would refuse.
    pub async fn set_tagged<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        tags: &[&str],
    ) -> Result<()> {
        self.core.check_key(key)?;
        validate_ttl(ttl)?;
        let max = self.core.settings().max_key_bytes;
        for tag in tags {
            crate::tags::validate_tag(tag, max)?;
        }
        let tags: Vec<String> = tags.iter().map(|tag| (*tag).to_owned()).collect();
        let value = Entry::encode_unsized(value, &self.core.settings().format)
            .map(Arc::new)
            .map_err(|source| Error::Encode { key: key.to_owned(), source });
        let counters = self.core.counters(DIRECT_CALLS);
        let put = Change::Put { key, value, ttl, tags: &tags };
        write::apply(&self.core, &counters, put).await.map(drop)
    }

    /// Cache-aside by hand: the value under `key`, or else the result of `load`, stored for
    /// `ttl` when it is `Ok`. Concurrent misses of one key share one run of `load`.
    ///
    /// The cache never makes this call fail: when Redis is down or holds an undecodable
    /// value, `load` runs and its result is returned (the failure is counted).
    ///
    /// ```
    /// # async fn run() -> Result<(), cache_runtime::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_runtime::Cache::memory();
    /// let price: u32 = cache
    ///     .get_or_load("price:42", Duration::from_secs(60), || async {
    ///         Ok::<_, cache_runtime::Error>(1999) // query the database here
    ///     })
    ///     .await?;
    /// assert_eq!(price, 1999);
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// `load`'s error, or [`Error::InvalidKey`] / [`Error::InvalidTtl`] converted into `E`
    /// (checked before `load` runs).
    pub async fn get_or_load<T, E, F, Fut>(&self, key: &str, ttl: Duration, load: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.core.check_key(key)?;
        validate_ttl(ttl)?;
        let counters = self.core.counters(DIRECT_CALLS);
        let policy = Policy::ttl(ttl);
        load::through::<ResultShape, _, _>(&self.core, &counters, key, &policy, None, Inline(load))
            .await
    }

    /// The values under `keys` (rendered keys, without the prefix), one per key in order,
    /// `None` for a key that holds nothing: one lookup (one `MGET` on Redis; on a cluster one
    /// per slot, in parallel). Counted per key, like [`get`](Self::get).
    ///
    /// ```
    /// # async fn run() -> Result<(), cache_runtime::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_runtime::Cache::memory();
    /// cache.set("price:1", &10u32, Duration::from_secs(60)).await?;
    /// let prices = cache.get_many::<u32>(&["price:1", "price:2"]).await?;
    /// assert_eq!(prices, [Some(10), None]);
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a key `get` refuses (nothing is read then);
    /// [`Error::Backend`] or [`Error::Unavailable`] when Redis fails.
    pub async fn get_many<T: DeserializeOwned + 'static>(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<T>>> {
        for key in keys {
            self.core.check_key(key)?;
        }
        let counters = self.core.counters(DIRECT_CALLS);
        counters.batch(keys.len());
        let hold = |found: &Found, _: &T| Arc::clone(&found.entry);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (looked, failed) =
            crate::read_many::read_many(&self.core, &counters, keys, &DIRECT_GET, None, hold, None)
                .await;
        if let Some(error) = failed {
            return Err(error);
        }
        Ok(looked
            .into_iter()
            .map(|looked| match looked {
                crate::read_many::Looked::Hit(value) => Some(value),
                _ => None,
            })
            .collect())
    }

    /// Cache-aside for many keys at once (rendered keys, without the prefix): the values
    /// found, and for the keys that missed, what `load` returns, stored for `ttl`. `load`
    /// runs at most once, with the keys that missed (distinct, in first-seen order), and
    /// not at all when every key hit; a key it leaves out of its map is left out of the
    /// answer and not cached. Keys that another call is loading in this process are awaited,
    /// not loaded twice. `Err` stores nothing. The semantics of `#[cached_batch]`: see
    /// "Batch loads" in the crate's README.
    ///
    /// ```
    /// # async fn run() -> Result<(), cache_runtime::Error> {
    /// use std::collections::HashMap;
    /// use std::time::Duration;
    ///
    /// let cache = cache_runtime::Cache::memory();
    /// cache.set("price:1", &10u32, Duration::from_secs(60)).await?;
    /// let prices = cache
    ///     .get_or_load_many(&["price:1", "price:2"], Duration::from_secs(60), |missed| async move {
    ///         assert_eq!(missed, ["price:2"]); // one query for every key that missed
    ///         Ok::<_, cache_runtime::Error>(missed.into_iter().map(|key| (key, 20u32)).collect())
    ///     })
    ///     .await?;
    /// assert_eq!(prices, HashMap::from([("price:1".to_owned(), 10), ("price:2".to_owned(), 20)]));
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// `load`'s error, or [`Error::InvalidKey`] / [`Error::InvalidTtl`] converted into `E`
    /// (checked before anything is read).
    pub async fn get_or_load_many<T, E, F, Fut>(
        &self,
        keys: &[&str],
        ttl: Duration,
        load: F,
    ) -> Result<HashMap<String, T>, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: From<Error>,
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, T>, E>>,
    {
        for key in keys {
            self.core.check_key(key)?;
        }
        validate_ttl(ttl)?;
        let counters = self.core.counters(DIRECT_CALLS);
        let policy = Policy::ttl(ttl);
        let keys: Vec<String> = keys.iter().map(|&key| key.to_owned()).collect();
        load::batch::through_many(&self.core, &counters, &policy, None, &keys, &keys, &[], load)
            .await
    }

    /// The state of the circuit breaker in front of Redis (always closed for the memory
    /// store).
    pub fn breaker_state(&self) -> crate::BreakerState {
        self.core.store().breaker_state()
    }

    /// Every function's counters and the totals, ready to serialize (the admin
    /// `/cache/stats` route).
    pub fn stats_report(&self) -> crate::StatsReport {
        self.core.stats().report()
    }

    /// Totals over every function name.
    pub fn stats(&self) -> Stats {
        self.core.stats().total()
    }

    /// The counters of one function (its `name = ...`, by default its identifier), or of the
    /// programmatic API under [`DIRECT_CALLS`](crate::DIRECT_CALLS). Zero for unknown names.
    pub fn stats_of(&self, name: &str) -> Stats {
        self.core.stats().of(name)
    }

    /// The counters in the Prometheus text exposition format (version 0.0.4), one family after
    /// another, each function's samples sorted by function name:
    ///
    /// | family | type | labels | what it shows |
    /// |---|---|---|---|
    /// | `cache_hits_total` | counter | `function` | calls answered from the cache ([`Stats::hits`]) |
    /// | `cache_near_hits_total` | counter | `function` | hits served from process memory by the near cache, also counted in `cache_hits_total` ([`Stats::near_hits`]) |
    /// | `cache_misses_total` | counter | `function` | calls that found nothing in the cache ([`Stats::misses`]) |
    /// | `cache_loads_total` | counter | `function` | times a body ran to fill the cache ([`Stats::loads`]) |
    /// | `cache_coalesced_total` | counter | `function` | misses answered by another caller's concurrent load ([`Stats::coalesced`]) |
    /// | `cache_stale_total` | counter | `function` | expired values served because the body failed or overran its `timeout` ([`Stats::stale`]) |
    /// | `cache_refreshes_total` | counter | `function` | values recomputed before they expired ([`Stats::refreshes`]) |
    /// | `cache_background_failures_total` | counter | `function` | bodies that failed after their caller was answered: a background refresh, a load past its `timeout` ([`Stats::background_failures`]) |
    /// | `cache_invalidated_keys_total` | counter | `function` | keys removed by invalidation ([`Stats::invalidated`]) |
    /// | `cache_rate_limited_total` | counter | `function` | calls refused by a rate limit ([`Stats::rate_limited`]) |
    /// | `cache_rate_allowed_total` | counter | `function` | calls a rate limit let through ([`Stats::rate_allowed`]) |
    /// | `cache_errors_total` | counter | `function`, `kind` | failures by [`ErrorKind`](crate::ErrorKind) ([`Stats::errors`]); `kind="connection"` always, other kinds once non-zero |
    /// | `cache_load_duration_seconds` | histogram | `function`, `le` | time spent running bodies to fill the cache (`_bucket`, `_sum`, `_count`) |
    /// | `cache_batch_size` | histogram | `function`, `le` | distinct elements asked for per batch call (`#[cached_batch]`, [`get_or_load_many`](Self::get_or_load_many), [`get_many`](Self::get_many)); only functions that made one |
    /// | `cache_breaker_state` | gauge | `state` | the circuit breaker in front of Redis: 1 for the current state (`closed`, `open`, `half_open`), 0 for the others |
    /// | `cache_pending_invalidations` | gauge | | invalidations that could not reach Redis yet and are replayed until they land |
    ///
    /// `function` is the function's `name = ...` (by default its identifier), or
    /// [`DIRECT_CALLS`] for the programmatic API.
    ///
    /// With the `metrics` feature, every per-function family above (all but the two
    /// per-cache gauges) is also reported through the `metrics` facade, under the same
    /// name and labels (histogram buckets are the exporter's).
    pub fn prometheus(&self) -> String {
        let state = crate::metric_families::CacheState {
            breaker: self.breaker_state(),
            pending_invalidations: u64::try_from(self.core.backlog().len()).unwrap_or(u64::MAX),
        };
        crate::prometheus::render(self.core.stats(), &state)
    }

    /// Removes `key` (a rendered key, without the prefix). Returns how many keys went: 0 or 1.
    ///
    /// If Redis cannot be reached, the invalidation is kept and replayed in the background
    /// until it lands (see "Consistency" in the crate docs), and the error is returned.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) for an empty key, one with whitespace, control characters or `#`,
    /// or one longer than [`max_key_bytes`](crate::CacheBuilder::max_key_bytes);
    /// [`Error::Backend`](crate::Error::Backend) or [`Error::Unavailable`](crate::Error::Unavailable) when Redis fails.
    pub async fn invalidate(&self, key: &str) -> Result<u64> {
        self.core.check_key(key)?;
        self.remove(Scope::Key(key.to_owned())).await
    }

    /// Removes every key matching the Redis-style glob `pattern` (`*`, `?`, `[a-z]`, `\x`),
    /// such as `"homepage:*"` or `"dealer:7:*"`. Returns how many keys went.
    ///
    /// Patterns whose literal text starts with one or two `:`-terminated levels
    /// (`homepage:*`, `dealer:7:*`, `dealer:*:vehicles`) are served from an index and cost
    /// the same however many unrelated keys Redis holds. Others (`*:vehicles`) scan the
    /// database with `SCAN MATCH`, counted in [`Stats::pattern_scans`](crate::Stats::pattern_scans);
    /// a cache without a prefix refuses them, since the scan would reach other caches' keys.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPattern`](crate::Error::InvalidPattern) for an empty pattern, an unclosed `[`, a trailing `\`,
    /// whitespace or `#`, or longer than [`max_key_bytes`](crate::CacheBuilder::max_key_bytes);
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a pattern that needs a scan on a
    /// cache without a prefix; [`Error::Backend`](crate::Error::Backend) when Redis fails (the invalidation is then
    /// kept and replayed until it lands).
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        glob::validate(pattern)?;
        if pattern.len() > self.core.settings().max_key_bytes {
            return Err(Error::InvalidPattern {
                pattern: pattern.to_owned(),
                reason: crate::key::TOO_LONG,
            });
        }
        self.remove(Scope::of_pattern(pattern)).await
    }

    /// Removes every key stored with `tag` (a rendered tag, as [`invalidate`](Self::invalidate)
    /// takes a rendered key: `make = "a:b"` in `tags = ["make:<make>"]` is the tag
    /// `make:a%3Ab`). Returns how many keys went (keys already gone are not counted); they
    /// count in [`Stats::invalidated`](crate::Stats::invalidated).
    ///
    /// The same guarantees as [`invalidate`](Self::invalidate): once it returns, no call
    /// that starts afterwards, in any process, gets a value stored with the tag before it;
    /// a load of such a value running meanwhile does not store it; near copies are
    /// evicted; kept and replayed if Redis is unreachable. Reads never check tags: a hit
    /// stays one `GET`. On a Redis that may evict keys, a tag whose set was not known
    /// complete removes every key of the cache instead (see `docs/tags.md`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTag`](crate::Error::InvalidTag) for an empty tag, one with
    /// whitespace, control or glob characters or `#`, or longer than
    /// [`max_key_bytes`](crate::CacheBuilder::max_key_bytes);
    /// [`Error::Backend`](crate::Error::Backend) or [`Error::Unavailable`](crate::Error::Unavailable)
    /// when Redis fails (the invalidation is then kept and replayed until it lands).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        crate::tags::validate_tag(tag, self.core.settings().max_key_bytes)?;
        self.remove(Scope::Tag(tag.to_owned())).await
    }

    /// Removes every key of this cache: with Redis, the keys under its prefix (never
    /// `FLUSHDB`: other prefixes, other applications' keys and the runtime's own locks and
    /// fencing counters stay); with the memory store, every entry. Returns how many keys
    /// went.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a Redis cache without a prefix (clearing it would remove
    /// the whole database); [`Error::Backend`](crate::Error::Backend) when Redis fails (then kept and replayed).
    pub async fn clear(&self) -> Result<u64> {
        self.remove(Scope::All).await
    }

    /// A removal through the write path, counted under [`DIRECT_CALLS`].
    async fn remove(&self, scope: Scope) -> Result<u64> {
        let counters = self.core.counters(DIRECT_CALLS);
        match write::apply(&self.core, &counters, Change::Remove(scope)).await? {
            Applied::Removed(removed) => Ok(removed.keys),
            Applied::Written | Applied::Filled(_) | Applied::Settled(_) => Ok(0),
        }
    }

    /// Tries once to take the lease lock on `resource` for `lease`.
    ///
    /// Returns `None` when another holder has it. On Redis the lock works across processes;
    /// on the memory store, within this process.
    ///
    /// ```
    /// # async fn run() -> Result<(), cache_runtime::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_runtime::Cache::memory();
    /// if let Some(guard) = cache.try_lock("payment:order-7", Duration::from_secs(30)).await? {
    ///     // charge the card, passing guard.fencing_token() to the payment store
    ///     assert!(guard.fencing_token() >= 1);
    ///     guard.release().await?;
    /// }
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a bad resource name, [`Error::InvalidTtl`] for a lease under
    /// one millisecond, [`Error::Backend`] when Redis fails.
    pub async fn try_lock(&self, resource: &str, lease: Duration) -> Result<Option<LockGuard>> {
        lock::try_lock(&self.core, resource, lease).await
    }

    /// Takes the lease lock on `resource`, waiting at most `wait` for its holder to release
    /// it (or for the holder's lease to run out). Waiters are woken by the release, not by
    /// polling.
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] when the lock was not free within `wait`; otherwise as
    /// [`try_lock`](Self::try_lock).
    pub async fn lock(&self, resource: &str, lease: Duration, wait: Duration) -> Result<LockGuard> {
        lock::lock(&self.core, resource, lease, wait).await
    }

    /// Counts one call against the limit of `limit` calls per `per` under `key`, and says
    /// whether it may go ahead. Every process sharing the store shares the limit (on the
    /// memory store: every caller of this cache in this process). On Redis a decision is
    /// one round trip (one Lua script).
    ///
    /// When the store fails the call is admitted ([`FailMode::Open`]); use
    /// [`rate_limit_with`](Self::rate_limit_with) to refuse instead. Decisions are counted
    /// under [`DIRECT_CALLS`](crate::DIRECT_CALLS) in [`Stats::rate_allowed`] and
    /// [`Stats::rate_limited`].
    ///
    /// [`Stats::rate_allowed`]: crate::Stats::rate_allowed
    /// [`Stats::rate_limited`]: crate::Stats::rate_limited
    ///
    /// ```
    /// # async fn run() -> Result<(), cache_runtime::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_runtime::Cache::memory();
    /// for attempt in 1..=3 {
    ///     let decision = cache.rate_limit("login:10.0.0.7", 2, Duration::from_secs(60)).await?;
    ///     assert_eq!(decision.allowed, attempt <= 2);
    ///     if !decision.allowed {
    ///         // HTTP 429 with `Retry-After: 60`, `RateLimit-Remaining: 0`
    ///         assert!(decision.retry_after > Duration::from_secs(59));
    ///     }
    /// }
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    ///
    /// # The algorithm: an exact sliding window (a log of admitted calls)
    ///
    /// A limiter keeps the times of the calls it admitted during the last `per`. A call is
    /// admitted when fewer than `limit` are left after dropping those older than `per`, and
    /// its time is then recorded. Refused calls are not recorded, so a client that keeps
    /// hammering gets through again as soon as its oldest admitted call leaves the window.
    ///
    /// - **Accuracy.** Exact: no window of length `per`, wherever it starts, holds more
    ///   than `limit` admitted calls, and nothing is approximated at a window's edge: a
    ///   refused call would be admitted the moment the oldest recorded call is `per` old,
    ///   which is what `retry_after` says. Under saturation a limiter admits `limit` calls
    ///   per `per`: 4 processes x 50 tasks hammering `limit = 100` per second for 5 s got
    ///   exactly 500 (`tests/tests/rate_limit_accuracy.rs`).
    /// - **Memory.** One entry per call admitted in the last `per`, so at most `limit`
    ///   per active key. On Redis a sorted-set member (16 digits and a score); by
    ///   `MEMORY USAGE` on Redis 7.0, about 21 bytes per call up to 128 calls (a listpack:
    ///   80 bytes for 1, 2.1 KB for a full `limit = 100` key) and about 125 bytes per call
    ///   beyond (a skiplist: 116 KB for 1,000, 1.27 MB for 10,000), plus the key's name. In
    ///   process, 16 bytes per call. An idle limiter vanishes `per` after its last admitted
    ///   call (a Redis TTL; a sweep in process). [`MAX_RATE_LIMIT`](crate::MAX_RATE_LIMIT) bounds a key.
    /// - **The alternative, GCRA** (the generic cell rate algorithm: one timestamp per
    ///   key): constant memory (one string, 48 bytes whatever the limit), but it lets a
    ///   burst of `limit` through and then one call every `per / limit`, so right after an
    ///   idle period one window of length `per` admits up to `2 x limit - 1` calls, and the
    ///   5-second run above would admit about `limit + 5 x limit` = 600. The limits this
    ///   is written for (`login:<ip>`, 5 per minute; a write API, 100 per second) are
    ///   small, where the exact window costs from 80 bytes to a few KB per active key and
    ///   means exactly what its arguments say: never more than `limit` in any `per`.
    ///
    /// On Redis, the script reads the server's clock (`TIME`, so processes whose clocks
    /// disagree share one timeline), drops the entries older than the window
    /// (`ZREMRANGEBYSCORE`), counts (`ZCARD`), then records an admitted call (`ZADD`, scored
    /// by its time in microseconds) and sets the key's expiry to the window (`PEXPIRE`), or
    /// reads, for a refused one, the entry whose expiry frees a slot (`ZRANGE`). The key is
    /// `<prefix>#rate:{<key>}`: in the cache's reserved namespace (no invalidation, pattern
    /// or `clear()` removes it), and one key, so the script runs on one node of a cluster.
    ///
    /// # When the store fails
    ///
    /// Redis down, timing out, or known down (the circuit breaker open): the decision
    /// follows the [`FailMode`], the failure is counted in
    /// [`Stats::errors`](crate::Stats::errors) and logged, and no decision waits longer
    /// than the cache's command timeout (not at all while the breaker is open). Such a
    /// decision counts nothing: its `remaining` is the full `limit` when admitted, and its
    /// `reset_after` zero.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a bad key (empty, whitespace, control characters, `#`, longer
    /// than [`max_key_bytes`](crate::CacheBuilder::max_key_bytes));
    /// [`Error::InvalidRateLimit`] for a `limit` of 0 or over [`MAX_RATE_LIMIT`](crate::MAX_RATE_LIMIT), or a
    /// window under one millisecond. Nothing is counted then. Store failures are not
    /// errors: see [`FailMode`].
    pub async fn rate_limit(&self, key: &str, limit: u64, per: Duration) -> Result<RateDecision> {
        self.rate_limit_with(key, limit, per, FailMode::Open).await
    }

    /// [`rate_limit`](Self::rate_limit), deciding as `on_failure` says when the store
    /// cannot be asked.
    ///
    /// # Errors
    ///
    /// As [`rate_limit`](Self::rate_limit).
    pub async fn rate_limit_with(
        &self,
        key: &str,
        limit: u64,
        per: Duration,
        on_failure: FailMode,
    ) -> Result<RateDecision> {
        self.core.check_key(key)?;
        rate_limit::validate(limit, per)?;
        let counters = self.core.counters(DIRECT_CALLS);
        Ok(rate_limit::decide(&self.core, &counters, key, limit, per, on_failure).await)
    }

    /// The near cache's entries and weighed bytes (keys, JSON bytes and a fixed overhead
    /// per entry), or `None` without a near cache
    /// ([`CacheBuilder::near_cache`](crate::CacheBuilder::near_cache)).
    pub fn near_cache_size(&self) -> Option<(u64, u64)> {
        self.core.near().map(|near| near.size())
    }

    /// Whether the near cache serves now: tracking is on and answered its last health
    /// ping. `false` without a near cache.
    pub fn near_cache_live(&self) -> bool {
        self.core.near().is_some_and(|near| near.is_live())
    }

    /// Checks the store: a `PING` round trip and the interesting parts of `INFO` on Redis,
    /// the size on the memory store. It bypasses the circuit breaker (it is how you find
    /// out whether Redis is back) but is bounded by the command timeout. It never fails:
    /// an unreachable Redis is reported in the result.
    pub async fn health(&self) -> Health {
        health::probe(&self.core).await
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.core.kind())
            .field("prefix", &self.core.store().prefix())
            .finish_non_exhaustive()
    }
}
