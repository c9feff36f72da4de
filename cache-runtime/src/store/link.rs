//! The connection to Redis: one multiplexed connection that reconnects by itself, to a
//! standalone server (redis-rs's `ConnectionManager`) or to a Redis Cluster (redis-rs's
//! async cluster connection, which follows `MOVED`/`ASK` redirections and topology
//! changes), or to the primary that Redis Sentinel names (`redis/sentinel.rs`, which
//! follows failovers). All are opened lazily, so a cache can be built while Redis is down.
//!
//! Two reactions that every command needs live here, at the one choke point:
//!
//! - **Renewal** ([`Link::renew`]): redis-rs's connection manager reconnects after I/O
//!   errors only; a connection whose set-up failed otherwise (refused credentials) would stay
//!   failed for good. The store renews it when such a failure comes back (behind the
//!   breaker, so with its back-off), so a rotated password is picked up without a restart.
//! - **Scripts without `SCRIPT LOAD`**: redis-rs sends `EVALSHA`, and on `NOSCRIPT` loads
//!   the script with `SCRIPT LOAD`. A user without that permission (least privilege) would
//!   fail every script on a fresh server. The source of every script loaded through a link
//!   is kept ([`SOURCES`]); a refused `SCRIPT LOAD` is answered here with the script's SHA1,
//!   and an `EVALSHA` that meets `NOSCRIPT` is sent again as `EVAL` with the source (which
//!   also caches it on the server, so the next `EVALSHA` finds it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Arg, Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, ServerErrorKind, Value};
use tokio::sync::OnceCell;

use super::redis::sentinel::SentinelLink;

/// A cheap, cloneable handle to the connection.
#[derive(Clone)]
pub(crate) enum Link {
    Standalone(Standalone),
    Cluster(Arc<LazyCluster>),
    /// The primary behind Redis Sentinel, followed across failovers.
    Sentinel(SentinelLink),
}

/// A standalone server's connection manager, renewable (see the module docs). A clone takes
/// the current manager.
pub(crate) struct Standalone {
    current: ConnectionManager,
    shared: Arc<Renewable>,
}

struct Renewable {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: ArcSwap<ConnectionManager>,
}

impl Clone for Standalone {
    fn clone(&self) -> Self {
        Standalone {
            current: ConnectionManager::clone(&self.shared.manager.load()),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Standalone {
    /// A lazy connection manager for `client` (it connects on first use).
    pub(crate) fn new(client: redis::Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        let current = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        let manager = ArcSwap::from_pointee(current.clone());
        Ok(Standalone { current, shared: Arc::new(Renewable { client, config, manager }) })
    }
}

/// A cluster connection made on first use; a failed attempt is retried by the next call.
pub(crate) struct LazyCluster {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    pub(crate) fn new(client: ClusterClient) -> Self {
        LazyCluster { client, connection: OnceCell::new() }
    }

    async fn connection(&self) -> RedisResult<ClusterConnection> {
        let connection =
            self.connection.get_or_try_init(|| self.client.get_async_connection()).await?;
        Ok(connection.clone())
    }
}

impl Link {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// After a failure that a reconnect may cure but redis-rs does not reconnect for (see
    /// [`needs_renewal`]): the next command opens a new connection. A cluster retries a failed
    /// set-up on the next call by itself.
    pub(crate) fn renew(&self) {
        if let Link::Standalone(standalone) = self {
            let shared = &standalone.shared;
            if let Ok(fresh) = ConnectionManager::new_lazy_with_config(
                shared.client.clone(),
                shared.config.clone(),
            ) {
                shared.manager.store(Arc::new(fresh));
            }
        }
    }

    /// The primaries' addresses (cluster only): where keyspace-wide commands such as
    /// `SCAN` must each run.
    pub(crate) async fn primaries(&self) -> RedisResult<Vec<(String, u16)>> {
        let Link::Cluster(cluster) = self else { return Ok(Vec::new()) };
        let mut connection = cluster.connection().await?;
        // CLUSTER SLOTS: [[start, end, [host, port, id, ...], replicas...], ...]
        let slots: Vec<Vec<Value>> =
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut connection).await?;
        let mut primaries = Vec::new();
        for (_, _, host, port) in slot_ranges(&slots)? {
            if !primaries.contains(&(host.clone(), port)) {
                primaries.push((host, port));
            }
        }
        Ok(primaries)
    }

    /// Sends `cmd` to one node by address (cluster only).
    pub(crate) async fn on_node<T: redis::FromRedisValue>(
        &self,
        cmd: Cmd,
        host: &str,
        port: u16,
    ) -> RedisResult<T> {
        let Link::Cluster(cluster) = self else {
            let mut connection = self.clone();
            return cmd.query_async(&mut connection).await;
        };
        let mut connection = cluster.connection().await?;
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        });
        let value = connection.route_command(cmd, routing).await?;
        Ok(redis::from_redis_value(value)?)
    }
}

