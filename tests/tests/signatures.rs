//! The attributes read types, not spellings (issue 26): whatever way a return type is
//! written (an alias, a renamed import, an alias with its parameters re-ordered, an alias
//! nested in a `Result`), an `Err` or a `None` is never cached, on the memory store and on
//! a real Redis. Also: `Option<Result<T, E>>` (only `Some(Ok)` is cached), `absent_ttl`
//! through an alias, `#[cache_put]` and `#[invalidates]` through aliases, `#[rate_limit]` on
//! an alias, the returned value in templates (`<return.id>`), type parameters in keys,
//! `self: Arc<Self>`, pattern-bound placeholders and `#[async_trait]` impls used as
//! `Box<dyn Trait>`.
//!
//! Clippy's pedantic set is on for this file (CI denies warnings): the generated code of
//! every attribute below raises none of its lints.
#![warn(clippy::pedantic)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use async_trait::async_trait;
use cache_runtime::{cache_put, cached, invalidates, rate_limit, Cache, KeyPart, RateLimited};
use cache_tests::RedisServer;
use serde::{Deserialize, Serialize};

mod error {
    /// An application's own `Result`, imported under another name below.
    pub(crate) type Result<T> = std::result::Result<T, String>;
}
use error::Result as AppResult;

type Res<T> = Result<T, String>;
type Maybe<T> = Option<T>;
type Flipped<E, T> = Result<T, E>;

/// What a test body returns: a value, nothing, or an error.
#[derive(Clone, Copy)]
enum Answer {
    Value,
    Absent,
    Fail,
}

async fn memory() -> Cache {
    Cache::builder().memory_capacity(1 << 20).build().await.unwrap()
}

async fn redis(server: &RedisServer) -> Cache {
    Cache::builder().redis(server.url()).prefix("sig:").build().await.unwrap()
}

/// Runs `check` on a memory cache, then on a Redis cache on a server of its own.
async fn on_each_store<F, Fut>(check: F)
where
    F: Fn(Cache) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    check(memory().await).await;
    let server = RedisServer::start();
    check(redis(&server).await).await;
}

#[cached(key = "res:<id>", ttl = "1m", cache = cache)]
async fn res_alias(cache: &Cache, runs: &AtomicUsize, id: u64, answer: Answer) -> Res<u64> {
    runs.fetch_add(1, SeqCst);
    match answer {
        Answer::Fail => Err("db down".into()),
        _ => Ok(id),
    }
}

#[cached(key = "app:<id>", ttl = "1m", cache = cache)]
async fn renamed_import(
    cache: &Cache,
    runs: &AtomicUsize,
    id: u64,
    answer: Answer,
) -> AppResult<u64> {
    runs.fetch_add(1, SeqCst);
    match answer {
        Answer::Fail => Err("db down".into()),
        _ => Ok(id),
    }
}

#[cached(key = "maybe:<id>", ttl = "1m", cache = cache)]
async fn maybe_alias(cache: &Cache, runs: &AtomicUsize, id: u64, answer: Answer) -> Maybe<u64> {
    runs.fetch_add(1, SeqCst);
    match answer {
        Answer::Value => Some(id),
        _ => None,
    }
}

#[cached(key = "resmaybe:<id>", ttl = "1m", cache = cache)]
async fn result_of_alias(
    cache: &Cache,
    runs: &AtomicUsize,
    id: u64,
    answer: Answer,
) -> Result<Maybe<u64>, String> {
    runs.fetch_add(1, SeqCst);
    match answer {
        Answer::Value => Ok(Some(id)),
        Answer::Absent => Ok(None),
        Answer::Fail => Err("db down".into()),
    }
}

#[cached(key = "flipped:<id>", ttl = "1m", cache = cache)]
async fn flipped_alias(
    cache: &Cache,
    runs: &AtomicUsize,
    id: u64,
    answer: Answer,
) -> Flipped<String, u64> {
    runs.fetch_add(1, SeqCst);
    match answer {
        Answer::Fail => Err("db down".into()),
        _ => Ok(id),
    }
}

