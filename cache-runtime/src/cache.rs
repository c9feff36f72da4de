//! The [`Cache`] handle and cache-aside: look up, on a miss load once, store, return.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::body::{Body, Inline};
use crate::builder::CacheBuilder;
use crate::codec::{Cloner, Entry};
use crate::error::{Error, ErrorKind, Result};
use crate::flight::Flights;
use crate::format::{DecodeError, Format};
use crate::key::validate_key;
use crate::load::{Filled, Load};
use crate::near::Near;
use crate::pending::Pending;
use crate::shape::{Outcome, ResultShape, Shape};
use crate::stats::{Counters, Stats, StatsRegistry, DIRECT_CALLS};
use crate::store::Store;
use crate::store::{Found, Ticket, Touch};

static NEXT_CACHE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Default bound of the memory store: 128 MiB of keys and JSON-encoded values.
pub(crate) const DEFAULT_MEMORY_CAPACITY: u64 = 128 * 1024 * 1024;

/// The longest a value with `refresh` or `early` is kept past its TTL for a refresh still
/// running to replace it (see [`Policy::lifetime`]).
pub(crate) const REFRESH_GRACE: Duration = Duration::from_secs(60);

/// Default `max_value_bytes`: 4 MiB.
pub(crate) const DEFAULT_MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

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
    pub(crate) inner: Arc<CacheInner>,
}

pub(crate) struct CacheInner {
    /// Unique per cache in this process (never reused, unlike an address).
    pub(crate) id: u64,
    pub(crate) store: Store,
    pub(crate) settings: Settings,
    pub(crate) stats: StatsRegistry,
    pub(crate) flights: Flights,
    /// Invalidations that failed for a connection reason, replayed until they land.
    pub(crate) pending: Pending,
    /// The near cache (`CacheBuilder::near_cache`), in front of Redis.
    pub(crate) near: Option<Arc<Near>>,
}

/// Tunables set on the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Lease of a `lock` load, renewed while the body runs.
    pub(crate) lock_lease: Duration,
    /// How long a `lock` waiter waits for another process's load before running its body.
    pub(crate) lock_wait: Duration,
    /// Values whose JSON is larger are not cached.
    pub(crate) max_value_bytes: usize,
    /// How long a load may take and still store its value (the life of a pending marker).
    pub(crate) fill_window: Duration,
    /// Codec, compression and schema version of stored values.
    pub(crate) format: Format,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lock_lease: Duration::from_secs(5),
            lock_wait: Duration::from_secs(10),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            fill_window: Duration::from_secs(60),
            format: Format::default(),
        }
    }
}

/// How one call site caches: its time to live and options. `#[cached]` builds one per
/// function at compile time, in a `static` ([`Policy::new`]); the programmatic API builds
/// one per call.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long a value is fresh.
    pub(crate) ttl: Duration,
    /// Coordinate loads across processes.
    pub(crate) lock: bool,
    /// How long a value is kept in all (`>= ttl`), to be served if the body fails.
    pub(crate) stale: Option<Duration>,
    /// Age after which a hit recomputes the value (`< ttl`).
    pub(crate) refresh: Option<Duration>,
    /// How long an absent result (`None`, `Ok(None)`) is cached (`absent_ttl = ...`).
    pub(crate) absent_ttl: Option<Duration>,
    /// XFetch's β (`early`, `early = 1.5`): recompute a hit early, with a probability that
    /// grows as the value nears its expiry.
    pub(crate) early: Option<f64>,
    /// With a stale value kept, how long a caller waits for the body before it is answered
    /// with the stale value (`timeout = ...`); the body goes on in the background.
    pub(crate) timeout: Option<Duration>,
    /// Use the cache's near cache, if it has one (`near = false` opts out).
    pub(crate) near: bool,
    /// Sliding expiration (`idle = ...`, `< ttl`): a value is stored for this long, and each
    /// hit extends its remaining life to `min(idle, ttl - age)`, so `ttl` stays an absolute
    /// cap from the write time.
    pub(crate) idle: Option<Duration>,
}

