//! Hit, miss, load and error counters, per function name and in total.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

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
    /// Expired values returned because the body failed (`stale = ...`).
    pub stale: u64,
    /// Values recomputed before they expired (`refresh = ...`).
    pub refreshes: u64,
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
        self.hits += other.hits;
        self.misses += other.misses;
        self.loads += other.loads;
        self.coalesced += other.coalesced;
        self.errors += other.errors;
        self.invalidated += other.invalidated;
        self.pattern_scans += other.pattern_scans;
        self.stale += other.stale;
        self.refreshes += other.refreshes;
    }
}

/// Upper bounds, in seconds, of the load-duration histogram buckets.
pub(crate) const LOAD_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The live counters of one function name.
#[derive(Default)]
pub(crate) struct Counters {
    /// Handles into the `metrics` facade, so users' exporters see the same counts.
    #[cfg(feature = "metrics")]
    exported: Option<Exported>,
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    coalesced: AtomicU64,
    errors: AtomicU64,
    errors_by_kind: [AtomicU64; ErrorKind::ALL.len()],
    invalidated: AtomicU64,
    pattern_scans: AtomicU64,
    stale: AtomicU64,
    refreshes: AtomicU64,
    /// Per bucket (non-cumulative), plus one for `+Inf`.
    load_buckets: [AtomicU64; LOAD_BUCKETS.len() + 1],
    load_nanos: AtomicU64,
}

impl Counters {
    /// Counters for `name`, also reported through the `metrics` facade when that feature is on.
    fn named(name: &str) -> Counters {
        #[cfg(not(feature = "metrics"))]
        let _ = name;
        Counters {
            #[cfg(feature = "metrics")]
            exported: Some(Exported::new(name)),
            ..Counters::default()
        }
    }

    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            exported.hits.increment(1);
        }
    }
    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            exported.misses.increment(1);
        }
    }
    pub(crate) fn coalesced(&self) {
        self.coalesced.fetch_add(1, Relaxed);
    }
    pub(crate) fn error(&self, kind: ErrorKind) {
        self.errors.fetch_add(1, Relaxed);
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
        self.invalidated.fetch_add(keys, Relaxed);
    }
    pub(crate) fn stale(&self) {
        self.stale.fetch_add(1, Relaxed);
    }
    pub(crate) fn refresh(&self) {
        self.refreshes.fetch_add(1, Relaxed);
    }
    pub(crate) fn pattern_scan(&self) {
        self.pattern_scans.fetch_add(1, Relaxed);
    }
    pub(crate) fn load(&self, took: Duration) {
        self.loads.fetch_add(1, Relaxed);
        tracing::debug!(?took, "cache load: body ran to fill the cache");
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.exported {
            exported.loads.increment(1);
            exported.load_seconds.record(took.as_secs_f64());
        }
        let secs = took.as_secs_f64();
        let bucket = LOAD_BUCKETS.iter().position(|&le| secs <= le).unwrap_or(LOAD_BUCKETS.len());
        self.load_buckets[bucket].fetch_add(1, Relaxed);
        self.load_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            loads: self.loads.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            errors: self.errors.load(Relaxed),
            invalidated: self.invalidated.load(Relaxed),
            pattern_scans: self.pattern_scans.load(Relaxed),
            stale: self.stale.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
        }
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

/// The same counts, registered with the `metrics` facade under the Prometheus names.
#[cfg(feature = "metrics")]
struct Exported {
    hits: metrics::Counter,
    misses: metrics::Counter,
    loads: metrics::Counter,
    errors: [metrics::Counter; ErrorKind::ALL.len()],
    load_seconds: metrics::Histogram,
}

#[cfg(feature = "metrics")]
impl Exported {
    fn new(name: &str) -> Exported {
        let function = name.to_owned();
        Exported {
            hits: metrics::counter!("cache_hits_total", "function" => function.clone()),
            misses: metrics::counter!("cache_misses_total", "function" => function.clone()),
            loads: metrics::counter!("cache_loads_total", "function" => function.clone()),
            errors: ErrorKind::ALL.map(|kind| {
                metrics::counter!("cache_errors_total", "function" => function.clone(), "kind" => kind.as_str())
            }),
            load_seconds: metrics::histogram!("cache_load_duration_seconds", "function" => function),
        }
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
    Slot(&'a Counters),
    Owned(Arc<Counters>),
}

impl Deref for CountersRef<'_> {
    type Target = Counters;
    fn deref(&self) -> &Counters {
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
