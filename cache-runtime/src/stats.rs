//! Hit, miss, load and error counters, per function name and in total. What is exported,
//! and under which names, is listed in
//! [`FAMILIES`](crate::metric_families::FAMILIES).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::count::Count;
use crate::error::ErrorKind;

/// The name under which the programmatic API ([`Cache::get`](crate::Cache::get),
/// [`Cache::get_or_load`](crate::Cache::get_or_load), ...) counts its calls.
pub const DIRECT_CALLS: &str = "direct";

/// A snapshot of a cache's counters (see [`Cache::stats`](crate::Cache::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that found nothing in the cache.
    pub misses: u64,
    /// Times a body (or loader) ran to fill the cache.
    pub loads: u64,
    /// Misses answered by another caller's concurrent load (single flight) instead of
    /// running the body again.
    pub coalesced: u64,
    /// Backend failures: connection, timeout, error reply, value that does not decode.
    pub errors: u64,
    /// Keys removed by invalidation (`#[invalidates]`, `invalidate`, `invalidate_pattern`).
    pub invalidated: u64,
    /// Pattern invalidations that no index could serve, so the keyspace was scanned.
    pub pattern_scans: u64,
    /// Expired values returned because the body failed, or overran its `timeout`
    /// (`stale = ...`).
    pub stale: u64,
    /// Values recomputed before they expired (`refresh = ...`, `early`).
    pub refreshes: u64,
    /// Bodies that failed after their caller was answered: a background refresh (the
    /// current value stays), or a load that outlived its caller's `timeout` (the stale
    /// value stays). Errors a caller sees are never counted here.
    pub background_failures: u64,
    /// Calls refused by a rate limit (`#[rate_limit]`, [`Cache::rate_limit`](crate::Cache::rate_limit)),
    /// including refusals by `fail_closed` while the store was failing.
    pub rate_limited: u64,
    /// Calls a rate limit let through, including those let through by `fail_open` while
    /// the store was failing.
    pub rate_allowed: u64,
    /// Hits served from process memory by the near cache
    /// ([`CacheBuilder::near_cache`](crate::CacheBuilder::near_cache)), without asking
    /// Redis. Also counted in [`hits`](Self::hits).
    pub near_hits: u64,
}

impl Stats {
    /// `hits / (hits + misses)`, or 0 before the first call.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }

    fn add(&mut self, other: &Stats) {
        let mut other = *other;
        for count in Count::ALL {
            *count.field(self) += *count.field(&mut other);
        }
    }
}

/// Where each [`Count`] shows in [`Stats`].
trait CountField {
    /// The field of [`Stats`] that shows this count.
    fn field(self, stats: &mut Stats) -> &mut u64;
}

impl CountField for Count {
    fn field(self, stats: &mut Stats) -> &mut u64 {
        match self {
            Count::Hits => &mut stats.hits,
            Count::Misses => &mut stats.misses,
            Count::Loads => &mut stats.loads,
            Count::Coalesced => &mut stats.coalesced,
            Count::Errors => &mut stats.errors,
            Count::Invalidated => &mut stats.invalidated,
            Count::PatternScans => &mut stats.pattern_scans,
            Count::Stale => &mut stats.stale,
            Count::Refreshes => &mut stats.refreshes,
            Count::BackgroundFailures => &mut stats.background_failures,
            Count::RateLimited => &mut stats.rate_limited,
            Count::RateAllowed => &mut stats.rate_allowed,
            Count::NearHits => &mut stats.near_hits,
        }
    }
}

/// Upper bounds, in seconds, of the load-duration histogram buckets.
pub(crate) const LOAD_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Upper bounds of the `cache_batch_size` histogram buckets: elements per batch call
/// (`#[cached_batch]`, `get_or_load_many`, `get_many`), after deduplication.
pub(crate) const BATCH_BUCKETS: [f64; 10] =
    [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// How many ways the per-hit counts are split ([`HitStripe`]).
const HIT_STRIPES: usize = 8;

/// The per-hit counts of the threads whose [`hit_stripe`] this is, alone on their cache
/// line (two, for the adjacent-line prefetcher): a hot function hit on every core at once
/// would otherwise have each hit wait for the line holding its count to come from the core
/// that wrote it last, the way `LongAdder` splits a contended sum.
#[derive(Default)]
#[repr(align(128))]
struct HitStripe {
    hits: AtomicU64,
    near_hits: AtomicU64,
}

/// This thread's stripe of the per-hit counts: threads take stripes in turn as they first
/// count a hit.
fn hit_stripe() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    STRIPE
        .try_with(|stripe| {
            if stripe.get() == usize::MAX {
                stripe.set(NEXT.fetch_add(1, Relaxed) % HIT_STRIPES);
            }
            stripe.get()
        })
        .unwrap_or(0)
}

