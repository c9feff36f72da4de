//! The admin router (`cache_runtime::admin`, feature `axum`) over real HTTP.
//!
//! Each test serves `admin::router` with `axum::serve` on a free loopback port and talks to it
//! with the small HTTP/1.1 client of `cache_tests::http`, which sends request paths exactly as
//! written, so the percent-encoding of keys and patterns is under the test's control. The
//! routes run over the memory store and over a private `redis-server`
//! ([`cache_tests::RedisServer`], never a shared one); with Redis, what was removed is checked
//! on the server itself too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::admin::{self, axum};
use cache_runtime::{cached, Cache, Error};
use cache_tests::http::{self, Response};
use cache_tests::RedisServer;
use serde_json::json;

/// The admin token of every router in these tests.
const TOKEN: &str = "0123456789abcdef-test-admin-token";

/// A cache served by the admin router, with the Redis server behind it, if any.
struct Admin {
    cache: Cache,
    addr: SocketAddr,
    server: Option<RedisServer>,
}

impl Admin {
    /// The router over the memory store.
    async fn memory() -> Admin {
        let cache = Cache::memory();
        Admin { addr: serve_admin(&cache).await, cache, server: None }
    }

    /// The router over a cache with the prefix `t:` on a private Redis.
    async fn redis() -> Admin {
        let server = RedisServer::start();
        let cache = redis_cache(&server, "t:").await;
        Admin { addr: serve_admin(&cache).await, cache, server: Some(server) }
    }

    async fn get(&self, path: &str) -> Response {
        http::get(self.addr, path).await
    }

    async fn post(&self, path: &str, token: Option<&str>) -> Response {
        http::post(self.addr, path, token).await
    }

    /// Asserts whether `key` (with the prefix) exists on the Redis server. Does nothing on the
    /// memory store, whose tests check by calling the cached functions instead.
    async fn assert_stored(&self, key: &str, expected: bool) {
        let Some(server) = &self.server else { return };
        let mut con = server.connection().await;
        let exists: u64 = redis::cmd("EXISTS").arg(key).query_async(&mut con).await.unwrap();
        assert_eq!(exists == 1, expected, "is {key} stored?");
    }
}

/// Serves `router` on a free loopback port until the test ends.
async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn serve_admin(cache: &Cache) -> SocketAddr {
    serve(admin::router(cache.clone(), TOKEN).expect("a non-empty token is accepted")).await
}

async fn redis_cache(server: &RedisServer, prefix: &str) -> Cache {
    Cache::builder().redis(server.url()).prefix(prefix).build().await.unwrap()
}

#[cached(key = "vehicle:<id>", ttl = "5m", cache = cache)]
async fn vehicle(cache: &Cache, runs: &AtomicUsize, id: u64) -> String {
    runs.fetch_add(1, SeqCst);
    format!("vehicle {id}")
}

#[cached(key = "homepage:<section>", ttl = "5m", cache = cache)]
async fn homepage(cache: &Cache, runs: &AtomicUsize, section: &str) -> String {
    runs.fetch_add(1, SeqCst);
    format!("<h1>{section}</h1>")
}

/// Asserts `response` is `{"removed": removed}` with 200.
#[track_caller]
fn assert_removed(response: &Response, removed: u64) {
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"), "{response:?}");
    assert_eq!(response.json(), json!({ "removed": removed }), "{response:?}");
}

/// Asserts `response` has `status` and a JSON `{"error": "..."}` mentioning `needle`.
#[track_caller]
fn assert_error(response: &Response, status: u16, needle: &str) {
    assert_eq!(response.status, status, "{response:?}");
    let body = response.json();
    let message = body["error"].as_str().unwrap_or_else(|| panic!("no error text: {body}"));
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
}

#[test]
fn an_empty_token_or_one_with_whitespace_is_refused() {
    for token in ["", " ", "two words", "line\n"] {
        let built = admin::router(Cache::memory(), token);
        assert!(matches!(built, Err(Error::InvalidConfig(_))), "{token:?}");
    }
    assert!(admin::router(Cache::memory(), String::from("x")).is_ok());
}

