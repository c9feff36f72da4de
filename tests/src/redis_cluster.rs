//! [`RedisCluster`]: a local Redis Cluster of private `redis-server` processes, for the
//! cluster contract and fault tests.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::RedisServer;

/// A Redis Cluster on loopback: `masters` primaries (each with `replicas` replicas), slots
/// spread evenly, created with `redis-cli --cluster create`. Dropping it stops every node.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes and forms the cluster; returns once every node reports
    /// `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// If `redis-server` or `redis-cli` is missing, or the cluster does not form within 20 s.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica may be promoted however long it was disconnected.
                    "--cluster-replica-validity-factor",
                    "0",
                ])
            })
            .collect();
        let addresses: Vec<String> =
            nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())).collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli not found on PATH: install it with redis-server (`sudo apt-get install -y redis-server`)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok(Duration::from_secs(20));
        cluster
    }

    /// Seed URLs of every node (`redis://127.0.0.1:port/`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, in creation order (the first `masters` are the primaries at start).
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// A cluster-aware connection for inspecting keys from tests.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cannot connect to the test cluster")
    }

    /// Runs `redis-cli -p <port of node> <args>` and returns its output.
    pub fn cli(&self, node: usize, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.nodes[node].port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until every running node reports `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// If that takes longer than `timeout`.
    pub fn wait_until_ok(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            let all_ok = (0..self.nodes.len())
                .filter(|&node| !self.cli(node, &["PING"]).is_empty())
                .all(|node| self.cli(node, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if all_ok {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "the cluster did not reach cluster_state:ok within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Moves `slots` hash slots from node `from` to node `to` (primaries) while the cluster
    /// serves traffic, with `redis-cli --cluster reshard`.
    ///
    /// # Panics
    ///
    /// If the reshard fails.
    pub fn reshard(&self, from: usize, to: usize, slots: usize) {
        let id = |node: usize| self.cli(node, &["CLUSTER", "MYID"]).trim().to_owned();
        let output = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{}", self.nodes[from].port())])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            output.status.success(),
            "reshard failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}
