//! Hostile input: keys longer than `max_key_bytes` (default 1024) never reach Redis in full,
//! neither as keys nor as invalidation-index members, and the failure logs of a Redis outage
//! stay bounded, with long keys clipped.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::{cached, rate_limit, Cache, Error, RateLimited};
use cache_tests::RedisServer;
use redis::aio::MultiplexedConnection;

use crate::{redis_cache, PREFIX};

/// Every key of the server with its `MEMORY USAGE`.
async fn all_keys(con: &MultiplexedConnection) -> Vec<(String, u64)> {
    let mut con = con.clone();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut con).await.unwrap();
    let mut sized = Vec::new();
    for key in keys {
        let bytes: Option<u64> =
            redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(&mut con).await.unwrap();
        sized.push((key, bytes.unwrap_or(0)));
    }
    sized
}

/// The members of every invalidation index (`<prefix>#idx:...`).
async fn index_members(con: &MultiplexedConnection) -> Vec<String> {
    let mut con = con.clone();
    let indexes: Vec<String> =
        redis::cmd("KEYS").arg(format!("{PREFIX}#idx:*")).query_async(&mut con).await.unwrap();
    let mut members = Vec::new();
    for index in indexes {
        let some: Vec<String> =
            redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1).query_async(&mut con).await.unwrap();
        members.extend(some);
    }
    members
}

#[tokio::test]
async fn a_60_kb_placeholder_value_never_reaches_redis_in_full() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "search:<make>:<model>", ttl = "15m", cache = cache)]
    async fn search(cache: &Cache, make: &str, model: &str) -> Vec<String> {
        CALLS.fetch_add(1, SeqCst);
        vec![format!("{}:{model}", make.len())]
    }

    let server = RedisServer::start();
    let con = server.connection().await;
    let cache = redis_cache(&server).await;

    // A key within the bound is cached as before (1024 bytes exactly: `search:` + make +
    // `:x`).
    let fits = "m".repeat(1024 - "search:".len() - ":x".len());
    assert_eq!(search(&cache, &fits, "x").await, [format!("{}:x", fits.len())]);
    assert_eq!(search(&cache, &fits, "x").await, [format!("{}:x", fits.len())]);
    assert_eq!(CALLS.load(SeqCst), 1, "a 1024-byte key is cached");
    let before: u64 = all_keys(&con).await.iter().map(|(_, bytes)| bytes).sum();

    // 20 requests with a 60 KB placeholder value, 10 distinct ones, each asked twice.
    for round in 0..2 {
        for i in 0..10 {
            let make = format!("{i}{}", "x".repeat(60 * 1024));
            let got = search(&cache, &make, "y").await;
            assert_eq!(got, [format!("{}:y", make.len())], "round {round}, value {i}");
        }
    }

    let keys = all_keys(&con).await;
    let after: u64 = keys.iter().map(|(_, bytes)| bytes).sum();
    let longest = keys.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    assert!(
        after <= before + 20 * 1024,
        "20 requests with a 60 KB key added {} bytes to Redis (MEMORY USAGE of every key)",
        after - before
    );
    assert!(
        longest <= PREFIX.len() + "#idx:".len() + 1024,
        "a key of {longest} bytes reached Redis"
    );
    eprintln!("20 requests with a 60 KB key: +{} bytes in Redis (MEMORY USAGE), longest key {longest} bytes", after - before);
    let members = index_members(&con).await;
    let widest = members.iter().map(String::len).max().unwrap_or(0);
    assert!(widest <= 1024, "an index member of {widest} bytes");
    assert_eq!(CALLS.load(SeqCst), 21, "over the bound, the body answers every call");
    let stats = cache.stats_of("search");
    assert!(stats.errors >= 20, "each uncached call is counted: {stats:?}");

    // Invalidations still work for the keys that fit, and are no-ops for the others.
    assert_eq!(cache.invalidate_pattern("search:*").await.unwrap(), 1);
    assert_eq!(search(&cache, &fits, "x").await, [format!("{}:x", fits.len())]);
    assert_eq!(CALLS.load(SeqCst), 22);
}

#[tokio::test]
async fn the_programmatic_api_refuses_keys_over_the_bound() {
    let server = RedisServer::start();
    let con = server.connection().await;
    let cache = redis_cache(&server).await;
    let long = format!("vehicle:{}", "7".repeat(2048));
    let minute = Duration::from_secs(60);

    let too_long = |result: Result<(), Error>| match result {
        Err(Error::InvalidKey { key, reason }) => {
            assert_eq!(key, long);
            assert!(reason.contains("max_key_bytes"), "{reason}");
        }
        other => panic!("a 2 KB key: {other:?}"),
    };
    too_long(cache.set(&long, &1u32, minute).await);
    too_long(cache.get::<u32>(&long).await.map(drop));
    too_long(cache.get_or_load(&long, minute, || async { Ok::<u32, Error>(1) }).await.map(drop));
    too_long(cache.invalidate(&long).await.map(drop));
    too_long(cache.rate_limit(&long, 3, minute).await.map(drop));
    match cache.invalidate_pattern(&format!("{long}*")).await {
        Err(Error::InvalidPattern { reason, .. }) => assert!(reason.contains("max_key_bytes")),
        other => panic!("a 2 KB pattern: {other:?}"),
    }
    assert!(all_keys(&con).await.is_empty(), "nothing reached Redis");

    // The bound itself is accepted, and can be raised.
    cache.set(&long[..1024], &1u32, minute).await.unwrap();
    let roomy = Cache::builder()
        .redis(server.url())
        .prefix("u:")
        .max_key_bytes(4096)
        .build()
        .await
        .unwrap();
    roomy.set(&long, &2u32, minute).await.unwrap();
    assert_eq!(roomy.get::<u32>(&long).await.unwrap(), Some(2));

    for absurd in [0, 1, 64, 127] {
        match Cache::builder().max_key_bytes(absurd).build().await {
            Err(Error::InvalidConfig(message)) => assert!(message.contains("max_key_bytes")),
            other => panic!("max_key_bytes({absurd}): {other:?}"),
        }
    }
}

