//! Stale fallback (`stale = ...`) and early refresh (`refresh = ...`) against real Redis and
//! the memory store.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cache_put, cached, Cache};
use cache_tests::RedisServer;

/// A pretend price service whose database can be made to fail. A cheap handle (`Clone`
/// shares it), as a refreshed function's parameters must be: the refresh runs in the
/// background with its own copy.
#[derive(Default, Clone)]
struct Prices {
    loads: Arc<AtomicU32>,
    failing: Arc<AtomicBool>,
}

impl Prices {
    async fn query(&self, id: u64) -> Result<String, String> {
        let load = self.loads.fetch_add(1, SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.failing.load(SeqCst) {
            return Err("database down".into());
        }
        Ok(format!("price {id} v{load}"))
    }
}

#[cached(key = "price:<id>", ttl = "200ms", stale = "1h", cache = cache)]
async fn price(cache: &Cache, prices: &Prices, id: u64) -> Result<String, String> {
    prices.query(id).await
}

#[cached(key = "hot:<id>", ttl = "600ms", refresh = "300ms", cache = cache)]
async fn hot(cache: &Cache, prices: &Prices, id: u64) -> Result<String, String> {
    prices.query(id).await
}

async fn redis_cache(server: &RedisServer) -> Cache {
    Cache::builder().redis(server.url()).prefix("t:").build().await.unwrap()
}

async fn stale_value_is_served_while_the_body_fails(cache: Cache) {
    let prices = Prices::default();
    assert_eq!(price(&cache, &prices, 1).await.unwrap(), "price 1 v1");
    tokio::time::sleep(Duration::from_millis(300)).await; // past the TTL, within `stale`
    prices.failing.store(true, SeqCst);
    assert_eq!(price(&cache, &prices, 1).await.unwrap(), "price 1 v1", "the stale value answers");
    assert_eq!(cache.stats_of("price").stale, 1);
    // Without a kept value the error goes through.
    assert!(price(&cache, &prices, 2).await.is_err());
    prices.failing.store(false, SeqCst);
    assert_eq!(
        price(&cache, &prices, 1).await.unwrap(),
        "price 1 v4",
        "a fresh value once the body works"
    );
    assert_eq!(price(&cache, &prices, 1).await.unwrap(), "price 1 v4", "and it is cached again");
}

#[tokio::test]
async fn redis_serves_stale_values_while_the_body_fails() {
    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    stale_value_is_served_while_the_body_fails(cache).await;
    // The value is kept in Redis for `stale`, not just the TTL.
    let mut connection = server.connection().await;
    let pttl: i64 = redis::cmd("PTTL").arg("t:price:1").query_async(&mut connection).await.unwrap();
    assert!(pttl > 3_500_000, "kept for about an hour, PTTL {pttl}");
}

#[tokio::test]
async fn memory_serves_stale_values_while_the_body_fails() {
    stale_value_is_served_while_the_body_fails(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_of_a_failing_body_share_the_stale_value() {
    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    let prices = Arc::new(Prices::default());
    price(&cache, &prices, 3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    prices.failing.store(true, SeqCst);
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (cache, prices) = (cache.clone(), prices.clone());
            tokio::spawn(async move { price(&cache, &prices, 3).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), "price 3 v1");
    }
    assert_eq!(prices.loads.load(SeqCst), 2, "one failing run answers all 50 callers");
}

/// Under steady load a key with `refresh` never misses: hits recompute it before it expires.
async fn hot_key_never_misses(caches: Vec<Cache>) {
    let prices = Arc::new(Prices::default());
    hot(&caches[0], &prices, 1).await.unwrap();
    let started = Instant::now();
    let mut callers = Vec::new();
    for cache in &caches {
        for _ in 0..8 / caches.len() {
            let (cache, prices) = (cache.clone(), prices.clone());
            callers.push(tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                while started.elapsed() < Duration::from_millis(2000) {
                    let call = Instant::now();
                    hot(&cache, &prices, 1).await.unwrap();
                    slowest = slowest.max(call.elapsed());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                slowest
            }));
        }
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let stats: Vec<_> = caches.iter().map(|cache| cache.stats_of("hot")).collect();
    let misses: u64 = stats.iter().map(|s| s.misses).sum();
    assert_eq!(misses, 1, "only the very first call missed: {stats:?}");
    let refreshes: u64 = stats.iter().map(|s| s.refreshes).sum();
    assert!(
        (3..=8).contains(&refreshes),
        "about one refresh per 300-600 ms over 2 s, got {refreshes}"
    );
    assert_eq!(
        u64::from(prices.loads.load(SeqCst)),
        1 + refreshes,
        "each refresh ran the body once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refreshes_hot_keys_once_across_processes() {
    let server = RedisServer::start();
    // Two caches on one server stand for two processes.
    hot_key_never_misses(vec![redis_cache(&server).await, redis_cache(&server).await]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_refreshes_hot_keys_before_they_expire() {
    hot_key_never_misses(vec![Cache::memory()]).await;
}

/// A lookup that finds nothing (cache penetration), with a body that counts its runs.
#[derive(Default)]
struct Missing {
    runs: AtomicU32,
}

impl Missing {
    async fn find(&self, _id: u64) -> Option<String> {
        self.runs.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        None
    }
}

#[cached(key = "find:<id>", ttl = "1m", absent_ttl = "400ms", cache = cache)]
async fn find(cache: &Cache, db: &Missing, id: u64) -> Option<String> {
    db.find(id).await
}

#[cached(key = "find:<id>", ttl = "1m", absent_ttl = "1m", lock, cache = cache)]
async fn find_locked(cache: &Cache, db: &Missing, id: u64) -> Option<String> {
    db.find(id).await
}

#[cached(key = "find:<id>", ttl = "1m", lock, cache = cache)]
async fn find_locked_uncached(cache: &Cache, db: &Missing, id: u64) -> Option<String> {
    db.find(id).await
}

async fn absent_results_are_cached_for_absent_ttl(cache: Cache) {
    let db = Missing::default();
    for _ in 0..5 {
        assert_eq!(find(&cache, &db, 1).await, None);
    }
    assert_eq!(db.runs.load(SeqCst), 1, "a missing row hits the database once");
    cache.invalidate("find:1").await.unwrap();
    assert_eq!(find(&cache, &db, 1).await, None);
    assert_eq!(db.runs.load(SeqCst), 2, "an invalidation removes the absent result");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(find(&cache, &db, 1).await, None);
    assert_eq!(db.runs.load(SeqCst), 3, "and so does `absent_ttl`");
}

#[tokio::test]
async fn memory_caches_absent_results() {
    absent_results_are_cached_for_absent_ttl(Cache::memory()).await;
}

#[tokio::test]
async fn redis_caches_absent_results() {
    let server = RedisServer::start();
    absent_results_are_cached_for_absent_ttl(redis_cache(&server).await).await;
}

/// Three processes with `lock` miss a row that does not exist: one body runs, and the others
/// receive its absent result, with `absent_ttl` (stored) and without it (confirmed and
/// handed to the waiters, who are released together instead of loading one after another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiters_share_an_absent_result() {
    let server = RedisServer::start();
    for (id, stored) in [(7, true), (8, false)] {
        let db = Arc::new(Missing::default());
        let mut caches = Vec::new();
        for _ in 0..3 {
            caches.push(redis_cache(&server).await);
        }
        // Subscriptions live first, so waiters hear the release.
        for cache in &caches {
            let _ = cache.lock("warm", Duration::from_millis(50), Duration::from_millis(50)).await;
        }
        let started = Instant::now();
        let calls: Vec<_> = caches
            .iter()
            .map(|cache| {
                let (cache, db) = (cache.clone(), db.clone());
                tokio::spawn(async move {
                    if stored {
                        find_locked(&cache, &db, id).await
                    } else {
                        find_locked_uncached(&cache, &db, id).await
                    }
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), None);
        }
        let took = started.elapsed();
        assert_eq!(db.runs.load(SeqCst), 1, "one body for three processes (stored: {stored})");
        assert!(took < Duration::from_millis(1000), "released together: {took:?}");
    }
}

#[cached(key = "xf:<id>", ttl = "1s", early, cache = cache)]
async fn xfetch(cache: &Cache, prices: &Prices, id: u64) -> Result<String, String> {
    let price = prices.query(id).await;
    std::thread::sleep(Duration::from_millis(30)); // a 50 ms recompute in all
    price
}

/// XFetch (`early`): many readers on one key recompute it before it expires, one at a time,
/// and no reader after the first sees a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_recomputes_hot_keys_before_they_expire() {
    let cache = Cache::memory();
    let prices = Arc::new(Prices::default());
    xfetch(&cache, &prices, 1).await.unwrap();
    let started = Instant::now();
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let (cache, prices) = (cache.clone(), prices.clone());
            tokio::spawn(async move {
                while started.elapsed() < Duration::from_secs(4) {
                    xfetch(&cache, &prices, 1).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let stats = cache.stats_of("xfetch");
    assert_eq!(stats.misses, 1, "only the first call missed: {stats:?}");
    let loads = prices.loads.load(SeqCst);
    // About one recompute per value life (1 s, recomputed some δ·ln(rate·δ) before its
    // expiry) over 4 s, each before the value expired.
    assert!((4..=10).contains(&loads), "recomputes: {loads} ({stats:?})");
    assert_eq!(stats.refreshes as u32, loads - 1, "{stats:?}");
}

/// What a gated body returns next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    Value,
    Nothing,
    Fails,
}

/// A service whose body waits at a gate the test opens, so a test can tell "the caller
/// waited for the body" from "the caller was answered while the body ran" without timing.
#[derive(Clone)]
struct Gated {
    started: Arc<AtomicU32>,
    finished: Arc<AtomicU32>,
    gate: Arc<tokio::sync::Semaphore>,
    answer: Arc<std::sync::Mutex<Answer>>,
}

impl Gated {
    fn new() -> Gated {
        Gated {
            started: Arc::default(),
            finished: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            answer: Arc::new(std::sync::Mutex::new(Answer::Value)),
        }
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Lets `n` bodies through.
    fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }

    async fn query(&self, id: u64) -> Result<Option<String>, String> {
        let run = self.started.fetch_add(1, SeqCst) + 1;
        self.gate.acquire().await.unwrap().forget();
        let answer = *self.answer.lock().unwrap();
        self.finished.fetch_add(1, SeqCst);
        match answer {
            Answer::Value => Ok(Some(format!("row {id} v{run}"))),
            Answer::Nothing => Ok(None),
            Answer::Fails => Err("database down".into()),
        }
    }

    /// Waits (bounded) until `n` bodies have finished.
    async fn finished(&self, n: u32) {
        eventually("the body never finished", || async { self.finished.load(SeqCst) >= n }).await;
    }
}

// A TTL far beyond the tests' sleeps, so a stalled machine cannot expire the value before
// the refresh is due.
#[cached(key = "row:<id>", ttl = "5s", refresh = "100ms", cache = cache)]
async fn refreshed_row(cache: &Cache, db: &Gated, id: u64) -> Result<Option<String>, String> {
    db.query(id).await
}

#[cached(key = "short:<id>", ttl = "1s", refresh = "100ms", cache = cache)]
async fn short_row(cache: &Cache, db: &Gated, id: u64) -> Result<Option<String>, String> {
    db.query(id).await
}

/// A call must answer without waiting for a body that the gate holds (a deadlock guard,
/// not a speed check: a caller that waited would wait forever).
async fn answered<F: std::future::Future>(call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the caller waited for a body held at the gate")
}

/// Polls `check` every 5 ms until it holds, failing with `what` after 10 s: for what lands
/// in the background (a refreshed value, a count).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Past the refresh age, a hit returns the current value while one refresh runs in the
/// background; the refreshed value replaces it when the body returns.
async fn refresh_runs_in_the_background(cache: Cache) {
    let db = Gated::new();
    db.open(1);
    assert_eq!(refreshed_row(&cache, &db, 1).await.unwrap().as_deref(), Some("row 1 v1"));
    tokio::time::sleep(Duration::from_millis(150)).await; // past `refresh`, within `ttl`
    for _ in 0..20 {
        let row = answered(refreshed_row(&cache, &db, 1)).await.unwrap();
        assert_eq!(row.as_deref(), Some("row 1 v1"), "the current value, at once");
    }
    // The refresh runs on a task of its own, which a loaded machine may start late.
    eventually("the refresh never started", || async { db.started.load(SeqCst) >= 2 }).await;
    assert_eq!(db.started.load(SeqCst), 2, "one refresh for twenty hits");
    assert_eq!(cache.stats_of("refreshed_row").refreshes, 1);
    db.open(1);
    db.finished(2).await;
    // The refresh stores its value before it ends its flight; a short wait covers the
    // store round trip after the body.
    eventually("the refreshed value never landed", || async {
        answered(refreshed_row(&cache, &db, 1)).await.unwrap().as_deref() == Some("row 1 v2")
    })
    .await;
    assert_eq!(cache.stats_of("refreshed_row").misses, 1, "only the first call missed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_refresh_runs_in_the_background() {
    refresh_runs_in_the_background(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refresh_runs_in_the_background() {
    let server = RedisServer::start();
    refresh_runs_in_the_background(redis_cache(&server).await).await;
}

/// A refresh whose body finds nothing removes the value: nobody keeps getting the deleted
/// row; one whose body fails keeps the value and is counted.
async fn refresh_outcomes(cache: Cache) {
    let db = Gated::new();
    db.open(2);
    refreshed_row(&cache, &db, 1).await.unwrap();
    refreshed_row(&cache, &db, 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;

    db.answer(Answer::Fails);
    db.open(1);
    assert_eq!(answered(refreshed_row(&cache, &db, 2)).await.unwrap().as_deref(), Some("row 2 v2"));
    db.finished(3).await;
    eventually("the failed refresh was not counted", || async {
        cache.stats_of("refreshed_row").background_failures == 1
    })
    .await;
    assert_eq!(
        cache.get::<String>("row:2").await.unwrap().as_deref(),
        Some("row 2 v2"),
        "a failed refresh keeps the value"
    );

    db.answer(Answer::Nothing);
    db.open(1);
    assert_eq!(answered(refreshed_row(&cache, &db, 1)).await.unwrap().as_deref(), Some("row 1 v1"));
    db.finished(4).await;
    eventually("the row deleted at its source is still cached", || async {
        cache.get::<String>("row:1").await.unwrap().is_none()
    })
    .await;
    db.open(1);
    assert_eq!(refreshed_row(&cache, &db, 1).await.unwrap(), None, "and the next call loads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_refresh_that_finds_nothing_removes_the_value_and_one_that_fails_keeps_it() {
    refresh_outcomes(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refresh_that_finds_nothing_removes_the_value_and_one_that_fails_keeps_it() {
    let server = RedisServer::start();
    refresh_outcomes(redis_cache(&server).await).await;
}

/// A refresh still running when the value's TTL ends: the callers that miss join it, and
/// get its value, instead of running the body again.
async fn expired_callers_join_the_running_refresh(cache: Cache) {
    let db = Gated::new();
    db.open(1);
    short_row(&cache, &db, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    answered(short_row(&cache, &db, 1)).await.unwrap(); // starts the refresh
    tokio::time::sleep(Duration::from_millis(1000)).await; // the value's TTL ends
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let (cache, db) = (cache.clone(), db.clone());
            tokio::spawn(async move { short_row(&cache, &db, 1).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    db.open(1);
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().as_deref(), Some("row 1 v2"));
    }
    assert_eq!(db.started.load(SeqCst), 2, "the first load and the refresh, nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_expired_callers_join_the_running_refresh() {
    expired_callers_join_the_running_refresh(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_expired_callers_join_the_running_refresh() {
    let server = RedisServer::start();
    expired_callers_join_the_running_refresh(redis_cache(&server).await).await;
}

#[cached(key = "soft:<id>", ttl = "100ms", stale = "1h", timeout = "50ms", cache = cache)]
async fn soft_row(cache: &Cache, db: &Gated, id: u64) -> Result<Option<String>, String> {
    db.query(id).await
}

/// `timeout` with `stale`: a caller holding an expired value waits `timeout` for the body,
/// then gets that value; the body goes on and stores its result for the next callers. A
/// caller without a stale value waits for the body.
async fn soft_timeout(cache: Cache) {
    let db = Gated::new();
    db.open(1);
    assert_eq!(soft_row(&cache, &db, 1).await.unwrap().as_deref(), Some("row 1 v1"));
    tokio::time::sleep(Duration::from_millis(150)).await; // expired, kept for `stale`
    for _ in 0..3 {
        let row = answered(soft_row(&cache, &db, 1)).await.unwrap();
        assert_eq!(row.as_deref(), Some("row 1 v1"), "the stale value past the timeout");
    }
    assert_eq!(db.started.load(SeqCst), 2, "one body for the three callers");
    assert_eq!(cache.stats_of("soft_row").stale, 3);
    db.open(1);
    db.finished(2).await;
    eventually("the late body's value never landed", || async {
        answered(soft_row(&cache, &db, 1)).await.unwrap().as_deref() == Some("row 1 v2")
    })
    .await;

    // No stale value: the caller waits for the body, however long it takes.
    let waiting = {
        let (cache, db) = (cache.clone(), db.clone());
        tokio::spawn(async move { soft_row(&cache, &db, 2).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "without a stale value there is nothing to answer with");
    db.open(1);
    assert_eq!(waiting.await.unwrap().unwrap().as_deref(), Some("row 2 v3"));

    // A body that fails after its caller was answered is counted.
    tokio::time::sleep(Duration::from_millis(150)).await;
    db.answer(Answer::Fails);
    assert_eq!(answered(soft_row(&cache, &db, 2)).await.unwrap().as_deref(), Some("row 2 v3"));
    db.open(1);
    db.finished(4).await;
    eventually("the failed background load was not counted", || async {
        cache.stats_of("soft_row").background_failures == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_soft_timeout_answers_with_the_stale_value() {
    soft_timeout(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_soft_timeout_answers_with_the_stale_value() {
    let server = RedisServer::start();
    soft_timeout(redis_cache(&server).await).await;
}

// ---- Write-through age: the write time travels with the value -----------------------------

#[cache_put(key = "listing:<id>", ttl = "1s", cache = cache)]
async fn put_listing(cache: &Cache, id: u64, price: &str) -> String {
    let _ = id;
    format!("listing {price}")
}

#[cached(key = "listing:<id>", ttl = "15m", stale = "1h", cache = cache)]
async fn listing(cache: &Cache, prices: &Prices, id: u64) -> Result<String, String> {
    prices.query(id).await
}

/// A value written by `#[cache_put]` with its own short life is fresh for a reader with a
/// long `stale`: its age is the time since it was written, not `lifetime - PTTL` (which
/// made it look 59 minutes old here).
async fn a_put_value_is_fresh_for_a_reader_with_stale(cache: Cache) {
    let prices = Prices::default();
    put_listing(&cache, 1, "9900").await;
    assert_eq!(listing(&cache, &prices, 1).await.unwrap(), "listing 9900", "a hit");
    let stats = cache.stats_of("listing");
    assert_eq!((stats.hits, stats.misses, stats.loads), (1, 0, 0), "{stats:?}");
    assert_eq!(prices.loads.load(SeqCst), 0, "the body never ran");
}

#[tokio::test]
async fn redis_put_values_are_fresh_whatever_the_readers_stale() {
    let server = RedisServer::start();
    a_put_value_is_fresh_for_a_reader_with_stale(redis_cache(&server).await).await;
}

#[tokio::test]
async fn memory_put_values_are_fresh_whatever_the_readers_stale() {
    a_put_value_is_fresh_for_a_reader_with_stale(Cache::memory()).await;
}

/// The same value in the previous release's envelope: `cr1:<codec>:<compression>:<fp>:`.
fn as_cr1(stored: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(stored).unwrap();
    let fields: Vec<&str> = text.splitn(7, ':').collect();
    assert_eq!(fields[0], "cr2", "{text}");
    format!("cr1:{}:{}:{}:{}", fields[1], fields[2], fields[3], fields[6]).into_bytes()
}

/// Values written by the previous release (`cr1`, no write time) still decode, and their age
/// falls back to the expiry: fresh when written with the reader's lifetime.
#[tokio::test]
async fn cr1_values_written_by_the_previous_release_still_decode() {
    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    let mut raw = server.connection().await;
    let cr2 = cache_runtime::__private::encode_value(
        &"listing 7".to_owned(),
        cache_runtime::Codec::Json,
        None,
    );
    let cr1 = as_cr1(&cr2);
    assert!(cr1.starts_with(b"cr1:j:-:") && cr1.ends_with(b":\"listing 7\""));
    for key in ["t:plain:7", "t:listing:7"] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(&cr1)
            .arg("PX")
            .arg(3_600_000)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    assert_eq!(cache.get::<String>("plain:7").await.unwrap().as_deref(), Some("listing 7"));
    let prices = Prices::default();
    assert_eq!(listing(&cache, &prices, 7).await.unwrap(), "listing 7", "an aged hit");
    assert_eq!(prices.loads.load(SeqCst), 0);
    assert_eq!(cache.stats().errors, 0);
}

// ---- Sliding expiration (`idle`) ----------------------------------------------------------

#[cached(key = "session:<id>", ttl = "3s", idle = "1s", cache = cache)]
async fn session(cache: &Cache, prices: &Prices, id: u64) -> Result<String, String> {
    prices.query(id).await
}

/// A value read every 300 ms with `idle = "1s"` stays cached past 1 s (each hit extends it),
/// but not past `ttl = "3s"` after it was written, even while still read.
async fn reads_keep_an_idle_value_until_its_ttl(cache: Cache) {
    let prices = Prices::default();
    let started = Instant::now();
    assert_eq!(session(&cache, &prices, 1).await.unwrap(), "price 1 v1");
    while started.elapsed() < Duration::from_millis(2400) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            session(&cache, &prices, 1).await.unwrap(),
            "price 1 v1",
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(prices.loads.load(SeqCst), 1, "every read within idle of the last one hit");
    // Within `idle` of the last read, but past the cap: a miss.
    tokio::time::sleep(Duration::from_millis(3200).saturating_sub(started.elapsed())).await;
    assert_eq!(session(&cache, &prices, 1).await.unwrap(), "price 1 v2", "capped by ttl");
    assert_eq!(prices.loads.load(SeqCst), 2);
    assert_eq!(cache.stats_of("session").misses, 2);
}

/// A value nobody reads for longer than `idle` is gone.
async fn an_unread_idle_value_expires(cache: Cache) {
    let prices = Prices::default();
    assert_eq!(session(&cache, &prices, 2).await.unwrap(), "price 2 v1");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(session(&cache, &prices, 2).await.unwrap(), "price 2 v1", "a hit extends it");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(session(&cache, &prices, 2).await.unwrap(), "price 2 v2", "idle for 1.3 s: gone");
    assert_eq!(prices.loads.load(SeqCst), 2);
}

#[tokio::test]
async fn redis_idle_values_slide_up_to_their_ttl() {
    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    reads_keep_an_idle_value_until_its_ttl(cache.clone()).await;
    an_unread_idle_value_expires(cache.clone()).await;
    // Stored for `idle`; a hit sets the remaining life to min(idle, ttl - age).
    let mut raw = server.connection().await;
    let prices = Prices::default();
    session(&cache, &prices, 3).await.unwrap();
    let pttl = |raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        async move { redis::cmd("PTTL").arg("t:session:3").query_async::<i64>(&mut raw).await.unwrap() }
    };
    assert!((1..=1000).contains(&pttl(&mut raw).await), "written for idle");
    tokio::time::sleep(Duration::from_millis(500)).await;
    session(&cache, &prices, 3).await.unwrap();
    assert!(pttl(&mut raw).await > 900, "extended by the hit");
    // The index covers the extended life: a pattern invalidation still finds the key.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        session(&cache, &prices, 3).await.unwrap();
    }
    assert_eq!(cache.invalidate_pattern("session:*").await.unwrap(), 1);
    assert_eq!(pttl(&mut raw).await, -2);
    // A value written by `set` for 500 ms (indexed for that long) and kept alive by hits
    // past it: the hits extend its index entry too, so patterns still find it.
    cache.set("session:4", "price 4 set", Duration::from_millis(500)).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(session(&cache, &prices, 4).await.unwrap(), "price 4 set");
    }
    // Another write to the level prunes members whose score has passed.
    cache.set("session:5", "other", Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.invalidate_pattern("session:*").await.unwrap(), 2, "still indexed");
}

#[tokio::test]
async fn memory_idle_values_slide_up_to_their_ttl() {
    let cache = Cache::memory();
    reads_keep_an_idle_value_until_its_ttl(cache.clone()).await;
    an_unread_idle_value_expires(cache).await;
}

#[tokio::test]
async fn idle_functions_bypass_the_near_cache() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis(server.url())
        .prefix("t:")
        .near_cache(1 << 20)
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    while !cache.near_cache_live() && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reads_keep_an_idle_value_until_its_ttl(cache.clone()).await;
    assert_eq!(cache.stats_of("session").near_hits, 0);
}

/// `timeout` with a kept value that does not decode as the function's type (another
/// schema wrote it): there is nothing to answer with, so the caller waits for the body as
/// without `timeout`, and never panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_with_an_undecodable_kept_value_waits_for_the_body() {
    let cache = Cache::memory();
    cache.set("soft:9", &42u32, Duration::from_secs(3600)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await; // older than `ttl`: kept, stale
    let db = Gated::new();
    let waiting = {
        let (cache, db) = (cache.clone(), db.clone());
        tokio::spawn(async move { soft_row(&cache, &db, 9).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "past the timeout, with nothing usable to answer with");
    db.open(1);
    assert_eq!(waiting.await.unwrap().unwrap().as_deref(), Some("row 9 v1"));
}

/// A caller with `timeout` that is cancelled while it waits (a dropped request) leaves the
/// body running: its value lands for the next callers, and no second body runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_soft_timeout_caller_leaves_the_body_running() {
    let cache = Cache::memory();
    let db = Gated::new();
    db.open(1);
    soft_row(&cache, &db, 5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await; // expired, kept for `stale`
    let cancelled = tokio::time::timeout(Duration::from_millis(10), soft_row(&cache, &db, 5)).await;
    assert!(cancelled.is_err(), "the caller gave up before its timeout");
    eventually("the body never started", || async { db.started.load(SeqCst) == 2 }).await;
    db.open(1);
    db.finished(2).await;
    eventually("the cancelled caller's body never stored its value", || async {
        answered(soft_row(&cache, &db, 5)).await.unwrap().as_deref() == Some("row 5 v2")
    })
    .await;
    assert_eq!(db.started.load(SeqCst), 2, "the value came from that body, not a new one");
}
