//! The [`Cache`] handle and cache-aside: look up, on a miss load once, store, return.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::CacheBuilder;
use crate::codec::{Cloner, Entry};
use crate::error::{Error, ErrorKind, Result};
use crate::flight::{self, Flights, Join, Landed};
use crate::key::validate_key;
use crate::lock::LocalLocks;
use crate::shape::{Outcome, ResultShape, Shape};
use crate::stats::{Counters, Stats, StatsRegistry, DIRECT_CALLS};
use crate::store::memory::MemoryStore;
use crate::store::Store;

static NEXT_CACHE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Default bound of the memory store: 128 MiB of keys and JSON-encoded values.
pub(crate) const DEFAULT_MEMORY_CAPACITY: u64 = 128 * 1024 * 1024;

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
    pub(crate) prefix: String,
    pub(crate) settings: Settings,
    pub(crate) stats: StatsRegistry,
    pub(crate) flights: Flights,
    pub(crate) local_locks: LocalLocks,
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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lock_lease: Duration::from_secs(5),
            lock_wait: Duration::from_secs(10),
            max_value_bytes: 4 * 1024 * 1024,
        }
    }
}

/// How one call site caches.
pub(crate) struct Policy {
    /// How long a value is fresh.
    pub(crate) ttl: Duration,
    /// Coordinate loads across processes.
    pub(crate) lock: bool,
    /// How long a value is kept in all (`>= ttl`), to be served if the body fails.
    pub(crate) stale: Option<Duration>,
    /// Age after which a hit recomputes the value (`< ttl`).
    pub(crate) refresh: Option<Duration>,
}

impl Policy {
    /// A policy with a time to live only.
    pub(crate) fn ttl(ttl: Duration) -> Policy {
        Policy { ttl, lock: false, stale: None, refresh: None }
    }

    /// How long the store keeps a value.
    pub(crate) fn lifetime(&self) -> Duration {
        self.stale.map_or(self.ttl, |stale| stale.max(self.ttl))
    }

    /// Whether hits need the value's age (one pipelined `PTTL` more on Redis).
    fn tracks_age(&self) -> bool {
        self.stale.is_some() || self.refresh.is_some()
    }
}

impl Cache {
    /// An in-process cache bounded to 128 MiB (use [`Cache::builder`] to change the bound).
    pub fn memory() -> Cache {
        Cache::from_store(
            Store::Memory(MemoryStore::new(DEFAULT_MEMORY_CAPACITY)),
            String::new(),
            Settings::default(),
        )
    }

