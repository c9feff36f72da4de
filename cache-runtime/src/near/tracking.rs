//! The tracking connections of a near cache (`near.rs`): one RESP3 connection per Redis
//! node (per primary of a cluster) on which the runtime sends
//! `CLIENT TRACKING ON BCAST PREFIX <prefix>`. Redis then pushes an `invalidate` message for
//! every key under the prefix that any client modifies (writes, deletions, expiry, eviction;
//! a null for `FLUSHDB`/`FLUSHALL`), which evicts the key from L1 in the connection's own
//! reader task, without a channel hop.
//!
//! Broadcasting mode keeps no per-key state on the server: its cost is one prefix entry per
//! tracking connection and, on every write under the prefix, one push per tracking
//! connection (one per process using a near cache).
//!
//! A session connects every node, switches tracking on, makes L1 live, then pings every
//! node every [`PING_EVERY`] (bounded by [`PING_TIMEOUT`]), drops L1's expired entries every
//! [`SWEEP_EVERY`] and, on a cluster, compares the slot map every [`TOPOLOGY_EVERY`]. Any failure, disconnect notice, or topology change
//! ends the session: L1 is flushed and serves nothing until the next session is live.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushKind, Value};

use super::Near;
use crate::store::endpoint::{self, Endpoints};
use crate::store::link::slot_ranges;
use crate::store::redis::sentinel::SentinelLink;

/// How often every tracking connection is pinged.
pub(crate) const PING_EVERY: Duration = Duration::from_millis(250);
/// How long a ping may take before the connection counts as dead.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a cluster's slot map is compared with the one tracking started from.
pub(crate) const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);
/// How often L1's expired entries are dropped ([`Near::drop_expired`]).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Where to track.
pub(crate) struct TrackingOptions {
    /// One URL for a standalone server; seed nodes of a cluster (with the TLS settings).
    pub(crate) endpoints: Endpoints,
    pub(crate) cluster: bool,
    /// Behind Sentinel: track on the primary it names; a primary change ends the session.
    pub(crate) sentinel: Option<SentinelLink>,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
}

/// Starts the task that keeps `near` coherent; it ends when `near` is dropped.
pub(crate) fn spawn(near: &Arc<Near>, options: TrackingOptions) {
    tokio::spawn(run(Arc::downgrade(near), options));
}

async fn run(near: Weak<Near>, options: TrackingOptions) {
    let mut backoff = Duration::from_millis(20);
    let mut session = 0;
    let mut warned: Option<String> = None;
    loop {
        session += 1;
        let started = Instant::now();
        let outcome = track(&near, &options, session).await;
        let Some(live) = near.upgrade() else { return };
        live.deafen(None);
        let lost = match outcome {
            Ok(()) => return, // the cache was dropped
            Err(lost) => lost,
        };
        live.set_trouble(Some(lost.reason.clone()));
        drop(live);
        if lost.refused {
            // Refused (a missing permission, a server without tracking): said once per
            // reason, and retried slowly, as nothing changes until an operator acts.
            if warned.as_deref() != Some(lost.reason.as_str()) {
                tracing::warn!(reason = %lost.reason, "near cache: Redis refused client tracking; the near cache serves nothing until it is accepted (retried every 30 s at most)");
                warned = Some(lost.reason.clone());
            }
        } else {
            tracing::debug!(reason = %lost.reason, "near cache: tracking lost; L1 flushed");
        }
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(20);
        }
        tokio::time::sleep(backoff).await;
        let most = if lost.refused { Duration::from_secs(30) } else { Duration::from_secs(1) };
        backoff = (backoff * 2).min(most);
    }
}

/// Why a tracking session ended.
struct Lost {
    reason: String,
    /// Redis answered with a refusal (an error reply, refused credentials), as opposed to
    /// a connection that failed or was lost.
    refused: bool,
}

impl From<String> for Lost {
    fn from(reason: String) -> Self {
        Lost { reason, refused: false }
    }
}

impl From<&str> for Lost {
    fn from(reason: &str) -> Self {
        Lost { reason: reason.to_owned(), refused: false }
    }
}

impl From<redis::RedisError> for Lost {
    fn from(error: redis::RedisError) -> Self {
        let refused = matches!(
            error.kind(),
            redis::ErrorKind::Server(_)
                | redis::ErrorKind::Extension
                | redis::ErrorKind::AuthenticationFailed
        );
        Lost { reason: error.to_string(), refused }
    }
}

