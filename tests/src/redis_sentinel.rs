//! [`RedisSentinel`]: a primary, a replica and three sentinels on loopback, for the
//! failover tests.
//!
//! The sentinels are `redis-server <config> --sentinel` processes (the Debian
//! `redis-server` package's binary runs in Sentinel mode; no `redis-sentinel` package is
//! needed), each with a config file in its own temp dir (Sentinel rewrites it). Timeouts are
//! low so that a failover takes a few seconds: `down-after-milliseconds 1000`,
//! `failover-timeout 6000` (the sentinels abort a promotion they do not see within it; with
//! 2 s a forced failover once did not complete on a saturated machine).

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::tls::{free_port, Certificates};
use crate::RedisServer;

/// The master name the sentinels monitor.
pub const MASTER: &str = "mymaster";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One `redis-server --sentinel` process, killed (and its directory removed) on drop.
pub struct SentinelProcess {
    port: u16,
    /// Its TLS port, in a group started by [`RedisSentinel::start_tls`].
    tls_port: Option<u16>,
    dir: PathBuf,
    child: Child,
}

impl SentinelProcess {
    /// The sentinel's URL for the cache under test: `redis://127.0.0.1:<port>`, or
    /// `rediss://127.0.0.1:<tls port>` in a TLS group.
    pub fn url(&self) -> String {
        match self.tls_port {
            Some(tls_port) => format!("rediss://127.0.0.1:{tls_port}"),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Runs `redis-cli -p <port> <args>` against this sentinel.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A primary, one replica of it, and three sentinels (quorum 2) monitoring it as
/// [`MASTER`]. Dropping it stops every process.
pub struct RedisSentinel {
    /// The two data nodes, in start order: index 0 started as the primary.
    nodes: Vec<RedisServer>,
    /// The data nodes' TLS ports (what the sentinels name), in a TLS group.
    tls_ports: Option<Vec<u16>>,
    sentinels: Vec<SentinelProcess>,
}

impl RedisSentinel {
    /// Starts the nodes and the sentinels; returns once every sentinel knows the replica
    /// and the two other sentinels (a failover can then be asked for).
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing or the group does not settle within 20 s.
    pub fn start() -> RedisSentinel {
        let primary = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
        let sentinels = (0..3).map(|_| spawn_sentinel(primary.port(), None)).collect();
        RedisSentinel { nodes: vec![primary, replica], tls_ports: None, sentinels }.settled()
    }

    /// Like [`start`](Self::start), over TLS with `certificates` (no client certificate
    /// required): the data nodes replicate over TLS, the sentinels listen on a TLS port
    /// ([`sentinel_urls`](Self::sentinel_urls) are `rediss://`), reach the nodes over TLS
    /// and name their TLS ports. Every process keeps a plain port for the test's own
    /// inspection ([`node`](Self::node), [`RedisServer::url`]).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_tls(certificates: &Certificates) -> RedisSentinel {
        let tls_ports = [free_port(), free_port()];
        let node = |index: usize, extra: &[&str]| {
            let mut args = certificates.server_args(tls_ports[index], false);
            args.extend(["--tls-replication", "yes"].map(str::to_owned));
            args.extend(extra.iter().map(|arg| (*arg).to_owned()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            RedisServer::start_with(&args)
        };
        let primary = node(0, &[]);
        let replica = node(1, &["--replicaof", "127.0.0.1", &tls_ports[0].to_string()]);
        let sentinels = (0..3).map(|_| spawn_sentinel(tls_ports[0], Some(certificates))).collect();
        let nodes = vec![primary, replica];
        RedisSentinel { nodes, tls_ports: Some(tls_ports.to_vec()), sentinels }.settled()
    }

    /// The port the sentinels name for the data node `index` (its TLS port in a TLS group).
    pub fn named_port(&self, index: usize) -> u16 {
        match &self.tls_ports {
            Some(tls_ports) => tls_ports[index],
            None => self.nodes[index].port(),
        }
    }

    /// Returns once every sentinel knows the replica and the two other sentinels.
    fn settled(self) -> RedisSentinel {
        let group = self;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let settled = group.sentinels.iter().all(|sentinel| {
                let master = sentinel.cli(&["SENTINEL", "MASTER", MASTER]);
                field(&master, "num-slaves") == Some("1")
                    && field(&master, "num-other-sentinels") == Some("2")
            });
            let replicating = cli(group.nodes[1].port(), &["INFO", "replication"])
                .contains("master_link_status:up");
            if settled && replicating {
                return group;
            }
            assert!(Instant::now() < deadline, "the Sentinel group did not settle within 20 s");
            sleep(Duration::from_millis(100));
        }
    }

    /// The sentinels' URLs.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(SentinelProcess::url).collect()
    }

    /// The sentinels.
    pub fn sentinels(&self) -> &[SentinelProcess] {
        &self.sentinels
    }

    /// The data nodes, in start order (index 0 started as the primary).
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The data node at `index` (0 started as the primary).
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// The port of the primary the first answering sentinel names.
    pub fn named_primary(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|sentinel| {
            let reply = sentinel.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]);
            reply.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// Whether the data node `index` answers `ROLE` as a primary (during a failover both
    /// may: the promoted replica, and the old primary until Sentinel demotes it).
    pub fn is_master(&self, index: usize) -> bool {
        cli(self.nodes[index].port(), &["ROLE"]).starts_with("master")
    }

    /// Asks a sentinel for a failover (`SENTINEL FAILOVER`), retrying while it answers that
    /// it cannot start one yet.
    ///
    /// # Panics
    ///
    /// If no sentinel accepted within 10 s.
    pub fn failover(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = self.sentinels[0].cli(&["SENTINEL", "FAILOVER", MASTER]);
            if reply.trim() == "OK" {
                return;
            }
            assert!(Instant::now() < deadline, "SENTINEL FAILOVER kept failing: {reply}");
            sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every sentinel names the data node `index` as the primary and it
    /// answers `ROLE` as one.
    ///
    /// # Panics
    ///
    /// If that takes longer than `timeout`.
    pub fn wait_for_primary(&self, index: usize, timeout: Duration) {
        let port = self.nodes[index].port();
        let named_port = self.named_port(index);
        let deadline = Instant::now() + timeout;
        loop {
            let named = self.sentinels.iter().all(|sentinel| {
                let reply = sentinel.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]);
                reply.lines().nth(1).map(str::trim) == Some(named_port.to_string().as_str())
            });
            if named && cli(port, &["ROLE"]).starts_with("master") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {index} (port {port}) was not the named primary within {timeout:?}"
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the data node `index` replicates from the current primary with its link
    /// up (after a failover, the demoted primary once Sentinel reconfigured it).
    ///
    /// # Panics
    ///
    /// If that takes longer than `timeout`.
    pub fn wait_for_replica(&self, index: usize, timeout: Duration) {
        let port = self.nodes[index].port();
        let deadline = Instant::now() + timeout;
        loop {
            let info = cli(port, &["INFO", "replication"]);
            if info.contains("role:slave") && info.contains("master_link_status:up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {index} (port {port}) did not become a replica within {timeout:?}"
            );
            sleep(Duration::from_millis(50));
        }
    }
}

/// The value of `name` in a `redis-cli` reply listing names and values on alternate lines.
fn field<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = reply.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == name {
            return lines.next();
        }
    }
    None
}

/// Runs `redis-cli -p <port> <args>` and returns its output.
fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli not found on PATH: install it with redis-server");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts one sentinel monitoring the primary on `primary_port`, on a free port; with
/// `tls`, also on a TLS port, reaching the nodes over TLS.
fn spawn_sentinel(primary_port: u16, tls: Option<&Certificates>) -> SentinelProcess {
    for _ in 0..5 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("cannot bind 127.0.0.1:0")
            .port();
        let tls_port = tls.map(|_| free_port());
        let tls_config = match (tls, tls_port) {
            (Some(certificates), Some(tls_port)) => {
                let path = |name: &str| certificates.path(name).display().to_string();
                format!(
                    "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    path("server.crt"),
                    path("server.key"),
                    path("ca.crt")
                )
            }
            _ => String::new(),
        };
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir()
            .join(format!("cache-tests-sentinel-{}-{port}-{n}", std::process::id()));
        fs::create_dir_all(&dir).expect("cannot create a temp dir for a sentinel");
        let config = dir.join("sentinel.conf");
        fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\n\
                 {tls_config}\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 6000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir = dir.display()
            ),
        )
        .expect("cannot write sentinel.conf");
        let log = File::create(dir.join("sentinel.log")).expect("cannot create the sentinel log");
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot share the log file"))
            .stderr(log)
            .spawn()
            .expect("redis-server not found on PATH (it runs the sentinels too)");
        let mut sentinel = SentinelProcess { port, tls_port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(sentinel.child.try_wait(), Ok(None)) {
                break; // exited: most likely the port was taken
            }
            if sentinel.cli(&["PING"]).trim() == "PONG" {
                return sentinel;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = sentinel.child.kill();
    }
    panic!("no sentinel started after 5 attempts");
}
