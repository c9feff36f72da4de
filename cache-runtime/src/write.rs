//! The write path: every write and removal of every caller runs through [`apply`], so the
//! rule that keeps reads coherent is written once:
//!
//! 1. **Detach** the flights of the keys the write covers ([`Scope`]): no caller that
//!    starts after the write may join a load that may have read the data before it.
//! 2. **Run the store operation**: a write-through replaces whatever the key holds (and
//!    with it the pending marker of every load running anywhere, whose fill is then
//!    refused); a removal removes values and markers alike; a fill stores only if its
//!    ticket still holds.
//! 3. **Never leave the old value behind**: a value that cannot be stored (over
//!    `max_value_bytes`, not encodable, refused by Redis under `OOM`) removes the key
//!    instead; a removal that failed for a connection reason is kept in the backlog and
//!    replayed until it lands (`backlog.rs`).
//! 4. **Evict the near copies** the write covers, and void the near-cache reads in flight.
//!
//! `set`, `#[cache_put]`, `invalidate`, `invalidate_pattern`, `#[invalidates]`, `clear`,
//! the fills of loads and refreshes, and a refresh that found nothing all call [`apply`].
//!
//! Every removal is a `cache.invalidate` span (INFO; see [`invalidate_span`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backlog::{retryable, Kept};
use serde::Serialize;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::codec::{Cloner, Entry};
use crate::core::CacheCore;
use crate::error::{Error, ErrorKind, Result};
use crate::log_limit::LogKind;
use crate::scope::Scope;
use crate::shape::{Outcome, Shape};
use crate::stats::{Counters, DIRECT_CALLS};
use crate::store::{Removed, Settle, Ticket};

/// One write or removal.
pub(crate) enum Change<'a> {
    /// Write-through (`set`, `#[cache_put]`): replace whatever the key holds with the
    /// encoded value, or, when it could not be encoded, remove the key.
    /// `tags`: the tags the value is stored with.
    Put { key: &'a str, value: Result<Arc<Entry>>, ttl: Duration, tags: &'a [String] },
    /// A load's result, stored only if its ticket still holds (the fill protocol,
    /// `store/mod.rs`). Detaches nothing: its own flight is the writer.
    /// `tags`: the tags its ticket was taken with.
    Fill {
        key: &'a str,
        ticket: &'a Ticket,
        entry: &'a Arc<Entry>,
        ttl: Duration,
        tags: &'a [String],
    },
    /// Remove what the scope covers.
    Remove(Scope),
    /// A batch's results, each key as [`Change::Fill`] does it (a [`Settle::Fill`]), or the
    /// abandon of a load that stores nothing (a [`Settle::Abandon`]: whether its ticket
    /// still holds), in one round trip (`Store::settle_many`). A value over
    /// `max_value_bytes` is not stored: its marker is abandoned in the same round trip.
    Settle(&'a [Settle<'a>]),
}

/// What [`apply`] did.
pub(crate) enum Applied {
    /// The write-through stored its value.
    Written,
    /// Keys removed (by a [`Change::Remove`]).
    Removed(Removed),
    /// What became of a fill.
    Filled(Filled),
    /// What became of each of a [`Change::Settle`]'s keys, in order.
    Settled(Vec<Settled>),
}

/// What became of one key of a [`Change::Settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// A fill: as [`Change::Fill`] reports it (never [`Filled::Skipped`]).
    Filled(Filled),
    /// An abandon, or a fill not attempted (too large) whose marker was abandoned instead:
    /// whether the ticket still held (`None`: Redis failed, unknown).
    Held(Option<bool>),
}

/// What became of a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    Stored,
    /// The ticket was void: the key was written or invalidated while loading.
    Refused,
    /// Not attempted (too large).
    Skipped,
    /// Redis failed: whether it was stored is unknown.
    Failed,
}