impl Policy {
    /// The policy `#[cached(ttl = ..., lock, stale = ..., refresh = ...)]` describes, with
    /// durations the macro parsed and checked (`stale > ttl`, `refresh < ttl`).
    pub const fn new(
        ttl: Duration,
        lock: bool,
        stale: Option<Duration>,
        refresh: Option<Duration>,
    ) -> Policy {
        Policy {
            ttl,
            lock,
            stale,
            refresh,
            absent_ttl: None,
            early: None,
            timeout: None,
            near: true,
            idle: None,
        }
    }

    /// Caches absent results for `absent_ttl` (negative caching).
    #[must_use]
    pub const fn with_absent_ttl(mut self, absent_ttl: Option<Duration>) -> Policy {
        self.absent_ttl = absent_ttl;
        self
    }

    /// XFetch (`early`, `early = <beta>`): probabilistic early recomputation.
    #[must_use]
    pub const fn with_early(mut self, beta: Option<f64>) -> Policy {
        self.early = beta;
        self
    }

    /// Soft timeout (`timeout = "200ms"`, with `stale`): a caller holding a stale value
    /// waits this long for the body, then gets the stale value.
    #[must_use]
    pub const fn with_timeout(mut self, timeout: Option<Duration>) -> Policy {
        self.timeout = timeout;
        self
    }

    /// Sliding expiration (`idle = "30m"`, checked `< ttl` and without `stale`, `refresh`,
    /// `early` by the macro): each hit extends the value's life by `idle`, up to `ttl` after
    /// it was written. Such a function bypasses the near cache (a near hit would not reach
    /// the store, so the value could idle out there while still served here).
    #[must_use]
    pub const fn with_idle(mut self, idle: Option<Duration>) -> Policy {
        self.idle = idle;
        self
    }

    /// `#[cached(near = false)]`: whether calls use the cache's near cache (default `true`).
    #[must_use]
    pub const fn near(mut self, near: bool) -> Policy {
        self.near = near;
        self
    }

    /// A policy with a time to live only.
    pub(crate) const fn ttl(ttl: Duration) -> Policy {
        Policy::new(ttl, false, None, None)
    }

    /// How long the store keeps a value when it is written: `ttl`, `stale` when longer, and
    /// with `refresh` or `early` a grace period past `ttl` ([`REFRESH_GRACE`] at most), so
    /// that a refresh still running when the value's TTL ends can replace it, and the
    /// callers that miss meanwhile join that refresh instead of loading again. A value past
    /// `ttl` is never served unless `stale` says so. With `idle`, `idle` (hits extend it).
    pub(crate) fn lifetime(&self) -> Duration {
        if let Some(idle) = self.idle {
            return idle.min(self.ttl);
        }
        let kept = match self.refresh.is_some() || self.early.is_some() {
            true => self.ttl + self.ttl.min(REFRESH_GRACE),
            false => self.ttl,
        };
        self.stale.map_or(kept, |stale| stale.max(kept))
    }

    /// The longest anything this policy stores may live (a value, hits included, or an
    /// absent result): what the invalidation indexes must cover.
    pub(crate) fn longest(&self) -> Duration {
        let value = if self.idle.is_some() { self.ttl } else { self.lifetime() };
        self.absent_ttl.map_or(value, |absent| absent.max(value))
    }

    /// What a hit does to the value's life (`idle`).
    pub(crate) fn touch(&self) -> Option<Touch> {
        self.idle.map(|idle| Touch { idle, cap: self.ttl })
    }

    /// Whether hits need the value's age (one pipelined `PTTL` more on Redis).
    pub(crate) fn tracks_age(&self) -> bool {
        self.stale.is_some() || self.refresh.is_some() || self.early.is_some()
    }

