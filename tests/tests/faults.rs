//! Fault injection: private `redis-server` processes misbehave while `#[cached]` functions take
//! traffic (README, "When things go wrong": the cache is a mirror, never the source of truth).
//!
//! | test | fault | how it is injected | error kinds expected |
//! |---|---|---|---|
//! | [`kill_and_restart_mid_traffic`] | Redis dies and comes back | SIGKILL while 8 tasks call, restart 500 ms later (empty) | `connection`, `unavailable` |
//! | [`redis_down_at_start_then_started`] | Redis down when the cache is built | start, kill, build, 30 calls, restart | `connection`, `unavailable` |
//! | [`sigstop_then_sigcont`] | a hung process | SIGSTOP for 1.2 s under traffic, then SIGCONT | `timeout`, `unavailable` |
//! | [`client_pause_all`] | a server that stops answering | `CLIENT PAUSE 1500 ALL` from a raw connection | `timeout`, `unavailable` |
//! | [`debug_sleep`] | a server blocked in a slow command | `DEBUG SLEEP 1.5` from a raw connection in a spawned task | `timeout`, `unavailable` |
//! | [`maxmemory_noeviction`] | a full server | `--maxmemory 2mb --maxmemory-policy noeviction`, 64 KiB values (1 MiB is not enough: see the test) | `server` (`OOM`); the breaker stays closed |
//! | [`garbage_values`] | someone else's data under our keys | raw `SET` of non-JSON / other shapes, raw `HSET`/`RPUSH` (wrong type) | `decode`, `server` (`WRONGTYPE`) |
//! | [`value_over_max_value_bytes`] | a value over the size limit | `max_value_bytes(1024)`, a 2 000-byte value | `too_large` |
//! | [`breaker_skips_redis_while_known_down`] | Redis known down | SIGKILL, calls until the breaker opens, then 20 calls; `health()` | `unavailable` |
//!
//! Every test asserts:
//!
//! 1. every call returned the correct value (from the body or from the cache);
//! 2. the wall time stayed bounded: no call took [`CALL_BOUND`] or more (and faults that are
//!    known state their own tighter bound);
//! 3. the failures were counted: `cache.stats_of(function).errors`, and by kind through the
//!    `cache_errors_total{function="..",kind=".."}` lines of `cache.prometheus()`;
//! 4. caching resumed after the fault ended: a fresh key lands in Redis within [`RECOVERY`],
//!    and calling it again is a hit (the body does not run).
//!
//! Caches are built with [`COMMAND_TIMEOUT`] and [`CONNECT_TIMEOUT`] of 200 ms. Each test
//! prints a one-line observation (`fault <name>: ...`); see them with
//!
//! ```text
//! cargo test -p cache-tests --test faults -- --nocapture
//! ```
//!
//! The tests are independent (one server, one cache, one function per test) and run in
//! parallel; the binary takes about 7 s on two cores.
//!
//! Two more tests pin down breaker behaviour this suite once found broken (since fixed), each
//! in isolation and deterministically; their docs say where it lives:
//!
//! - [`breaker_late_failures_of_concurrent_calls_do_not_stretch_the_cool_down`]. Late
//!   failures of calls already in flight when the breaker opened are not failed probes: a
//!   burst of concurrent timeouts opens the breaker for the first cool-down (1 s) only.
//! - [`breaker_first_probe_after_redis_returns_reaches_redis`]. The first probe after Redis
//!   returns reaches it, not the connection manager's stale error, and closes the breaker.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cached, BreakerState, Cache};
use cache_tests::RedisServer;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

/// Every cache here is built with this prefix.
const PREFIX: &str = "f:";
/// The caches' per-command timeout.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);
/// The caches' connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// No single call may take this long during any fault. A call makes at most three Redis
/// exchanges (read; the single-flight leader's re-read, skipped once the read failed; write),
/// each bounded by [`COMMAND_TIMEOUT`] on an open connection, or by a refused connect on a
/// dead port; once three failures are seen the breaker makes every exchange instant. So a
/// call costs at most about 2 x 200 ms in practice; 1 s leaves room for a loaded machine,
/// and is 5x below the seeds' 5 s connect timeout.
const CALL_BOUND: Duration = Duration::from_secs(1);
/// How long caching may take to come back after a fault ends. The breaker probes after a
/// 1 s cool-down that doubles after each failed probe (1 s, 2 s, 4 s, ...): a fault of
/// 1.5 s can cost one failed probe, so up to about 2 s more.
const RECOVERY: Duration = Duration::from_secs(6);
/// Concurrent callers during a fault.
const TASKS: u64 = 8;
/// Distinct keys the callers cycle through.
const KEYS: u64 = 16;
/// Pause between two calls of one caller.
const PACE: Duration = Duration::from_millis(2);

/// A typical cached row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    model: String,
}

