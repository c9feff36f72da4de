//! The Redis store: one multiplexed connection that reconnects by itself
//! (redis-rs's `ConnectionManager`), values as JSON strings under `prefix + key`, and the
//! invalidation indexes described in [`crate::index`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Removed;
use crate::breaker::{is_connection_failure, Breaker, BreakerState};
use crate::codec::Entry;
use crate::error::{Error, Result};
use crate::index::{self, INDEX_NAMESPACE};
use crate::notify::Notifier;

/// Keys asked for per `SCAN`/`ZSCAN` step, and unlinked per command.
const BATCH: usize = 1000;

pub(crate) struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    notifier: Notifier,
    breaker: Breaker,
}

/// Connection settings taken from the builder.
pub(crate) struct RedisOptions {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
}

impl RedisStore {
    /// Checks the URL and prepares the connection without opening it: a cache can be built
    /// while Redis is down, and connects when Redis answers.
    pub(crate) fn new(options: RedisOptions) -> Result<Self> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|source| Error::InvalidUrl { url: options.url.clone(), source })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.command_timeout))
            // One quick retry: a call never waits through a long reconnect schedule; the next
            // call tries again.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let notifier = Notifier::new(client, options.prefix.clone());
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
        if !self.breaker.allow() {
            return Err(Error::Unavailable);
        }
        let mut report = ProbeReport { breaker: &self.breaker, reported: false };
        let outcome = exchange.await;
        report.reported = true;
        match &outcome {
            Err(error) if is_connection_failure(error) => self.breaker.failed(),
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
        let mut connection = self.connection.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut levels = index::levels(key).peekable();
        let mut pipe = redis::pipe();
        if levels.peek().is_some() {
            let now_ms = u64::try_from(
                SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis(),
            )
            .unwrap_or(u64::MAX);
            pipe.atomic();
            for level in levels {
                let index = self.index_key(level);
                pipe.cmd("ZADD").arg(&index).arg(now_ms.saturating_add(ttl_ms)).arg(key).ignore();
                pipe.cmd("ZREMRANGEBYSCORE").arg(&index).arg("-inf").arg(now_ms).ignore();
                pipe.cmd("PEXPIRE").arg(&index).arg(ttl_ms).arg("NX").ignore();
                pipe.cmd("PEXPIRE").arg(&index).arg(ttl_ms).arg("GT").ignore();
            }
        }
        pipe.cmd("SET").arg(self.full_key(key)).arg(&*entry.json).arg("PX").arg(ttl_ms).ignore();
        self.guarded(pipe.query_async::<()>(&mut connection)).await?;
        Ok(())
    }

    /// `PING` then `INFO memory/clients/stats` (bypassing the breaker; bounded by the command
    /// timeout).
    pub(crate) async fn ping_and_info(&self) -> Result<String> {
        let mut connection = self.connection.clone();
        let (_, info): (String, String) = redis::pipe()
            .cmd("PING")
            .cmd("INFO")
            .arg("memory")
            .arg("clients")
            .arg("stats")
            .query_async(&mut connection)
            .await?;
        Ok(info)
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
        let mut connection = self.connection.clone();
        let (bytes, millis): (Option<Vec<u8>>, i64) = self
            .guarded(
                redis::pipe()
                    .cmd("GET")
                    .arg(self.full_key(key))
                    .cmd("PTTL")
                    .arg(lock_key)
                    .query_async(&mut connection),
            )
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
                let (unlinked, _): (u64, u64) = self
                    .guarded(
                        redis::pipe()
                            .cmd("UNLINK")
                            .arg(&keys)
                            .cmd("ZREM")
                            .arg(&index)
                            .arg(&members)
                            .query_async(&mut connection),
                    )
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
        let removed = self.scan_and_unlink(&format!("{}*", self.prefix)).await?;
        let indexes = format!("{}{INDEX_NAMESPACE}", self.prefix);
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .guarded(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{indexes}*"))
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut connection),
                )
                .await?;
            if !keys.is_empty() {
                self.guarded(redis::cmd("UNLINK").arg(&keys).query_async::<()>(&mut connection))
                    .await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// `SCAN MATCH` + `UNLINK` of the data keys matching `full_pattern` (indexes are skipped:
    /// removing one would hide live keys from later invalidations).
    async fn scan_and_unlink(&self, full_pattern: &str) -> Result<u64> {
        let indexes = format!("{}{INDEX_NAMESPACE}", self.prefix);
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .guarded(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(full_pattern)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut connection),
                )
                .await?;
            let keys: Vec<String> = keys.into_iter().filter(|k| !k.starts_with(&indexes)).collect();
            if !keys.is_empty() {
                removed += self
                    .guarded(redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut connection))
                    .await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

/// Tells the breaker a probe was abandoned (its future dropped mid-flight), so the next
/// call may probe instead of the breaker staying half-open forever.
struct ProbeReport<'a> {
    breaker: &'a Breaker,
    reported: bool,
}

impl Drop for ProbeReport<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.abandoned();
        }
    }
}
