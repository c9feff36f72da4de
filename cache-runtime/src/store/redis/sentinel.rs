//! Following the primary behind Redis Sentinel
//! ([`CacheBuilder::redis_sentinel`](crate::CacheBuilder::redis_sentinel)).
//!
//! redis-rs's own Sentinel support (`redis::sentinel`) hands out one connection to the
//! primary of the moment, which then stays on that node: after a failover it writes to a
//! replica (`READONLY`) or to a dead address. [`SentinelLink`] is the connection the store
//! uses instead: a [`ConnectionManager`] to the current primary, replaced when the primary
//! changes. The primary is asked of the sentinels (`SENTINEL get-master-addr-by-name`, each
//! in turn until one answers) and confirmed with `ROLE` before any command goes to it:
//!
//! - at the first command;
//! - after a command failed for a connection reason or was refused by a node that cannot
//!   serve as primary now (`READONLY`, `LOADING`, `MASTERDOWN`, `NOREPLICAS`): one lookup
//!   at a time, and a refused command is sent once more if the primary changed (the node
//!   refused it, so it did not run);
//! - when a sentinel announces `+switch-master` (a subscription to one sentinel at a time),
//!   and every [`POLL_EVERY`] in the background, so that a promotion is noticed even while
//!   the old primary still accepts writes (Sentinel demotes it only seconds later, and what
//!   it acknowledged meanwhile is lost by replication).
//!
//! A change bumps the [generation](SentinelLink::generation) and calls the listeners
//! *before* the new primary takes commands: the cache keeps the writes of the last
//! moments for replay there and flushes its near cache (`write.rs`).
//!
//! **The hand-over.** The new primary then serves no command but the replay's
//! ([`replaying`]) and `PING` until the replay of what the listeners handed over has landed
//! there (they hold a [`HandOver`]; its last clone dropped opens the gate), or at most
//! [`HandOver`]'s bound. Without it, a read that checked the backlog a moment before the
//! change (the key was not pending yet) and sent its `GET` a moment after would read the
//! new primary before the replay: the value that the lost removal was meant to remove.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisError, RedisFuture,
    TlsCertificates, Value,
};

use crate::breaker::{is_connection_failure, is_failover_refusal};
use crate::store::endpoint::node;

/// How often the sentinels are asked whether the primary changed.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(500);

/// Called on a primary change, before the new primary takes commands, with the hand-over
/// that holds those commands back while the listener keeps a clone.
pub(crate) type Listener = Box<dyn Fn(HandOver) + Send + Sync>;

tokio::task_local! {
    /// Set while the replay of kept removals runs: its commands pass a closed gate.
    static REPLAYING: ();
}

/// Runs `future` as the replay of kept removals (`write.rs`): its commands reach a new
/// primary whose hand-over is not done yet (the replay is what completes it).
pub(crate) async fn replaying<F: std::future::Future>(future: F) -> F::Output {
    REPLAYING.scope((), future).await
}

/// Holds the new primary's commands back (all but the replay's and `PING`) until its last
/// clone is dropped, or until the bound given at the change (see [`SentinelLink::new`])
/// has passed: the listeners keep it until what they handed over has been replayed there.
#[derive(Clone)]
pub(crate) struct HandOver {
    /// Held for its drop.
    _opener: Arc<Opener>,
}

/// Opens its gate when dropped.
struct Opener(Arc<Gate>);

impl Drop for Opener {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Whether the commands of a new primary may go (see [`HandOver`]).
struct Gate {
    open: AtomicBool,
    opened: tokio::sync::Notify,
    /// Past this the gate lets commands through anyway (the replay is kept going).
    deadline: Instant,
}

impl Gate {
    /// An open gate (the first primary, which has nothing to take over).
    fn opened() -> Arc<Gate> {
        Arc::new(Gate {
            open: AtomicBool::new(true),
            opened: tokio::sync::Notify::new(),
            deadline: Instant::now(),
        })
    }

    fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.opened.notify_waiters();
    }

