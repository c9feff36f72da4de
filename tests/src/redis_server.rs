//! A `redis-server` process owned by one test.
//!
//! Each test starts its own server on a free loopback port with persistence off and a fresh
//! working directory, so tests never see each other's data (or a developer's), and can kill,
//! pause and restart their server to exercise the failure paths.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a freshly spawned server may take to answer before we give up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Another process can take the port between our probe and redis binding it: try fresh ports.
const START_ATTEMPTS: usize = 5;
/// After a kill the port may be briefly unavailable (e.g. TIME_WAIT): retry for this long.
const RESTART_TIMEOUT: Duration = Duration::from_secs(5);

/// redis-server's output, in its temp dir, so that a failed start can be diagnosed.
const LOG: &str = "redis.log";

/// Makes temp dir names unique among servers started by one test binary.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running `redis-server` on `127.0.0.1`, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and blocks until it answers `PING`.
    ///
    /// Works from sync and async tests alike (it only blocks for the few milliseconds redis
    /// needs to start).
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH`, or no server became ready after a few attempts.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra config arguments, e.g. `&["--maxmemory", "1mb"]`.
    ///
    /// The same arguments are used again by [`restart`](Self::restart).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with(args: &[&str]) -> RedisServer {
        let extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("cache-tests-redis-{}-{port}-{n}", std::process::id());
            let dir = std::env::temp_dir().join(name);
            fs::create_dir_all(&dir).expect("cannot create a temp dir for redis-server");
            let extra_args = extra_args.clone();
            let mut server = RedisServer { port, dir, extra_args, child: None };
            if server.spawn_and_wait() {
                return server;
            }
            // Dropping `server` removes its directory; the next attempt takes another port.
            last_log = server.log();
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    /// The URL to connect to this server: `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port the server listens on (kept across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client for this server, for inspecting it directly in tests.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("the server URL is valid")
    }

    /// A connection to this server, for inspecting it directly in tests.
    ///
    /// # Panics
    ///
    /// If the server does not accept the connection (e.g. it was killed).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        // A generous response timeout: the tests' own inspections must not fail because a
        // loaded machine (CI runs everything on 2 cores) made Redis answer late.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_connection_timeout(Some(Duration::from_secs(10)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()))
    }

    /// Kills the server with SIGKILL (no clean shutdown) and waits for it to exit.
    ///
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a paused (SIGSTOPped) process. Errors mean it already exited.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and waits until it
    /// answers. The data is gone: persistence is off.
    ///
    /// # Panics
    ///
    /// If the port stays unavailable or the server does not become ready.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + RESTART_TIMEOUT;
        while !self.spawn_and_wait() {
            if Instant::now() >= deadline {
                panic!("redis-server did not restart on port {}; log:\n{}", self.port, self.log());
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open but nothing is answered, like a
    /// hung server. Undo with [`resume`](Self::resume).
    ///
    /// # Panics
    ///
    /// If the server is not running or the signal cannot be sent.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [paused](Self::pause) server run again (SIGCONT).
    ///
    /// # Panics
    ///
    /// As [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Whether the server process is alive (not killed, not crashed). A paused server counts as
    /// running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends a signal with the `kill` command, so the crate needs no libc binding.
    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("cannot run the `kill` command");
        assert!(status.success(), "`kill {signal}` failed for redis-server");
    }

    /// Spawns redis on `self.port` and waits until it answers. Returns false if it exited (most
    /// likely the port was taken) or never became ready; the caller decides whether to retry.
    fn spawn_and_wait(&mut self) -> bool {
        // Appending keeps the log of earlier runs across restarts.
        let log = File::options().create(true).append(true).open(self.dir.join(LOG));
        let log = log.expect("cannot create the redis-server log file");
        let port = self.port.to_string();
        let spawned = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]) // no persistence: a restart starts empty
            .args(["--daemonize", "no", "--logfile", ""]) // stay our child, log to stdout
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot share the log file"))
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => self.child.insert(child),
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "redis-server not found on PATH: install it (Debian/Ubuntu: \
                 `sudo apt-get install -y redis-server`); the integration tests never skip"
            ),
            Err(e) => panic!("cannot spawn redis-server: {e}"),
        };
        let pid = child.id();
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                break; // exited: usually "Address already in use"
            }
            if answers(self.port, pid) {
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// The server's log so far (all runs), for failure messages.
    fn log(&self) -> String {
        fs::read_to_string(self.dir.join(LOG)).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago: bind port 0 and let the OS choose.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind 127.0.0.1:0");
    listener.local_addr().expect("bound listener has an address").port()
}

/// Whether the server on `port` answers `PING` and is our process `pid`. Checking the pid
/// matters: if another test's redis took the port first, its `+PONG` must not count as ours.
fn answers(port: u16, pid: u32) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\nINFO server\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the whole `process_id:` line of INFO arrives; a timeout or EOF means not ready.
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        let mut lines = text.split_inclusive("\r\n");
        if let Some(line) = lines.find(|l| l.starts_with("process_id:") && l.ends_with("\r\n")) {
            return text.starts_with("+PONG\r\n") && line == format!("process_id:{pid}\r\n");
        }
    }
    false
}
