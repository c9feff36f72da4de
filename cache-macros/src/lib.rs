//! Procedural macros of [cache-runtime](https://docs.rs/cache-runtime). Depend on
//! `cache-runtime` and use them from there: the generated code refers to it.

mod attr;
mod batch;
mod derive;
mod detach;
mod errors;
mod expand;
mod item;
mod rate_limit;
mod template;
mod ttl;
mod valid;

use proc_macro::TokenStream;

/// Caches an async function's results (cache-aside).
///
/// ```ignore
/// #[cached(key = "vehicle:<id>", ttl = "15m")]
/// async fn get_vehicle(id: u64) -> Result<Option<Vehicle>, DbError> { /* database */ }
/// ```
///
/// On a call the key is rendered from the arguments and looked up. On a hit the stored value
/// is returned and the body does not run. On a miss the body runs (once, however many
/// callers miss the same key at the same time in this process), its value is stored for the
/// time to live and returned.
///
/// # Arguments
///
/// | argument | meaning |
/// |---|---|
/// | `key = "..."` | Required. Key template: text plus placeholders `<param>`, `<param.field>`, `<self.field>`. |
/// | `ttl = "..."` | Required. Time to live: `<integer><unit>` pieces, largest unit first, units `ms`, `s`, `m`, `h`, `d` (`"500ms"`, `"15m"`, `"1h30m"`). |
/// | `lock` | Stampede protection across processes sharing a Redis: one process loads a missing key under a lease while the others wait for its value (within a process, concurrent misses share one load without it). |
/// | `stale = "..."` | Keep values this long in all (longer than `ttl`) and serve one that expired when the body fails. |
/// | `refresh = "..."` | Recompute a value older than this (shorter than `ttl`) in the background, started by a hit that returns the current value at once; once per key in a process and, on Redis, once across processes. |
/// | `early` / `early = 1.5` | XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): a hit recomputes the value early, in the background like `refresh`, when `δ·β·(−ln r) ≥ time left`, with `δ` the value's load time; `early` alone is β = 1. Excludes `refresh`. |
/// | `timeout = "..."` | Needs `stale`. A caller holding an expired value kept by `stale` waits this long for the body, then returns that value; the body goes on in the background and stores its result. |
/// | `absent_ttl = "..."` | Cache absent results (`None`, `Ok(None)`) this long (negative caching). Needs a return type with an absent result: `Option<T>`, `Result<Option<T>, E>` or `Option<Result<T, E>>`, through any alias (a compile error otherwise). |
/// | `idle = "..."` | Sliding expiration (sessions): the value is stored for `idle`, and each hit extends its remaining life to `min(idle, ttl - age)`, so a value nobody reads for `idle` is gone and `ttl` stays an absolute cap from the write time. Still one round trip on Redis (one script). Shorter than `ttl`; excludes `stale`, `refresh` and `early`; bypasses the near cache. |
/// | `tags = ["...", ...]` | Tags stored with the value: templates with the key grammar (placeholders encoded; no glob characters, not empty, no `#`), rendered per call. `Cache::invalidate_tag("make:ford")` or `#[invalidates(tags = ["make:<v.make>"])]` removes every key stored with the tag, in every process; reads never look at tags (a hit stays one `GET`). Excludes `idle`. |
/// | `near = false` | Bypass the cache's near cache (`CacheBuilder::near_cache`) for this function: every call reads Redis. No effect on a cache without one. Default: `true`. |
/// | `cache = <expr>` | The `Cache` to use: an expression of type `Cache`, `&Cache` or `Arc<Cache>`, which may use `self` and the parameters. Default: [`default_cache()`](https://docs.rs/cache-runtime/latest/cache_runtime/fn.default_cache.html). |
/// | `name = "..."` | The function's name in stats and metrics. Default: its identifier. |
///
/// # What is cached
///
/// The return type decides, by type (the type the compiler resolves: aliases, renamed
/// imports and re-ordered alias parameters are the types they stand for): `T` caches every
/// value, `Option<T>` caches `Some`, `Result<T, E>` caches `Ok`, `Result<Option<T>, E>` caches
/// `Ok(Some)`, `Option<Result<T, E>>` caches `Some(Ok)` (`None` is its absent result).
/// `Err` and `None` are never cached. The value must be `Serialize + DeserializeOwned +
/// Send + Sync + 'static` (a compile error on the return type otherwise); when it is also
/// `Clone`, a memory-store hit clones the value instead of decoding it.
///
/// A type parameter of the function that appears in the return type must be a placeholder
/// of the key (`<T>`, rendering `std::any::type_name::<T>()`), or each instantiation would
/// share the keys of the others (a compile error).
///
/// Methods take `&self` or `self: Arc<Self>`. Methods of `#[async_trait]` impls work too:
/// the attribute recognises async-trait's expansion and wraps its `async move` block.
///
/// # Bodies that finish in the background
///
/// With `refresh`, `early` or `timeout`, the body may run on a task of its own after the
/// caller returned, so it owns what it uses: `self` is cloned (`Self: Clone + Send + Sync +
/// 'static`; `self: Arc<Self>` clones the `Arc`), each borrowed parameter the body uses is
/// copied with `ToOwned`, owned ones move in (all `Send + 'static`). The copies are made when
/// the body starts, never on a hit. A parameter that cannot be owned so (an owned type that
/// borrows, a borrowed `impl Trait`, a reference bound by a pattern, a type parameter without
/// `'static`) is a compile error on it, with the fix.
///
/// # Keys
///
/// A placeholder names a parameter (`<id>`, `<v.dealer_id>`, `<self.region>`), a name bound
/// by a parameter's pattern (`(a, b): (u64, u64)`), a raw identifier without `r#` (`<type>`
/// for `r#type`) or a type parameter (`<T>`). Each placeholder value must implement
/// `KeyPart` (`#[derive(KeyPart)]` for enums and newtypes) and is encoded: every byte outside
/// `[A-Za-z0-9_.-]` is percent-encoded, so a value cannot add a `:` level or a glob
/// character, and different arguments never render the same key. Two placeholders must be
/// separated by text such as `:` (`~` and `,` alone do not separate: values write them raw).
/// A template must not contain `#`, which is reserved for the cache's own keys. With a Redis
/// cache built with `.prefix("okla:")`, the key `vehicle:<id>` for `id = 42` is stored as
/// `okla:vehicle:42`.
///
/// # Compile errors
///
/// Unknown placeholders (with a suggestion), `<>`, an unclosed `<`, glob characters or `#` in
/// the key, a bad or zero duration, `stale` not longer than `ttl`, `refresh` not shorter than
/// `ttl`, `early` with `refresh`, `timeout` without `stale`, `idle` not shorter than `ttl`,
/// with `refresh`, `early` or `timeout` a `&mut` parameter or a `Self` that is not `Clone`,
/// a missing `key` or `ttl`, unknown or duplicate arguments, a
/// non-`async` function, a receiver other than `&self` or `self: Arc<Self>`, a placeholder
/// whose type does not implement `KeyPart`, an unknown field, a value that is not
/// `Serialize + DeserializeOwned`, `<return>` in the key and `#[rate_limit]` anywhere below
/// are compile errors on the offending text. All errors of one attribute are reported
/// together.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached(args.into(), item.into()).into()
}

