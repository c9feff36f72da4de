//! The HTTP API (axum).
//!
//! | route | answer |
//! |---|---|
//! | `GET /vehicles/{id}` | a [`Vehicle`], or 404 |
//! | `PUT /vehicles/{id}` | body `{"price": 18500}`: the updated vehicle, or 404; at most [`PRICE_CHANGES_PER_MINUTE`] per client address (`#[rate_limit]`), then 429 with `Retry-After` and `RateLimit-*` headers |
//! | `GET /dealers/{id}/vehicles` | a [`DealerVehicles`], or 404 |
//! | `GET /homepage` | a [`Homepage`] |
//! | `GET /search?make=toyota&max_price=25000` | a [`SearchPage`]; see [`SearchQuery`] |
//! | `GET /users/{id}` | a [`UserProfile`], or 404 |
//! | `PUT /users/{id}` | body a [`ProfileUpdate`]: the updated profile, or 404 |
//! | anything else | 404 (no route) or 405 (a route, another method) |
//! | `/admin/...` | the cache's admin routes ([`cache_runtime::admin`]): `GET /admin/metrics`, `GET /admin/cache/stats`, `GET /admin/cache/health`, and the token-guarded `POST /admin/cache/invalidate/{key}`, `POST /admin/cache/invalidate-pattern/{pattern}`, `POST /admin/cache/clear` |
//!
//! [`router`] serves the routes through the cached service; [`router_with`] and
//! [`Mode::Direct`] serve the same routes straight from the database, to compare the two
//! under one load.

//!
//! # Errors
//!
//! Every error is JSON, `{"error": "<message>"}` with `Content-Type: application/json`, the
//! same shape as the admin routes' errors:
//!
//! | status | when |
//! |---|---|
//! | 400 | a path parameter that is not a number (`/vehicles/abc`), a query value of the wrong type (`?max_price=cheap`), a search filter longer than [`MAX_FILTER_BYTES`](super::MAX_FILTER_BYTES), a body that is not JSON, a price that is not positive, an empty name |
//! | 404 | an unknown id, or no route at this path |
//! | 405 | a route called with another method; `Allow` names the methods it takes |
//! | 415 | a `PUT` body without `Content-Type: application/json` |
//! | 422 | a JSON body of the wrong shape (`{"price": "x"}`) |
//! | 429 | too many price changes from one address (with `Retry-After` and `RateLimit-*`) |
//! | 500 | the database failed |

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cache_runtime::{rate_limit, RateLimited};
use serde::{Deserialize, Serialize};

use super::db::DbError;
use super::model::{
    DealerVehicles, FilterTooLong, Homepage, ProfileUpdate, SearchFilters, SearchPage, SearchQuery,
    UserProfile, Vehicle,
};
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

/// How the routes reach the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Through the service's `#[cached]`, `#[invalidates]` and `#[cache_put]` functions.
    #[default]
    Cached,
    /// Straight from the database: each route calls the [`Db`](super::Db) method that the
    /// cached function's body calls, so no read or write goes through the cache and the
    /// answers are the same JSON. For comparing a service with and without its cache under
    /// one load. The rate limit of `PUT /vehicles/{id}` still counts in the cache's store
    /// (it is a limit, not a cache; the route answers alike in both modes), and the admin
    /// routes still show that cache, which stays empty.
    ///
    /// Writes go to the database alone: they neither invalidate nor write through, so a
    /// Redis cache filled before keeps its old values. Clear it (`POST /admin/cache/clear`)
    /// before serving through it again.
    Direct,
}

/// The API's routes over `service`, with the cache's admin routes under `/admin` (their
/// `POST` routes require `Authorization: Bearer <admin_token>`). The same as
/// [`router_with`]`(service, admin_token, Mode::Cached)`.
///
/// `PUT /vehicles/{id}` is limited per client address, so serve the router with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
///
/// # Errors
///
/// An empty `admin_token`, or one with whitespace or control characters.
pub fn router(service: Marketplace, admin_token: &str) -> Result<Router, cache_runtime::Error> {
    router_with(service, admin_token, Mode::Cached)
}

/// [`router`], serving the routes in `mode`: through the cache or straight from the
/// database.
///
/// # Errors
///
/// An empty `admin_token`, or one with whitespace or control characters.
pub fn router_with(
    service: Marketplace,
    admin_token: &str,
    mode: Mode,
) -> Result<Router, cache_runtime::Error> {
    let admin = cache_runtime::admin::router(service.cache().clone(), admin_token)?;
    Ok(Router::new()
        .route("/vehicles/{id}", get(vehicle).put(update_price))
        .route("/dealers/{id}/vehicles", get(dealer_vehicles))
        .route("/homepage", get(homepage))
        .route("/search", get(search))
        .route("/users/{id}", get(user).put(update_profile))
        // After the routes: it applies to the routes registered before it.
        .method_not_allowed_fallback(|| async { ApiError::WrongMethod })
        .fallback(|| async { ApiError::NoRoute })
        .with_state(Api { service, mode })
        .nest("/admin", admin))
}

/// The routes' state: the service, and whether its cache is used.
#[derive(Clone)]
struct Api {
    service: Marketplace,
    mode: Mode,
}

impl Api {
    async fn vehicle(&self, id: i64) -> Result<Option<Vehicle>, DbError> {
        match self.mode {
            Mode::Cached => self.service.vehicle(id).await,
            Mode::Direct => self.service.db().vehicle(id).await,
        }
    }

