//! The miss path of cache-aside. [`through`] is every cached call: the read path
//! (`read.rs`), then, on a miss, a [`Load`], which carries what every step needs (the core,
//! the call site's counters, the key, its policy, how to clone values, what the lookup
//! learned as one [`Missed`]), and whose methods are the steps: lead a flight, follow one,
//! load alone, load under a cross-process lease ([`stampede`]), refresh early, answer within
//! a `timeout`, serve a stale value.
//!
//! Every path that stores the result of a load goes through [`Load::begin`] before the body
//! runs and a fill through the write path (`write.rs`, `Change::Fill`) after it, so a load
//! that an invalidation overtook never stores its value, in this process or any other (see
//! `store/mod.rs`).
//!
//! Telemetry: a miss opens one `cache.load` span (never a hit: a hit stays a lookup), a
//! `lock` waiter one `cache.lock_wait` inside it, an early refresh one `cache.refresh`; their
//! names and fields are made here ([`load_span`], [`refresh_span`], `stampede.rs`) and listed
//! in the README ("Traces").

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::codec::{Cloner, Entry};
use crate::core::CacheCore;
use crate::error::ErrorKind;
use crate::flight::{self, Follower, Join, Landed, Leader};
use crate::format::DecodeError;
use crate::log_limit::LogKind;
use crate::notify::Signal;
use crate::policy::Policy;
use crate::read::{self, Early, Missed, Read, StoreUse};
use crate::shape::{Outcome, Shape};
use crate::stats::Counters;
use crate::store::{Begun, FillPlan, Found, Settle, Ticket, Version};
use crate::write::{self, Applied, Change, Filled, Settled};

pub(crate) mod batch;
pub(crate) mod body;
mod stampede;

use body::{Body, Detach};

/// One call's miss path.
pub(crate) struct Load<'a, T> {
    pub(crate) core: &'a Arc<CacheCore>,
    /// Shared, so a load that goes on in the background can keep counting.
    pub(crate) counters: &'a Arc<Counters>,
    pub(crate) key: &'a str,
    /// The tags the value is stored with (`#[cached(tags = [...])]`, rendered).
    pub(crate) tags: &'a [String],
    pub(crate) policy: &'a Policy,
    pub(crate) cloner: Cloner<T>,
    /// An expired value kept for `stale`, served if the body fails.
    pub(crate) stale: Option<Arc<Entry>>,
    /// How this load may use the store (what its lookup learned).
    pub(crate) store: StoreUse,
    /// A load on a task of its own for a caller with `timeout` (see [`Load::run_within`]):
    /// the stale value it falls back on is counted by the caller, which may have left.
    pub(crate) behind: bool,
    /// The stale value was served instead of the body's result.
    pub(crate) served_stale: std::sync::atomic::AtomicBool,
    /// How long the body took, in microseconds (`u64::MAX` until it ran): stored with the
    /// value it produced (the `delta` of the envelope, see `format.rs`).
    pub(crate) loaded_in: std::sync::atomic::AtomicU64,
    /// What became of this load so far (a [`LoadOutcome`]), recorded as `cache.outcome`.
    outcome: AtomicU8,
    /// The fill ticket the lookup took (see `read::lookup_or_begin`), for this load's first
    /// [`Load::begin`] if it leads at once.
    lookup_ticket: std::sync::Mutex<Option<(Ticket, u64)>>,
}

/// What became of a load, the `cache.outcome` field of its span (`cache.load`, or
/// `cache.refresh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LoadOutcome {
    /// Not known (yet).
    Unknown,
    /// The body's value was stored.
    Stored,
    /// The body's value (or absent result) was returned, not stored: a write or an
    /// invalidation of the key landed while it loaded.
    Refused,
    /// The body's value was returned, not stored: too large, or the store failed.
    NotStored,
    /// The body found nothing (stored as such with `absent_ttl`).
    Absent,
    /// The body failed, and no stale value stood in.
    Failed,
    /// The body failed (or overran `timeout`) and the stale value answered.
    Stale,
    /// Another load's result answered (single flight, a `lock` holder, or a value that
    /// landed meanwhile): this call ran no body.
    Coalesced,
    /// A refresh that did not run: another process holds its lease.
    Skipped,
}

impl LoadOutcome {
    const ALL: [LoadOutcome; 9] = [
        LoadOutcome::Unknown,
        LoadOutcome::Stored,
        LoadOutcome::Refused,
        LoadOutcome::NotStored,
        LoadOutcome::Absent,
        LoadOutcome::Failed,
        LoadOutcome::Stale,
        LoadOutcome::Coalesced,
        LoadOutcome::Skipped,
    ];