/// Runs `change` (see the module docs). Failures are counted in `counters` and logged;
/// a write-through or removal returns its error, a fill reports it as [`Filled::Failed`].
pub(crate) async fn apply(
    core: &Arc<CacheCore>,
    counters: &Counters,
    change: Change<'_>,
) -> Result<Applied> {
    match change {
        Change::Put { key, value, ttl, tags } => {
            let scope = Scope::Key(key.to_owned());
            core.flights().detach(&scope);
            let sent_on = core.store().primary_generation();
            let written = match value.and_then(|entry| storable(core, key, entry)) {
                Ok(entry) => core.store().set(key, &entry, ttl, tags).await,
                Err(error) => Err(error),
            };
            if written.is_ok() {
                acknowledged(core, &scope, sent_on);
            }
            if let Err(error) = &written {
                counters.error(error.kind());
                match retryable(error.kind()) {
                    true => keep(core, scope.clone()),
                    // Too large, not encodable, refused (`OOM` under `noeviction`; Redis
                    // still accepts `DEL` then): the old value must not outlive the write.
                    false => {
                        if let Some(suppressed) = core.log(LogKind::WriteFailed) {
                            let (key, error) = (core.shown(key), core.shown_error(error, key));
                            tracing::warn!(%key, %error, store = core.kind(), suppressed, "the new value cannot be stored; removing the old one");
                        }
                        let _ = remove(core, counters, &scope).await;
                    }
                }
            }
            evict_near(core, &scope);
            written.map(|()| Applied::Written)
        }
        Change::Fill { key, ticket, entry, ttl, tags } => {
            if !fits(core, counters, key, entry) {
                return Ok(Applied::Filled(Filled::Skipped));
            }
            let filled = core.store().fill(key, ticket, entry, ttl, tags).await;
            if let Some(near) = core.near() {
                near.evict(&Scope::Key(key.to_owned()));
            }
            Ok(Applied::Filled(filled_as(core, counters, key, filled)))
        }
        Change::Settle(settles) => {
            // Too large: not stored, its marker abandoned instead (in the same call).
            let ops: Vec<Settle<'_>> = settles
                .iter()
                .map(|settle| match settle {
                    Settle::Fill { key, ticket, entry, .. }
                        if !fits(core, counters, key, entry) =>
                    {
                        Settle::Abandon { key, ticket }
                    }
                    Settle::Fill { key, ticket, entry, ttl, tags } => {
                        Settle::Fill { key, ticket, entry, ttl: *ttl, tags }
                    }
                    Settle::Abandon { key, ticket } => Settle::Abandon { key, ticket },
                })
                .collect();
            let results = core.store().settle_many(&ops).await;
            let mut settled = Vec::with_capacity(ops.len());
            for (op, result) in ops.iter().zip(results) {
                settled.push(match op {
                    Settle::Fill { key, .. } => {
                        if let Some(near) = core.near() {
                            near.evict(&Scope::Key((*key).to_owned()));
                        }
                        Settled::Filled(filled_as(core, counters, key, result))
                    }
                    Settle::Abandon { .. } => Settled::Held(result.ok()),
                });
            }
            Ok(Applied::Settled(settled))
        }
        Change::Remove(scope) => {
            let span = invalidate_span(core, counters, &scope);
            let removed = remove(core, counters, &scope).instrument(span.clone()).await;
            let removed = match removed {
                Ok(removed) => {
                    span.record(
                        "cache.keys_removed",
                        i64::try_from(removed.keys).unwrap_or(i64::MAX),
                    );
                    span.record("cache.outcome", "removed");
                    removed
                }
                Err(error) => {
                    let kept = retryable(error.kind());
                    span.record("cache.outcome", if kept { "kept" } else { "failed" });
                    span.record("error.type", error.kind().as_str());
                    span.record("otel.status_code", "ERROR");
                    return Err(error);
                }
            };
            if removed.scanned {
                counters.pattern_scan();
            }
            counters.invalidated(removed.keys);
            Ok(Applied::Removed(removed))
        }
    }
}