/// The live counters of one function name. Every update is a relaxed atomic add (plus, with
/// the `metrics` feature, the matching facade handle's): no lock, no allocation.
#[derive(Default)]
pub(crate) struct Counters {
    /// Hits and near hits, split by thread (read as their sums, with `counts`' own).
    hit_stripes: [HitStripe; HIT_STRIPES],
    /// The function name (the `cache.function` field of spans).
    name: Box<str>,
    /// Handles into the `metrics` facade, so users' exporters see the same counts.
    #[cfg(feature = "metrics")]
    exported: Option<Exported>,
    /// By [`Count`].
    counts: [AtomicU64; Count::ALL.len()],
    errors_by_kind: [AtomicU64; ErrorKind::ALL.len()],
    /// Per bucket (non-cumulative), plus one for `+Inf`.
    load_buckets: [AtomicU64; LOAD_BUCKETS.len() + 1],
    load_nanos: AtomicU64,
    /// Whether this function's last plain lookup on a shared store missed: the next one then
    /// takes its fill ticket in the same round trip (see `read.rs`). Written only when it
    /// changes, so a run of hits never writes it.
    last_missed: AtomicBool,
    /// Batch sizes: per bucket of [`BATCH_BUCKETS`] (non-cumulative), plus one for `+Inf`.
    batch_buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
    /// The sum of batch sizes.
    batch_elements: AtomicU64,
}

impl Counters {
    /// Counters for `name`, also reported through the `metrics` facade when that feature is on.
    fn named(name: &str) -> Counters {
        Counters {
            name: name.into(),
            #[cfg(feature = "metrics")]
            exported: Some(Exported::new(name)),
            ..Counters::default()
        }
    }

    /// The function name these counters count.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Adds `by` to `count`, and to its facade counter when it has one.
    #[inline]
    fn bump(&self, count: Count, by: u64) {
        self.counts[count as usize].fetch_add(by, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            exported.counts[count as usize].increment(by);
        }
    }

    /// The current value of `count`. Hits include near hits, which are counted once, as
    /// near hits (see [`Counters::near_hit`]).
    pub(crate) fn count(&self, count: Count) -> u64 {
        let own = |count: Count| self.counts[count as usize].load(Relaxed);
        let striped = |of: fn(&HitStripe) -> &AtomicU64| -> u64 {
            self.hit_stripes.iter().map(|stripe| of(stripe).load(Relaxed)).sum()
        };
        let near_hits = || own(Count::NearHits) + striped(|stripe| &stripe.near_hits);
        match count {
            Count::Hits => own(Count::Hits) + striped(|stripe| &stripe.hits) + near_hits(),
            Count::NearHits => near_hits(),
            _ => own(count),
        }
    }

