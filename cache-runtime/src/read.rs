//! The read path: [`read`] reads a key for every caller (`#[cached]`, `get_or_load` and
//! `get`; the loaders call its two halves, [`read_in_process`] for steps 1 and 2 and, on
//! the memory store, the whole lookup, then [`read_store`], so a hit that needs no waiting
//! is served before the rest of the call is built), in one order:
//!
//! 1. **The backlog**: a removal of the key that has not reached Redis yet means what Redis
//!    holds may predate a write: a miss that must replace it.
//! 2. **The near cache** (when the cache has one and the policy uses it): a fresh copy is
//!    served without a round trip; one due for a recompute goes on to the store.
//! 3. **The store**: one bounded `GET` (`GETRANGE`; with `PTTL` when the policy needs the value's age or the
//!    near cache its expiry; one script with `idle`). For a caller that loads, after a miss
//!    of the same function, the begin-fill script instead ([`lookup_or_begin`]): the
//!    lookup and step 1 of the fill protocol in one round trip.
//! 4. **Decode**, classify (fresh, kept past its TTL, absent, undecodable, another
//!    release's), count, and hold a fresh value in the near cache if no invalidation of
//!    the key arrived during the read.
//!
//! It answers with one enum, [`Read`]; a miss carries what the miss path must know
//! ([`Missed`]).

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::codec::{Cloner, Entry};
use crate::core::CacheCore;
use crate::error::{Error, ErrorKind};
use crate::format::DecodeError;
use crate::log_limit::LogKind;
use crate::near::Near;
use crate::policy::Policy;
use crate::stats::Counters;
use crate::store::{Begun, FillPlan, Found, Held, Ticket};

/// What a read found.
pub(crate) enum Read<T> {
    /// A value to serve. `found` (its age and version) when the store was asked for them;
    /// `due` when this hit decided to recompute it (`refresh` age reached, XFetch's draw).
    Hit { value: T, found: Option<Found>, due: bool },
    /// A cached absent result (`absent_ttl`) the caller's shape can return.
    Absent,
    /// Nothing to serve.
    Miss(Missed),
    /// The store failed (counted and logged).
    Failed(Error),
}

/// What a miss tells the miss path.
#[derive(Default)]
pub(crate) struct Missed {
    /// An expired value kept for `stale`, served if the body fails.
    pub(crate) stale: Option<Arc<Entry>>,
    /// How the load may use the store.
    pub(crate) store: StoreUse,
    /// The fill ticket the lookup already took (a lookup by [`lookup_or_begin`]), with
    /// [`Flights::changes`](crate::flight::Flights::changes) read before it: step 1 of the
    /// fill protocol is done, unless a flight started or ended since (it may have filled
    /// the key).
    pub(crate) ticket: Option<(Ticket, u64)>,
}

/// How a load may use the store after its lookup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum StoreUse {
    /// Load through the fill protocol.
    #[default]
    Fill,
    /// What the key holds must be replaced, never served: an undecodable value, another
    /// function's absent result, a removal of the key still in the backlog, an error reply
    /// (another application's data).
    Overwrite,
    /// Leave the store alone: Redis is known down, or the key holds another release's
    /// value (a rolling upgrade: overwriting it would start a loop between versions).
    Bypass,
}

impl Missed {
    /// After a read that failed with `kind`.
    pub(crate) fn after_failure(kind: ErrorKind) -> Missed {
        let store = match kind {
            // Known down: do not ask again.
            ErrorKind::Unavailable => StoreUse::Bypass,
            // A dropped connection or a slow reply: the ticket is still worth a try (the
            // breaker stops this after a few failures).
            ErrorKind::Connection | ErrorKind::Timeout => StoreUse::Fill,
            _ => StoreUse::Overwrite,
        };
        Missed { stale: None, store, ticket: None }
    }
}

