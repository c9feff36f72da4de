//! The Redis store (standalone or Cluster, see [`super::link`]): values as JSON strings
//! under `prefix + key`, pending fill markers (see `store/mod.rs`), and the invalidation
//! indexes described in the crate docs.
//!
//! On a standalone server every write is one Lua script: the index updates and the write
//! happen atomically. On a cluster, where a script must stay in one slot, the index
//! updates are sent first and the write after them, so a key is never visible without its
//! index entry; keyspace-wide `SCAN`s run on every primary.
//!
//! - [`scripts`]: every Lua script, each invoked only through its typed call.
//! - [`index`]: the pattern invalidation's index walk, rebuild and keyspace scans.
//! - [`lease`]: leases, fencing and wake-ups on Redis (the interface is `store/lease.rs`).
//! - [`sentinel`]: the connection to the primary that Redis Sentinel names, across
//!   failovers.

mod access;
mod index;
mod lease;
mod scripts;
pub(crate) mod sentinel;
mod tags;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::ConnectionManagerConfig;
use tokio::sync::OnceCell;

use scripts::{
    Abandon, BeginFill, BeginFills, BeginKey, BeginReply, Call, Cover, Fill, IndexAdd,
    IndexAddMany, Replace, SettleKey, SettleOp, Settles, Target, Write,
};

use super::endpoint::{redact_url, Endpoints, Tls};
use super::lease::new_token;
use super::link::{needs_renewal, LazyCluster, Link, Standalone};
use super::{Begun, FillPlan, Found, Marker, Settle, Ticket, Touch, Version};
use crate::breaker::{is_connection_failure, Breaker, BreakerState, Pass};
use crate::codec::Entry;
use crate::error::{BackendError, Error, Result};
use crate::format::{ReadFormat, MAX_HEADER};
use crate::index::{levels, INDEX_NAMESPACE};
use crate::key::RESERVED;
use crate::notify::Notifier;
use sentinel::SentinelLink;

/// Pending markers start with this (a NUL byte first, which no JSON text has): a reader
/// takes them for a miss.
const MARKER_TAG: &[u8] = b"\0cache-runtime:loading:";

fn is_marker(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER_TAG)
}

/// What a marker adds around the value it keeps: [`MARKER_TAG`], an id (a lease token, under
/// 64 bytes), `\n`, an expiry in decimal ms and `\n`.
const MARKER_OVERHEAD: usize = MARKER_TAG.len() + 64 + 1 + 20 + 1;

/// What a script replies in place of a string longer than the bound it was given (see
/// `scripts.rs`): this tag, then the string's length in decimal. It starts with a NUL byte,
/// like the markers: no value of this cache starts so.
const OVER_LIMIT_TAG: &[u8] = b"\0cache-runtime:over-limit:";

/// The length in a script's [`OVER_LIMIT_TAG`] reply.
fn over_limit_reply(bytes: &[u8]) -> Option<usize> {
    let digits = bytes.strip_prefix(OVER_LIMIT_TAG)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The most keys one batch script call takes ([`RedisStore::begin_fills`],
/// [`RedisStore::settle_many`]): a batch of more is split, so no single call blocks the
/// server for long (a call costs a few microseconds per key).
pub(crate) const BATCH_CHUNK: usize = 500;

/// A copy of a store error, for each key of a batch call that failed as a whole.
fn again(error: &Error) -> Error {
    match error {
        Error::Backend(error) => Error::backend(error.0.clone()),
        _ => Error::Unavailable,
    }
}

/// The expired value a marker keeps for stale fallback, if any.
fn kept_by_marker(marker: &[u8]) -> Option<Vec<u8>> {
    let rest = &marker[MARKER_TAG.len()..];
    let id_end = rest.iter().position(|&b| b == b'\n')?;
    let rest = &rest[id_end + 1..];
    let expiry_end = rest.iter().position(|&b| b == b'\n')?;
    Some(rest[expiry_end + 1..].to_vec())
}

/// The most bytes a stored string of a cache reading with `read` can hold: a value of
/// `max_value_bytes` behind the longest header, or a pending marker keeping one.
fn read_bound(read: ReadFormat) -> usize {
    read.limit.saturating_add(MAX_HEADER + MARKER_OVERHEAD)
}

/// The `end` of a bounded read's `GETRANGE <key> 0 <end>`: [`read_bound`] (within what
/// Redis takes as an offset). `end` is inclusive: up to one byte more than any string of
/// the cache comes back, so a longer string shows as over.
fn read_end(read: ReadFormat) -> u64 {
    u64::try_from(read_bound(read)).unwrap_or(u64::MAX).min(i64::MAX as u64)
}

thread_local! {
    /// A bounded read's command, emptied, kept for the next one on this thread
    /// ([`RedisStore::get_owned`], every plain hit): its two buffers (the arguments' bytes
    /// and their ends) are reused instead of allocated and freed on every hit. A read that
    /// is dropped before its reply takes its command with it; the next one makes a new one.
    static SPARE_GET: std::cell::Cell<Option<redis::Cmd>> = const { std::cell::Cell::new(None) };
}

/// The longest prefixed key whose command is kept in `SPARE_GET`: what a thread keeps stays
/// small whatever `max_key_bytes` allows.
const SPARE_KEY_BYTES: usize = 512;

/// What the server's `maxmemory` settings mean for the invalidation indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EvictionPolicy {
    /// `maxmemory 0` or `noeviction`: keys go only when they expire or are deleted, so an
    /// index is complete from its creation.
    Never,
    /// Redis may evict any key, an index included (or the settings could not be read):
    /// an index is trusted only after a pattern invalidation has rebuilt it.
    Possible,
}

/// What one read of the eviction settings found.
#[derive(Debug, Clone, Copy)]
struct Reading {
    policy: EvictionPolicy,
    /// Whether the reading lasts: `false` when a node refused for a passing reason
    /// (loading, cluster down, a dead primary) and `policy` is only the safe assumption
    /// ([`EvictionPolicy::Possible`]) the write path keeps meanwhile.
    settled: bool,
}

pub(crate) struct RedisStore {
    connection: Link,
    prefix: String,
    notifier: Notifier,
    /// Shared with the probe's task (see [`guarded`](Self::guarded)).
    breaker: Arc<Breaker>,
    /// Read from the server on the first write.
    eviction: OnceCell<EvictionPolicy>,
    /// How values read back are decoded (schema version, inflate limit).
    read: ReadFormat,
    /// The last byte a bounded read asks for, in decimal ([`read_end`]): rendered once,
    /// not on every hit's command.
    read_end: Box<str>,
    /// What the Redis user may run, as last checked.
    access: access::Access,
}

/// Connection settings taken from the builder.
pub(crate) struct RedisOptions {
    /// One URL for a standalone server; the seed nodes of a cluster.
    pub(crate) urls: Vec<String>,
    pub(crate) cluster: bool,
    /// The master name Redis Sentinel monitors: `urls` are then the sentinels'.
    pub(crate) sentinel: Option<String>,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) read: ReadFormat,
    /// Certificates for `rediss://` URLs (every connection of the cache uses them).
    pub(crate) tls: Tls,
}

