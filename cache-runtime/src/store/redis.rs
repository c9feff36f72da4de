//! The Redis store (standalone or Cluster, see [`super::link`]): values as JSON strings
//! under `prefix + key`, and the invalidation indexes described in the crate docs.
//!
//! On a standalone server a write is one `MULTI` round trip. On a cluster, where a
//! pipeline must stay in one slot, the `SET` and each index's pipeline are sent at once
//! (one round trip of latency, not atomic), and keyspace-wide `SCAN`s run on every primary.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::link::{LazyCluster, Link};
use super::Removed;
use crate::breaker::{is_connection_failure, Breaker, BreakerState, Pass};
use crate::codec::Entry;
use crate::error::{Error, Result};
use crate::index::{self, INDEX_NAMESPACE};
use crate::key::RESERVED;
use crate::notify::Notifier;

/// Adds `ARGV[1]` to the index `KEYS[1]` with its expiry (server time + `ARGV[2]` ms) as
/// score, prunes expired members, and extends the index's own expiry to cover the member.
const INDEX_SCRIPT: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], ms + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1";

/// Keys asked for per `SCAN`/`ZSCAN` step, and unlinked per command.
const BATCH: usize = 1000;

pub(crate) struct RedisStore {
    connection: Link,
    prefix: String,
    notifier: Notifier,
    breaker: Breaker,
}

/// Connection settings taken from the builder.
pub(crate) struct RedisOptions {
    /// One URL for a standalone server; the seed nodes of a cluster.
    pub(crate) urls: Vec<String>,
    pub(crate) cluster: bool,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
}