    /// Waits until the gate opens, or its deadline.
    async fn pass(&self) {
        loop {
            let notified = self.opened.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open.load(Ordering::Acquire) {
                return;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if tokio::time::timeout(left, notified).await.is_err() {
                if !self.open.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "the new primary's hand-over (the replay of recent writes) did not land in time; serving commands anyway"
                    );
                }
                return;
            }
        }
    }
}

/// Whether `cmd` may pass a closed gate: the replay's commands and `PING` (which reads
/// nothing; the breaker's probe).
fn passes_closed_gate(cmd: Option<&Cmd>) -> bool {
    if REPLAYING.try_with(|()| ()).is_ok() {
        return true;
    }
    cmd.and_then(|cmd| cmd.args_iter().next()).is_some_and(
        |arg| matches!(arg, redis::Arg::Simple(name) if name.eq_ignore_ascii_case(b"PING")),
    )
}

/// A cheap, cloneable handle to the connection that follows the primary.
#[derive(Clone)]
pub(crate) struct SentinelLink {
    inner: Arc<Inner>,
    /// The database of the data nodes (from the first sentinel URL).
    db: i64,
}

struct Inner {
    /// The sentinels, without a database (a sentinel has none).
    sentinels: Vec<redis::Client>,
    /// The name the sentinels monitor the primary under.
    master: String,
    /// How the data nodes are reached: the first sentinel URL's user, password, database,
    /// protocol and TLS (with the builder's certificates), at the address the sentinels name.
    node: ConnectionInfo,
    config: ConnectionManagerConfig,
    /// Bounds one lookup (the sentinels, then `ROLE` on the primary).
    lookup_timeout: Duration,
    /// The longest a new primary holds commands back for its hand-over.
    hand_over_bound: Duration,
    current: RwLock<Option<Primary>>,
    /// Bumped on every primary change (not on the first lookup).
    generation: AtomicU64,
    /// One lookup at a time.
    looking: tokio::sync::Mutex<()>,
    /// When the last lookup ended: failures within [`MIN_LOOKUP_GAP`] of it share its
    /// verdict instead of asking again.
    last_lookup: Mutex<Option<Instant>>,
    listeners: Mutex<Vec<Listener>>,
    /// A connection to each sentinel that answered, reused by the next lookup.
    asking: Mutex<Vec<Option<MultiplexedConnection>>>,
    /// The background poll runs (started on first use, inside a runtime).
    polling: AtomicBool,
}

/// Failures closer than this to the last lookup reuse it.
const MIN_LOOKUP_GAP: Duration = Duration::from_millis(100);

#[derive(Clone)]
struct Primary {
    addr: (String, u16),
    manager: ConnectionManager,
    generation: u64,
    /// Open once the hand-over to this primary is done.
    gate: Arc<Gate>,
}

/// A sentinel lookup that found nothing usable: an I/O-kind error, so that the cache treats
/// it like an unreachable server (breaker, backlog).
fn unreachable(why: String) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, why))
}

impl SentinelLink {
    /// Checks the sentinel URLs; connects nothing yet. `hand_over_bound`: the longest a new
    /// primary holds commands back for the replay of what its predecessor acknowledged
    /// lately (see [`HandOver`]). `certificates`: the builder's TLS settings, used for the
    /// `rediss://` sentinels and, when the first sentinel URL is `rediss://`, for the data
    /// nodes (reached over TLS at the address the sentinels name).
    pub(crate) fn new(
        urls: &[String],
        master: &str,
        connect_timeout: Duration,
        hand_over_bound: Duration,
        config: ConnectionManagerConfig,
        certificates: Option<TlsCertificates>,
    ) -> redis::RedisResult<SentinelLink> {
        let client = |info: ConnectionInfo| match (&certificates, info.addr()) {
            (Some(certificates), ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, certificates.clone())
            }
            _ => redis::Client::open(info),
        };
        let infos = urls
            .iter()
            .map(|url| redis::IntoConnectionInfo::into_connection_info(url.as_str()))
            .collect::<redis::RedisResult<Vec<ConnectionInfo>>>()?;
        let first = infos.first().cloned().ok_or_else(|| {
            RedisError::from((redis::ErrorKind::InvalidClientConfig, "no sentinel given"))
        })?;
        // Through a client, so that a TLS address carries the certificates.
        let node = client(first)?.get_connection_info().clone();
        let db = node.redis_settings().db();
        let sentinels = infos
            .into_iter()
            .map(|info| {
                let settings = info.redis_settings().clone().set_db(0);
                client(info.set_redis_settings(settings))
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(SentinelLink {
            inner: Arc::new(Inner {
                sentinels,
                master: master.to_owned(),
                node,
                config,
                lookup_timeout: connect_timeout * 2,
                hand_over_bound,
                current: RwLock::new(None),
                generation: AtomicU64::new(0),
                looking: tokio::sync::Mutex::new(()),
                last_lookup: Mutex::new(None),
                listeners: Mutex::new(Vec::new()),
                asking: Mutex::new(vec![None; urls.len()]),
                polling: AtomicBool::new(false),
            }),
            db,
        })
    }

    /// How many primary changes this link has followed.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Calls `listener` on every later primary change, before the new primary takes
    /// commands; they wait while it keeps the [`HandOver`] it is given.
    pub(crate) fn on_change(&self, listener: Listener) {
        self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner()).push(listener);
    }