/// Reads `key` for `policy` (see the module docs), for a caller that does not load on a
/// miss (`Cache::get`). `accepts_absent`: the caller's shape has an absent result
/// (`Option`). `hold` makes the entry the near cache keeps for a fresh value (with a typed
/// copy when the caller can clone).
pub(crate) async fn read<T>(
    core: &CacheCore,
    counters: &Counters,
    key: &str,
    policy: &Policy,
    cloner: Cloner<T>,
    accepts_absent: bool,
    hold: impl FnOnce(&Found, &T) -> Arc<Entry>,
) -> Read<T>
where
    T: DeserializeOwned + 'static,
{
    match read_in_process(core, counters, key, policy, cloner, accepts_absent) {
        Early::Read(read) => read,
        Early::Store { near, due } => {
            read_store(core, counters, key, policy, cloner, accepts_absent, hold, false, near, due)
                .await
        }
    }
}

/// What steps 1 and 2 of a read answer, in process and without waiting: the answer, or
/// that the store must be asked.
pub(crate) enum Early<'a, T> {
    /// The read's answer: a near-cache hit, a miss the backlog decided, or what the memory
    /// store answered.
    Read(Read<T>),
    /// Ask the store ([`read_store`]), with the near cache this read uses (as chosen here)
    /// and whether it decided a recompute.
    Store { near: Option<&'a Near>, due: bool },
}

/// Steps 1 and 2 of a read (see the module docs): the backlog, then the near cache; and on
/// the memory store, the whole plain lookup. The part of every read that needs no waiting,
/// so a caller can take a hit before it builds the rest of the read (`#[cached]` does: the
/// store path's futures are never made for a near or memory-store hit).
pub(crate) fn read_in_process<'a, T>(
    core: &'a CacheCore,
    counters: &Counters,
    key: &str,
    policy: &Policy,
    cloner: Cloner<T>,
    accepts_absent: bool,
) -> Early<'a, T>
where
    T: DeserializeOwned + 'static,
{
    if core.backlog().covers(key) {
        counters.miss();
        return Early::Read(miss(StoreUse::Overwrite));
    }
    let near = core.near_for(policy);
    // L1 decided a recompute (`early` draws once per hit, there or on the store path).
    let mut due = false;
    if let Some(near) = near {
        match near.answer(key, policy, cloner, || counters.mean_load()) {
            crate::near::Answer::Hit(value) => {
                counters.near_hit();
                return Early::Read(Read::Hit { value, found: None, due: false });
            }
            crate::near::Answer::Due => due = true,
            crate::near::Answer::Miss => {}
        }
    }
    // The memory store answers without waiting: its plain lookup is done here too.
    if near.is_none() && !policy.tracks_age() && policy.touch().is_none() {
        if let Some(found) = core.store().get_now(key) {
            let found = Ok(found.map(Held::Shared));
            let read = plain_read(core, counters, key, cloner, accepts_absent, false, found);
            return Early::Read(read);
        }
    }
    Early::Store { near, due }
}