async fn stats_reflect_cached_calls(admin: Admin) {
    let runs = AtomicUsize::new(0);
    vehicle(&admin.cache, &runs, 1).await;
    vehicle(&admin.cache, &runs, 1).await;
    vehicle(&admin.cache, &runs, 1).await;
    homepage(&admin.cache, &runs, "news").await;

    let response = admin.get("/cache/stats").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    let stats = response.json();
    let vehicle = &stats["functions"]["vehicle"];
    assert_eq!(vehicle["hits"], 2, "{stats}");
    assert_eq!(vehicle["misses"], 1, "{stats}");
    assert_eq!(vehicle["loads"], 1, "{stats}");
    assert_eq!(vehicle["errors"], 0, "{stats}");
    assert_eq!(stats["functions"]["homepage"]["loads"], 1, "{stats}");
    assert_eq!(stats["total"]["hits"], 2, "{stats}");
    assert_eq!(stats["total"]["misses"], 2, "{stats}");
    assert_eq!(stats["hit_rate"], 0.5, "{stats}");
    // Reads are open: no token needed.
}

#[tokio::test]
async fn stats_reflect_cached_calls_on_memory() {
    stats_reflect_cached_calls(Admin::memory().await).await;
}

#[tokio::test]
async fn stats_reflect_cached_calls_on_redis() {
    stats_reflect_cached_calls(Admin::redis().await).await;
}