    /// The current primary's connection settings (looked up if none is known yet), for
    /// the connections the cache opens besides this one (pub/sub, near-cache tracking).
    pub(crate) async fn primary_info(&self) -> redis::RedisResult<ConnectionInfo> {
        let primary = self.primary().await?;
        let (host, port) = primary.addr;
        Ok(node(&self.inner.node, &host, port))
    }

    /// The current primary, looked up on first use.
    async fn primary(&self) -> redis::RedisResult<Primary> {
        self.start_polling();
        if let Some(primary) = self.current() {
            return Ok(primary);
        }
        self.inner.lookup(None, false).await
    }

    fn current(&self) -> Option<Primary> {
        self.inner.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts the background poll once, inside a runtime.
    fn start_polling(&self) {
        if self.inner.polling.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if !self.inner.polling.swap(true, Ordering::AcqRel) {
            runtime.spawn(poll(Arc::downgrade(&self.inner)));
            runtime.spawn(listen(Arc::downgrade(&self.inner)));
        }
    }

    /// Runs one exchange on the current primary, once its hand-over let it through
    /// (`held`: the exchange waits for it). A connection failure or a failover refusal
    /// starts a lookup; a refused exchange runs once more if the primary changed.
    async fn exchange<T>(
        &self,
        held: bool,
        run: impl Fn(ConnectionManager) -> RedisFuture<'static, T>,
    ) -> redis::RedisResult<T> {
        let primary = self.primary().await?;
        if held {
            primary.gate.pass().await;
        }
        let outcome = run(primary.manager.clone()).await;
        let Err(error) = &outcome else { return outcome };
        if !is_connection_failure(error) {
            return outcome;
        }
        match self.inner.lookup(Some(primary.generation), false).await {
            Ok(next) if next.generation != primary.generation && is_failover_refusal(error) => {
                if held {
                    next.gate.pass().await;
                }
                run(next.manager).await
            }
            _ => outcome,
        }
    }
}

impl Inner {
    /// Asks the sentinels for the primary and switches to it if it changed. `seen`: the
    /// generation the caller used (`None` on first use): if it is already past, the
    /// current primary is the answer. Unless `fresh` (a sentinel said the primary changed,
    /// or the poll saw another name), a lookup that ended less than [`MIN_LOOKUP_GAP`] ago
    /// answers for this one too.
    async fn lookup(
        self: &Arc<Self>,
        seen: Option<u64>,
        fresh: bool,
    ) -> redis::RedisResult<Primary> {
        let _one = self.looking.lock().await;
        let current = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(current) = &current {
            let recent = self
                .last_lookup
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| at.elapsed() < MIN_LOOKUP_GAP);
            if seen != Some(current.generation) || (recent && !fresh) {
                return Ok(current.clone());
            }
        }
        let known = current.as_ref().map(|current| &current.addr);
        let found = tokio::time::timeout(self.lookup_timeout, self.find(known)).await;
        *self.last_lookup.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let (addr, manager) = match found {
            Ok(Ok(Some(found))) => found,
            // The sentinels still name the current primary.
            Ok(Ok(None)) => return current.ok_or_else(|| unreachable(String::new())),
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(unreachable(format!(
                    "no sentinel named the primary of {:?} within {:?}",
                    self.master, self.lookup_timeout
                )))
            }
        };
        // Commands pick their primary under the read lock: while this holds the write
        // lock, none starts on either primary. A write tagged with the new generation
        // (read after the bump) therefore always goes to the new primary, and everything
        // acknowledged under the old one is either handed over by the listeners or, when
        // its acknowledgement comes later, kept for replay by the write path itself.
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        let (generation, gate) = match &current {
            None => (0, Gate::opened()),
            Some(previous) => {
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::warn!(
                    master = %self.master,
                    from = %format_args!("{}:{}", previous.addr.0, previous.addr.1),
                    to = %format_args!("{}:{}", addr.0, addr.1),
                    "Redis primary changed (Sentinel failover): recent writes are replayed on the new primary, the near cache is flushed"
                );
                let gate = Arc::new(Gate {
                    open: AtomicBool::new(false),
                    opened: tokio::sync::Notify::new(),
                    deadline: Instant::now() + self.hand_over_bound,
                });
                // Dropped here unless a listener keeps a clone: then the gate opens when
                // its replay has landed.
                let hand_over = HandOver { _opener: Arc::new(Opener(Arc::clone(&gate))) };
                for listener in self.listeners.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    listener(hand_over.clone());
                }
                (generation, gate)
            }
        };
        let primary = Primary { addr, manager, generation, gate };
        *slot = Some(primary.clone());
        Ok(primary)
    }

    /// The primary the sentinels name, connected and confirmed by `ROLE`; `None` when they
    /// still name `known`, the current one.
    async fn find(
        &self,
        known: Option<&(String, u16)>,
    ) -> redis::RedisResult<Option<((String, u16), ConnectionManager)>> {
        let (host, port) = self.named().await?;
        if known.is_some_and(|(known_host, known_port)| *known_host == host && *known_port == port)
        {
            return Ok(None);
        }
        let client = redis::Client::open(node(&self.node, &host, port))?;
        let mut manager = ConnectionManager::new_lazy_with_config(client, self.config.clone())?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut manager).await?;
        match role.first() {
            Some(Value::BulkString(role)) if role == b"master" => Ok(Some(((host, port), manager))),
            Some(Value::SimpleString(role)) if role == "master" => {
                Ok(Some(((host, port), manager)))
            }
            _ => Err(unreachable(format!(
                "{host}:{port}, named primary of {:?} by Sentinel, is not a primary (yet)",
                self.master
            ))),
        }
    }

    /// `SENTINEL get-master-addr-by-name` of the first sentinel that names one.
    async fn named(&self) -> redis::RedisResult<(String, u16)> {
        let mut last = None;
        for (at, sentinel) in self.sentinels.iter().enumerate() {
            let asked = async {
                let cached = self.asking.lock().unwrap_or_else(|e| e.into_inner())[at].clone();
                let mut connection = match cached {
                    Some(connection) => connection,
                    None => {
                        let config = AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(self.lookup_timeout / 2))
                            .set_response_timeout(Some(self.lookup_timeout / 2));
                        sentinel.get_multiplexed_async_connection_with_config(&config).await?
                    }
                };
                let named = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master)
                    .query_async::<Option<(String, u16)>>(&mut connection)
                    .await;
                // Kept for the next lookup while it answers.
                self.asking.lock().unwrap_or_else(|e| e.into_inner())[at] =
                    named.is_ok().then_some(connection);
                named
            };
            match asked.await {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => {
                    last = Some(unreachable(format!(
                        "the sentinel {} does not know the master {:?}",
                        sentinel.get_connection_info().addr(),
                        self.master
                    )))
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| unreachable("no sentinel".into())))
    }
}