/// Steps 3 and 4 of a read, after [`read_in_process`] answered [`Early::Store`] with
/// `near` and `due`. `loads`: the caller loads on a miss; after a miss of the same counters,
/// a plain lookup on a shared store then also takes the fill ticket ([`lookup_or_begin`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_store<T>(
    core: &CacheCore,
    counters: &Counters,
    key: &str,
    policy: &Policy,
    cloner: Cloner<T>,
    accepts_absent: bool,
    hold: impl FnOnce(&Found, &T) -> Arc<Entry>,
    loads: bool,
    near: Option<&Near>,
    due: bool,
) -> Read<T>
where
    T: DeserializeOwned + 'static,
{
    if !policy.tracks_age() && near.is_none() {
        let begins = loads && lookup_begins(core, policy);
        if begins && counters.last_missed() {
            // Boxed, as are the other script calls here: a call's future holds only the
            // plain `GET`'s state inline (see `load::through_after`).
            let lookup = lookup_or_begin(core, counters, key, policy, cloner, accepts_absent);
            return Box::pin(lookup).await;
        }
        // The plain hit path: one `GET` (a script with `idle`). Written here rather than in
        // a function of its own: one async call less on every hit.
        let read = match policy.touch() {
            Some(touch) => {
                Box::pin(core.store().get_touched(key, touch)).await.map(|e| e.map(Held::Shared))
            }
            // A Redis reply owned by this read: no `Arc` around it (`Store::get_held`).
            None => core.store().get_held(key).await,
        };
        return plain_read(core, counters, key, cloner, accepts_absent, begins, read);
    }
    let epoch = near.and_then(|near| near.epoch(key));
    // Boxed too: inline, the `GET` + `PTTL` pipeline's state would make every call's future
    // 160 bytes larger (it is the lookup of near-cache misses and of `stale`/`refresh` hits,
    // for which one small allocation is noise next to the round trip).
    let read = Box::pin(core.store().get_aged(key, policy.lifetime())).await;
    let found = match read {
        Ok(Some(found)) => found,
        Ok(None) => {
            counters.miss();
            tracing::debug!(key = %core.shown(key), "cache miss");
            return miss(StoreUse::Fill);
        }
        Err(error) => return failed(core, counters, key, error),
    };
    if found.entry.is_absent() {
        // An absent result lives by its own expiry, whatever the age says; one a pending
        // marker keeps (`age` unknown) is a miss.
        if found.age == Duration::MAX {
            counters.miss();
            return miss(StoreUse::Fill);
        }
        counters.hit();
        tracing::debug!(key = %core.shown(key), "cache hit (absent)");
        return absent(accepts_absent);
    }
    // Without `stale`/`refresh` (a near-cache read) any value is fresh, as for `GET`.
    let fresh = found.age < policy.ttl || (!policy.tracks_age() && found.age != Duration::MAX);
    if !fresh {
        counters.miss();
        tracing::debug!(key = %core.shown(key), "cache miss (expired value kept for stale fallback)");
        let stale = policy.stale.is_some().then(|| Arc::clone(&found.entry));
        return Read::Miss(Missed { stale, store: StoreUse::Fill, ticket: None });
    }
    match found.entry.take(cloner) {
        Ok(value) => {
            counters.hit();
            tracing::debug!(key = %core.shown(key), age = ?found.age, "cache hit");
            if let (Some(near), Some(epoch)) = (near, epoch) {
                near.insert(key, epoch, &found, hold(&found, &value));
            }
            let delta = found.load_time.unwrap_or_else(|| counters.mean_load());
            let due = due || policy.recompute_now(found.age, delta);
            Read::Hit { value, found: Some(found), due }
        }
        Err(error) => undecodable(core, counters, key, &error),
    }
}

/// What a plain lookup (no age, no near cache) answers, from what the store `read`.
/// `begins`: the lookup keeps this function's last-missed flag ([`lookup_begins`]).
#[inline]
fn plain_read<T>(
    core: &CacheCore,
    counters: &Counters,
    key: &str,
    cloner: Cloner<T>,
    accepts_absent: bool,
    begins: bool,
    read: Result<Option<Held>, Error>,
) -> Read<T>
where
    T: DeserializeOwned + 'static,
{
    match read {
        Ok(Some(entry)) if entry.is_absent() => {
            counters.hit();
            if begins {
                counters.looked_up(false);
            }
            tracing::debug!(key = %core.shown(key), "cache hit (absent)");
            absent(accepts_absent)
        }
        Ok(Some(entry)) => match entry.take(cloner) {
            Ok(value) => {
                counters.hit();
                if begins {
                    counters.looked_up(false);
                }
                tracing::debug!(key = %core.shown(key), "cache hit");
                Read::Hit { value, found: None, due: false }
            }
            Err(error) => undecodable(core, counters, key, &error),
        },
        Ok(None) => {
            counters.miss();
            if begins {
                counters.looked_up(true);
            }
            tracing::debug!(key = %core.shown(key), "cache miss");
            miss(StoreUse::Fill)
        }
        Err(error) => failed(core, counters, key, error),
    }
}

fn miss<T>(store: StoreUse) -> Read<T> {
    Read::Miss(Missed { stale: None, store, ticket: None })
}

/// What step 1 of the fill protocol ([`crate::store::Store::begin_fill`]) is told for a
/// load of `policy`; `force` replaces a value the caller could not decode.
pub(crate) fn fill_plan(core: &CacheCore, policy: &Policy, force: bool) -> FillPlan<'static> {
    FillPlan {
        lifetime: policy.longest(),
        fresh_for: policy.ttl,
        window: core.settings().fill_window,
        force,
        lookup: false,
        tags: &[],
    }
}

