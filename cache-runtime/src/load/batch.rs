//! Batch loads (`#[cached_batch]`, `Cache::get_or_load_many`): many keys, one lookup, at most
//! one body run, one round of fills. [`through_many`] is every batch call:
//!
//! 1. **Distinct elements**, in first-seen order; an empty batch returns at once, without a
//!    store round trip.
//! 2. **One lookup** ([`read_many`]: the backlog, the near cache, then one `MGET` for the
//!    rest; on a cluster one per slot, in parallel).
//! 3. **Flights**, per missed key, joined in key order: a key another call (single or batch)
//!    is loading in this process is awaited and its outcome taken as a single follower
//!    takes it (`Load::run`); the others this batch leads, so single callers that miss them
//!    meanwhile wait for this batch. Joining in one global order (the keys') is what keeps
//!    two batches waiting on each other's keys from waiting forever: a batch only waits for
//!    a key greater than every key it leads, and single leaders wait for nobody.
//! 4. **Fill tickets** for the led keys ([`begin_many`]: one begin-fill script for all on
//!    Redis, one per slot on a cluster, in parallel: one round trip), so DESIGN 2.9 holds
//!    per key: a key written or invalidated while the body runs refuses its fill. A value
//!    that landed meanwhile answers its key. Each marker joins its
//!    key's tag sets (`tags = [...]`), so an `invalidate_tag` meanwhile refuses it too.
//! 5. **The body**, once, with the elements that still miss (and those whose key is over
//!    `max_key_bytes`, never cached), in first-seen order. `Err` stores nothing and is
//!    returned.
//! 6. **Fills** of what it returned, an absent result for what it left out (stored with
//!    `absent_ttl`, else only the marker removed), all through the write path and their
//!    tickets in one round trip ([`finish_many`]: one fill script on Redis, one per slot on
//!    a cluster), each key's outcome decided as a single load's, which also hands the value
//!    to the single callers waiting on the key.
//!
//! On Redis a warm batch is one `MGET`; a cold one is the `MGET`, one begin-fill script,
//! the body, one fill script (on a cluster: one of each per slot, in parallel, and one index
//! update per index; 500 keys at most per script call).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{begin_many, finish_many, Began, Load, Permit};
use crate::batch_shape::BatchReturn;
use crate::codec::{Cloner, Entry};
use crate::core::CacheCore;
use crate::error::ErrorKind;
use crate::flight::{self, Join, Landed, Leader};
use crate::log_limit::LogKind;
use crate::policy::Policy;
use crate::read::{Missed, StoreUse};
use crate::read_many::{read_many, Looked};
use crate::stats::Counters;

/// What one element got without running the body.
enum Answer<T> {
    Value(T),
    Absent,
}

/// A key this batch leads: its load, its flight, and its ticket once taken.
struct Led<'a, T> {
    /// Its element's place among the distinct elements.
    at: usize,
    load: Load<'a, T>,
    leader: Leader,
    /// Its permit to store, once known (`None`: step 1 still to do).
    permit: Option<Permit>,
}

