//! The connection to Redis: one multiplexed connection that reconnects by itself, to a
//! standalone server (redis-rs's `ConnectionManager`) or to a Redis Cluster (redis-rs's
//! async cluster connection, which follows `MOVED`/`ASK` redirections and topology
//! changes), or to the primary that Redis Sentinel names (`redis/sentinel.rs`, which
//! follows failovers). All are opened lazily, so a cache can be built while Redis is down.

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use super::redis::sentinel::SentinelLink;

/// A cheap, cloneable handle to the connection.
#[derive(Clone)]
pub(crate) enum Link {
    Standalone(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    /// The primary behind Redis Sentinel, followed across failovers.
    Sentinel(SentinelLink),
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

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Standalone(connection) => connection.req_packed_command(cmd),
            Link::Sentinel(connection) => connection.req_packed_command(cmd),
            Link::Cluster(cluster) => {
                Box::pin(async move { cluster.connection().await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Standalone(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Sentinel(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Cluster(cluster) => Box::pin(async move {
                cluster.connection().await?.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Standalone(connection) => connection.get_db(),
            Link::Sentinel(connection) => connection.get_db(),
            Link::Cluster(_) => 0,
        }
    }
}
