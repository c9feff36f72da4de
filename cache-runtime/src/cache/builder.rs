//! [`CacheBuilder`]: choosing and configuring the store.

use std::sync::Arc;
use std::time::Duration;

use super::Cache;
use crate::core::{CacheCore, Settings, DEFAULT_MEMORY_CAPACITY};
use crate::error::{Error, Result};
use crate::format::Codec;
#[cfg(feature = "redis")]
use crate::near::tracking::{self, TrackingOptions};
#[cfg(feature = "redis")]
use crate::near::Near;
#[cfg(feature = "redis")]
use crate::store::endpoint::{redact_url, Endpoints, Tls};
#[cfg(feature = "redis")]
use crate::store::redis::RedisOptions;
use crate::store::Store;

/// Builds a [`Cache`]: Redis when [`redis`](Self::redis) is given, the memory store otherwise.
///
/// The Redis settings (`redis`, `redis_cluster`, `tls_root_cert`, `tls_client_cert`,
/// `near_cache`, `connect_timeout`, `command_timeout`) exist with the `redis` feature (on by
/// default).
///
/// ```no_run
/// # async fn run() -> Result<(), cache_runtime::Error> {
/// # #[cfg(feature = "redis")]
/// let cache = cache_runtime::Cache::builder()
///     .redis("redis://127.0.0.1:6379")
///     .prefix("okla:")
///     .build()
///     .await?;
/// # #[cfg(not(feature = "redis"))]
/// # let cache = cache_runtime::Cache::builder().build().await?;
/// cache_runtime::set_default(cache.clone());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CacheBuilder {
    #[cfg(feature = "redis")]
    redis: RedisSetup,
    prefix: String,
    memory_capacity: u64,
    settings: Settings,
}

/// The builder's Redis settings (feature `redis`).
#[cfg(feature = "redis")]
#[derive(Clone)]
struct RedisSetup {
    /// Empty: the memory store.
    urls: Vec<String>,
    /// Certificates for `rediss://` (never printed).
    tls: Tls,
    cluster: bool,
    /// The master name behind Sentinel (`urls` are then the sentinels).
    sentinel: Option<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
    near_bytes: Option<u64>,
}

#[cfg(feature = "redis")]
impl Default for RedisSetup {
    fn default() -> Self {
        RedisSetup {
            urls: Vec::new(),
            tls: Tls::default(),
            cluster: false,
            sentinel: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(500),
            near_bytes: None,
        }
    }
}

/// URLs redacted (no password), certificates shown as given or not.
#[cfg(feature = "redis")]
impl std::fmt::Debug for RedisSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| redact_url(url)).collect();
        f.debug_struct("RedisSetup")
            .field("urls", &urls)
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("near_bytes", &self.near_bytes)
            .finish()
    }
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            #[cfg(feature = "redis")]
            redis: RedisSetup::default(),
            prefix: String::new(),
            memory_capacity: DEFAULT_MEMORY_CAPACITY,
            settings: Settings::default(),
        }
    }
}