/// The `cache.invalidate` span of a removal: INFO, with `cache.function` (the function whose
/// `#[invalidates]` or `#[cache_put]` removed, or `direct`), `cache.scope` (`key`,
/// `pattern`, `tag`, `all`), `cache.key`, `cache.pattern` or `cache.tag` (unless keys are redacted) and, when
/// it ends, `cache.keys_removed` and `cache.outcome` (`removed`, `kept`: failed for a
/// connection reason and kept for replay, `failed`) with `error.type` on failure.
pub(crate) fn invalidate_span(core: &CacheCore, counters: &Counters, scope: &Scope) -> Span {
    let kind = match scope {
        Scope::Key(_) => "key",
        Scope::Pattern(_) => "pattern",
        Scope::Tag(_) => "tag",
        Scope::All => "all",
    };
    let span = tracing::info_span!(
        "cache.invalidate",
        cache.function = counters.name(),
        cache.scope = kind,
        cache.key = Empty,
        cache.pattern = Empty,
        cache.tag = Empty,
        cache.keys_removed = Empty,
        cache.outcome = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if !core.redacts_keys() && !span.is_disabled() {
        match scope {
            Scope::Key(key) => span.record("cache.key", tracing::field::display(core.shown(key))),
            Scope::Pattern(_) => {
                span.record("cache.pattern", tracing::field::display(core.shown(scope.text())))
            }
            Scope::Tag(tag) => span.record("cache.tag", tracing::field::display(core.shown(tag))),
            Scope::All => &span,
        };
    }
    span
}

/// Whether a load's `entry` may be stored under `key` (not over `max_value_bytes`); when
/// not, logged and counted.
fn fits(core: &CacheCore, counters: &Counters, key: &str, entry: &Entry) -> bool {
    let max = core.settings().max_value_bytes;
    if entry.size() <= max {
        return true;
    }
    if let Some(suppressed) = core.log(LogKind::WriteFailed) {
        let key = core.shown(key);
        let bytes = entry.size();
        tracing::warn!(%key, bytes, max, suppressed, "value too large to cache; not stored");
    }
    counters.error(ErrorKind::TooLarge);
    false
}

/// What the store's answer to a fill of `key` means (logged and counted when it failed).
fn filled_as(core: &CacheCore, counters: &Counters, key: &str, filled: Result<bool>) -> Filled {
    match filled {
        Ok(true) => Filled::Stored,
        Ok(false) => {
            let key = core.shown(key);
            tracing::debug!(%key, "the key was written or invalidated while loading; value returned, not stored");
            Filled::Refused
        }
        Err(error) => {
            if let Some(suppressed) = core.log(LogKind::WriteFailed) {
                let (key, error) = (core.shown(key), core.shown_error(&error, key));
                tracing::warn!(%key, %error, store = core.kind(), suppressed, "cache write failed");
            }
            counters.error(error.kind());
            Filled::Failed
        }
    }
}

/// The entry, if the store may take it (not over `max_value_bytes`).
fn storable(core: &CacheCore, key: &str, entry: Arc<Entry>) -> Result<Arc<Entry>> {
    let max = core.settings().max_value_bytes;
    match entry.size() > max {
        true => Err(Error::ValueTooLarge { key: key.to_owned(), bytes: entry.size(), max }),
        false => Ok(entry),
    }
}

/// Steps 1, 2, 4 of a removal, and 3: a failure for a connection reason is kept.
async fn remove(core: &Arc<CacheCore>, counters: &Counters, scope: &Scope) -> Result<Removed> {
    let removed = removal(core, scope).await;
    if let Err(error) = &removed {
        counters.error(error.kind());
        if retryable(error.kind()) {
            keep(core, scope.clone());
        }
    }
    removed
}

/// Detaches the covered flights, removes in the store, evicts near copies.
async fn removal(core: &Arc<CacheCore>, scope: &Scope) -> Result<Removed> {
    core.flights().detach(scope);
    let store = core.store();
    let sent_on = store.primary_generation();
    let removed = match scope {
        Scope::Key(key) => store.remove(key).await.map(|keys| Removed { keys, scanned: false }),
        Scope::Pattern(pattern) => store.remove_matching(pattern).await,
        Scope::Tag(tag) => store.remove_tagged(tag).await,
        Scope::All => store.clear().await.map(|keys| Removed { keys, scanned: false }),
    };
    if removed.is_ok() {
        acknowledged(core, scope, sent_on);
    }
    evict_near(core, scope);
    removed
}

/// The primary acknowledged a write or removal covering `scope`, sent at primary
/// generation `sent_on` (`None`: the store follows no failovers). Behind Sentinel it is
/// kept for a failover (`recent.rs`), or, acknowledged by a primary that was replaced
/// meanwhile, kept for replay at once.
fn acknowledged(core: &Arc<CacheCore>, scope: &Scope, sent_on: Option<u64>) {
    let Some(sent_on) = sent_on else { return };
    let now_on = || core.store().primary_generation().unwrap_or(sent_on);
    if !core.recent().acknowledged(scope, sent_on, now_on) {
        core.backlog().push(scope.clone());
        replay_soon(core);
    }
}

/// The store moved to a new primary (a Sentinel failover) that has not taken a command
/// yet: every write the old primary acknowledged lately may be lost by replication, so
/// each is kept for replay there (and this process reads none of those keys from Redis
/// until it landed), and the near cache is flushed (its tracking reconnects to the new
/// primary).
///
/// The new primary serves no other command of this process until that replay has landed
/// (`hand_over`, kept until then): a read that checked the backlog just before the change
/// must not read the new primary before the removals it lost are back.
#[cfg(feature = "redis")]
pub(crate) fn primary_changed(core: &Arc<CacheCore>, hand_over: Box<dyn Send>) {
    let scopes = core.recent().take();
    tracing::info!(
        writes = scopes.len(),
        "primary changed: the writes its predecessor acknowledged lately are replayed on it"
    );
    if !scopes.is_empty() {
        for scope in scopes {
            core.backlog().push(scope);
        }
        // After the pushes: the round that drops it replays them.
        core.backlog().hold_until_replayed(hand_over);
        replay_soon(core);
    }
    if let Some(near) = core.near() {
        near.deafen(None);
    }
}

/// This process wrote or removed what `scope` covers: evict it from the near cache at once
/// (Redis' push follows), and void the reads of it in flight.
fn evict_near(core: &CacheCore, scope: &Scope) {
    if let Some(near) = core.near() {
        near.evict(scope);
    }
}

/// Keeps a removal that failed for a connection reason, and makes sure the replay runs.
fn keep(core: &Arc<CacheCore>, scope: Scope) {
    if let Some(suppressed) = core.log(LogKind::RemovalFailed) {
        let scope = core.shown(scope.text());
        tracing::warn!(%scope, suppressed, "invalidation kept for replay when Redis answers");
    }
    core.backlog().push(scope);
    replay_soon(core);
}

/// Makes sure the replay task runs.
fn replay_soon(core: &Arc<CacheCore>) {
    if !core.backlog().claim_replay() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        core.backlog().stop_replay();
        return;
    };
    let wake = core.backlog().waker();
    runtime.spawn(crate::store::replaying(replay(Arc::downgrade(core), wake)));
}

