//! The HTTP API served in-process on a loopback port, checked with real HTTP requests: an
//! update through the API is visible on the next read, in every cached view it touches; and
//! price changes are rate limited per client address (429 with `Retry-After`).

mod common;

use std::net::{IpAddr, SocketAddr};

use cache_runtime::Cache;
use cache_tests::RedisServer;
use common::TempDir;
use examples::marketplace::http::PRICE_CHANGES_PER_MINUTE;
use examples::marketplace::{http, Db, DealerVehicles, Marketplace, UserProfile, Vehicle};
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
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
    if json.is_some() {
        request = request.header("content-type", "application/json");
    }
    if path.starts_with("/admin/") {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    let body = Full::new(Bytes::from(json.unwrap_or_default()));
    let response = sender.send_request(request.body(body).unwrap()).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn get<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> T {
    let (status, body) = send(addr, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

async fn update_is_visible_on_the_next_read(cache: Cache) {
    let dir = TempDir::new("http");
    let (addr, service) = serve(cache, &dir).await;

    // A vehicle on dealer 1's page, read twice (the second read is a hit), and its page.
    let page: DealerVehicles = get(addr, "/dealers/1/vehicles").await;
    let id = page.vehicles[0].id;
    let before: Vehicle = get(addr, &format!("/vehicles/{id}")).await;
    assert_eq!(get::<Vehicle>(addr, &format!("/vehicles/{id}")).await, before);
    assert_eq!(service.cache().stats_of("vehicle").hits, 1);

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
    assert!(body.starts_with("rate limit of 5 calls reached"), "{body}");
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
