//! Admin HTTP routes over a [`Cache`] (feature `axum`): stats, health, Prometheus metrics and
//! invalidation.
//!
//! [`router`] builds an [`axum::Router`] with these routes:
//!
//! | route | token | answer |
//! |---|---|---|
//! | `GET /cache/stats` | no | 200, [`Cache::stats_report`] as JSON |
//! | `GET /cache/health` | no | [`Cache::health`] as JSON: 200 when the store is reachable, 503 when not |
//! | `GET /metrics` | no | 200, [`Cache::prometheus`] as `text/plain; version=0.0.4; charset=utf-8` |
//! | `POST /cache/invalidate/{key}` | yes | 200, `{"removed": n}` ([`Cache::invalidate`]) |
//! | `POST /cache/invalidate-pattern/{pattern}` | yes | 200, `{"removed": n}` ([`Cache::invalidate_pattern`]) |
//! | `POST /cache/invalidate-tag/{tag}` | yes | 200, `{"removed": n}` ([`Cache::invalidate_tag`]) |
//! | `POST /cache/clear` | yes | 200, `{"removed": n}` ([`Cache::clear`]) |
//!
//! Serve it on its own port, or add it to an application's router:
//!
//! ```no_run
//! use cache_runtime::{admin, Cache};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cache = Cache::builder()
//!         .redis("redis://127.0.0.1:6379")
//!         .prefix("okla:")
//!         .build()
//!         .await?;
//!     let token = std::env::var("CACHE_ADMIN_TOKEN")?;
//!     // Loopback only: the read routes are open (see "Security" below).
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:9091").await?;
//!     axum::serve(listener, admin::router(cache, token)?).await?;
//!     Ok(())
//! }
//! ```
//!
//! ```
//! use axum::{routing::get, Router};
//! use cache_runtime::{admin, Cache};
//!
//! # fn main() -> Result<(), cache_runtime::Error> {
//! let cache = Cache::memory();
//! let token = "8f2c41e07a9d4b6e"; // in production: a long random secret from the environment
//!
//! // Under a prefix: /admin/cache/stats, /admin/metrics, /admin/cache/invalidate/{key}, ...
//! let app: Router = Router::new()
//!     .route("/vehicles", get(|| async { "[]" }))
//!     .nest("/admin", admin::router(cache.clone(), token)?);
//!
//! // Or beside the application's own routes (their paths must not clash, e.g. two
//! // `/metrics`). `.nest("/", ...)` is not an option: axum 0.8 panics on it.
//! let app: Router = Router::new()
//!     .route("/vehicles", get(|| async { "[]" }))
//!     .merge(admin::router(cache, token)?);
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! An application router with state merges the admin router after its own `.with_state(...)`
//! (the admin router is a `Router<()>`).
//!
//! The admin router has a fallback, which answers paths no route matches with a JSON 404
//! (see "Error responses" below). Nested, it answers only the paths under its prefix.
//! Merged, it becomes the fallback of the whole router, unless the application sets its own
//! **after** the merge (`.merge(admin::router(..)?).fallback(own)`): axum panics when it
//! merges two routers that both have a fallback, so either set yours after merging, or drop
//! the admin router's with [`Router::reset_fallback`] before merging.
//!
//! # Security
//!
//! - The `POST` routes remove data and require `Authorization: Bearer <token>`, the
//!   token given to [`router`]; the comparison takes the same time wherever the first wrong
//!   byte is. A request without the header, with another scheme or with a wrong token gets
//!   401 with `WWW-Authenticate: Bearer` and changes nothing. The scheme name is matched
//!   case-insensitively (`bearer` works too).
//! - The `GET` routes are **open**: stats and metrics name your cached functions, and health
//!   shows Redis's memory and client counts. Keep the router on a private port or network,
//!   or wrap it in your own authentication (a `route_layer`, a reverse proxy), as you would
//!   any metrics endpoint.
//! - Use plain HTTP only on loopback or a trusted network: the token travels in a header.
//!
//! # Keys and patterns in the path
//!
//! `{key}`, `{pattern}` and `{tag}` are everything after `/cache/invalidate/`,
//! `/cache/invalidate-pattern/` or `/cache/invalidate-tag/` (slashes included),
//! **percent-decoded once** (a rendered tag is encoded like a rendered key):
//!
//! - `:` and `*` can be sent as they are or encoded: `homepage:*`, `homepage:%2A` and
//!   `homepage%3A%2A` name the same pattern. `?` (a glob character) and `#` must be encoded,
//!   as `%3F` and `%23`, or the HTTP client takes them for a query or a fragment.
//! - A rendered key that contains `%` needs that `%` encoded as `%25`. Placeholder values
//!   are percent-encoded when a key is rendered (every byte outside `[A-Za-z0-9_.-]`, see
//!   [`KeyPart`](crate::KeyPart)), so the key of `search:<q>` with `q = "toyota camry"` is
//!   `search:toyota%20camry`, removed by `POST /cache/invalidate/search:toyota%2520camry`.
//!
//! # Error responses
//!
//! Every error is JSON, `{"error": "<message>"}` with `Content-Type: application/json`,
//! including the ones axum answers itself (no route, wrong method, a path parameter it cannot
//! extract):
//!
//! | status | when |
//! |---|---|
//! | 400 | the key, pattern or tag is invalid ([`Error::InvalidKey`], [`Error::InvalidPattern`], [`Error::InvalidTag`]: empty, whitespace, unclosed `[`, reserved `#`), or the path does not decode as UTF-8 |
//! | 401 | a `POST` without the right bearer token |
//! | 404 | no route at this path (including an empty key or pattern: `POST /cache/invalidate/`) |
//! | 405 | a route called with another method (`GET /cache/clear`); the `Allow` header names the methods it takes |
//! | 409 | `POST /cache/clear` on a Redis cache without a prefix ([`Error::InvalidConfig`]: it would remove the whole database) |
//! | 503 | the store failed: Redis unreachable, timed out, circuit breaker open, error reply |
//!
//! Each removal is logged with `tracing` at `info` level, and each refused token at `warn`.

