//! The HTTP API served in-process on a loopback port, checked with real HTTP requests: an
//! update through the API is visible on the next read, in every cached view it touches; price
//! changes are rate limited per client address (429 with `Retry-After`); every error is JSON
//! `{"error": "..."}`; different searches never share a cache entry, and a price change drops
//! the searches that list the vehicle; absurd search values are refused before they reach
//! Redis.

mod common;

use std::net::{IpAddr, SocketAddr};

use cache_runtime::Cache;
use cache_tests::RedisServer;
use common::TempDir;
use examples::marketplace::http::PRICE_CHANGES_PER_MINUTE;
use examples::marketplace::model::{price_bucket, PRICE_BUCKET};
use examples::marketplace::{
    http, Db, DealerVehicles, Marketplace, SearchFilters, SearchPage, SearchQuery, UserProfile,
    Vehicle,
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

const TOKEN: &str = "test-admin-token";

/// The API on `127.0.0.1:<free port>` over a fresh SQLite database; the server task stops
/// with the test's runtime.
async fn serve(cache: Cache, dir: &TempDir) -> (SocketAddr, Marketplace) {
    let db = Db::connect(&dir.sqlite_url()).await.expect("database");
    let service = Marketplace::new(db, cache);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = http::router(service.clone(), TOKEN).unwrap();
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, service)
}

/// One HTTP/1.1 request on a new connection: the status and the body.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: Option<String>,
) -> (StatusCode, String) {
    let (status, _, body) = send_from("127.0.0.1".parse().unwrap(), addr, method, path, json).await;
    (status, body)
}

/// [`send`] from the client address `from` (any `127.x.y.z` works on Linux loopback), also
/// returning the response headers.
async fn send_from(
    from: IpAddr,
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: Option<String>,
) -> (StatusCode, hyper::HeaderMap, String) {
    let content_type = json.as_ref().map(|_| "application/json");
    send_raw(from, addr, method, path, content_type, json.unwrap_or_default()).await
}