/// Caches a batch of keys at once: one key per element of a `&[K]` or `Vec<K>` parameter,
/// one lookup for all of them, the body at most once with the elements that missed.
///
/// ```ignore
/// #[cached_batch(key = "vehicle:<ids>", ttl = "15m", absent_ttl = "30s")]
/// async fn vehicles(&self, ids: &[u64]) -> Result<HashMap<u64, Vehicle>, DbError> {
///     self.db.vehicles_by_ids(ids).await // called with the ids that missed, once
/// }
/// ```
///
/// The placeholder that names the batch parameter renders one key per element, exactly as
/// `#[cached]` renders `key = "vehicle:<id>"` for `id: u64`: the two share their entries
/// (same key, same stored value), so a `#[cached]` function of one vehicle hits what the
/// batch stored, and the reverse. Other placeholders render once per call.
///
/// A call looks every distinct element's key up at once (one `MGET` on Redis; on a cluster
/// one per slot, in parallel; none for an empty input). The body then runs at most once, its
/// batch parameter holding only the elements that missed, deduplicated, in first-seen order,
/// and not at all when every element hit. Its map is stored element by element (all fills
/// in one more round trip, each through its fill ticket, so a key invalidated while the body
/// ran is not stored). An element the body leaves out of its map is absent: left out of the
/// answer, and cached as such for `absent_ttl` when set. `Err` stores nothing and is
/// returned. Elements that another call in this process is loading (a batch or a single
/// `#[cached]`) are awaited, not loaded twice; single callers waiting on a key this batch
/// loads get its value.
///
/// # Arguments
///
/// | argument | meaning |
/// |---|---|
/// | `key = "..."` | Required. Key template; exactly one placeholder names the batch parameter (`&[K]`, `&Vec<K>` or `Vec<K>`, with `K: KeyPart + Clone + Eq + Hash`). |
/// | `ttl = "..."` | Required. Time to live, as in `#[cached]`. |
/// | `absent_ttl = "..."` | Cache the elements the body left out (absent) this long. Default: not cached. |
/// | `tags = ["...", ...]` | Tag templates, as in `#[cached]`, rendered for each element: a tag may name the element (`"vehicle:<ids>"` is the element's tag) and the other parameters. Each element's entry is stored with its tags; `invalidate_tag` removes it. |
/// | `near = false` | Bypass the cache's near cache, as in `#[cached]`. |
/// | `cache = <expr>` | The `Cache` to use, as in `#[cached]`. |
/// | `name = "..."` | The function's name in stats and metrics (hits, misses and loads count per element; `cache_batch_size` per call). Default: its identifier. |
///
/// # Return type
///
/// `HashMap<K, V>` or `Result<HashMap<K, V>, E>` (any hasher), decided by the type, not by
/// how it is written: an alias works. `V: Serialize + DeserializeOwned + Send + Sync +
/// 'static`; the map's keys must be the batch parameter's element type.
///
/// # Compile errors
///
/// No placeholder naming a batch parameter, two of them, a return type that is not a map
/// or a `Result` of one (reported on the return type), elements of another type than the
/// map's keys (reported on the parameter's type), arguments `#[cached]` has but batches do
/// not (`lock`, `stale`, `refresh`, `early`, `timeout`, `idle`), and every error of
/// `#[cached]`'s key template. The batch parameter is found by its written type: an alias
/// of `Vec<K>` or `&[K]` is not recognised, and the error says to write the type out.
#[proc_macro_attribute]
pub fn cached_batch(args: TokenStream, item: TokenStream) -> TokenStream {
    batch::cached_batch(args.into(), item.into()).into()
}

