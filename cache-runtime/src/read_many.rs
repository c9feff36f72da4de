//! The read path of a batch: [`read_many`] reads many keys for a batch call
//! (`#[cached_batch]`, `get_or_load_many`, `get_many`) in the order of [`read`](crate::read):
//! the backlog, the near cache, then the store, all the keys that remain in **one** lookup
//! (`Store::get_many`: one `MGET` on Redis, one per slot on a cluster, in parallel; with a
//! near cache, `GET`+`PTTL` per key, all in flight together, so the values can be held in
//! L1), then decoding and counting, per key.
//!
//! A batch that loads, after this function's previous batch mostly missed, looks up
//! through the begin-fill script instead (`begin`, see [`read_many`]): the lookup and step 1
//! of the fill protocol in one round trip, as a single `#[cached]` call does after a miss
//! (`read::lookup_or_begin`). A cold batch is then two round trips (this script and the
//! fill script) instead of three; a warm one stays one `MGET`.
//!
//! A batch policy has no `stale`, `refresh`, `early` or `idle`: a stored value is fresh until
//! Redis expires it, so no age is read.

use std::sync::Arc;

use crate::codec::{Cloner, Entry};
use crate::core::CacheCore;
use crate::error::Error;
use crate::format::DecodeError;
use crate::log_limit::LogKind;
use crate::policy::Policy;
use crate::read::{Missed, StoreUse};
use crate::stats::Counters;
use crate::store::{Begun, FillPlan, Found, Ticket};

/// What a batch lookup found for one key.
pub(crate) enum Looked<T> {
    /// A value to serve.
    Hit(T),
    /// A cached absent result (`absent_ttl`): the element is left out of the map.
    Absent,
    /// Nothing to serve; how a load may use the store.
    Miss(StoreUse),
    /// Nothing to serve, and the lookup took the key's fill ticket (a lookup with `begin`).
    Began(Ticket),
}

