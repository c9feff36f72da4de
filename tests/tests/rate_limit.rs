//! `#[rate_limit]` and `Cache::rate_limit` (issue 14): decisions and their figures, bad
//! input, the reserved key and its expiry, one round trip per decision, the attribute's
//! order with `#[cached]` (hits are free unless `charge_hits`), Redis Cluster, and the
//! failure policy with Redis killed or hung mid-traffic (`fail_open`, `fail_closed`).
//!
//! The accuracy under saturation (4 processes x 50 tasks) is in `rate_limit_accuracy.rs`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cached, rate_limit, BreakerState, Cache, Error, FailMode, RateLimited};
use cache_tests::{RedisCluster, RedisServer};

const MINUTE: Duration = Duration::from_secs(60);

async fn redis_cache(server: &RedisServer, prefix: &str) -> Cache {
    Cache::builder()
        .redis(server.url())
        .prefix(prefix)
        .command_timeout(COMMAND_TIMEOUT)
        .connect_timeout(COMMAND_TIMEOUT)
        .build()
        .await
        .unwrap()
}

/// A raw command on a test server.
async fn raw<T: redis::FromRedisValue>(server: &RedisServer, cmd: &redis::Cmd) -> T {
    let mut connection = server.connection().await;
    cmd.query_async(&mut connection).await.unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

// ---- the programmatic API ---------------------------------------------------------------------

async fn decisions(cache: Cache) {
    for expected in [2, 1, 0] {
        let decision = cache.rate_limit("login:10.0.0.7", 3, MINUTE).await.unwrap();
        assert!(decision.allowed);
        assert_eq!((decision.limit, decision.remaining), (3, expected));
        assert_eq!(decision.retry_after, Duration::ZERO);
        assert!(decision.reset_after > Duration::from_secs(59), "{decision:?}");
        assert!(decision.reset_after <= MINUTE, "{decision:?}");
    }
    let refused = cache.rate_limit("login:10.0.0.7", 3, MINUTE).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!((refused.limit, refused.remaining), (3, 0));
    assert!(refused.retry_after > Duration::from_secs(59), "{refused:?}");
    assert!(refused.retry_after <= refused.reset_after, "{refused:?}");
    let limited = refused.clone().into_result().unwrap_err();
    assert_eq!(
        (limited.limit, limited.remaining, limited.retry_after),
        (3, 0, refused.retry_after)
    );
    assert!(limited.to_string().starts_with("rate limit of 3 calls reached; retry after"));
    // Another key has its own window.
    assert!(cache.rate_limit("login:10.0.0.8", 3, MINUTE).await.unwrap().allowed);

    // A short window frees its slot once the admitted call is that old.
    assert!(cache.rate_limit("burst:1", 1, Duration::from_millis(200)).await.unwrap().allowed);
    let refused = cache.rate_limit("burst:1", 1, Duration::from_millis(200)).await.unwrap();
    assert!(!refused.allowed);
    tokio::time::sleep(refused.retry_after + Duration::from_millis(20)).await;
    assert!(cache.rate_limit("burst:1", 1, Duration::from_millis(200)).await.unwrap().allowed);

    // Bad input is an error, and counts nothing.
    let before = cache.stats_of(cache_runtime::DIRECT_CALLS);
    assert!(matches!(
        cache.rate_limit("k:1", 0, MINUTE).await,
        Err(Error::InvalidRateLimit { limit: 0, .. })
    ));
    assert!(matches!(
        cache.rate_limit("k:1", cache_runtime::MAX_RATE_LIMIT + 1, MINUTE).await,
        Err(Error::InvalidRateLimit { .. })
    ));
    assert!(matches!(
        cache.rate_limit("k:1", 5, Duration::from_micros(999)).await,
        Err(Error::InvalidRateLimit { .. })
    ));
    for key in ["", "a b", "a#b"] {
        let result = cache.rate_limit(key, 5, MINUTE).await;
        assert!(matches!(result, Err(Error::InvalidKey { .. })), "{key:?}: {result:?}");
    }
    let after = cache.stats_of(cache_runtime::DIRECT_CALLS);
    assert_eq!((after.rate_allowed, after.rate_limited), (6, 2));
    assert_eq!((before.rate_allowed, before.rate_limited), (6, 2));
    assert_eq!(after.errors, 0);
}

#[tokio::test]
async fn decisions_on_the_memory_store() {
    decisions(Cache::memory()).await;
}

#[tokio::test]
async fn decisions_on_redis() {
    let server = RedisServer::start();
    decisions(redis_cache(&server, "r:").await).await;
}

#[tokio::test]
async fn two_memory_caches_keep_separate_limits() {
    let (a, b) = (Cache::memory(), Cache::memory());
    assert!(a.rate_limit("k", 1, MINUTE).await.unwrap().allowed);
    assert!(b.rate_limit("k", 1, MINUTE).await.unwrap().allowed);
    assert!(!a.rate_limit("k", 1, MINUTE).await.unwrap().allowed);
}

#[tokio::test]
async fn the_limiter_key_is_reserved_and_expires_when_idle() {
    let server = RedisServer::start();
    let cache = redis_cache(&server, "r:").await;
    assert!(cache.rate_limit("login:1", 1, MINUTE).await.unwrap().allowed);
    let key = "r:#rate:{login:1}";
    let pttl: i64 = raw(&server, redis::cmd("PTTL").arg(key)).await;
    assert!(pttl > 59_000 && pttl <= 60_000, "{key} expires in {pttl} ms");
    // Nothing that removes cached values removes a limiter.
    cache.set("login:1", &"cached", MINUTE).await.unwrap();
    cache.invalidate("login:1").await.unwrap();
    cache.invalidate_pattern("login:*").await.unwrap();
    cache.invalidate_pattern("*").await.unwrap();
    cache.clear().await.unwrap();
    assert!(!cache.rate_limit("login:1", 1, MINUTE).await.unwrap().allowed, "the limiter survived");
    let exists: u64 = raw(&server, redis::cmd("EXISTS").arg(key)).await;
    assert_eq!(exists, 1);

    // An idle limiter vanishes `per` after its last admitted call.
    assert!(cache.rate_limit("idle:1", 5, Duration::from_millis(150)).await.unwrap().allowed);
    let exists: u64 = raw(&server, redis::cmd("EXISTS").arg("r:#rate:{idle:1}")).await;
    assert_eq!(exists, 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let exists: u64 = raw(&server, redis::cmd("EXISTS").arg("r:#rate:{idle:1}")).await;
    assert_eq!(exists, 0, "an idle limiter's key expired");
}

/// The number of calls of each command since the last `CONFIG RESETSTAT`.
async fn command_calls(server: &RedisServer) -> Vec<(String, u64)> {
    let info: String = raw(server, redis::cmd("INFO").arg("commandstats")).await;
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn one_round_trip_per_decision() {
    let server = RedisServer::start();
    let cache = redis_cache(&server, "r:").await;
    cache.rate_limit("warm-up", 1, MINUTE).await.unwrap(); // loads the script
    let _: () = raw(&server, redis::cmd("CONFIG").arg("RESETSTAT")).await;
    for i in 0..50 {
        cache.rate_limit(&format!("k:{}", i % 3), 10, MINUTE).await.unwrap();
    }
    // `commandstats` also counts the commands the script ran inside the server.
    const IN_SCRIPT: [&str; 6] = ["time", "zremrangebyscore", "zcard", "zadd", "pexpire", "zrange"];
    let calls = command_calls(&server).await;
    let sent: Vec<&(String, u64)> = calls
        .iter()
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .filter(|(name, _)| !IN_SCRIPT.contains(&name.as_str()))
        .collect();
    assert_eq!(sent, [&("evalsha".to_owned(), 50)], "{calls:?}");
}

// ---- the attribute ----------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum LoginError {
    TooManyAttempts(RateLimited),
}

impl From<RateLimited> for LoginError {
    fn from(limited: RateLimited) -> Self {
        LoginError::TooManyAttempts(limited)
    }
}

static LOGIN_BODIES: AtomicU64 = AtomicU64::new(0);

#[rate_limit(key = "login:<ip>", limit = 3, per = "1m", cache = cache)]
async fn login(cache: &Cache, ip: IpAddr, user: &str) -> Result<String, LoginError> {
    LOGIN_BODIES.fetch_add(1, SeqCst);
    Ok(format!("session of {user}"))
}

#[tokio::test]
async fn limited_calls_never_reach_the_body() {
    let cache = Cache::memory();
    let ip: IpAddr = "10.0.0.7".parse().unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(login(&cache, ip, "rosa").await);
    }
    assert_eq!(LOGIN_BODIES.load(SeqCst), 3);
    assert!(outcomes[..3].iter().all(|outcome| outcome.as_deref() == Ok("session of rosa")));
    for outcome in &outcomes[3..] {
        let Err(LoginError::TooManyAttempts(limited)) = outcome else { panic!("{outcome:?}") };
        assert_eq!((limited.limit, limited.remaining), (3, 0));
        assert!(limited.retry_after > Duration::from_secs(59), "{limited:?}");
    }
    // IPv6 addresses are keys too (their `:` are encoded); another address is not limited.
    assert!(login(&cache, "::1".parse().unwrap(), "ana").await.is_ok());
    let stats = cache.stats_of("login");
    assert_eq!((stats.rate_allowed, stats.rate_limited, stats.errors), (4, 2, 0));
    let text = cache.prometheus();
    assert!(text.contains("cache_rate_limited_total{function=\"login\"} 2\n"), "{text}");
    assert!(text.contains("cache_rate_allowed_total{function=\"login\"} 4\n"), "{text}");
}

static CHARGED_HIT_BODIES: AtomicU64 = AtomicU64::new(0);

/// A paid pricing API allows 2 calls per minute in all: limit the misses, not the hits.
#[rate_limit(key = "pricing-api", limit = 2, per = "1m", cache = cache)]
#[cached(key = "price:<id>", ttl = "1m", cache = cache)]
async fn price(cache: &Cache, runs: &AtomicU64, id: u64) -> Result<u64, RateLimited> {
    runs.fetch_add(1, SeqCst);
    Ok(id * 100)
}

/// The same with `charge_hits`: every call is charged, hits included.
#[rate_limit(key = "pricing-api", limit = 3, per = "1m", cache = cache, charge_hits)]
#[cached(key = "price:<id>", ttl = "1m", cache = cache)]
async fn charged_price(cache: &Cache, id: u64) -> Result<u64, RateLimited> {
    CHARGED_HIT_BODIES.fetch_add(1, SeqCst);
    Ok(id * 100)
}

async fn cache_hits_are_not_charged(cache: Cache) {
    let runs = AtomicU64::new(0);
    assert_eq!(price(&cache, &runs, 1).await, Ok(100)); // a miss: charged (1 of 2)
    for _ in 0..5 {
        assert_eq!(price(&cache, &runs, 1).await, Ok(100)); // hits: free
    }
    assert_eq!(price(&cache, &runs, 2).await, Ok(200)); // a miss: charged (2 of 2)
    let refused = price(&cache, &runs, 3).await.unwrap_err(); // a miss over the limit
    assert_eq!((refused.limit, refused.remaining), (2, 0));
    assert!(price(&cache, &runs, 3).await.is_err(), "a refusal is not cached");
    assert_eq!(price(&cache, &runs, 1).await, Ok(100), "hits still answer");
    assert_eq!(runs.load(SeqCst), 2, "refused calls never reached the body");
    let stats = cache.stats_of("price");
    assert_eq!((stats.rate_allowed, stats.rate_limited), (2, 2), "{stats:?}");
    assert_eq!(stats.hits, 6, "{stats:?}");
}

#[tokio::test]
async fn cache_hits_are_not_charged_on_the_memory_store() {
    cache_hits_are_not_charged(Cache::memory()).await;
}

#[tokio::test]
async fn cache_hits_are_not_charged_on_redis() {
    let server = RedisServer::start();
    cache_hits_are_not_charged(redis_cache(&server, "r:").await).await;
}

#[tokio::test]
async fn charge_hits_charges_every_call() {
    let cache = Cache::memory();
    assert_eq!(charged_price(&cache, 1).await, Ok(100)); // a miss (1 of 3)
    assert_eq!(charged_price(&cache, 1).await, Ok(100)); // a hit (2 of 3)
    assert_eq!(charged_price(&cache, 1).await, Ok(100)); // a hit (3 of 3)
    let refused = charged_price(&cache, 1).await.unwrap_err();
    assert_eq!(refused.limit, 3);
    assert_eq!(CHARGED_HIT_BODIES.load(SeqCst), 1);
    let stats = cache.stats_of("charged_price");
    assert_eq!((stats.rate_allowed, stats.rate_limited), (3, 1), "{stats:?}");
    assert_eq!(stats.hits, 2, "the refused call did not read the cache: {stats:?}");
}

static EXPORTS: AtomicU64 = AtomicU64::new(0);

/// Two limits on one function: for everybody, and per dealer. The lowest attribute checks
/// first, so a dealer over its own limit does not use up the shared one.
#[rate_limit(key = "export:all", limit = 3, per = "1m", cache = cache, name = "all_exports")]
#[rate_limit(key = "export:<dealer>", limit = 2, per = "1m", cache = cache)]
async fn export(cache: &Cache, dealer: u64) -> Result<u64, RateLimited> {
    EXPORTS.fetch_add(1, SeqCst);
    Ok(dealer)
}

#[tokio::test]
async fn two_limits_on_one_function_both_apply() {
    let cache = Cache::memory();
    let mut outcomes = Vec::new();
    for dealer in [1, 1, 1, 2, 3] {
        outcomes.push(export(&cache, dealer).await.is_ok());
    }
    // Dealer 1's third call is over its own limit; dealer 3's is over the shared one.
    assert_eq!(outcomes, [true, true, false, true, false]);
    assert_eq!(EXPORTS.load(SeqCst), 3);
    let per_dealer = cache.stats_of("export");
    assert_eq!((per_dealer.rate_allowed, per_dealer.rate_limited), (4, 1), "{per_dealer:?}");
    // Dealer 1's refused call never reached the shared limiter.
    let all = cache.stats_of("all_exports");
    assert_eq!((all.rate_allowed, all.rate_limited), (3, 1), "{all:?}");
}

// ---- Redis Cluster ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_limits_are_shared_by_every_cache() {
    let cluster = RedisCluster::start(3, 0);
    let build = || async {
        Cache::builder().redis_cluster(cluster.urls()).prefix("c:").build().await.unwrap()
    };
    let (a, b) = (build().await, build().await);
    // Keys on every master: each limiter is one key in one slot.
    for i in 0..30 {
        let key = format!("user:{i}");
        let mut admitted = 0;
        for cache in [&a, &b, &a, &b, &a] {
            admitted += u32::from(cache.rate_limit(&key, 3, MINUTE).await.unwrap().allowed);
        }
        assert_eq!(admitted, 3, "{key}");
    }
    let mut connection = cluster.connection().await;
    let exists: u64 =
        redis::cmd("EXISTS").arg("c:#rate:{user:7}").query_async(&mut connection).await.unwrap();
    assert_eq!(exists, 1);
    let stats = a.stats_of(cache_runtime::DIRECT_CALLS);
    assert_eq!(stats.errors, 0, "{stats:?}");
}