#![cfg_attr(docsrs, doc(cfg(feature = "axum")))]

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::cache::Cache;
use crate::error::{Error, ErrorKind, Result};

/// The axum crate the router is built with, re-exported so an application can serve it or
/// combine it without depending on a matching axum version itself.
#[doc(no_inline)]
pub use axum;

/// The `Content-Type` of `GET /metrics`: Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin routes over `cache`; the `POST` routes require `Authorization: Bearer <token>`.
///
/// See the [module documentation](self) for the routes, their answers and errors, and how to
/// serve the router or add it to an application:
///
/// ```no_run
/// # async fn run(cache: cache_runtime::Cache) -> Result<(), Box<dyn std::error::Error>> {
/// let token = std::env::var("CACHE_ADMIN_TOKEN")?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9091").await?;
/// axum::serve(listener, cache_runtime::admin::router(cache, token)?).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::InvalidConfig`] when `token` is empty or contains whitespace or control
/// characters (a token that could never arrive intact in an `Authorization` header):
///
/// ```
/// use cache_runtime::{admin, Cache, Error};
///
/// assert!(matches!(admin::router(Cache::memory(), ""), Err(Error::InvalidConfig(_))));
/// ```
pub fn router(cache: Cache, token: impl Into<String>) -> Result<Router> {
    let token = token.into();
    if token.is_empty() {
        return Err(Error::InvalidConfig(
            "the admin router's bearer token must not be empty".into(),
        ));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidConfig(
            "the admin router's bearer token must not contain whitespace or control characters"
                .into(),
        ));
    }
    let admin = Admin { cache, token: token.into_bytes().into() };
    Ok(Router::new()
        .route("/cache/stats", get(stats))
        .route("/cache/health", get(health))
        .route("/metrics", get(metrics))
        .route("/cache/invalidate/{*key}", post(invalidate))
        .route("/cache/invalidate-pattern/{*pattern}", post(invalidate_pattern))
        .route("/cache/invalidate-tag/{*tag}", post(invalidate_tag))
        .route("/cache/clear", post(clear))
        // After the routes: it applies to the routes registered before it.
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(admin))
}

/// The router's state.
#[derive(Clone)]
struct Admin {
    cache: Cache,
    token: Arc<[u8]>,
}

/// The body of a successful `POST`.
#[derive(Serialize)]
struct Removed {
    removed: u64,
}

/// An error answer: a status and `{"error": message}`.
struct Failure {
    status: StatusCode,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: &self.message })).into_response()
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::InvalidKey { .. } | Error::InvalidPattern { .. } | Error::InvalidTag { .. } => {
                StatusCode::BAD_REQUEST
            }
            // `clear` on a Redis cache without a prefix: the request is fine, the cache's
            // configuration forbids it.
            other if other.kind() == ErrorKind::Usage => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure { status, message: error.to_string() }
    }
}

impl From<PathRejection> for Failure {
    fn from(rejection: PathRejection) -> Self {
        // 400 for a parameter that does not decode; 500 when the router was mounted so that
        // the route has other path parameters (a server bug, not the client's).
        Failure { status: rejection.status(), message: rejection.body_text() }
    }
}

/// The answer to a path no route matches (axum's fallback): 404.
async fn no_route() -> Failure {
    Failure { status: StatusCode::NOT_FOUND, message: "no route at this path".into() }
}

