//! The Redis store (standalone or Cluster, see [`super::link`]): values as JSON strings
//! under `prefix + key`, pending fill markers (see `store/mod.rs`), and the invalidation
//! indexes described in the crate docs.
//!
//! On a standalone server every write is one Lua script: the index updates and the write
//! happen atomically. On a cluster, where a script must stay in one slot, the index
//! updates are sent first and the write after them, so a key is never visible without its
//! index entry; keyspace-wide `SCAN`s run on every primary.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::link::{LazyCluster, Link};
use super::{Begun, FillPlan, Found, Marker, Removed, Ticket, Touch, Version};
use crate::breaker::{is_connection_failure, Breaker, BreakerState, Pass};
use crate::codec::Entry;
use crate::error::{BackendError, Error, Result};
use crate::format::ReadFormat;
use crate::index::{self, INDEX_NAMESPACE, SENTINEL};
use crate::key::RESERVED;
use crate::notify::Notifier;

/// Lua shared by the scripts that write: the server's clock, and adding a key to an index.
///
/// `index_add(index, member, ttl, now, birth)` records `member` with its expiry
/// (`now + ttl` ms) as score, never lowering a score (`GT`), prunes members whose keys have
/// expired, and keeps the index alive for an hour past its longest-lived member. With
/// `birth == '1'` (a server that never evicts, see [`EvictionPolicy`]) a newly created
/// index gets its sentinel at once: it cannot have lost members it never had.
macro_rules! lua_prelude {
    () => {
        r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function index_add(index, member, ttl, now, birth)
  if birth == '1' and redis.call('EXISTS', index) == 0 then
    redis.call('ZADD', index, 'inf', '#')
  end
  redis.call('ZADD', index, 'GT', now + ttl, member)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. now)
  local keep = ttl + 3600000
  if redis.call('PTTL', index) < keep then
    redis.call('PEXPIRE', index, keep)
  end
end
"
    };
}

/// Adds `ARGV[1]` to each index in `KEYS` for `ARGV[2]` ms (cluster: one index per call).
const INDEX_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
local now = now_ms()
for i = 1, #KEYS do index_add(KEYS[i], ARGV[1], tonumber(ARGV[2]), now, ARGV[3]) end
return 1"
);

/// Write-through: `KEYS[1]` is the data key, `KEYS[2..]` its indexes (standalone only);
/// `ARGV`: value, ttl ms, member, birth.
const WRITE_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
local now = now_ms()
for i = 2, #KEYS do index_add(KEYS[i], ARGV[3], tonumber(ARGV[2]), now, ARGV[4]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1"
);

