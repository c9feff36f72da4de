//! Coherence gaps: what a user relies on (DESIGN.md 2.8, 2.9, 2.11) in corners the rest of
//! the suite does not reach.
//!
//! - A `lock` waiter in another process must not take an absent result from a load that an
//!   invalidation overtook: the call started after the write, it must see the row; nor
//!   an earlier holder's absent result whose wake-up reaches it late.
//! - An unprefixed cache whose invalidation backlog overflows during an outage must still
//!   remove the old values when Redis returns.
//! - An unprefixed cache on a Redis that evicts keys cannot honour pattern invalidation:
//!   `build()` refuses it.
//! - `timeout`: a burst of callers holding a stale value start one body, so only that body
//!   owns copies of the borrowed parameters.
//! - Another application's value that happens to start with `cr` is not an envelope: it is
//!   replaced like any undecodable value, while a later release's envelope is left alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache, Error};
use cache_tests::proxy::Hold;
use cache_tests::{DelayProxy, RedisServer};
use serde::{Deserialize, Serialize};

use crate::{eventually, redis_cache, Raw, PREFIX};

// ---- 1. An absent result overtaken by an invalidation, across processes under `lock` -----

/// A row of the model database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    id: u64,
    version: u64,
}

/// The model database: its rows, and a hook the body runs when it finds none (just before
/// it returns), which the test uses to arm the proxy at that exact point.
#[derive(Default)]
struct Accounts {
    rows: Mutex<HashMap<u64, Account>>,
    on_absent: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Accounts {
    fn read(&self, id: u64) -> Option<Account> {
        let row = self.rows.lock().unwrap().get(&id).cloned();
        if row.is_none() {
            if let Some(hook) = self.on_absent.lock().unwrap().take() {
                hook();
            }
        }
        row
    }
}

#[cached(key = "acct:<id>", ttl = "15m", lock, cache = cache)]
async fn find_account(cache: &Cache, db: &Accounts, id: u64) -> Result<Option<Account>, String> {
    Ok(db.read(id))
}

#[cached(key = "acct-neg:<id>", ttl = "15m", absent_ttl = "1m", lock, cache = cache)]
async fn find_account_negative(
    cache: &Cache,
    db: &Accounts,
    id: u64,
) -> Result<Option<Account>, String> {
    Ok(db.read(id))
}

/// `PUBSUB NUMPAT`: how many pattern subscriptions the server has (each cache's wake-up
/// connection holds two once live).
async fn pattern_subscriptions(raw: &Raw) -> u64 {
    let mut con = raw.0.clone();
    redis::cmd("PUBSUB").arg("NUMPAT").query_async(&mut con).await.expect("PUBSUB NUMPAT")
}

/// Instance A holds the load lease of a row that does not exist yet: its body returns
/// `None` and A confirms that outcome with the store. Before A releases its lease (the
/// release is what tells waiters "absent"), the row is created and its key invalidated
/// through instance C, which returns. Only then does instance B call: it misses, finds A's
/// lease and waits. B's call started after the write, so it must return the row, never
/// A's absent result. The window is held open by a proxy between A and Redis that holds
/// A's first load-lease command after its body (the release, or any lease command a
/// holder sends before confirming).
async fn absent_result_overtaken_by_an_invalidation(negative: bool) {
    let (name, key) = match negative {
        false => ("find_account", "acct:7"),
        true => ("find_account_negative", "acct-neg:7"),
    };
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let proxy = Arc::new(DelayProxy::start(server.port()).await);
    let a = Cache::builder()
        .redis(proxy.url())
        .prefix(PREFIX)
        .command_timeout(Duration::from_secs(5)) // the held command must not time out
        .build()
        .await
        .unwrap();
    let (b, c) = (redis_cache(&server).await, redis_cache(&server).await);
    // B's wake-up subscription live first, so that B waits for A's message.
    let _ = b.lock("warm", Duration::from_millis(50), Duration::from_millis(50)).await;
    assert!(
        eventually(Duration::from_secs(5), || async { pattern_subscriptions(&raw).await >= 2 })
            .await,
        "B's wake-up subscription never went live"
    );

    let db = Arc::new(Accounts::default());
    let armed: Arc<Mutex<Option<Hold>>> = Arc::default();
    *db.on_absent.lock().unwrap() = Some(Box::new({
        let (proxy, armed) = (Arc::clone(&proxy), Arc::clone(&armed));
        move || *armed.lock().unwrap() = Some(proxy.arm(b"#load:", Duration::from_secs(3)))
    }));
    let find = move |cache: Cache, db: Arc<Accounts>| async move {
        match negative {
            false => find_account(&cache, &db, 7).await,
            true => find_account_negative(&cache, &db, 7).await,
        }
    };
    let first = tokio::spawn(find(a.clone(), Arc::clone(&db)));
    assert!(
        eventually(Duration::from_secs(5), || {
            let armed = armed.lock().unwrap().is_some();
            async move { armed }
        })
        .await,
        "A's body never ran"
    );
    let hold = armed.lock().unwrap().clone().unwrap();
    assert!(
        hold.matched(Duration::from_secs(5)).await,
        "A sent no load-lease command after its body (nothing to hold); A sent: {:#?}",
        proxy.commands()
    );

    // The write: the row is created, then its key invalidated; both complete.
    let row = Account { id: 7, version: 1 };
    db.rows.lock().unwrap().insert(7, row.clone());
    c.invalidate(key).await.expect("the invalidation lands");

    // B starts after the write, misses, and waits on A's lease.
    let second = tokio::spawn(find(b.clone(), Arc::clone(&db)));
    assert!(
        eventually(Duration::from_secs(5), || async { b.stats_of(name).misses >= 1 }).await,
        "B's call never missed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.release();

    let read = tokio::time::timeout(Duration::from_secs(8), second)
        .await
        .expect("B's call answered within lock_wait")
        .unwrap();
    assert_eq!(
        read,
        Ok(Some(row)),
        "a call that started after the row was created and its key invalidated got the \
         absent result of another process's load that began before the write (absent_ttl: \
         {negative})"
    );
    // A's call began before the write: either answer is right for it; it must return.
    tokio::time::timeout(Duration::from_secs(8), first).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiter_never_takes_an_absent_result_overtaken_by_an_invalidation() {
    absent_result_overtaken_by_an_invalidation(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiter_never_takes_a_negative_cached_result_overtaken_by_an_invalidation() {
    absent_result_overtaken_by_an_invalidation(true).await;
}

// ---- 1b. A late wake-up from an earlier holder, across processes under `lock` -----------

#[cached(key = "acct-late:<id>", ttl = "15m", absent_ttl = "1m", lock, cache = cache)]
async fn find_account_late(
    cache: &Cache,
    db: &Accounts,
    runs: &AtomicUsize,
    id: u64,
) -> Result<Option<Account>, String> {
    runs.fetch_add(1, SeqCst);
    Ok(db.read(id))
}

/// Instance B calls for row 9 while the load lease is held by another process's holder
/// (`holder-2`) that has not begun to settle, and wakes on messages on the key's channel
/// that say "absent" (published here, every 20 ms until B answers, so that they reach B
/// while it waits, whatever the machine's load).
///
/// `late`: the messages are an *earlier* holder's (`holder-1`) release of an absent
/// result, in today's form (`2:holder-1`) and an older release's (a bare `2`). Such a
/// release is published before the write and before B started, but B's subscription may
/// read it only once B waits (it did under CPU load: the coherence checker's
/// `coherent_absent_rows_with_lock_*` deployments). The row exists, so B must return it.
///
/// Not `late`: the message is the release of the holder B saw (`2:holder-2`), which
/// confirmed its absent result after B's look: B takes it without running its body.
async fn lock_waiter_woken_with_absent(late: bool) -> (Result<Option<Account>, String>, usize) {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let b = redis_cache(&server).await;
    let _ = b.lock("warm", Duration::from_millis(50), Duration::from_millis(50)).await;
    assert!(
        eventually(Duration::from_secs(5), || async { pattern_subscriptions(&raw).await >= 1 })
            .await,
        "B's wake-up subscription never went live"
    );
    let db = Arc::new(Accounts::default());
    if late {
        db.rows.lock().unwrap().insert(9, Account { id: 9, version: 1 });
    }
    // Another process's holder, not settling; its lease lapses after 2 s (then B loads
    // under a lease of its own).
    let mut con = raw.0.clone();
    redis::cmd("SET")
        .arg(format!("{PREFIX}#load:{{acct-late:9}}"))
        .arg("holder-2")
        .arg("PX")
        .arg(2000)
        .query_async::<()>(&mut con)
        .await
        .expect("SET the lease");

    let runs = Arc::new(AtomicUsize::new(0));
    let call = tokio::spawn({
        let (b, db, runs) = (b.clone(), Arc::clone(&db), Arc::clone(&runs));
        async move { find_account_late(&b, &db, &runs, 9).await }
    });
    let channel = format!("{PREFIX}#filled:acct-late:9");
    let payloads: &[&str] = if late { &["2:holder-1", "2"] } else { &["2:holder-2"] };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !call.is_finished() && Instant::now() < deadline {
        for payload in payloads {
            let _: u64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(*payload)
                .query_async(&mut con)
                .await
                .expect("PUBLISH");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("B answers within lock_wait (10 s) and the lease (2 s)")
        .unwrap();
    (read, runs.load(SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiter_never_takes_an_earlier_holders_late_absent_signal() {
    let (read, runs) = lock_waiter_woken_with_absent(true).await;
    assert_eq!(
        read,
        Ok(Some(Account { id: 9, version: 1 })),
        "a lock waiter took as its answer an absent result released by a holder before the \
         one it waited on (a wake-up that reached it late): the row exists"
    );
    assert_eq!(runs, 1, "B loads the row itself once the lease lapses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiter_takes_the_absent_result_of_the_holder_it_waited_on() {
    let (read, runs) = lock_waiter_woken_with_absent(false).await;
    assert_eq!(read, Ok(None), "the holder B waited on confirmed an absent result");
    assert_eq!(runs, 0, "B takes that holder's absent result without running its body");
}

// ---- 2. An unprefixed cache whose invalidation backlog overflows --------------------------

/// The current version of every row in the model database.
static ROW_VERSION: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct VersionedRow {
    id: u64,
    version: u64,
}

#[cached(key = "row:<id>", ttl = "15m", cache = cache)]
async fn versioned_row(cache: &Cache, id: u64) -> Result<VersionedRow, String> {
    Ok(VersionedRow { id, version: ROW_VERSION.load(SeqCst) })
}

/// A cache without a prefix, Redis frozen (SIGSTOP: the data survives), and more
/// invalidations than the backlog keeps one by one (10,001, `row:1` among them). They fail
/// fast (the breaker) and are kept. Once Redis answers again and the backlog has drained,
/// the old `row:1` must be gone from Redis, and another process must read the new version:
/// an outage delays an invalidation, it never loses one, prefix or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprefixed_backlog_overflow_still_removes_the_old_values() {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let build = || async {
        Cache::builder()
            .redis(server.url())
            .command_timeout(Duration::from_millis(100))
            .build()
            .await
            .unwrap()
    };
    let cache = build().await;
    ROW_VERSION.store(1, SeqCst);
    assert_eq!(versioned_row(&cache, 1).await.unwrap().version, 1);
    assert!(raw.exists("row:1").await, "version 1 is cached under row:1");

    server.pause();
    ROW_VERSION.store(2, SeqCst); // the write to the database
                                  // The first invalidations time out (their commands wait in the frozen server's socket
                                  // and run when it resumes) until the breaker opens; `row:1`'s comes after, so it
                                  // reaches Redis only through the backlog.
    let started = Instant::now();
    let mut id = 2;
    loop {
        let error = cache.invalidate(&format!("row:{id}")).await.expect_err("Redis is frozen");
        id += 1;
        if matches!(error, Error::Unavailable) {
            break;
        }
        assert!(id < 20, "the breaker never opened: {error}");
    }
    let error = cache.invalidate("row:1").await.expect_err("Redis is frozen");
    assert!(matches!(error, Error::Unavailable), "{error}");
    let mut answered = Vec::new();
    for id in id..=10_001 {
        if cache.invalidate(&format!("row:{id}")).await.is_ok() {
            answered.push(id);
        }
    }
    let took = started.elapsed();
    server.resume();
    assert!(answered.is_empty(), "invalidations of {answered:?} succeeded on a frozen Redis");
    // Each refused at once: a hang is each waiting out the command timeout, 10,001 x 100 ms
    // (over 16 minutes). The bound leaves room for a loaded 2-core machine.
    assert!(took < Duration::from_secs(60), "invalidations against a frozen Redis hung: {took:?}");

    let drained = eventually(Duration::from_secs(8), || async {
        cache.health().await.pending_invalidations == 0
    })
    .await;
    assert!(drained, "the backlog never drained: {:?}", cache.health().await);
    assert_eq!(
        raw.get("row:1").await,
        None,
        "the invalidation backlog was dropped: the value from before the write is still in Redis"
    );
    let other = build().await;
    assert_eq!(
        versioned_row(&other, 1).await.unwrap().version,
        2,
        "another process read the version from before the write"
    );
}

// ---- 3. An unprefixed cache on an evicting Redis ------------------------------------------

/// Pattern invalidation on a Redis that may evict its indexes needs a scan, which an
/// unprefixed cache cannot do without reaching other applications' keys: such a cache is
/// refused at `build()` (not at its first pattern invalidation, which would only log). With a
/// prefix it builds and pattern invalidation works; on a `noeviction` Redis both build.
#[tokio::test]
async fn an_unprefixed_cache_on_an_evicting_redis_is_refused_at_build() {
    let never =
        RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]);
    let unprefixed = Cache::builder().redis(never.url()).build().await;
    let unprefixed = unprefixed.expect("an unprefixed cache on a noeviction Redis builds");
    unprefixed.set("x:1", &1u64, Duration::from_secs(60)).await.unwrap();
    assert_eq!(unprefixed.invalidate_pattern("x:*").await.unwrap(), 1);
    let prefixed = Cache::builder().redis(never.url()).prefix(PREFIX).build().await;
    prefixed.expect("a prefixed cache on a noeviction Redis builds");

    let evicting =
        RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let prefixed = Cache::builder().redis(evicting.url()).prefix(PREFIX).build().await;
    let prefixed = prefixed.expect("a prefixed cache on an evicting Redis builds");
    prefixed.set("x:1", &1u64, Duration::from_secs(60)).await.unwrap();
    assert_eq!(prefixed.invalidate_pattern("x:*").await.unwrap(), 1);
    assert_eq!(prefixed.get::<u64>("x:1").await.unwrap(), None);

    let unprefixed = Cache::builder().redis(evicting.url()).build().await;
    assert!(
        matches!(unprefixed, Err(Error::InvalidConfig(_))),
        "an unprefixed cache on an allkeys-lru Redis must be refused with InvalidConfig; got {:?}",
        unprefixed.map(|_| "Ok(Cache)")
    );
}

// ---- 4. `timeout`: one body, one set of copies -------------------------------------------

/// Copies of [`Probe`] alive now (the original is not counted).
static LIVE_COPIES: AtomicUsize = AtomicUsize::new(0);

/// A slow database behind a gate the test holds.
struct SlowDb {
    gate: tokio::sync::Semaphore,
    started: AtomicUsize,
    version: AtomicU64,
}

/// A parameter the body borrows: with `timeout`, the body copies it (`ToOwned`) when it
/// starts on a task of its own. Counts its live copies.
struct Probe {
    db: Arc<SlowDb>,
    copy: bool,
}

impl Clone for Probe {
    fn clone(&self) -> Probe {
        LIVE_COPIES.fetch_add(1, SeqCst);
        Probe { db: Arc::clone(&self.db), copy: true }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.copy {
            LIVE_COPIES.fetch_sub(1, SeqCst);
        }
    }
}

#[cached(key = "slow:<id>", ttl = "100ms", stale = "1h", timeout = "50ms", cache = cache)]
async fn slow_row(cache: &Cache, probe: &Probe, id: u64) -> Result<u64, String> {
    let _ = id;
    probe.db.started.fetch_add(1, SeqCst);
    probe.db.gate.acquire().await.map_err(|e| e.to_string())?.forget();
    Ok(probe.db.version.fetch_add(1, SeqCst) + 1)
}

/// 200 callers hold an expired value (kept for `stale`) while the body is slow: they are
/// answered with it after `timeout`, one body runs, and only that body owns copies of the
/// borrowed parameter (DESIGN 2.11: copies are made when a body starts), not one set per
/// caller. When the body ends, its value lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_callers_start_one_body_not_one_task_each() {
    let cache = Cache::memory();
    let db = Arc::new(SlowDb {
        gate: tokio::sync::Semaphore::new(0),
        started: AtomicUsize::new(0),
        version: AtomicU64::new(0),
    });
    let probe = Arc::new(Probe { db: Arc::clone(&db), copy: false });
    db.gate.add_permits(1);
    assert_eq!(slow_row(&cache, &probe, 1).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await; // expired, kept for `stale`
    assert!(
        eventually(Duration::from_secs(2), || async { LIVE_COPIES.load(SeqCst) == 0 }).await,
        "the first body's copies were never dropped"
    );

    let callers: Vec<_> = (0..200)
        .map(|_| {
            let (cache, probe) = (cache.clone(), Arc::clone(&probe));
            tokio::spawn(async move { slow_row(&cache, &probe, 1).await })
        })
        .collect();
    for caller in callers {
        let answer = tokio::time::timeout(Duration::from_secs(5), caller).await;
        assert_eq!(answer.expect("answered").unwrap(), Ok(1), "the stale value past the timeout");
    }
    assert_eq!(db.started.load(SeqCst), 2, "one body for the 200 callers");
    let copies = LIVE_COPIES.load(SeqCst);
    assert!(
        copies <= 2,
        "{copies} live copies of the borrowed parameter while one body runs: one task per \
         caller was started instead of one per flight"
    );

    db.gate.add_permits(1);
    assert!(
        eventually(Duration::from_secs(3), || async { slow_row(&cache, &probe, 1).await == Ok(2) })
            .await,
        "the body's value never landed"
    );
    assert!(
        eventually(Duration::from_secs(3), || async { LIVE_COPIES.load(SeqCst) == 0 }).await,
        "copies outlived the body"
    );
}

// ---- 5. Another application's value that starts with `cr` --------------------------------

#[cached(key = "row:<id>", ttl = "15m", cache = cache)]
async fn foreign_row(cache: &Cache, runs: &AtomicU64, id: u64) -> Result<String, String> {
    runs.fetch_add(1, SeqCst);
    Ok(format!("row {id}"))
}

/// Another application wrote `t:row:<id>` with text that starts with `cr` but is no
/// envelope header (`cr` then a version number and `:`). It is undecodable data like any
/// other (DESIGN 2.8): a miss, the fresh value overwrites it, the next call is a hit. A
/// value that does look like a later release's envelope (`cr9:...`) is another writer's
/// entry and stays (a miss that does not store).
#[tokio::test]
async fn a_foreign_value_starting_with_cr_is_replaced_but_a_later_envelope_is_not() {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    let later = "cr9:j:-:0123456789abcdef:1718000000123:0:\"row 20 from a later release\"";
    let key = format!("{PREFIX}row:20");
    raw.set(&key, later).await;
    let runs = AtomicU64::new(0);
    for _ in 0..2 {
        assert_eq!(foreign_row(&cache, &runs, 20).await.unwrap(), "row 20");
    }
    assert_eq!(runs.load(SeqCst), 2, "a later release's value is a miss each time");
    assert_eq!(raw.get(&key).await.as_deref(), Some(later), "a later release's value stays");

    let foreign = [(7, "created by another app"), (8, "cr"), (9, "crash report: disk full")];
    for (id, text) in foreign {
        let key = format!("{PREFIX}row:{id}");
        raw.set(&key, text).await;
        let runs = AtomicU64::new(0);
        assert_eq!(foreign_row(&cache, &runs, id).await.unwrap(), format!("row {id}"));
        let hits = cache.stats_of("foreign_row").hits;
        assert_eq!(foreign_row(&cache, &runs, id).await.unwrap(), format!("row {id}"));
        let stored = raw.get(&key).await.unwrap_or_default();
        assert!(
            runs.load(SeqCst) == 1 && cache.stats_of("foreign_row").hits == hits + 1,
            "{text:?} (another application's value) was never replaced: the body ran {} times \
             for two calls, Redis holds {stored:?}",
            runs.load(SeqCst)
        );
        assert!(stored.starts_with("cr2:"), "Redis holds {stored:?}, not our envelope");
    }
}