#[derive(Debug)]
struct TooMany;

impl From<RateLimited> for TooMany {
    fn from(_: RateLimited) -> Self {
        TooMany
    }
}

#[rate_limit(key = "login:<user>", limit = 2, per = "1m", cache = cache)]
async fn login(cache: &Cache, user: &str) -> Result<(), TooMany> {
    Ok(())
}

#[tokio::test]
async fn rate_limit_keys_over_the_bound_are_hashed_and_keep_their_own_limit() {
    let server = RedisServer::start();
    let con = server.connection().await;
    let cache = redis_cache(&server).await;
    // Two 10 KB users differing only in their last byte.
    let alice = format!("{}a", "u".repeat(10 * 1024));
    let bob = format!("{}b", "u".repeat(10 * 1024));
    for user in [&alice, &bob] {
        assert!(login(&cache, user).await.is_ok());
        assert!(login(&cache, user).await.is_ok());
        assert!(login(&cache, user).await.is_err(), "the third call in a minute is refused");
    }
    let keys = all_keys(&con).await;
    assert_eq!(
        keys.len(),
        2,
        "one limiter per user: {:?}",
        keys.iter().map(|k| &k.0).collect::<Vec<_>>()
    );
    for (key, _) in &keys {
        assert!(key.len() <= PREFIX.len() + "#rate:{}".len() + 1024, "a {}-byte key", key.len());
    }
}

// ---- failure logs ------------------------------------------------------------------------------

/// One `tracing` event as captured: its level, message and fields (values cut at 1 KB, so
/// a flood of long keys does not fill the test's memory).
#[derive(Debug, Clone)]
struct Line {
    level: tracing::Level,
    fields: Vec<(String, String)>,
}

impl Line {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A `tracing` subscriber that keeps every event (a few lines instead of
/// `tracing-subscriber`, which this workspace does not depend on).
struct Capture(Arc<Mutex<Vec<Line>>>);

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let mut cut = value.len().min(1024);
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        self.0.push((field.name().to_owned(), value[..cut].to_owned()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Line { level: *event.metadata().level(), fields });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// A current-thread runtime: every event of the test is emitted on this thread, where the
// capturing subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_failed_calls_log_a_bounded_number_of_lines_with_clipped_keys() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "search:<q>", ttl = "15m", cache = cache)]
    async fn search(cache: &Cache, q: &str) -> usize {
        CALLS.fetch_add(1, SeqCst);
        q.len()
    }

    let lines = Arc::new(Mutex::new(Vec::new()));
    let _capture = tracing::subscriber::set_default(Capture(Arc::clone(&lines)));

    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .redis(server.url())
        .prefix(PREFIX)
        .max_key_bytes(16 * 1024) // so that a 10 KB key is looked up, and logged
        .command_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let q = "q".repeat(10 * 1024);
    assert_eq!(search(&cache, &q).await, q.len());
    server.kill();

    let started = Instant::now();
    for _ in 0..10_000 {
        assert_eq!(search(&cache, &q).await, q.len());
    }
    let took = started.elapsed();
    // After the interval, the next failure's line says how many were left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(search(&cache, &q).await, q.len());
    assert_eq!(CALLS.load(SeqCst), 10_002);

    let lines = lines.lock().unwrap().clone();
    let warns: Vec<&Line> = lines.iter().filter(|l| l.level == tracing::Level::WARN).collect();
    let read_failed: Vec<&Line> =
        warns.iter().copied().filter(|l| l.field("message") == Some("cache read failed")).collect();
    // One line per kind per second: the calls took `took`, plus the one after the pause.
    let seconds = took.as_secs() as usize + 2;
    assert!(
        !read_failed.is_empty() && read_failed.len() <= seconds + 1,
        "{} `cache read failed` lines for 10,001 failed reads in {took:?}",
        read_failed.len()
    );
    assert!(warns.len() <= 6 * (seconds + 1), "{} warn lines in all", warns.len());
    let suppressed: u64 =
        read_failed.iter().filter_map(|l| l.field("suppressed")?.parse::<u64>().ok()).sum();
    assert!(
        suppressed + read_failed.len() as u64 >= 10_000,
        "the lines count the left-out failures: {suppressed} left out, {} written",
        read_failed.len()
    );
    eprintln!(
        "10,001 failed reads in {took:?} (+1.1 s pause): {} `cache read failed` lines, {} warn lines in all, {suppressed} counted as left out",
        read_failed.len(),
        warns.len()
    );
    for line in &warns {
        let Some(key) = line.field("key") else { continue };
        assert!(key.len() <= 128 + 32, "a logged key of {} bytes: {line:?}", key.len());
        assert!(key.ends_with("…(10247 bytes)"), "the key is clipped with its length: {key}");
    }
}