/// One session: connect and track every node, then watch them. Returns `Ok` when the
/// cache is gone, an error saying why tracking is no longer known live otherwise.
async fn track(near: &Weak<Near>, options: &TrackingOptions, session: u64) -> Result<(), Lost> {
    let seeds = options.endpoints.clients().map_err(|e| e.to_string())?;
    let generation = options.sentinel.as_ref().map(SentinelLink::generation);
    let (nodes, topology) = if let Some(link) = &options.sentinel {
        (vec![link.primary_info().await.map_err(|e| e.to_string())?], None)
    } else if options.cluster {
        let (slots, seed) = slot_map(&seeds, options.connect_timeout).await?;
        let mut nodes: Vec<redis::ConnectionInfo> = Vec::new();
        for (_, _, host, port) in &slots {
            // TLS kept, with the same certificates, when the seed uses it.
            let info = endpoint::node(seed.get_connection_info(), host, *port);
            if !nodes.iter().any(|known| known.addr() == info.addr()) {
                nodes.push(info);
            }
        }
        (nodes, Some(slots))
    } else {
        (vec![seeds[0].get_connection_info().clone()], None)
    };
    let connect = nodes.into_iter().map(|info| connect(info, near, options, session));
    let mut connections = tokio::time::timeout(options.connect_timeout, try_join_all(connect))
        .await
        .map_err(|_| "connecting the tracking connections timed out".to_owned())??;
    {
        let Some(near) = near.upgrade() else { return Ok(()) };
        near.set_trouble(None);
        near.hear(session);
        tracing::debug!(nodes = connections.len(), "near cache: tracking on; L1 live");
    }
    let mut last_topology = Instant::now();
    let mut last_sweep = Instant::now();
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let Some(live) = near.upgrade() else { return Ok(()) };
        if !live.is_live() {
            return Err("a tracking connection disconnected".into());
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            live.drop_expired();
        }
        if generation.is_some()
            && generation != options.sentinel.as_ref().map(SentinelLink::generation)
        {
            return Err("the primary changed (Sentinel failover)".into());
        }
        drop(live);
        let pings = connections.iter_mut().map(|connection| async move {
            redis::cmd("PING").query_async::<()>(connection).await
        });
        match tokio::time::timeout(PING_TIMEOUT, try_join_all(pings)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(format!("health ping failed: {error}").into()),
            Err(_) => return Err("health ping timed out".into()),
        }
        if let Some(topology) = &topology {
            if last_topology.elapsed() >= TOPOLOGY_EVERY {
                last_topology = Instant::now();
                let slots = tokio::time::timeout(PING_TIMEOUT * 4, async {
                    let reply: Vec<Vec<Value>> =
                        redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut connections[0]).await?;
                    slot_ranges(&reply)
                })
                .await
                .map_err(|_| "CLUSTER SLOTS timed out".to_owned())??;
                if &slots != topology {
                    return Err("the cluster's slot map changed".into());
                }
            }
        }
    }
}

/// `CLUSTER SLOTS` from the first seed that answers, and that seed.
async fn slot_map(
    seeds: &[redis::Client],
    timeout: Duration,
) -> Result<(Vec<(i64, i64, String, u16)>, redis::Client), Lost> {
    let mut last = Lost::from("no seed node");
    for seed in seeds {
        let attempt = tokio::time::timeout(timeout, async {
            let mut connection = seed.get_multiplexed_async_connection().await?;
            let reply: Vec<Vec<Value>> =
                redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut connection).await?;
            slot_ranges(&reply)
        })
        .await;
        match attempt {
            Ok(Ok(slots)) if !slots.is_empty() => return Ok((slots, seed.clone())),
            Ok(Ok(_)) => last = "CLUSTER SLOTS is empty".into(),
            Ok(Err(error)) => last = error.into(),
            Err(_) => last = "CLUSTER SLOTS timed out".into(),
        }
    }
    Err(last)
}

/// A RESP3 connection to one node whose pushes go to `near`, with tracking on.
async fn connect(
    info: redis::ConnectionInfo,
    near: &Weak<Near>,
    options: &TrackingOptions,
    session: u64,
) -> redis::RedisResult<MultiplexedConnection> {
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let pushes = Weak::clone(near);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(PING_TIMEOUT * 4))
        .set_push_sender(move |push: redis::PushInfo| {
            if let Some(near) = pushes.upgrade() {
                on_push(&near, push, session);
            }
            Ok::<(), std::convert::Infallible>(())
        });
    let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
    let mut tracking = redis::cmd("CLIENT");
    tracking.arg("TRACKING").arg("ON").arg("BCAST");
    if !options.prefix.is_empty() {
        tracking.arg("PREFIX").arg(&options.prefix);
    }
    tracking.query_async::<()>(&mut connection).await?;
    Ok(connection)
}

/// Runs in the connection's reader task, in the order Redis sent the pushes.
fn on_push(near: &Near, push: redis::PushInfo, session: u64) {
    match push.kind {
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(keys)) => {
                near.invalidated(Some(keys.iter().filter_map(|key| match key {
                    Value::BulkString(bytes) => Some(bytes.as_slice()),
                    _ => None,
                })))
            }
            _ => near.invalidated(None::<std::iter::Empty<&[u8]>>),
        },
        PushKind::Disconnection => near.deafen(Some(session)),
        _ => {}
    }
}