    /// The value of the `cache.outcome` field.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LoadOutcome::Unknown => "unknown",
            LoadOutcome::Stored => "stored",
            LoadOutcome::Refused => "refused",
            LoadOutcome::NotStored => "not_stored",
            LoadOutcome::Absent => "absent",
            LoadOutcome::Failed => "failed",
            LoadOutcome::Stale => "stale",
            LoadOutcome::Coalesced => "coalesced",
            LoadOutcome::Skipped => "skipped",
        }
    }

    fn from_u8(value: u8) -> LoadOutcome {
        LoadOutcome::ALL.get(usize::from(value)).copied().unwrap_or(LoadOutcome::Unknown)
    }

    /// Records this outcome on `span` (`cache.outcome`, and `otel.status_code` when failed).
    fn record(self, span: &Span) {
        if self == LoadOutcome::Unknown {
            return;
        }
        span.record("cache.outcome", self.as_str());
        if self == LoadOutcome::Failed {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The `cache.load` span of a miss: INFO, with `cache.function`, `cache.key` (unless keys
/// are redacted) and, when it ends, `cache.outcome`. Its parent is the caller's span.
pub(crate) fn load_span(core: &CacheCore, counters: &Counters, key: &str) -> Span {
    let span = tracing::info_span!(
        "cache.load",
        cache.function = counters.name(),
        cache.key = Empty,
        cache.outcome = Empty,
        otel.status_code = Empty,
    );
    record_key(core, &span, key);
    span
}

/// The `cache.refresh` span of an early refresh (`refresh`, `early`): INFO, with the fields
/// of `cache.load`. A refresh on a task of its own is not part of the request that started
/// it (it outlives it, and its outcome is not the request's): its span starts a trace of its
/// own that *follows from* the caller's span (an OpenTelemetry link). A refresh that runs in
/// the caller is its child.
fn refresh_span(core: &CacheCore, counters: &Counters, key: &str, detached: bool) -> Span {
    // No parent for a detached refresh: its trace is its own, linked to the caller's.
    let parent = if detached { None } else { Span::current().id() };
    let span = tracing::info_span!(
        parent: parent,
        "cache.refresh",
        cache.function = counters.name(),
        cache.key = Empty,
        cache.outcome = Empty,
        otel.status_code = Empty,
    );
    if detached {
        span.follows_from(Span::current());
    }
    record_key(core, &span, key);
    span
}

/// Records `cache.key` on `span`, clipped, unless keys are redacted.
pub(crate) fn record_key(core: &CacheCore, span: &Span, key: &str) {
    if !core.redacts_keys() && !span.is_disabled() {
        span.record("cache.key", tracing::field::display(core.shown(key)));
    }
}

/// What [`Load::begin`] decided.
pub(crate) enum Began<T> {
    /// A value landed meanwhile: serve it.
    Present(T),
    /// An absent result was cached meanwhile (`absent_ttl`), and the caller's shape has one.
    Absent,
    /// Load, then fill with this ticket.
    Ticket(Ticket),
    /// The store failed: load without storing.
    Failed,
}

/// What a load may do with its value.
pub(crate) enum Permit {
    Ticket(Ticket),
    /// No ticket (Redis failing): nothing is stored, and the value is unconfirmed.
    None,
}

/// What the store must do with a load's outcome once its body ran
/// ([`Load::settling`]), and what the followers get then.
enum Settling<'p> {
    /// Nothing: publish this.
    Done(Landed),
    /// Remove the marker (whatever the answer), then publish this.
    Drop { ticket: &'p Ticket, published: Landed },
    /// Fill `entry` for `ttl` with the ticket; `stored` is published when it was stored.
    Fill { ticket: &'p Ticket, entry: Arc<Entry>, ttl: std::time::Duration, stored: Landed },
    /// Nothing to store: publish `outcome` if the ticket still holds (the marker removed).
    Confirm { ticket: &'p Ticket, outcome: Landed },
}

/// What the followers get for a value that was not stored (or an absent result), given
/// whether the load's ticket still `held` (`None`: Redis failed, unknown: only the
/// followers that joined before the body started may take it).
fn confirmed(outcome: Landed, held: Option<bool>) -> Landed {
    match held {
        Some(true) => outcome,
        Some(false) => Landed::Refused,
        None => match outcome {
            Landed::Value(entry) => Landed::Unconfirmed(Some(entry)),
            Landed::Absent => Landed::Unconfirmed(None),
            other => other,
        },
    }
}

/// [`Load::begin`] for many loads (a batch's, one policy): one round trip to the store
/// (`Store::begin_fills`) for all, each answer classified as a single load classifies its
/// own ([`Load::began`]); a key whose stored value is to be replaced is asked again alone.
pub(crate) async fn begin_many<T>(loads: &[&Load<'_, T>], accepts_absent: bool) -> Vec<Began<T>>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let mut began: Vec<Option<Began<T>>> = loads.iter().map(|_| None).collect();
    let mut asked = Vec::new();
    let mut plans = Vec::new();
    for (at, load) in loads.iter().enumerate() {
        match load.plan() {
            Some(plan) => {
                asked.push(at);
                plans.push((load.key, plan));
            }
            None => began[at] = Some(Began::Failed),
        }
    }
    let Some(first) = loads.first() else { return Vec::new() };
    let replies = first.core.store().begin_fills(&plans).await;
    for ((at, (_, mut plan)), reply) in asked.into_iter().zip(plans).zip(replies) {
        let load = loads[at];
        began[at] = Some(match load.began(reply, &mut plan, accepts_absent) {
            Some(answer) => answer,
            None => load.begin_with(&mut plan, accepts_absent).await,
        });
    }
    began.into_iter().map(|began| began.unwrap_or(Began::Failed)).collect()
}

/// [`Load::finish`] for many loads (a batch's, each leading its key's flight): their fills
/// and abandons in one round trip through the write path (`Change::Settle`), each load's
/// outcome decided and published as a single load's is ([`Load::settling`],
/// [`Load::published`]).
pub(crate) async fn finish_many<T>(finishing: Vec<(&Load<'_, T>, Landed, &Permit, &mut Leader)>)
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let mut steps = Vec::with_capacity(finishing.len());
    let mut loads = Vec::with_capacity(finishing.len());
    Leader::settling_all(finishing.iter().map(|(_, _, _, leader)| &**leader));
    for (load, outcome, permit, leader) in finishing {
        let invalidated = leader.invalidated();
        steps.push(load.settling(outcome, permit, invalidated));
        loads.push((load, leader));
    }
    let Some((first, _)) = loads.first() else { return };
    let (core, counters) = (first.core, first.counters);
    let mut ops = Vec::new();
    let mut asking = Vec::with_capacity(steps.len());
    for (step, (load, _)) in steps.iter().zip(&loads) {
        let op = match step {
            Settling::Done(_) => None,
            Settling::Drop { ticket, .. } | Settling::Confirm { ticket, .. } => {
                Some(Settle::Abandon { key: load.key, ticket })
            }
            Settling::Fill { ticket, entry, ttl, .. } => {
                Some(Settle::Fill { key: load.key, ticket, entry, ttl: *ttl, tags: load.tags })
            }
        };
        asking.push(op.is_some());
        ops.extend(op);
    }
    let mut settled = match ops.is_empty() {
        true => Vec::new(),
        false => match write::apply(core, counters, Change::Settle(&ops)).await {
            Ok(Applied::Settled(settled)) => settled,
            _ => ops.iter().map(|_| Settled::Held(None)).collect(),
        },
    }
    .into_iter();
    drop(ops);
    for ((step, (load, leader)), asked) in steps.into_iter().zip(loads).zip(asking) {
        let answer = if asked { settled.next() } else { None };
        let published = match (step, answer) {
            (Settling::Done(published), _) | (Settling::Drop { published, .. }, _) => published,
            (Settling::Confirm { outcome, .. }, Some(Settled::Held(held))) => {
                confirmed(outcome, held)
            }
            (Settling::Fill { ticket, stored, .. }, Some(Settled::Filled(filled))) => {
                load.after_fill(filled, ticket, stored).await
            }
            // A value too large to store: its marker was abandoned instead.
            (Settling::Fill { stored, .. }, Some(Settled::Held(held))) => confirmed(stored, held),
            (Settling::Confirm { outcome, .. }, _) => confirmed(outcome, None),
            (Settling::Fill { stored, .. }, _) => confirmed(stored, None),
        };
        load.published(published, Some(leader));
    }
}

/// Cache-aside with single flight, for every cached call: the read path (`read.rs`), and
/// on a miss this module's [`Load`]. The shape `S` says which return values are cached.
pub(crate) async fn through<S, R, B>(
    core: &Arc<CacheCore>,
    counters: &Arc<Counters>,
    key: &str,
    policy: &Policy,
    cloner: Cloner<S::Value>,
    body: B,
) -> R
where
    S: Shape<R>,
    S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
    B: Body<R>,
{
    through_tagged::<S, R, B>(core, counters, key, &[], policy, cloner, body).await
}

/// [`through`] for a value stored with `tags`.
pub(crate) async fn through_tagged<S, R, B>(
    core: &Arc<CacheCore>,
    counters: &Arc<Counters>,
    key: &str,
    tags: &[String],
    policy: &Policy,
    cloner: Cloner<S::Value>,
    body: B,
) -> R
where
    S: Shape<R>,
    S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
    B: Body<R>,
{
    let early = read::read_in_process(core, counters, key, policy, cloner, S::absent().is_some());
    through_after::<S, R, B>(core, counters, key, tags, policy, cloner, body, early).await
}

/// A cached call's return value when the read's in-process step serves it (a near-cache or
/// memory-store hit: nothing to wait for), else that step's answer for [`through_after`].
/// Called before the rest of the call is built, so such a hit makes none of the store
/// path's futures.
pub(crate) fn served_in_process<'a, S, R>(
    core: &'a CacheCore,
    counters: &Counters,
    key: &str,
    policy: &Policy,
    cloner: Cloner<S::Value>,
) -> Result<R, Early<'a, S::Value>>
where
    S: Shape<R>,
    S::Value: DeserializeOwned + 'static,
{
    match read::read_in_process(core, counters, key, policy, cloner, S::absent().is_some()) {
        Early::Read(Read::Hit { value, found: None, due: false }) => Ok(S::from_value(value)),
        Early::Read(Read::Absent) => {
            Ok(S::absent().expect("read answers Absent only when accepted"))
        }
        early => Err(early),
    }
}

/// [`through_tagged`] after the read's in-process step answered `early`.
///
/// A plain function returning an `async move` block rather than an `async fn`: an async
/// fn's future keeps each argument twice (as given, and moved into the body), and this one
/// is part of every `#[cached]` call's future (see `docs/benchmarks.md`, session 32).
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
pub(crate) fn through_after<'a, S, R, B>(
    core: &'a Arc<CacheCore>,
    counters: &'a Arc<Counters>,
    key: &'a str,
    tags: &'a [String],
    policy: &'a Policy,
    cloner: Cloner<S::Value>,
    body: B,
    early: Early<'a, S::Value>,
) -> impl Future<Output = R> + 'a
where
    S: Shape<R> + 'a,
    S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
    R: 'a,
    B: Body<R> + 'a,
{
    async move {
        // `timeout` bounds the whole call, lookup included (the in-process step before this
        // has nothing to wait for).
        let called = policy.timeout.map(|_| Instant::now());
        let hold = |found: &Found, value: &S::Value| {
            Arc::new(Entry::with_copy(&found.entry, value, cloner))
        };
        let accepts_absent = S::absent().is_some();
        // A tagged load's marker must join its tag sets, which the lookup's ticket does not:
        // tagged functions take their ticket after the lookup (three round trips on a miss).
        let loads = tags.is_empty();
        let read = match early {
            Early::Read(read) => read,
            Early::Store { near, due } => {
                read::read_store(
                    core,
                    counters,
                    key,
                    policy,
                    cloner,
                    accepts_absent,
                    hold,
                    loads,
                    near,
                    due,
                )
                .await
            }
        };
        // The miss and refresh paths are boxed: their state (flights, tickets, the body's
        // future, spans) would otherwise be part of every call's future, hits included, which
        // a spawned task or a boxed handler allocates and every call moves. A miss waits for
        // Redis anyway; one allocation more is noise there.
        let missed = match read {
            Read::Hit { value, found: Some(found), due: true } => {
                let load = Load {
                    tags,
                    ..Load::new(core, counters, key, policy, cloner, Missed::default())
                };
                return boxed(async move { load.refresh::<S, R, B>(body, value, found).await })
                    .await;
            }
            Read::Hit { value, .. } => return S::from_value(value),
            Read::Absent => return S::absent().expect("read answers Absent only when accepted"),
            Read::Miss(missed) => missed,
            Read::Failed(error) => Missed::after_failure(error.kind()),
        };
        let load = Load { tags, ..Load::new(core, counters, key, policy, cloner, missed) };
        boxed(load_missed::<S, R, B>(load, body, called)).await
    }
}

/// `future` on the heap. A plain function, so what the caller moves into `future` (a
/// `Load`, the body) is never a local of the caller's own future.
fn boxed<F: Future>(future: F) -> std::pin::Pin<Box<F>> {
    Box::pin(future)
}

/// The miss path of [`through_after`]: `load` runs the body (within the `timeout`, counted
/// from `called`, when a stale value can answer instead) and fills.
async fn load_missed<S, R, B>(mut load: Load<'_, S::Value>, body: B, called: Option<Instant>) -> R
where
    S: Shape<R>,
    S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
    B: Body<R>,
{
    let (core, counters, key, policy) = (load.core, load.counters, load.key, load.policy);
    let span = load_span(core, counters, key);
    let returned = async {
        if let (Some(timeout), Some(called), Some(_)) = (policy.timeout, called, &load.stale) {
            // A stale value to answer with: the body may overrun its timeout.
            let left = timeout.saturating_sub(called.elapsed());
            return load.run_within::<S, R, B>(body, left).await;
        }
        load.run::<S, R, _>(|| body.start()).await
    }
    .instrument(span.clone())
    .await;
    load.outcome().record(&span);
    returned
}

impl<'a, T> Load<'a, T> {
    /// The miss path of one call, after a lookup that found `missed`.
    pub(crate) fn new(
        core: &'a Arc<CacheCore>,
        counters: &'a Arc<Counters>,
        key: &'a str,
        policy: &'a Policy,
        cloner: Cloner<T>,
        missed: Missed,
    ) -> Load<'a, T> {
        Load {
            core,
            counters,
            key,
            tags: &[],
            policy,
            cloner,
            stale: missed.stale,
            store: missed.store,
            behind: false,
            served_stale: Default::default(),
            loaded_in: std::sync::atomic::AtomicU64::new(u64::MAX),
            outcome: AtomicU8::new(LoadOutcome::Unknown as u8),
            lookup_ticket: std::sync::Mutex::new(missed.ticket),
        }
    }

    /// The ticket the lookup took, once, with the flights started before it.
    fn take_lookup_ticket(&self) -> Option<(Ticket, u64)> {
        self.lookup_ticket.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// What became of this load so far.
    pub(crate) fn outcome(&self) -> LoadOutcome {
        LoadOutcome::from_u8(self.outcome.load(Ordering::Relaxed))
    }

    /// Sets what became of this load.
    pub(crate) fn set_outcome(&self, outcome: LoadOutcome) {
        self.outcome.store(outcome as u8, Ordering::Relaxed);
    }

    /// Another load's result answers this call: counted, and its outcome.
    pub(crate) fn coalesced(&self) {
        self.counters.coalesced();
        self.set_outcome(LoadOutcome::Coalesced);
    }
}

impl<T> Load<'_, T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Step 3 of the fill protocol, through the write path: stores a loaded value if its
    /// ticket still holds.
    async fn fill(&self, ticket: &Ticket, entry: &Arc<Entry>, ttl: std::time::Duration) -> Filled {
        let fill = Change::Fill { key: self.key, ticket, entry, ttl, tags: self.tags };
        match write::apply(self.core, self.counters, fill).await {
            Ok(Applied::Filled(filled)) => filled,
            _ => Filled::Failed,
        }
    }

    /// Cache-aside with single flight, after a lookup that did not answer.
    pub(crate) async fn run<S, R, Fut>(&mut self, load: impl FnOnce() -> Fut) -> R
    where
        S: Shape<R, Value = T>,
        Fut: Future<Output = R>,
    {
        loop {
            match self.core.flights().join_tagged(self.key, self.tags) {
                Join::Leader(mut leader) => return self.led::<S, R, Fut>(load, &mut leader).await,
                Join::Follower(mut follower) => match self.follow(&mut follower).await {
                    // Joined after the leader's confirmation was sent: a write may have
                    // landed in between (see `Follower::before_settling`). The value is in
                    // the store unless such a write removed it: a read of our own, which
                    // starts after we did, tells.
                    Landed::Value(_) | Landed::Absent
                        if !follower.before_settling && self.store == StoreUse::Fill =>
                    {
                        if let Some(answer) = self.read_for_ourselves::<S, R>().await {
                            return answer;
                        }
                        continue;
                    }
                    Landed::Value(_) | Landed::Absent if !follower.before_settling => continue,
                    Landed::Value(entry) => match entry.take(self.cloner) {
                        Ok(value) => {
                            self.coalesced();
                            return S::from_value(value);
                        }
                        Err(error) => {
                            // The leader's value did not decode as our type (two functions
                            // sharing a key with different types): load for ourselves.
                            self.counters.error(error.kind());
                            match error {
                                // Another type's value: leave it (see `format.rs`).
                                DecodeError::Schema => self.store = StoreUse::Bypass,
                                _ => self.store = StoreUse::Overwrite,
                            }
                            let returned = self.alone::<S, R, Fut>(load).await;
                            return self.serve_stale::<S, R>(returned);
                        }
                    },
                    Landed::Absent => {
                        if let Some(absent) = S::absent() {
                            self.coalesced();
                            return absent;
                        }
                        return self.alone::<S, R, Fut>(load).await;
                    }
                    // The leader's body failed. With a stale value, serve it without running
                    // the body again; otherwise errors are not shareable (`E` need not be
                    // `Clone`), so each caller gets its own body's result.
                    Landed::Failed => {
                        if let Some(value) = self.take_stale() {
                            return S::from_value(value);
                        }
                        return self.alone::<S, R, Fut>(load).await;
                    }
                    // An unchecked outcome, for a caller that joined before the body started:
                    // fresh for it (see `Follower::early`).
                    Landed::Unconfirmed(value) if follower.early => match value {
                        Some(entry) => match entry.take(self.cloner) {
                            Ok(value) => {
                                self.coalesced();
                                return S::from_value(value);
                            }
                            Err(_) => continue,
                        },
                        None => match S::absent() {
                            Some(absent) => {
                                self.coalesced();
                                return absent;
                            }
                            None => continue,
                        },
                    },
                    // The leader was cancelled or panicked, or its value was refused or
                    // unchecked (it may predate a write): elect a new one.
                    // Refused: a value may well be stored by now; a read of our own, started
                    // after we did, is fresh for us (and spares a new flight and its lease).
                    Landed::Refused if self.store == StoreUse::Fill => {
                        if let Some(answer) = self.read_for_ourselves::<S, R>().await {
                            return answer;
                        }
                        continue;
                    }
                    Landed::Abandoned
                    | Landed::Running
                    | Landed::Refused
                    | Landed::Unconfirmed(_) => continue,
                },
            }
        }
    }

    /// Waits for the flight's outcome. A follower's lookup ticket goes unused: by the time
    /// it might lead, its marker may have been filled or have expired; it takes a new one.
    async fn follow(&self, follower: &mut Follower) -> Landed {
        drop(self.take_lookup_ticket());
        flight::wait(follower).await
    }

    /// The flight's leader: loads under the cross-process lease when the policy says
    /// `lock` and the store is shared, else alone; a failed body is answered with the kept
    /// stale value, if any.
    async fn led<S, R, Fut>(&self, load: impl FnOnce() -> Fut, leader: &mut Leader) -> R
    where
        S: Shape<R, Value = T>,
        Fut: Future<Output = R>,
    {
        let locked = self.policy.lock && self.store == StoreUse::Fill && self.core.store().shared();
        let returned = if locked {
            self.locked::<S, R, Fut>(load, leader).await
        } else {
            self.lead::<S, R, Fut>(load, leader).await
        };
        self.serve_stale::<S, R>(returned)
    }

    /// A follower that may not take the flight's outcome reads the store once: what it finds
    /// was stored before this read, which started after the caller did, so it is fresh for
    /// the caller. `None` when nothing usable is there (then elect a new leader).
    async fn read_for_ourselves<S, R>(&self) -> Option<R>
    where
        S: Shape<R, Value = T>,
    {
        match self.core.store().get(self.key).await {
            Ok(Some(entry)) if entry.is_absent() => {
                let absent = S::absent()?;
                self.coalesced();
                Some(absent)
            }
            Ok(Some(entry)) => {
                let value = entry.take(self.cloner).ok()?;
                self.coalesced();
                Some(S::from_value(value))
            }
            _ => None,
        }
    }

    /// Leads the flight: take a ticket (or find the value landed), run the body, publish
    /// the outcome to the followers, fill.
    pub(crate) async fn lead<S, R, Fut>(&self, load: impl FnOnce() -> Fut, leader: &mut Leader) -> R
    where
        S: Shape<R, Value = T>,
        Fut: Future<Output = R>,
    {
        let permit = match self.permit::<S, R>(leader).await {
            Ok(permit) => permit,
            Err((answer, _)) => return answer,
        };
        leader.loading();
        let returned = self.body(load).await;
        self.finish(self.landed::<S, R>(&returned, Some(&*leader)), &permit, Some(leader)).await;
        returned
    }

    /// Step 1 for a flight's leader: a permit to load, or the answer when a value (or an
    /// absent result) landed meanwhile, with what waiting processes should hear. That value
    /// was read before followers joining now started (a write may have completed in between,
    /// in another process), so they are sent to look again for themselves.
    pub(crate) async fn permit<S, R>(&self, leader: &mut Leader) -> Result<Permit, (R, Signal)>
    where
        S: Shape<R, Value = T>,
    {
        if let Some((ticket, flights)) = self.take_lookup_ticket() {
            // The lookup placed (or adopted) the marker already, before the body runs; no
            // flight started or ended since but ours, so no load of this process filled
            // the key since.
            if leader.number() == flights + 1 {
                return Ok(Permit::Ticket(ticket));
            }
        }
        let answer = match self.begin(S::absent().is_some()).await {
            Began::Ticket(ticket) => return Ok(Permit::Ticket(ticket)),
            Began::Failed => return Ok(Permit::None),
            Began::Present(value) => (S::from_value(value), Signal::Ready),
            // Read before waiting processes that look now started: they read for themselves.
            Began::Absent => (
                S::absent().expect("accepted only for shapes with an absent result"),
                Signal::Ready,
            ),
        };
        leader.publish(Landed::Refused);
        self.coalesced();
        Err(answer)
    }

    /// Loads outside any flight (followers whose leader produced nothing for them), through
    /// the same fill protocol.
    async fn alone<S, R, Fut>(&self, load: impl FnOnce() -> Fut) -> R
    where
        S: Shape<R, Value = T>,
        Fut: Future<Output = R>,
    {
        let permit = match self.begin(S::absent().is_some()).await {
            Began::Present(value) => {
                self.coalesced();
                return S::from_value(value);
            }
            Began::Absent => {
                self.coalesced();
                return S::absent().expect("accepted only for shapes with an absent result");
            }
            Began::Ticket(ticket) => Permit::Ticket(ticket),
            Began::Failed => Permit::None,
        };
        let returned = self.body(load).await;
        self.finish(self.landed::<S, R>(&returned, None), &permit, None).await;
        returned
    }

    /// Runs the body, counting the load and its duration.
    pub(crate) async fn body<R, Fut>(&self, load: impl FnOnce() -> Fut) -> R
    where
        Fut: Future<Output = R>,
    {
        let started = Instant::now();
        let returned = load().await;
        self.counters.load(started.elapsed());
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.loaded_in.store(micros, std::sync::atomic::Ordering::Relaxed);
        returned
    }

    /// Step 1 of the fill protocol: the value if one landed since the miss, else a ticket.
    pub(crate) async fn begin(&self, accepts_absent: bool) -> Began<T> {
        let Some(mut plan) = self.plan() else { return Began::Failed };
        self.begin_with(&mut plan, accepts_absent).await
    }

    /// What this load asks of [`Store::begin_fill`](crate::store::Store::begin_fill);
    /// `None` when it leaves the store alone.
    fn plan(&self) -> Option<FillPlan<'_>> {
        if self.store == StoreUse::Bypass {
            return None;
        }
        let plan = read::fill_plan(self.core, self.policy, self.store == StoreUse::Overwrite);
        Some(FillPlan { tags: self.tags, ..plan })
    }

    /// [`begin`](Self::begin) with `plan`, one round trip per try.
    async fn begin_with(&self, plan: &mut FillPlan<'_>, accepts_absent: bool) -> Began<T> {
        loop {
            let reply = self.core.store().begin_fill(self.key, plan).await;
            if let Some(began) = self.began(reply, plan, accepts_absent) {
                return began;
            }
        }
    }

    /// What the store's answer to step 1 means for this load (the one place that rule is
    /// written, for single and batch loads alike); `None`: ask again, `plan.force` now set
    /// (what is stored is another function's absent result or data this load cannot
    /// decode, and is to be replaced).
    fn began(
        &self,
        reply: crate::error::Result<Begun>,
        plan: &mut FillPlan<'_>,
        accepts_absent: bool,
    ) -> Option<Began<T>> {
        match reply {
            Ok(Begun::Present(entry)) if entry.is_absent() => {
                if accepts_absent {
                    return Some(Began::Absent);
                }
                plan.force = true; // another function's absent result: ours has none
                None
            }
            Ok(Begun::Present(entry)) => match entry.take(self.cloner) {
                Ok(value) => Some(Began::Present(value)),
                // Written for another type or schema (a rolling upgrade): leave it.
                Err(error @ DecodeError::Schema) => {
                    self.counters.error(error.kind());
                    Some(Began::Failed)
                }
                // Another service's data or an old schema: replace it.
                Err(error) if !plan.force => {
                    self.counters.error(error.kind());
                    plan.force = true;
                    None
                }
                Err(_) => Some(Began::Failed),
            },
            Ok(Begun::Ticket(ticket)) => Some(Began::Ticket(ticket)),
            Err(error) => {
                if let Some(suppressed) = self.core.log(LogKind::LoadFailed) {
                    let (key, error) =
                        (self.core.shown(self.key), self.core.shown_error(&error, self.key));
                    tracing::warn!(%key, %error, suppressed, "could not prepare the fill; loading without caching");
                }
                self.counters.error(error.kind());
                Some(Began::Failed)
            }
        }
    }

    /// What the flight's followers may get from `returned`: the value, encoded (classified
    /// before any await, so a returned value need not be `Sync` for a load that runs on a
    /// task of its own), an absent result, or a failure.
    /// Whether this load's encoded value carries a typed copy (what a reader takes without
    /// decoding): only where one is read, in an in-process store (its hits) or by the
    /// flight's followers; a shared store keeps bytes, and a fill evicts the near cache.
    pub(crate) fn keeps_copy(&self, leader: Option<&Leader>) -> bool {
        !self.core.store().shared() || leader.is_some_and(Leader::followed)
    }

    pub(crate) fn landed<S, R>(&self, returned: &R, leader: Option<&Leader>) -> Landed
    where
        S: Shape<R, Value = T>,
    {
        let copy = self.keeps_copy(leader);
        match S::outcome(returned) {
            Outcome::Value(value) => {
                let took = match self.loaded_in.load(std::sync::atomic::Ordering::Relaxed) {
                    u64::MAX => None,
                    micros => Some(std::time::Duration::from_micros(micros)),
                };
                let format = &self.core.settings().format;
                let cloner = self.cloner.filter(|_| copy);
                match Entry::encode_traced(value, cloner, format, took) {
                    Ok(entry) => Landed::Value(Arc::new(entry)),
                    Err(error) => {
                        if let Some(suppressed) = self.core.log(LogKind::LoadFailed) {
                            let (key, error) = (
                                self.core.shown(self.key),
                                self.core.shown_error(&error, self.key),
                            );
                            tracing::warn!(%key, %error, suppressed, "value cannot be encoded; not cached");
                        }
                        self.counters.error(ErrorKind::Encode);
                        Landed::Failed
                    }
                }
            }
            Outcome::Absent => Landed::Absent,
            Outcome::Failed => Landed::Failed,
        }
    }

    /// Fills a cacheable value with the ticket, then publishes the outcome to the flight's
    /// followers. Returns what the processes waiting on the load lease should hear.
    ///
    /// The followers joined while the body ran; the value may be handed to them only if the
    /// ticket is *confirmed* after the body: the store accepted the fill, or (value not
    /// stored: too large, nothing cacheable) still held the marker. Then no write or
    /// invalidation of the key happened between the ticket and that confirmation, so any
    /// that completed before a follower started also completed before the ticket, and the
    /// body read the database after it. A refused ticket sends the followers to load again
    /// (`Landed::Refused`) rather than risk a value that predates a write made in another
    /// process. An unchecked one (Redis failing) goes only to the followers that joined
    /// before the body started (`Landed::Unconfirmed`): for them it is fresh, and during an
    /// outage single flight still holds for every burst of callers.
    pub(crate) async fn finish(
        &self,
        outcome: Landed,
        permit: &Permit,
        leader: Option<&mut Leader>,
    ) -> Signal {
        if let Some(leader) = &leader {
            leader.settling();
        }
        let invalidated = leader.as_ref().is_some_and(|leader| leader.invalidated());
        let published = match self.settling(outcome, permit, invalidated) {
            Settling::Done(published) => published,
            Settling::Drop { ticket, published } => {
                let _ = self.core.store().abandon(self.key, ticket).await;
                published
            }
            Settling::Fill { ticket, entry, ttl, stored } => {
                let filled = self.fill(ticket, &entry, ttl).await;
                self.after_fill(filled, ticket, stored).await
            }
            Settling::Confirm { ticket, outcome } => self.confirm(ticket, outcome).await,
        };
        self.published(published, leader)
    }

    /// What the store must do with this load's `outcome` (the first step of
    /// [`finish`](Self::finish), for single and batch loads alike). `invalidated`: an
    /// invalidation of the key happened while it loaded (its flight says).
    fn settling<'p>(&self, outcome: Landed, permit: &'p Permit, invalidated: bool) -> Settling<'p> {
        match (outcome, permit) {
            (Landed::Failed, Permit::Ticket(ticket)) => {
                Settling::Drop { ticket, published: Landed::Failed }
            }
            (outcome, _) if invalidated => {
                tracing::debug!(
                    key = %self.core.shown(self.key),
                    "key invalidated while loading; value returned, not stored"
                );
                let published = match outcome {
                    Landed::Failed => outcome,
                    _ => Landed::Refused,
                };
                match permit {
                    Permit::Ticket(ticket) => Settling::Drop { ticket, published },
                    Permit::None => Settling::Done(published),
                }
            }
            (Landed::Value(entry), Permit::Ticket(ticket)) => Settling::Fill {
                ticket,
                entry: Arc::clone(&entry),
                ttl: self.policy.lifetime(),
                stored: Landed::Value(entry),
            },
            (Landed::Absent, Permit::Ticket(ticket)) => match self.policy.absent_ttl {
                // Negative caching: the absent result is stored like a value.
                Some(absent_ttl) => Settling::Fill {
                    ticket,
                    entry: Arc::new(Entry::absent()),
                    ttl: absent_ttl,
                    stored: Landed::Absent,
                },
                None => Settling::Confirm { ticket, outcome: Landed::Absent },
            },
            (Landed::Value(entry), Permit::None) => {
                Settling::Done(Landed::Unconfirmed(Some(entry)))
            }
            (Landed::Absent, Permit::None) => Settling::Done(Landed::Unconfirmed(None)),
            (outcome, _) => Settling::Done(outcome),
        }
    }

    /// What the followers get after a fill that `filled`: `stored` when it was stored.
    async fn after_fill(&self, filled: Filled, ticket: &Ticket, stored: Landed) -> Landed {
        match filled {
            Filled::Stored => {
                self.set_outcome(LoadOutcome::Stored);
                stored
            }
            Filled::Refused => Landed::Refused,
            // Not stored (too large), or stored or not? Ask (and take our marker away if it
            // is still there).
            Filled::Skipped | Filled::Failed => self.confirm(ticket, stored).await,
        }
    }

    /// The last step of [`finish`](Self::finish): records what became of the load, hands
    /// `published` to the flight's followers, and returns what the processes waiting on the
    /// load lease should hear.
    fn published(&self, published: Landed, leader: Option<&mut Leader>) -> Signal {
        // What this load's span records, when the fill did not say already.
        match &published {
            Landed::Value(_) if self.outcome() == LoadOutcome::Stored => {}
            Landed::Value(_) | Landed::Unconfirmed(Some(_)) => {
                self.set_outcome(LoadOutcome::NotStored)
            }
            Landed::Absent | Landed::Unconfirmed(None) => self.set_outcome(LoadOutcome::Absent),
            Landed::Failed => self.set_outcome(LoadOutcome::Failed),
            Landed::Refused => self.set_outcome(LoadOutcome::Refused),
            Landed::Abandoned | Landed::Running => {}
        }
        // What the processes waiting on a load lease hear: an absent result the store
        // confirmed is theirs too (no body needs to run); a failed body lets them serve a
        // stale value; anything else sends them to look again.
        let signal = match &published {
            Landed::Absent => Signal::Absent,
            Landed::Failed => Signal::Failed,
            _ => Signal::Ready,
        };
        if let Some(leader) = leader {
            leader.publish(published);
        }
        signal
    }

    /// A value that was not stored (or an absent result): hand it to the followers only if
    /// the ticket still holds; a marker this load placed is removed meanwhile.
    async fn confirm(&self, ticket: &Ticket, outcome: Landed) -> Landed {
        confirmed(outcome, self.core.store().abandon(self.key, ticket).await.ok())
    }

    /// The kept stale value, decoded.
    fn stale_value(&self) -> Option<T> {
        self.stale.as_ref().and_then(|entry| entry.take(self.cloner).ok())
    }

    /// The kept stale value, to be served in place of a failed body's result: counted,
    /// unless this load runs behind a caller that counts what it serves.
    pub(crate) fn take_stale(&self) -> Option<T> {
        let value = self.stale_value()?;
        self.served_stale.store(true, std::sync::atomic::Ordering::Relaxed);
        self.set_outcome(LoadOutcome::Stale);
        if !self.behind {
            self.counters.stale();
        }
        Some(value)
    }

    /// `returned`, or the stale value when the body failed and one is kept.
    pub(crate) fn serve_stale<S, R>(&self, returned: R) -> R
    where
        S: Shape<R, Value = T>,
    {
        if !matches!(S::outcome(&returned), Outcome::Failed) {
            return returned;
        }
        match self.take_stale() {
            Some(value) => S::from_value(value),
            None => returned,
        }
    }

    /// Early refresh (`refresh`, `early`): a hit that decided to recompute its value.
    /// One refresh per key runs in a process (a flight) and, on Redis, one across processes
    /// (a lease). A detachable body runs in the background and this caller gets the current
    /// value at hit latency; a body that borrows from the caller (the programmatic API) runs
    /// here. Every other caller gets the current value without waiting, and a caller whose
    /// value expired meanwhile joins the refresh like any miss.
    pub(crate) async fn refresh<S, R, B>(&self, body: B, current: T, found: Found) -> R
    where
        S: Shape<R, Value = T>,
        B: Body<R>,
    {
        let Some(leader) = self.core.flights().try_lead(self.key, self.tags) else {
            return S::from_value(current); // this process refreshes it already
        };
        let behind =
            RefreshBehind::<S, T> { owned: self.owned(), leader, found, shape: PhantomData };
        match body.detach(behind) {
            Ok(()) => S::from_value(current),
            Err((body, RefreshBehind { mut leader, found, .. })) => {
                let span = refresh_span(self.core, self.counters, self.key, false);
                let refreshed = self
                    .refresh_now::<S, R, _>(|| body.start(), &mut leader, found)
                    .instrument(span.clone())
                    .await;
                self.outcome().record(&span);
                match refreshed {
                    // The caller asked for a fresh value; a failed refresh keeps the old one.
                    Some(returned) if !matches!(S::outcome(&returned), Outcome::Failed) => returned,
                    _ => S::from_value(current),
                }
            }
        }
    }

    /// Runs a refresh as leader of its key's flight: takes the lease, runs the body, replaces
    /// the value it started from (only if that is still the stored one), and wakes whoever
    /// waits. `None` when another process holds the lease (it refreshes the value).
    async fn refresh_now<S, R, Fut>(
        &self,
        load: impl FnOnce() -> Fut,
        leader: &mut Leader,
        found: Found,
    ) -> Option<R>
    where
        S: Shape<R, Value = T>,
        Fut: Future<Output = R>,
    {
        let Some(mut lease) = stampede::refresh_lease(self.core, self.key).await else {
            self.set_outcome(LoadOutcome::Skipped);
            return None;
        };
        self.counters.refresh();
        leader.loading();
        let returned = self.body(load).await;
        // On Redis, a refresh slower than the value's age could meet a later write of the
        // same bytes (see `Version::Redis`): return its value, do not store it. The margin
        // covers the time between sending a command and the server running it. Writes are
        // told apart exactly by the memory store's write number, and by the write time (to
        // the millisecond) that values since `cr2` carry in their bytes: for those, a slow
        // refresh may store too, so callers whose value expired meanwhile can join it.
        let margin = (found.age / 2).min(std::time::Duration::from_secs(1));
        let exact = matches!(found.version, Version::Memory(_))
            || crate::format::Stamp::of(&found.entry.json).is_some();
        let quick = exact || found.read_at.elapsed() + margin < found.age;
        let permit = match quick {
            true => Permit::Ticket(Ticket::Replace { old: found.entry, version: found.version }),
            false => Permit::None,
        };
        lease.settle().await;
        let signal = self
            .finish(self.landed::<S, R>(&returned, Some(&*leader)), &permit, Some(leader))
            .await;
        if matches!(S::outcome(&returned), Outcome::Absent) && self.policy.absent_ttl.is_none() {
            // The value is gone at its source: nobody may be served the old one any more.
            // (Removing is safe whatever happened meanwhile: at worst a later value misses.)
            // A removal that fails for a connection reason is kept and replayed.
            let gone = Change::Remove(crate::scope::Scope::Key(self.key.to_owned()));
            let _ = write::apply(self.core, self.counters, gone).await;
        }
        lease.release(signal).await;
        Some(returned)
    }

    /// A miss holding a stale value, with `timeout`: the caller gets the stale value if the
    /// load has not answered within `timeout`. The flight's leader runs the body on a task
    /// of its own (with its own copies of the arguments), which goes on and stores its value
    /// after the caller left (a failure then is counted in `background_failures`); the other
    /// callers wait for that flight without a task. A body that borrows from the caller
    /// runs here, as without `timeout`.
    pub(crate) async fn run_within<S, R, B>(&self, body: B, timeout: std::time::Duration) -> R
    where
        S: Shape<R, Value = T>,
        B: Body<R>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut follower = match self.core.flights().join_tagged(self.key, self.tags) {
                Join::Leader(leader) => {
                    return self.lead_within::<S, R, B>(body, leader, deadline).await
                }
                Join::Follower(follower) => follower,
            };
            let landed = match tokio::time::timeout_at(deadline, flight::wait(&mut follower)).await
            {
                Ok(landed) => landed,
                Err(_) => match self.take_stale() {
                    Some(value) => return S::from_value(value),
                    // The kept value does not decode as ours (another schema): wait as
                    // without `timeout`.
                    None => flight::wait(&mut follower).await,
                },
            };
            match landed {
                // Joined before the leader settled with the store: its outcome is fresh
                // for this caller (see `Follower::before_settling`).
                Landed::Value(entry) if follower.before_settling => {
                    if let Ok(value) = entry.take(self.cloner) {
                        self.coalesced();
                        return S::from_value(value);
                    }
                }
                Landed::Absent if follower.before_settling => {
                    if let Some(absent) = S::absent() {
                        self.coalesced();
                        return absent;
                    }
                }
                Landed::Failed => {
                    if let Some(value) = self.take_stale() {
                        return S::from_value(value);
                    }
                }
                _ => {}
            }
            // Anything else: look again, as a caller arriving now (a new flight, or the
            // value the last one stored), still within the deadline.
        }
    }

    /// [`run_within`](Self::run_within) for the flight's leader: the body goes to a task
    /// that leads the flight, and this caller waits for it until `deadline`.
    async fn lead_within<S, R, B>(
        &self,
        body: B,
        leader: Leader,
        deadline: tokio::time::Instant,
    ) -> R
    where
        S: Shape<R, Value = T>,
        B: Body<R>,
    {
        let behind = LoadBehind::<S, T> { owned: self.owned(), leader, shape: PhantomData };
        let mut answer = match body.detach(behind) {
            Ok(answer) => answer,
            Err((body, LoadBehind { leader: ref mut held, .. })) => {
                return self.led::<S, R, _>(|| body.start(), held).await;
            }
        };
        let answered = match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(answered) => answered,
            Err(_) => match self.take_stale() {
                Some(value) => return S::from_value(value),
                None => answer.await,
            },
        };
        match answered {
            Ok((returned, served_stale, outcome)) => {
                if served_stale {
                    self.counters.stale();
                }
                self.set_outcome(outcome);
                returned
            }
            // The load panicked: the stale value answers, as it does for a failed body.
            Err(_) => match self.take_stale() {
                Some(value) => S::from_value(value),
                None => panic!("the body of `{}` panicked on its own task", self.key),
            },
        }
    }

    /// What this load needs, owned, to go on in a task of its own.
    fn owned(&self) -> Owned<T> {
        Owned {
            core: Arc::clone(self.core),
            counters: Arc::clone(self.counters),
            key: self.key.to_owned(),
            tags: self.tags.to_vec(),
            policy: *self.policy,
            cloner: self.cloner,
            stale: self.stale.clone(),
            store: self.store,
        }
    }
}

