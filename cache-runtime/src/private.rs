//! Items used by the code that the attributes generate. Not public API: no semver promise.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::codec::{CloneProbe, Cloner, ViaClone, ViaDecode};
pub use crate::default_cache::default_cache;
pub use crate::key::push_part;
use crate::load::body::{Detachable, Inline};
#[doc(hidden)]
pub use crate::policy::Policy;
pub use crate::shape::{OptionShape, PlainShape, ResultOptionShape, ResultShape, Shape};
pub use crate::stats::CountersSlot;
use crate::Cache;

/// What `#[cached]` knows about one annotated function, as a `static`.
pub struct CachedFn {
    /// The name in stats and metrics.
    pub name: &'static str,
    /// The time to live and options, parsed and checked at compile time.
    pub policy: Policy,
    /// This function's counters in the cache it runs with.
    pub counters: CountersSlot,
}

/// `cache = <expr>`: the expression is borrowed and deref-coerced to `&Cache`, so `Cache`,
/// `&Cache`, `Arc<Cache>` and `LazyLock<Cache>` statics all work.
pub fn cache_of(cache: &Cache) -> Cache {
    cache.clone()
}

/// The body of a `#[cached]` function whose body runs in the caller.
pub async fn cached<S, R, F, Fut>(
    cache: Cache,
    function: &'static CachedFn,
    key: String,
    cloner: Cloner<S::Value>,
    body: F,
) -> R
where
    S: Shape<R>,
    S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    let core = cache.core();
    let counters = function.counters.get(core.id(), core.stats(), function.name);
    if !core.key_fits(&counters, &key) {
        return body().await;
    }
    crate::load::through::<S, R, _>(core, &counters, &key, &function.policy, cloner, Inline(body))
        .await
}

/// The body of a `#[cached]` function with `refresh`, `early` or `timeout`: started, the
/// body owns its arguments, so it may finish on a task of its own after the caller returned.
pub async fn cached_detached<S, R, F, Fut>(
    cache: Cache,
    function: &'static CachedFn,
    key: String,
    cloner: Cloner<S::Value>,
    body: F,
) -> R
where
    S: Shape<R> + 'static,
    S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
    R: Send + 'static,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = R> + Send + 'static,
{
    // Boxed as `Send` here, where the body's closure is a type parameter: checked on the
    // caller's concrete closure (which borrows `self`), rustc fails to prove the lookup's
    // future `Send` although it is ("implementation of `Send` is not general enough", a
    // known limitation of auto traits on async fns). One allocation per call, for these
    // functions only.
    let call: std::pin::Pin<Box<dyn Future<Output = R> + Send + '_>> = Box::pin(async move {
        let core = cache.core();
        let counters = function.counters.get(core.id(), core.stats(), function.name);
        if !core.key_fits(&counters, &key) {
            return body().await;
        }
        let policy = &function.policy;
        crate::load::through::<S, R, _>(core, &counters, &key, policy, cloner, Detachable(body))
            .await
    });
    call.await
}

/// `refresh`, `early` and `timeout` finish the body in the background, with a clone of
/// `self`: a method's `Self` must be `Clone + Send + Sync + 'static` (a handle such as a
/// struct of pools and `Arc`s; `#[derive(Clone)]` it).
pub fn detached_self<T: Clone + Send + Sync + 'static>(this: &T) -> T {
    this.clone()
}

/// `refresh`, `early` and `timeout` finish the body in the background, with an owned copy
/// of each borrowed parameter it uses (`ToOwned`: `&str` becomes a `String`): the copy must
/// be `Send + 'static`.
pub fn detached_param<T>(borrowed: &T) -> T::Owned
where
    T: std::borrow::ToOwned + ?Sized,
    T::Owned: Send + 'static,
{
    borrowed.to_owned()
}

/// `refresh`, `early` and `timeout` finish the body in the background: an owned parameter
/// moves into it, so it must be `Send + 'static`.
pub fn detached_value<T: Send + 'static>(_: &T) {}

pub use crate::invalidate::Target;
pub use crate::registry::{Declaration, DeclarationKind};
pub use inventory;

/// What `#[invalidates]` and `#[cache_put]` know about their function.
pub struct WritingFn {
    /// The name in stats and metrics.
    pub name: &'static str,
    /// The time to live (`#[cache_put]`; unused by `#[invalidates]`).
    pub ttl: Duration,
}

/// Runs after an `#[invalidates]` function succeeded.
pub async fn invalidate_after(cache: &Cache, function: &'static WritingFn, targets: Vec<Target>) {
    crate::invalidate::invalidate_targets(cache.core(), function.name, targets).await;
}