/// The replay task: runs until the backlog is empty or the cache is dropped. A round
/// drops what was held until it lands everything ([`crate::backlog::Backlog::hold_until_replayed`]).
async fn replay(core: Weak<CacheCore>, wake: Arc<tokio::sync::Notify>) {
    let mut delay = Duration::from_millis(50);
    loop {
        // Woken early by a hand-over, which holds a new primary's commands back meanwhile.
        let _ = tokio::time::timeout(delay, wake.notified()).await;
        let Some(core) = core.upgrade() else { return };
        let held = core.backlog().take_held();
        let mut failed = false;
        for kept in core.backlog().snapshot() {
            match removal(&core, &kept.scope).await {
                Ok(removed) => replayed(&core, &kept, removed.keys),
                Err(error) if retryable(error.kind()) => {
                    failed = true;
                    break;
                }
                Err(error) => {
                    let text = kept.scope.text();
                    let (scope, error) = (core.shown(text), core.shown_error(&error, text));
                    tracing::warn!(%scope, %error, "pending invalidation dropped: it cannot succeed");
                    core.backlog().remove(&kept);
                }
            }
        }
        delay = match failed {
            false => Duration::from_millis(50),
            true => (delay * 2).min(Duration::from_secs(1)),
        };
        match failed {
            false => drop(held),
            true => core.backlog().hold_again(held),
        }
        if core.backlog().len() == 0 && core.backlog().release_replay() {
            // Everything kept before a value held meanwhile has landed: release it too
            // (a hand-over that came after the round's start).
            drop(core.backlog().take_held());
            return;
        }
    }
}

fn replayed(core: &CacheCore, kept: &Kept, keys: u64) {
    tracing::info!(scope = %core.shown(kept.scope.text()), removed = keys, "pending invalidation replayed");
    core.counters(DIRECT_CALLS).invalidated(keys);
    core.backlog().remove(kept);
}

/// Write-through for `#[cache_put]`: stores the value of `returned`, if any, with `tags`. Failures are
/// counted and logged, never returned (they must not change what the function returns).
pub(crate) async fn put_outcome<S, R>(
    core: &Arc<CacheCore>,
    function: &str,
    key: &str,
    ttl: Duration,
    tags: &[String],
    cloner: Cloner<S::Value>,
    returned: &R,
) where
    S: Shape<R>,
    S::Value: Serialize + Send + Sync + 'static,
{
    let counters = core.counters(function);
    let value = match S::outcome(returned) {
        Outcome::Value(value) => value,
        // The function wrote that the row is gone (`Ok(None)`): so is its cached value.
        Outcome::Absent => {
            let gone = Change::Remove(Scope::Key(key.to_owned()));
            if let Err(error) = apply(core, &counters, gone).await {
                if let Some(suppressed) = core.log(LogKind::WriteFailed) {
                    let (key, error) = (core.shown(key), core.shown_error(&error, key));
                    tracing::warn!(function, %key, %error, store = core.kind(), suppressed, "cache write-through (removal) failed");
                }
            }
            return;
        }
        Outcome::Failed => return,
    };
    let value = Entry::encode(value, cloner, &core.settings().format)
        .map(Arc::new)
        .map_err(|source| Error::Encode { key: key.to_owned(), source });
    if let Err(error) = apply(core, &counters, Change::Put { key, value, ttl, tags }).await {
        if let Some(suppressed) = core.log(LogKind::WriteFailed) {
            let (key, error) = (core.shown(key), core.shown_error(&error, key));
            tracing::warn!(function, %key, %error, store = core.kind(), suppressed, "cache write-through failed");
        }
    }
}