/// Reads `keys` (see the module docs); `hold` makes the entry the near cache keeps for a
/// value (with a typed copy when the caller can clone); one answer per key, in order, and the store's
/// error if the lookup failed (its keys then read as misses). Counts a hit or a miss per
/// key, and an error per failed lookup.
///
/// `begin` (a batch that loads, on a shared store without a near cache): the tags of each
/// key, and the lookup is the begin-fill script: a key that misses answers
/// [`Looked::Began`], its marker placed (and in its indexes and tag sets) before this
/// returns.
pub(crate) async fn read_many<T>(
    core: &CacheCore,
    counters: &Counters,
    keys: &[&str],
    policy: &Policy,
    cloner: Cloner<T>,
    hold: impl Fn(&Found, &T) -> Arc<Entry>,
    begin: Option<&[&[String]]>,
) -> (Vec<Looked<T>>, Option<Error>)
where
    T: serde::de::DeserializeOwned + 'static,
{
    let mut answers: Vec<Option<Looked<T>>> = keys.iter().map(|_| None).collect();
    let near = core.near_for(policy);
    let mut asked = Vec::with_capacity(keys.len());
    let mut asked_at = Vec::with_capacity(keys.len());
    let mut failed = None;
    for (at, (answer, key)) in answers.iter_mut().zip(keys).enumerate() {
        if core.backlog().covers(key) {
            counters.miss();
            *answer = Some(Looked::Miss(StoreUse::Overwrite));
            continue;
        }
        if let Some(near) = near {
            if let crate::near::Answer::Hit(value) =
                near.answer(key, policy, cloner, || counters.mean_load())
            {
                counters.near_hit();
                *answer = Some(Looked::Hit(value));
                continue;
            }
        }
        asked.push(*key);
        asked_at.push(at);
    }
    if let (Some(tags), false) = (begin.filter(|_| near.is_none()), asked.is_empty()) {
        let plan = crate::read::fill_plan(core, policy, false);
        let fills: Vec<(&str, FillPlan<'_>)> = asked
            .iter()
            .zip(&asked_at)
            .map(|(&key, &at)| (key, FillPlan { lookup: true, tags: tags[at], ..plan }))
            .collect();
        let mut begun = core.store().begin_fills(&fills).await.into_iter();
        for answer in answers.iter_mut().filter(|answer| answer.is_none()) {
            let Some(reply) = begun.next() else { break };
            *answer = Some(match reply {
                Ok(Begun::Present(entry)) => stored(counters, &entry, cloner),
                Ok(Begun::Ticket(ticket)) => {
                    counters.miss();
                    Looked::Began(ticket)
                }
                Err(error) => {
                    counters.error(error.kind());
                    counters.miss();
                    let kind = error.kind();
                    if failed.is_none() {
                        log_failure(core, &error, asked.len());
                    }
                    failed.get_or_insert(error);
                    // Nothing was read to find undecodable: what the key holds is not
                    // replaced (a key of another type is refused here, per key, as the
                    // `MGET` path's fill refuses it).
                    match Missed::after_failure(kind).store {
                        StoreUse::Overwrite => Looked::Miss(StoreUse::Fill),
                        store => Looked::Miss(store),
                    }
                }
            });
        }
    } else if let (Some(near), false) = (near, asked.is_empty()) {
        // With a near cache: `GET`+`PTTL` per key (the expiry the near copy needs), all in
        // flight together (one round trip), each value held in L1 if no invalidation of its
        // key arrived meanwhile.
        let reads = asked.iter().map(|key| async move {
            let epoch = near.epoch(key);
            (epoch, core.store().get_aged(key, policy.lifetime()).await)
        });
        let reads = futures_util::future::join_all(reads).await;
        let mut reads = asked.iter().zip(reads);
        for answer in answers.iter_mut().filter(|answer| answer.is_none()) {
            let Some((key, (epoch, read))) = reads.next() else { break };
            *answer = Some(match read {
                // A value a pending marker keeps (`age` unknown) is a miss.
                Ok(Some(found)) if found.age == std::time::Duration::MAX => {
                    counters.miss();
                    Looked::Miss(StoreUse::Fill)
                }
                Ok(Some(found)) if found.entry.is_absent() => {
                    counters.hit();
                    Looked::Absent
                }
                Ok(Some(found)) => match found.entry.take(cloner) {
                    Ok(value) => {
                        counters.hit();
                        if let Some(epoch) = epoch {
                            near.insert(key, epoch, &found, hold(&found, &value));
                        }
                        Looked::Hit(value)
                    }
                    Err(error) => undecodable(counters, &error),
                },
                Ok(None) => {
                    counters.miss();
                    Looked::Miss(StoreUse::Fill)
                }
                Err(error) => {
                    counters.error(error.kind());
                    counters.miss();
                    let kind = error.kind();
                    failed.get_or_insert(error);
                    Looked::Miss(Missed::after_failure(kind).store)
                }
            });
        }
    } else if !asked.is_empty() {
        let mut found = match core.store().get_many(&asked).await {
            Ok(entries) => entries.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(error) => {
                log_failure(core, &error, asked.len());
                counters.error(error.kind());
                let kind = error.kind();
                failed = Some(error);
                asked.iter().map(|_| Err(kind)).collect()
            }
        }
        .into_iter();
        for answer in answers.iter_mut().filter(|answer| answer.is_none()) {
            let Some(entry) = found.next() else { break };
            *answer = Some(match entry {
                Ok(Some(entry)) => stored(counters, &entry, cloner),
                Ok(None) => {
                    counters.miss();
                    Looked::Miss(StoreUse::Fill)
                }
                Err(kind) => {
                    counters.miss();
                    Looked::Miss(Missed::after_failure(kind).store)
                }
            });
        }
    }
    let answers =
        answers.into_iter().map(|answer| answer.unwrap_or(Looked::Miss(StoreUse::Fill))).collect();
    (answers, failed)
}

/// Logs (rate-limited) a batch lookup the store failed.
fn log_failure(core: &CacheCore, error: &Error, keys: usize) {
    if let Some(suppressed) = core.log(LogKind::ReadFailed) {
        let error = core.shown_error(error, "");
        tracing::warn!(%error, keys, store = core.kind(), suppressed, "cache read failed (batch)");
    }
}

/// What a stored entry answers (counted): an absent result, a value, or (undecodable) a
/// miss.
fn stored<T: serde::de::DeserializeOwned + 'static>(
    counters: &Counters,
    entry: &Entry,
    cloner: Cloner<T>,
) -> Looked<T> {
    if entry.is_absent() {
        counters.hit();
        return Looked::Absent;
    }
    match entry.take(cloner) {
        Ok(value) => {
            counters.hit();
            Looked::Hit(value)
        }
        Err(error) => undecodable(counters, &error),
    }
}

/// A stored value that does not decode: counted, a miss; another release's value is left in
/// place, anything else replaced (see `read.rs`).
fn undecodable<T>(counters: &Counters, error: &DecodeError) -> Looked<T> {
    counters.error(error.kind());
    counters.miss();
    Looked::Miss(match error {
        DecodeError::Schema => StoreUse::Bypass,
        _ => StoreUse::Overwrite,
    })
}