/// Runs after a `#[cache_put]` function returned: stores its value when it has one.
pub async fn put_after<S, R>(
    cache: &Cache,
    function: &'static WritingFn,
    key: String,
    cloner: Cloner<S::Value>,
    returned: &R,
) where
    S: Shape<R>,
    S::Value: Serialize + Send + Sync + 'static,
{
    // Nothing can be stored under a key over `max_key_bytes`, so there is nothing to
    // replace or remove either.
    let core = cache.core();
    if key.len() > core.settings().max_key_bytes {
        // Counted and logged (bounded) like an attribute's key that does not fit.
        core.key_fits(&core.counters(function.name), &key);
        return;
    }
    crate::write::put_outcome::<S, R>(
        cache.core(),
        function.name,
        &key,
        function.ttl,
        cloner,
        returned,
    )
    .await;
}

// ---- `#[cached_batch]` -----------------------------------------------------------------------

pub use crate::batch_shape::BatchReturn;

/// The batch parameter's elements, as the map's keys: spanned on the parameter's type, so a
/// key type that differs from the map's is reported there.
pub fn batch_elements<R: BatchReturn>(elements: &[R::Key]) -> &[R::Key] {
    elements
}

/// The body of a `#[cached_batch]` function: `keys[i]` is the rendered key of
/// `elements[i]`; `body` runs at most once, with the elements that missed.
pub async fn cached_batch<R, F, Fut>(
    cache: Cache,
    function: &'static CachedFn,
    elements: &[R::Key],
    keys: Vec<String>,
    cloner: Cloner<R::Value>,
    body: F,
) -> R
where
    R: BatchReturn,
    R::Key: Clone,
    R::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: FnOnce(Vec<R::Key>) -> Fut,
    Fut: Future<Output = R>,
{
    let core = cache.core();
    let counters = function.counters.get(core.id(), core.stats(), function.name);
    crate::load::batch::through_many::<R, F, Fut>(
        core,
        &counters,
        &function.policy,
        cloner,
        elements,
        &keys,
        body,
    )
    .await
}

// ---- `#[rate_limit]` -------------------------------------------------------------------------

pub use crate::rate_limit::{FailMode, RateLimited};

/// What `#[rate_limit]` knows about one annotated function, as a `static`.
pub struct RateLimitFn {
    /// The name in stats and metrics.
    pub name: &'static str,
    /// Calls admitted per window (checked at compile time: 1 to `MAX_RATE_LIMIT`).
    pub limit: u64,
    /// The window (checked at compile time: at least 1 ms).
    pub per: Duration,
    /// `fail_open` / `fail_closed`.
    pub on_failure: FailMode,
    /// This function's counters in the cache it runs with.
    pub counters: CountersSlot,
}

/// Runs before the body of a `#[rate_limit]` function: `Err` when the call is refused.
pub async fn rate_limit(
    cache: &Cache,
    function: &'static RateLimitFn,
    key: String,
) -> Result<(), RateLimited> {
    let core = cache.core();
    let counters = function.counters.get(core.id(), core.stats(), function.name);
    // A key over `max_key_bytes` is hashed: it keeps a limit of its own.
    let key = crate::key::bounded_rate_key(&key, core.settings().max_key_bytes);
    crate::rate_limit::decide(
        core,
        &counters,
        &key,
        function.limit,
        function.per,
        function.on_failure,
    )
    .await
    .into_result()
    .map(drop)
}

/// The refused call's return value: `Err(E::from(limited))`. Generated spanned on the
/// function's return type, so a missing `From<RateLimited>` is reported there.
pub fn rate_limited<T, E: From<RateLimited>>(limited: RateLimited) -> Result<T, E> {
    Err(E::from(limited))
}

/// The stored bytes of `value` with `codec` and `compress_above` (the `formats` bench and
/// tests measure the envelope with it).
pub fn encode_value<T: Serialize + ?Sized>(
    value: &T,
    codec: crate::Codec,
    compress_above: Option<usize>,
) -> Vec<u8> {
    let format = crate::format::Format { codec, compress_above, ..Default::default() };
    format.encode(value).expect("the value serializes").0
}

/// Decodes stored bytes as a cache with the default settings would; `None` when they do
/// not decode (any reason).
pub fn decode_value<T: DeserializeOwned + 'static>(stored: &[u8]) -> Option<T> {
    crate::format::ReadFormat::default().decode(stored).ok()
}
