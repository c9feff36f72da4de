//! A TCP forwarder that adds a fixed round-trip delay: the stand-in for a network hop where
//! the kernel has no `sch_netem` (no `tc qdisc ... netem delay`).
//!
//! [`LatencyProxy::start`] listens on a socket and forwards every connection to one upstream
//! address (a Redis server), holding each chunk of bytes for half the added round trip in
//! each direction: a chunk read at `t` is written at `t + round_trip / 2`. That is what netem
//! does per packet, minus what a proxy cannot reproduce: there is no bandwidth bound, no
//! jitter, no loss, and a chunk is what one `read` returned (several packets, or part of
//! one), so the delay is per chunk, not per packet.
//!
//! Precision: tokio's timers tick in whole milliseconds, so the proxy runs on plain OS
//! threads: per connection and direction a reader (blocking `read`, stamps the deadline,
//! queues the chunk) and a writer (sleeps until the head chunk's deadline, writes it), so a
//! chunk's wait does not delay the reading of the next one and bytes stay in order. Writers
//! lower their timer slack to 1 µs (`/proc/<tid>/timerslack_ns`; Linux's default of 50 µs
//! would be 40% of a 0.125 ms half delay). A sleep still ends a wake-up latency past its
//! deadline (tens of µs on a quiet machine, more on a loaded one): measure the round trip
//! the proxy really adds (a Redis `PING` through it and direct) instead of trusting the
//! setting. Both sockets of a connection have `TCP_NODELAY`. With a zero round trip the
//! reader writes each chunk itself (one thread per direction, no queue): the cost of the
//! extra hop alone.
//!
//! The proxy's own CPU time (its threads' run time from `/proc/self/task/<tid>/schedstat`,
//! in nanoseconds) is in [`LatencyProxy::cpu_time`]: on a machine whose cores the client and
//! the server share, that is CPU taken from them, which a real hop would not take.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A forwarder from a local socket to one upstream address, adding a fixed round trip.
/// Stops accepting when dropped (open connections end when either side closes).
pub struct LatencyProxy {
    addr: SocketAddr,
    round_trip: Duration,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What the proxy's threads share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Thread ids of the running proxy threads (for their CPU time).
    threads: Mutex<Vec<u32>>,
    /// CPU nanoseconds of the threads that have ended.
    ended_ns: AtomicU64,
    /// Connections accepted so far.
    connections: AtomicU64,
}

impl LatencyProxy {
    /// Listens on `listen` (port 0 for a free one) and forwards each connection to
    /// `upstream`, adding `round_trip` (half each way) to every exchange.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        round_trip: Duration,
    ) -> io::Result<LatencyProxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let half = round_trip / 2;
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new().name("latency-proxy-accept".to_owned()).spawn(move || {
                for client in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let Ok(server) = TcpStream::connect(upstream) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    if connect(&shared, client, server, half).is_err() {
                        continue;
                    }
                }
            })?
        };
        Ok(LatencyProxy { addr, round_trip, shared, accept: Some(accept) })
    }

    /// Starts a proxy on a free loopback port in front of the Redis server at `redis_url`
    /// (`redis://host:port/...`; the path, if any, is kept in [`url`](Self::url)).
    pub fn for_redis(redis_url: &str, round_trip: Duration) -> io::Result<LatencyProxy> {
        let upstream = redis_addr(redis_url)?;
        let listen = if upstream.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" };
        LatencyProxy::start(listen.parse().expect("a socket address"), upstream, round_trip)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://<addr>/`: a Redis URL through the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// The round trip the proxy was asked to add.
    pub fn round_trip(&self) -> Duration {
        self.round_trip
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// CPU time the proxy's connection threads have run so far (ended and running ones).
    pub fn cpu_time(&self) -> Duration {
        let running: u64 = self
            .shared
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|&tid| thread_cpu_ns(tid))
            .sum();
        Duration::from_nanos(running + self.shared.ended_ns.load(Ordering::Relaxed))
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// The socket address of a `redis://host:port/...` URL (port 6379 when absent).
pub fn redis_addr(url: &str) -> io::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let rest = url.strip_prefix("redis://").ok_or_else(|| invalid(url))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let with_port = if host_port.starts_with('[') {
        if host_port.contains("]:") {
            host_port.to_owned()
        } else {
            format!("{host_port}:6379")
        }
    } else if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    with_port.to_socket_addrs()?.next().ok_or_else(|| invalid(url))
}

fn invalid(url: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("not a redis:// URL: {url}"))
}

/// Sets up both directions of one connection.
fn connect(
    shared: &Arc<Shared>,
    client: TcpStream,
    server: TcpStream,
    half: Duration,
) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    direction(shared, client.try_clone()?, server.try_clone()?, half)?;
    direction(shared, server, client, half)
}