// ---- failures ---------------------------------------------------------------------------------

/// The caches' per-command timeout in the failure tests.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);
/// No decision may take this long while Redis is down or hung (a command timeout, then the
/// breaker answers at once; 1 s leaves room for a loaded machine).
const CALL_BOUND: Duration = Duration::from_secs(1);

/// One call as a caller saw it.
struct Call {
    started: Instant,
    took: Duration,
    admitted: bool,
}

/// Callers that call `call` every 2 ms until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Call>>>,
}

impl Traffic {
    fn start<F, Fut>(call: F) -> Traffic
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<(), RateLimited>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..4)
            .map(|_| {
                let (stop, call) = (Arc::clone(&stop), call.clone());
                tokio::spawn(async move {
                    let mut calls = Vec::new();
                    while !stop.load(SeqCst) {
                        let started = Instant::now();
                        let admitted = call().await.is_ok();
                        calls.push(Call { started, took: started.elapsed(), admitted });
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    calls
                })
            })
            .collect();
        Traffic { stop, tasks }
    }

    async fn stop(self) -> Vec<Call> {
        self.stop.store(true, SeqCst);
        let mut calls = Vec::new();
        for task in self.tasks {
            calls.extend(task.await.unwrap());
        }
        calls.sort_by_key(|call| call.started);
        calls
    }
}

