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