    /// A hit: one relaxed add on this thread's stripe.
    #[inline]
    pub(crate) fn hit(&self) {
        self.hit_stripes[hit_stripe()].hits.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            exported.counts[Count::Hits as usize].increment(1);
        }
    }
    /// Whether the last plain lookup missed (see [`Counters::looked_up`]).
    #[inline]
    pub(crate) fn last_missed(&self) -> bool {
        self.last_missed.load(Relaxed)
    }
    /// Records whether a plain lookup missed; the shared line is written only on a change.
    #[inline]
    pub(crate) fn looked_up(&self, missed: bool) {
        if self.last_missed.load(Relaxed) != missed {
            self.last_missed.store(missed, Relaxed);
        }
    }
    /// A hit served by the near cache, which is also a hit: one atomic add (on the hottest
    /// path, a second one on a line every worker writes cost as much as the map lookup);
    /// [`Counters::count`] adds near hits into hits.
    #[inline]
    pub(crate) fn near_hit(&self) {
        self.hit_stripes[hit_stripe()].near_hits.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            exported.counts[Count::Hits as usize].increment(1);
            exported.counts[Count::NearHits as usize].increment(1);
        }
    }
    pub(crate) fn miss(&self) {
        self.bump(Count::Misses, 1);
    }
    pub(crate) fn coalesced(&self) {
        self.bump(Count::Coalesced, 1);
    }
    pub(crate) fn error(&self, kind: ErrorKind) {
        // The total has no family of its own: the facade sees errors by kind.
        self.counts[Count::Errors as usize].fetch_add(1, Relaxed);
        self.errors_by_kind[kind as usize].fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            exported.errors[kind as usize].increment(1);
        }
    }

    /// Errors by kind, in [`ErrorKind::ALL`] order.
    pub(crate) fn errors_by_kind(&self) -> [u64; ErrorKind::ALL.len()] {
        std::array::from_fn(|i| self.errors_by_kind[i].load(Relaxed))
    }
    pub(crate) fn invalidated(&self, keys: u64) {
        self.bump(Count::Invalidated, keys);
    }
    pub(crate) fn stale(&self) {
        self.bump(Count::Stale, 1);
    }
    pub(crate) fn refresh(&self) {
        self.bump(Count::Refreshes, 1);
    }
    pub(crate) fn background_failure(&self) {
        self.bump(Count::BackgroundFailures, 1);
    }
    pub(crate) fn pattern_scan(&self) {
        self.bump(Count::PatternScans, 1);
    }
    pub(crate) fn rate_limited(&self) {
        self.bump(Count::RateLimited, 1);
    }
    pub(crate) fn rate_allowed(&self) {
        self.bump(Count::RateAllowed, 1);
    }
    pub(crate) fn load(&self, took: Duration) {
        self.bump(Count::Loads, 1);
        tracing::debug!(?took, "cache load: body ran to fill the cache");
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            exported.load_seconds.record(took.as_secs_f64());
        }
        let secs = took.as_secs_f64();
        let bucket = LOAD_BUCKETS.iter().position(|&le| secs <= le).unwrap_or(LOAD_BUCKETS.len());
        self.load_buckets[bucket].fetch_add(1, Relaxed);
        self.load_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A batch body ran for `elements` missed elements in `took`: `elements` loads (loads
    /// count per element), one observation of the load duration.
    pub(crate) fn load_batch(&self, elements: u64, took: Duration) {
        if elements == 0 {
            return;
        }
        self.bump(Count::Loads, elements - 1);
        self.load(took);
    }

    /// A batch call asked for `elements` distinct elements (the `cache_batch_size` histogram).
    pub(crate) fn batch(&self, elements: usize) {
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            exported.batch_size.record(elements as f64);
        }
        let size = elements as f64;
        let bucket = BATCH_BUCKETS.iter().position(|&le| size <= le).unwrap_or(BATCH_BUCKETS.len());
        self.batch_buckets[bucket].fetch_add(1, Relaxed);
        self.batch_elements.fetch_add(u64::try_from(elements).unwrap_or(u64::MAX), Relaxed);
    }

    /// Cumulative batch-size bucket counts (Prometheus `le` semantics) and the sum of sizes.
    pub(crate) fn batch_histogram(&self) -> ([u64; BATCH_BUCKETS.len() + 1], u64) {
        let mut cumulative = [0; BATCH_BUCKETS.len() + 1];
        let mut running = 0;
        for (slot, bucket) in cumulative.iter_mut().zip(&self.batch_buckets) {
            running += bucket.load(Relaxed);
            *slot = running;
        }
        (cumulative, self.batch_elements.load(Relaxed))
    }

    /// The mean time a body took to load (zero before the first load): the δ of XFetch
    /// (`#[cached(early)]`).
    pub(crate) fn mean_load(&self) -> Duration {
        let loads = self.count(Count::Loads);
        if loads == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.load_nanos.load(Relaxed) / loads)
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let mut stats = Stats::default();
        for count in Count::ALL {
            *count.field(&mut stats) = self.count(count);
        }
        stats
    }

    /// Cumulative bucket counts (Prometheus `le` semantics) and the sum of durations.
    pub(crate) fn load_histogram(&self) -> ([u64; LOAD_BUCKETS.len() + 1], f64) {
        let mut cumulative = [0; LOAD_BUCKETS.len() + 1];
        let mut running = 0;
        for (slot, bucket) in cumulative.iter_mut().zip(&self.load_buckets) {
            running += bucket.load(Relaxed);
            *slot = running;
        }
        (cumulative, self.load_nanos.load(Relaxed) as f64 / 1e9)
    }
}

