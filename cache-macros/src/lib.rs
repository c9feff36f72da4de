//! Procedural macros of [cache-runtime](https://docs.rs/cache-runtime). Depend on
//! `cache-runtime` and use them from there: the generated code refers to it.

mod attr;
mod batch;
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
/// | `absent_ttl = "..."` | Cache absent results (`None`, `Ok(None)`) this long (negative caching). Needs a return shape with an absent result: `Option<T>` or `Result<Option<T>, E>` (a compile error otherwise). |
/// | `idle = "..."` | Sliding expiration (sessions): the value is stored for `idle`, and each hit extends its remaining life to `min(idle, ttl - age)`, so a value nobody reads for `idle` is gone and `ttl` stays an absolute cap from the write time. Still one round trip on Redis (one script). Shorter than `ttl`; excludes `stale`, `refresh` and `early`; bypasses the near cache. |
/// | `near = false` | Bypass the cache's near cache (`CacheBuilder::near_cache`) for this function: every call reads Redis. No effect on a cache without one. Default: `true`. |
/// | `cache = <expr>` | The `Cache` to use: an expression of type `Cache`, `&Cache` or `Arc<Cache>`, which may use `self` and the parameters. Default: [`default_cache()`](https://docs.rs/cache-runtime/latest/cache_runtime/fn.default_cache.html). |
/// | `name = "..."` | The function's name in stats and metrics. Default: its identifier. |
///
/// # What is cached
///
/// The return type decides, by how it is written: `T` caches every value, `Option<T>` caches
/// `Some`, `Result<T, E>` caches `Ok`, `Result<Option<T>, E>` caches `Ok(Some)`. `Err` and
/// `None` are never cached. `T` must be `Serialize + DeserializeOwned + Send + Sync + 'static`;
/// when it is also `Clone`, a memory-store hit clones the value instead of decoding it.
///
/// # Bodies that finish in the background
///
/// With `refresh`, `early` or `timeout`, the body may run on a task of its own after the
/// caller returned, so it owns what it uses: `self` is cloned (`Self: Clone + Send + Sync +
/// 'static`), each borrowed parameter the body uses is copied with `ToOwned`, owned ones move
/// in (all `Send + 'static`). The copies are made when the body starts, never on a hit.
///
/// # Keys
///
/// Each placeholder value must implement `KeyPart` and is encoded: every byte outside
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
/// non-`async` function, a receiver other than `&self`, a placeholder whose type does not
/// implement `KeyPart` and an unknown field are compile errors on the offending text. All
/// errors of one attribute are reported together.
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
/// `#[cached]`'s key template.
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
/// removed after it returns: for a `Result`, only on `Ok`.
///
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
/// After the function returns `Ok(v)` (or `v`, or `Some(v)`), `v` is stored under the key,
/// so the next `#[cached]` read of that key is a hit. A failed write is counted and logged,
/// never returned.
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
/// `reset_after`. The function must return `Result<T, E>` with
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
/// `#[cached]` is a compile error.
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
