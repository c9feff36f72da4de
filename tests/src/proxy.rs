//! A TCP proxy in front of a test's Redis server that can hold one command back.
//!
//! Some races need a window held open at an exact point of a client's conversation with
//! Redis ("after the holder confirmed its outcome, before it released its lease"). A cache
//! built on [`DelayProxy::url`] talks to Redis through the proxy; [`DelayProxy::arm`] makes
//! it hold the first client command whose bytes contain a needle (a key name, a script
//! argument) until the test [releases](Hold::release) it or a bound passes. Byte order is
//! kept: everything the client sends after that command on the same connection waits too.
//! Replies, and every other connection, flow as usual.
//!
//! The proxy understands just enough RESP to cut the client's byte stream into whole
//! commands (`*<n>` arrays of `$<len>` bulk strings, or inline commands ending in `\r\n`),
//! so a needle split across two reads still matches, and commands sent before the held one
//! in the same read are not held with it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// A proxy on a free loopback port, forwarding every connection to one Redis server.
/// Stops accepting, and drops its connections, when dropped.
pub struct DelayProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// The next command to hold, if armed.
    armed: Mutex<Option<Hold>>,
    /// Every client command forwarded so far (tests inspect a handful of commands).
    commands: Mutex<Vec<Vec<u8>>>,
}

/// One armed hold: which command to hold, for how long at most, and the test's side of it.
#[derive(Clone)]
pub struct Hold {
    inner: Arc<HoldInner>,
}

struct HoldInner {
    needle: Vec<u8>,
    max: Duration,
    /// `true` once a command matched and is being held.
    matched: watch::Sender<bool>,
    release: Notify,
}

impl Hold {
    /// Waits until a command matched (and is now held), at most `timeout`; returns whether
    /// one did.
    pub async fn matched(&self, timeout: Duration) -> bool {
        let mut matched = self.inner.matched.subscribe();
        let waited = tokio::time::timeout(timeout, matched.wait_for(|m| *m)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Lets the held command (and everything after it) go on; before a match, the command
    /// that matches later is not held at all.
    pub fn release(&self) {
        self.inner.release.notify_one();
    }
}

impl DelayProxy {
    /// Starts a proxy on a free loopback port, forwarding to `127.0.0.1:<target_port>`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start(target_port: u16) -> DelayProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("cannot bind 127.0.0.1:0");
        let port = listener.local_addr().expect("a bound listener has an address").port();
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                // Dropped with the accept task: aborting it ends every connection.
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move {
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await {
                            pipe(client, server, shared).await;
                        }
                    });
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        DelayProxy { port, shared, accept }
    }

    /// The URL to give a cache: `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Holds the first client command sent from now on whose bytes contain `needle`, on
    /// whichever connection, until [`Hold::release`] or for `max`, whichever comes first.
    /// Arming again replaces an earlier hold that has not matched yet.
    pub fn arm(&self, needle: &[u8], max: Duration) -> Hold {
        let hold = Hold {
            inner: Arc::new(HoldInner {
                needle: needle.to_vec(),
                max,
                matched: watch::channel(false).0,
                release: Notify::new(),
            }),
        };
        *self.shared.armed.lock().unwrap_or_else(|e| e.into_inner()) = Some(hold.clone());
        hold
    }

    /// Every client command forwarded so far, as (lossy) text: for failure messages.
    pub fn commands(&self) -> Vec<String> {
        let commands = self.shared.commands.lock().unwrap_or_else(|e| e.into_inner());
        commands.iter().map(|command| String::from_utf8_lossy(command).into_owned()).collect()
    }

    /// How many client commands forwarded so far contain `needle`.
    pub fn commands_containing(&self, needle: &[u8]) -> usize {
        let commands = self.shared.commands.lock().unwrap_or_else(|e| e.into_inner());
        commands.iter().filter(|command| contains(command, needle)).count()
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Pipes one connection both ways until either side closes.
async fn pipe(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(len) = command_len(&pending) {
                let command: Vec<u8> = pending.drain(..len).collect();
                if let Some(hold) = take_matching(&shared, &command) {
                    hold.inner.matched.send_replace(true);
                    let _ =
                        tokio::time::timeout(hold.inner.max, hold.inner.release.notified()).await;
                }
                shared.commands.lock().unwrap_or_else(|e| e.into_inner()).push(command.clone());
                if server_write.write_all(&command).await.is_err() {
                    return;
                }
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    // Either direction ending (a side closed) ends the connection.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// The armed hold, taken, if `command` matches it.
fn take_matching(shared: &Shared, command: &[u8]) -> Option<Hold> {
    let mut armed = shared.armed.lock().unwrap_or_else(|e| e.into_inner());
    if armed.as_ref().is_some_and(|hold| contains(command, &hold.inner.needle)) {
        return armed.take();
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|window| window == needle)
}

/// The length of the first whole command in `buf`, or `None` until it has arrived. Bytes
/// that are not RESP are passed on as they come (one "command" per read).
fn command_len(buf: &[u8]) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    let line_end = |from: usize| -> Option<usize> {
        buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|at| from + at)
    };
    if buf[0] != b'*' {
        // An inline command (or something else): up to the end of the line.
        return line_end(0).map(|end| end + 2);
    }
    let end = line_end(0)?;
    let Some(count) = number(&buf[1..end]) else { return Some(buf.len()) };
    let mut at = end + 2;
    for _ in 0..count {
        if *buf.get(at)? != b'$' {
            return Some(buf.len());
        }
        let end = line_end(at)?;
        let Some(len) = number(&buf[at + 1..end]) else { return Some(buf.len()) };
        at = end + 2 + len + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some(at)
}

fn number(digits: &[u8]) -> Option<usize> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::command_len;

    #[test]
    fn commands_are_cut_whole() {
        let two = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        assert_eq!(command_len(two), Some(20));
        assert_eq!(command_len(&two[..19]), None);
        assert_eq!(command_len(&two[20..]), Some(14));
        assert_eq!(command_len(&two[..3]), None);
        assert_eq!(command_len(b"PING\r\nPING\r\n"), Some(6));
        assert_eq!(command_len(b""), None);
    }
}