impl Vehicle {
    fn new(id: u64) -> Vehicle {
        Vehicle { id, model: format!("model-{id}") }
    }
}

/// A Redis cache on `server` with short timeouts, so a fault costs milliseconds, not seconds.
async fn fault_cache(server: &RedisServer) -> Cache {
    fault_builder(server).build().await.expect("a cache for a valid URL builds")
}

fn fault_builder(server: &RedisServer) -> cache_runtime::CacheBuilder {
    Cache::builder()
        .redis(server.url())
        .prefix(PREFIX)
        .command_timeout(COMMAND_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
}

/// A raw connection to `server`, like `redis-cli`, that waits up to 5 s for a reply (the
/// default 500 ms would time out a `DEBUG SLEEP 1.5`).
#[derive(Clone)]
struct Raw(MultiplexedConnection);

impl Raw {
    async fn connect(server: &RedisServer) -> Raw {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let connection = server
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", server.url()));
        Raw(connection)
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut connection = self.0.clone();
        command.query_async(&mut connection).await.unwrap_or_else(|e| panic!("{command:?}: {e}"))
    }

    async fn exists(&self, key: &str) -> bool {
        self.query::<u64>(redis::cmd("EXISTS").arg(key)).await == 1
    }

    async fn get(&self, key: &str) -> Option<String> {
        self.query(redis::cmd("GET").arg(key)).await
    }
}

/// `<prefix>vehicle:<id>`, the key `#[cached(key = "vehicle:<id>")]` uses.
fn vehicle_key(id: u64) -> String {
    format!("{PREFIX}vehicle:{id}")
}

/// The non-zero `cache_errors_total{function="<function>",kind="..."}` samples of
/// `cache.prometheus()`, by kind. Checks that they add up to `stats_of(function).errors`.
fn errors_by_kind(cache: &Cache, function: &str) -> BTreeMap<String, u64> {
    let prefix = format!("cache_errors_total{{function=\"{function}\",kind=\"");
    let kinds: BTreeMap<String, u64> = cache
        .prometheus()
        .lines()
        .filter_map(|line| {
            let (kind, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            Some((kind.to_owned(), count.parse().expect("a counter value")))
        })
        .filter(|&(_, count)| count > 0)
        .collect();
    let errors = cache.stats_of(function).errors;
    assert_eq!(kinds.values().sum::<u64>(), errors, "kinds {kinds:?} vs stats.errors {errors}");
    kinds
}

/// `connection=3 unavailable=120`.
fn kinds_line(kinds: &BTreeMap<String, u64>) -> String {
    let mut line = String::new();
    for (kind, count) in kinds {
        let _ = write!(line, "{}{kind}={count}", if line.is_empty() { "" } else { " " });
    }
    if line.is_empty() {
        line.push_str("none");
    }
    line
}

fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

/// Polls `check` every 20 ms until it returns true (then: how long that took) or `limit` passes.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `TASKS` callers that call `call(cache, id)` over `KEYS` ids until stopped, asserting every
/// returned value and recording the slowest call.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Duration)>>,
    started: Instant,
}

/// What the callers saw.
struct TrafficReport {
    calls: u64,
    slowest: Duration,
    wall: Duration,
}

impl Traffic {
    fn start<F, Fut>(cache: &Cache, call: F) -> Traffic
    where
        F: Fn(Cache, u64) -> Fut + Copy + Send + 'static,
        Fut: Future<Output = Option<Vehicle>> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..TASKS)
            .map(|task| {
                let (stop, cache) = (Arc::clone(&stop), cache.clone());
                tokio::spawn(async move {
                    let (mut calls, mut slowest) = (0, Duration::ZERO);
                    while !stop.load(SeqCst) {
                        let id = (task + calls * TASKS) % KEYS;
                        let started = Instant::now();
                        let got = call(cache.clone(), id).await;
                        let took = started.elapsed();
                        assert_eq!(got, Some(Vehicle::new(id)), "task {task}, call {calls}");
                        slowest = slowest.max(took);
                        calls += 1;
                        tokio::time::sleep(PACE).await;
                    }
                    (calls, slowest)
                })
            })
            .collect();
        Traffic { stop, tasks, started: Instant::now() }
    }

    /// Stops the callers; a caller's failed assertion fails the test here.
    async fn stop(self) -> TrafficReport {
        self.stop.store(true, SeqCst);
        let mut report = TrafficReport { calls: 0, slowest: Duration::ZERO, wall: Duration::ZERO };
        for task in self.tasks {
            let (calls, slowest) = task.await.expect("a caller failed");
            report.calls += calls;
            report.slowest = report.slowest.max(slowest);
        }
        report.wall = self.started.elapsed();
        report
    }
}