/// Step 1 of the fill protocol. `KEYS[1]` data key, `KEYS[2..]` its indexes (standalone
/// only); `ARGV`: new marker id, marker lifetime ms, member, index ttl ms, force, birth, the
/// markers' common prefix, fresh ms (`ttl`), lifetime ms, the bytes of a cached absent
/// result (which lives by its own expiry: always fresh), the caller's clock in ms since the
/// Unix epoch (a stored value's age is that minus the write time in its `cr2` header; a
/// `cr1` or plain-JSON value's is `lifetime - PTTL`).
/// Replies `{1, value}` when a fresh value is stored, `{2, marker id}` with the marker to
/// fill. A marker is `<id>` or, when it replaces an expired value kept for `stale`,
/// `<id><expiry ms>\n<value>`, so readers can still serve that value and an abandoned load
/// can put it back.
const BEGIN_FILL_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' and current.err then
  -- Not a string (another application's data): replaced only when forced.
  if ARGV[5] ~= '1' then return redis.error_reply(current.err) end
  redis.call('DEL', KEYS[1])
  current = false
end
local pending = current and string.sub(current, 1, #ARGV[7]) == ARGV[7]
local kept = false
local left = 0
if current and not pending and ARGV[5] ~= '1' then
  if current == ARGV[10] then
    return {1, current}
  end
  left = redis.call('PTTL', KEYS[1])
  -- Age: by the write time of a cr2 header (the reader's clock, ARGV[11]), else by expiry.
  local written = tonumber(string.match(current, '^cr2:[^:]*:[^:]*:[^:]*:(%d+):'))
  local age = tonumber(ARGV[9]) - left
  if written then age = math.max(0, tonumber(ARGV[11]) - written) end
  if age < tonumber(ARGV[8]) then
    return {1, current}
  end
  kept = current
end
local now = now_ms()
for i = 2, #KEYS do index_add(KEYS[i], ARGV[3], tonumber(ARGV[4]), now, ARGV[6]) end
if pending then
  local stop = string.find(current, '\n', #ARGV[7] + 1, true)
  return {2, string.sub(current, 1, stop)}
end
if kept and left > 0 then
  redis.call('SET', KEYS[1], ARGV[1] .. (now + left) .. '\n' .. kept, 'PX', math.max(tonumber(ARGV[2]), left))
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return {2, ARGV[1]}"
);

/// Step 3 of the fill protocol: `SET KEYS[1] ARGV[2] PX ARGV[3]` if it still holds the
/// marker whose id is `ARGV[1]`.
const FILL_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// A refresh: replaces `KEYS[1]` only if it still holds the bytes `ARGV[1]` with a remaining
/// time to live of at most `ARGV[2]` ms (a later write of the same bytes lives longer).
/// `KEYS[2..]`: indexes (standalone only); `ARGV`: old, pttl, value, ttl ms, member, birth.
const REPLACE_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('PTTL', KEYS[1]) > tonumber(ARGV[2]) then return 0 end
local now = now_ms()
for i = 2, #KEYS do index_add(KEYS[i], ARGV[5], tonumber(ARGV[4]), now, ARGV[6]) end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1"
);

/// A hit for `idle` (sliding expiration), in one round trip: `GET KEYS[1]` and, for a value
/// with a write time (a `cr2` header), `PEXPIRE` to `min(idle, cap - age)`, age being the
/// caller's clock (`ARGV[3]`, ms since the Unix epoch) minus the write time. A value at least
/// `cap` old, a pending marker (prefix `ARGV[4]`) and a value without a write time are
/// returned untouched (the caller reads the first two as a miss). `KEYS[2..]`: the key's
/// indexes (standalone only), made to cover the extended life: a member whose score lies
/// before the new expiry is re-added until the cap (`ARGV[5]` member, `ARGV[6]` birth).
/// `ARGV`: idle ms, cap ms, now ms, marker prefix, member, birth.
const TOUCH_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, #ARGV[4]) == ARGV[4] then return current end
local written = tonumber(string.match(current, '^cr2:[^:]*:[^:]*:[^:]*:(%d+):'))
if not written then return current end
local until_cap = tonumber(ARGV[2]) - math.max(0, tonumber(ARGV[3]) - written)
if until_cap <= 0 then return current end
local left = math.min(tonumber(ARGV[1]), until_cap)
redis.call('PEXPIRE', KEYS[1], left)
if #KEYS > 1 then
  local now = now_ms()
  for i = 2, #KEYS do
    local score = redis.call('ZSCORE', KEYS[i], ARGV[5])
    if not score or tonumber(score) < now + left then
      index_add(KEYS[i], ARGV[5], until_cap, now, ARGV[6])
    end
  end
end
return current"
);

/// Cluster side of [`TOUCH_SCRIPT`]'s index cover, per index (`KEYS[1]`): `ARGV[1]` (the
/// member) is re-added for `ARGV[3]` ms (the cap) if its score lies before `now + ARGV[2]`
/// (`idle`, the furthest a hit moves the expiry); `ARGV[4]` birth.
const COVER_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) < now + tonumber(ARGV[2]) then
  index_add(KEYS[1], ARGV[1], tonumber(ARGV[3]), now, ARGV[4])
end
return 1"
);