    async fn update_price(&self, id: i64, price: i64) -> Result<Option<Vehicle>, DbError> {
        match self.mode {
            Mode::Cached => self.service.update_price(id, price).await,
            Mode::Direct => self.service.db().update_price(id, price).await,
        }
    }

    async fn dealer_vehicles(&self, id: i64) -> Result<Option<DealerVehicles>, DbError> {
        match self.mode {
            Mode::Cached => self.service.dealer_vehicles(id).await,
            Mode::Direct => self.service.db().dealer_vehicles(id).await,
        }
    }

    async fn homepage(&self) -> Result<Homepage, DbError> {
        match self.mode {
            Mode::Cached => self.service.homepage().await,
            Mode::Direct => self.service.db().homepage().await,
        }
    }

    async fn search(&self, filters: &SearchFilters) -> Result<SearchPage, DbError> {
        match self.mode {
            Mode::Cached => self.service.search(filters).await,
            Mode::Direct => self.service.db().search(filters).await,
        }
    }

    async fn user(&self, id: i64) -> Result<Option<UserProfile>, DbError> {
        match self.mode {
            Mode::Cached => self.service.user(id).await,
            Mode::Direct => self.service.db().user(id).await,
        }
    }

    async fn update_profile(
        &self,
        id: i64,
        update: &ProfileUpdate,
    ) -> Result<Option<UserProfile>, DbError> {
        match self.mode {
            Mode::Cached => self.service.update_profile(id, update).await,
            Mode::Direct => self.service.db().update_profile(id, update).await,
        }
    }
}

/// What a handler fails with; answered as JSON `{"error": "<message>"}`.
enum ApiError {
    /// An unknown id.
    NotFound,
    /// No route at this path.
    NoRoute,
    /// A route, but not with this method.
    WrongMethod,
    /// Input the handler refused.
    BadRequest(String),
    /// A path, query or body axum could not extract, with the status it chose.
    Rejected(StatusCode, String),
    Database(DbError),
    TooManyRequests(RateLimited),
}

/// The body of every error answer.
#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: message.into() })).into_response()
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::Rejected(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::Rejected(rejection.status(), rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::Rejected(rejection.status(), rejection.body_text())
    }
}

impl From<FilterTooLong> for ApiError {
    fn from(too_long: FilterTooLong) -> Self {
        ApiError::BadRequest(too_long.to_string())
    }
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
            ApiError::NotFound => error(StatusCode::NOT_FOUND, "not found"),
            ApiError::NoRoute => error(StatusCode::NOT_FOUND, "no route at this path"),
            ApiError::WrongMethod => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take this method (see the Allow header)",
            ),
            ApiError::BadRequest(why) => error(StatusCode::BAD_REQUEST, why),
            ApiError::Rejected(status, why) => error(status, why),
            ApiError::Database(db) => error(StatusCode::INTERNAL_SERVER_ERROR, db.to_string()),
            ApiError::TooManyRequests(limited) => (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("retry-after", seconds(limited.retry_after)),
                    ("ratelimit-limit", limited.limit.to_string()),
                    ("ratelimit-remaining", limited.remaining.to_string()),
                    ("ratelimit-reset", seconds(limited.reset_after)),
                ],
                error(StatusCode::TOO_MANY_REQUESTS, limited.to_string()),
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
    State(api): State<Api>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<super::Vehicle> {
    let Path(id) = id?;
    found(api.vehicle(id).await?)
}

async fn update_price(
    State(api): State<Api>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    id: Result<Path<i64>, PathRejection>,
    update: Result<Json<PriceUpdate>, JsonRejection>,
) -> ApiResult<super::Vehicle> {
    let (Path(id), Json(update)) = (id?, update?);
    if update.price <= 0 {
        return Err(ApiError::BadRequest("price must be positive".into()));
    }
    found(change_price(&api, client.ip(), id, update.price).await?)
}

/// A price change on behalf of `client`: at most [`PRICE_CHANGES_PER_MINUTE`] per minute
/// and client address; a refused change never reaches the database.
#[rate_limit(key = "price-change:<client>", limit = 5, per = "1m", cache = api.service.cache())]
async fn change_price(
    api: &Api,
    client: IpAddr,
    id: i64,
    price: i64,
) -> Result<Option<super::Vehicle>, ApiError> {
    Ok(api.update_price(id, price).await?)
}

async fn dealer_vehicles(
    State(api): State<Api>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<super::DealerVehicles> {
    let Path(id) = id?;
    found(api.dealer_vehicles(id).await?)
}

async fn homepage(State(api): State<Api>) -> ApiResult<super::Homepage> {
    Ok(Json(api.homepage().await?))
}

async fn search(
    State(api): State<Api>,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult<super::SearchPage> {
    let Query(query) = query?;
    // Refused before the cache: an absurd value never becomes a key.
    let filters = SearchFilters::from_query(&query)?;
    Ok(Json(api.search(&filters).await?))
}

async fn user(
    State(api): State<Api>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<super::UserProfile> {
    let Path(id) = id?;
    found(api.user(id).await?)
}

async fn update_profile(
    State(api): State<Api>,
    id: Result<Path<i64>, PathRejection>,
    update: Result<Json<ProfileUpdate>, JsonRejection>,
) -> ApiResult<super::UserProfile> {
    let (Path(id), Json(update)) = (id?, update?);
    if update.name.trim().is_empty() {
        return Err(ApiError::BadRequest("name must not be empty".into()));
    }
    found(api.update_profile(id, &update).await?)
}
