//! Return types through aliases, renamed imports and re-ordered alias parameters: each
//! attribute reads the type the compiler resolves (`absent_ttl` on `Maybe<u64>`,
//! `#[rate_limit]` on an aliased `Result`, `Option<Result<T, E>>`).

use cache_runtime::{cache_put, cached, invalidates, rate_limit, RateLimited};

mod error {
    pub type Result<T> = std::result::Result<T, String>;
}
use error::Result as AppResult;

type Res<T> = Result<T, String>;
type Maybe<T> = Option<T>;
type Flipped<E, T> = Result<T, E>;

#[derive(Debug)]
struct ApiError;

impl From<RateLimited> for ApiError {
    fn from(_: RateLimited) -> Self {
        ApiError
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[cached(key = "a:<id>", ttl = "1m")]
async fn res(id: u64) -> Res<u64> {
    Ok(id)
}

#[cached(key = "b:<id>", ttl = "1m")]
async fn app(id: u64) -> AppResult<u64> {
    Ok(id)
}

#[cached(key = "c:<id>", ttl = "1m", absent_ttl = "10s")]
async fn maybe(id: u64) -> Maybe<u64> {
    Some(id)
}

#[cached(key = "d:<id>", ttl = "1m", absent_ttl = "10s")]
async fn nested(id: u64) -> Result<Maybe<u64>, String> {
    Ok(Some(id))
}

#[cached(key = "e:<id>", ttl = "1m")]
async fn flipped(id: u64) -> Flipped<String, u64> {
    Ok(id)
}

#[cached(key = "f:<id>", ttl = "1m", absent_ttl = "10s")]
async fn option_of_result(id: u64) -> Option<Result<u64, String>> {
    Some(Ok(id))
}

#[cache_put(key = "a:<id>", ttl = "1m")]
async fn put(id: u64) -> Res<u64> {
    Ok(id)
}

#[cache_put(key = "c:<id>", ttl = "1m")]
async fn put_maybe(id: u64) -> Maybe<u64> {
    Some(id)
}

#[invalidates("a:<id>")]
async fn remove(id: u64) -> Res<()> {
    let _ = id;
    Ok(())
}

#[rate_limit(key = "g:<id>", limit = 5, per = "1m")]
async fn limited(id: u64) -> ApiResult<u64> {
    Ok(id)
}

fn main() {
    drop((res(1), app(1), maybe(1), nested(1), flipped(1), option_of_result(1)));
    drop((put(1), put_maybe(1), remove(1), limited(1)));
}