/// The same counts, registered with the `metrics` facade as
/// [`FAMILIES`](crate::metric_families::FAMILIES) says: every per-function family, under its
/// name and labels. Counts without a family get a no-op handle.
#[cfg(feature = "metrics")]
struct Exported {
    /// By [`Count`].
    counts: [metrics::Counter; Count::ALL.len()],
    /// By [`ErrorKind`].
    errors: [metrics::Counter; ErrorKind::ALL.len()],
    load_seconds: metrics::Histogram,
    batch_size: metrics::Histogram,
}

#[cfg(feature = "metrics")]
impl Exported {
    fn new(function: &str) -> Exported {
        use crate::metric_families::{Kind, Source, FAMILIES};

        let mut exported = Exported {
            counts: std::array::from_fn(|_| metrics::Counter::noop()),
            errors: std::array::from_fn(|_| metrics::Counter::noop()),
            load_seconds: metrics::Histogram::noop(),
            batch_size: metrics::Histogram::noop(),
        };
        for family in FAMILIES {
            let name = family.name;
            let function = function.to_owned();
            match family.source {
                Source::Count(count) => {
                    exported.counts[count as usize] =
                        metrics::counter!(name, "function" => function);
                }
                Source::ErrorsByKind => {
                    exported.errors = ErrorKind::ALL.map(|kind| {
                        metrics::counter!(name, "function" => function.clone(), "kind" => kind.as_str())
                    });
                }
                Source::LoadDuration => {
                    exported.load_seconds = metrics::histogram!(name, "function" => function);
                }
                Source::BatchSize => {
                    exported.batch_size = metrics::histogram!(name, "function" => function);
                }
                // Not a function's: no counter of this function feeds it.
                Source::PerCache(_) => continue,
            }
            match family.kind {
                Kind::Counter => metrics::describe_counter!(name, family.help),
                Kind::Gauge => metrics::describe_gauge!(name, family.help),
                Kind::Histogram => metrics::describe_histogram!(name, family.help),
            }
        }
        exported
    }
}

/// Counters by function name. Totals are summed when asked for, so a call touches one set
/// of counters only.
#[derive(Default)]
pub(crate) struct StatsRegistry {
    by_name: RwLock<HashMap<Box<str>, Arc<Counters>>>,
}

impl StatsRegistry {
    /// The counters of `name`, created on first use.
    pub(crate) fn counters(&self, name: &str) -> Arc<Counters> {
        if let Some(found) = self.by_name.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Arc::clone(found);
        }
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(name.into()).or_insert_with(|| Arc::new(Counters::named(name))))
    }

    pub(crate) fn total(&self) -> Stats {
        let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        map.values().fold(Stats::default(), |mut total, counters| {
            total.add(&counters.snapshot());
            total
        })
    }

    pub(crate) fn of(&self, name: &str) -> Stats {
        let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        map.get(name).map(|c| c.snapshot()).unwrap_or_default()
    }

    /// Every function's counters, sorted by name (stable output for metrics).
    pub(crate) fn all(&self) -> Vec<(Box<str>, Arc<Counters>)> {
        let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// One annotated function's counters in the cache it first ran with, kept in the function's
/// `static`, so a call skips the registry's lock and hash lookup. Calls with another cache
/// (a function whose `cache = self.cache` differs per instance) use the registry.
#[doc(hidden)]
pub struct CountersSlot(OnceLock<(u64, Arc<Counters>)>);

impl CountersSlot {
    #[doc(hidden)]
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        CountersSlot(OnceLock::new())
    }

    /// The counters of `name` in the cache identified by `cache_id`.
    pub(crate) fn get<'a>(
        &'a self,
        cache_id: u64,
        registry: &StatsRegistry,
        name: &str,
    ) -> CountersRef<'a> {
        let (id, counters) = self.0.get_or_init(|| (cache_id, registry.counters(name)));
        if *id == cache_id {
            CountersRef::Slot(counters)
        } else {
            CountersRef::Owned(registry.counters(name))
        }
    }
}

/// Counters borrowed from a [`CountersSlot`] or shared from the registry.
pub(crate) enum CountersRef<'a> {
    Slot(&'a Arc<Counters>),
    Owned(Arc<Counters>),
}

impl Deref for CountersRef<'_> {
    type Target = Arc<Counters>;
    fn deref(&self) -> &Arc<Counters> {
        match self {
            CountersRef::Slot(counters) => counters,
            CountersRef::Owned(counters) => counters,
        }
    }
}