/// Forwards `from` to `to`, each chunk `half` after it was read.
fn direction(
    shared: &Arc<Shared>,
    mut from: TcpStream,
    mut to: TcpStream,
    half: Duration,
) -> io::Result<()> {
    if half.is_zero() {
        spawn(shared, "latency-proxy-pipe", move || {
            let mut buffer = vec![0; 64 * 1024];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        })?;
        return Ok(());
    }
    let (queue, chunks) = mpsc::channel::<(Instant, Vec<u8>)>();
    spawn(shared, "latency-proxy-read", move || {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + half;
                    if queue.send((due, buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping the sender lets the writer drain the queue, then close its side.
    })?;
    spawn(shared, "latency-proxy-write", move || {
        lower_timer_slack();
        for (due, chunk) in chunks {
            sleep_until(due);
            if to.write_all(&chunk).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    })?;
    Ok(())
}

/// Spawns one proxy thread, registered for [`LatencyProxy::cpu_time`].
fn spawn(shared: &Arc<Shared>, name: &str, work: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let shared = Arc::clone(shared);
    thread::Builder::new().name(name.to_owned()).spawn(move || {
        let tid = current_tid();
        if let Some(tid) = tid {
            shared.threads.lock().unwrap_or_else(|e| e.into_inner()).push(tid);
        }
        work();
        if let Some(tid) = tid {
            let mut threads = shared.threads.lock().unwrap_or_else(|e| e.into_inner());
            threads.retain(|&t| t != tid);
            shared.ended_ns.fetch_add(thread_cpu_ns(tid), Ordering::Relaxed);
        }
    })?;
    Ok(())
}

/// Sleeps until `due` (at least; a sleep can end late, never early).
fn sleep_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        thread::sleep(due - now);
    }
}

/// The calling thread's kernel thread id, from `/proc/thread-self` (`<pid>/task/<tid>`).
fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Run time of thread `tid` of this process, in ns (0 where `/proc` does not tell).
fn thread_cpu_ns(tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Asks Linux for 1 µs timer slack on the calling thread (best effort).
fn lower_timer_slack() {
    if let Some(tid) = current_tid() {
        let _ = std::fs::write(format!("/proc/{tid}/timerslack_ns"), "1000");
    }
}

/// Parses a delay as the harnesses take it: `0`, `250us`, `0.25ms`, `1ms`, `0.001s`.
pub fn parse_delay(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if text == "0" {
        ("0", 1.0)
    } else {
        return None;
    };
    let value: f64 = number.trim().parse().ok()?;
    (value >= 0.0 && value.is_finite()).then(|| Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free loopback port: what it reads, it writes back.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                thread::spawn(move || {
                    let mut buffer = [0; 4096];
                    loop {
                        match stream.read(&mut buffer) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => stream.write_all(&buffer[..n]).unwrap(),
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(stream: &mut TcpStream, message: &[u8]) -> (Vec<u8>, Duration) {
        let started = Instant::now();
        stream.write_all(message).unwrap();
        let mut back = vec![0; message.len()];
        stream.read_exact(&mut back).unwrap();
        (back, started.elapsed())
    }

    #[test]
    fn forwards_bytes_intact_and_adds_the_round_trip() {
        let upstream = echo();
        let delay = Duration::from_millis(20);
        let proxy = LatencyProxy::start("127.0.0.1:0".parse().unwrap(), upstream, delay).unwrap();
        let mut direct = TcpStream::connect(upstream).unwrap();
        let mut through = TcpStream::connect(proxy.addr()).unwrap();
        through.set_nodelay(true).unwrap();
        // Every byte value, and a message larger than one read of the proxy.
        let message: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let (back, _) = round_trip(&mut through, &message);
        assert!(back == message, "the bytes came back changed");
        for _ in 0..5 {
            let (back, took) = round_trip(&mut through, b"PING\r\n");
            assert_eq!(back, b"PING\r\n");
            assert!(took >= delay, "a round trip through the proxy took {took:?} < {delay:?}");
            assert!(took < delay * 5, "a round trip took {took:?}, far over {delay:?}");
            let (_, direct_took) = round_trip(&mut direct, b"PING\r\n");
            assert!(direct_took < delay, "the echo server alone took {direct_took:?}");
        }
        assert_eq!(proxy.connections(), 1);
        assert!(proxy.cpu_time() > Duration::ZERO, "the proxy's threads ran");
    }

    #[test]
    fn without_delay_forwards_in_order_and_closes() {
        let upstream = echo();
        let proxy =
            LatencyProxy::start("127.0.0.1:0".parse().unwrap(), upstream, Duration::ZERO).unwrap();
        let mut through = TcpStream::connect(proxy.addr()).unwrap();
        for i in 0..100u32 {
            let message = format!("message {i}\n");
            assert_eq!(round_trip(&mut through, message.as_bytes()).0, message.as_bytes());
        }
        through.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        through.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the upstream's close reached the client");
    }

    #[test]
    fn parses_delays() {
        assert_eq!(parse_delay("0"), Some(Duration::ZERO));
        assert_eq!(parse_delay("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_delay("0.25ms"), Some(Duration::from_micros(250)));
        assert_eq!(parse_delay("1ms"), Some(Duration::from_millis(1)));
        assert_eq!(parse_delay("fast"), None);
        assert_eq!(
            redis_addr("redis://127.0.0.1:6399/").unwrap(),
            "127.0.0.1:6399".parse().unwrap()
        );
        assert_eq!(redis_addr("redis://:pw@10.0.0.2").unwrap(), "10.0.0.2:6379".parse().unwrap());
    }
}
