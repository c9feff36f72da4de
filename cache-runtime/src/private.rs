//! Items used by the code that the attributes generate. Not public API: no semver promise.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::codec::{CloneProbe, Cloner, ViaClone, ViaDecode};
pub use crate::default_cache::default_cache;
pub use crate::key::{push_part, KeyBuffer, KeyPart, KeyWriter};
use crate::load::body::{Detachable, Inline};
#[doc(hidden)]
pub use crate::policy::Policy;
pub use crate::shape::{
    absent_ttl_applies, cacheable, AbsentShape, ByNesting, ByOption, ByPlain, ByResult,
    CacheableValue, NotStorable, OptionResultShape, OptionShape, Outcome, PlainShape,
    ResultOptionShape, ResultShape, Shape, ShapeProbe, Shaped, Storable, ValueProbe, VerdictOn,
    ViaAnything, ViaSerde,
};
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

/// The cache a `#[cached]` call was given, as `&Cache`: the generated code holds `cache =
/// <expr>` (borrowed, or a clone when the body may move what it names) and passes a
/// reference to it, deref-coerced here, so `&Cache`, `Arc<Cache>` and `LazyLock<Cache>`
/// statics all work.
pub fn cache_ref(cache: &Cache) -> &Cache {
    cache
}

/// The body of a `#[cached]` function whose body runs in the caller. `tags`: the rendered
/// `tags = [...]` (empty without). `cache` is borrowed for the call (no handle clone).
/// An `async move` block, not an `async fn`, so the call's future holds each argument once
/// (see `load::through_after`).
#[allow(clippy::manual_async_fn)]
pub fn cached<'a, S, R, F, Fut>(
    _shape: Shaped<S, R>,
    cache: &'a Cache,
    function: &'static CachedFn,
    key: KeyBuffer,
    tags: Vec<String>,
    cloner: Cloner<S::Value>,
    body: F,
) -> impl Future<Output = R> + 'a
where
    S: Shape<R> + 'a,
    S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
    R: 'a,
    F: FnOnce() -> Fut + 'a,
    Fut: Future<Output = R> + 'a,
{
    async move {
        let core = cache.core();
        let counters = function.counters.get(core.id(), core.stats(), function.name);
        if !core.key_fits(&counters, &key) || !tags.iter().all(|tag| core.key_fits(&counters, tag))
        {
            return body().await;
        }
        let policy = &function.policy;
        // A near hit returns here, before the store path's futures are made.
        let early =
            match crate::load::served_in_process::<S, R>(core, &counters, &key, policy, cloner) {
                Ok(returned) => return returned,
                Err(early) => early,
            };
        let body = Inline(body);
        crate::load::through_after::<S, R, _>(
            core, &counters, &key, &tags, policy, cloner, body, early,
        )
        .await
    }
}