/// The background poll: asks the sentinels every [`POLL_EVERY`] while the link lives.
async fn poll(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let seen = inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| (p.generation, p.addr.clone()));
        // Only a named address that differs is worth a lookup (which confirms it).
        let Some((generation, addr)) = seen else { continue };
        let named = tokio::time::timeout(inner.lookup_timeout, inner.named()).await;
        if matches!(named, Ok(Ok(named)) if named != addr) {
            let _ = inner.lookup(Some(generation), true).await;
        }
    }
}

/// Listens to the sentinels' `+switch-master` announcements (one sentinel at a time, the
/// next one if it goes away), so that every process follows a failover within
/// milliseconds of each other, rather than up to [`POLL_EVERY`] apart: what one process
/// replays on the new primary is then missing there for the others only that long.
async fn listen(inner: Weak<Inner>) {
    let mut attempt = 0usize;
    loop {
        let Some(sentinel) = inner.upgrade().map(|inner| {
            let sentinels = &inner.sentinels;
            sentinels[attempt % sentinels.len()].clone()
        }) else {
            return;
        };
        attempt += 1;
        let subscribed = async {
            let mut pubsub = sentinel.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, RedisError>(pubsub)
        };
        let Ok(Ok(pubsub)) = tokio::time::timeout(Duration::from_secs(2), subscribed).await else {
            tokio::time::sleep(POLL_EVERY).await;
            continue;
        };
        let mut messages = pubsub.into_on_message();
        loop {
            // Wake up now and then to notice a dropped link on a quiet channel.
            match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                Ok(Some(message)) => {
                    let Some(inner) = inner.upgrade() else { return };
                    // `<master name> <old ip> <old port> <new ip> <new port>`
                    let payload = message.get_payload_bytes();
                    let named =
                        payload.split(|&b| b == b' ').next() == Some(inner.master.as_bytes());
                    let current = inner
                        .current
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .map(|p| p.generation);
                    if named {
                        let _ = inner.lookup(current, true).await;
                    }
                }
                Ok(None) => break,
                Err(_) if inner.strong_count() == 0 => return,
                Err(_) => {}
            }
        }
    }
}