/// A [`Load`]'s context, owned by a task that may outlive the caller.
struct Owned<T> {
    core: Arc<CacheCore>,
    counters: Arc<Counters>,
    key: String,
    tags: Vec<String>,
    policy: Policy,
    cloner: Cloner<T>,
    stale: Option<Arc<Entry>>,
    store: StoreUse,
}

impl<T> Owned<T> {
    fn load(&self) -> Load<'_, T> {
        let missed = Missed { stale: self.stale.clone(), store: self.store, ticket: None };
        let load =
            Load::new(&self.core, &self.counters, &self.key, &self.policy, self.cloner, missed);
        Load { tags: &self.tags, ..load }
    }

    /// This load, to run behind a caller that counts the stale value it serves (see
    /// [`Load::behind`]).
    fn behind(&self) -> Load<'_, T> {
        Load { behind: true, ..self.load() }
    }
}

/// A refresh handed to a task of its own, with the flight it leads.
struct RefreshBehind<S, T> {
    owned: Owned<T>,
    leader: Leader,
    found: Found,
    shape: PhantomData<fn() -> S>,
}

impl<S, R, T> Detach<R> for RefreshBehind<S, T>
where
    S: Shape<R, Value = T>,
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Output = ();

    fn detached<F>(self, body: F)
    where
        F: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        let RefreshBehind { owned, mut leader, found, .. } = self;
        let span = refresh_span(&owned.core, &owned.counters, &owned.key, true);
        tokio::spawn(async move {
            let load = owned.load();
            let refreshed = load
                .refresh_now::<S, R, _>(|| body, &mut leader, found)
                .instrument(span.clone())
                .await;
            load.outcome().record(&span);
            if let Some(returned) = refreshed {
                if matches!(S::outcome(&returned), Outcome::Failed) {
                    // The current value stays; nobody saw this error.
                    load.counters.background_failure();
                }
            }
        });
    }
}