impl RedisStore {
    /// Checks the URL and prepares the connection without opening it: a cache can be built
    /// while Redis is down, and connects when Redis answers.
    pub(crate) fn new(options: RedisOptions) -> Result<Self> {
        let endpoints = Endpoints::new(options.urls.clone(), &options.tls)?;
        let clients = endpoints.clients()?;
        let connection = if options.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(options.urls.clone())
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.command_timeout)
                .retries(1);
            if let Some(certificates) = endpoints.certificates() {
                builder = builder.certs(certificates);
            }
            let client = builder.build().map_err(|source| Error::InvalidUrl {
                url: options.urls.iter().map(|url| redact_url(url)).collect::<Vec<_>>().join(","),
                source: BackendError(source),
            })?;
            Link::Cluster(Arc::new(LazyCluster::new(client)))
        } else if let Some(master) = &options.sentinel {
            let link = SentinelLink::new(
                &options.urls,
                master,
                options.connect_timeout,
                // Time to replay what a failover may have lost (one round trip per kept
                // scope, a new connection at worst) on a primary that answers.
                options.connect_timeout + options.command_timeout * 4,
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.connect_timeout))
                    .set_response_timeout(Some(options.command_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(100)),
                endpoints.certificates(),
            )
            .map_err(|source| Error::InvalidUrl {
                url: options.urls.iter().map(|url| redact_url(url)).collect::<Vec<_>>().join(","),
                source: BackendError(source),
            })?;
            Link::Sentinel(link)
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.command_timeout))
                // No retry inside a call: a silent or refusing server costs a call one
                // connect timeout, not several; the next call tries again.
                .set_number_of_retries(0)
                .set_max_delay(Duration::from_millis(100));
            Link::Standalone(Standalone::new(clients[0].clone(), config).map_err(Error::backend)?)
        };
        // Classic pub/sub reaches every node of a cluster: one subscription to any node
        // hears every fill notification.
        let notifier = match &connection {
            Link::Sentinel(link) => Notifier::following(link.clone(), &options.prefix),
            _ => Notifier::new(clients, &options.prefix),
        };
        Ok(RedisStore {
            connection,
            prefix: options.prefix,
            notifier,
            breaker: Arc::default(),
            eviction: OnceCell::new(),
            read: options.read,
            read_end: read_end(options.read).to_string().into(),
            access: access::Access::default(),
        })
    }

    /// The prefix of every key of this cache.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix + key`.
    pub(crate) fn full_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    /// `prefix + #<namespace><name>`: one of the runtime's own keys, which no user key can
    /// name (user keys never contain `#`).
    pub(crate) fn reserved_key(&self, namespace: &str, name: &str) -> String {
        format!("{}{RESERVED}{namespace}{name}", self.prefix)
    }

    /// Runs one Redis exchange behind the circuit breaker: refused at once while Redis is
    /// known down, and its outcome recorded.
    ///
    /// The half-open probe is not the exchange that happens to come first after the
    /// cool-down: it is whether Redis answers, a `PING` of every primary
    /// ([`ping_every_primary`]). A command that cannot succeed yet (a key or an index in a
    /// slot being migrated, a replayed invalidation that times out) then fails alone, as a
    /// normal failure, instead of keeping the whole store shut out with ever longer
    /// cool-downs while every node answers.
    ///
    /// The probe runs on a task of its own and reaches its verdict even if the command that
    /// drew it is dropped. Commands are dropped routinely: a fill on a cluster writes its
    /// index levels at once (`try_join_all`), and when one level draws the probe the next is
    /// refused at once (the probe is under way), which drops the first. A probe tied to its
    /// command would be abandoned by every such fill, and the breaker would never close
    /// while Redis answers.
    async fn guarded<T>(&self, exchange: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        let Some(pass) = self.breaker.allow() else {
            return Err(Error::Unavailable);
        };
        if pass == Pass::Probe {
            let probe = tokio::spawn(probe(self.connection.clone(), Arc::clone(&self.breaker)));
            // Redis answers (the breaker is closed), or the probe's task panicked (it let
            // another probe go): this command goes on as a normal one.
            if let Ok(Err(error)) = probe.await {
                return Err(Error::backend(error));
            }
        }
        let outcome = exchange.await;
        if outcome.as_ref().is_err_and(needs_renewal) {
            // Refused credentials (or a peer that is not Redis): a new connection next time,
            // so a rotated password is picked up.
            self.connection.renew();
        }
        match &outcome {
            Err(error) if is_connection_failure(error) => self.breaker.failed(Pass::Normal),
            // An error reply still means Redis answers.
            _ => self.breaker.succeeded(),
        }
        outcome.map_err(Error::backend)
    }

    /// Checks the Redis user's permissions (see `access.rs`): now, or once Redis first
    /// answers; one warning names what is missing.
    pub(crate) fn check_access_at_build(&self, near: bool) {
        self.access.check_at_build(&self.connection, &self.prefix, near);
    }

    /// The permissions the Redis user lacks, each with what fails without it: checked again
    /// now (the last result if Redis does not answer).
    pub(crate) async fn missing_permissions(&self, near: bool) -> Vec<String> {
        match self.access.check(&self.connection, &self.prefix, near).await {
            Ok(missing) => missing,
            Err(_) => self.access.missing(),
        }
    }

    /// The circuit breaker's state.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The connection that follows the primary behind Sentinel, if this store has one.
    pub(crate) fn sentinel(&self) -> Option<&SentinelLink> {
        match &self.connection {
            Link::Sentinel(link) => Some(link),
            _ => None,
        }
    }

    /// How many primary changes the store followed (behind Sentinel; `None` otherwise).
    pub(crate) fn primary_generation(&self) -> Option<u64> {
        self.sentinel().map(SentinelLink::generation)
    }

    fn index_key(&self, level: &str) -> String {
        self.reserved_key(INDEX_NAMESPACE, level)
    }

    /// What the server's eviction settings mean for the indexes, read once (on the first
    /// write, or at build by [`check_setup`](Self::check_setup)) and logged. On a cluster,
    /// eviction on any primary counts. A read that fails (Redis unreachable, loading, ...)
    /// is not kept: the next call reads again.
    pub(crate) async fn eviction(&self) -> Result<EvictionPolicy> {
        let read = || async { self.read_eviction().await.map(|reading| reading.policy) };
        self.eviction.get_or_try_init(read).await.copied()
    }

    /// Reads the eviction settings of every primary (see [`Reading`]).
    async fn read_eviction(&self) -> Result<Reading> {
        let mut config = redis::cmd("CONFIG");
        config.arg("GET").arg("maxmemory*");
        let mut replies: Vec<Result<Vec<String>>> = Vec::new();
        if self.connection.is_cluster() {
            for (host, port) in self.guarded(self.connection.primaries()).await? {
                replies.push(
                    self.connection
                        .on_node(config.clone(), &host, port)
                        .await
                        .map_err(Error::backend),
                );
            }
        } else {
            let mut connection = self.connection.clone();
            replies.push(self.guarded(config.query_async(&mut connection)).await);
        }
        let mut policy = EvictionPolicy::Never;
        let mut settled = true;
        for reply in replies {
            let pairs = match reply {
                Ok(pairs) => pairs,
                // Redis answered but did not say: assume the worst.
                Err(Error::Backend(error)) if !is_connection_failure(&error.0) => {
                    tracing::warn!(%error, "CONFIG GET maxmemory* refused: assuming Redis may evict invalidation indexes");
                    policy = EvictionPolicy::Possible;
                    // CONFIG renamed or not permitted lasts; a node loading, a cluster
                    // down or a dead primary passes.
                    settled &= matches!(error.0.retry_method(), redis::RetryMethod::NoRetry);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let setting = |name: &str| {
                pairs
                    .chunks(2)
                    .find(|pair| pair[0] == name)
                    .and_then(|pair| pair.get(1).cloned())
                    .unwrap_or_default()
            };
            let (maxmemory, chosen) = (setting("maxmemory"), setting("maxmemory-policy"));
            let evicts = maxmemory != "0" && chosen != "noeviction";
            if evicts {
                policy = EvictionPolicy::Possible;
                tracing::info!(maxmemory, policy = chosen, "Redis may evict keys: an invalidation index is trusted only once a pattern invalidation has rebuilt it (one SCAN of its level)");
            } else {
                tracing::info!(maxmemory, policy = chosen, "Redis never evicts keys: invalidation indexes are complete from their creation");
            }
        }
        Ok(Reading { policy, settled })
    }

    /// Whether new indexes are trusted from their creation (the server never evicts).
    async fn trusted_at_birth(&self) -> Result<bool> {
        Ok(self.eviction().await? == EvictionPolicy::Never)
    }

    /// The most bytes a stored string of this cache can hold: a value of `max_value_bytes`
    /// behind the longest header, or a pending marker keeping one.
    fn read_bound(&self) -> usize {
        read_bound(self.read)
    }

    /// `GETRANGE <prefix + key> 0 <bound>`: a `GET` that transfers at most
    /// [`read_bound`](Self::read_bound)` + 1` bytes, in the same one round trip. A longer
    /// string (another application's data, a writer with a larger limit) is never read
    /// whole: [`stored`](Self::stored) sees it is over. Redis answers `""` for a missing key.
    pub(super) fn bounded_get(&self, key: &str) -> redis::Cmd {
        let data = "GETRANGE".len() + self.prefix.len() + key.len() + 1 + self.read_end.len();
        let mut get = redis::Cmd::with_capacity(4, data);
        self.write_bounded_get(&mut get, key);
        get
    }

    /// Writes [`bounded_get`](Self::bounded_get)'s arguments into an empty command.
    fn write_bounded_get(&self, get: &mut redis::Cmd, key: &str) {
        use redis::RedisWrite as _;
        use std::io::Write as _;
        // The prefixed key written straight into the command (no `full_key` string), the
        // range's ends as digits rendered before: this is every hit's command.
        get.arg("GETRANGE");
        let mut full_key = get.writer_for_next_arg();
        // Writing into the command's own buffer cannot fail.
        let _ = full_key.write_all(self.prefix.as_bytes());
        let _ = full_key.write_all(key.as_bytes());
        drop(full_key);
        get.arg("0").arg(&*self.read_end);
    }

    /// What a bounded read ([`bounded_get`](Self::bounded_get), or a script's reply) found:
    /// `None` for a missing key (or an empty string, which no writer stores) and a pending
    /// marker; an entry [over the limit](Entry::over_limit) for a string longer than any
    /// value of this cache (its truncated bytes are dropped, never decoded); else the value.
    pub(super) fn stored(&self, bytes: Vec<u8>) -> Option<Arc<Entry>> {
        self.stored_owned(bytes).map(Arc::new)
    }

    /// [`stored`](Self::stored), the entry not yet shared.
    fn stored_owned(&self, bytes: Vec<u8>) -> Option<Entry> {
        // Markers and over-limit replies start with a NUL byte, as only absent results do
        // otherwise: a hit's first byte rules both out.
        const _: () = assert!(MARKER_TAG[0] == 0 && OVER_LIMIT_TAG[0] == 0);
        match bytes.first() {
            None => return None,
            Some(0) if is_marker(&bytes) => return None,
            Some(0) => {
                if let Some(len) = over_limit_reply(&bytes) {
                    return Some(Entry::over_limit(len, self.read));
                }
            }
            Some(_) => {}
        }
        if bytes.len() > self.read_bound() {
            return Some(Entry::over_limit(bytes.len(), self.read));
        }
        Some(Entry::from_stored(bytes, self.read))
    }

    /// One bounded `GET` ([`bounded_get`](Self::bounded_get)): a hit costs exactly one round
    /// trip, and a string longer than any value of this cache is not transferred.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>> {
        Ok(self.get_owned(key).await?.map(Arc::new))
    }

    /// [`get`](Self::get), the entry owned by the caller (the plain hit path's, which only
    /// reads it: no `Arc` to allocate).
    pub(crate) async fn get_owned(&self, key: &str) -> Result<Option<Entry>> {
        // The command's two buffers come from this thread's last bounded read, not from the
        // allocator (see `SPARE_GET`).
        let mut get = SPARE_GET.take().unwrap_or_default();
        self.write_bounded_get(&mut get, key);
        let mut connection = self.connection.clone();
        let bytes = self.guarded(get.query_async::<Vec<u8>>(&mut connection)).await;
        if self.prefix.len() + key.len() <= SPARE_KEY_BYTES {
            get.clear();
            // `replace`, not `set`: the one move of the command into the cell.
            drop(SPARE_GET.with(|spare| spare.replace(Some(get))));
        }
        Ok(self.stored_owned(bytes?))
    }

    /// `MGET` of the full keys: what [`get`](Self::get) answers for each, in one round trip
    /// (on a cluster, redis-rs sends one `MGET` per slot, in parallel, and puts the replies
    /// back in order). Unlike `get`, a string longer than any value of this cache is
    /// transferred whole before it is dropped (`MGET` has no range).
    pub(crate) async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Arc<Entry>>>> {
        let mut mget = redis::cmd("MGET");
        for key in keys {
            mget.arg(self.full_key(key));
        }
        let mut connection = self.connection.clone();
        let replies: Vec<Option<Vec<u8>>> = self.guarded(mget.query_async(&mut connection)).await?;
        Ok(replies.into_iter().map(|bytes| bytes.and_then(|bytes| self.stored(bytes))).collect())
    }

    /// A hit for `idle`: one script ([`scripts::Touch`]) reads the value and extends its life;
    /// on a cluster the index covers ([`Cover`], one per index level, other slots) are
    /// in flight together with it: still one round trip.
    pub(crate) async fn get_touched(&self, key: &str, touch: Touch) -> Result<Option<Arc<Entry>>> {
        let trusted_at_birth = self.trusted_at_birth().await?;
        let (idle_ms, cap_ms) = (millis(touch.idle), millis(touch.cap));
        let target = self.target(key);
        let read = scripts::Touch {
            target: &target,
            idle_ms,
            cap_ms,
            now_ms: crate::format::now_ms(),
            member: key,
            trusted_at_birth,
            bound: self.read_bound(),
        };
        let bytes = if self.connection.is_cluster() {
            let indexes = self.level_indexes(key);
            let covers = self.on_each_level(&indexes, |index| Cover {
                index,
                member: key,
                idle_ms,
                cap_ms,
                trusted_at_birth,
            });
            let (bytes, ()) = futures_util::future::try_join(self.call(&read), covers).await?;
            bytes
        } else {
            self.call(&read).await?
        };
        Ok(bytes.and_then(|bytes| self.stored(bytes)).filter(|entry| {
            // Past the cap: a miss (the script left it alone).
            entry.stamp().is_none_or(|stamp| stamp.age() < touch.cap)
        }))
    }

    /// `GET` and `PTTL` in one round trip: the entry, its age (by the write time in its
    /// header; for a `cr1` or plain-JSON value stored with `lifetime`, `lifetime - PTTL`)
    /// and its version (the `PTTL`, which a refresh's `Ticket::Replace` checks).
    pub(crate) async fn get_aged(&self, key: &str, lifetime: Duration) -> Result<Option<Found>> {
        let read_at = std::time::Instant::now();
        let mut connection = self.connection.clone();
        let full_key = self.full_key(key);
        let (bytes, millis): (Vec<u8>, i64) = self
            .guarded(
                redis::pipe()
                    .add_command(self.bounded_get(key))
                    .cmd("PTTL")
                    .arg(&full_key)
                    .query_async(&mut connection),
            )
            .await?;
        let remaining = Duration::from_millis(u64::try_from(millis).unwrap_or(0));
        // Missing (`GETRANGE` answers ""), or a marker cut by the bound: what it keeps is
        // over the limit anyway, so no stale value.
        if bytes.is_empty() || (is_marker(&bytes) && bytes.len() > self.read_bound()) {
            return Ok(None);
        }
        Ok(Some(bytes).and_then(|bytes| {
            if !is_marker(&bytes) {
                let entry = self.stored(bytes)?;
                let stamp = entry.stamp();
                return Some(Found {
                    // The write time in the header; for older formats, from the expiry.
                    age: stamp.map_or_else(|| lifetime.saturating_sub(remaining), |s| s.age()),
                    load_time: stamp.and_then(|stamp| stamp.load_time),
                    entry,
                    read_at,
                    version: Version::Redis(millis),
                });
            }
            // A load is running; the expired value it replaced still serves as stale.
            kept_by_marker(&bytes).map(|kept| Found {
                entry: Arc::new(Entry::from_stored(kept, self.read)),
                age: Duration::MAX,
                load_time: None,
                read_at,
                version: Version::Redis(-2),
            })
        }))
    }

    /// Sends the index updates for `key` (cluster: before the write they cover).
    async fn index_on_cluster(
        &self,
        key: &str,
        ttl_ms: u64,
        trusted_at_birth: bool,
        tags: &[String],
    ) -> Result<()> {
        let mut indexes = self.level_indexes(key);
        indexes.extend(self.tag_sets(tags));
        self.on_each_level(&indexes, |index| IndexAdd {
            index,
            member: key,
            ttl_ms,
            trusted_at_birth,
        })
        .await
    }

    /// The full keys of `key`'s indexes, one per level.
    fn level_indexes(&self, key: &str) -> Vec<String> {
        levels(key).map(|level| self.index_key(level)).collect()
    }

    /// Cluster: runs the call `per_index` makes for each of `indexes` (each in its own
    /// slot), all in flight together (one round trip). The one per-level invoker of the
    /// index updates ([`IndexAdd`]) and covers ([`Cover`]).
    async fn on_each_level<'i, C: Call>(
        &self,
        indexes: &'i [String],
        per_index: impl Fn(&'i str) -> C,
    ) -> Result<()> {
        let invocations: Vec<_> = indexes
            .iter()
            .map(|index| {
                let invocation = per_index(index).invocation();
                (invocation.script(), invocation.into_command())
            })
            .collect();
        let runs = invocations.iter().map(|(script, command)| {
            let mut connection = self.connection.clone();
            async move { invoke::<C::Reply>(script, command, &mut connection).await }
        });
        self.guarded(try_join_all(runs)).await?;
        Ok(())
    }

    /// `key` as a script target: its full key and, on standalone, its indexes.
    fn target(&self, key: &str) -> Target {
        self.tagged_target(key, &[])
    }

    /// [`target`](Self::target) for a value stored with `tags`: on standalone, their tag
    /// sets are kept up with the indexes, in the same script.
    fn tagged_target(&self, key: &str, tags: &[String]) -> Target {
        let indexes = if self.connection.is_cluster() {
            Vec::new()
        } else {
            let mut indexes = self.level_indexes(key);
            indexes.extend(self.tag_sets(tags));
            indexes
        };
        Target { data: self.full_key(key), indexes }
    }

    /// Runs a script through its typed call (behind the breaker).
    async fn call<C: Call>(&self, call: &C) -> Result<C::Reply> {
        let invocation = call.invocation();
        let script = invocation.script();
        let command = invocation.into_command();
        let mut connection = self.connection.clone();
        self.guarded(invoke(script, &command, &mut connection)).await
    }

    /// Write-through: `SET` with the index updates, atomically on standalone, indexes first
    /// on a cluster.
    pub(crate) async fn set(
        &self,
        key: &str,
        entry: &Entry,
        ttl: Duration,
        tags: &[String],
    ) -> Result<()> {
        let ttl_ms = millis(ttl);
        let trusted_at_birth = self.trusted_at_birth().await?;
        if self.connection.is_cluster() {
            self.index_on_cluster(key, ttl_ms, trusted_at_birth, tags).await?;
        }
        let target = self.tagged_target(key, tags);
        self.call(&Write {
            target: &target,
            value: &entry.json,
            ttl_ms,
            member: key,
            trusted_at_birth,
        })
        .await
    }

    /// Step 1 of the fill protocol (see `store/mod.rs`). The index entry covers the marker
    /// and the value that may replace it (`window + lifetime`; a marker keeping an expired
    /// value lives at most as long as that value).
    pub(crate) async fn begin_fill(&self, key: &str, plan: &FillPlan<'_>) -> Result<Begun> {
        let trusted_at_birth = self.trusted_at_birth().await?;
        let mut marker = MARKER_TAG.to_vec();
        marker.extend_from_slice(new_token().as_bytes());
        marker.push(b'\n');
        let index_ttl_ms = millis(plan.window) + millis(plan.lifetime);
        let target = self.tagged_target(key, plan.tags);
        let begin = BeginFill {
            target: &target,
            marker: &marker,
            window_ms: millis(plan.window),
            member: key,
            index_ttl_ms,
            force: plan.force,
            lookup: plan.lookup,
            trusted_at_birth,
            fresh_ms: millis(plan.fresh_for),
            lifetime_ms: millis(plan.lifetime),
            now_ms: crate::format::now_ms(),
            bound: self.read_bound(),
        };
        let (found, bytes) = if self.connection.is_cluster() {
            // Both in flight together: the load starts only when both are done, so either
            // an invalidation finds the marker, or it ran before the load reads anything.
            let ((), reply) = futures_util::future::try_join(
                self.index_on_cluster(key, index_ttl_ms, trusted_at_birth, plan.tags),
                self.call(&begin),
            )
            .await?;
            reply
        } else {
            self.call(&begin).await?
        };
        Ok(self.begun(found, bytes, &marker))
    }

    /// What a begin-fill script's reply `(found, bytes)` for a key given `marker` says.
    fn begun(&self, found: i64, bytes: Vec<u8>, marker: &[u8]) -> Begun {
        if found == 1 {
            Begun::Present(Arc::new(match over_limit_reply(&bytes) {
                Some(len) => Entry::over_limit(len, self.read),
                None => Entry::from_stored(bytes, self.read),
            }))
        } else if bytes == marker {
            Begun::Ticket(Ticket::Marker(Marker::Redis(bytes)))
        } else {
            Begun::Ticket(Ticket::Adopted(Marker::Redis(bytes)))
        }
    }

    /// Step 1 of the fill protocol for many keys (a batch), each with its plan (the plans
    /// share `lifetime`, `fresh_for`, `window` and `lookup`: one policy, one call): what
    /// [`begin_fill`](Self::begin_fill) answers for each, in order. Standalone and behind
    /// Sentinel one script call ([`BeginFills`]) per [`BATCH_CHUNK`] keys; on a cluster one
    /// per slot (and chunk), with one [`IndexAddMany`] per index the keys share, all in
    /// flight together: one round trip, and every marker is placed and indexed when it
    /// returns.
    pub(crate) async fn begin_fills(&self, fills: &[(&str, FillPlan<'_>)]) -> Vec<Result<Begun>> {
        let Some((_, plan)) = fills.first() else { return Vec::new() };
        let trusted_at_birth = match self.trusted_at_birth().await {
            Ok(trusted) => trusted,
            Err(error) => return fills.iter().map(|_| Err(again(&error))).collect(),
        };
        let data: Vec<String> = fills.iter().map(|(key, _)| self.full_key(key)).collect();
        let groups = self.groups(&data);
        // One token per script call, each key's marker told apart by its place in it (the
        // script builds the same markers from the prefix: `BeginFills::marker`).
        let prefixes: Vec<Vec<u8>> =
            groups.iter().map(|_| [MARKER_TAG, new_token().as_bytes(), b"."].concat()).collect();
        let mut markers: Vec<Vec<u8>> = fills.iter().map(|_| Vec::new()).collect();
        for (group, prefix) in groups.iter().zip(&prefixes) {
            for (place, &at) in group.iter().enumerate() {
                markers[at] = BeginFills::marker(prefix, place);
            }
        }
        let index_ttl_ms = millis(plan.window) + millis(plan.lifetime);
        let cluster = self.connection.is_cluster();
        // Each group's keys, and (standalone) the indexes they name.
        let mut calls: Vec<(Vec<usize>, Vec<String>, Vec<BeginKey<'_>>)> = Vec::new();
        for group in groups {
            let (indexes, places) = match cluster {
                true => (Vec::new(), group.iter().map(|_| Vec::new()).collect()),
                false => self.indexes_of(group.iter().map(|&at| (fills[at].0, fills[at].1.tags))),
            };
            let keys = group
                .iter()
                .zip(places)
                .map(|(&at, places)| BeginKey {
                    data: &data[at],
                    marker: &markers[at],
                    member: fills[at].0,
                    force: fills[at].1.force,
                    indexes: places,
                })
                .collect();
            calls.push((group, indexes, keys));
        }
        let now_ms = crate::format::now_ms();
        let scripts: Vec<BeginFills<'_>> = calls
            .iter()
            .zip(&prefixes)
            .map(|((_, indexes, keys), marker_prefix)| BeginFills {
                keys,
                indexes,
                window_ms: millis(plan.window),
                index_ttl_ms,
                trusted_at_birth,
                fresh_ms: millis(plan.fresh_for),
                lifetime_ms: millis(plan.lifetime),
                now_ms,
                bound: self.read_bound(),
                lookup: plan.lookup,
                marker_prefix,
                prefix_len: self.prefix.len(),
            })
            .collect();
        let begins = futures_util::future::join_all(scripts.iter().map(|script| self.call(script)));
        let replies = if cluster {
            // Both in flight together: the loads start only when both are done (see
            // `begin_fill`).
            let (indexes, places) =
                self.indexes_of(fills.iter().map(|(key, plan)| (*key, plan.tags)));
            let mut members: Vec<Vec<&str>> = indexes.iter().map(|_| Vec::new()).collect();
            for ((key, _), places) in fills.iter().zip(places) {
                for place in places {
                    members[place].push(key);
                }
            }
            let adds: Vec<IndexAddMany<'_>> = indexes
                .iter()
                .zip(&members)
                .flat_map(|(index, list)| {
                    list.chunks(BATCH_CHUNK).map(move |members| IndexAddMany {
                        index,
                        members,
                        ttl_ms: index_ttl_ms,
                        trusted_at_birth,
                    })
                })
                .collect();
            let indexed = try_join_all(adds.iter().map(|add| self.call(add)));
            let (replies, indexed) = futures_util::future::join(begins, indexed).await;
            if let Err(error) = indexed {
                return fills.iter().map(|_| Err(again(&error))).collect();
            }
            replies
        } else {
            begins.await
        };
        let mut begun: Vec<Option<Result<Begun>>> = fills.iter().map(|_| None).collect();
        for ((group, _, _), reply) in calls.iter().zip(replies) {
            match reply.map(|reply| BeginFills::answers(reply, group.len())) {
                Ok(Some(answers)) => {
                    for (&at, answer) in group.iter().zip(answers) {
                        let marker = &markers[at];
                        begun[at] = Some(match answer {
                            BeginReply::Placed => {
                                Ok(Begun::Ticket(Ticket::Marker(Marker::Redis(marker.clone()))))
                            }
                            BeginReply::Value(bytes) => Ok(self.begun(1, bytes, marker)),
                            BeginReply::Pending(bytes) => Ok(self.begun(2, bytes, marker)),
                            BeginReply::Refused(bytes) => {
                                Err(Error::backend(redis::RedisError::from((
                                    redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                                    "the key holds another type",
                                    String::from_utf8_lossy(&bytes).into_owned(),
                                ))))
                            }
                        });
                    }
                }
                Ok(None) => {
                    let error = Error::backend(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "a batch script replied for another number of keys",
                    )));
                    for &at in group {
                        begun[at] = Some(Err(again(&error)));
                    }
                }
                Err(error) => {
                    for &at in group {
                        begun[at] = Some(Err(again(&error)));
                    }
                }
            }
        }
        begun.into_iter().map(|begun| begun.unwrap_or(Err(Error::Unavailable))).collect()
    }

    /// The indexes (levels and tag sets) of `keys`, each given with its tags, each index
    /// named once: their full keys, and per key its indexes as places in them.
    fn indexes_of<'k>(
        &self,
        keys: impl Iterator<Item = (&'k str, &'k [String])>,
    ) -> (Vec<String>, Vec<Vec<usize>>) {
        let mut seen: std::collections::HashMap<(&'k str, bool), usize> =
            std::collections::HashMap::new();
        let mut names = Vec::new();
        let places = keys
            .map(|(key, tags)| {
                let levels = levels(key).map(|level| (level, false));
                let tags = tags.iter().map(|tag| (tag.as_str(), true));
                levels
                    .chain(tags)
                    .map(|(name, tag)| {
                        *seen.entry((name, tag)).or_insert_with(|| {
                            names.push(match tag {
                                true => self.tag_set(name),
                                false => self.index_key(name),
                            });
                            names.len() - 1
                        })
                    })
                    .collect()
            })
            .collect();
        (names, places)
    }

    /// The keys of one script call of a batch, as places in `full_keys`: standalone,
    /// chunks of [`BATCH_CHUNK`]; on a cluster, the keys of each slot (a script stays in
    /// one), in chunks, in first-seen order.
    fn groups(&self, full_keys: &[String]) -> Vec<Vec<usize>> {
        let mut slots: Vec<Vec<usize>> = Vec::new();
        if self.connection.is_cluster() {
            let mut by_slot: std::collections::HashMap<redis::cluster_routing::Slot, usize> =
                std::collections::HashMap::new();
            for (at, key) in full_keys.iter().enumerate() {
                let slot = redis::cluster_routing::Slot::for_key(key);
                let group = *by_slot.entry(slot).or_insert_with(|| {
                    slots.push(Vec::new());
                    slots.len() - 1
                });
                slots[group].push(at);
            }
        } else {
            slots.push((0..full_keys.len()).collect());
        }
        slots
            .into_iter()
            .flat_map(|slot| slot.chunks(BATCH_CHUNK).map(<[usize]>::to_vec).collect::<Vec<_>>())
            .collect()
    }

    /// Step 3 of the fill protocol for many keys (a batch's fills and abandons): what
    /// [`fill`](Self::fill) or [`abandon`](Self::abandon) answers for each, in order, in one
    /// script call ([`Settles`]) per [`BATCH_CHUNK`] keys (on a cluster per slot and chunk,
    /// in parallel).
    pub(crate) async fn settle_many(&self, settles: &[Settle<'_>]) -> Vec<Result<bool>> {
        let mut done: Vec<Option<Result<bool>>> = settles.iter().map(|_| None).collect();
        let mut scripted = Vec::new();
        let mut keys = Vec::new();
        for (at, settle) in settles.iter().enumerate() {
            let (marker, placed_here) = match settle.ticket() {
                Ticket::Marker(Marker::Redis(marker)) => (marker, true),
                Ticket::Adopted(Marker::Redis(marker)) => (marker, false),
                // A refresh's ticket (never a batch's): as one key.
                _ => {
                    done[at] = Some(match settle {
                        Settle::Fill { key, ticket, entry, ttl, tags } => {
                            self.fill(key, ticket, entry, *ttl, tags).await
                        }
                        Settle::Abandon { key, ticket } => self.abandon(key, ticket).await,
                    });
                    continue;
                }
            };
            let op = match settle {
                Settle::Fill { entry, ttl, .. } => {
                    SettleOp::Fill { value: &entry.json, ttl_ms: millis(*ttl) }
                }
                Settle::Abandon { .. } => SettleOp::Abandon { placed_here },
            };
            scripted.push(at);
            keys.push(SettleKey { data: self.full_key(settle.key()), marker, op });
        }
        let data: Vec<String> = keys.iter().map(|key| key.data.clone()).collect();
        let groups = self.groups(&data);
        let mut calls: Vec<Vec<SettleKey<'_>>> = Vec::with_capacity(groups.len());
        let mut slots: Vec<Option<SettleKey<'_>>> = keys.into_iter().map(Some).collect();
        for group in &groups {
            calls.push(group.iter().filter_map(|&at| slots[at].take()).collect());
        }
        let scripts: Vec<Settles<'_>> = calls.iter().map(|keys| Settles { keys }).collect();
        let replies =
            futures_util::future::join_all(scripts.iter().map(|script| self.call(script))).await;
        for (group, reply) in groups.iter().zip(replies) {
            match reply {
                Ok(replies) if replies.len() == group.len() => {
                    for (&at, stored) in group.iter().zip(replies) {
                        done[scripted[at]] = Some(Ok(stored == b'1'));
                    }
                }
                Ok(_) => {
                    for &at in group {
                        done[scripted[at]] = Some(Err(Error::backend(redis::RedisError::from((
                            redis::ErrorKind::UnexpectedReturnType,
                            "a batch script replied for another number of keys",
                        )))));
                    }
                }
                Err(error) => {
                    for &at in group {
                        done[scripted[at]] = Some(Err(again(&error)));
                    }
                }
            }
        }
        done.into_iter().map(|done| done.unwrap_or(Err(Error::Unavailable))).collect()
    }

    /// Step 3 of the fill protocol: stores `entry` if `ticket` still holds.
    pub(crate) async fn fill(
        &self,
        key: &str,
        ticket: &Ticket,
        entry: &Entry,
        ttl: Duration,
        tags: &[String],
    ) -> Result<bool> {
        let ttl_ms = millis(ttl);
        let stored: i64 = match ticket {
            Ticket::Marker(Marker::Redis(marker)) | Ticket::Adopted(Marker::Redis(marker)) => {
                let data = self.full_key(key);
                self.call(&Fill { data: &data, marker, value: &entry.json, ttl_ms }).await?
            }
            Ticket::Replace { old, version: Version::Redis(pttl) } => {
                let trusted_at_birth = self.trusted_at_birth().await?;
                if self.connection.is_cluster() {
                    self.index_on_cluster(key, ttl_ms, trusted_at_birth, tags).await?;
                }
                let target = self.tagged_target(key, tags);
                self.call(&Replace {
                    target: &target,
                    old: &old.json,
                    old_pttl_ms: *pttl,
                    value: &entry.json,
                    ttl_ms,
                    member: key,
                    trusted_at_birth,
                })
                .await?
            }
            _ => 0,
        };
        Ok(stored == 1)
    }

    /// A load stores nothing: whether its marker is still there; removed (putting back the
    /// value it kept) if this load placed it.
    pub(crate) async fn abandon(&self, key: &str, ticket: &Ticket) -> Result<bool> {
        let (marker, placed_here) = match ticket {
            Ticket::Marker(Marker::Redis(marker)) => (marker, true),
            Ticket::Adopted(Marker::Redis(marker)) => (marker, false),
            _ => return Ok(false),
        };
        let data = self.full_key(key);
        Ok(self.call(&Abandon { data: &data, marker, placed_here }).await? == 1)
    }

    /// `PING`, then `INFO memory/clients/stats` of each primary (bypassing the breaker;
    /// bounded by the command timeout).
    pub(crate) async fn ping_and_info(&self) -> Result<Vec<String>> {
        let mut connection = self.connection.clone();
        let mut info = redis::cmd("INFO");
        info.arg("memory").arg("clients").arg("stats");
        // `INFO` not permitted (a least-privilege user without `+info`): Redis still answers;
        // health just has no figures.
        let refused = |error: &redis::RedisError| {
            error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
        };
        if !self.connection.is_cluster() {
            let pipeline = redis::pipe().cmd("PING").add_command(info).clone();
            let mut reply: redis::RedisResult<(String, String)> =
                pipeline.query_async(&mut connection).await;
            if reply.as_ref().is_err_and(|error| error.is_io_error() && !error.is_timeout()) {
                // The connection manager's last reconnect failed while Redis was down; that
                // stale error started a new attempt, which this one meets: a Redis that is
                // back is seen at once (one connect timeout at most, never two).
                connection = self.connection.clone();
                reply = pipeline.query_async(&mut connection).await;
            }
            return match reply {
                Ok((_, info)) => Ok(vec![info]),
                Err(error) if refused(&error) => {
                    let ping = redis::cmd("PING").query_async::<()>(&mut connection).await;
                    ping.map(|()| Vec::new()).map_err(Error::backend)
                }
                Err(error) => {
                    if needs_renewal(&error) {
                        self.connection.renew();
                    }
                    Err(Error::backend(error))
                }
            };
        }
        redis::cmd("PING").query_async::<()>(&mut connection).await.map_err(Error::backend)?;
        let mut infos = Vec::new();
        for (host, port) in self.connection.primaries().await.map_err(Error::backend)? {
            match self.connection.on_node::<String>(info.clone(), &host, port).await {
                Ok(info) => infos.push(info),
                Err(error) if refused(&error) => {}
                Err(error) => return Err(Error::backend(error)),
            }
        }
        Ok(infos)
    }

    /// The pub/sub wake-ups of this cache.
    pub(crate) fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The remaining time to live of a full key, `None` if it does not exist or never expires.
    pub(crate) async fn pttl(&self, full_key: &str) -> Result<Option<Duration>> {
        let mut connection = self.connection.clone();
        let millis: i64 =
            self.guarded(redis::cmd("PTTL").arg(full_key).query_async(&mut connection)).await?;
        Ok(u64::try_from(millis).ok().map(Duration::from_millis))
    }

    /// `UNLINK prefix+key`: a value or a pending marker (which voids a running load's
    /// ticket).
    pub(crate) async fn remove(&self, key: &str) -> Result<u64> {
        let mut connection = self.connection.clone();
        self.guarded(redis::cmd("UNLINK").arg(self.full_key(key)).query_async(&mut connection))
            .await
    }

    /// One rate-limit decision for `key` (a rendered key, without the prefix): the limiter
    /// `<prefix>#rate:{<key>}`, in the cache's reserved namespace (no invalidation, pattern or
    /// `clear()` removes it) and one key, so the script runs on one node of a cluster.
    pub(crate) async fn rate_decide(
        &self,
        key: &str,
        limit: u64,
        per: Duration,
    ) -> Result<super::RateWindow> {
        let full_key = self.reserved_key(RATE_NAMESPACE, &format!("{{{key}}}"));
        let decide = scripts::RateDecide {
            key: &full_key,
            limit,
            window_micros: per.as_micros(),
            expire_ms: millis(per),
        };
        let (allowed, remaining, retry_after, reset_after) = self.call(&decide).await?;
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        Ok(super::RateWindow {
            allowed: allowed == 1,
            remaining: u64::try_from(remaining).unwrap_or(0),
            retry_after: micros(retry_after),
            reset_after: micros(reset_after),
        })
    }
}

/// The reserved namespace of the rate limiters' keys: `<prefix>#rate:{<key>}`.
const RATE_NAMESPACE: &str = "rate:";

/// A duration in whole milliseconds, at least 1 (Redis rejects `PX 0`).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The breaker's half-open probe, on a task of its own (see [`RedisStore::guarded`]):
/// whether every primary answers `PING`, reported to the breaker.
async fn probe(link: Link, breaker: Arc<Breaker>) -> redis::RedisResult<()> {
    // If this task is cancelled (its runtime shut down) or panics, another probe may go.
    let mut report = ProbeReport { breaker: &breaker, reported: false };
    let verdict = ping_every_primary(&link).await;
    report.reported = true;
    match verdict {
        Err(error) if is_connection_failure(&error) => {
            if needs_renewal(&error) {
                link.renew();
            }
            breaker.failed(Pass::Probe);
            Err(error)
        }
        // An error reply still means Redis answers.
        _ => {
            breaker.succeeded();
            Ok(())
        }
    }
}

/// The breaker's probe: `PING` on a standalone server (the primary behind Sentinel),
/// on every primary of a cluster.
async fn ping_every_primary(link: &Link) -> redis::RedisResult<()> {
    let mut connection = link.clone();
    // While Redis was down, the connection manager kept its last failed reconnect; the
    // first command after that gets the stale error and starts a new attempt. Spend
    // that on a first PING, so the probe meets the fresh connection.
    let first = redis::cmd("PING").query_async::<()>(&mut connection).await;
    if first.as_ref().is_err_and(needs_renewal) {
        // Refused credentials (or a peer that is not Redis): a new connection, so a
        // rotated password is picked up.
        link.renew();
        connection = link.clone();
    }
    if !link.is_cluster() {
        if first.is_ok() {
            return Ok(());
        }
        return redis::cmd("PING").query_async::<()>(&mut connection).await;
    }
    let pings = link.primaries().await?.into_iter().map(|(host, port)| {
        let link = link.clone();
        async move { link.on_node::<()>(redis::cmd("PING"), &host, port).await }
    });
    try_join_all(pings).await.map(|_| ())
}

/// Tells the breaker a probe ended without a verdict, so the next call may probe instead of
/// the breaker staying half-open forever.
struct ProbeReport<'a> {
    breaker: &'a Breaker,
    reported: bool,
}

impl Drop for ProbeReport<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.abandoned(Pass::Probe);
        }
    }
}