/// One request with any `Content-Type` (or none) and body.
async fn send_raw(
    from: IpAddr,
    addr: SocketAddr,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> (StatusCode, hyper::HeaderMap, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if path.starts_with("/admin/") {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    let body = Full::new(Bytes::from(body));
    let response = sender.send_request(request.body(body).unwrap()).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

/// Asserts an error answer has the API's one error shape, `Content-Type: application/json`
/// and `{"error": "<text>"}` with nothing else, and returns the text.
#[track_caller]
fn assert_json_error(headers: &hyper::HeaderMap, body: &str) -> String {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    assert_eq!(content_type, Some("application/json"), "{body}");
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    let fields = json.as_object().unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(fields.len(), 1, "{body}");
    json["error"].as_str().unwrap_or_else(|| panic!("no error text: {body}")).to_owned()
}

async fn get<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> T {
    let (status, body) = send(addr, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

async fn update_is_visible_on_the_next_read(cache: Cache) {
    let dir = TempDir::new("http");
    let (addr, service) = serve(cache, &dir).await;

    // A vehicle on dealer 1's page, read twice: both reads are hits (the page's batch
    // filled `vehicle:<id>`, the entry of the single read too).
    let page: DealerVehicles = get(addr, "/dealers/1/vehicles").await;
    let id = page.vehicles[0].id;
    let before: Vehicle = get(addr, &format!("/vehicles/{id}")).await;
    assert_eq!(get::<Vehicle>(addr, &format!("/vehicles/{id}")).await, before);
    assert_eq!(service.cache().stats_of("vehicle").hits, 2);

    let price = before.price + 1_234;
    let (status, body) = send(
        addr,
        Method::PUT,
        &format!("/vehicles/{id}"),
        Some(format!(r#"{{"price": {price}}}"#)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Vehicle>(&body).unwrap().price, price);

    // The next reads see the new price: the vehicle, and the dealer page (a pattern).
    let after: Vehicle = get(addr, &format!("/vehicles/{id}")).await;
    assert_eq!(after, Vehicle { price, ..before });
    let page: DealerVehicles = get(addr, "/dealers/1/vehicles").await;
    assert_eq!(page.vehicles.iter().find(|v| v.id == id).unwrap().price, price);

    // Bad input and unknown ids.
    let put =
        |path: &'static str, json: &'static str| send(addr, Method::PUT, path, Some(json.into()));
    assert_eq!(put("/vehicles/1", r#"{"price": 0}"#).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(put("/vehicles/999999", r#"{"price": 100}"#).await.0, StatusCode::NOT_FOUND);
    assert_eq!(send(addr, Method::GET, "/vehicles/999999", None).await.0, StatusCode::NOT_FOUND);

    // A profile change is written through: the next read is a hit with the new name.
    let user: UserProfile = get(addr, "/users/3").await;
    let (status, body) = send(
        addr,
        Method::PUT,
        "/users/3",
        Some(r#"{"name": "Rosa Reyes", "province": "Duarte"}"#.into()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let queries = service.db().queries();
    let updated: UserProfile = get(addr, "/users/3").await;
    assert_eq!(
        updated,
        UserProfile { name: "Rosa Reyes".into(), province: "Duarte".into(), ..user }
    );
    assert_eq!(service.db().queries(), queries, "read from the cache");

    // The other routes answer.
    let (status, _) = send(addr, Method::GET, "/homepage", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(addr, Method::GET, "/search?make=Toyota&max_price=30000", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The cache's admin routes, mounted under /admin.
    let (status, body) = send(addr, Method::GET, "/admin/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"cache_hits_total{function="vehicle"}"#), "{body}");
    let loads = service.cache().stats_of("vehicle").loads;
    let (status, body) =
        send(addr, Method::POST, &format!("/admin/cache/invalidate/vehicle:{id}"), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"removed":1}"#));
    get::<Vehicle>(addr, &format!("/vehicles/{id}")).await;
    assert_eq!(service.cache().stats_of("vehicle").loads, loads + 1, "reloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_through_the_api_is_visible_with_the_memory_store() {
    update_is_visible_on_the_next_read(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_through_the_api_is_visible_with_redis() {
    let redis = RedisServer::start();
    let cache = Cache::builder().redis(redis.url()).prefix("vehicles:").build().await.unwrap();
    update_is_visible_on_the_next_read(cache).await;
}

/// `PUT /vehicles/{id}` admits [`PRICE_CHANGES_PER_MINUTE`] changes per client address, then
/// answers 429 with `Retry-After` and the `RateLimit-*` headers, without touching the
/// database; another address has its own allowance.
async fn price_changes_are_limited_per_client(cache: Cache) {
    let dir = TempDir::new("http-rate");
    let (addr, service) = serve(cache, &dir).await;
    let (client, other): (IpAddr, IpAddr) =
        ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    let put = |from: IpAddr, price: i64| {
        send_from(from, addr, Method::PUT, "/vehicles/5", Some(format!(r#"{{"price": {price}}}"#)))
    };
    for change in 1..=PRICE_CHANGES_PER_MINUTE {
        let (status, _, body) = put(client, 10_000 + change as i64).await;
        assert_eq!(status, StatusCode::OK, "change {change}: {body}");
    }
    // A bad request is answered before the limiter: it costs nothing.
    assert_eq!(put(client, 0).await.0, StatusCode::BAD_REQUEST);
    let queries = service.db().queries();
    let (status, headers, body) = put(client, 99_999).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let retry_after: u64 = header("retry-after").parse().unwrap();
    assert!((59..=60).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(header("ratelimit-remaining"), "0");
    assert_eq!(header("ratelimit-limit"), PRICE_CHANGES_PER_MINUTE.to_string());
    let error = assert_json_error(&headers, &body);
    assert!(error.starts_with("rate limit of 5 calls reached"), "{body}");
    assert_eq!(service.db().queries(), queries, "a refused change never reaches the database");
    assert_eq!(get::<Vehicle>(addr, "/vehicles/5").await.price, 10_000 + 5);

    // Another client address is not limited by this one's changes.
    let (status, _, body) = put(other, 12_345).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = send(addr, Method::GET, "/admin/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("cache_rate_limited_total{function=\"change_price\"} 1\n"), "{body}");
    assert!(body.contains("cache_rate_allowed_total{function=\"change_price\"} 6\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_changes_are_limited_per_client_with_the_memory_store() {
    price_changes_are_limited_per_client(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_changes_are_limited_per_client_with_redis() {
    let redis = RedisServer::start();
    let cache = Cache::builder().redis(redis.url()).prefix("vehicles:").build().await.unwrap();
    price_changes_are_limited_per_client(cache).await;
}

/// Every error the API answers, its own and axum's (no route, wrong method, a path, query or
/// body it cannot extract), is JSON `{"error": "..."}` with a status that says what went wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json() {
    let dir = TempDir::new("http-errors");
    let (addr, _service) = serve(Cache::memory(), &dir).await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let json = Some("application/json");
    let long_make = "a".repeat(65);
    let long_search = format!("/search?make={long_make}");
    // Method, path, content type, body; the status and a word of the error expected.
    type Case<'a> = (Method, &'a str, Option<&'a str>, &'a str, StatusCode, &'a str);
    let cases: [Case<'_>; 14] = [
        (Method::GET, "/vehicles/999999", None, "", StatusCode::NOT_FOUND, "not found"),
        (Method::GET, "/nothing", None, "", StatusCode::NOT_FOUND, "no route"),
        (Method::GET, "/admin/nothing", None, "", StatusCode::NOT_FOUND, "no route"),
        (Method::DELETE, "/vehicles/1", None, "", StatusCode::METHOD_NOT_ALLOWED, "method"),
        (Method::POST, "/search", None, "", StatusCode::METHOD_NOT_ALLOWED, "method"),
        (Method::GET, "/admin/cache/clear", None, "", StatusCode::METHOD_NOT_ALLOWED, "method"),
        (Method::GET, "/vehicles/abc", None, "", StatusCode::BAD_REQUEST, "parse"),
        (Method::GET, "/search?max_price=cheap", None, "", StatusCode::BAD_REQUEST, "max_price"),
        (Method::GET, &long_search, None, "", StatusCode::BAD_REQUEST, "make"),
        (Method::PUT, "/vehicles/1", json, r#"{"price": 0}"#, StatusCode::BAD_REQUEST, "positive"),
        (Method::PUT, "/vehicles/1", json, "{", StatusCode::BAD_REQUEST, "JSON"),
        (
            Method::PUT,
            "/vehicles/1",
            json,
            r#"{"price": "x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "price",
        ),
        (
            Method::PUT,
            "/vehicles/1",
            None,
            r#"{"price": 1}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            Method::PUT,
            "/users/1",
            json,
            r#"{"name": " ", "province": "x"}"#,
            StatusCode::BAD_REQUEST,
            "name",
        ),
    ];
    for (method, path, content_type, body, status, needle) in cases {
        let what = format!("{method} {path} {body}");
        let (got, headers, answer) =
            send_raw(local, addr, method, path, content_type, body.into()).await;
        assert_eq!(got, status, "{what}: {answer}");
        let error = assert_json_error(&headers, &answer);
        assert!(error.contains(needle), "{what}: {needle:?} not in {error:?}");
    }
}

/// Two different searches never share a cached result. Under the old key (`search:<make>:`
/// and a 64-bit FNV hash of the filters' `name=value&...` text, whose values were not
/// escaped), `body = "sedan&province=x"` and `body = "sedan", province = "x&province=~"` had
/// the same text, so the same key: the second search was answered with the first one's
/// result without running. Any FNV collision, which can be computed offline, did the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_searches_have_their_own_cached_results() {
    let redis = RedisServer::start();
    let cache = Cache::builder().redis(redis.url()).prefix("vehicles:").build().await.unwrap();
    let dir = TempDir::new("http-search-keys");
    let (addr, service) = serve(cache, &dir).await;

    let first = "/search?make=toyota&body=sedan%26province%3Dx";
    let second = "/search?make=toyota&body=sedan&province=x%26province%3D~";
    get::<SearchPage>(addr, first).await;
    let queries = service.db().queries();
    get::<SearchPage>(addr, second).await;
    assert_eq!(service.db().queries(), queries + 1, "the second search ran its own query");

    // Searches with results: each answer, from the database then from the cache, is its own.
    let searches = [
        "/search?make=toyota",
        "/search?make=honda",
        "/search?make=toyota&page=2",
        "/search?make=toyota&sort=price_asc",
        "/search?body=suv&max_price=30000",
        "/search?body=suv&min_price=30000",
    ];
    let mut pages = Vec::new();
    for path in searches {
        let page: SearchPage = get(addr, path).await;
        assert!(!page.vehicles.is_empty(), "{path}");
        pages.push(page);
    }
    for (i, a) in pages.iter().enumerate() {
        for b in &pages[i + 1..] {
            assert_ne!(a, b, "two searches with the same answer");
        }
    }
    let queries = service.db().queries();
    for (path, page) in searches.iter().zip(&pages) {
        assert_eq!(&get::<SearchPage>(addr, path).await, page, "{path} from the cache");
    }
    assert_eq!(service.db().queries(), queries, "all from the cache");

    // The key is the filters themselves, readable, and an operator can drop one search.
    get::<SearchPage>(addr, "/search?make=Toyota&max_price=25000").await;
    let key = "search:toyota:~:~:~:25000:~:newest:1";
    let (status, body) =
        send(addr, Method::POST, &format!("/admin/cache/invalidate/{key}"), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"removed":1}"#));
}

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    /// A text filter made of pieces that a careless encoding would confuse: separators of the
    /// key and of the filters' text form, `~` (how an absent value renders), `%`, spaces.
    fn text(&mut self) -> Option<String> {
        const PIECES: [&str; 14] = [
            "",
            " ",
            "~",
            "a",
            "toyota",
            ":",
            "*",
            "%",
            "%7E",
            "&",
            "=",
            "&province=",
            "&body=~",
            "é",
        ];
        if self.below(3) == 0 {
            return None;
        }
        Some((0..self.below(4)).map(|_| PIECES[self.below(14) as usize]).collect())
    }

    fn number(&mut self) -> Option<i64> {
        [None, Some(0), Some(-1), Some(1), Some(10), Some(25_000)][self.below(6) as usize]
    }
}

/// Property: distinct filter sets always get distinct cache keys. 400 random filter sets
/// built from confusable pieces are searched through the cache on Redis; the cache then holds
/// exactly one entry per distinct (normalised) filter set, and each cached answer is the
/// database's answer for that very filter set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_filter_sets_always_get_distinct_keys() {
    let redis = RedisServer::start();
    let cache = Cache::builder().redis(redis.url()).prefix("vehicles:").build().await.unwrap();
    let dir = TempDir::new("search-property");
    let db = Db::connect(&dir.sqlite_url()).await.expect("database");
    let service = Marketplace::new(db, cache.clone());

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut distinct: Vec<SearchFilters> = Vec::new();
    for _ in 0..400 {
        let query = SearchQuery {
            make: rng.text(),
            body: rng.text(),
            province: rng.text(),
            min_price: rng.number(),
            max_price: rng.number(),
            year_from: rng.number(),
            sort: [None, Some("price_asc".into()), Some("mileage".into())][rng.below(3) as usize]
                .clone(),
            page: [None, Some(2)][rng.below(2) as usize],
        };
        let filters = SearchFilters::normalise(&query);
        if !distinct.contains(&filters) {
            distinct.push(filters);
        }
    }
    for filters in &distinct {
        service.search(filters).await.unwrap();
    }
    for filters in &distinct {
        let cached = service.search(filters).await.unwrap();
        assert_eq!(cached, service.db().search(filters).await.unwrap(), "{filters:?}");
    }
    assert_eq!(cache.stats_of("search").hits, distinct.len() as u64);
    let keys = cache.invalidate_pattern("search:*").await.unwrap();
    assert_eq!(keys, distinct.len() as u64, "one key per distinct filter set");
}

/// A price change drops the cached searches that can list the vehicle, of its make and of any
/// make (by their tags), and leaves the searches of other makes, and those of its make for
/// cheaper cars, cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_drops_the_cached_searches_that_list_the_vehicle() {
    let redis = RedisServer::start();
    let cache = Cache::builder().redis(redis.url()).prefix("vehicles:").build().await.unwrap();
    let dir = TempDir::new("http-search-invalidation");
    let (addr, service) = serve(cache, &dir).await;

    let vehicle: Vehicle = get(addr, "/vehicles/5").await;
    let make = vehicle.make.to_lowercase();
    let other = if make == "honda" { "toyota" } else { "honda" };
    let (low, high) = (vehicle.price, vehicle.price + 1);
    let range = format!("min_price={low}&max_price={high}&sort=price_asc");
    let of_its_make = format!("/search?make={make}&{range}");
    let of_any_make = format!("/search?{range}");
    let of_another_make = format!("/search?make={other}");
    // A ceiling in a lower price bucket: it cannot list the vehicle, before or after.
    let bucket = price_bucket(low);
    let cheaper = (bucket > 0)
        .then(|| format!("/search?make={make}&max_price={}", PRICE_BUCKET * bucket - 1));
    let kept: Vec<&String> = [&of_another_make].into_iter().chain(cheaper.as_ref()).collect();
    let shows = |page: &SearchPage, price: i64| {
        page.vehicles.iter().any(|v| v.id == vehicle.id && v.price == price)
    };
    for path in [&of_its_make, &of_any_make] {
        assert!(shows(&get(addr, path).await, low), "{path}");
    }
    for path in &kept {
        get::<SearchPage>(addr, path).await;
    }
    let queries = service.db().queries();
    for path in [&of_its_make, &of_any_make].into_iter().chain(kept.iter().copied()) {
        get::<SearchPage>(addr, path).await;
    }
    assert_eq!(service.db().queries(), queries, "all the searches are cached");

    let (status, body) =
        send(addr, Method::PUT, "/vehicles/5", Some(format!(r#"{{"price": {high}}}"#))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let queries = service.db().queries();
    for path in [&of_its_make, &of_any_make] {
        assert!(shows(&get(addr, path).await, high), "{path} shows the new price");
    }
    assert_eq!(service.db().queries(), queries + 2, "both searches ran again");
    for path in &kept {
        get::<SearchPage>(addr, path).await;
    }
    assert_eq!(service.db().queries(), queries + 2, "{kept:?} stayed cached");
}

/// `GET /search?make=<60 KB>` (200 different ones) is refused with a JSON 400 before it reaches the cache: 200
/// such requests leave Redis' `used_memory` within 1 MiB (they added about 256 KiB each, as
/// a key and its index entries, when they were cached). The longest accepted value, 64 bytes
/// of non-ASCII text (192 bytes once percent-encoded in the key), is still cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_search_values_are_refused_before_they_reach_redis() {
    let redis = RedisServer::start();
    let cache = Cache::builder().redis(redis.url()).prefix("vehicles:").build().await.unwrap();
    let dir = TempDir::new("http-search-bounds");
    let (addr, service) = serve(cache, &dir).await;
    let used_memory = || async { service.cache().health().await.used_memory_bytes.unwrap() };

    let before = used_memory().await;
    let mut answers = Vec::new();
    for i in 0..200 {
        let huge = format!("/search?make={i}{}", "a".repeat(60 * 1024));
        let (status, headers, body) =
            send_from("127.0.0.1".parse().unwrap(), addr, Method::GET, &huge, None).await;
        answers.push((status, headers, body));
    }
    let grown = used_memory().await.saturating_sub(before);
    println!("200 searches with a 60 KB make: Redis used_memory grew by {grown} bytes");
    assert!(grown < 1 << 20, "200 huge searches grew Redis by {grown} bytes");
    for (status, headers, body) in &answers {
        assert_eq!(*status, StatusCode::BAD_REQUEST, "{body}");
        assert!(assert_json_error(headers, body).contains("make"), "{body}");
    }

    // 64 bytes is accepted and cached (`ü` is 2 bytes); 65 is refused.
    let longest = format!("/search?make={}", "%C3%BC".repeat(32));
    get::<SearchPage>(addr, &longest).await;
    let queries = service.db().queries();
    get::<SearchPage>(addr, &longest).await;
    assert_eq!(service.db().queries(), queries, "the longest accepted search is cached");
    let refused = format!("/search?make={}a", "%C3%BC".repeat(32));
    assert_eq!(send(addr, Method::GET, &refused, None).await.0, StatusCode::BAD_REQUEST);
}

/// `router` on `127.0.0.1:<free port>`; the server task stops with the test's runtime.
async fn spawn(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `vehicles serve --no-cache` ([`http::Mode::Direct`]): every route answers the same bytes
/// as through the cache, the cache is never read or written, and a price change shows on the
/// next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cache_the_routes_answer_the_same_json() {
    let dir = TempDir::new("http-direct");
    let db = Db::connect(&dir.sqlite_url()).await.expect("database");
    let (cache, unused) = (Cache::memory(), Cache::memory());
    let cached = spawn(http::router(Marketplace::new(db.clone(), cache.clone()), TOKEN).unwrap());
    let direct = Marketplace::new(db.clone(), unused.clone());
    let direct = spawn(http::router_with(direct, TOKEN, http::Mode::Direct).unwrap());
    let (cached, direct) = (cached.await, direct.await);

    let paths = [
        "/vehicles/1",
        "/vehicles/999999",
        "/dealers/2/vehicles",
        "/homepage",
        "/search?make=Toyota&max_price=30000&sort=price_asc",
        "/users/4",
    ];
    for path in paths {
        // Twice through the cache: the second answer is a hit.
        let miss = send(cached, Method::GET, path, None).await;
        let hit = send(cached, Method::GET, path, None).await;
        let queries = db.queries();
        let straight = send(direct, Method::GET, path, None).await;
        assert_eq!(hit, miss, "GET {path}");
        assert_eq!(straight, hit, "GET {path}");
        assert!(db.queries() > queries, "GET {path} without the cache reads the database");
    }
    assert!(cache.stats().hits >= paths.len() as u64, "{:?}", cache.stats());
    let stats = unused.stats();
    assert_eq!((stats.hits, stats.misses, stats.loads), (0, 0, 0), "{stats:?}");

    let before: Vehicle = get(direct, "/vehicles/5").await;
    let price = before.price + 1_000;
    let (status, body) =
        send(direct, Method::PUT, "/vehicles/5", Some(format!(r#"{{"price": {price}}}"#))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get::<Vehicle>(direct, "/vehicles/5").await, Vehicle { price, ..before });
    let stats = unused.stats();
    assert_eq!((stats.hits, stats.misses, stats.invalidated), (0, 0, 0), "{stats:?}");
}