/// Re-indexes `KEYS[2..]` (full keys; members are them without the prefix, `ARGV[1]`
/// bytes long) in the index `KEYS[1]`, each with its remaining time to live.
const REINDEX_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
local now = now_ms()
for i = 2, #KEYS do
  local left = redis.call('PTTL', KEYS[i])
  if left > 0 then
    index_add(KEYS[1], string.sub(KEYS[i], tonumber(ARGV[1]) + 1), left, now, ARGV[2])
  end
end
return 1"
);

/// Ends an index rebuild: the index is trusted again (its sentinel set) only if it was not
/// lost while the keyspace was scanned (the rebuild's own member `ARGV[1]` is still there).
const TRUST_SCRIPT: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[1], 'inf', '#')
  return 1
end
return 0";

/// Starts an index rebuild: a member of its own, so the end can tell whether the index
/// survived the scan.
const REBUILD_SCRIPT: &str = r"
redis.call('ZADD', KEYS[1], 'inf', ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], 3600000)
end
return 1";

/// Pending markers start with this (a NUL byte first, which no JSON text has): a reader
/// takes them for a miss.
const MARKER_TAG: &[u8] = b"\0cache-runtime:loading:";

fn is_marker(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER_TAG)
}

/// Whether `KEYS[1]` still holds the marker whose id is `ARGV[1]`; with `ARGV[2] == '1'`
/// (the loader placed it) it is removed, putting back the expired value it kept for stale
/// fallback (until that value's own expiry).
const ABANDON_SCRIPT: &str = concat!(
    lua_prelude!(),
    r"
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '1' then return 1 end
local rest = string.sub(current, #ARGV[1] + 1)
if #rest > 0 then
  local stop = string.find(rest, '\n', 1, true)
  local left = tonumber(string.sub(rest, 1, stop - 1)) - now_ms()
  if left > 0 then
    redis.call('SET', KEYS[1], string.sub(rest, stop + 1), 'PX', left)
    return 1
  end
end
redis.call('DEL', KEYS[1])
return 1"
);

/// The expired value a marker keeps for stale fallback, if any.
fn kept_by_marker(marker: &[u8]) -> Option<Vec<u8>> {
    let rest = &marker[MARKER_TAG.len()..];
    let id_end = rest.iter().position(|&b| b == b'\n')?;
    let rest = &rest[id_end + 1..];
    let expiry_end = rest.iter().position(|&b| b == b'\n')?;
    Some(rest[expiry_end + 1..].to_vec())
}

/// Keys asked for per `SCAN`/`ZSCAN` step, and unlinked per command.
const BATCH: usize = 1000;

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

pub(crate) struct RedisStore {
    connection: Link,
    prefix: String,
    notifier: Notifier,
    breaker: Breaker,
    /// Read from the server on the first write.
    eviction: OnceCell<EvictionPolicy>,
    /// How values read back are decoded (schema version, inflate limit).
    read: ReadFormat,
}

/// Connection settings taken from the builder.
pub(crate) struct RedisOptions {
    /// One URL for a standalone server; the seed nodes of a cluster.
    pub(crate) urls: Vec<String>,
    pub(crate) cluster: bool,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) read: ReadFormat,
}