/// The body of a `#[cached]` function with `refresh`, `early` or `timeout`: started, the
/// body owns its arguments, so it may finish on a task of its own after the caller returned.
pub async fn cached_detached<S, R, F, Fut>(
    _shape: Shaped<S, R>,
    cache: &Cache,
    function: &'static CachedFn,
    key: KeyBuffer,
    tags: Vec<String>,
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
    //
    // A near hit is served before that allocation.
    let core = cache.core();
    let counters = function.counters.get(core.id(), core.stats(), function.name);
    let fits =
        core.key_fits(&counters, &key) && tags.iter().all(|tag| core.key_fits(&counters, tag));
    let policy = &function.policy;
    let early = match fits {
        true => match crate::load::served_in_process::<S, R>(core, &counters, &key, policy, cloner)
        {
            Ok(returned) => return returned,
            Err(early) => Some(early),
        },
        false => None,
    };
    let call: std::pin::Pin<Box<dyn Future<Output = R> + Send + '_>> = Box::pin(async move {
        let Some(early) = early else { return body().await };
        let body = Detachable(body);
        crate::load::through_after::<S, R, _>(
            core, &counters, &key, &tags, policy, cloner, body, early,
        )
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
pub fn detached_param<T>(borrowed: &T) -> OwnedParam<T, T::Owned>
where
    T: std::borrow::ToOwned + ?Sized,
    T::Owned: Send + 'static,
{
    OwnedParam { owned: borrowed.to_owned(), borrowed: std::marker::PhantomData }
}

/// The owned copy `O` of a borrowed parameter `&T`, lent to the body as a `&T` again.
pub struct OwnedParam<T: ?Sized, O> {
    owned: O,
    borrowed: std::marker::PhantomData<fn() -> *const T>,
}

impl<T: ?Sized, O: std::borrow::Borrow<T>> OwnedParam<T, O> {
    /// The copy, borrowed as the parameter was (`&str` from a `String`).
    pub fn get(&self) -> &T {
        self.owned.borrow()
    }
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

/// Runs after a `#[cache_put]` function returned: stores its value when it has one, with
/// `tags` (the rendered `tags = [...]`).
pub async fn put_after<S, R>(
    _shape: Shaped<S, R>,
    cache: &Cache,
    function: &'static WritingFn,
    key: String,
    tags: Vec<String>,
    cloner: Cloner<S::Value>,
    returned: &R,
) where
    S: Shape<R>,
    S::Value: Serialize + Send + Sync + 'static,
{
    // Nothing can be stored under a key over `max_key_bytes`, so there is nothing to
    // replace or remove either.
    let core = cache.core();
    let max = core.settings().max_key_bytes;
    if key.len() > max || tags.iter().any(|tag| tag.len() > max) {
        // Counted and logged (bounded) like an attribute's key that does not fit. A tag
        // that does not fit could never be invalidated: the value is not stored either,
        // and the old one goes.
        let counters = core.counters(function.name);
        if key.len() <= max {
            let gone = crate::write::Change::Remove(crate::scope::Scope::Key(key.clone()));
            let _ = crate::write::apply(core, &counters, gone).await;
        }
        let long = tags.iter().find(|tag| tag.len() > max).unwrap_or(&key);
        core.key_fits(&counters, long);
        return;
    }
    crate::write::put_outcome::<S, R>(
        cache.core(),
        function.name,
        &key,
        function.ttl,
        &tags,
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
/// `elements[i]`, `tags[i]` its rendered `tags = [...]` (`tags` empty without); `body` runs
/// at most once, with the elements that missed.
pub async fn cached_batch<R, F, Fut>(
    cache: Cache,
    function: &'static CachedFn,
    elements: &[R::Key],
    keys: Vec<String>,
    tags: Vec<Vec<String>>,
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
        &tags,
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
pub fn rate_limited<R: Refusable>(limited: RateLimited) -> R {
    R::refused(limited)
}

/// Return types a refused call can be answered with: `Result<T, E>` (through any alias)
/// with `E: From<RateLimited>`, answered `Err(E::from(limited))`.
#[diagnostic::on_unimplemented(
    message = "`#[rate_limit]` needs a function returning `Result<T, E>` with `E: From<cache_runtime::RateLimited>`: `{Self}` is not a `Result`",
    label = "a refused call returns `Err(E::from(RateLimited {{ .. }}))`"
)]
pub trait Refusable {
    /// The answer to a refused call.
    fn refused(limited: RateLimited) -> Self;
}

impl<T, E: From<RateLimited>> Refusable for Result<T, E> {
    fn refused(limited: RateLimited) -> Self {
        Err(E::from(limited))
    }
}

/// The cached value of a returned value (of `Ok`, `Some`, or the whole value), for the
/// `<return>` placeholder of `#[invalidates]` and `#[cache_put]`; `None` otherwise.
pub fn returned_value<S: Shape<R>, R>(_shape: Shaped<S, R>, returned: &R) -> Option<&S::Value> {
    match S::outcome(returned) {
        Outcome::Value(value) => Some(value),
        Outcome::Absent | Outcome::Failed => None,
    }
}

/// Whether the function succeeded: anything but `Err` (of `Result<T, E>`, through any
/// alias, or `Some(Err)`), for `#[invalidates]`.
pub fn succeeded<S: Shape<R>, R>(_shape: Shaped<S, R>, returned: &R) -> bool {
    !matches!(S::outcome(returned), Outcome::Failed)
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