    /// Whether a hit on a value of `age` recomputes it now: `refresh` once the value is that
    /// old; with `early`, XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): recompute
    /// when `δ·β·(−ln r) ≥ time left`, `r` uniform in (0, 1], `δ` the function's mean load
    /// time. Each reader draws on its own, so the first recompute comes earlier the more
    /// readers a key has and the longer its body takes, and usually before the value expires.
    /// `δ` is the load time stored with the value when there is one (see `format.rs`),
    /// else the function's mean load time: the caller passes it as `mean_load`.
    pub(crate) fn recompute_now(&self, age: Duration, mean_load: Duration) -> bool {
        if self.refresh.is_some_and(|refresh| age >= refresh) {
            return true;
        }
        let Some(beta) = self.early else { return false };
        let left = self.ttl.saturating_sub(age).as_secs_f64();
        let draw = crate::load::uniform_draw();
        mean_load.as_secs_f64() * beta * -draw.ln() >= left
    }
}

impl Cache {
    /// An in-process cache bounded to 128 MiB (use [`Cache::builder`] to change the bound).
    pub fn memory() -> Cache {
        Cache::from_store(Store::memory(DEFAULT_MEMORY_CAPACITY), Settings::default(), None)
    }

    /// A builder for a Redis-backed (or bounded in-memory) cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    pub(crate) fn from_store(store: Store, settings: Settings, near: Option<Arc<Near>>) -> Cache {
        Cache {
            inner: Arc::new(CacheInner {
                id: NEXT_CACHE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                store,
                settings,
                stats: StatsRegistry::default(),
                flights: Flights::default(),
                pending: Pending::default(),
                near,
            }),
        }
    }

    /// The prefix put before every key in Redis (empty for the memory store).
    pub fn prefix(&self) -> &str {
        self.inner.store.prefix()
    }

    /// The value stored under `key` (a rendered key, without the prefix), decoded as `T`.
    ///
    /// A stored value that does not decode as `T` is reported as absent (and counted in
    /// [`Stats::errors`]), like any other miss.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for an empty key or one with whitespace or control characters;
    /// [`Error::Backend`] when Redis fails.
    pub async fn get<T: DeserializeOwned + 'static>(&self, key: &str) -> Result<Option<T>> {
        validate_key(key)?;
        let counters = self.inner.stats.counters(DIRECT_CALLS);
        if self.inner.pending.covers(key) {
            counters.miss();
            return Ok(None); // an invalidation of it has not reached Redis yet
        }
        if let Some(near) = self.near_for(&DIRECT_GET) {
            if let Some(value) = near.serve(key, &DIRECT_GET, None) {
                counters.hit();
                counters.near_hit();
                return Ok(Some(value));
            }
            return match self
                .lookup_near(near, &counters, key, &DIRECT_GET, None, |found, _| {
                    Arc::clone(&found.entry)
                })
                .await
            {
                Aged::Fresh(value, _) => Ok(Some(value)),
                Aged::Failed(error) => Err(error),
                Aged::Stale(_) | Aged::Absent | Aged::Miss | Aged::Undecodable | Aged::Foreign => {
                    Ok(None)
                }
            };
        }
        match self.lookup::<T>(&counters, key, None, None).await {
            Lookup::Hit(value) => Ok(Some(value)),
            Lookup::Absent | Lookup::Miss | Lookup::Undecodable | Lookup::Foreign => Ok(None),
            Lookup::Failed(error) => Err(error),
        }
    }

    /// Stores `value` under `key` for `ttl`, replacing what was there.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`] (under one millisecond, or over 100 years),
    /// [`Error::Encode`] when `value` cannot be serialized, [`Error::Backend`] when Redis fails.
    /// Nothing is stored when an error is returned; when Redis refuses the new value (`OOM`),
    /// the old one is removed, so no later read returns it.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<()> {
        validate_key(key)?;
        validate_ttl(ttl)?;
        let entry = Entry::encode_unsized(value, &self.inner.settings.format)
            .map_err(|source| Error::Encode { key: key.to_owned(), source })?;
        if entry.size() > self.inner.settings.max_value_bytes {
            return Err(Error::ValueTooLarge {
                key: key.to_owned(),
                bytes: entry.size(),
                max: self.inner.settings.max_value_bytes,
            });
        }
        let entry = Arc::new(entry);
        self.write(key, &entry, ttl).await.inspect_err(|error| {
            self.inner.stats.counters(DIRECT_CALLS).error(error.kind());
        })
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
        validate_key(key)?;
        validate_ttl(ttl)?;
        let counters = self.inner.stats.counters(DIRECT_CALLS);
        let policy = Policy::ttl(ttl);
        self.load_through::<ResultShape, _, _>(&counters, key, &policy, None, Inline(load)).await
    }

    /// The state of the circuit breaker in front of Redis (always closed for the memory
    /// store).
    pub fn breaker_state(&self) -> crate::BreakerState {
        self.inner.store.breaker_state()
    }

    /// Every function's counters and the totals, ready to serialize (the admin
    /// `/cache/stats` route).
    pub fn stats_report(&self) -> crate::StatsReport {
        self.inner.stats.report()
    }

    /// Totals over every function name.
    pub fn stats(&self) -> Stats {
        self.inner.stats.total()
    }

    /// The counters of one function (its `name = ...`, by default its identifier), or of the
    /// programmatic API under [`DIRECT_CALLS`](crate::DIRECT_CALLS). Zero for unknown names.
    pub fn stats_of(&self, name: &str) -> Stats {
        self.inner.stats.of(name)
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
    /// | `cache_errors_total` | counter | `function`, `kind` | failures by [`ErrorKind`] ([`Stats::errors`]); `kind="connection"` always, other kinds once non-zero |
    /// | `cache_load_duration_seconds` | histogram | `function`, `le` | time spent running bodies to fill the cache (`_bucket`, `_sum`, `_count`) |
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
            pending_invalidations: u64::try_from(self.inner.pending.len()).unwrap_or(u64::MAX),
        };
        crate::prometheus::render(&self.inner.stats, &state)
    }

    /// A read that Redis failed (down, timeout, breaker open): counted as an error and a miss;
    /// the caller runs its body.
    fn read_failed(&self, counters: &Counters, key: &str, error: &Error) {
        tracing::warn!(key, %error, store = self.inner.store.kind(), "cache read failed");
        counters.error(error.kind());
        counters.miss();
    }

    /// Reads `key`, counting a hit, a miss or an error; with `touch` (`idle`), a hit
    /// extends the value's life in the same round trip, and a value past its cap is a miss.
    async fn lookup<T>(
        &self,
        counters: &Counters,
        key: &str,
        cloner: Cloner<T>,
        touch: Option<Touch>,
    ) -> Lookup<T>
    where
        T: DeserializeOwned + 'static,
    {
        let read = match touch {
            Some(touch) => self.inner.store.get_touched(key, touch).await,
            None => self.inner.store.get(key).await,
        };
        match read {
            Ok(Some(entry)) if entry.is_absent() => {
                counters.hit();
                tracing::debug!(key, "cache hit (absent)");
                Lookup::Absent
            }
            Ok(Some(entry)) => match entry.take(cloner) {
                Ok(value) => {
                    counters.hit();
                    tracing::debug!(key, "cache hit");
                    Lookup::Hit(value)
                }
                Err(error) => match undecodable(counters, key, &error) {
                    true => Lookup::Foreign,
                    false => Lookup::Undecodable,
                },
            },
            Ok(None) => {
                counters.miss();
                tracing::debug!(key, "cache miss");
                Lookup::Miss
            }
            Err(error) => {
                self.read_failed(counters, key, &error);
                Lookup::Failed(error)
            }
        }
    }

    /// Cache-aside with single flight. The shape `S` says which return values are cached.
    pub(crate) async fn load_through<S, R, B>(
        &self,
        counters: &Arc<Counters>,
        key: &str,
        policy: &Policy,
        cloner: Cloner<S::Value>,
        body: B,
    ) -> R
    where
        S: Shape<R>,
        S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
        B: Body<R>,
    {
        // `timeout` bounds the whole call, lookup included.
        let called = policy.timeout.map(|_| std::time::Instant::now());
        let mut miss = Load {
            cache: self,
            counters,
            key,
            policy,
            cloner,
            stale: None,
            store_failing: false,
            overwrite: false,
            behind: false,
            served_stale: Default::default(),
            loaded_in: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        if self.inner.pending.covers(key) {
            // An invalidation of this key has not reached Redis yet: what Redis holds may
            // predate it. Load, and replace it.
            counters.miss();
            miss.overwrite = true;
            return miss.run::<S, R, _>(|| body.start()).await;
        }
        // L1 decided a recompute (`early` draws once per hit, there or on the Redis path).
        let mut due = false;
        if let Some(near) = self.near_for(policy) {
            match near.answer(key, policy, cloner, counters.mean_load()) {
                crate::near::Answer::Hit(value) => {
                    counters.hit();
                    counters.near_hit();
                    return S::from_value(value);
                }
                crate::near::Answer::Due => due = true,
                crate::near::Answer::Miss => {}
            }
        }
        if policy.tracks_age() || self.near_for(policy).is_some() {
            let aged = match self.near_for(policy) {
                Some(near) => {
                    let typed = |found: &Found, value: &S::Value| {
                        Arc::new(Entry::with_copy(&found.entry, value, cloner))
                    };
                    self.lookup_near(near, counters, key, policy, cloner, typed).await
                }
                None => self.lookup_aged(counters, key, policy, cloner).await,
            };
            match aged {
                Aged::Fresh(value, found) => {
                    let delta = found.load_time.unwrap_or_else(|| counters.mean_load());
                    if due || policy.recompute_now(found.age, delta) {
                        return miss.refresh::<S, R, B>(body, value, found).await;
                    }
                    return S::from_value(value);
                }
                // Kept past its TTL: served only if `stale` says so (a refresh's grace period
                // keeps it too).
                Aged::Stale(entry) if policy.stale.is_some() => miss.stale = Some(entry),
                Aged::Stale(_) => {}
                Aged::Absent => match S::absent() {
                    Some(absent) => return absent,
                    None => miss.overwrite = true,
                },
                Aged::Miss => {}
                Aged::Undecodable => miss.overwrite = true,
                Aged::Foreign => miss.store_failing = true,
                Aged::Failed(error) => miss.read_failed(error.kind()),
            }
        } else {
            match self.lookup(counters, key, cloner, policy.touch()).await {
                Lookup::Hit(value) => return S::from_value(value),
                Lookup::Absent => match S::absent() {
                    Some(absent) => return absent,
                    // Another function's absent result under the same key: ours has none.
                    None => miss.overwrite = true,
                },
                Lookup::Miss => {}
                Lookup::Undecodable => miss.overwrite = true,
                Lookup::Foreign => miss.store_failing = true,
                Lookup::Failed(error) => miss.read_failed(error.kind()),
            }
        }
        if let (Some(timeout), Some(called), Some(_)) = (policy.timeout, called, &miss.stale) {
            // A stale value to answer with: the body may overrun its timeout.
            let left = timeout.saturating_sub(called.elapsed());
            return miss.run_within::<S, R, B>(body, left).await;
        }
        miss.run::<S, R, _>(|| body.start()).await
    }

    /// Reads `key` with its age, for policies with `stale` or `refresh`.
    pub(crate) async fn lookup_aged<T>(
        &self,
        counters: &Counters,
        key: &str,
        policy: &Policy,
        cloner: Cloner<T>,
    ) -> Aged<T>
    where
        T: DeserializeOwned + 'static,
    {
        match self.inner.store.get_aged(key, policy.lifetime()).await {
            // An absent result lives by its own expiry, whatever the age says.
            Ok(Some(found)) if found.entry.is_absent() && found.age != Duration::MAX => {
                counters.hit();
                tracing::debug!(key, "cache hit (absent)");
                Aged::Absent
            }
            Ok(Some(found)) if found.entry.is_absent() => {
                counters.miss();
                Aged::Miss
            }
            // Without `stale`/`refresh` (a near-cache read) any value is fresh, as for `GET`.
            Ok(Some(found))
                if found.age < policy.ttl
                    || (!policy.tracks_age() && found.age != Duration::MAX) =>
            {
                match found.entry.take(cloner) {
                    Ok(value) => {
                        counters.hit();
                        tracing::debug!(key, age = ?found.age, "cache hit");
                        Aged::Fresh(value, found)
                    }
                    Err(error) => match undecodable(counters, key, &error) {
                        true => Aged::Foreign,
                        false => Aged::Undecodable,
                    },
                }
            }
            Ok(Some(found)) => {
                counters.miss();
                tracing::debug!(key, "cache miss (expired value kept for stale fallback)");
                Aged::Stale(found.entry)
            }
            Ok(None) => {
                counters.miss();
                tracing::debug!(key, "cache miss");
                Aged::Miss
            }
            Err(error) => {
                self.read_failed(counters, key, &error);
                Aged::Failed(error)
            }
        }
    }

    /// Write-through for `#[cache_put]`: stores the value of `returned`, if any. Failures are
    /// counted and logged, never returned.
    pub(crate) async fn put_outcome<S, R>(
        &self,
        function: &str,
        key: &str,
        ttl: Duration,
        cloner: Cloner<S::Value>,
        returned: &R,
    ) where
        S: Shape<R>,
        S::Value: Serialize + Send + Sync + 'static,
    {
        let Outcome::Value(value) = S::outcome(returned) else {
            return;
        };
        let counters = self.inner.stats.counters(function);
        let entry = match Entry::encode(value, cloner, &self.inner.settings.format) {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(key, %error, "value cannot be encoded; the old value is removed instead");
                counters.error(ErrorKind::Encode);
                self.drop_old_value(&counters, key).await;
                return;
            }
        };
        if self.breaker_state() == crate::BreakerState::Open {
            // Skipped, but the old value must not outlive the outage.
            self.inner.flights.detach(|running| running == key);
            self.keep_pending(crate::pending::PendingTarget::Key(key.to_owned()));
            self.near_evict(key);
            return;
        }
        if entry.size() > self.inner.settings.max_value_bytes {
            tracing::warn!(
                key,
                bytes = entry.size(),
                max = self.inner.settings.max_value_bytes,
                "value too large to cache; the old value is removed instead"
            );
            counters.error(ErrorKind::TooLarge);
            self.drop_old_value(&counters, key).await;
            return;
        }
        if let Err(error) = self.write(key, &Arc::new(entry), ttl).await {
            tracing::warn!(key, %error, store = self.inner.store.kind(), "cache write failed");
            counters.error(error.kind());
        }
    }

    /// A write-through: no flight running now may serve its (older) value to a caller that
    /// starts after this returns, and the store replaces whatever the key held, which voids
    /// the fill tickets of loads still running in any process.
    ///
    /// A write that fails for a connection reason leaves the key's old value in Redis: it
    /// is kept as a pending invalidation of the key (see `pending.rs`).
    pub(crate) async fn write(&self, key: &str, entry: &Arc<Entry>, ttl: Duration) -> Result<()> {
        self.inner.flights.detach(|running| running == key);
        let written = self.inner.store.set(key, entry, ttl).await;
        match &written {
            Err(error) if crate::pending::retryable(error.kind()) => {
                self.keep_pending(crate::pending::PendingTarget::Key(key.to_owned()));
            }
            // Redis refused the value (`OOM` under `noeviction`, ...) but still accepts `DEL`:
            // the old value must not outlive the write.
            Err(error) => {
                tracing::warn!(key, %error, "the new value was refused; removing the old one");
                let _ = self.remove_for_write(key).await;
            }
            Ok(()) => {}
        }
        self.near_evict(key);
        written
    }

    /// The key's new value cannot be stored (too large, not encodable, refused by Redis):
    /// its old value is removed instead, so no call that starts after the write returns
    /// gets it. Failures are counted and logged.
    pub(crate) async fn drop_old_value(&self, counters: &Counters, key: &str) {
        if let Err(error) = self.remove_for_write(key).await {
            tracing::warn!(key, %error, store = self.inner.store.kind(), "the old value could not be removed");
            counters.error(error.kind());
        }
    }

    /// Removes `key` on behalf of a write: no running flight of it may be joined any more,
    /// a removal that failed for a connection reason is kept for replay, and the near copy
    /// goes.
    pub(crate) async fn remove_for_write(&self, key: &str) -> Result<u64> {
        self.inner.flights.detach(|running| running == key);
        let removed = self.inner.store.remove(key).await.inspect_err(|error| {
            if crate::pending::retryable(error.kind()) {
                self.keep_pending(crate::pending::PendingTarget::Key(key.to_owned()));
            }
        });
        self.near_evict(key);
        removed
    }

    /// Whether `entry` may be stored: Redis is not known down, and the value is not over
    /// `max_value_bytes` (counted).
    fn usable(&self, counters: &Counters, key: &str, entry: &Entry) -> bool {
        if self.breaker_state() == crate::BreakerState::Open {
            // Redis is known down and the read already counted it: skip the write.
            return false;
        }
        if entry.size() > self.inner.settings.max_value_bytes {
            tracing::warn!(
                key,
                bytes = entry.size(),
                max = self.inner.settings.max_value_bytes,
                "value too large to cache; not stored"
            );
            counters.error(ErrorKind::TooLarge);
            return false;
        }
        true
    }

    /// Step 3 of the fill protocol: stores a loaded value if its ticket still holds.
    /// Failures are counted and logged.
    pub(crate) async fn fill(
        &self,
        counters: &Counters,
        key: &str,
        ticket: &Ticket,
        entry: &Arc<Entry>,
        ttl: Duration,
    ) -> Filled {
        if !self.usable(counters, key, entry) {
            return Filled::Skipped;
        }
        let filled = self.inner.store.fill(key, ticket, entry, ttl).await;
        self.near_evict(key);
        match filled {
            Ok(true) => Filled::Stored,
            Ok(false) => {
                tracing::debug!(
                    key,
                    "the key was written or invalidated while loading; value returned, not stored"
                );
                Filled::Refused
            }
            Err(error) => {
                tracing::warn!(key, %error, store = self.inner.store.kind(), "cache write failed");
                counters.error(error.kind());
                Filled::Failed
            }
        }
    }
}