impl RedisStore {
    /// Checks the URL and prepares the connection without opening it: a cache can be built
    /// while Redis is down, and connects when Redis answers.
    pub(crate) fn new(options: RedisOptions) -> Result<Self> {
        let clients = options
            .urls
            .iter()
            .map(|url| {
                redis::Client::open(url.as_str())
                    .map_err(|source| Error::InvalidUrl { url: url.clone(), source })
            })
            .collect::<Result<Vec<_>>>()?;
        let connection = if options.cluster {
            let client = redis::cluster::ClusterClient::builder(options.urls.clone())
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.command_timeout)
                .retries(1)
                .build()
                .map_err(|source| Error::InvalidUrl { url: options.urls.join(","), source })?;
            Link::Cluster(Arc::new(LazyCluster::new(client)))
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.command_timeout))
                // One quick retry: a call never waits through a long reconnect schedule; the
                // next call tries again.
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(100));
            Link::Standalone(ConnectionManager::new_lazy_with_config(clients[0].clone(), config)?)
        };
        // Classic pub/sub reaches every node of a cluster: one subscription to any node
        // hears every fill notification.
        let notifier = Notifier::new(clients, options.prefix.clone());
        Ok(RedisStore { connection, prefix: options.prefix, notifier, breaker: Breaker::default() })
    }

    /// `prefix + key`.
    fn full_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    /// Runs one Redis exchange behind the circuit breaker: refused at once while Redis is
    /// known down, and its outcome recorded.
    async fn guarded<T>(&self, exchange: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        let Some(pass) = self.breaker.allow() else {
            return Err(Error::Unavailable);
        };
        let mut report = ProbeReport { breaker: &self.breaker, pass, reported: false };
        if pass == Pass::Probe {
            // While Redis was down, the connection manager kept its last failed reconnect;
            // the first command after that gets the stale error and starts a new attempt.
            // Spend that on a PING, so the probe itself meets the fresh connection.
            let mut connection = self.connection.clone();
            let _ = redis::cmd("PING").query_async::<()>(&mut connection).await;
        }
        let outcome = exchange.await;
        report.reported = true;
        match &outcome {
            Err(error) if is_connection_failure(error) => self.breaker.failed(pass),
            // An error reply still means Redis answers.
            _ => self.breaker.succeeded(),
        }
        Ok(outcome?)
    }

    /// The circuit breaker's state.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    fn index_key(&self, level: &str) -> String {
        format!("{}{INDEX_NAMESPACE}{level}", self.prefix)
    }

    /// One `GET`: a hit costs exactly one round trip.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>> {
        let mut connection = self.connection.clone();
        let bytes: Option<Vec<u8>> = self
            .guarded(redis::cmd("GET").arg(self.full_key(key)).query_async(&mut connection))
            .await?;
        Ok(bytes.map(|json| Arc::new(Entry::from_json(json))))
    }

    /// `GET` and `PTTL` in one round trip: the entry and its age, for entries stored with
    /// `lifetime` (the age is `lifetime - PTTL`).
    pub(crate) async fn get_aged(
        &self,
        key: &str,
        lifetime: Duration,
    ) -> Result<Option<(Arc<Entry>, Duration)>> {
        let mut connection = self.connection.clone();
        let full_key = self.full_key(key);
        let (bytes, millis): (Option<Vec<u8>>, i64) = self
            .guarded(
                redis::pipe()
                    .cmd("GET")
                    .arg(&full_key)
                    .cmd("PTTL")
                    .arg(&full_key)
                    .query_async(&mut connection),
            )
            .await?;
        let remaining = Duration::from_millis(u64::try_from(millis).unwrap_or(0));
        Ok(bytes.map(|json| (Arc::new(Entry::from_json(json)), lifetime.saturating_sub(remaining))))
    }

    /// `SET key value PX ttl` and the index updates, in one `MULTI` round trip.
    pub(crate) async fn set(&self, key: &str, entry: &Entry, ttl: Duration) -> Result<()> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        // Per index, one script on the server's clock (writers' clocks may disagree):
        // record the key with its expiry, drop members that expired, and keep the index alive
        // as long as its longest-lived member.
        let index_updates = index::levels(key).map(|level| {
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL")
                .arg(INDEX_SCRIPT)
                .arg(1)
                .arg(self.index_key(level))
                .arg(key)
                .arg(ttl_ms)
                .ignore();
            pipe
        });
        let mut set = redis::pipe();
        set.cmd("SET").arg(self.full_key(key)).arg(&*entry.json).arg("PX").arg(ttl_ms).ignore();
        if self.connection.is_cluster() {
            // Different slots: one pipeline each, all in flight together.
            let pipes: Vec<redis::Pipeline> = index_updates.chain(std::iter::once(set)).collect();
            let sends = pipes.iter().map(|pipe| {
                let mut connection = self.connection.clone();
                async move { pipe.query_async::<()>(&mut connection).await }
            });
            self.guarded(try_join_all(sends)).await?;
        } else {
            // One slot: a single atomic round trip (an invalidation never sees the key
            // without its index entries).
            let mut pipe = redis::pipe();
            pipe.atomic();
            for update in index_updates {
                for command in update.cmd_iter() {
                    pipe.add_command(command.clone()).ignore();
                }
            }
            pipe.cmd("SET")
                .arg(self.full_key(key))
                .arg(&*entry.json)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
            let mut connection = self.connection.clone();
            self.guarded(pipe.query_async::<()>(&mut connection)).await?;
        }
        Ok(())
    }

    /// `PING`, then `INFO memory/clients/stats` of each primary (bypassing the breaker;
    /// bounded by the command timeout).
    pub(crate) async fn ping_and_info(&self) -> Result<Vec<String>> {
        let mut connection = self.connection.clone();
        let mut info = redis::cmd("INFO");
        info.arg("memory").arg("clients").arg("stats");
        if !self.connection.is_cluster() {
            let (_, info): (String, String) =
                redis::pipe().cmd("PING").add_command(info).query_async(&mut connection).await?;
            return Ok(vec![info]);
        }
        redis::cmd("PING").query_async::<()>(&mut connection).await?;
        let mut infos = Vec::new();
        for (host, port) in self.connection.primaries().await? {
            infos.push(self.connection.on_node::<String>(info.clone(), &host, port).await?);
        }
        Ok(infos)
    }

    /// The pub/sub wake-ups of this cache.
    pub(crate) fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Runs a Lua script (`EVALSHA`, loading it on first use). `keys` are full keys.
    pub(crate) async fn script<T: redis::FromRedisValue>(
        &self,
        source: &str,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T> {
        let mut connection = self.connection.clone();
        let script = redis::Script::new(source);
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.guarded(invocation.invoke_async(&mut connection)).await
    }

    /// `SET lock token NX PX lease`: whether the lease was taken.
    pub(crate) async fn try_lease(
        &self,
        lock_key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool> {
        let mut connection = self.connection.clone();
        let millis = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .guarded(
                redis::cmd("SET")
                    .arg(lock_key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis)
                    .query_async(&mut connection),
            )
            .await?;
        Ok(set.is_some())
    }

    /// The remaining time to live of a full key, `None` if it does not exist or never expires.
    pub(crate) async fn pttl(&self, full_key: &str) -> Result<Option<Duration>> {
        let mut connection = self.connection.clone();
        let millis: i64 =
            self.guarded(redis::cmd("PTTL").arg(full_key).query_async(&mut connection)).await?;
        Ok(u64::try_from(millis).ok().map(Duration::from_millis))
    }

    /// `GET key` and `PTTL lock` in one round trip: a waiter's look at the value and at how
    /// long the current holder's lease has left.
    pub(crate) async fn get_and_lease(
        &self,
        key: &str,
        lock_key: &str,
    ) -> Result<(Option<Arc<Entry>>, Duration)> {
        // Two slots on a cluster: two requests in flight together (one round trip).
        let (mut value_connection, mut lease_connection) =
            (self.connection.clone(), self.connection.clone());
        let get = redis::cmd("GET").arg(self.full_key(key)).clone();
        let pttl = redis::cmd("PTTL").arg(lock_key).clone();
        let (bytes, millis): (Option<Vec<u8>>, i64) = self
            .guarded(futures_util::future::try_join(
                get.query_async(&mut value_connection),
                pttl.query_async(&mut lease_connection),
            ))
            .await?;
        let lease_left = Duration::from_millis(u64::try_from(millis).unwrap_or(0));
        Ok((bytes.map(|json| Arc::new(Entry::from_json(json))), lease_left))
    }

    /// `UNLINK prefix+key`.
    pub(crate) async fn remove(&self, key: &str) -> Result<u64> {
        let mut connection = self.connection.clone();
        self.guarded(redis::cmd("UNLINK").arg(self.full_key(key)).query_async(&mut connection))
            .await
    }

    /// Removes every key matching `pattern`, through its index when the pattern names one.
    pub(crate) async fn remove_matching(&self, pattern: &str) -> Result<Removed> {
        let Some(level) = index::for_pattern(pattern) else {
            let keys = self.scan_and_unlink(&self.full_key(pattern)).await?;
            return Ok(Removed { keys, scanned: true });
        };
        let mut connection = self.connection.clone();
        let index = self.index_key(level);
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, flat): (u64, Vec<String>) = self
                .guarded(
                    redis::cmd("ZSCAN")
                        .arg(&index)
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut connection),
                )
                .await?;
            // ZSCAN replies member, score, member, score, ...
            let members: Vec<&String> = flat.iter().step_by(2).collect();
            if !members.is_empty() {
                let keys: Vec<String> = members.iter().map(|m| self.full_key(m)).collect();
                // The keys may span slots (redis-rs splits a cluster `UNLINK` per slot); the
                // index is one key: two requests in flight together.
                let (mut unlink_connection, mut zrem_connection) =
                    (self.connection.clone(), self.connection.clone());
                let unlink = redis::cmd("UNLINK").arg(&keys).clone();
                let zrem = redis::cmd("ZREM").arg(&index).arg(&members).clone();
                let (unlinked, _): (u64, u64) = self
                    .guarded(futures_util::future::try_join(
                        unlink.query_async(&mut unlink_connection),
                        zrem.query_async(&mut zrem_connection),
                    ))
                    .await?;
                removed += unlinked;
            }
            if next == 0 {
                return Ok(Removed { keys: removed, scanned: false });
            }
            cursor = next;
        }
    }

    /// Removes every key under this cache's prefix, indexes included; counts the others.
    pub(crate) async fn clear(&self) -> Result<u64> {
        if self.prefix.is_empty() {
            return Err(Error::InvalidConfig(
                "clear() needs a cache with a prefix: without one it would remove every key in the database".into(),
            ));
        }
        let indexes = format!("{}{INDEX_NAMESPACE}", self.prefix);
        let removed = self.scan_and_unlink(&format!("{}*", self.prefix)).await?;
        // Then the indexes, which the data scan leaves alone.
        self.scan_and_unlink_where(&format!("{indexes}*"), |_| true).await?;
        Ok(removed)
    }

    /// `SCAN MATCH` + `UNLINK` of the data keys matching `full_pattern`. The cache's own
    /// keys (`<prefix>__...`: indexes, locks, fencing counters, load leases) are skipped:
    /// removing an index would hide live keys from later invalidations, removing a lock or
    /// a fencing counter would break mutual exclusion.
    async fn scan_and_unlink(&self, full_pattern: &str) -> Result<u64> {
        let reserved = format!("{}{RESERVED}", self.prefix);
        self.scan_and_unlink_where(full_pattern, |key| !key.starts_with(&reserved)).await
    }

    /// `SCAN MATCH` over the whole keyspace (every primary of a cluster), unlinking the keys
    /// `keep` accepts; returns how many went.
    async fn scan_and_unlink_where(
        &self,
        full_pattern: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<u64> {
        let nodes: Vec<Option<(String, u16)>> = if self.connection.is_cluster() {
            self.guarded(self.connection.primaries()).await?.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let mut removed = 0;
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let scan = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(full_pattern)
                    .arg("COUNT")
                    .arg(BATCH)
                    .clone();
                let (next, keys): (u64, Vec<String>) = match &node {
                    Some((host, port)) => {
                        self.guarded(self.connection.on_node(scan, host, *port)).await?
                    }
                    None => {
                        let mut connection = self.connection.clone();
                        self.guarded(scan.query_async(&mut connection)).await?
                    }
                };
                let keys: Vec<String> = keys.into_iter().filter(|key| keep(key)).collect();
                if !keys.is_empty() {
                    let mut connection = self.connection.clone();
                    removed += self
                        .guarded(
                            redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut connection),
                        )
                        .await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }
}

/// Tells the breaker a probe was abandoned (its future dropped mid-flight), so the next
/// call may probe instead of the breaker staying half-open forever.
struct ProbeReport<'a> {
    breaker: &'a Breaker,
    pass: Pass,
    reported: bool,
}

impl Drop for ProbeReport<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.abandoned(self.pass);
        }
    }
}