/// A batch call (see the module docs). `keys[i]` is the rendered key of `elements[i]`, and
/// `tags[i]` the tags its value is stored with (`tags` empty: no tags).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn through_many<R, F, Fut>(
    core: &Arc<CacheCore>,
    counters: &Arc<Counters>,
    policy: &Policy,
    cloner: Cloner<R::Value>,
    elements: &[R::Key],
    keys: &[String],
    tags: &[Vec<String>],
    body: F,
) -> R
where
    R: BatchReturn,
    R::Key: Clone,
    R::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: FnOnce(Vec<R::Key>) -> Fut,
    Fut: Future<Output = R>,
{
    // 1. Distinct elements, first-seen order.
    let mut seen = HashSet::with_capacity(elements.len());
    let unique: Vec<usize> = (0..elements.len()).filter(|&i| seen.insert(&elements[i])).collect();
    drop(seen);
    counters.batch(unique.len());
    let mut map: HashMap<R::Key, R::Value, R::Hasher> =
        HashMap::with_capacity_and_hasher(unique.len(), Default::default());
    if unique.is_empty() {
        return R::from_result(Ok(map));
    }
    let element = |at: usize| &elements[unique[at]];
    let key = |at: usize| keys[unique[at]].as_str();
    let tags_of = |at: usize| tags.get(unique[at]).map_or(&[][..], Vec::as_slice);

    // 2. One lookup for the keys that may be cached (a key or tag over `max_key_bytes`
    //    cannot be: its element goes to the body every time).
    let (cached, mut uncached): (Vec<usize>, Vec<usize>) = (0..unique.len()).partition(|&at| {
        core.key_fits(counters, key(at))
            && tags_of(at).iter().all(|tag| core.key_fits(counters, tag))
    });
    //    After a batch of this function that mostly missed, the lookup takes the fill
    //    tickets too (see `read_many`), valid for a key whose flight this batch leads while
    //    no other flight started or ended (as `Load::permit` checks a single lookup's).
    let lookup: Vec<&str> = cached.iter().map(|&at| key(at)).collect();
    let hold = |found: &crate::store::Found, value: &R::Value| {
        Arc::new(Entry::with_copy(&found.entry, value, cloner))
    };
    let begins = crate::read::lookup_begins(core, policy)
        && core.near_for(policy).is_none()
        && counters.last_missed();
    let lookup_tags: Vec<&[String]> = match begins {
        true => cached.iter().map(|&at| tags_of(at)).collect(),
        false => Vec::new(),
    };
    let flights = core.flights().changes();
    let (looked, _) = read_many(
        core,
        counters,
        &lookup,
        policy,
        cloner,
        hold,
        begins.then_some(lookup_tags.as_slice()),
    )
    .await;
    let mut missed = Vec::new();
    for (&at, looked) in cached.iter().zip(looked) {
        match looked {
            Looked::Hit(value) => {
                map.insert(element(at).clone(), value);
            }
            Looked::Absent => {}
            Looked::Miss(store) => missed.push((at, store, None)),
            Looked::Began(ticket) => missed.push((at, StoreUse::Fill, Some((ticket, flights)))),
        }
    }
    if crate::read::lookup_begins(core, policy) && !lookup.is_empty() {
        // Most of this batch missed: the next one looks up through the begin-fill script.
        counters.looked_up(2 * missed.len() > lookup.len());
    }
    if missed.is_empty() && uncached.is_empty() {
        return R::from_result(Ok(map));
    }

    // 3. Flights, in key order.
    missed.sort_unstable_by(|a, b| key(a.0).cmp(key(b.0)));
    let mut led: Vec<Led<'_, R::Value>> = Vec::new();
    for (at, store, ticket) in missed {
        let missed = Missed { stale: None, store, ticket };
        let mut load = Load {
            tags: tags_of(at),
            ..Load::new(core, counters, key(at), policy, cloner, missed)
        };
        match follow_or_lead(&mut load).await {
            Ok(Answer::Value(value)) => {
                map.insert(element(at).clone(), value);
            }
            Ok(Answer::Absent) => {}
            Err(leader) => {
                // The lookup's ticket holds when every flight started since the lookup is
                // one of this batch's: this is its (n + 1)th.
                let ours = led.len() as u64 + 1;
                let permit = match load.take_lookup_ticket() {
                    Some((ticket, flights)) if leader.number() == flights + ours => {
                        Some(Permit::Ticket(ticket))
                    }
                    _ => None,
                };
                led.push(Led { at, load, leader, permit });
            }
        }
    }

    // 4. Fill tickets for the keys the lookup took none for, in one round trip.
    let loads: Vec<&Load<'_, R::Value>> =
        led.iter().filter(|led| led.permit.is_none()).map(|led| &led.load).collect();
    let mut began = match loads.is_empty() {
        true => Vec::new(),
        false => begin_many(&loads, true).await,
    }
    .into_iter();
    drop(loads);
    let mut loading = Vec::with_capacity(led.len());
    for mut led in led {
        if led.permit.is_some() {
            loading.push(led);
            continue;
        }
        match began.next().unwrap_or(Began::Failed) {
            Began::Ticket(ticket) => {
                led.permit = Some(Permit::Ticket(ticket));
                loading.push(led);
            }
            Began::Failed => {
                led.permit = Some(Permit::None);
                loading.push(led);
            }
            // Landed meanwhile (read before followers joining now started: they read for
            // themselves, as with `Load::permit`).
            Began::Present(value) => {
                led.leader.publish(Landed::Refused);
                led.load.coalesced();
                map.insert(element(led.at).clone(), value);
            }
            Began::Absent => {
                led.leader.publish(Landed::Refused);
                led.load.coalesced();
            }
        }
    }

    // 5. The body, once, with what still misses, in first-seen order.
    let mut asked: Vec<usize> = loading.iter().map(|led| led.at).collect();
    asked.append(&mut uncached);
    if asked.is_empty() {
        return R::from_result(Ok(map));
    }
    asked.sort_unstable();
    Leader::loading_all(loading.iter().map(|led| &led.leader));
    let started = Instant::now();
    let returned = body(asked.iter().map(|&at| element(at).clone()).collect()).await;
    let took = started.elapsed();
    counters.load_batch(asked.len() as u64, took);
    let loaded = match returned.into_result() {
        Ok(loaded) => loaded,
        Err(error) => {
            let failed = loading.iter_mut().map(|Led { load, leader, permit, .. }| {
                (&*load, Landed::Failed, permit.as_ref().unwrap_or(&Permit::None), leader)
            });
            finish_many(failed.collect()).await;
            return R::from_result(Err(error));
        }
    };

    // 6. Fills (values, absent results), in one round trip.
    let format = &core.settings().format;
    let outcomes: Vec<Landed> = loading
        .iter()
        .map(|led| match loaded.get(element(led.at)) {
            Some(value) => match Entry::encode_traced(
                value,
                cloner.filter(|_| led.load.keeps_copy(Some(&led.leader))),
                format,
                Some(took),
            ) {
                Ok(entry) => Landed::Value(Arc::new(entry)),
                Err(error) => {
                    if let Some(suppressed) = core.log(LogKind::LoadFailed) {
                        let key = led.load.key;
                        let (key, error) = (core.shown(key), core.shown_error(&error, key));
                        tracing::warn!(%key, %error, suppressed, "value cannot be encoded; not cached");
                    }
                    counters.error(ErrorKind::Encode);
                    Landed::Failed
                }
            },
            None => Landed::Absent,
        })
        .collect();
    let finishing =
        loading.iter_mut().zip(outcomes).map(|(Led { load, leader, permit, .. }, outcome)| {
            (&*load, outcome, permit.as_ref().unwrap_or(&Permit::None), leader)
        });
    finish_many(finishing.collect()).await;
    let asked: HashSet<&R::Key> = asked.iter().map(|&at| element(at)).collect();
    let mut loaded: Vec<(R::Key, R::Value)> =
        loaded.into_iter().filter(|(element, _)| asked.contains(element)).collect();
    drop(asked);
    map.extend(loaded.drain(..));
    R::from_result(Ok(map))
}