/// A `CLUSTER SLOTS` reply as `(first slot, last slot, primary host, primary port)`.
pub(crate) fn slot_ranges(slots: &[Vec<Value>]) -> RedisResult<Vec<(i64, i64, String, u16)>> {
    let mut ranges = Vec::new();
    for range in slots {
        let (Some(start), Some(end), Some(Value::Array(node))) =
            (range.first(), range.get(1), range.get(2))
        else {
            continue;
        };
        let host = node.first().map(redis::from_redis_value_ref::<String>).transpose()?;
        let port = node.get(1).map(redis::from_redis_value_ref::<u16>).transpose()?;
        if let (Some(host), Some(port)) = (host, port) {
            let start = redis::from_redis_value_ref::<i64>(start)?;
            let end = redis::from_redis_value_ref::<i64>(end)?;
            ranges.push((start, end, host, port));
        }
    }
    ranges.sort();
    Ok(ranges)
}

/// Whether `error` is a failed connection set-up that redis-rs's connection manager keeps
/// (it reconnects after I/O errors only): refused credentials, or a peer that does not
/// speak the Redis protocol.
pub(crate) fn needs_renewal(error: &redis::RedisError) -> bool {
    matches!(error.kind(), ErrorKind::AuthenticationFailed | ErrorKind::Parse)
}

/// The source of every script loaded through a link, by SHA1 (a handful of scripts).
static SOURCES: Mutex<Option<HashMap<Vec<u8>, Vec<u8>>>> = Mutex::new(None);

/// What a command is, for the script fallback.
enum ScriptCommand<'a> {
    /// `EVALSHA <sha> ...`.
    EvalSha(&'a [u8]),
    /// `SCRIPT LOAD <source>`.
    Load(&'a [u8]),
}

fn script_command(cmd: &Cmd) -> Option<ScriptCommand<'_>> {
    let mut args = cmd.args_iter();
    let Some(Arg::Simple(name)) = args.next() else { return None };
    match (name, args.next()) {
        (b"EVALSHA" | b"evalsha", Some(Arg::Simple(sha))) => Some(ScriptCommand::EvalSha(sha)),
        (b"SCRIPT" | b"script", Some(Arg::Simple(sub))) if sub.eq_ignore_ascii_case(b"LOAD") => {
            match args.next() {
                Some(Arg::Simple(source)) => Some(ScriptCommand::Load(source)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `EVALSHA <sha> <rest>` as `EVAL <source> <rest>`, if the source is known.
fn as_eval(cmd: &Cmd, sha: &[u8]) -> Option<Cmd> {
    let sources = SOURCES.lock().unwrap_or_else(|e| e.into_inner());
    let source = sources.as_ref()?.get(sha)?;
    let mut eval = redis::cmd("EVAL");
    eval.arg(source.as_slice());
    for arg in cmd.args_iter().skip(2) {
        if let Arg::Simple(bytes) = arg {
            eval.arg(bytes);
        }
    }
    Some(eval)
}

/// The kind of an error reply (redis-rs hands most of them back as a value).
fn refused_with(reply: &RedisResult<Value>) -> Option<ServerErrorKind> {
    match reply {
        Ok(Value::ServerError(error)) => error.kind(),
        Err(error) => match error.kind() {
            ErrorKind::Server(kind) => Some(kind),
            _ => None,
        },
        Ok(_) => None,
    }
}

fn sha1_hex(source: &[u8]) -> String {
    redis::Script::new(&String::from_utf8_lossy(source)).get_hash().to_owned()
}

impl Link {
    /// One command, as it is (no script fallback).
    fn send<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Standalone(connection) => connection.current.req_packed_command(cmd),
            Link::Sentinel(connection) => connection.req_packed_command(cmd),
            Link::Cluster(cluster) => {
                Box::pin(async move { cluster.connection().await?.req_packed_command(cmd).await })
            }
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match script_command(cmd) {
            None => self.send(cmd),
            Some(ScriptCommand::EvalSha(sha)) => Box::pin(async move {
                let reply = self.send(cmd).await;
                if refused_with(&reply) == Some(ServerErrorKind::NoScript) {
                    if let Some(eval) = as_eval(cmd, sha) {
                        return self.send(&eval).await;
                    }
                }
                reply
            }),
            Some(ScriptCommand::Load(source)) => Box::pin(async move {
                let sha = sha1_hex(source);
                SOURCES
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(HashMap::new)
                    .insert(sha.clone().into_bytes(), source.to_vec());
                let reply = self.send(cmd).await;
                if refused_with(&reply) == Some(ServerErrorKind::NoPerm) {
                    // Not permitted: the next EVALSHA's NOSCRIPT is answered with EVAL.
                    return Ok(Value::BulkString(sha.into_bytes()));
                }
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Standalone(connection) => {
                connection.current.req_packed_commands(pipeline, offset, count)
            }
            Link::Sentinel(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Cluster(cluster) => Box::pin(async move {
                cluster.connection().await?.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Standalone(connection) => connection.current.get_db(),
            Link::Sentinel(connection) => connection.get_db(),
            Link::Cluster(_) => 0,
        }
    }
}