#[rate_limit(key = "open:<id>", limit = 5, per = "1m", cache = cache)]
async fn open_call(cache: &Cache, id: u64) -> Result<(), RateLimited> {
    Ok(())
}

#[rate_limit(key = "closed:<id>", limit = 5, per = "1m", cache = cache, fail_closed)]
async fn closed_call(cache: &Cache, id: u64) -> Result<(), RateLimited> {
    Ok(())
}

/// Polls until `check` holds (how long that took), or 6 s pass (the breaker's cool-down is
/// 1 s, doubling after a failed probe).
async fn within(mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        if check() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Redis is killed under traffic, and restarted (empty) a second later. While it is down,
/// `mode` decides; after it returns, the limiter counts again from zero.
async fn kill_mid_traffic(mode: FailMode) {
    let mut server = RedisServer::start();
    let cache = redis_cache(&server, "f:").await;
    // Connected and the script loaded before the traffic starts.
    cache.rate_limit("warm:up", 5, Duration::from_secs(60)).await.unwrap();
    let (name, traffic) = match mode {
        FailMode::Open => {
            let cache = cache.clone();
            (
                "open_call",
                Traffic::start(move || {
                    let cache = cache.clone();
                    async move { open_call(&cache, 1).await }
                }),
            )
        }
        FailMode::Closed => {
            let cache = cache.clone();
            (
                "closed_call",
                Traffic::start(move || {
                    let cache = cache.clone();
                    async move { closed_call(&cache, 1).await }
                }),
            )
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Decisions made without the store before the kill (a slow reply on a loaded machine)
    // admit under `fail_open` too, and are counted as errors.
    let failed_before_kill = cache.stats_of(name).errors;
    // Calls that end after this instant may have met the dying server.
    let killed = Instant::now();
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let down_until = Instant::now();
    tokio::task::block_in_place(|| server.restart()); // empty: persistence is off
    let restarted = Instant::now();
    // Back to normal: the fresh limiter admits 5 calls, then refuses.
    let stats = |cache: &Cache| cache.stats_of(name);
    let before = stats(&cache);
    let resumed = within(|| {
        let now = stats(&cache);
        cache.breaker_state() == BreakerState::Closed
            && match mode {
                FailMode::Open => now.rate_limited > before.rate_limited,
                FailMode::Closed => now.rate_allowed > before.rate_allowed,
            }
    })
    .await;
    let calls = traffic.stop().await;

    let slowest = calls.iter().map(|call| call.took).max().unwrap();
    let up: Vec<&Call> = calls.iter().filter(|call| call.started + call.took < killed).collect();
    let down: Vec<&Call> = calls
        .iter()
        .filter(|call| call.started > killed + Duration::from_millis(50))
        .filter(|call| call.started + call.took < down_until)
        .collect();
    let admitted_down = down.iter().filter(|call| call.admitted).count();
    let errors = stats(&cache).errors;
    eprintln!(
        "{mode:?}: {} calls; before the kill {} admitted of {}; while down {admitted_down} admitted of {}; slowest {slowest:?}; errors {errors}; limiting again {:?} after the restart",
        calls.len(),
        up.iter().filter(|call| call.admitted).count(),
        up.len(),
        down.len(),
        resumed.map(|_| restarted.elapsed()),
    );
    let admitted_up = up.iter().filter(|call| call.admitted).count();
    match mode {
        FailMode::Open => assert!(
            (5..=5 + failed_before_kill as usize).contains(&admitted_up),
            "limited before the kill: {admitted_up} admitted, {failed_before_kill} store failures"
        ),
        FailMode::Closed => assert_eq!(admitted_up, 5, "limited before the kill"),
    }
    assert!(down.len() > 20, "the callers hardly ran while Redis was down");
    match mode {
        FailMode::Open => assert_eq!(admitted_down, down.len(), "fail_open admits"),
        FailMode::Closed => assert_eq!(admitted_down, 0, "fail_closed refuses"),
    }
    assert!(slowest < CALL_BOUND, "a decision took {slowest:?}");
    assert!(errors >= 1, "the failures were counted");
    assert!(cache
        .prometheus()
        .contains(&format!("cache_errors_total{{function=\"{name}\",kind=\"unavailable\"}}")));
    assert!(resumed.is_some(), "limiting did not resume after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_admits_while_redis_is_down() {
    kill_mid_traffic(FailMode::Open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_while_redis_is_down() {
    kill_mid_traffic(FailMode::Closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_within_the_command_timeout_while_redis_hangs() {
    let server = RedisServer::start();
    let cache = redis_cache(&server, "f:").await;
    assert!(closed_call(&cache, 2).await.is_ok());
    server.pause(); // SIGSTOP: connections stay open, nothing answers
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let refused = closed_call(&cache, 2).await.unwrap_err();
        slowest = slowest.max(started.elapsed());
        assert_eq!(refused.retry_after, Duration::from_secs(1), "{refused:?}");
        assert_eq!((refused.limit, refused.remaining), (5, 0));
    }
    // The breaker is open now: the programmatic API decides at once, as told.
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    let started = Instant::now();
    let closed = cache.rate_limit_with("closed:9", 5, MINUTE, FailMode::Closed).await.unwrap();
    let open = cache.rate_limit("closed:9", 5, MINUTE).await.unwrap();
    let took = started.elapsed();
    server.resume();
    eprintln!("hung Redis, fail_closed: 10 refusals, slowest {slowest:?}; breaker open: two decisions in {took:?}");
    assert!(!closed.allowed && closed.remaining == 0, "{closed:?}");
    assert!(open.allowed && open.remaining == 5 && open.reset_after.is_zero(), "{open:?}");
    assert!(took < Duration::from_millis(50), "{took:?}");
    assert!(slowest < COMMAND_TIMEOUT + Duration::from_millis(300), "{slowest:?}");
    assert!(cache.stats_of("closed_call").errors >= 3);
}