/// Removes cached keys after the function succeeds.
///
/// ```ignore
/// #[invalidates("vehicle:<v.id>", "dealer:<v.dealer_id>:vehicles", "homepage:*")]
/// async fn update_vehicle(v: &Vehicle) -> Result<(), DbError> { /* write the database */ }
/// ```
///
/// Each argument is a key template (removed exactly) or a pattern with glob characters
/// (`*`, `?`, `[...]`; every matching key is removed). Placeholders name parameters as in
/// `#[cached]` and their values are encoded, so `dealer_id = "*"` invalidates dealer `*` only,
/// never every dealer. The keys are rendered from the arguments before the body runs and
/// removed after it returns, only on success: never on an `Err` (of a `Result`, by type,
/// through any alias, or `Some(Err)`).
///
/// A template may name the returned value: `<return>` or `<return.field>` (the value of `Ok`,
/// `Some`, or the whole value; `return` is a keyword, so no parameter has that name). It is
/// rendered after the body, and only when there is a value:
///
/// ```ignore
/// #[invalidates("dealer:<return.dealer_id>:vehicles")]
/// async fn create_vehicle(new: NewVehicle) -> Result<Vehicle, DbError> { /* INSERT */ }
/// ```
///
/// `tags = ["make:<v.make>", "listings"]` also removes every key stored with each rendered
/// tag (see `tags` in `#[cached]`); `#[invalidates(tags = ["listings"])]` alone is valid.
/// Also accepts `cache = <expr>` and `name = "..."` (the function's name in stats).
///
/// A failure to invalidate (Redis down) never changes what the function returns: it is
/// counted in the function's `errors` and logged with `tracing`. Every template is
/// registered at link time: `cache_runtime::check_invalidations()` fails for templates that
/// can match no `#[cached]` or `#[cache_put]` key (a typo such as `"homepgae:*"`).
#[proc_macro_attribute]
pub fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::invalidates(args.into(), item.into()).into()
}

/// Writes the function's result to the cache (write-through).
///
/// ```ignore
/// #[cache_put(key = "vehicle:<v.id>", ttl = "15m")]
/// async fn save_vehicle(v: Vehicle) -> Result<Vehicle, DbError> { /* write, return the row */ }
/// ```
///
/// After the function returns `Ok(v)` (or `v`, `Some(v)`, `Some(Ok(v))`: by type, as for
/// `#[cached]`), `v` is stored under the key, so the next `#[cached]` read of that key is a
/// hit; `Ok(None)` or `None` removes it. A failed write is counted and logged, never
/// returned. The key may name the returned value (`key = "vehicle:<return.id>"`), rendered
/// from it after the body.
///
/// # Arguments
///
/// As in `#[cached]`, without its read-side `lock` and `refresh`:
///
/// | argument | meaning |
/// |---|---|
/// | `key = "..."` | Required. Key template, as in `#[cached]`. |
/// | `ttl = "..."` | Required. Time to live, as in `#[cached]`. |
/// | `stale = "..."` | Keep the value this long in all (longer than `ttl`): give the same `stale` as the `#[cached]` readers of this key, so they can serve it once expired when their body fails. |
/// | `idle = "..."` | Store the value for `idle` only (shorter than `ttl`, without `stale`): for keys read with `#[cached(..., idle = ...)]`, whose hits extend it. |
/// | `tags = ["...", ...]` | Tags stored with the value, as in `#[cached]`. |
/// | `cache = <expr>` | The `Cache` to use, as in `#[cached]`. |
/// | `name = "..."` | The function's name in stats and metrics. Default: its identifier. |
#[proc_macro_attribute]
pub fn cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::cache_put(args.into(), item.into()).into()
}