async fn metrics_are_prometheus_text(admin: Admin) {
    let runs = AtomicUsize::new(0);
    vehicle(&admin.cache, &runs, 7).await;
    vehicle(&admin.cache, &runs, 7).await;

    let response = admin.get("/metrics").await;
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("content-type").unwrap();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    assert_eq!(content_type, admin::PROMETHEUS_CONTENT_TYPE);
    let text = &response.body;
    for line in [
        "cache_hits_total{function=\"vehicle\"} 1",
        "cache_misses_total{function=\"vehicle\"} 1",
        "cache_loads_total{function=\"vehicle\"} 1",
        "# TYPE cache_load_duration_seconds histogram",
        "cache_load_duration_seconds_count{function=\"vehicle\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_on_memory() {
    metrics_are_prometheus_text(Admin::memory().await).await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_on_redis() {
    metrics_are_prometheus_text(Admin::redis().await).await;
}

async fn invalidate_needs_the_token_and_removes_the_key(admin: Admin) {
    let runs = AtomicUsize::new(0);
    let cache = &admin.cache;
    vehicle(cache, &runs, 42).await;
    assert_eq!(runs.load(SeqCst), 1);
    admin.assert_stored("t:vehicle:42", true).await;

    // Refused: no header, wrong token, another scheme, a prefix or an extension of the token.
    let longer = format!("{TOKEN}x");
    let refused = [
        (None, "no header"),
        (Some("Bearer wrong-token"), "wrong token"),
        (Some(&format!("Basic {TOKEN}")), "another scheme"),
        (Some(&format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])), "a prefix of the token"),
        (Some(&format!("Bearer {longer}")), "the token and more"),
        (Some(TOKEN), "no scheme"),
    ];
    for (authorization, what) in refused {
        let response =
            http::request(admin.addr, "POST", "/cache/invalidate/vehicle:42", authorization).await;
        assert_error(&response, 401, "Authorization: Bearer");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    // Nothing was removed: the next call is a hit.
    admin.assert_stored("t:vehicle:42", true).await;
    assert_eq!(vehicle(cache, &runs, 42).await, "vehicle 42");
    assert_eq!(runs.load(SeqCst), 1, "still cached after the refused requests");

    // With the token: removed, and the next call runs its body.
    assert_removed(&admin.post("/cache/invalidate/vehicle:42", Some(TOKEN)).await, 1);
    admin.assert_stored("t:vehicle:42", false).await;
    assert_eq!(vehicle(cache, &runs, 42).await, "vehicle 42");
    assert_eq!(runs.load(SeqCst), 2, "the body ran again");
    assert_removed(&admin.post("/cache/invalidate/vehicle:43", Some(TOKEN)).await, 0);

    // The `:` percent-encoded, and the scheme in lower case.
    let response = http::request(
        admin.addr,
        "POST",
        "/cache/invalidate/vehicle%3A42",
        Some(&format!("bearer {TOKEN}")),
    )
    .await;
    assert_removed(&response, 1);
    vehicle(cache, &runs, 42).await;
    assert_eq!(runs.load(SeqCst), 3);

    // A key whose placeholder value was percent-encoded when rendered (`a b` -> `a%20b`):
    // its `%` travels as `%25`.
    homepage(cache, &runs, "a b").await;
    admin.assert_stored("t:homepage:a%20b", true).await;
    assert_removed(&admin.post("/cache/invalidate/homepage:a%2520b", Some(TOKEN)).await, 1);
    admin.assert_stored("t:homepage:a%20b", false).await;
    // Sent once-encoded it names `homepage:a b`, which is no valid key.
    let response = admin.post("/cache/invalidate/homepage:a%20b", Some(TOKEN)).await;
    assert_error(&response, 400, "whitespace");

    // A `/` in a key (set through the programmatic API), as it is or encoded.
    for path in ["/cache/invalidate/page:/home/a", "/cache/invalidate/page:%2Fhome%2Fa"] {
        cache.set("page:/home/a", "<html/>", Duration::from_secs(60)).await.unwrap();
        admin.assert_stored("t:page:/home/a", true).await;
        assert_removed(&admin.post(path, Some(TOKEN)).await, 1);
        admin.assert_stored("t:page:/home/a", false).await;
        assert_eq!(cache.get::<String>("page:/home/a").await.unwrap(), None, "{path}");
    }

    // The counters saw the removals.
    let stats = admin.get("/cache/stats").await.json();
    assert_eq!(stats["functions"]["direct"]["invalidated"], 5, "{stats}");
}

#[tokio::test]
async fn invalidate_needs_the_token_and_removes_the_key_on_memory() {
    invalidate_needs_the_token_and_removes_the_key(Admin::memory().await).await;
}

#[tokio::test]
async fn invalidate_needs_the_token_and_removes_the_key_on_redis() {
    invalidate_needs_the_token_and_removes_the_key(Admin::redis().await).await;
}

async fn invalidate_pattern_removes_only_matching_keys(admin: Admin) {
    let (vehicles, pages) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let cache = &admin.cache;
    let fill = || async {
        homepage(cache, &pages, "news").await;
        homepage(cache, &pages, "sports").await;
        vehicle(cache, &vehicles, 1).await;
    };
    fill().await;
    assert_eq!((vehicles.load(SeqCst), pages.load(SeqCst)), (1, 2));

    let response = admin.post("/cache/invalidate-pattern/homepage:*", None).await;
    assert_error(&response, 401, "Bearer");
    fill().await;
    assert_eq!((vehicles.load(SeqCst), pages.load(SeqCst)), (1, 2), "nothing removed");

    assert_removed(&admin.post("/cache/invalidate-pattern/homepage:*", Some(TOKEN)).await, 2);
    admin.assert_stored("t:homepage:news", false).await;
    admin.assert_stored("t:vehicle:1", true).await;
    fill().await;
    assert_eq!((vehicles.load(SeqCst), pages.load(SeqCst)), (1, 4), "only the pages reloaded");

    // The same pattern with `*`, then `:` too, percent-encoded.
    for path in
        ["/cache/invalidate-pattern/homepage:%2A", "/cache/invalidate-pattern/homepage%3A%2a"]
    {
        assert_removed(&admin.post(path, Some(TOKEN)).await, 2);
        fill().await;
    }
    assert_eq!((vehicles.load(SeqCst), pages.load(SeqCst)), (1, 8));

    // `?` is a glob character, so it must be encoded (a raw `?` starts the query string).
    assert_removed(&admin.post("/cache/invalidate-pattern/homepage:new%3F", Some(TOKEN)).await, 1);
    assert_removed(&admin.post("/cache/invalidate-pattern/homepage:[ns]*", Some(TOKEN)).await, 1);
    assert_removed(&admin.post("/cache/invalidate-pattern/nothing:*", Some(TOKEN)).await, 0);
    admin.assert_stored("t:vehicle:1", true).await;
}

#[tokio::test]
async fn invalidate_pattern_removes_only_matching_keys_on_memory() {
    invalidate_pattern_removes_only_matching_keys(Admin::memory().await).await;
}

#[tokio::test]
async fn invalidate_pattern_removes_only_matching_keys_on_redis() {
    invalidate_pattern_removes_only_matching_keys(Admin::redis().await).await;
}

async fn bad_keys_and_patterns_are_400(admin: Admin) {
    let runs = AtomicUsize::new(0);
    homepage(&admin.cache, &runs, "news").await;

    for (path, needle) in [
        ("/cache/invalidate-pattern/a[", "invalid pattern \"a[\""),
        ("/cache/invalidate-pattern/a%5B", "invalid pattern \"a[\""),
        ("/cache/invalidate-pattern/homepage:*%5C", "invalid pattern"),
        ("/cache/invalidate-pattern/home%20page:*", "invalid pattern"),
        ("/cache/invalidate/a%20b", "invalid cache key \"a b\""),
        ("/cache/invalidate/%23idx:homepage:", "reserved"),
        ("/cache/invalidate/%FF", "UTF-8"),
        ("/cache/invalidate-pattern/%FF*", "UTF-8"),
    ] {
        let response = admin.post(path, Some(TOKEN)).await;
        assert_error(&response, 400, needle);
    }
    // Unauthenticated, a bad pattern is refused for the token before anything else.
    assert_error(&admin.post("/cache/invalidate-pattern/a[", None).await, 401, "Bearer");

    // An empty key or pattern is no route.
    assert_eq!(admin.post("/cache/invalidate/", Some(TOKEN)).await.status, 404);
    assert_eq!(admin.post("/cache/invalidate-pattern/", Some(TOKEN)).await.status, 404);
    // Mutations are POST only.
    assert_eq!(admin.get("/cache/invalidate/homepage:news").await.status, 405);
    assert_eq!(admin.get("/cache/clear").await.status, 405);
    assert_eq!(admin.post("/cache/stats", Some(TOKEN)).await.status, 405);

    homepage(&admin.cache, &runs, "news").await;
    assert_eq!(runs.load(SeqCst), 1, "nothing was removed");
}

#[tokio::test]
async fn bad_keys_and_patterns_are_400_on_memory() {
    bad_keys_and_patterns_are_400(Admin::memory().await).await;
}

#[tokio::test]
async fn bad_keys_and_patterns_are_400_on_redis() {
    bad_keys_and_patterns_are_400(Admin::redis().await).await;
}

#[tokio::test]
async fn clear_removes_this_prefix_only_on_redis() {
    let admin = Admin::redis().await;
    let server = admin.server.as_ref().unwrap();
    let neighbour = redis_cache(server, "u:").await;
    let (mine, theirs) = (AtomicUsize::new(0), AtomicUsize::new(0));
    for id in 1..=3 {
        vehicle(&admin.cache, &mine, id).await;
        vehicle(&neighbour, &theirs, id).await;
    }

    assert_error(&admin.post("/cache/clear", None).await, 401, "Bearer");
    admin.assert_stored("t:vehicle:1", true).await;

    assert_removed(&admin.post("/cache/clear", Some(TOKEN)).await, 3);
    for id in 1..=3 {
        admin.assert_stored(&format!("t:vehicle:{id}"), false).await;
        admin.assert_stored(&format!("u:vehicle:{id}"), true).await;
        vehicle(&admin.cache, &mine, id).await;
        vehicle(&neighbour, &theirs, id).await;
    }
    assert_eq!((mine.load(SeqCst), theirs.load(SeqCst)), (6, 3), "the other prefix stayed");
}

#[tokio::test]
async fn clear_removes_this_cache_only_on_memory() {
    let admin = Admin::memory().await;
    let neighbour = Cache::memory();
    let (mine, theirs) = (AtomicUsize::new(0), AtomicUsize::new(0));
    for id in 1..=3 {
        vehicle(&admin.cache, &mine, id).await;
        vehicle(&neighbour, &theirs, id).await;
    }
    assert_removed(&admin.post("/cache/clear", Some(TOKEN)).await, 3);
    for id in 1..=3 {
        vehicle(&admin.cache, &mine, id).await;
        vehicle(&neighbour, &theirs, id).await;
    }
    assert_eq!((mine.load(SeqCst), theirs.load(SeqCst)), (6, 3));
}

#[tokio::test]
async fn clear_on_redis_without_a_prefix_is_409_and_removes_nothing() {
    let server = RedisServer::start();
    let cache = Cache::builder().redis(server.url()).build().await.unwrap();
    let addr = serve_admin(&cache).await;
    let runs = AtomicUsize::new(0);
    vehicle(&cache, &runs, 1).await;

    let response = http::post(addr, "/cache/clear", Some(TOKEN)).await;
    assert_error(&response, 409, "prefix");
    vehicle(&cache, &runs, 1).await;
    assert_eq!(runs.load(SeqCst), 1, "still cached");
}

#[tokio::test]
async fn health_is_200_on_memory() {
    let admin = Admin::memory().await;
    homepage(&admin.cache, &AtomicUsize::new(0), "news").await;
    let response = admin.get("/cache/health").await;
    assert_eq!(response.status, 200, "{response:?}");
    let health = response.json();
    assert_eq!(health["store"], "memory", "{health}");
    assert_eq!(health["reachable"], true, "{health}");
    assert_eq!(health["entries"], 1, "{health}");
    assert!(health["used_memory_bytes"].as_u64().unwrap() > 0, "{health}");
}

#[tokio::test]
async fn health_is_200_on_redis_then_503_once_it_is_killed() {
    let mut admin = Admin::redis().await;
    let started = Instant::now();
    let response = admin.get("/cache/health").await;
    let took = started.elapsed();
    assert_eq!(response.status, 200, "{response:?}");
    let health = response.json();
    assert_eq!(health["store"], "redis", "{health}");
    assert_eq!(health["reachable"], true, "{health}");
    assert_eq!(health["breaker"], "closed", "{health}");
    // A real round trip: not zero, and within the HTTP request that asked for it.
    let round_trip = health["round_trip_ms"].as_f64().unwrap_or_else(|| panic!("{health}"));
    assert!(round_trip > 0.0, "{health}");
    assert!(round_trip <= took.as_secs_f64() * 1000.0, "{health}, request took {took:?}");
    assert!(health["used_memory_bytes"].as_u64().unwrap() > 0, "{health}");
    assert!(health["connected_clients"].as_u64().unwrap() >= 1, "{health}");
    assert_eq!(health["error"], json!(null), "{health}");

    admin.server.as_mut().unwrap().kill();
    let started = Instant::now();
    let response = admin.get("/cache/health").await;
    let took = started.elapsed();
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    let health = response.json();
    assert_eq!(health["reachable"], false, "{health}");
    assert!(health["error"].as_str().is_some_and(|e| !e.is_empty()), "{health}");
    assert_eq!(health["round_trip_ms"], json!(null), "{health}");
    assert!(took < Duration::from_secs(2), "health answered in {took:?}");
}

#[tokio::test]
async fn health_round_trip_is_the_time_redis_takes_to_answer() {
    let server = RedisServer::start();
    // A command timeout well above the pause below.
    let cache = Cache::builder()
        .redis(server.url())
        .prefix("t:")
        .command_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let admin = Admin { addr: serve_admin(&cache).await, cache, server: Some(server) };
    let mut con = admin.server.as_ref().unwrap().connection().await;
    // Redis holds every client's commands for a second: the health check's PING waits.
    let _: () =
        redis::cmd("CLIENT").arg("PAUSE").arg(1000).arg("ALL").query_async(&mut con).await.unwrap();
    let started = Instant::now();
    let response = admin.get("/cache/health").await;
    let took = started.elapsed();
    assert_eq!(response.status, 200, "{response:?}");
    let health = response.json();
    let round_trip = health["round_trip_ms"].as_f64().unwrap_or_else(|| panic!("{health}"));
    // Half the pause leaves the PING half a second to be sent on a loaded machine.
    assert!(round_trip >= 500.0, "{health}, request took {took:?}");
    assert!(round_trip <= took.as_secs_f64() * 1000.0, "{health}, request took {took:?}");
}

#[tokio::test]
async fn mutations_are_503_when_redis_is_down() {
    let mut admin = Admin::redis().await;
    let runs = AtomicUsize::new(0);
    vehicle(&admin.cache, &runs, 1).await;
    admin.server.as_mut().unwrap().kill();

    // Enough requests to open the circuit breaker: 503 before and after it opens.
    for _ in 0..5 {
        let started = Instant::now();
        for path in ["/cache/invalidate/vehicle:1", "/cache/invalidate-pattern/vehicle:*"] {
            assert_error(&admin.post(path, Some(TOKEN)).await, 503, "cache backend");
        }
        assert_error(&admin.post("/cache/clear", Some(TOKEN)).await, 503, "cache backend");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }
    // Bad input is still 400, and a missing token still 401, whatever Redis does.
    assert_error(&admin.post("/cache/invalidate-pattern/a[", Some(TOKEN)).await, 400, "a[");
    assert_error(&admin.post("/cache/clear", None).await, 401, "Bearer");
    let health = admin.get("/cache/health").await;
    assert_eq!(health.status, 503, "{health:?}");
    assert_eq!(health.json()["breaker"], "open", "{health:?}");
}

#[tokio::test]
async fn the_router_nests_under_a_prefix_and_merges_beside_other_routes() {
    use axum::routing::get;

    let cache = Cache::memory();
    let runs = AtomicUsize::new(0);
    homepage(&cache, &runs, "news").await;
    let app = || axum::Router::new().route("/hello", get(|| async { "hello" }));

    let nested = serve(app().nest("/admin", admin::router(cache.clone(), TOKEN).unwrap())).await;
    assert_eq!(http::get(nested, "/hello").await.body, "hello");
    let stats = http::get(nested, "/admin/cache/stats").await.json();
    assert_eq!(stats["functions"]["homepage"]["loads"], 1, "{stats}");
    assert_eq!(http::get(nested, "/cache/stats").await.status, 404);
    assert_error(&http::post(nested, "/admin/cache/clear", None).await, 401, "Bearer");
    let response = http::post(nested, "/admin/cache/invalidate/homepage:news", Some(TOKEN)).await;
    assert_removed(&response, 1);

    let merged = serve(app().merge(admin::router(cache.clone(), TOKEN).unwrap())).await;
    assert_eq!(http::get(merged, "/hello").await.body, "hello");
    assert_eq!(http::get(merged, "/metrics").await.status, 200);
    assert_removed(&http::post(merged, "/cache/clear", Some(TOKEN)).await, 0);
}

/// Asserts `response` is an error in the router's one shape: `status`, `Content-Type:
/// application/json` and `{"error": "..."}` mentioning `needle`.
#[track_caller]
fn assert_json_error(response: &Response, status: u16, needle: &str) {
    assert_eq!(response.header("content-type"), Some("application/json"), "{response:?}");
    assert_error(response, status, needle);
}

/// The errors axum itself answers (no such route, a method the route does not take, a path
/// parameter it cannot extract) have the router's JSON shape too, served alone, nested under
/// a prefix or merged beside other routes.
#[tokio::test]
async fn unknown_routes_wrong_methods_and_bad_paths_are_json_errors() {
    use axum::routing::get;

    let cache = Cache::memory();
    let app = || axum::Router::new().route("/hello", get(|| async { "hello" }));
    let alone = serve_admin(&cache).await;
    let nested = serve(app().nest("/admin", admin::router(cache.clone(), TOKEN).unwrap())).await;
    let merged = serve(app().merge(admin::router(cache.clone(), TOKEN).unwrap())).await;
    let bearer = format!("Bearer {TOKEN}");
    for (addr, prefix) in [(alone, ""), (nested, "/admin"), (merged, "")] {
        let request = |method: &'static str, path: &str| {
            let target = format!("{prefix}{path}");
            let bearer = bearer.clone();
            async move { http::request(addr, method, &target, Some(&bearer)).await }
        };
        // No such route, including an empty key or pattern.
        for path in ["/nothing", "/cache", "/cache/statistics", "/cache/invalidate/"] {
            assert_json_error(&request("GET", path).await, 404, "no route");
        }
        assert_json_error(&request("POST", "/cache/invalidate-pattern/").await, 404, "no route");
        // A route, but not with this method: 405, and `Allow` names the methods it takes.
        for (method, path, allow) in [
            ("GET", "/cache/clear", "POST"),
            ("GET", "/cache/invalidate/homepage:news", "POST"),
            ("DELETE", "/cache/invalidate-pattern/homepage:*", "POST"),
            ("POST", "/cache/stats", "GET,HEAD"),
            ("PUT", "/metrics", "GET,HEAD"),
        ] {
            let response = request(method, path).await;
            assert_json_error(&response, 405, "method");
            assert_eq!(response.header("allow"), Some(allow), "{method} {path}");
        }
        // A path parameter that does not decode.
        assert_json_error(&request("POST", "/cache/invalidate/%FF").await, 400, "UTF-8");
    }
    // The application's own routes are untouched.
    assert_eq!(http::get(nested, "/hello").await.body, "hello");
    assert_eq!(http::get(merged, "/hello").await.body, "hello");

    // An application's own fallback, set after the merge, answers the unknown paths; and the
    // admin router's fallback can be dropped before merging into a router that has one.
    let own = || async { (axum::http::StatusCode::NOT_FOUND, "own") };
    let after = app().merge(admin::router(cache.clone(), TOKEN).unwrap()).fallback(own);
    let reset =
        app().fallback(own).merge(admin::router(cache.clone(), TOKEN).unwrap().reset_fallback());
    for addr in [serve(after).await, serve(reset).await] {
        assert_eq!(http::get(addr, "/nothing").await.body, "own");
        assert_json_error(&http::get(addr, "/cache/clear").await, 405, "method");
    }
}
