//! TLS for the integration tests: certificates made at test time with the `openssl` command
//! (a CA, a server certificate for `127.0.0.1`/`localhost`, a client certificate, and a
//! second CA that signed none of them), and a [`RedisServer`] that also listens with TLS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::redis_server::RedisServer;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// PEM files in a temp directory, removed on drop.
#[derive(Debug)]
pub struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// Makes a CA, a server and a client certificate signed by it, and an unrelated CA.
    ///
    /// # Panics
    ///
    /// If `openssl` is missing or fails.
    pub fn generate() -> Certificates {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cache-tests-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the certificates' directory");
        let certificates = Certificates { dir };
        for ca in ["ca", "other-ca"] {
            certificates.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=cache-tests {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ]);
        }
        std::fs::write(
            certificates.dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("cannot write the extensions file");
        std::fs::write(certificates.dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
            .expect("cannot write the extensions file");
        for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=cache-tests client")] {
            certificates.openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            certificates.openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ]);
        }
        certificates
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("cannot run `openssl` (Debian/Ubuntu: `apt-get install openssl`)");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The path of one file: `ca.crt`, `server.crt`, `server.key`, `client.crt`,
    /// `client.key`, `other-ca.crt`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The contents of one file.
    pub fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("the certificate was generated")
    }

    /// The CA that signed the server and client certificates.
    pub fn ca(&self) -> Vec<u8> {
        self.pem("ca.crt")
    }

    /// `redis-server` arguments that add a TLS port with these certificates;
    /// `auth_clients`: whether clients must present a certificate signed by the CA.
    pub fn server_args(&self, tls_port: u16, auth_clients: bool) -> Vec<String> {
        let path = |name: &str| self.path(name).display().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.crt"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.crt"),
            "--tls-auth-clients".into(),
            if auth_clients { "yes" } else { "no" }.into(),
        ]
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A [`RedisServer`] that also listens with TLS; its plain port stays for the test's own
/// inspection (the cache under test is only given the TLS URL).
#[derive(Debug)]
pub struct TlsRedisServer {
    /// The server (plain port: [`RedisServer::url`]).
    pub server: RedisServer,
    tls_port: u16,
}

impl TlsRedisServer {
    /// Starts a server with a TLS port using `certificates`, plus `extra` arguments.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start(certificates: &Certificates, auth_clients: bool, extra: &[&str]) -> Self {
        let tls_port = free_port();
        let mut args = certificates.server_args(tls_port, auth_clients);
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        TlsRedisServer { server: RedisServer::start_with(&args), tls_port }
    }

    /// `rediss://127.0.0.1:<tls port>/`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.tls_port)
    }

    /// `rediss://<userinfo>@127.0.0.1:<tls port>/`.
    pub fn tls_url_with(&self, userinfo: &str) -> String {
        format!("rediss://{userinfo}@127.0.0.1:{}/", self.tls_port)
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("cannot bind 127.0.0.1:0")
}

/// A free port `p` under 30000 whose cluster-bus port `p + 10000` is free too (the OS's
/// ephemeral ports can be too high for a bus port).
fn bus_safe_port() -> u16 {
    let seed = std::process::id() as u64 * 7919
        + u64::from(COUNTER.fetch_add(1, Ordering::Relaxed)) * 104_729;
    for step in 0..5000_u64 {
        let port = 20_000 + u16::try_from((seed + step * 13) % 10_000).unwrap();
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair below 40000");
}

/// A Redis Cluster whose nodes talk TLS to clients and to each other (`tls-cluster yes`),
/// `masters` primaries and no replicas, formed with `redis-cli --tls --cluster create`.
/// Clients on a TLS connection are told the nodes' TLS ports.
pub struct TlsRedisCluster {
    nodes: Vec<RedisServer>,
    tls_ports: Vec<u16>,
}

impl TlsRedisCluster {
    /// Starts and forms the cluster; returns once every node reports `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// If a node does not start or the cluster does not form within 20 s.
    pub fn start(certificates: &Certificates, masters: usize) -> TlsRedisCluster {
        let mut nodes = Vec::new();
        let mut tls_ports = Vec::new();
        for _ in 0..masters {
            let tls_port = bus_safe_port();
            let mut args = certificates.server_args(tls_port, false);
            for arg in [
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ] {
                args.push(arg.to_owned());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(RedisServer::start_with(&args));
            tls_ports.push(tls_port);
        }
        let ca = certificates.path("ca.crt").display().to_string();
        let output = Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "--cluster", "create"])
            .args(tls_ports.iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            output.status.success(),
            "redis-cli --tls --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let started = std::time::Instant::now();
        loop {
            let ok = nodes.iter().all(|node| {
                let output = Command::new("redis-cli")
                    .args(["-p", &node.port().to_string(), "CLUSTER", "INFO"])
                    .output()
                    .expect("redis-cli");
                String::from_utf8_lossy(&output.stdout).contains("cluster_state:ok")
            });
            if ok {
                break;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "no cluster_state:ok");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TlsRedisCluster { nodes, tls_ports }
    }

    /// `rediss://127.0.0.1:<tls port>/` of every node.
    pub fn tls_urls(&self) -> Vec<String> {
        self.tls_ports.iter().map(|port| format!("rediss://127.0.0.1:{port}/")).collect()
    }

    /// The nodes (plain ports, for the test's own inspection).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}
