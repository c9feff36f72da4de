//! The read path of a batch: [`read_many`] reads many keys for a batch call
//! (`#[cached_batch]`, `get_or_load_many`, `get_many`) in the order of [`read`](crate::read):
//! the backlog, the near cache, then the store, all the keys that remain in **one** lookup
//! (`Store::get_many`: one `MGET` on Redis, one per slot on a cluster, in parallel; with a
//! near cache, `GET`+`PTTL` per key, all in flight together, so the values can be held in
//! L1), then decoding and counting, per key.
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
use crate::store::Found;

/// What a batch lookup found for one key.
pub(crate) enum Looked<T> {
    /// A value to serve.
    Hit(T),
    /// A cached absent result (`absent_ttl`): the element is left out of the map.
    Absent,
    /// Nothing to serve; how a load may use the store.
    Miss(StoreUse),
}

/// Reads `keys` (see the module docs); `hold` makes the entry the near cache keeps for a
/// value (with a typed copy when the caller can clone); one answer per key, in order, and the store's
/// error if the lookup failed (its keys then read as misses). Counts a hit or a miss per
/// key, and an error per failed lookup.
pub(crate) async fn read_many<T>(
    core: &CacheCore,
    counters: &Counters,
    keys: &[&str],
    policy: &Policy,
    cloner: Cloner<T>,
    hold: impl Fn(&Found, &T) -> Arc<Entry>,
) -> (Vec<Looked<T>>, Option<Error>)
where
    T: serde::de::DeserializeOwned + 'static,
{
    let mut answers: Vec<Option<Looked<T>>> = keys.iter().map(|_| None).collect();
    let near = core.near_for(policy);
    let mut asked = Vec::with_capacity(keys.len());
    let mut failed = None;
    for (answer, key) in answers.iter_mut().zip(keys) {
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
    }
    if let (Some(near), false) = (near, asked.is_empty()) {
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
                if let Some(suppressed) = core.log(LogKind::ReadFailed) {
                    let error = core.shown_error(&error, "");
                    tracing::warn!(%error, keys = asked.len(), store = core.kind(), suppressed, "cache read failed (batch)");
                }
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
                Ok(Some(entry)) if entry.is_absent() => {
                    counters.hit();
                    Looked::Absent
                }
                Ok(Some(entry)) => match entry.take(cloner) {
                    Ok(value) => {
                        counters.hit();
                        Looked::Hit(value)
                    }
                    Err(error) => undecodable(counters, &error),
                },
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