impl CacheBuilder {
    /// Use the Redis server at `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS, the server's certificate checked against the system's root
    /// certificates and [`tls_root_cert`](Self::tls_root_cert)). The password never appears
    /// in an error, a log line or this builder's `Debug` output.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis.urls = vec![url.into()];
        self.redis.cluster = false;
        self.redis.sentinel = None;
        self
    }

    /// Use the primary that Redis Sentinel monitors as `master`, asking these sentinels
    /// (`redis://host:port` each; one answering is enough), and follow failovers: the cache
    /// moves to the new primary when the sentinels name it (asked every 500 ms, and after
    /// every connection failure). A user, password and database in the first URL apply to the
    /// primary too (the database is not sent to the sentinels).
    ///
    /// A write that meets a demoted primary (`READONLY`), a loading one (`LOADING`,
    /// `MASTERDOWN`) or a failover in progress is kept and replayed on the new primary, like
    /// one that met a connection failure; the writes and invalidations the old primary
    /// acknowledged in the last 15 s (which Redis' asynchronous replication may have lost)
    /// are replayed on the new primary too, and the near cache is flushed. See
    /// "Sentinel" in the README for what another process may still see meanwhile.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_runtime::Error> {
    /// let cache = cache_runtime::Cache::builder()
    ///     .redis_sentinel(
    ///         ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    ///         "mymaster",
    ///     )
    ///     .prefix("okla:")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_sentinel<U: Into<String>>(
        mut self,
        sentinels: impl IntoIterator<Item = U>,
        master: impl Into<String>,
    ) -> Self {
        self.redis.urls = sentinels.into_iter().map(Into::into).collect();
        self.redis.cluster = false;
        self.redis.sentinel = Some(master.into());
        self
    }

    /// Use the Redis Cluster reached through these seed nodes (`redis://host:port` each;
    /// one reachable node is enough to discover the others). Every feature works the same
    /// as on a standalone server; see the crate docs for what differs in cost.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_runtime::Error> {
    /// let cache = cache_runtime::Cache::builder()
    ///     .redis_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000", "redis://10.0.0.3:7000"])
    ///     .prefix("okla:")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_cluster<U: Into<String>>(
        mut self,
        seed_nodes: impl IntoIterator<Item = U>,
    ) -> Self {
        self.redis.urls = seed_nodes.into_iter().map(Into::into).collect();
        self.redis.cluster = true;
        self.redis.sentinel = None;
        self
    }

    /// Put `prefix` before every key in Redis (`"okla:"` stores `vehicle:42` as
    /// `okla:vehicle:42`). Several services or environments can share a Redis database
    /// under different prefixes. Ignored by the memory store, which is private to its cache.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bound the memory store to about `bytes` of keys and JSON-encoded values
    /// (default 128 MiB); the least useful entries are evicted beyond it.
    pub fn memory_capacity(mut self, bytes: u64) -> Self {
        self.memory_capacity = bytes;
        self
    }

    /// Keep hot entries in process memory too (a near cache, L1), up to about `max_bytes` of
    /// keys and JSON-encoded values, in front of Redis or Redis Cluster. A near-cache hit
    /// costs no round trip. Every annotated function and `get`/`get_or_load` of this cache
    /// use it; `#[cached(..., near = false)]` opts one function out.
    ///
    /// Redis keeps it coherent: the cache opens one RESP3 connection per Redis node (per
    /// primary of a cluster) and turns on client-side caching in broadcasting mode
    /// (`CLIENT TRACKING ON BCAST PREFIX <prefix>`), so any write, deletion, expiry or
    /// eviction of a key by any client evicts it from every process's near cache. While
    /// tracking is not known live (connecting, reconnecting, Redis restarted, breaker open)
    /// the near cache serves nothing, and it is flushed on every disconnect. See "Near
    /// cache" in the README for the guarantee and its bound. Needs Redis 6 or later.
    ///
    /// No effect on a memory-only cache, which is in process already.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn near_cache(mut self, max_bytes: u64) -> Self {
        self.redis.near_bytes = Some(max_bytes);
        self
    }

    /// Trust the CA certificate(s) in `pem` (PEM text, one or more certificates) for
    /// `rediss://` connections, besides the system's root certificates: a managed service's
    /// or a private CA. Every connection the cache opens uses it (data, `lock` wake-ups,
    /// near-cache tracking; each node of a cluster). Needs `rediss://` URLs: with a plain
    /// `redis://` URL, [`build`](Self::build) answers [`Error::InvalidConfig`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = cache_runtime::Cache::builder()
    ///     .redis("rediss://app:secret@redis.internal:6380")
    ///     .tls_root_cert(std::fs::read("/etc/redis/ca.pem")?)
    ///     .prefix("okla:")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.redis.tls.root_cert = Some(pem.into());
        self
    }

    /// Present this client certificate (PEM chain) and private key (PEM, PKCS#8, PKCS#1 or
    /// SEC1) on `rediss://` connections: mutual TLS, for a server started with
    /// `tls-auth-clients yes`. Used by every connection, like
    /// [`tls_root_cert`](Self::tls_root_cert); a malformed PEM is an
    /// [`Error::InvalidConfig`] at [`build`](Self::build). The key never appears in `Debug`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn tls_client_cert(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.redis.tls.client_cert = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// How long to wait for a connection to Redis (default 1 s).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.redis.connect_timeout = timeout;
        self
    }

    /// How long to wait for a Redis reply (default 500 ms). A call whose cache read times
    /// out runs its body instead.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.redis.command_timeout = timeout;
        self
    }

    /// The lease of a `#[cached(lock)]` load (default 5 s). It is renewed while the body
    /// runs, so it only bounds how long others wait after the loading process died.
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.settings.lock_lease = lease;
        self
    }

    /// How long a `#[cached(lock)]` caller waits for another process's load before running
    /// its own body (default 10 s). No caller ever waits longer.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.settings.lock_wait = wait;
        self
    }

    /// How long a load may take and still store its value (default 60 s). A miss leaves a
    /// pending marker at its key for this long; the value is stored only if the marker is
    /// still there, which is how an invalidation voids the loads that started before it
    /// (see "Consistency" in the crate docs). A slower load still returns its value; it is
    /// just not cached.
    pub fn fill_window(mut self, window: Duration) -> Self {
        self.settings.fill_window = window;
        self
    }

    /// Values larger than `bytes` are not cached (default 4 MiB): the call still returns
    /// its value, and the skip is counted as a `too_large` error. Large values make every
    /// hit slow and can evict many small ones. The limit applies to the stored size and to
    /// the encoded size before compression, so no reader ever inflates a value past it
    /// (a stored value that claims more is a miss, counted as `too_large`).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_value_bytes = bytes;
        self
    }

    /// Rendered keys longer than `bytes` (default 1024, without the prefix) never reach the
    /// store, neither as keys nor as invalidation-index members:
    ///
    /// - `#[cached]` runs its body and returns its result without the cache (no lookup, no
    ///   fill, no single flight); `#[cache_put]` stores nothing. Each is counted as a
    ///   `too_large` error and logged (at most one line a second).
    /// - `#[invalidates]` of such a key, or of a pattern whose shortest match is longer,
    ///   does nothing: nothing can be stored under it.
    /// - The programmatic API ([`Cache::get`], [`Cache::set`], [`Cache::get_or_load`],
    ///   [`Cache::invalidate`], [`Cache::rate_limit`]) answers [`Error::InvalidKey`], and
    ///   [`Cache::invalidate_pattern`] [`Error::InvalidPattern`] for a longer pattern.
    /// - `#[rate_limit]` keys are hashed instead: the first bytes, `#` and the SHA-256 of
    ///   the whole key, so every key keeps its own limit.
    ///
    /// Keys are not hashed for the cache because pattern invalidation matches the literal
    /// key. The bound must be at least 128.
    ///
    /// [`Cache::get`]: crate::Cache::get
    /// [`Cache::set`]: crate::Cache::set
    /// [`Cache::get_or_load`]: crate::Cache::get_or_load
    /// [`Cache::invalidate`]: crate::Cache::invalidate
    /// [`Cache::invalidate_pattern`]: crate::Cache::invalidate_pattern
    /// [`Cache::rate_limit`]: crate::Cache::rate_limit
    /// [`Error::InvalidPattern`]: crate::Error::InvalidPattern
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_key_bytes = bytes;
        self
    }

    /// Leaves keys out of the cache's telemetry (default `false`): the `cache.key` field of
    /// its spans is not recorded (nor `cache.pattern`), and its own log lines show
    /// `<redacted>` where they would show a key, a pattern or an error text's copy of the
    /// key. Turn it on when keys carry personal data (`user:<email>`) and traces or logs
    /// leave the service. Function names, outcomes and counts are still recorded; metrics
    /// never carry keys.
    pub fn redact_keys(mut self, redact: bool) -> Self {
        self.settings.redact_keys = redact;
        self
    }

    /// How values are serialized in Redis (default [`Codec::Json`], readable in
    /// `redis-cli`). Every value names its codec in its header, so values written with
    /// another codec (or by the previous release, plain JSON) are still read: switching
    /// codecs needs no flush. The memory store keeps typed copies and ignores this.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_runtime::Error> {
    /// use cache_runtime::Codec;
    /// let cache = cache_runtime::Cache::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .codec(Codec::MessagePack)
    ///     .compress_above(16 * 1024)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn codec(mut self, codec: Codec) -> Self {
        self.settings.format.codec = codec;
        self
    }

    /// Compress (lz4) values whose encoded size is over `bytes` (default: never). A value is
    /// kept compressed only if that makes it smaller. Ignored by the memory store.
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.settings.format.compress_above = Some(bytes);
        self
    }

    /// The schema version mixed into every value's fingerprint (default 0). Values stored
    /// by loads already carry their type's serde shape (field names, order and types), so
    /// structural changes need no bump; bump it when a cached type changes in a way its
    /// shape does not show (a unit or meaning changed, a hand-written `Deserialize`), or
    /// for types that cannot be traced and values written by `set` / `#[cache_put]` (see
    /// the README, "Value formats"). During the deploy, old and new instances then treat
    /// each other's values as misses instead of decoding them.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.settings.format.read.schema_version = version;
        self
    }

    /// Builds the cache. The Redis connection is opened lazily, so this succeeds while Redis
    /// is down; calls run their bodies until it answers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a malformed Redis URL; [`Error::InvalidConfig`] for a prefix
    /// that does not end with `:` or contains glob characters (`* ? [ ] \`), the reserved
    /// `#`, whitespace or control characters; a `max_key_bytes` under 128; a zero
    /// timeout, fill window or memory
    /// capacity; a zero `near_cache` bound; a Redis cache without a prefix on a server that
    /// may evict keys (a `maxmemory` with any `maxmemory-policy` but `noeviction`, or
    /// `CONFIG` refused), checked when Redis answers at build: pattern invalidation would
    /// need a keyspace scan that an unprefixed cache must refuse. Give the cache a prefix.
    /// Also [`Error::InvalidConfig`], naming the Cargo feature, for a [`codec`](Self::codec)
    /// or [`compress_above`](Self::compress_above) whose feature (`msgpack`, `postcard`,
    /// `lz4`) this build lacks, whichever the store.
    pub async fn build(mut self) -> Result<Cache> {
        self.settings.format.read.limit = self.settings.max_value_bytes;
        if let Some(why) = self.settings.format.missing_feature() {
            return Err(Error::InvalidConfig(why));
        }
        #[cfg(feature = "redis")]
        let redis = !self.redis.urls.is_empty();
        #[cfg(not(feature = "redis"))]
        let redis = false;
        if !redis {
            // Codecs apply to Redis bytes only: the memory store keeps typed copies.
            self.settings.format.codec = Codec::Json;
            self.settings.format.compress_above = None;
        }
        if let Some(bad) = self.prefix.chars().find(|&c| {
            matches!(c, '*' | '?' | '[' | ']' | '\\' | '#') || c.is_whitespace() || c.is_control()
        }) {
            return Err(Error::InvalidConfig(format!(
                "the prefix {:?} contains {bad:?}; a prefix must not contain glob characters, `#` (reserved for the cache's own keys), whitespace or control characters",
                self.prefix
            )));
        }
        if !self.prefix.is_empty() && !self.prefix.ends_with(':') {
            return Err(Error::InvalidConfig(format!(
                "the prefix {:?} must end with `:` (like \"okla:\"), so that one cache's keys can never run into another prefix's",
                self.prefix
            )));
        }
        if self.settings.max_key_bytes < crate::key::MIN_MAX_KEY_BYTES {
            return Err(Error::InvalidConfig(format!(
                "max_key_bytes must be at least {} (got {})",
                crate::key::MIN_MAX_KEY_BYTES,
                self.settings.max_key_bytes
            )));
        }
        if self.settings.fill_window.is_zero() {
            return Err(Error::InvalidConfig("fill_window must be greater than zero".into()));
        }
        if self.settings.lock_lease < Duration::from_millis(10) || self.settings.lock_wait.is_zero()
        {
            return Err(Error::InvalidConfig(
                "lock_lease must be at least 10ms and lock_wait above zero".into(),
            ));
        }
        #[cfg(feature = "redis")]
        {
            self.redis.check()?;
            if redis {
                return self.build_redis().await;
            }
        }
        if self.memory_capacity == 0 {
            return Err(Error::InvalidConfig("memory capacity must be greater than zero".into()));
        }
        let store = Store::memory(self.memory_capacity);
        Ok(Cache::from_core(Arc::new(CacheCore::new(store, self.settings, None))))
    }

    /// [`build`](Self::build) of a Redis cache, once the settings passed their checks.
    #[cfg(feature = "redis")]
    async fn build_redis(self) -> Result<Cache> {
        let redis = self.redis;
        let endpoints = Endpoints::new(redis.urls.clone(), &redis.tls)?;
        let near = redis.near_bytes.map(|max_bytes| {
            let tracking = TrackingOptions {
                endpoints,
                cluster: redis.cluster,
                sentinel: None,
                prefix: self.prefix.clone(),
                connect_timeout: redis.connect_timeout,
            };
            (Arc::new(Near::new(max_bytes, &self.prefix)), tracking)
        });
        let store = Store::redis(RedisOptions {
            urls: redis.urls,
            cluster: redis.cluster,
            sentinel: redis.sentinel,
            prefix: self.prefix.clone(),
            connect_timeout: redis.connect_timeout,
            command_timeout: redis.command_timeout,
            read: self.settings.format.read,
            tls: redis.tls,
        })?;
        // An unprefixed cache on a Redis that may evict keys could never invalidate a
        // pattern (its indexes would need a keyspace scan it must refuse): refused here,
        // when Redis answers (it may be down at start).
        store.check_setup().await?;
        if let Store::Redis(redis) = &store {
            redis.check_access_at_build(near.is_some());
        }
        let following = match &store {
            Store::Redis(redis) => redis.sentinel().cloned(),
            _ => None,
        };
        let near = near.map(|(near, mut options)| {
            options.sentinel = following.clone();
            tracking::spawn(&near, options);
            near
        });
        let core = Arc::new(CacheCore::new(store, self.settings, near));
        if let Some(link) = following {
            let core = Arc::downgrade(&core);
            link.on_change(Box::new(move |hand_over| {
                if let Some(core) = core.upgrade() {
                    crate::write::primary_changed(&core, Box::new(hand_over));
                }
            }));
        }
        Ok(Cache::from_core(core))
    }
}

