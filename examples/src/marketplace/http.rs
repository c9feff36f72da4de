//! The HTTP API (axum).
//!
//! | route | answer |
//! |---|---|
//! | `GET /vehicles/{id}` | a [`Vehicle`](super::Vehicle), or 404 |
//! | `PUT /vehicles/{id}` | body `{"price": 18500}`: the updated vehicle, or 404; at most [`PRICE_CHANGES_PER_MINUTE`] per client address (`#[rate_limit]`), then 429 with `Retry-After` and `RateLimit-*` headers |
//! | `GET /dealers/{id}/vehicles` | a [`DealerVehicles`](super::DealerVehicles), or 404 |
//! | `GET /homepage` | a [`Homepage`](super::Homepage) |
//! | `GET /search?make=toyota&max_price=25000` | a [`SearchPage`](super::SearchPage); see [`SearchQuery`] |
//! | `GET /users/{id}` | a [`UserProfile`](super::UserProfile), or 404 |
//! | `PUT /users/{id}` | body a [`ProfileUpdate`]: the updated profile, or 404 |
//! | `/admin/...` | the cache's admin routes ([`cache_runtime::admin`]): `GET /admin/metrics`, `GET /admin/cache/stats`, `GET /admin/cache/health`, and the token-guarded `POST /admin/cache/invalidate/{key}`, `POST /admin/cache/invalidate-pattern/{pattern}`, `POST /admin/cache/clear` |

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cache_runtime::{rate_limit, RateLimited};
use serde::{Deserialize, Serialize};

use super::db::DbError;
use super::model::{ProfileUpdate, SearchFilters, SearchQuery};
use super::service::Marketplace;

/// The body of `PUT /vehicles/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceUpdate {
    /// The new price, in whole dollars (positive).
    pub price: i64,
}

/// Price changes (`PUT /vehicles/{id}`) one client address may make per minute, counted in
/// the service's cache (so across every process sharing its Redis).
pub const PRICE_CHANGES_PER_MINUTE: u64 = 5;

/// The API's routes over `service`, with the cache's admin routes under `/admin` (their
/// `POST` routes require `Authorization: Bearer <admin_token>`).
///
/// `PUT /vehicles/{id}` is limited per client address, so serve the router with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
///
/// # Errors
///
/// An empty `admin_token`, or one with whitespace or control characters.
pub fn router(service: Marketplace, admin_token: &str) -> Result<Router, cache_runtime::Error> {
    let admin = cache_runtime::admin::router(service.cache().clone(), admin_token)?;
    Ok(Router::new()
        .route("/vehicles/{id}", get(vehicle).put(update_price))
        .route("/dealers/{id}/vehicles", get(dealer_vehicles))
        .route("/homepage", get(homepage))
        .route("/search", get(search))
        .route("/users/{id}", get(user).put(update_profile))
        .with_state(service)
        .nest("/admin", admin))
}

/// What a handler fails with.
enum ApiError {
    NotFound,
    BadRequest(&'static str),
    Database(DbError),
    TooManyRequests(RateLimited),
}

impl From<RateLimited> for ApiError {
    fn from(limited: RateLimited) -> Self {
        ApiError::TooManyRequests(limited)
    }
}

/// Whole seconds, rounded up: what `Retry-After` and `RateLimit-Reset` carry.
fn seconds(duration: Duration) -> String {
    duration.as_millis().div_ceil(1000).max(1).to_string()
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        ApiError::Database(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not found\n").into_response(),
            ApiError::BadRequest(why) => {
                (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
            }
            ApiError::Database(error) => {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
            }
            ApiError::TooManyRequests(limited) => (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("retry-after", seconds(limited.retry_after)),
                    ("ratelimit-limit", limited.limit.to_string()),
                    ("ratelimit-remaining", limited.remaining.to_string()),
                    ("ratelimit-reset", seconds(limited.reset_after)),
                ],
                format!("{limited}\n"),
            )
                .into_response(),
        }
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn found<T>(value: Option<T>) -> ApiResult<T> {
    value.map(Json).ok_or(ApiError::NotFound)
}

async fn vehicle(
    State(service): State<Marketplace>,
    Path(id): Path<i64>,
) -> ApiResult<super::Vehicle> {
    found(service.vehicle(id).await?)
}

async fn update_price(
    State(service): State<Marketplace>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(id): Path<i64>,
    Json(update): Json<PriceUpdate>,
) -> ApiResult<super::Vehicle> {
    if update.price <= 0 {
        return Err(ApiError::BadRequest("price must be positive"));
    }
    found(change_price(&service, client.ip(), id, update.price).await?)
}

/// A price change on behalf of `client`: at most [`PRICE_CHANGES_PER_MINUTE`] per minute
/// and client address; a refused change never reaches the database.
#[rate_limit(key = "price-change:<client>", limit = 5, per = "1m", cache = service.cache())]
async fn change_price(
    service: &Marketplace,
    client: IpAddr,
    id: i64,
    price: i64,
) -> Result<Option<super::Vehicle>, ApiError> {
    Ok(service.update_price(id, price).await?)
}

async fn dealer_vehicles(
    State(service): State<Marketplace>,
    Path(id): Path<i64>,
) -> ApiResult<super::DealerVehicles> {
    found(service.dealer_vehicles(id).await?)
}

async fn homepage(State(service): State<Marketplace>) -> ApiResult<super::Homepage> {
    Ok(Json(service.homepage().await?))
}

async fn search(
    State(service): State<Marketplace>,
    Query(query): Query<SearchQuery>,
) -> ApiResult<super::SearchPage> {
    Ok(Json(service.search(&SearchFilters::normalise(&query)).await?))
}

async fn user(
    State(service): State<Marketplace>,
    Path(id): Path<i64>,
) -> ApiResult<super::UserProfile> {
    found(service.user(id).await?)
}

async fn update_profile(
    State(service): State<Marketplace>,
    Path(id): Path<i64>,
    Json(update): Json<ProfileUpdate>,
) -> ApiResult<super::UserProfile> {
    if update.name.trim().is_empty() {
        return Err(ApiError::BadRequest("name must not be empty"));
    }
    found(service.update_profile(id, &update).await?)
}