/// The answer to a route called with a method it does not take: 405. axum adds the `Allow`
/// header naming the methods it takes.
async fn wrong_method() -> Failure {
    Failure {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "this route does not take this method (see the Allow header)".into(),
    }
}

/// Proof that the request carried the right bearer token; extract it before anything else
/// so an unauthenticated request learns nothing about its path.
struct Authorized;

impl FromRequestParts<Admin> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, Response> {
        let presented = parts.headers.get(header::AUTHORIZATION).and_then(bearer_token);
        if presented.is_some_and(|token| same_bytes(token, &admin.token)) {
            return Ok(Authorized);
        }
        tracing::warn!(
            path = %parts.uri.path(),
            header = if presented.is_some() { "wrong token" } else { "missing" },
            "cache admin: refused a request without the right bearer token"
        );
        let mut response = Failure {
            status: StatusCode::UNAUTHORIZED,
            message: "this route needs `Authorization: Bearer <admin token>`".into(),
        }
        .into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(response)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(&rest[start..])
}

/// Whether `presented == expected`, in a time that depends on `presented`'s length only:
/// every byte is compared (against `expected` repeated), with no early exit.
/// `expected` is not empty ([`router`] refuses an empty token).
fn same_bytes(presented: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(presented.len() != expected.len());
    for (i, &byte) in presented.iter().enumerate() {
        difference |= byte ^ expected[i % expected.len()];
    }
    std::hint::black_box(difference) == 0
}

async fn stats(State(admin): State<Admin>) -> Response {
    Json(admin.cache.stats_report()).into_response()
}

async fn health(State(admin): State<Admin>) -> Response {
    let health = admin.cache.health().await;
    let status = if health.reachable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(health)).into_response()
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let content_type = [(header::CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE))];
    (content_type, admin.cache.prometheus()).into_response()
}

async fn invalidate(
    _: Authorized,
    State(admin): State<Admin>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Removed>, Failure> {
    let Path(key) = key?;
    let removed = admin.cache.invalidate(&key).await?;
    let shown = admin.cache.core().shown(&key);
    tracing::info!(key = %shown, removed, "cache admin: invalidated a key");
    Ok(Json(Removed { removed }))
}

async fn invalidate_pattern(
    _: Authorized,
    State(admin): State<Admin>,
    pattern: Result<Path<String>, PathRejection>,
) -> Result<Json<Removed>, Failure> {
    let Path(pattern) = pattern?;
    let removed = admin.cache.invalidate_pattern(&pattern).await?;
    let shown = admin.cache.core().shown(&pattern);
    tracing::info!(pattern = %shown, removed, "cache admin: invalidated a pattern");
    Ok(Json(Removed { removed }))
}

async fn invalidate_tag(
    _: Authorized,
    State(admin): State<Admin>,
    tag: Result<Path<String>, PathRejection>,
) -> Result<Json<Removed>, Failure> {
    let Path(tag) = tag?;
    let removed = admin.cache.invalidate_tag(&tag).await?;
    let shown = admin.cache.core().shown(&tag);
    tracing::info!(tag = %shown, removed, "cache admin: invalidated a tag");
    Ok(Json(Removed { removed }))
}

async fn clear(_: Authorized, State(admin): State<Admin>) -> Result<Json<Removed>, Failure> {
    let removed = admin.cache.clear().await?;
    tracing::info!(prefix = admin.cache.prefix(), removed, "cache admin: cleared the cache");
    Ok(Json(Removed { removed }))
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, same_bytes};
    use axum::http::HeaderValue;

    #[test]
    fn compares_tokens() {
        assert!(same_bytes(b"s3cret", b"s3cret"));
        assert!(!same_bytes(b"s3creT", b"s3cret"));
        assert!(!same_bytes(b"s3cre", b"s3cret"));
        assert!(!same_bytes(b"s3crets3cret", b"s3cret"), "a repetition of the token");
        assert!(!same_bytes(b"", b"s3cret"));
    }

    #[test]
    fn reads_bearer_headers() {
        let token = |value: &'static str| {
            bearer_token(&HeaderValue::from_static(value)).map(<[u8]>::to_vec)
        };
        assert_eq!(token("Bearer abc"), Some(b"abc".to_vec()));
        assert_eq!(token("bearer  abc"), Some(b"abc".to_vec()));
        assert_eq!(token("BEARER abc"), Some(b"abc".to_vec()));
        assert_eq!(token("Basic abc"), None);
        assert_eq!(token("Bearer"), None);
        assert_eq!(token("Bearer "), None);
        assert_eq!(token("Bearerabc"), None);
    }
}