/// Joins the flight of `load`'s key: the answer another load's outcome gives, or the
/// leadership of the key (`Err`). As a single follower does (`Load::run`): an outcome
/// confirmed before this call joined is taken; one that may predate a write is checked by a
/// read of our own; anything else (the other body failed, was cancelled, was refused) makes
/// this batch load the key.
async fn follow_or_lead<T>(load: &mut Load<'_, T>) -> Result<Answer<T>, Leader>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    loop {
        let mut follower = match load.core.flights().join_tagged(load.key, load.tags) {
            Join::Leader(leader) => return Err(leader),
            Join::Follower(follower) => follower,
        };
        let landed = flight::wait(&mut follower).await;
        let confirmed = follower.before_settling;
        match landed {
            Landed::Value(_) | Landed::Absent | Landed::Refused
                if !confirmed && load.store == StoreUse::Fill =>
            {
                if let Some(answer) = read_for_ourselves(load).await {
                    return Ok(answer);
                }
            }
            Landed::Refused if load.store == StoreUse::Fill => {
                if let Some(answer) = read_for_ourselves(load).await {
                    return Ok(answer);
                }
            }
            Landed::Value(entry) if confirmed => match entry.take(load.cloner) {
                Ok(value) => {
                    load.coalesced();
                    return Ok(Answer::Value(value));
                }
                // Another type's value under the same key: load for ourselves.
                Err(error) => {
                    load.counters.error(error.kind());
                    load.store = match error {
                        crate::format::DecodeError::Schema => StoreUse::Bypass,
                        _ => StoreUse::Overwrite,
                    };
                }
            },
            Landed::Absent if confirmed => {
                load.coalesced();
                return Ok(Answer::Absent);
            }
            Landed::Unconfirmed(value) if follower.early => match value {
                Some(entry) => {
                    if let Ok(value) = entry.take(load.cloner) {
                        load.coalesced();
                        return Ok(Answer::Value(value));
                    }
                }
                None => {
                    load.coalesced();
                    return Ok(Answer::Absent);
                }
            },
            _ => {}
        }
    }
}

/// One read of the store, started after this call did: fresh for it (see
/// `Load::read_for_ourselves`). `None` when nothing usable is there.
async fn read_for_ourselves<T>(load: &Load<'_, T>) -> Option<Answer<T>>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let entry = load.core.store().get(load.key).await.ok()??;
    let answer = match entry.is_absent() {
        true => Answer::Absent,
        false => Answer::Value(entry.take(load.cloner).ok()?),
    };
    load.coalesced();
    Some(answer)
}
