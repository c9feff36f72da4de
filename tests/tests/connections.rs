//! Production connections against real servers the tests start: TLS (`rediss://`, a CA
//! given with `tls_root_cert`, mutual TLS with `tls_client_cert`, a wrong CA), refused
//! credentials and their rotation while a cache runs, the README's least-privilege
//! `ACL SETUSER` line on a fresh server, a missing permission in `health()`, a silent port
//! and a peer that is not Redis.
//!
//! Every log event of this binary is captured (a global `tracing` subscriber), and the tests
//! that use a password check that it appears in no error, `Debug` output or log line.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_runtime::{BreakerState, Cache, CacheBuilder, ErrorKind};
use cache_tests::tls::{Certificates, TlsRedisCluster, TlsRedisServer};
use cache_tests::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every password the tests use contains this.
const SECRET: &str = "s3cret-Pw";

// ---------------------------------------------------------------------------------------
// Log capture

/// Every event and span field of this process, as text.
fn logs() -> &'static Mutex<String> {
    static LOGS: OnceLock<Mutex<String>> = OnceLock::new();
    LOGS.get_or_init(|| {
        tracing::subscriber::set_global_default(Capture).expect("the only global subscriber");
        Mutex::new(String::new())
    })
}

struct Capture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attributes: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut line = String::from("span");
        attributes.record(&mut Fields(&mut line));
        logs().lock().unwrap().push_str(&(line + "\n"));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut line = String::from("record");
        values.record(&mut Fields(&mut line));
        logs().lock().unwrap().push_str(&(line + "\n"));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = format!("{}", event.metadata().level());
        event.record(&mut Fields(&mut line));
        logs().lock().unwrap().push_str(&(line + "\n"));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Texts the test produced (errors, `Debug` output), checked with the logs.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn add(&mut self, text: impl Into<String>) {
        self.0.push(text.into());
    }

    /// No output and no log line so far shows [`SECRET`].
    fn assert_no_password(&self) {
        for text in &self.0 {
            assert!(!text.contains(SECRET), "a password in: {text}");
        }
        let logs = logs().lock().unwrap();
        assert!(!logs.contains(SECRET), "a password in the logs:\n{logs}");
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

const PREFIX: &str = "conn:";

fn builder() -> CacheBuilder {
    let _ = logs();
    Cache::builder()
        .prefix(PREFIX)
        .connect_timeout(Duration::from_millis(1000))
        .command_timeout(Duration::from_millis(1000))
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_live(cache: &Cache) {
    eventually("the near cache goes live", Duration::from_secs(10), || async {
        cache.near_cache_live()
    })
    .await;
}

/// Every feature, between two caches on the same deployment: `a` has a near cache. Reads
/// and writes, a fill, near-cache hits and their eviction by `b`'s write (tracking), key and
/// pattern invalidation, a lock whose release wakes a waiter in the other cache (pub/sub),
/// and a rate limit that refuses the call over it.
async fn every_feature_works(a: &Cache, b: &Cache) {
    let ttl = Duration::from_secs(60);
    wait_live(a).await;
    a.set("v:1", &1_u64, ttl).await.expect("set");
    assert_eq!(b.get::<u64>("v:1").await.expect("get"), Some(1));

    let loaded = a.get_or_load("v:2", ttl, || async { Ok::<_, cache_runtime::Error>(2_u64) }).await;
    assert_eq!(loaded.expect("get_or_load"), 2);
    assert_eq!(b.get::<u64>("v:2").await.expect("get"), Some(2), "the fill was stored");

    // Near cache: a hit from memory, evicted by the other cache's write.
    assert_eq!(a.get::<u64>("v:1").await.unwrap(), Some(1));
    assert_eq!(a.get::<u64>("v:1").await.unwrap(), Some(1));
    assert!(a.stats().near_hits >= 1, "{:?}", a.stats());
    b.set("v:1", &10_u64, ttl).await.expect("set");
    eventually("the near cache hears b's write", Duration::from_secs(2), || async {
        a.get::<u64>("v:1").await.unwrap() == Some(10)
    })
    .await;

    // Invalidation by key and by pattern.
    assert_eq!(b.invalidate("v:2").await.expect("invalidate"), 1);
    assert_eq!(a.get::<u64>("v:2").await.unwrap(), None);
    a.set("v:p:1", &1_u64, ttl).await.unwrap();
    a.set("v:p:2", &2_u64, ttl).await.unwrap();
    assert_eq!(b.invalidate_pattern("v:p:*").await.expect("pattern"), 2);
    assert_eq!(a.get::<u64>("v:p:1").await.unwrap(), None);
    assert_eq!(a.get::<u64>("v:p:2").await.unwrap(), None);

    // A lock: the waiter in `b` is woken by the release (pub/sub), long before the lease.
    let lease = Duration::from_secs(20);
    let guard = a.lock("job", lease, Duration::from_secs(1)).await.expect("lock");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let guard = b.lock("job", lease, Duration::from_secs(15)).await;
            (guard, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    assert!(guard.release().await.expect("release"));
    let (taken, at) = waiter.await.unwrap();
    taken.expect("the waiter takes the lock").release().await.unwrap();
    let woken_after = at.duration_since(released);
    assert!(woken_after < Duration::from_secs(5), "woken after {woken_after:?}, not by pub/sub");

    // A rate limit, shared by both caches: the third call in the window is refused.
    assert!(a.rate_limit("rl:1", 2, ttl).await.unwrap().allowed);
    assert!(b.rate_limit("rl:1", 2, ttl).await.unwrap().allowed);
    assert!(!a.rate_limit("rl:1", 2, ttl).await.unwrap().allowed, "the limit holds");

    for cache in [a, b] {
        assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());
        let health = cache.health().await;
        assert!(health.reachable, "{health:?}");
        assert!(health.missing_permissions.is_empty(), "{health:?}");
        assert_eq!(health.near_cache_error, None, "{health:?}");
    }
}

// ---------------------------------------------------------------------------------------
// TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_works_over_tls_with_a_given_ca() {
    let certificates = Certificates::generate();
    let server = TlsRedisServer::start(&certificates, false, &[]);
    let cache = |near: bool| {
        let builder = builder().redis(server.tls_url()).tls_root_cert(certificates.ca());
        let builder = if near { builder.near_cache(1 << 20) } else { builder };
        builder.build()
    };
    let (a, b) = (cache(true).await.expect("builds"), cache(false).await.expect("builds"));
    every_feature_works(&a, &b).await;
}

/// A cluster over TLS: the data connection, the pub/sub wake-ups and the near cache's
/// tracking connections (one per primary, addresses from `CLUSTER SLOTS`) all keep TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_works_on_a_tls_cluster() {
    let certificates = Certificates::generate();
    let cluster = TlsRedisCluster::start(&certificates, 3);
    let cache = |near: bool| {
        let builder = builder().redis_cluster(cluster.tls_urls()).tls_root_cert(certificates.ca());
        let builder = if near { builder.near_cache(1 << 20) } else { builder };
        builder.build()
    };
    let (a, b) = (cache(true).await.expect("builds"), cache(false).await.expect("builds"));
    every_feature_works(&a, &b).await;
    assert_eq!(cluster.nodes().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let certificates = Certificates::generate();
    let server = TlsRedisServer::start(&certificates, true, &[]);
    let tls = |builder: CacheBuilder| {
        builder
            .redis(server.tls_url())
            .tls_root_cert(certificates.ca())
            .tls_client_cert(certificates.pem("client.crt"), certificates.pem("client.key"))
    };
    let a = tls(builder().near_cache(1 << 20)).build().await.expect("builds");
    let b = tls(builder()).build().await.expect("builds");
    every_feature_works(&a, &b).await;
    let printed = format!("{:?}", tls(builder()));
    let key = String::from_utf8(certificates.pem("client.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(!printed.contains(key_line), "the private key in Debug: {printed}");

    // Without the client certificate the server refuses the handshake: a connection error.
    let anonymous = builder()
        .redis(server.tls_url())
        .tls_root_cert(certificates.ca())
        .build()
        .await
        .expect("builds while Redis refuses");
    let error = anonymous.get::<u64>("v:1").await.expect_err("no client certificate");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
    assert!(!anonymous.health().await.reachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_clear_connection_error_that_opens_the_breaker() {
    let certificates = Certificates::generate();
    let server = TlsRedisServer::start(&certificates, false, &[]);
    let cache = builder()
        .redis(server.tls_url())
        .tls_root_cert(certificates.pem("other-ca.crt"))
        .build()
        .await
        .expect("builds");
    let health = cache.health().await;
    assert!(!health.reachable);
    let why = health.error.unwrap_or_default();
    assert!(why.contains("certificate") || why.contains("UnknownIssuer"), "{why}");
    for _ in 0..3 {
        let error = cache.get::<u64>("v:1").await.expect_err("the certificate is not trusted");
        assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
    }
    assert_eq!(cache.breaker_state(), BreakerState::Open);

    // Without `tls_root_cert` only the system roots are trusted: not the test's CA.
    let system_roots = builder().redis(server.tls_url()).build().await.expect("builds");
    let error = system_roots.get::<u64>("v:1").await.expect_err("a CA no system trusts");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");

    // A plain URL with TLS settings is a mistake caught at build.
    let plain = builder().redis(server.server.url()).tls_root_cert(certificates.ca()).build();
    let error = plain.await.expect_err("a CA with a plain URL");
    assert!(error.to_string().contains("rediss://"), "{error}");
}

// ---------------------------------------------------------------------------------------
// Credentials

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_is_picked_up_without_a_restart() {
    let mut seen = Seen::default();
    let old = format!("old-{SECRET}");
    let new = format!("new-{SECRET}");
    let server = RedisServer::start();
    let mut admin = server.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(&old)
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://:{new}@127.0.0.1:{}/", server.port());
    let builder = builder().redis(&url);
    seen.add(format!("{builder:?}"));
    let cache = builder.build().await.expect("builds while the password is refused");

    // Refused: failures like an unreachable server, and the breaker opens.
    for _ in 0..3 {
        let error = cache.set("v:1", &1_u64, Duration::from_secs(60)).await.expect_err("refused");
        assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
        seen.add(format!("{error} {error:?}"));
    }
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    let health = cache.health().await;
    assert!(!health.reachable, "{health:?}");
    seen.add(format!("{health:?}"));

    // The rotation, on the running server (the admin connection stays authenticated): the
    // new password is now the one.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(&new)
        .query_async(&mut admin)
        .await
        .unwrap();

    // The cache recovers by itself (the breaker's probe, then a fresh connection).
    eventually("the cache works with the rotated password", Duration::from_secs(10), || async {
        cache.set("v:1", &1_u64, Duration::from_secs(60)).await.is_ok()
            && cache.get::<u64>("v:1").await.is_ok_and(|found| found == Some(1))
    })
    .await;
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    assert!(cache.health().await.reachable);
    // The eviction policy was read once the server accepted the password, not pinned at
    // "CONFIG refused" while it refused it.
    let logs = logs().lock().unwrap().clone();
    assert!(logs.contains("Redis never evicts keys"), "{logs}");
    assert!(!logs.contains("CONFIG GET maxmemory* refused"), "{logs}");

    // A URL that does not parse: the error names it without the password.
    let bad = Cache::builder().redis(format!("redis://app:{SECRET}@host:notaport")).build();
    let error = bad.await.expect_err("not a port");
    seen.add(format!("{error} {error:?}"));
    assert!(error.to_string().contains("app:***@host"), "{error}");
    seen.assert_no_password();
}

// ---------------------------------------------------------------------------------------
// Least privilege

/// The README's `ACL SETUSER` line (the one in "Deploying"), for user `name` with password
/// `password` and the keys and channels of [`PREFIX`].
fn readme_acl_line(name: &str, password: &str) -> Vec<String> {
    let readme = include_str!("../../README.md");
    let line = readme
        .lines()
        .find(|line| line.starts_with("ACL SETUSER cache "))
        .expect("the README has an `ACL SETUSER cache ...` line");
    line.split_whitespace()
        .map(|word| match word {
            "cache" => name.to_owned(),
            ">PASSWORD" => format!(">{password}"),
            word => word.replace("okla:", PREFIX),
        })
        .collect()
}

async fn acl_setuser(server: &RedisServer, words: &[String]) {
    let mut admin = server.connection().await;
    let mut cmd = redis::cmd(&words[0]);
    for word in &words[1..] {
        cmd.arg(word);
    }
    let _: () = cmd.query_async(&mut admin).await.expect("ACL SETUSER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_line_is_enough_for_every_feature_on_a_fresh_server() {
    let mut seen = Seen::default();
    let server = RedisServer::start();
    let password = format!("acl-{SECRET}");
    acl_setuser(&server, &readme_acl_line("app", &password)).await;
    let url = format!("redis://app:{password}@127.0.0.1:{}/", server.port());
    let a = builder().redis(&url).near_cache(1 << 20).build().await.expect("builds");
    let b = builder().redis(&url).build().await.expect("builds");
    every_feature_works(&a, &b).await;
    seen.add(format!("{:?}", a.health().await));
    seen.assert_no_password();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_shows_in_health_and_the_near_cache_says_why_it_is_off() {
    let server = RedisServer::start();
    let password = format!("acl-{SECRET}");
    let mut words = readme_acl_line("app", &password);
    // Not `-config|get`: the rotation test checks that no line of this binary says CONFIG
    // was refused.
    words.push("-scan".into());
    words.push("-info".into());
    words.push("-client|tracking".into());
    acl_setuser(&server, &words).await;
    let url = format!("redis://app:{password}@127.0.0.1:{}/", server.port());
    let cache = builder().redis(&url).near_cache(1 << 20).build().await.expect("builds");

    // Reads and writes still work; what is missing is named, with what it costs.
    cache.set("v:1", &1_u64, Duration::from_secs(60)).await.expect("set");
    assert_eq!(cache.get::<u64>("v:1").await.unwrap(), Some(1));
    let health = cache.health().await;
    assert!(health.reachable, "{health:?}");
    let missing = health.missing_permissions.join("\n");
    assert!(missing.contains("+scan: "), "{missing}");
    assert!(missing.contains("+info: "), "{missing}");
    assert!(missing.contains("+client|tracking: the near cache"), "{missing}");
    assert_eq!(health.missing_permissions.len(), 3, "{missing}");
    assert_eq!(health.used_memory_bytes, None, "no INFO figures without +info");
    eventually("the near cache says why it is off", Duration::from_secs(5), || async {
        cache.health().await.near_cache_error.is_some_and(|why| why.contains("permission"))
    })
    .await;
    assert!(!cache.near_cache_live());
    let logs = logs().lock().unwrap().clone();
    assert!(logs.contains("lacks permissions the cache needs"), "{logs}");
    assert!(logs.contains("Redis refused client tracking"), "{logs}");
    // Retried slowly, and warned once.
    assert_eq!(logs.matches("Redis refused client tracking").count(), 1, "{logs}");
}

// ---------------------------------------------------------------------------------------
// A silent port, a peer that is not Redis

/// A TCP server on a free port that accepts connections and answers each with `reply`
/// (`None`: never answers) after reading what the client sent.
async fn fake_server(reply: Option<&'static [u8]>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buffer = [0_u8; 1024];
                loop {
                    match socket.read(&mut buffer).await {
                        Ok(1..) => {
                            if let Some(reply) = reply {
                                let _ = socket.write_all(reply).await;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_port_costs_the_first_call_one_connect_timeout() {
    let port = fake_server(None).await;
    let connect_timeout = Duration::from_millis(800);
    let cache = Cache::builder()
        .prefix(PREFIX)
        .redis(format!("redis://127.0.0.1:{port}/"))
        .connect_timeout(connect_timeout)
        .command_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("builds");
    let started = Instant::now();
    let error = cache.get::<u64>("v:1").await.expect_err("nothing answers");
    let took = started.elapsed();
    assert!(matches!(error.kind(), ErrorKind::Timeout | ErrorKind::Connection), "{error}");
    assert!(took < connect_timeout + connect_timeout / 2, "the first call took {took:?}");
    let loaded = cache
        .get_or_load("v:2", Duration::from_secs(60), || async {
            Ok::<_, cache_runtime::Error>(2_u64)
        })
        .await;
    assert_eq!(loaded.expect("the body answers"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_redis_is_a_connection_error_that_opens_the_breaker() {
    let port = fake_server(Some(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")).await;
    let cache = builder().redis(format!("redis://127.0.0.1:{port}/")).build().await.unwrap();
    for _ in 0..3 {
        let error = cache.get::<u64>("v:1").await.expect_err("not Redis");
        assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
    }
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    let loaded = cache
        .get_or_load("v:2", Duration::from_secs(60), || async {
            Ok::<_, cache_runtime::Error>(2_u64)
        })
        .await;
    assert_eq!(loaded.expect("the body answers"), 2);
}