#[cfg(feature = "redis")]
impl RedisSetup {
    /// The Redis settings' own checks (they apply to a memory cache too, as before).
    fn check(&self) -> Result<()> {
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(Error::InvalidConfig("timeouts must be greater than zero".into()));
        }
        if self.cluster && self.urls.is_empty() {
            return Err(Error::InvalidConfig("redis_cluster needs at least one seed node".into()));
        }
        if self.sentinel.is_some() && self.urls.is_empty() {
            return Err(Error::InvalidConfig("redis_sentinel needs at least one sentinel".into()));
        }
        if self.near_bytes == Some(0) {
            return Err(Error::InvalidConfig("near_cache needs a bound above zero bytes".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Cache, Codec, Error};

    /// A codec or compression whose Cargo feature this build lacks is refused at build,
    /// naming the feature; with the feature, the same settings build (memory store).
    #[tokio::test]
    async fn a_codec_without_its_feature_is_refused_naming_it() {
        let cases = [
            (Cache::builder().codec(Codec::MessagePack), "msgpack", cfg!(feature = "msgpack")),
            (Cache::builder().codec(Codec::Postcard), "postcard", cfg!(feature = "postcard")),
            (Cache::builder().compress_above(1024), "lz4", cfg!(feature = "lz4")),
        ];
        for (builder, feature, built_with) in cases {
            match builder.build().await {
                Ok(_) => assert!(built_with, "{feature}: built without the feature"),
                Err(Error::InvalidConfig(why)) => {
                    assert!(!built_with, "{feature}: refused with the feature: {why}");
                    assert!(why.contains(&format!("`{feature}` feature")), "{why}");
                }
                Err(other) => panic!("{feature}: {other}"),
            }
        }
        assert!(Cache::builder().codec(Codec::Json).build().await.is_ok());
    }
}