/// Whether a plain lookup for `policy` may take its fill ticket in the same round trip:
/// on a shared store (where a miss costs a round trip per step), without `idle` (whose
/// lookup is a script of its own) and without `lock` (whose lease holder must look again
/// after it won the lease, to find a value another process's holder stored meanwhile).
pub(crate) fn lookup_begins(core: &CacheCore, policy: &Policy) -> bool {
    !policy.lock && policy.touch().is_none() && core.store().shared()
}

/// A plain lookup after this function's previous lookup missed: the begin-fill script
/// ([`crate::store::Store::begin_fill`]) as the lookup itself. It answers a fresh value
/// like a `GET` does; on a miss it has already put the pending marker at the key (indexed,
/// before the body reads anything), so the miss path goes straight to the body and the fill:
/// two round trips instead of three. A hit this way costs the same one round trip, in a
/// script rather than a `GET`: the lookup only takes this way while misses come, and goes
/// back to the `GET` at the first hit.
async fn lookup_or_begin<T>(
    core: &CacheCore,
    counters: &Counters,
    key: &str,
    policy: &Policy,
    cloner: Cloner<T>,
    accepts_absent: bool,
) -> Read<T>
where
    T: DeserializeOwned + 'static,
{
    let plan = FillPlan { lookup: true, ..fill_plan(core, policy, false) };
    let flights = core.flights().changes();
    match core.store().begin_fill(key, &plan).await {
        Ok(Begun::Present(entry)) if entry.is_absent() => {
            counters.hit();
            counters.looked_up(false);
            tracing::debug!(key = %core.shown(key), "cache hit (absent)");
            absent(accepts_absent)
        }
        Ok(Begun::Present(entry)) => match entry.take(cloner) {
            Ok(value) => {
                counters.hit();
                counters.looked_up(false);
                tracing::debug!(key = %core.shown(key), "cache hit");
                Read::Hit { value, found: None, due: false }
            }
            Err(error) => undecodable(core, counters, key, &error),
        },
        Ok(Begun::Ticket(ticket)) => {
            counters.miss();
            tracing::debug!(key = %core.shown(key), "cache miss (fill ticket taken)");
            let ticket = Some((ticket, flights));
            Read::Miss(Missed { stale: None, store: StoreUse::Fill, ticket })
        }
        Err(error) => failed(core, counters, key, error),
    }
}

/// A cached absent result: served when the caller's shape has one; otherwise another
/// function's absent result under the same key, which ours replaces.
fn absent<T>(accepts_absent: bool) -> Read<T> {
    match accepts_absent {
        true => Read::Absent,
        false => miss(StoreUse::Overwrite),
    }
}

/// A read that Redis failed (down, timeout, breaker open): counted as an error and a miss;
/// the caller runs its body.
fn failed<T>(core: &CacheCore, counters: &Counters, key: &str, error: Error) -> Read<T> {
    if let Some(suppressed) = core.log(LogKind::ReadFailed) {
        let (key, error) = (core.shown(key), core.shown_error(&error, key));
        tracing::warn!(%key, %error, store = core.kind(), suppressed, "cache read failed");
    }
    counters.error(error.kind());
    counters.miss();
    Read::Failed(error)
}

/// A stored value that does not decode: counted (by its kind), then treated as a miss.
/// A value written for another type or schema (a rolling upgrade) is left in place, so two
/// versions sharing a key never overwrite each other in a loop; anything else (garbage,
/// another service's data) is replaced by the fresh value.
fn undecodable<T>(
    core: &CacheCore,
    counters: &Counters,
    key: &str,
    error: &DecodeError,
) -> Read<T> {
    if let Some(suppressed) = core.log(LogKind::Undecodable) {
        let (key, error) = (core.shown(key), core.shown_error(error, key));
        tracing::warn!(%key, %error, suppressed, "cached value does not decode; treating as a miss");
    }
    counters.error(error.kind());
    counters.miss();
    miss(match error {
        DecodeError::Schema => StoreUse::Bypass,
        _ => StoreUse::Overwrite,
    })
}