impl RedisStore {
    /// Checks the URL and prepares the connection without opening it: a cache can be built
    /// while Redis is down, and connects when Redis answers.
    pub(crate) fn new(options: RedisOptions) -> Result<Self> {
        let clients = options
            .urls
            .iter()
            .map(|url| {
                redis::Client::open(url.as_str()).map_err(|source| Error::InvalidUrl {
                    url: url.clone(),
                    source: BackendError(source),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let connection = if options.cluster {
            let client = redis::cluster::ClusterClient::builder(options.urls.clone())
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.command_timeout)
                .retries(1)
                .build()
                .map_err(|source| Error::InvalidUrl {
                    url: options.urls.join(","),
                    source: BackendError(source),
                })?;
            Link::Cluster(Arc::new(LazyCluster::new(client)))
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.command_timeout))
                // One quick retry: a call never waits through a long reconnect schedule; the
                // next call tries again.
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(100));
            Link::Standalone(
                ConnectionManager::new_lazy_with_config(clients[0].clone(), config)
                    .map_err(Error::backend)?,
            )
        };
        // Classic pub/sub reaches every node of a cluster: one subscription to any node
        // hears every fill notification.
        let notifier = Notifier::new(clients, &options.prefix);
        Ok(RedisStore {
            connection,
            prefix: options.prefix,
            notifier,
            breaker: Breaker::default(),
            eviction: OnceCell::new(),
            read: options.read,
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
        outcome.map_err(Error::backend)
    }

    /// The circuit breaker's state.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    fn index_key(&self, level: &str) -> String {
        self.reserved_key(INDEX_NAMESPACE, level)
    }

    /// What the server's eviction settings mean for the indexes, read once (on the first
    /// write) and logged. On a cluster, eviction on any primary counts.
    pub(crate) async fn eviction(&self) -> Result<EvictionPolicy> {
        self.eviction.get_or_try_init(|| self.read_eviction()).await.copied()
    }

    async fn read_eviction(&self) -> Result<EvictionPolicy> {
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
        for reply in replies {
            let pairs = match reply {
                Ok(pairs) => pairs,
                Err(Error::Backend(error)) if !is_connection_failure(&error.0) => {
                    tracing::warn!(%error, "CONFIG GET maxmemory* refused: assuming Redis may evict invalidation indexes");
                    policy = EvictionPolicy::Possible;
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
        Ok(policy)
    }

    /// `"1"` when new indexes are trusted from their creation.
    async fn birth(&self) -> Result<&'static str> {
        Ok(if self.eviction().await? == EvictionPolicy::Never { "1" } else { "0" })
    }

    /// One `GET`: a hit costs exactly one round trip.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>> {
        let mut connection = self.connection.clone();
        let bytes: Option<Vec<u8>> = self
            .guarded(redis::cmd("GET").arg(self.full_key(key)).query_async(&mut connection))
            .await?;
        Ok(bytes
            .filter(|bytes| !is_marker(bytes))
            .map(|json| Arc::new(Entry::from_stored(json, self.read))))
    }

    /// A hit for `idle`: one script (`TOUCH_SCRIPT`) reads the value and extends its life;
    /// on a cluster the index covers (`COVER_SCRIPT`, one per index level, other slots) are
    /// in flight together with it: still one round trip.
    pub(crate) async fn get_touched(&self, key: &str, touch: Touch) -> Result<Option<Arc<Entry>>> {
        let birth = self.birth().await?;
        let (idle, cap) = (millis(touch.idle), millis(touch.cap));
        let script = redis::Script::new(TOUCH_SCRIPT);
        let mut invocation = self.invocation(&script, key);
        invocation
            .arg(idle)
            .arg(cap)
            .arg(crate::format::now_ms())
            .arg(MARKER_TAG)
            .arg(key)
            .arg(birth);
        let bytes: Option<Vec<u8>> = if self.connection.is_cluster() {
            let covers = index::levels(key).map(|level| {
                let mut connection = self.connection.clone();
                let index = self.index_key(level);
                async move {
                    redis::Script::new(COVER_SCRIPT)
                        .key(index)
                        .arg(key)
                        .arg(idle)
                        .arg(cap)
                        .arg(birth)
                        .invoke_async::<()>(&mut connection)
                        .await
                }
            });
            let (bytes, _) =
                futures_util::future::try_join(async { self.run(&invocation).await }, async {
                    self.guarded(try_join_all(covers)).await
                })
                .await?;
            bytes
        } else {
            self.run(&invocation).await?
        };
        Ok(bytes.filter(|bytes| !is_marker(bytes)).and_then(|bytes| {
            let entry = Entry::from_stored(bytes, self.read);
            // Past the cap: a miss (the script left it alone).
            let expired = entry.stamp().is_some_and(|stamp| stamp.age() >= touch.cap);
            (!expired).then(|| Arc::new(entry))
        }))
    }

    /// `GET` and `PTTL` in one round trip: the entry, its age (by the write time in its
    /// header; for a `cr1` or plain-JSON value stored with `lifetime`, `lifetime - PTTL`)
    /// and its version (the `PTTL`, which a refresh's `Ticket::Replace` checks).
    pub(crate) async fn get_aged(&self, key: &str, lifetime: Duration) -> Result<Option<Found>> {
        let read_at = std::time::Instant::now();
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
        Ok(bytes.and_then(|bytes| {
            if !is_marker(&bytes) {
                let entry = Arc::new(Entry::from_stored(bytes, self.read));
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
    async fn index_on_cluster(&self, key: &str, ttl_ms: u64, birth: &str) -> Result<()> {
        let updates = index::levels(key).map(|level| {
            let mut connection = self.connection.clone();
            let index = self.index_key(level);
            async move {
                redis::Script::new(INDEX_SCRIPT)
                    .key(index)
                    .arg(key)
                    .arg(ttl_ms)
                    .arg(birth)
                    .invoke_async::<()>(&mut connection)
                    .await
            }
        });
        self.guarded(try_join_all(updates)).await?;
        Ok(())
    }

    /// A script invocation on `key`, with its indexes as further keys on standalone.
    fn invocation<'a>(&self, script: &'a redis::Script, key: &str) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.key(self.full_key(key));
        if !self.connection.is_cluster() {
            for level in index::levels(key) {
                invocation.key(self.index_key(level));
            }
        }
        invocation
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut connection = self.connection.clone();
        self.guarded(invocation.invoke_async(&mut connection)).await
    }

    /// Write-through: `SET` with the index updates, atomically on standalone, indexes first
    /// on a cluster.
    pub(crate) async fn set(&self, key: &str, entry: &Entry, ttl: Duration) -> Result<()> {
        let ttl_ms = millis(ttl);
        let birth = self.birth().await?;
        if self.connection.is_cluster() {
            self.index_on_cluster(key, ttl_ms, birth).await?;
        }
        let script = redis::Script::new(WRITE_SCRIPT);
        let mut invocation = self.invocation(&script, key);
        invocation.arg(&*entry.json).arg(ttl_ms).arg(key).arg(birth);
        self.run::<()>(&invocation).await
    }

    /// Step 1 of the fill protocol (see `store/mod.rs`). The index entry covers the marker
    /// and the value that may replace it (`window + lifetime`; a marker keeping an expired
    /// value lives at most as long as that value).
    pub(crate) async fn begin_fill(&self, key: &str, plan: &FillPlan) -> Result<Begun> {
        let birth = self.birth().await?;
        let mut marker = MARKER_TAG.to_vec();
        marker.extend_from_slice(super::lease::new_token().as_bytes());
        marker.push(b'\n');
        let index_ttl = millis(plan.window) + millis(plan.lifetime);
        let script = redis::Script::new(BEGIN_FILL_SCRIPT);
        let mut invocation = self.invocation(&script, key);
        invocation
            .arg(&marker)
            .arg(millis(plan.window))
            .arg(key)
            .arg(index_ttl)
            .arg(if plan.force { "1" } else { "0" })
            .arg(birth)
            .arg(MARKER_TAG)
            .arg(millis(plan.fresh_for))
            .arg(millis(plan.lifetime))
            .arg(crate::codec::ABSENT)
            .arg(crate::format::now_ms());
        let (found, bytes): (i64, Vec<u8>) = if self.connection.is_cluster() {
            // Both in flight together: the load starts only when both are done, so either
            // an invalidation finds the marker, or it ran before the load reads anything.
            let (_, reply) = futures_util::future::try_join(
                self.index_on_cluster(key, index_ttl, birth),
                async { self.run(&invocation).await },
            )
            .await?;
            reply
        } else {
            self.run(&invocation).await?
        };
        Ok(if found == 1 {
            Begun::Present(Arc::new(Entry::from_stored(bytes, self.read)))
        } else if bytes == marker {
            Begun::Ticket(Ticket::Marker(Marker::Redis(bytes)))
        } else {
            Begun::Ticket(Ticket::Adopted(Marker::Redis(bytes)))
        })
    }

    /// Step 3 of the fill protocol: stores `entry` if `ticket` still holds.
    pub(crate) async fn fill(
        &self,
        key: &str,
        ticket: &Ticket,
        entry: &Entry,
        ttl: Duration,
    ) -> Result<bool> {
        let ttl_ms = millis(ttl);
        let stored: i64 = match ticket {
            Ticket::Marker(Marker::Redis(marker)) | Ticket::Adopted(Marker::Redis(marker)) => {
                let script = redis::Script::new(FILL_SCRIPT);
                let mut invocation = script.prepare_invoke();
                invocation.key(self.full_key(key)).arg(marker).arg(&*entry.json).arg(ttl_ms);
                self.run(&invocation).await?
            }
            Ticket::Replace { old, version: Version::Redis(pttl) } => {
                let birth = self.birth().await?;
                if self.connection.is_cluster() {
                    self.index_on_cluster(key, ttl_ms, birth).await?;
                }
                let script = redis::Script::new(REPLACE_SCRIPT);
                let mut invocation = self.invocation(&script, key);
                invocation
                    .arg(&*old.json)
                    .arg(*pttl)
                    .arg(&*entry.json)
                    .arg(ttl_ms)
                    .arg(key)
                    .arg(birth);
                self.run(&invocation).await?
            }
            _ => 0,
        };
        Ok(stored == 1)
    }

    /// A load stores nothing: whether its marker is still there; removed (putting back the
    /// value it kept) if this load placed it.
    pub(crate) async fn abandon(&self, key: &str, ticket: &Ticket) -> Result<bool> {
        let (marker, own) = match ticket {
            Ticket::Marker(Marker::Redis(marker)) => (marker, "1"),
            Ticket::Adopted(Marker::Redis(marker)) => (marker, "0"),
            _ => return Ok(false),
        };
        let script = redis::Script::new(ABANDON_SCRIPT);
        let mut invocation = script.prepare_invoke();
        invocation.key(self.full_key(key)).arg(marker).arg(own);
        Ok(self.run::<i64>(&invocation).await? == 1)
    }

    /// `PING`, then `INFO memory/clients/stats` of each primary (bypassing the breaker;
    /// bounded by the command timeout).
    pub(crate) async fn ping_and_info(&self) -> Result<Vec<String>> {
        let mut connection = self.connection.clone();
        let mut info = redis::cmd("INFO");
        info.arg("memory").arg("clients").arg("stats");
        if !self.connection.is_cluster() {
            let (_, info): (String, String) = redis::pipe()
                .cmd("PING")
                .add_command(info)
                .query_async(&mut connection)
                .await
                .map_err(Error::backend)?;
            return Ok(vec![info]);
        }
        redis::cmd("PING").query_async::<()>(&mut connection).await.map_err(Error::backend)?;
        let mut infos = Vec::new();
        for (host, port) in self.connection.primaries().await.map_err(Error::backend)? {
            infos.push(
                self.connection
                    .on_node::<String>(info.clone(), &host, port)
                    .await
                    .map_err(Error::backend)?,
            );
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
        let script = redis::Script::new(source);
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.run(&invocation).await
    }

    /// `SET lock token NX PX lease`: whether the lease was taken.
    pub(crate) async fn try_lease(
        &self,
        lock_key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool> {
        let mut connection = self.connection.clone();
        let set: Option<String> = self
            .guarded(
                redis::cmd("SET")
                    .arg(lock_key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(lease))
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
        let entry = bytes
            .filter(|bytes| !is_marker(bytes))
            .map(|json| Arc::new(Entry::from_stored(json, self.read)));
        Ok((entry, lease_left))
    }

    /// `UNLINK prefix+key`: a value or a pending marker (which voids a running load's
    /// ticket).
    pub(crate) async fn remove(&self, key: &str) -> Result<u64> {
        let mut connection = self.connection.clone();
        self.guarded(redis::cmd("UNLINK").arg(self.full_key(key)).query_async(&mut connection))
            .await
    }

    async fn exists(&self, full_key: &str) -> Result<bool> {
        let mut connection = self.connection.clone();
        let found: u64 =
            self.guarded(redis::cmd("EXISTS").arg(full_key).query_async(&mut connection)).await?;
        Ok(found == 1)
    }

    /// Whether the index holds its sentinel: it has every live key of its level.
    async fn trusted(&self, index: &str) -> Result<bool> {
        let mut connection = self.connection.clone();
        let score: Option<f64> = self
            .guarded(redis::cmd("ZSCORE").arg(index).arg(SENTINEL).query_async(&mut connection))
            .await?;
        Ok(score.is_some())
    }

    /// Removes every key matching `pattern`: through its index when the pattern names one
    /// and the index is trusted, else by scanning (and then rebuilding the index).
    pub(crate) async fn remove_matching(&self, pattern: &str) -> Result<Removed> {
        let Some(level) = index::for_pattern(pattern) else {
            if self.prefix.is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "pattern {pattern:?} names no index level (such as `homepage:`), so it needs a SCAN of the whole database; a cache without a prefix refuses it, since it would remove other applications' keys. Give the cache a prefix, or start the pattern with a literal `level:`"
                )));
            }
            let keys = self.scan_and_unlink(&self.full_key(pattern)).await?;
            return Ok(Removed { keys, scanned: true });
        };
        let index = self.index_key(level);
        if self.trusted(&index).await? {
            let removed = self.unlink_indexed(&index, pattern).await?;
            // Lost while we walked it (evicted)? Then it may have missed keys: scan.
            if self.trusted(&index).await? {
                return Ok(Removed { keys: removed, scanned: false });
            }
            tracing::warn!(
                index,
                "invalidation index lost during a pattern invalidation; scanning"
            );
        }
        if self.eviction().await? == EvictionPolicy::Never && !self.exists(&index).await? {
            // Without eviction an index goes only an hour after its last key expired: no
            // index, no live key under this level.
            return Ok(Removed { keys: 0, scanned: false });
        }
        if self.prefix.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "the invalidation index for {level:?} is incomplete (Redis may evict keys), so {pattern:?} needs a SCAN of the whole database; a cache without a prefix refuses it, since it would remove other applications' keys. Give the cache a prefix"
            )));
        }
        let keys = self.rebuild(&index, level, pattern).await?;
        Ok(Removed { keys, scanned: true })
    }