/// Every function's counters and the totals, as the admin `/cache/stats` route shows them
/// (see [`Cache::stats_report`](crate::Cache::stats_report)).
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct StatsReport {
    /// Totals over every function.
    pub total: Stats,
    /// `hits / (hits + misses)` over every function.
    pub hit_rate: f64,
    /// Per function name, sorted.
    pub functions: std::collections::BTreeMap<String, Stats>,
}

impl StatsRegistry {
    pub(crate) fn report(&self) -> StatsReport {
        let functions: std::collections::BTreeMap<String, Stats> = self
            .all()
            .into_iter()
            .map(|(name, counters)| (name.into_string(), counters.snapshot()))
            .collect();
        let total = functions.values().fold(Stats::default(), |mut total, stats| {
            total.add(stats);
            total
        });
        StatsReport { total, hit_rate: total.hit_rate(), functions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_from_many_threads_sum_exactly() {
        let counters = Arc::new(Counters::named("f"));
        let threads: Vec<_> = (0..HIT_STRIPES + 3)
            .map(|_| {
                let counters = Arc::clone(&counters);
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        counters.hit();
                        counters.near_hit();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|thread| thread.join().unwrap());
        let threads = (HIT_STRIPES + 3) as u64;
        assert_eq!(counters.count(Count::NearHits), threads * 1_000);
        assert_eq!(counters.count(Count::Hits), threads * 2_000, "near hits are hits");
        let used = counters.hit_stripes.iter().filter(|s| s.hits.load(Relaxed) > 0).count();
        assert!(used > 1, "threads count on stripes of their own");
    }

    /// Bumps every count by a different amount.
    fn busy_counters(counters: &Counters) {
        counters.hit();
        counters.hit();
        counters.miss();
        counters.coalesced();
        counters.coalesced();
        counters.coalesced();
        counters.error(ErrorKind::Timeout);
        counters.error(ErrorKind::Timeout);
        counters.error(ErrorKind::Decode);
        counters.invalidated(7);
        counters.pattern_scan();
        counters.stale();
        counters.stale();
        counters.refresh();
        counters.background_failure();
        counters.background_failure();
        counters.rate_limited();
        counters.rate_limited();
        counters.rate_limited();
        counters.rate_allowed();
        counters.near_hit();
        counters.load(Duration::from_millis(3));
        counters.load(Duration::from_secs(20));
        counters.batch(3);
    }

    #[test]
    fn counts_are_indexed_in_declaration_order() {
        for (i, count) in Count::ALL.into_iter().enumerate() {
            assert_eq!(count as usize, i, "{count:?}");
        }
    }

    #[test]
    fn each_count_fills_its_own_field() {
        let counters = Counters::default();
        busy_counters(&counters);
        let expected = Stats {
            // Two hits and a near hit, which is also a hit.
            hits: 3,
            misses: 1,
            loads: 2,
            coalesced: 3,
            errors: 3,
            invalidated: 7,
            pattern_scans: 1,
            stale: 2,
            refreshes: 1,
            background_failures: 2,
            rate_limited: 3,
            rate_allowed: 1,
            near_hits: 1,
        };
        assert_eq!(counters.snapshot(), expected);
        let mut twice = expected;
        twice.add(&expected);
        assert_eq!(twice.hits, 6);
        assert_eq!(twice.invalidated, 14);
        assert_eq!(twice.refreshes, 2);
        assert_eq!(twice.rate_limited, 6);
    }

    /// Every per-function family of `FAMILIES` reaches the `metrics` facade under its name,
    /// labels and help text, with the same counts; nothing else does.
    #[cfg(feature = "metrics")]
    #[test]
    fn the_facade_sees_every_per_function_family() {
        use crate::metric_families::{Kind, Source, FAMILIES};
        use facade::TestRecorder;

        let recorder = TestRecorder::default();
        let counters = metrics::with_local_recorder(&recorder, || Counters::named("get_vehicle"));
        busy_counters(&counters);
        let function = ("function", "get_vehicle");
        let mut checked = 0;
        for family in FAMILIES {
            let name = family.name;
            match family.source {
                Source::Count(count) => {
                    assert_eq!(family.kind, Kind::Counter);
                    let value = recorder.value(Kind::Counter, name, &[function]);
                    assert_eq!(value, Some(counters.count(count)), "{name}");
                    assert_ne!(value, Some(0), "{name}: the test bumps every count");
                }
                Source::ErrorsByKind => {
                    for (kind, count) in ErrorKind::ALL.iter().zip(counters.errors_by_kind()) {
                        let labels = [function, ("kind", kind.as_str())];
                        let value = recorder.value(Kind::Counter, name, &labels);
                        assert_eq!(value, Some(count), "{name} {kind:?}");
                    }
                }
                Source::LoadDuration => {
                    let records = recorder.value(Kind::Histogram, name, &[function]);
                    assert_eq!(records, Some(counters.count(Count::Loads)), "{name}");
                }
                Source::BatchSize => {
                    let records = recorder.value(Kind::Histogram, name, &[function]);
                    let batches = counters.batch_histogram().0[BATCH_BUCKETS.len()];
                    assert_eq!(records, Some(batches), "{name}");
                }
                // Not fed by a function's counters.
                Source::PerCache(_) => continue,
            }
            assert_eq!(recorder.help(family.kind, name).as_deref(), Some(family.help), "{name}");
            checked += 1;
        }
        let per_cache =
            FAMILIES.iter().filter(|family| matches!(family.source, Source::PerCache(_))).count();
        assert_eq!(checked, FAMILIES.len() - per_cache, "all but the per-cache gauges");
        for name in recorder.names() {
            assert!(FAMILIES.iter().any(|family| family.name == name), "{name} is not in FAMILIES");
        }
    }

    #[cfg(feature = "metrics")]
    mod facade {
        use std::sync::atomic::AtomicU64;
        use std::sync::{Arc, Mutex};

        use metrics::{
            Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit,
        };

        use crate::metric_families::Kind;

        type Labels = Vec<(String, String)>;
        /// A registered metric: its kind, name, labels and count.
        type Registered = (Kind, String, Labels, Arc<AtomicU64>);

        /// Records what is registered and described, and counts what is reported.
        #[derive(Default)]
        pub(super) struct TestRecorder {
            registered: Mutex<Vec<Registered>>,
            described: Mutex<Vec<(Kind, String, String)>>,
        }

        /// Counts the values a histogram records.
        struct Records(Arc<AtomicU64>);

        impl HistogramFn for Records {
            fn record(&self, _: f64) {
                self.0.fetch_add(1, super::Relaxed);
            }
        }

        impl TestRecorder {
            fn register(&self, kind: Kind, key: &Key) -> Arc<AtomicU64> {
                let labels = key.labels().map(|l| (l.key().into(), l.value().into())).collect();
                let value = Arc::new(AtomicU64::new(0));
                let entry = (kind, key.name().to_owned(), labels, Arc::clone(&value));
                self.registered.lock().unwrap().push(entry);
                value
            }

            fn describe(&self, kind: Kind, key: KeyName, help: SharedString) {
                let entry = (kind, key.as_str().to_owned(), help.into_owned());
                self.described.lock().unwrap().push(entry);
            }

            /// The count of the one registered metric with exactly these name and labels.
            pub(super) fn value(
                &self,
                kind: Kind,
                name: &str,
                labels: &[(&str, &str)],
            ) -> Option<u64> {
                let registered = self.registered.lock().unwrap();
                let mut matching = registered.iter().filter(|(k, n, l, _)| {
                    *k == kind
                        && n == name
                        && l.len() == labels.len()
                        && l.iter().zip(labels).all(|((a, b), (c, d))| a == c && b == d)
                });
                let found = matching.next()?;
                assert!(matching.next().is_none(), "{name} {labels:?} registered twice");
                Some(found.3.load(super::Relaxed))
            }

            pub(super) fn help(&self, kind: Kind, name: &str) -> Option<String> {
                let described = self.described.lock().unwrap();
                described.iter().find(|(k, n, _)| *k == kind && n == name).map(|d| d.2.clone())
            }

            pub(super) fn names(&self) -> Vec<String> {
                let registered = self.registered.lock().unwrap();
                let described = self.described.lock().unwrap();
                registered
                    .iter()
                    .map(|r| r.1.clone())
                    .chain(described.iter().map(|d| d.1.clone()))
                    .collect()
            }
        }

        impl metrics::Recorder for TestRecorder {
            fn describe_counter(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
                self.describe(Kind::Counter, key, help);
            }
            fn describe_gauge(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
                self.describe(Kind::Gauge, key, help);
            }
            fn describe_histogram(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
                self.describe(Kind::Histogram, key, help);
            }
            fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
                Counter::from_arc(self.register(Kind::Counter, key))
            }
            fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
                self.register(Kind::Gauge, key);
                Gauge::noop()
            }
            fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
                Histogram::from_arc(Arc::new(Records(self.register(Kind::Histogram, key))))
            }
        }
    }
}