#[cached(key = "optres:<id>", ttl = "1m", cache = cache)]
async fn option_of_result(
    cache: &Cache,
    runs: &AtomicUsize,
    id: u64,
    answer: Answer,
) -> Option<Result<u64, String>> {
    runs.fetch_add(1, SeqCst);
    match answer {
        Answer::Value => Some(Ok(id)),
        Answer::Absent => None,
        Answer::Fail => Some(Err("db down".into())),
    }
}

/// Calls `f` twice with `answer` on a fresh key and returns how many times the body ran.
macro_rules! runs_twice {
    ($f:ident, $cache:expr, $id:expr, $answer:expr) => {{
        let runs = AtomicUsize::new(0);
        let first = $f(&$cache, &runs, $id, $answer).await;
        let second = $f(&$cache, &runs, $id, $answer).await;
        assert_eq!(first, second, "{}: the same answer twice", stringify!($f));
        runs.load(SeqCst)
    }};
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_and_absent_results_are_never_cached_whatever_the_spelling() {
    on_each_store(|cache| async move {
        // Each spelling: an error (or absent result) runs the body every time; a value once.
        assert_eq!(runs_twice!(res_alias, cache, 1, Answer::Fail), 2, "type Res<T>");
        assert_eq!(runs_twice!(res_alias, cache, 2, Answer::Value), 1, "type Res<T>");
        assert_eq!(runs_twice!(renamed_import, cache, 1, Answer::Fail), 2, "Result as AppResult");
        assert_eq!(runs_twice!(renamed_import, cache, 2, Answer::Value), 1, "AppResult");
        assert_eq!(runs_twice!(maybe_alias, cache, 1, Answer::Absent), 2, "type Maybe<T>");
        assert_eq!(runs_twice!(maybe_alias, cache, 2, Answer::Value), 1, "type Maybe<T>");
        assert_eq!(runs_twice!(result_of_alias, cache, 1, Answer::Absent), 2, "Ok(None)");
        assert_eq!(runs_twice!(result_of_alias, cache, 2, Answer::Fail), 2, "Err");
        assert_eq!(runs_twice!(result_of_alias, cache, 3, Answer::Value), 1, "Ok(Some)");
        assert_eq!(runs_twice!(flipped_alias, cache, 1, Answer::Fail), 2, "Flipped<E, T>");
        assert_eq!(runs_twice!(flipped_alias, cache, 2, Answer::Value), 1, "Flipped<E, T>");
        assert_eq!(runs_twice!(option_of_result, cache, 1, Answer::Fail), 2, "Some(Err)");
        assert_eq!(runs_twice!(option_of_result, cache, 2, Answer::Absent), 2, "None");
        assert_eq!(runs_twice!(option_of_result, cache, 3, Answer::Value), 1, "Some(Ok)");
    })
    .await;
}

#[cached(key = "negative:<id>", ttl = "1m", absent_ttl = "1m", cache = cache)]
async fn absent_through_alias(
    cache: &Cache,
    runs: &AtomicUsize,
    id: u64,
    answer: Answer,
) -> Maybe<u64> {
    runs.fetch_add(1, SeqCst);
    match answer {
        Answer::Value => Some(id),
        _ => None,
    }
}

#[cached(key = "negative2:<id>", ttl = "1m", absent_ttl = "1m", cache = cache)]
async fn absent_option_of_result(
    cache: &Cache,
    runs: &AtomicUsize,
    id: u64,
    answer: Answer,
) -> Option<Result<u64, String>> {
    runs.fetch_add(1, SeqCst);
    match answer {
        Answer::Value => Some(Ok(id)),
        Answer::Absent => None,
        Answer::Fail => Some(Err("db down".into())),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn absent_ttl_applies_through_an_alias_and_to_option_of_result() {
    on_each_store(|cache| async move {
        assert_eq!(runs_twice!(absent_through_alias, cache, 1, Answer::Absent), 1);
        assert_eq!(runs_twice!(absent_option_of_result, cache, 1, Answer::Absent), 1);
        assert_eq!(runs_twice!(absent_option_of_result, cache, 2, Answer::Fail), 2);
    })
    .await;
}

// ---- #[cache_put] and #[invalidates] through aliases ------------------------------------------

#[cached(key = "row:<id>", ttl = "1m", cache = cache)]
async fn read_row(cache: &Cache, runs: &AtomicUsize, id: u64) -> Res<u64> {
    runs.fetch_add(1, SeqCst);
    Ok(id)
}

#[cache_put(key = "row:<id>", ttl = "1m", cache = cache)]
async fn put_row(cache: &Cache, id: u64, answer: Answer) -> Res<u64> {
    match answer {
        Answer::Fail => Err("write failed".into()),
        _ => Ok(id * 100),
    }
}

#[cache_put(key = "row:<id>", ttl = "1m", cache = cache)]
async fn put_maybe(cache: &Cache, id: u64, answer: Answer) -> Maybe<u64> {
    match answer {
        Answer::Value => Some(id * 1000),
        _ => None,
    }
}

#[invalidates("row:<id>", cache = cache)]
async fn remove_row(cache: &Cache, id: u64, answer: Answer) -> Res<()> {
    match answer {
        Answer::Fail => Err("write failed".into()),
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_follow_the_type_through_aliases() {
    on_each_store(|cache| async move {
        let runs = AtomicUsize::new(0);
        assert_eq!(read_row(&cache, &runs, 1).await, Ok(1));
        // An `Err` of an aliased `Result` is not stored, and does not invalidate.
        assert!(put_row(&cache, 1, Answer::Fail).await.is_err());
        assert!(remove_row(&cache, 1, Answer::Fail).await.is_err());
        assert_eq!(read_row(&cache, &runs, 1).await, Ok(1));
        assert_eq!(runs.load(SeqCst), 1, "still the first value");
        // `None` of an aliased `Option` removes the key (the row is gone), never stores null.
        assert_eq!(put_maybe(&cache, 1, Answer::Absent).await, None);
        assert_eq!(read_row(&cache, &runs, 1).await, Ok(1));
        assert_eq!(runs.load(SeqCst), 2, "removed, read again");
        // `Ok` stores; `Some` stores; `Ok(())` invalidates.
        assert_eq!(put_row(&cache, 1, Answer::Value).await, Ok(100));
        assert_eq!(read_row(&cache, &runs, 1).await, Ok(100));
        assert_eq!(put_maybe(&cache, 1, Answer::Value).await, Some(1000));
        assert_eq!(read_row(&cache, &runs, 1).await, Ok(1000));
        assert_eq!(remove_row(&cache, 1, Answer::Value).await, Ok(()));
        assert_eq!(read_row(&cache, &runs, 1).await, Ok(1));
        assert_eq!(runs.load(SeqCst), 3);
    })
    .await;
}

// ---- the returned value in templates --------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Listing {
    id: u64,
    dealer: u64,
}

#[cached(key = "dealer:<dealer>:listings", ttl = "1m", cache = cache)]
async fn listings(cache: &Cache, runs: &AtomicUsize, dealer: u64) -> Res<Vec<u64>> {
    runs.fetch_add(1, SeqCst);
    Ok(vec![dealer])
}

/// Create, then invalidate the lists that now include the new row, and store it by its id.
#[invalidates("dealer:<return.dealer>:listings", cache = cache)]
#[cache_put(key = "listing:<return.id>", ttl = "1m", cache = cache)]
async fn create_listing(cache: &Cache, dealer: u64, fail: bool) -> Res<Listing> {
    if fail {
        return Err("insert failed".into());
    }
    Ok(Listing { id: 77, dealer })
}

#[cached(key = "listing:<id>", ttl = "1m", cache = cache)]
async fn listing(cache: &Cache, runs: &AtomicUsize, id: u64) -> Res<Listing> {
    runs.fetch_add(1, SeqCst);
    Err(format!("no listing {id} in the database"))
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_can_name_the_returned_value() {
    on_each_store(|cache| async move {
        let runs = AtomicUsize::new(0);
        listings(&cache, &runs, 5).await.unwrap();
        listings(&cache, &runs, 5).await.unwrap();
        assert_eq!(runs.load(SeqCst), 1);
        // An `Err` has no value: nothing invalidated.
        assert!(create_listing(&cache, 5, true).await.is_err());
        listings(&cache, &runs, 5).await.unwrap();
        assert_eq!(runs.load(SeqCst), 1);
        // `Ok`: the dealer's list is invalidated, the new row stored under its id.
        let created = create_listing(&cache, 5, false).await.unwrap();
        listings(&cache, &runs, 5).await.unwrap();
        assert_eq!(runs.load(SeqCst), 2);
        let reads = AtomicUsize::new(0);
        assert_eq!(listing(&cache, &reads, 77).await, Ok(created));
        assert_eq!(reads.load(SeqCst), 0, "stored by #[cache_put] under <return.id>");
    })
    .await;
}

// ---- #[rate_limit] on an alias ----------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum ApiError {
    Limited,
}

impl From<RateLimited> for ApiError {
    fn from(_: RateLimited) -> Self {
        ApiError::Limited
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[rate_limit(key = "ping:<id>", limit = 1, per = "1m", cache = cache)]
async fn ping(cache: &Cache, id: u64) -> ApiResult<()> {
    let _ = id;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_answers_through_an_alias() {
    on_each_store(|cache| async move {
        assert_eq!(ping(&cache, 1).await, Ok(()));
        assert_eq!(ping(&cache, 1).await, Err(ApiError::Limited));
    })
    .await;
}

// ---- type parameters, patterns, `self: Arc<Self>`, async-trait --------------------------------

#[cached(key = "gen:<T>:<id>", ttl = "1m", cache = cache)]
async fn decode<T: Default + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static>(
    cache: &Cache,
    runs: &AtomicUsize,
    id: u64,
) -> T {
    runs.fetch_add(1, SeqCst);
    let _ = id;
    T::default()
}

#[cached(key = "pair:<a>:<b>", ttl = "1m", cache = cache)]
async fn pair(cache: &Cache, runs: &AtomicUsize, (a, b): (u64, u64)) -> u64 {
    runs.fetch_add(1, SeqCst);
    a + b
}

#[tokio::test(flavor = "multi_thread")]
async fn type_parameters_and_patterns_are_part_of_the_key() {
    on_each_store(|cache| async move {
        let runs = AtomicUsize::new(0);
        assert_eq!(decode::<u64>(&cache, &runs, 1).await, 0);
        assert_eq!(decode::<String>(&cache, &runs, 1).await, "");
        assert_eq!(decode::<Vec<u8>>(&cache, &runs, 1).await, Vec::<u8>::new());
        assert_eq!(decode::<u64>(&cache, &runs, 1).await, 0);
        assert_eq!(runs.load(SeqCst), 3, "one key per type, each read back as its type");
        let runs = AtomicUsize::new(0);
        assert_eq!(pair(&cache, &runs, (1, 2)).await, 3);
        assert_eq!(pair(&cache, &runs, (2, 1)).await, 3);
        assert_eq!(pair(&cache, &runs, (1, 2)).await, 3);
        assert_eq!(runs.load(SeqCst), 2);
    })
    .await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    model: String,
}

/// A repository written as `dyn`-compatible async trait (async-trait).
#[async_trait]
trait VehicleRepo: Send + Sync {
    async fn get(&self, id: u64) -> Result<Option<Vehicle>, String>;
    async fn rename(&self, id: u64, model: &str) -> Result<(), String>;
    async fn save(&self, vehicle: Vehicle) -> Result<Vehicle, String>;
    async fn limited(&self, id: u64) -> ApiResult<u64>;
}

struct Db {
    cache: Cache,
    reads: AtomicUsize,
}

#[async_trait]
impl VehicleRepo for Db {
    #[cached(key = "vehicle:<id>", ttl = "1m", cache = &self.cache)]
    async fn get(&self, id: u64) -> Result<Option<Vehicle>, String> {
        self.reads.fetch_add(1, SeqCst);
        Ok(if id == 0 { None } else { Some(Vehicle { id, model: "base".into() }) })
    }

    #[invalidates("vehicle:<id>", cache = &self.cache)]
    async fn rename(&self, id: u64, model: &str) -> Result<(), String> {
        if model.is_empty() {
            return Err("empty".into());
        }
        Ok(())
    }

    #[cache_put(key = "vehicle:<vehicle.id>", ttl = "1m", cache = &self.cache)]
    async fn save(&self, vehicle: Vehicle) -> Result<Vehicle, String> {
        Ok(vehicle)
    }

    #[rate_limit(key = "limited", limit = 1, per = "1m", cache = &self.cache)]
    #[cached(key = "limited:<id>", ttl = "1m", cache = &self.cache)]
    async fn limited(&self, id: u64) -> ApiResult<u64> {
        Ok(id)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn async_trait_methods_are_cached_behind_dyn() {
    on_each_store(|cache| async move {
        let repo: Box<dyn VehicleRepo> = Box::new(Db { cache, reads: AtomicUsize::new(0) });
        let first = repo.get(7).await.unwrap();
        assert_eq!(repo.get(7).await.unwrap(), first);
        assert_eq!(repo.get(0).await, Ok(None));
        assert_eq!(repo.get(0).await, Ok(None));
        assert!(repo.rename(7, "").await.is_err());
        assert_eq!(repo.get(7).await.unwrap(), first, "an Err does not invalidate");
        let saved = Vehicle { id: 7, model: "sport".into() };
        repo.save(saved.clone()).await.unwrap();
        assert_eq!(repo.get(7).await.unwrap(), Some(saved), "stored by #[cache_put]");
        repo.rename(7, "x").await.unwrap();
        // `#[rate_limit]` above `#[cached]`: hits are not charged, the one miss used the
        // limit of 1, the next miss is refused (and its `Err` not cached).
        assert_eq!(repo.limited(1).await, Ok(1));
        assert_eq!(repo.limited(1).await, Ok(1));
        assert_eq!(repo.limited(2).await, Err(ApiError::Limited));
    })
    .await;
}

struct Service {
    cache: Cache,
    rate: u64,
    runs: AtomicUsize,
}

impl Service {
    #[cached(key = "svc:<id>", ttl = "1m", cache = &self.cache)]
    async fn price(self: Arc<Self>, id: u64) -> u64 {
        self.runs.fetch_add(1, SeqCst);
        id * self.rate
    }

    #[invalidates("svc:<id>", cache = &self.cache)]
    async fn reprice(self: Arc<Self>, id: u64) {
        let _ = id;
    }

    #[cached(key = "svc-fresh:<id>", ttl = "1m", refresh = "10s", cache = &self.cache)]
    async fn fresh(self: Arc<Self>, id: u64, _: &str) -> u64 {
        id * self.rate
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn arc_self_methods_are_cached() {
    on_each_store(|cache| async move {
        let service = Arc::new(Service { cache, rate: 3, runs: AtomicUsize::new(0) });
        assert_eq!(service.clone().price(2).await, 6);
        assert_eq!(service.clone().price(2).await, 6);
        assert_eq!(service.runs.load(SeqCst), 1);
        service.clone().reprice(2).await;
        assert_eq!(service.clone().price(2).await, 6);
        assert_eq!(service.runs.load(SeqCst), 2);
        assert_eq!(service.clone().fresh(2, "unused").await, 6);
    })
    .await;
}

// ---- #[derive(KeyPart)] -----------------------------------------------------------------------

#[derive(KeyPart, Clone, Copy)]
enum Region {
    Eu,
    Us,
}

#[derive(KeyPart)]
struct Vin(String);

#[cached(key = "stock:<region>:<vin>", ttl = "1m", cache = cache)]
async fn stock(cache: &Cache, region: Region, vin: &Vin) -> String {
    let _ = (region, vin);
    String::from("x")
}

#[tokio::test(flavor = "multi_thread")]
async fn derived_key_parts_render_the_variant_and_the_field() {
    let server = RedisServer::start();
    let cache = redis(&server).await;
    stock(&cache, Region::Eu, &Vin("a:b".into())).await;
    stock(&cache, Region::Us, &Vin("c".into())).await;
    let mut connection = server.connection().await;
    let mut keys: Vec<String> =
        redis::cmd("KEYS").arg("sig:stock:*").query_async(&mut connection).await.unwrap();
    keys.sort();
    assert_eq!(keys, ["sig:stock:Eu:a%3Ab", "sig:stock:Us:c"]);
}