#[cfg(test)]
#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../../../../tests/src/redis_server.rs"]
mod redis_server;

/// Sends a script's `EVALSHA` `command`; on a `NOSCRIPT` reply (a restarted or flushed
/// server) loads `script` and sends it once more. (The link answers most `NOSCRIPT`s
/// itself with `EVAL`, once this process has loaded the script.)
async fn invoke<T: redis::FromRedisValue>(
    script: &redis::Script,
    command: &redis::Cmd,
    connection: &mut Link,
) -> redis::RedisResult<T> {
    match command.query_async(connection).await {
        Err(error)
            if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            script.load_async(connection).await?;
            command.query_async(connection).await
        }
        reply => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::redis_server::RedisServer;
    use super::*;
    use crate::format::{Codec, Format, Stamp};
    use crate::notify::Signal;
    use crate::store::lease::{new_token, LeaseKind};
    use crate::store::Store;

    fn store(url: &str, prefix: &str) -> Store {
        Store::redis(RedisOptions {
            urls: vec![url.to_owned()],
            cluster: false,
            sentinel: None,
            prefix: prefix.to_owned(),
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_millis(500),
            read: ReadFormat::default(),
            tls: Tls::default(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn the_bounded_get_packs_as_redis_rs_packs_its_arguments() {
        for (prefix, key, limit) in
            [("app:", "vehicle:42", 4 << 20), ("", "k", 0), ("p:", "ü é", usize::MAX), ("x", "", 1)]
        {
            let read = ReadFormat { limit, ..ReadFormat::default() };
            let redis = RedisStore::new(RedisOptions {
                urls: vec!["redis://127.0.0.1:1/".to_owned()],
                cluster: false,
                sentinel: None,
                prefix: prefix.to_owned(),
                connect_timeout: Duration::from_millis(500),
                command_timeout: Duration::from_millis(500),
                read,
                tls: Tls::default(),
            })
            .unwrap();
            let end = u64::try_from(redis.read_bound()).unwrap_or(u64::MAX).min(i64::MAX as u64);
            let expected = redis::cmd("GETRANGE")
                .arg(format!("{prefix}{key}"))
                .arg(0)
                .arg(end)
                .get_packed_command();
            assert_eq!(redis.bounded_get(key).get_packed_command(), expected, "{prefix}{key}");
            assert_eq!(&*redis.read_end, end.to_string(), "the end is the bound");
        }
    }

    #[tokio::test]
    async fn a_settling_lease_is_seen_by_waiters_and_still_extended_and_released_by_its_token() {
        let server = RedisServer::start();
        let store = store(&server.url(), "t:");
        let (key, token) = ("vehicle:1", new_token());
        assert!(store.try_load_lease(key, &token, Duration::from_secs(10)).await.unwrap());
        let peek = store.peek_with_lease(key).await.unwrap();
        assert!(peek.entry.is_none() && !peek.settling);
        assert!(peek.lease_left > Duration::from_secs(9), "{:?}", peek.lease_left);

        assert!(!store.settle_load_lease(key, "someone else").await.unwrap());
        assert!(!store.peek_with_lease(key).await.unwrap().settling);
        assert!(store.settle_load_lease(key, &token).await.unwrap());
        assert!(store.settle_load_lease(key, &token).await.unwrap(), "settling twice holds");
        let peek = store.peek_with_lease(key).await.unwrap();
        assert!(peek.settling);
        assert!(peek.lease_left > Duration::from_secs(9), "TTL kept: {:?}", peek.lease_left);

        let lease = Duration::from_secs(30);
        assert!(!store.extend_lease(LeaseKind::Load, key, "someone else", lease).await.unwrap());
        assert!(store.extend_lease(LeaseKind::Load, key, &token, lease).await.unwrap());
        let peek = store.peek_with_lease(key).await.unwrap();
        assert!(peek.settling && peek.lease_left > Duration::from_secs(20));
        assert!(!store.try_load_lease(key, "another", lease).await.unwrap(), "still held");

        let released = store.release_lease(LeaseKind::Load, key, &token, Signal::Ready);
        assert!(released.await.unwrap());
        let peek = store.peek_with_lease(key).await.unwrap();
        assert!(!peek.settling && peek.lease_left.is_zero());
        assert!(!store.settle_load_lease(key, &token).await.unwrap(), "released: not held");
    }

    /// The breaker's half-open probe is whether Redis answers (`PING`), not the command
    /// that happens to come first: on a replica, writes are refused (`READONLY`, a
    /// connection-class failure) while reads are served. The writes open the breaker; after
    /// the cool-down a write probes, the PING answers, the breaker closes, and the write
    /// fails alone: reads go to Redis again instead of waiting through ever longer
    /// cool-downs.
    #[tokio::test]
    async fn the_probe_is_whether_redis_answers_not_the_command_that_probes() {
        let primary = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
        let store = store(&replica.url(), "p:");
        let Store::Redis(redis) = &store else { unreachable!() };
        for _ in 0..crate::breaker::FAILURES_TO_OPEN {
            let refused = store.remove("k").await.unwrap_err();
            assert_eq!(refused.kind(), crate::ErrorKind::Connection, "{refused}");
        }
        assert_eq!(redis.breaker_state(), BreakerState::Open);
        assert!(matches!(store.get("k").await, Err(crate::Error::Unavailable)));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(redis.breaker_state(), BreakerState::HalfOpen);
        let refused = store.remove("k").await.unwrap_err();
        assert_eq!(refused.kind(), crate::ErrorKind::Connection, "the write itself: {refused}");
        assert_eq!(redis.breaker_state(), BreakerState::Closed, "the PING answered");
        assert!(store.get("k").await.unwrap().is_none(), "reads reach Redis again");
    }

    /// The probe reaches its verdict even when the command that drew it is dropped. A fill
    /// on a cluster writes its index levels at once (`try_join_all`): after the cool-down,
    /// one level's command draws the probe, the next is refused at once (the probe is
    /// under way), and `try_join_all` drops the first. If that dropped the probe, every
    /// fill would abandon it again and the breaker would never close while Redis answers.
    #[tokio::test]
    async fn a_probe_whose_command_is_dropped_still_closes_the_breaker() {
        let server = RedisServer::start();
        let store = store(&server.url(), "p:");
        let Store::Redis(redis) = &store else { unreachable!() };
        for _ in 0..crate::breaker::FAILURES_TO_OPEN {
            redis.breaker.failed(Pass::Normal);
        }
        assert_eq!(redis.breaker_state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(redis.breaker_state(), BreakerState::HalfOpen);
        let both = try_join_all([store.remove("a"), store.remove("b")]).await;
        assert!(matches!(both, Err(crate::Error::Unavailable)), "{both:?}");
        // No other command: the probe alone must close the breaker.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while redis.breaker_state() != BreakerState::Closed {
            assert!(std::time::Instant::now() < deadline, "{:?}", redis.breaker_state());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.get("a").await.unwrap().is_none(), "reads reach Redis again");
    }

    #[tokio::test]
    async fn the_memory_store_settles_at_once() {
        let store = Store::memory(1 << 20);
        assert!(store.settle_load_lease("k", "t").await.unwrap());
        let peek = store.peek_with_lease("k").await.unwrap();
        assert!(peek.entry.is_none() && peek.lease_left.is_zero() && !peek.settling);
        assert!(store.check_setup().await.is_ok());
    }

    const EVICTS: [&str; 4] = ["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"];

    #[tokio::test]
    async fn an_unprefixed_cache_on_an_evicting_redis_is_a_configuration_error() {
        let evicting = RedisServer::start_with(&EVICTS);
        let error = store(&evicting.url(), "").check_setup().await.unwrap_err();
        assert!(
            matches!(&error, crate::Error::InvalidConfig(why) if why.contains("prefix")),
            "{error}"
        );
        assert!(store(&evicting.url(), "app:").check_setup().await.is_ok(), "a prefix scans");
        // Indexes carry a TTL: volatile-* policies evict them too.
        let volatile =
            RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"]);
        assert!(store(&volatile.url(), "").check_setup().await.is_err(), "volatile-lru");
        let bounded = RedisServer::start_with(&["--maxmemory", "64mb"]); // noeviction
        assert!(store(&bounded.url(), "").check_setup().await.is_ok(), "noeviction");
        let never = RedisServer::start();
        assert!(store(&never.url(), "").check_setup().await.is_ok(), "maxmemory 0");
    }

    #[tokio::test]
    async fn an_unreachable_redis_passes_the_check_and_is_read_again_later() {
        let mut server = RedisServer::start_with(&EVICTS);
        let store = store(&server.url(), "");
        server.kill();
        assert!(store.check_setup().await.is_ok(), "Redis down: the cache still builds");
        server.restart();
        // The failed read was not kept: once Redis answers, the policy is read.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match store.check_setup().await {
                Err(crate::Error::InvalidConfig(_)) => break,
                outcome => {
                    assert!(std::time::Instant::now() < deadline, "still {outcome:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Bounded reads at lengths around the bound (each side, and a few random ones further
    /// off), through every read that returns a value: the plain `GET` (`GETRANGE`), `GET` +
    /// `PTTL`, the `idle` script and the begin-fill script. A string over the bound is an
    /// entry over the limit (never decoded, `TooLarge`); one at the bound is read whole.
    #[tokio::test]
    async fn reads_are_bounded_at_exactly_the_limit_plus_a_header() {
        use super::super::{Begun, FillPlan, Touch};
        let server = RedisServer::start();
        let mut raw = server.connection().await;
        let limit = 1000;
        let redis = RedisStore::new(RedisOptions {
            urls: vec![server.url()],
            cluster: false,
            sentinel: None,
            prefix: "b:".to_owned(),
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_millis(500),
            read: ReadFormat { limit, ..ReadFormat::default() },
            tls: Tls::default(),
        })
        .unwrap();
        let bound = redis.read_bound();
        let store = Store::Redis(redis);
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut lengths: Vec<usize> = (bound - 3..=bound + 3).collect();
        for _ in 0..6 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            lengths.push(bound - 200 + usize::try_from(seed % 400).unwrap());
        }
        lengths.extend([1, limit, 10 * bound]);
        let touch = Touch { idle: Duration::from_secs(60), cap: Duration::from_secs(600) };
        let plan = FillPlan {
            lifetime: Duration::from_secs(600),
            fresh_for: Duration::from_secs(600),
            window: Duration::from_secs(5),
            force: false,
            lookup: false,
            tags: &[],
        };
        for len in lengths {
            let over = len > bound;
            let key = format!("k{len}");
            // Another application's string, with a TTL so that begin-fill finds it fresh.
            let _: () = redis::cmd("SET")
                .arg(format!("b:{key}"))
                .arg(vec![b'x'; len])
                .arg("PX")
                .arg(60_000)
                .query_async(&mut raw)
                .await
                .unwrap();
            let judge = |entry: &Entry, how: &str| {
                // Over the bound: nothing of it kept (not transferred); else read whole.
                assert_eq!(entry.json.len(), if over { 0 } else { len }, "{how}, {len} bytes");
                // Plain text over the limit is too large either way; under it, garbage.
                let decoded = entry.take::<String>(None);
                assert_eq!(
                    matches!(decoded, Err(crate::format::DecodeError::TooLarge(_))),
                    len > limit,
                    "{how}, {len} bytes (bound {bound}): {decoded:?}"
                );
            };
            judge(&store.get(&key).await.unwrap().unwrap(), "GET");
            judge(
                &store.get_aged(&key, Duration::from_secs(600)).await.unwrap().unwrap().entry,
                "GET+PTTL",
            );
            judge(&store.get_touched(&key, touch).await.unwrap().unwrap(), "idle");
            match store.begin_fill(&key, &plan).await.unwrap() {
                Begun::Present(entry) => judge(&entry, "begin-fill"),
                Begun::Ticket(_) => panic!("begin-fill took a ticket over a fresh value"),
            }
        }
        // A value of this cache with a payload of exactly the limit reads back whole.
        let format = Format {
            codec: Codec::Json,
            compress_above: None,
            read: ReadFormat { limit, ..ReadFormat::default() },
        };
        let at_limit = "y".repeat(limit - 2);
        let entry = Arc::new(Entry::encode(&at_limit, None, &format).unwrap());
        store.set("v", &entry, Duration::from_secs(60), &[]).await.unwrap();
        assert_eq!(store.get("v").await.unwrap().unwrap().take::<String>(None).unwrap(), at_limit);
        // A missing key (`GETRANGE` answers "") is a miss.
        assert!(store.get("missing").await.unwrap().is_none());
        assert!(store.get_aged("missing", Duration::from_secs(1)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_lua_header_reader_reads_the_write_time_rust_wrote() {
        let server = RedisServer::start();
        let mut connection = server.connection().await;
        let reader = format!("{}\nreturn written_ms(ARGV[1])", scripts::header_reader());
        let script = redis::Script::new(&reader);
        for codec in [Codec::Json, Codec::MessagePack, Codec::Postcard] {
            let format = Format { codec, compress_above: Some(0), read: ReadFormat::default() };
            let (bytes, _) = format.encode(&"x".repeat(100)).unwrap();
            let written: Option<u64> =
                script.arg(&bytes).invoke_async(&mut connection).await.unwrap();
            assert_eq!(written, Some(Stamp::of(&bytes).unwrap().written_ms));
        }
        for other in [&b"7"[..], b"cr1:j:-:0000000000000000:7", crate::codec::ABSENT, MARKER_TAG] {
            let written: Option<u64> =
                script.arg(other).invoke_async(&mut connection).await.unwrap();
            assert_eq!(written, None);
        }
    }
}