/// Limits how often a function runs: at most `limit` calls per `per` under a key, shared by
/// every process on the same store (an exact sliding window; see `Cache::rate_limit`).
///
/// ```ignore
/// #[rate_limit(key = "login:<ip>", limit = 5, per = "1m")]
/// async fn login(ip: IpAddr, form: &LoginForm) -> Result<Session, LoginError> { /* ... */ }
/// // with `impl From<cache_runtime::RateLimited> for LoginError`
/// ```
///
/// A refused call does not run the body: it returns `Err(E::from(RateLimited { .. }))`,
/// carrying `retry_after` (what `Retry-After` should say), `limit`, `remaining: 0` and
/// `reset_after`. The function must return `Result<T, E>` (by type: through any alias) with
/// `E: From<cache_runtime::RateLimited>`.
///
/// # Arguments
///
/// | argument | meaning |
/// |---|---|
/// | `key = "..."` | Required. Key template, as in `#[cached]` (same placeholders, same encoding). The limiter lives under `<prefix>#rate:{<key>}`, which no invalidation or `clear()` touches. |
/// | `limit = N` | Required. Calls admitted per window: an integer literal, 1 to 1,000,000. |
/// | `per = "..."` | Required. The window: `"500ms"`, `"1s"`, `"1m"`, `"1h"`, ... |
/// | `fail_open` | The default: when the store cannot be asked (Redis down, timing out, breaker open), admit the call; the failure is counted in `errors`. |
/// | `fail_closed` | When the store cannot be asked, refuse the call (`retry_after` of 1 s). |
/// | `charge_hits` | With `#[cached]` below: charge every call, cache hits included (see below). |
/// | `cache = <expr>` | The `Cache` to use, as in `#[cached]`. |
/// | `name = "..."` | The name in stats and metrics (`rate_limited`, `rate_allowed`). Default: the identifier. |
///
/// # With `#[cached]`
///
/// Write `#[rate_limit]` above `#[cached]`. Then a cache hit answers without reaching the
/// limiter (it is not charged), and a miss is charged before the body runs: a refused call
/// never reaches the body, and its `Err` is not cached (a `stale` value, if there is one,
/// is served instead). With `charge_hits`, every call is charged before the cache lookup,
/// and a refused call does not even read the cache. `#[rate_limit]` written below
/// `#[cached]` is a compile error, wherever it stands among other attributes.
///
/// # Several limits
///
/// Stacked `#[rate_limit]`s all apply; the lowest checks first, and each charges a call it
/// admits even if a later one refuses it. So write the narrowest limit lowest (per client
/// below a shared one): a client over its own limit then never uses up the shared one.
///
/// # Compile errors
///
/// A missing `key`, `limit` or `per`; `limit = 0` or over 1,000,000; a bad or zero
/// duration; a return type that is not a `Result`; unknown or duplicate arguments;
/// `fail_open` with `fail_closed`; `charge_hits` without `#[cached]` below; a non-`async`
/// function; the key template errors of `#[cached]`; and an error type without
/// `From<RateLimited>` (reported on the return type).
#[proc_macro_attribute]
pub fn rate_limit(args: TokenStream, item: TokenStream) -> TokenStream {
    rate_limit::rate_limit(args.into(), item.into()).into()
}

/// Derives `cache_runtime::KeyPart`, so the type can be a key placeholder.
///
/// ```ignore
/// #[derive(KeyPart)]
/// enum Region { Eu, Us }          // `<region>` renders `Eu` or `Us`
///
/// #[derive(KeyPart)]
/// struct Vin(String);             // `<vin>` renders the string, encoded
/// ```
///
/// An enum of unit variants renders the variant's name; a newtype (one field, named or
/// not) renders its field as the field's own `KeyPart` does. The text is encoded as every
/// placeholder value is (`:` and glob characters percent-encoded). Other shapes (variants
/// with fields, structs of several fields) are compile errors: implement `KeyPart` by hand.
#[proc_macro_derive(KeyPart)]
pub fn derive_key_part(item: TokenStream) -> TokenStream {
    derive::key_part(item.into()).into()
}