/// The policy of [`Cache::get`] on a near cache: any stored value is fresh.
/// (A finite lifetime, so a key without expiry reads with a finite age.)
const DIRECT_GET: Policy = Policy::ttl(Duration::from_secs(1 << 32));

enum Lookup<T> {
    Hit(T),
    /// A cached absent result (`absent_ttl`).
    Absent,
    Miss,
    /// A value is stored but does not decode: replace it.
    Undecodable,
    /// A value written for another type or schema: a miss that leaves it in place.
    Foreign,
    Failed(Error),
}

/// A stored value that does not decode: counted (by its kind), then treated as a miss.
/// Returns whether it was written for another type or schema (a rolling upgrade): such a
/// value is left in place, so two versions sharing a key never overwrite each other in a
/// loop; anything else (garbage, another service's data) is replaced by the fresh value.
fn undecodable(counters: &Counters, key: &str, error: &DecodeError) -> bool {
    tracing::warn!(key, %error, "cached value does not decode; treating as a miss");
    counters.error(error.kind());
    counters.miss();
    matches!(error, DecodeError::Schema)
}

/// A lookup that knows the value's age.
pub(crate) enum Aged<T> {
    /// Younger than the TTL: the value, and its age and version.
    Fresh(T, Found),
    /// Past the TTL but kept for `stale`.
    Stale(Arc<Entry>),
    /// A cached absent result (`absent_ttl`).
    Absent,
    Miss,
    /// A value is stored but does not decode: replace it.
    Undecodable,
    /// A value written for another type or schema: a miss that leaves it in place.
    Foreign,
    Failed(Error),
}

/// The longest time to live accepted: far beyond any cache's need, and far from the
/// overflow of `Instant` arithmetic and of Redis' millisecond expiries.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Rejects TTLs the stores cannot honour.
pub(crate) fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < Duration::from_millis(1) {
        return Err(Error::InvalidTtl { ttl, reason: "a time to live must be at least 1ms" });
    }
    if ttl > MAX_TTL {
        return Err(Error::InvalidTtl { ttl, reason: "a time to live must be at most 100 years" });
    }
    Ok(())
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.inner.store.kind())
            .field("prefix", &self.inner.store.prefix())
            .finish_non_exhaustive()
    }
}