/// Calls `call(id)` on a key that is already in Redis and checks it is a hit: the body does
/// not run and `function`'s hits go up by one.
async fn assert_hit<Fut>(
    cache: &Cache,
    function: &str,
    body_runs: &AtomicU64,
    id: u64,
    call: impl FnOnce() -> Fut,
) where
    Fut: Future<Output = Option<Vehicle>>,
{
    let (runs, hits) = (body_runs.load(SeqCst), cache.stats_of(function).hits);
    assert_eq!(call().await, Some(Vehicle::new(id)));
    assert_eq!(body_runs.load(SeqCst), runs, "{function}({id}) ran its body: not a hit");
    assert_eq!(cache.stats_of(function).hits, hits + 1, "{function}({id}) was not counted a hit");
}

/// Polls with fresh ids from `first_id` until a call's value lands in Redis; returns how
/// long after `since` (when the fault ended) that was (`None`: not within [`RECOVERY`]), and
/// the id that landed.
async fn time_to_resume<F, Fut>(
    since: Instant,
    raw: &Raw,
    first_id: u64,
    call: F,
) -> (Option<Duration>, u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Option<Vehicle>>,
{
    let next = AtomicU64::new(first_id);
    let landed = AtomicU64::new(0);
    let took = within(RECOVERY, || async {
        let id = next.fetch_add(1, SeqCst);
        assert_eq!(call(id).await, Some(Vehicle::new(id)));
        landed.store(id, SeqCst);
        raw.exists(&vehicle_key(id)).await
    })
    .await;
    (took.map(|_| since.elapsed()), landed.load(SeqCst))
}

/// `resumed 812 ms after ...`, or that it did not within [`RECOVERY`].
fn resumed_line(resumed: Option<Duration>) -> String {
    match resumed {
        Some(after) => format!("caching resumed {}", ms(after)),
        None => format!("caching did NOT resume within {}", ms(RECOVERY)),
    }
}

/// Fails the test when caching did not resume (after the observation line was printed).
fn assert_resumed(fault: &str, resumed: Option<Duration>) {
    assert!(
        resumed.is_some(),
        "{fault}: caching did not resume within {RECOVERY:?} of the fault ending (the breaker's \
         cool-down starts at 1 s and doubles only after a failed probe); see \
         breaker_late_failures_of_concurrent_calls_do_not_stretch_the_cool_down"
    );
}

/// The common checks and the observation line of a fault injected under traffic.
fn report_fault(
    fault: &str,
    cache: &Cache,
    function: &str,
    traffic: &TrafficReport,
    resumed: Option<Duration>,
) -> BTreeMap<String, u64> {
    let kinds = errors_by_kind(cache, function);
    eprintln!(
        "fault {fault}: {} calls by {TASKS} tasks over {}, all correct; slowest call {} (bound {}); \
         errors {} ({}); {} after the fault ended",
        traffic.calls,
        ms(traffic.wall),
        ms(traffic.slowest),
        ms(CALL_BOUND),
        cache.stats_of(function).errors,
        kinds_line(&kinds),
        resumed_line(resumed),
    );
    assert!(traffic.slowest < CALL_BOUND, "{fault}: a call took {:?}", traffic.slowest);
    assert!(traffic.calls >= TASKS, "{fault}: the callers hardly ran ({} calls)", traffic.calls);
    assert_resumed(fault, resumed);
    assert_eq!(cache.breaker_state(), BreakerState::Closed, "{fault}: breaker after recovery");
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_mid_traffic() {
    static BODY: AtomicU64 = AtomicU64::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn killed_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        BODY.fetch_add(1, SeqCst);
        Some(Vehicle::new(id))
    }

    let mut server = RedisServer::start();
    let cache = fault_cache(&server).await;
    for id in 0..KEYS {
        killed_vehicle(&cache, id).await;
    }
    assert_eq!(cache.stats().errors, 0);

    let traffic =
        Traffic::start(&cache, |cache, id| async move { killed_vehicle(&cache, id).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| server.restart()); // empty: persistence is off
    let restarted = Instant::now();
    let raw = Raw::connect(&server).await;
    let (resumed, landed) =
        time_to_resume(restarted, &raw, 1000, |id| killed_vehicle(&cache, id)).await;
    let traffic = traffic.stop().await;

    let kinds =
        report_fault("kill+restart mid-traffic", &cache, "killed_vehicle", &traffic, resumed);
    assert!(kinds.get("connection").is_some_and(|&n| n >= 1), "{kinds:?}");
    assert!(kinds.get("unavailable").is_some_and(|&n| n >= 1), "breaker never skipped: {kinds:?}");
    assert_hit(&cache, "killed_vehicle", &BODY, landed, || killed_vehicle(&cache, landed)).await;
    // The callers' keys are back too (they were lost with the restart).
    killed_vehicle(&cache, 3).await;
    assert!(raw.exists(&vehicle_key(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_started() {
    static BODY: AtomicU64 = AtomicU64::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn cold_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        BODY.fetch_add(1, SeqCst);
        Some(Vehicle::new(id))
    }

    let mut server = RedisServer::start();
    tokio::task::block_in_place(|| server.kill());
    let cache = fault_cache(&server).await;

    // 30 calls, 10 ids, Redis down from the start. Bound: the whole batch under CALL_BOUND
    // (the first calls pay refused connects, then the breaker is open).
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for id in 0..10 {
            let call = Instant::now();
            assert_eq!(cold_vehicle(&cache, id).await, Some(Vehicle::new(id)), "round {round}");
            slowest = slowest.max(call.elapsed());
        }
    }
    let down = started.elapsed();
    assert_eq!(BODY.load(SeqCst), 30, "every call ran its body while Redis was down");
    assert_eq!(cache.stats_of("cold_vehicle").hits, 0);
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    let kinds = errors_by_kind(&cache, "cold_vehicle");
    assert!(kinds.get("connection").is_some_and(|&n| n >= 1), "{kinds:?}");
    assert!(kinds.get("unavailable").is_some_and(|&n| n >= 1), "{kinds:?}");
    assert!(down < CALL_BOUND, "30 calls with Redis down from the start took {down:?}");

    tokio::task::block_in_place(|| server.restart());
    let restarted = Instant::now();
    let raw = Raw::connect(&server).await;
    let (resumed, landed) =
        time_to_resume(restarted, &raw, 100, |id| cold_vehicle(&cache, id)).await;
    eprintln!(
        "fault redis down at start: 30 calls while down took {} in all (slowest {}, bound {} in all), \
         all correct; errors {} ({}); {} after Redis came up",
        ms(down),
        ms(slowest),
        ms(CALL_BOUND),
        cache.stats_of("cold_vehicle").errors,
        kinds_line(&errors_by_kind(&cache, "cold_vehicle")),
        resumed_line(resumed),
    );
    assert_resumed("redis down at start", resumed);
    assert_hit(&cache, "cold_vehicle", &BODY, landed, || cold_vehicle(&cache, landed)).await;
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_then_sigcont() {
    static BODY: AtomicU64 = AtomicU64::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn stopped_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        BODY.fetch_add(1, SeqCst);
        Some(Vehicle::new(id))
    }

    let server = RedisServer::start();
    let cache = fault_cache(&server).await;
    let raw = Raw::connect(&server).await;
    let traffic =
        Traffic::start(&cache, |cache, id| async move { stopped_vehicle(&cache, id).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.pause();
    let paused = Instant::now();
    // A health check of a hung server is bounded by the command timeout too.
    let health = cache.health().await;
    let health_took = paused.elapsed();
    assert!(!health.reachable, "{health:?}");
    assert!(health_took < CALL_BOUND, "health() of a hung server took {health_took:?}");
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(paused.elapsed())).await;
    server.resume();
    let (resumed, landed) =
        time_to_resume(Instant::now(), &raw, 1000, |id| stopped_vehicle(&cache, id)).await;
    let traffic = traffic.stop().await;

    let kinds =
        report_fault("SIGSTOP 1.2 s / SIGCONT", &cache, "stopped_vehicle", &traffic, resumed);
    assert!(kinds.get("timeout").is_some_and(|&n| n >= 1), "{kinds:?}");
    assert_hit(&cache, "stopped_vehicle", &BODY, landed, || stopped_vehicle(&cache, landed)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_all() {
    static BODY: AtomicU64 = AtomicU64::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn paused_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        BODY.fetch_add(1, SeqCst);
        Some(Vehicle::new(id))
    }

    let server = RedisServer::start();
    let cache = fault_cache(&server).await;
    let raw = Raw::connect(&server).await;
    let traffic =
        Traffic::start(&cache, |cache, id| async move { paused_vehicle(&cache, id).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.query::<()>(redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("ALL")).await;
    let pause_ends = Instant::now() + Duration::from_millis(1500);
    tokio::time::sleep_until(pause_ends.into()).await;
    let (resumed, landed) =
        time_to_resume(pause_ends, &raw, 1000, |id| paused_vehicle(&cache, id)).await;
    let traffic = traffic.stop().await;

    let kinds = report_fault("CLIENT PAUSE 1500 ALL", &cache, "paused_vehicle", &traffic, resumed);
    assert!(kinds.get("timeout").is_some_and(|&n| n >= 1), "{kinds:?}");
    assert_hit(&cache, "paused_vehicle", &BODY, landed, || paused_vehicle(&cache, landed)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sleep() {
    static BODY: AtomicU64 = AtomicU64::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn sleepy_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        BODY.fetch_add(1, SeqCst);
        Some(Vehicle::new(id))
    }

    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let cache = fault_cache(&server).await;
    let raw = Raw::connect(&server).await;
    let traffic =
        Traffic::start(&cache, |cache, id| async move { sleepy_vehicle(&cache, id).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sleeper = Raw::connect(&server).await;
    let sleep = tokio::spawn(async move {
        sleeper.query::<()>(redis::cmd("DEBUG").arg("SLEEP").arg("1.5")).await;
    });
    sleep.await.expect("DEBUG SLEEP 1.5 answered"); // the server is awake again
    let (resumed, landed) =
        time_to_resume(Instant::now(), &raw, 1000, |id| sleepy_vehicle(&cache, id)).await;
    let traffic = traffic.stop().await;

    let kinds = report_fault("DEBUG SLEEP 1.5", &cache, "sleepy_vehicle", &traffic, resumed);
    assert!(kinds.get("timeout").is_some_and(|&n| n >= 1), "{kinds:?}");
    assert_hit(&cache, "sleepy_vehicle", &BODY, landed, || sleepy_vehicle(&cache, landed)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxmemory_noeviction() {
    static SMALL_BODY: AtomicU64 = AtomicU64::new(0);
    static BIG_BODY: AtomicU64 = AtomicU64::new(0);
    /// 64 KiB of JSON: the server has about 1 MiB left under `maxmemory 2mb`.
    const BIG: usize = 64 * 1024;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Brochure {
        id: u64,
        pages: String,
    }

    fn brochure(id: u64) -> Brochure {
        Brochure { id, pages: format!("{id:>8}").repeat(BIG / 8) }
    }

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn full_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        SMALL_BODY.fetch_add(1, SeqCst);
        Some(Vehicle::new(id))
    }

    #[cached(key = "brochure:<id>", ttl = "1m", cache = cache)]
    async fn full_brochure(cache: &Cache, id: u64) -> Option<Brochure> {
        BIG_BODY.fetch_add(1, SeqCst);
        Some(brochure(id))
    }

    // Not 1mb: a fresh Redis 7 already uses ~0.9 MB, and the cache's connections plus the
    // Lua VM of its index script take it past 1 MB before the first value is stored, so
    // nothing would be stored at all (the "stored keys still hit" half could not be tested).
    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let cache = fault_cache(&server).await;
    let raw = Raw::connect(&server).await;
    for id in 0..4 {
        full_vehicle(&cache, id).await;
        assert!(raw.exists(&vehicle_key(id)).await, "a small value fits before the server fills");
    }

    // Fill the server: the first brochures fit, then every write is refused with OOM.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for id in 0..40 {
        let call = Instant::now();
        assert_eq!(full_brochure(&cache, id).await, Some(brochure(id)));
        slowest = slowest.max(call.elapsed());
        // An error reply means Redis answers: the breaker must stay closed.
        assert_eq!(cache.breaker_state(), BreakerState::Closed, "after brochure {id}");
    }
    let filling = started.elapsed();
    let mut stored = Vec::new();
    for id in 0..40 {
        if raw.exists(&format!("{PREFIX}brochure:{id}")).await {
            stored.push(id);
        }
    }
    let kinds = errors_by_kind(&cache, "full_brochure");
    assert!(!stored.is_empty() && stored.len() < 40, "brochures stored: {stored:?}");
    assert!(kinds.get("server").is_some_and(|&n| n >= 1), "no OOM counted: {kinds:?}");
    assert_eq!(kinds.keys().collect::<Vec<_>>(), ["server"], "only error replies: {kinds:?}");
    assert!(slowest < CALL_BOUND, "a call on a full server took {slowest:?}");

    // Reads still work: what was stored before is served from Redis.
    for id in 0..4 {
        assert_hit(&cache, "full_vehicle", &SMALL_BODY, id, || full_vehicle(&cache, id)).await;
    }
    let (runs, hits) = (BIG_BODY.load(SeqCst), cache.stats_of("full_brochure").hits);
    for &id in &stored {
        assert_eq!(full_brochure(&cache, id).await, Some(brochure(id)));
    }
    assert_eq!(BIG_BODY.load(SeqCst), runs, "stored brochures are hits");
    assert_eq!(cache.stats_of("full_brochure").hits, hits + stored.len() as u64);
    let health = cache.health().await;
    assert!(health.reachable, "{health:?}");
    assert_eq!(health.breaker, BreakerState::Closed, "{health:?}");
    assert_eq!(cache.stats_of("full_vehicle").errors, 0);

    // The operator raises the limit: caching resumes at once.
    raw.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0")).await;
    let resumed = within(RECOVERY, || async {
        assert_eq!(full_brochure(&cache, 100).await, Some(brochure(100)));
        raw.exists(&format!("{PREFIX}brochure:100")).await
    })
    .await
    .expect("caching resumed once Redis had room");
    eprintln!(
        "fault maxmemory 2mb noeviction: 40 calls of 64 KiB values over {} (slowest {}, bound {}), \
         all correct; {} stored, then OOM; errors {} ({}); breaker stayed closed; \
         4 small + {} big stored keys still hit; caching resumed {} after maxmemory was raised \
         (used_memory {} bytes)",
        ms(filling),
        ms(slowest),
        ms(CALL_BOUND),
        stored.len(),
        cache.stats_of("full_brochure").errors,
        kinds_line(&kinds),
        stored.len(),
        ms(resumed),
        health.used_memory_bytes.unwrap_or(0),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_values() {
    static BODY: AtomicU64 = AtomicU64::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn junk_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        BODY.fetch_add(1, SeqCst);
        Some(Vehicle::new(id))
    }

    let server = RedisServer::start();
    let cache = fault_cache(&server).await;
    let raw = Raw::connect(&server).await;
    for id in 0..KEYS {
        junk_vehicle(&cache, id).await;
    }

    // Strings that are not a Vehicle's JSON: a miss (`decode`), overwritten by the body.
    let junk = ["not json", "{\"vin\":\"WVW\"}", "[1,2", "\u{0}\u{7f}"];
    for (id, text) in (0..).zip(junk) {
        raw.query::<()>(redis::cmd("SET").arg(vehicle_key(id)).arg(text)).await;
    }
    // Another service's hash and list under our keys: `GET` replies `WRONGTYPE` (`server`).
    raw.query::<()>(redis::cmd("DEL").arg(vehicle_key(4)).arg(vehicle_key(5))).await;
    raw.query::<()>(redis::cmd("HSET").arg(vehicle_key(4)).arg("vin").arg("WVW")).await;
    raw.query::<()>(redis::cmd("RPUSH").arg(vehicle_key(5)).arg("a").arg("b")).await;
    let runs = BODY.load(SeqCst);
    let started = Instant::now();
    for id in 0..6 {
        assert_eq!(junk_vehicle(&cache, id).await, Some(Vehicle::new(id)));
    }
    let took = started.elapsed();
    assert_eq!(BODY.load(SeqCst), runs + 6, "every garbage key is a miss");
    let kinds = errors_by_kind(&cache, "junk_vehicle");
    assert_eq!(kinds.get("decode"), Some(&4), "{kinds:?}");
    assert_eq!(kinds.get("server"), Some(&2), "{kinds:?}");
    // Overwritten with the fresh value, whatever the type was, and hits from now on.
    for id in 0..6 {
        let stored = raw.get(&vehicle_key(id)).await.expect("overwritten");
        assert_eq!(
            serde_json::from_str::<Vehicle>(cache_tests::stored_payload(&stored)).unwrap(),
            Vehicle::new(id)
        );
        assert_hit(&cache, "junk_vehicle", &BODY, id, || junk_vehicle(&cache, id)).await;
    }

    // The same under traffic: garbage lands while 8 tasks call.
    let traffic = Traffic::start(&cache, |cache, id| async move { junk_vehicle(&cache, id).await });
    for round in 0..20u64 {
        let id = (round * 5) % KEYS;
        raw.query::<()>(redis::cmd("SET").arg(vehicle_key(id)).arg(junk[round as usize % 4])).await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let traffic = traffic.stop().await;
    let overwritten = Instant::now();
    for id in 0..KEYS {
        assert_eq!(junk_vehicle(&cache, id).await, Some(Vehicle::new(id)));
        let stored = raw.get(&vehicle_key(id)).await.expect("a value");
        assert_eq!(
            serde_json::from_str::<Vehicle>(cache_tests::stored_payload(&stored)).unwrap(),
            Vehicle::new(id)
        );
    }
    let healed = overwritten.elapsed();
    let kinds = errors_by_kind(&cache, "junk_vehicle");
    assert!(kinds["decode"] > 4, "garbage under traffic was not counted: {kinds:?}");
    assert!(traffic.slowest < CALL_BOUND, "a call took {:?}", traffic.slowest);
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    eprintln!(
        "fault garbage values: 6 garbage keys (4 undecodable strings, a hash, a list) read in {} \
         and overwritten; then 20 garbage writes under {} calls by {TASKS} tasks (slowest {}, \
         bound {}), all correct; errors {} ({}); every key held its fresh value {} after the \
         garbage stopped",
        ms(took),
        traffic.calls,
        ms(traffic.slowest),
        ms(CALL_BOUND),
        cache.stats_of("junk_vehicle").errors,
        kinds_line(&kinds),
        ms(healed),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_over_max_value_bytes() {
    static BODY: AtomicU64 = AtomicU64::new(0);

    /// `len` characters: `len + 2` bytes of JSON.
    #[cached(key = "blob:<len>", ttl = "1m", cache = cache)]
    async fn sized_blob(cache: &Cache, len: usize) -> String {
        BODY.fetch_add(1, SeqCst);
        "x".repeat(len)
    }

    let server = RedisServer::start();
    let cache = fault_builder(&server).max_value_bytes(1024).build().await.unwrap();
    let raw = Raw::connect(&server).await;

    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(sized_blob(&cache, 2000).await, "x".repeat(2000));
    }
    let took = started.elapsed();
    assert_eq!(BODY.load(SeqCst), 3, "a value over the limit is never cached");
    assert!(!raw.exists(&format!("{PREFIX}blob:2000")).await);
    let kinds = errors_by_kind(&cache, "sized_blob");
    assert_eq!(kinds.get("too_large"), Some(&3), "{kinds:?}");
    assert_eq!(cache.stats_of("sized_blob").loads, 3);
    // The programmatic API refuses it too, with a clear error.
    let refused = cache.set("blob:direct", &"x".repeat(2000), Duration::from_secs(60)).await;
    assert!(
        matches!(refused, Err(cache_runtime::Error::ValueTooLarge { bytes: 1025, max: 1024, .. })),
        "{refused:?}"
    );

    // Just under the limit (1022 + 2 bytes) is cached as usual.
    assert_eq!(sized_blob(&cache, 1022).await, "x".repeat(1022));
    assert!(raw.exists(&format!("{PREFIX}blob:1022")).await);
    let (runs, hits) = (BODY.load(SeqCst), cache.stats_of("sized_blob").hits);
    assert_eq!(sized_blob(&cache, 1022).await, "x".repeat(1022));
    assert_eq!((BODY.load(SeqCst), cache.stats_of("sized_blob").hits), (runs, hits + 1));
    eprintln!(
        "fault value over max_value_bytes(1024): 3 calls of a 2002-byte value in {}, all returned \
         it, none stored; errors {} ({}); a 1024-byte value is stored and hits",
        ms(took),
        cache.stats_of("sized_blob").errors,
        kinds_line(&kinds),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_skips_redis_while_known_down() {
    static BODY: AtomicU64 = AtomicU64::new(0);

    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn guarded_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        BODY.fetch_add(1, SeqCst);
        Some(Vehicle::new(id))
    }

    let mut server = RedisServer::start();
    let cache = fault_cache(&server).await;
    guarded_vehicle(&cache, 0).await;
    let health = cache.health().await;
    assert!(health.reachable && health.breaker == BreakerState::Closed, "{health:?}");

    tokio::task::block_in_place(|| server.kill());
    let killed = Instant::now();
    let mut to_open = 0;
    while cache.breaker_state() != BreakerState::Open {
        to_open += 1;
        assert!(to_open <= 10, "the breaker did not open after {to_open} failing calls");
        assert_eq!(guarded_vehicle(&cache, to_open).await, Some(Vehicle::new(to_open)));
    }
    let opened_after = killed.elapsed();

    // Redis is known down: 20 calls cost about 20 bodies, not 20 connect attempts.
    let errors_before = cache.stats_of("guarded_vehicle").errors;
    let started = Instant::now();
    for id in 0..20 {
        assert_eq!(guarded_vehicle(&cache, id).await, Some(Vehicle::new(id)));
    }
    let twenty = started.elapsed();
    assert!(twenty < Duration::from_millis(100), "20 calls with the breaker open took {twenty:?}");
    let kinds = errors_by_kind(&cache, "guarded_vehicle");
    let errors_down = cache.stats_of("guarded_vehicle").errors;
    assert!(errors_down >= errors_before + 20, "{kinds:?}");
    assert!(kinds.get("unavailable").is_some_and(|&n| n >= 20), "{kinds:?}");

    let down = cache.health().await;
    assert!(!down.reachable, "{down:?}");
    assert_eq!(down.breaker, BreakerState::Open, "{down:?}");
    assert!(down.error.is_some(), "{down:?}");

    tokio::task::block_in_place(|| server.restart());
    let restarted = Instant::now();
    // `health()` bypasses the breaker: it sees Redis back at once.
    let up = cache.health().await;
    assert!(up.reachable, "{up:?}");
    let raw = Raw::connect(&server).await;
    let (resumed, landed) =
        time_to_resume(restarted, &raw, 100, |id| guarded_vehicle(&cache, id)).await;
    eprintln!(
        "fault breaker: opened after {to_open} failing calls ({} after the kill); 20 calls with \
         the breaker open took {:.0} us (bound 100 ms), all correct; errors {} ({}); health while \
         down: reachable=false breaker={:?}; after restart: health reachable at once (breaker \
         {:?}), {} after the restart",
        ms(opened_after),
        twenty.as_secs_f64() * 1e6,
        errors_down,
        kinds_line(&kinds),
        down.breaker,
        up.breaker,
        resumed_line(resumed),
    );
    assert_resumed("breaker", resumed);
    assert_hit(&cache, "guarded_vehicle", &BODY, landed, || guarded_vehicle(&cache, landed)).await;
    let closed = cache.health().await;
    assert!(closed.reachable && closed.breaker == BreakerState::Closed, "{closed:?}");
}

// ---- breaker regressions: behaviour this suite once found broken --------------------------

/// Late failures do not stretch the cool-down (`cache-runtime/src/breaker.rs`,
/// `Breaker::failed`). Eight concurrent calls against a hung server: three timeouts open the
/// breaker, the other five arrive a moment later. `allow()` hands each command a pass
/// (`Normal` or `Probe`) that `guarded` gives back to `failed`; only a failed `Probe`
/// doubles the cool-down, and a `Normal` failure while the breaker is open changes nothing.
/// So the first cool-down (1 s) applies and caching resumes about 1 s after the breaker
/// opened. (Before the fix, each late failure counted as a failed probe and stretched the
/// cool-down 1 s -> 2 -> 4 -> ... -> 30 s, with no probe ever run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_late_failures_of_concurrent_calls_do_not_stretch_the_cool_down() {
    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn burst_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        Some(Vehicle::new(id))
    }

    let server = RedisServer::start();
    let cache = fault_cache(&server).await;
    let raw = Raw::connect(&server).await;
    burst_vehicle(&cache, 0).await; // connected
    server.pause();
    // Eight reads in flight together: they all time out after ~200 ms.
    let calls: Vec<_> = (1..=8)
        .map(|id| {
            let cache = cache.clone();
            tokio::spawn(async move { (id, burst_vehicle(&cache, id).await) })
        })
        .collect();
    for call in calls {
        let (id, got) = call.await.expect("a call");
        assert_eq!(got, Some(Vehicle::new(id)));
    }
    let opened = Instant::now();
    server.resume();
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    let kinds = errors_by_kind(&cache, "burst_vehicle");
    assert!(kinds.get("timeout").is_some_and(|&n| n >= 8), "{kinds:?}");

    // One burst of failures, no probe yet: the first cool-down (1 s) applies, after which a
    // call probes, finds Redis answering and closes the breaker.
    let deadline = Duration::from_millis(2500);
    let next = AtomicU64::new(100);
    let resumed = within(deadline, || async {
        let id = next.fetch_add(1, SeqCst);
        burst_vehicle(&cache, id).await;
        raw.exists(&vehicle_key(id)).await
    })
    .await;
    eprintln!(
        "bug check breaker cool-down: 8 concurrent timeouts opened the breaker; {} after it \
         opened (expected about 1 s: one cool-down)",
        match resumed {
            Some(_) => format!("caching resumed {}", ms(opened.elapsed())),
            None => format!(
                "caching still off {} (breaker {:?})",
                ms(opened.elapsed()),
                cache.breaker_state()
            ),
        }
    );
    assert!(
        resumed.is_some(),
        "caching did not resume within {deadline:?} of the breaker opening: the late timeouts \
         of the concurrent calls were counted as failed probes and stretched the cool-down"
    );
}

/// The first probe after Redis comes back reaches it (`cache-runtime/src/store/redis/mod.rs`,
/// `RedisStore::guarded`, with redis-rs 1.8's `ConnectionManager`). While Redis is down the
/// manager keeps its last failed reconnect future; the next command gets that future's
/// stale `Connection refused` and only then starts a new reconnect. `guarded` spends that
/// stale error on a `PING` before the probe's own command, so the probe meets the fresh
/// connection: Redis answers, the breaker closes after one cool-down (1 s) and the probe's
/// value is cached. (Before the fix, the probe itself got the stale error, and every
/// recovery after a restart wasted one probe and doubled the cool-down.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_first_probe_after_redis_returns_reaches_redis() {
    #[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
    async fn probed_vehicle(cache: &Cache, id: u64) -> Option<Vehicle> {
        Some(Vehicle::new(id))
    }

    let mut server = RedisServer::start();
    let cache = fault_cache(&server).await;
    probed_vehicle(&cache, 0).await; // connected
    tokio::task::block_in_place(|| server.kill());
    let mut id = 0;
    while cache.breaker_state() != BreakerState::Open {
        id += 1;
        assert!(id <= 10, "the breaker did not open");
        probed_vehicle(&cache, id).await;
    }
    let opened = Instant::now();
    // Redis stays down a little longer than the manager's background reconnect (~150 ms:
    // two refused attempts), then comes back while the breaker is still open; the call after
    // the cool-down is the probe, and Redis answers it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    tokio::task::block_in_place(|| server.restart());
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(opened.elapsed())).await;
    assert_eq!(cache.breaker_state(), BreakerState::HalfOpen);
    probed_vehicle(&cache, 100).await;
    let state = cache.breaker_state();
    eprintln!(
        "bug check first probe: Redis back, cool-down over; the probe left the breaker {state:?} \
         (expected Closed)"
    );
    assert_eq!(
        state,
        BreakerState::Closed,
        "the probe failed although Redis answers: the connection manager replayed its stale \
         `Connection refused` from before the restart"
    );
    let raw = Raw::connect(&server).await;
    assert!(raw.exists(&vehicle_key(100)).await, "the probe's call was cached");
}