impl ConnectionLike for SentinelLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let cmd = Arc::new(cmd.clone());
        Box::pin(async move {
            let held = !passes_closed_gate(Some(&cmd));
            self.exchange(held, |mut manager| {
                let cmd = Arc::clone(&cmd);
                Box::pin(async move { manager.req_packed_command(&cmd).await })
            })
            .await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let pipeline = Arc::new(pipeline.clone());
        Box::pin(async move {
            let held = !passes_closed_gate(None);
            self.exchange(held, |mut manager| {
                let pipeline = Arc::clone(&pipeline);
                Box::pin(async move { manager.req_packed_commands(&pipeline, offset, count).await })
            })
            .await
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(bound: Duration) -> (Arc<Gate>, HandOver) {
        let gate = Arc::new(Gate {
            open: AtomicBool::new(false),
            opened: tokio::sync::Notify::new(),
            deadline: Instant::now() + bound,
        });
        let hand_over = HandOver { _opener: Arc::new(Opener(Arc::clone(&gate))) };
        (gate, hand_over)
    }

    #[tokio::test]
    async fn a_closed_gate_holds_commands_until_the_last_hand_over_is_dropped() {
        let (gate, hand_over) = closed(Duration::from_secs(600));
        let kept = hand_over.clone();
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.pass().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "held while the hand-over is kept");
        drop(hand_over);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a clone still keeps it");
        drop(kept);
        tokio::time::timeout(Duration::from_secs(60), waiting).await.unwrap().unwrap();
        // Open for good: later commands pass at once.
        tokio::time::timeout(Duration::from_secs(60), gate.pass()).await.unwrap();
    }

    #[tokio::test]
    async fn a_gate_opens_at_its_bound() {
        let (gate, _kept) = closed(Duration::from_millis(100));
        tokio::time::timeout(Duration::from_secs(60), gate.pass()).await.unwrap();
        assert!(gate.open.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn only_the_replay_and_ping_pass_a_closed_gate() {
        assert!(!passes_closed_gate(Some(&redis::cmd("GET"))));
        assert!(!passes_closed_gate(None), "a pipeline");
        assert!(passes_closed_gate(Some(&redis::cmd("PING"))));
        assert!(replaying(async { passes_closed_gate(Some(&redis::cmd("GET"))) }).await);
        assert!(replaying(async { passes_closed_gate(None) }).await);
    }
}