/// A miss's load handed to a task of its own; the caller awaits the answer for as long as
/// its `timeout` allows.
struct LoadBehind<S, T> {
    owned: Owned<T>,
    /// The flight the caller leads, handed to the task.
    leader: Leader,
    shape: PhantomData<fn() -> S>,
}

impl<S, R, T> Detach<R> for LoadBehind<S, T>
where
    S: Shape<R, Value = T>,
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The result, whether it is the stale value standing in for a failed body, and what
    /// became of the load.
    type Output = tokio::sync::oneshot::Receiver<(R, bool, LoadOutcome)>;

    fn detached<F>(self, body: F) -> Self::Output
    where
        F: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let LoadBehind { owned, mut leader, .. } = self;
        // The load goes on in the caller's `cache.load` span, which stays open until it ends.
        let task = async move {
            let load = owned.behind();
            let returned = load.led::<S, R, _>(|| body, &mut leader).await;
            let failed = matches!(S::outcome(&returned), Outcome::Failed);
            let served_stale = load.served_stale.load(std::sync::atomic::Ordering::Relaxed);
            let outcome = load.outcome();
            if answer.send((returned, served_stale, outcome)).is_err() && (failed || served_stale) {
                // The caller was answered with the stale value and left; nobody saw this.
                load.counters.background_failure();
            }
        };
        tokio::spawn(task.instrument(Span::current()));
        answered
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::codec::Entry;
    use crate::flight::{Join, Landed};
    use crate::format::Format;
    use crate::Cache;

    /// The window between a leader's fill and its publish: another process's write removes
    /// the value the leader just stored, then a call starts, misses, and joins the flight
    /// before the leader publishes. The leader's value predates that write, so the call must
    /// not take it: it reads the store itself and loads.
    #[tokio::test]
    async fn a_caller_that_joins_after_the_fill_does_not_take_the_leaders_value() {
        let cache = Cache::memory();
        let Join::Leader(mut leader) = cache.core().flights().join("row:1") else {
            panic!("the first to join leads");
        };
        leader.loading();
        // The leader asks the store; the value it stores is then removed by a write
        // elsewhere (here: never stored, the store stays empty).
        leader.settling();
        let caller = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load("row:1", Duration::from_secs(60), || async {
                        Ok::<_, crate::Error>("v2 (after the write)".to_owned())
                    })
                    .await
            })
        };
        // Let the caller miss and join the flight.
        while cache.stats().misses == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let old = Entry::encode(&"v1 (before the write)".to_owned(), None, &Format::default())
            .expect("encodes");
        leader.publish(Landed::Value(std::sync::Arc::new(old)));
        drop(leader);
        assert_eq!(caller.await.unwrap().unwrap(), "v2 (after the write)");
    }
}