    /// Walks a trusted index and unlinks the keys matching `pattern`. Members stay: a key
    /// refilled meanwhile keeps its entry, and removed keys' members expire with their
    /// scores (an `UNLINK` of a missing key costs nothing).
    async fn unlink_indexed(&self, index: &str, pattern: &str) -> Result<u64> {
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, flat): (u64, Vec<String>) = self
                .guarded(
                    redis::cmd("ZSCAN")
                        .arg(index)
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut connection),
                )
                .await?;
            // ZSCAN replies member, score, member, score, ...
            let keys: Vec<String> = flat
                .iter()
                .step_by(2)
                .filter(|member| !member.contains(RESERVED))
                .map(|member| self.full_key(member))
                .collect();
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

    /// Pattern invalidation on an untrusted index (new, evicted, or its sentinel not yet
    /// set): `SCAN` the level, unlink what matches, index the rest, and mark the index
    /// trusted if it survived the scan. `SCAN` returns every key that exists for the whole
    /// scan; keys written during it index themselves.
    async fn rebuild(&self, index: &str, level: &str, pattern: &str) -> Result<u64> {
        let own = format!("{RESERVED}rebuild:{}", super::lease::new_token());
        self.script::<()>(REBUILD_SCRIPT, &[index], &[&own]).await?;
        let birth = self.birth().await?;
        let mut removed = 0;
        let full_level = self.full_key(level);
        self.scan(
            &format!("{full_level}*"),
            |batch| async move {
                let (gone, keep): (Vec<String>, Vec<String>) = batch
                    .into_iter()
                    .partition(|full| crate::glob::matches(pattern, &full[self.prefix.len()..]));
                let mut unlinked = 0;
                if !gone.is_empty() {
                    let mut connection = self.connection.clone();
                    unlinked = self
                        .guarded(
                            redis::cmd("UNLINK").arg(&gone).query_async::<u64>(&mut connection),
                        )
                        .await?;
                }
                if !keep.is_empty() {
                    self.reindex(index, &keep, birth).await?;
                }
                Ok(unlinked)
            },
            &mut removed,
        )
        .await?;
        let trusted: i64 = self.script(TRUST_SCRIPT, &[index], &[&own]).await?;
        if trusted == 0 {
            tracing::warn!(index, "invalidation index lost during its rebuild; the next pattern invalidation scans again");
        }
        Ok(removed)
    }

    /// Puts the surviving keys of a rebuilt level back into its index, each with its
    /// remaining time to live: one script for the whole batch on standalone; on a cluster,
    /// where the keys live in other slots, their `PTTL`s in flight together, then the
    /// index update.
    async fn reindex(&self, index: &str, full_keys: &[String], birth: &str) -> Result<()> {
        if !self.connection.is_cluster() {
            let script = redis::Script::new(REINDEX_SCRIPT);
            let mut invocation = script.prepare_invoke();
            invocation.key(index);
            for full in full_keys {
                invocation.key(full);
            }
            invocation.arg(self.prefix.len()).arg(birth);
            return self.run::<()>(&invocation).await;
        }
        let lefts = try_join_all(full_keys.iter().map(|full| self.pttl(full))).await?;
        let updates = full_keys.iter().zip(lefts).filter_map(|(full, left)| {
            let left = left?;
            let mut connection = self.connection.clone();
            let member = full[self.prefix.len()..].to_owned();
            let index = index.to_owned();
            Some(async move {
                redis::Script::new(INDEX_SCRIPT)
                    .key(index)
                    .arg(member)
                    .arg(millis(left))
                    .arg(birth)
                    .invoke_async::<()>(&mut connection)
                    .await
            })
        });
        self.guarded(try_join_all(updates)).await?;
        Ok(())
    }

    /// Removes every data key under this cache's prefix (pending markers included). The
    /// runtime's own keys stay: indexes keep their members, which expire with their scores.
    pub(crate) async fn clear(&self) -> Result<u64> {
        if self.prefix.is_empty() {
            return Err(Error::InvalidConfig(
                "clear() needs a cache with a prefix: without one it would remove every key in the database".into(),
            ));
        }
        self.scan_and_unlink(&format!("{}*", self.prefix)).await
    }

    /// `SCAN MATCH` + `UNLINK` of the data keys matching `full_pattern`. Keys with a `#`
    /// are some cache's own (indexes, locks, fencing counters, load leases, under any
    /// prefix): never removed, since no user key contains `#`.
    async fn scan_and_unlink(&self, full_pattern: &str) -> Result<u64> {
        let mut removed = 0;
        self.scan(
            full_pattern,
            |keys| async move {
                if keys.is_empty() {
                    return Ok(0);
                }
                let mut connection = self.connection.clone();
                self.guarded(redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut connection))
                    .await
            },
            &mut removed,
        )
        .await?;
        Ok(removed)
    }

    /// `SCAN MATCH` over the whole keyspace (every primary of a cluster), handing each
    /// batch of data keys (no reserved keys) to `each` and summing what it returns.
    async fn scan<F, Fut>(&self, full_pattern: &str, each: F, total: &mut u64) -> Result<()>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<u64>>,
    {
        let nodes: Vec<Option<(String, u16)>> = if self.connection.is_cluster() {
            self.guarded(self.connection.primaries()).await?.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
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
                let keys: Vec<String> =
                    keys.into_iter().filter(|key| !key.contains(RESERVED)).collect();
                if !keys.is_empty() {
                    *total += each(keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// [`script`](Self::script) for a script built once (its SHA1 computed once, not per
    /// call): for scripts on a hot path, such as a rate-limit decision.
    pub(crate) async fn run_script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.run(&invocation).await
    }
}

/// A duration in whole milliseconds, at least 1 (Redis rejects `PX 0`).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
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