    /// A builder for a Redis-backed (or bounded in-memory) cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    pub(crate) fn from_store(store: Store, prefix: String, settings: Settings) -> Cache {
        Cache {
            inner: Arc::new(CacheInner {
                id: NEXT_CACHE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                store,
                prefix,
                settings,
                stats: StatsRegistry::default(),
                flights: Flights::default(),
                local_locks: LocalLocks::default(),
            }),
        }
    }

    /// The prefix put before every key in Redis (empty for the memory store).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
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
        match self.lookup::<T>(&counters, key, None).await {
            Lookup::Hit(value) => Ok(Some(value)),
            Lookup::Miss => Ok(None),
            Lookup::Failed(error) => Err(error),
        }
    }

    /// Stores `value` under `key` for `ttl`, replacing what was there.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`] (zero, or under one millisecond),
    /// [`Error::Encode`] when `value` cannot be serialized, [`Error::Backend`] when Redis fails.
    /// Nothing is stored when an error is returned.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<()> {
        validate_key(key)?;
        validate_ttl(ttl)?;
        let json = serde_json::to_vec(value)
            .map_err(|source| Error::Encode { key: key.to_owned(), source })?;
        if json.len() > self.inner.settings.max_value_bytes {
            return Err(Error::ValueTooLarge {
                key: key.to_owned(),
                bytes: json.len(),
                max: self.inner.settings.max_value_bytes,
            });
        }
        let entry = Arc::new(Entry::from_json(json));
        self.inner.store.set(key, &entry, ttl).await.inspect_err(|error| {
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
        self.load_through::<ResultShape, _, _>(&counters, key, &Policy::ttl(ttl), None, load).await
    }

    /// The state of the circuit breaker in front of Redis (always closed for the memory
    /// store).
    pub fn breaker_state(&self) -> crate::BreakerState {
        match &self.inner.store {
            Store::Redis(redis) => redis.breaker_state(),
            Store::Memory(_) => crate::BreakerState::Closed,
        }
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
    /// | `cache_misses_total` | counter | `function` | calls that found nothing in the cache ([`Stats::misses`]) |
    /// | `cache_loads_total` | counter | `function` | times a body ran to fill the cache ([`Stats::loads`]) |
    /// | `cache_coalesced_total` | counter | `function` | misses answered by another caller's concurrent load ([`Stats::coalesced`]) |
    /// | `cache_stale_total` | counter | `function` | expired values served because the body failed ([`Stats::stale`]) |
    /// | `cache_refreshes_total` | counter | `function` | values recomputed before they expired ([`Stats::refreshes`]) |
    /// | `cache_invalidated_keys_total` | counter | `function` | keys removed by invalidation ([`Stats::invalidated`]) |
    /// | `cache_errors_total` | counter | `function`, `kind` | failures by [`ErrorKind`] ([`Stats::errors`]); `kind="connection"` always, other kinds once non-zero |
    /// | `cache_load_duration_seconds` | histogram | `function`, `le` | time spent running bodies to fill the cache (`_bucket`, `_sum`, `_count`) |
    /// | `cache_breaker_state` | gauge | `state` | the circuit breaker in front of Redis: 1 for the current state (`closed`, `open`, `half_open`), 0 for the others |
    ///
    /// `function` is the function's `name = ...` (by default its identifier), or
    /// [`DIRECT_CALLS`] for the programmatic API.
    ///
    /// With the `metrics` feature, every per-function family above (all but
    /// `cache_breaker_state`) is also reported through the `metrics` facade, under the same
    /// name and labels (histogram buckets are the exporter's).
    pub fn prometheus(&self) -> String {
        let state = crate::metric_families::CacheState { breaker: self.breaker_state() };
        crate::prometheus::render(&self.inner.stats, &state)
    }

    /// A read that Redis failed (down, timeout, breaker open): counted as an error and a miss;
    /// the caller runs its body.
    fn read_failed(&self, counters: &Counters, key: &str, error: &Error) {
        tracing::warn!(key, %error, store = self.inner.store.kind(), "cache read failed");
        counters.error(error.kind());
        counters.miss();
    }

    /// Reads `key`, counting a hit, a miss or an error.
    async fn lookup<T>(&self, counters: &Counters, key: &str, cloner: Cloner<T>) -> Lookup<T>
    where
        T: DeserializeOwned + 'static,
    {
        match self.inner.store.get(key).await {
            Ok(Some(entry)) => match entry.take(cloner) {
                Ok(value) => {
                    counters.hit();
                    tracing::debug!(key, "cache hit");
                    Lookup::Hit(value)
                }
                Err(error) => {
                    undecodable(counters, key, &error);
                    Lookup::Miss
                }
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
    pub(crate) async fn load_through<S, R, Fut>(
        &self,
        counters: &Counters,
        key: &str,
        policy: &Policy,
        cloner: Cloner<S::Value>,
        load: impl FnOnce() -> Fut,
    ) -> R
    where
        S: Shape<R>,
        S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
        Fut: Future<Output = R>,
    {
        // An expired value kept for `stale`, served if the body fails.
        let mut stale: Option<Arc<Entry>> = None;
        let store_failing = if policy.tracks_age() {
            match self.lookup_aged(counters, key, policy, cloner).await {
                Aged::Fresh(value, age) => {
                    if policy.refresh.is_some_and(|refresh| age >= refresh) {
                        return self
                            .refresh_early::<S, R, Fut>(counters, key, policy, cloner, load, value)
                            .await;
                    }
                    return S::from_value(value);
                }
                Aged::Stale(entry) => {
                    stale = Some(entry);
                    false
                }
                Aged::Miss => false,
                Aged::Failed => true,
            }
        } else {
            match self.lookup(counters, key, cloner).await {
                Lookup::Hit(value) => return S::from_value(value),
                Lookup::Miss => false,
                Lookup::Failed(_) => true,
            }
        };
        let ttl = policy.lifetime();
        loop {
            match self.inner.flights.join(key) {
                Join::Leader(mut leader) => {
                    // A flight for this key may have finished between our miss and now
                    // (not worth asking a store that just failed, nor about a stale entry;
                    // with `lock` the lease holder looks again anyway).
                    let locked = policy.lock && matches!(self.inner.store, Store::Redis(_));
                    let landed = if store_failing || stale.is_some() || locked {
                        None
                    } else {
                        self.inner.store.get(key).await.ok().flatten()
                    };
                    if let Some(entry) = landed {
                        if let Ok(value) = entry.take(cloner) {
                            leader.publish(Landed::Value(entry));
                            counters.coalesced();
                            return S::from_value(value);
                        }
                    }
                    let returned =
                        if let (true, Store::Redis(redis)) = (policy.lock, &self.inner.store) {
                            self.load_locked::<S, R, Fut>(
                                redis,
                                counters,
                                key,
                                ttl,
                                cloner,
                                load,
                                &mut leader,
                                stale.as_ref(),
                            )
                            .await
                        } else {
                            self.load_leading::<S, R, Fut>(
                                counters,
                                key,
                                ttl,
                                cloner,
                                load,
                                &mut leader,
                            )
                            .await
                        };
                    return serve_stale::<S, R>(counters, stale.as_ref(), cloner, returned);
                }
                Join::Follower(follower) => match flight::wait(follower).await {
                    Landed::Value(entry) => match entry.take(cloner) {
                        Ok(value) => {
                            counters.coalesced();
                            return S::from_value(value);
                        }
                        Err(_) => {
                            // The leader's value did not decode as our type (two functions
                            // sharing a key with different types): load for ourselves.
                            counters.error(ErrorKind::Decode);
                            let returned = self
                                .load_alone::<S, R, Fut>(counters, key, ttl, cloner, load)
                                .await;
                            return serve_stale::<S, R>(counters, stale.as_ref(), cloner, returned);
                        }
                    },
                    Landed::Absent => {
                        if let Some(absent) = S::absent() {
                            counters.coalesced();
                            return absent;
                        }
                        return self
                            .load_alone::<S, R, Fut>(counters, key, ttl, cloner, load)
                            .await;
                    }
                    // The leader's body failed. With a stale value, serve it without running
                    // the body again; otherwise errors are not shareable (`E` need not be
                    // `Clone`), so each caller gets its own body's result.
                    Landed::Failed => {
                        if let Some(value) =
                            stale.as_ref().and_then(|entry| entry.take(cloner).ok())
                        {
                            counters.stale();
                            return S::from_value(value);
                        }
                        return self
                            .load_alone::<S, R, Fut>(counters, key, ttl, cloner, load)
                            .await;
                    }
                    // The leader was cancelled or panicked: elect a new one.
                    Landed::Abandoned | Landed::Running => continue,
                },
            }
        }
    }

    /// Reads `key` with its age, for policies with `stale` or `refresh`.
    async fn lookup_aged<T>(
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
            Ok(Some((entry, age))) if age < policy.ttl => match entry.take(cloner) {
                Ok(value) => {
                    counters.hit();
                    tracing::debug!(key, ?age, "cache hit");
                    Aged::Fresh(value, age)
                }
                Err(error) => {
                    undecodable(counters, key, &error);
                    Aged::Miss
                }
            },
            Ok(Some((entry, _))) => {
                counters.miss();
                tracing::debug!(key, "cache miss (expired value kept for stale fallback)");
                Aged::Stale(entry)
            }
            Ok(None) => {
                counters.miss();
                tracing::debug!(key, "cache miss");
                Aged::Miss
            }
            Err(error) => {
                self.read_failed(counters, key, &error);
                Aged::Failed
            }
        }
    }

    /// Runs `load` as the flight's leader: counts the load, wakes the followers with the
    /// outcome and stores a cacheable value.
    pub(crate) async fn load_leading<S, R, Fut>(
        &self,
        counters: &Counters,
        key: &str,
        ttl: Duration,
        cloner: Cloner<S::Value>,
        load: impl FnOnce() -> Fut,
        leader: &mut flight::Leader<'_>,
    ) -> R
    where
        S: Shape<R>,
        S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
        Fut: Future<Output = R>,
    {
        let started = Instant::now();
        let returned = load().await;
        counters.load(started.elapsed());
        self.store_outcome::<S, R>(counters, key, ttl, cloner, &returned, leader).await;
        returned
    }

    /// Runs `load` outside any flight and stores a cacheable result.
    async fn load_alone<S, R, Fut>(
        &self,
        counters: &Counters,
        key: &str,
        ttl: Duration,
        cloner: Cloner<S::Value>,
        load: impl FnOnce() -> Fut,
    ) -> R
    where
        S: Shape<R>,
        S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
        Fut: Future<Output = R>,
    {
        let started = Instant::now();
        let returned = load().await;
        counters.load(started.elapsed());
        if let Outcome::Value(value) = S::outcome(&returned) {
            if let Ok(entry) = Entry::encode(value, cloner) {
                self.store(counters, key, &Arc::new(entry), ttl).await;
            }
        }
        returned
    }

    /// Publishes the leader's outcome to its followers, then stores a cacheable value.
    /// Returns whether a value was stored.
    pub(crate) async fn store_outcome<S, R>(
        &self,
        counters: &Counters,
        key: &str,
        ttl: Duration,
        cloner: Cloner<S::Value>,
        returned: &R,
        leader: &mut flight::Leader<'_>,
    ) -> bool
    where
        S: Shape<R>,
        S::Value: Serialize + Send + Sync + 'static,
    {
        match S::outcome(returned) {
            Outcome::Value(value) => match Entry::encode(value, cloner) {
                Ok(entry) => {
                    let entry = Arc::new(entry);
                    leader.publish(Landed::Value(Arc::clone(&entry)));
                    if leader.invalidated() {
                        tracing::debug!(
                            key,
                            "key invalidated while loading; value returned, not stored"
                        );
                        return false;
                    }
                    self.store(counters, key, &entry, ttl).await
                }
                Err(error) => {
                    tracing::warn!(key, %error, "value cannot be encoded as JSON; not cached");
                    counters.error(ErrorKind::Encode);
                    leader.publish(Landed::Failed);
                    false
                }
            },
            Outcome::Absent => {
                leader.publish(Landed::Absent);
                false
            }
            Outcome::Failed => {
                leader.publish(Landed::Failed);
                false
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
        match Entry::encode(value, cloner) {
            Ok(entry) => {
                self.store(&counters, key, &Arc::new(entry), ttl).await;
            }
            Err(error) => {
                tracing::warn!(key, %error, "value cannot be encoded as JSON; not cached");
                counters.error(ErrorKind::Encode);
            }
        }
    }

    /// Stores `entry`; a failure is counted and logged. Returns whether it was stored.
    async fn store(
        &self,
        counters: &Counters,
        key: &str,
        entry: &Arc<Entry>,
        ttl: Duration,
    ) -> bool {
        if self.breaker_state() == crate::BreakerState::Open {
            // Redis is known down and the read already counted it: skip the write.
            return false;
        }
        if entry.json.len() > self.inner.settings.max_value_bytes {
            tracing::warn!(
                key,
                bytes = entry.json.len(),
                max = self.inner.settings.max_value_bytes,
                "value too large to cache; not stored"
            );
            counters.error(ErrorKind::TooLarge);
            return false;
        }
        match self.inner.store.set(key, entry, ttl).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(key, %error, store = self.inner.store.kind(), "cache write failed");
                counters.error(error.kind());
                false
            }
        }
    }
}

enum Lookup<T> {
    Hit(T),
    Miss,
    Failed(Error),
}

/// A stored value that does not decode (another service's data, an old schema): counted,
/// then treated as a miss, so the fresh value overwrites it.
fn undecodable(counters: &Counters, key: &str, error: &serde_json::Error) {
    tracing::warn!(key, %error, "cached value does not decode; treating as a miss");
    counters.error(ErrorKind::Decode);
    counters.miss();
}

/// A lookup that knows the value's age.
enum Aged<T> {
    /// Younger than the TTL: the value and its age.
    Fresh(T, Duration),
    /// Past the TTL but kept for `stale`.
    Stale(Arc<Entry>),
    Miss,
    Failed,
}

/// `returned`, or the stale value when the body failed and one is kept.
pub(crate) fn serve_stale<S, R>(
    counters: &Counters,
    stale: Option<&Arc<Entry>>,
    cloner: Cloner<S::Value>,
    returned: R,
) -> R
where
    S: Shape<R>,
    S::Value: DeserializeOwned + 'static,
{
    if !matches!(S::outcome(&returned), Outcome::Failed) {
        return returned;
    }
    match stale.and_then(|entry| entry.take(cloner).ok()) {
        Some(value) => {
            counters.stale();
            S::from_value(value)
        }
        None => returned,
    }
}

/// Rejects TTLs the stores cannot honour.
pub(crate) fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < Duration::from_millis(1) {
        return Err(Error::InvalidTtl { ttl, reason: "a time to live must be at least 1ms" });
    }
    Ok(())
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.inner.store.kind())
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}
