//! The one list of metric families, [`FAMILIES`]. It drives the Prometheus text
//! ([`Cache::prometheus`](crate::Cache::prometheus)) and, with the `metrics` feature, what
//! each function's counters register with the `metrics` facade; tests check that the doc of
//! `Cache::prometheus` lists every family.
//!
//! Adding a family is one entry here, plus the data that feeds it:
//!
//! - a per-function counter: a [`Stats`](crate::Stats) field and a [`Count`] (its atomic,
//!   bumped where the event happens), then `Source::Count(Count::YourCount)`;
//! - a per-cache value: a field of [`CacheState`] (read in `Cache::prometheus`), then
//!   `Source::PerCache(|cache| ...)`.
//!
//! Then add its row to the table in the doc of `Cache::prometheus` (a test fails until it
//! is there).

use crate::count::Count;
use crate::BreakerState;

/// A family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The name on the family's `# TYPE` line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The labels and value of one sample of a per-cache family.
pub(crate) type Sample = (&'static [(&'static str, &'static str)], u64);

/// What feeds a family, and so its labels.
#[derive(Clone, Copy)]
pub(crate) enum Source {
    /// Per function (label `function`): one of the function's counts, which is also a field
    /// of [`Stats`](crate::Stats).
    Count(Count),
    /// Per function and [`ErrorKind`](crate::ErrorKind) (labels `function`, `kind`).
    ErrorsByKind,
    /// Per function (labels `function`, `le`): how long loads took, in
    /// [`LOAD_BUCKETS`](crate::stats::LOAD_BUCKETS).
    LoadDuration,
    /// Per function (labels `function`, `le`): elements per batch call, in
    /// [`BATCH_BUCKETS`](crate::stats::BATCH_BUCKETS); only functions that made one.
    BatchSize,
    /// Per cache: samples read from the cache's state when the text is rendered.
    PerCache(fn(&CacheState) -> Vec<Sample>),
}

/// One metric family.
pub(crate) struct Family {
    /// The exported name (for a histogram, the base of `_bucket`, `_sum`, `_count`).
    pub(crate) name: &'static str,
    /// The `# HELP` text.
    pub(crate) help: &'static str,
    pub(crate) kind: Kind,
    pub(crate) source: Source,
}

/// The state of a whole cache that per-cache families show, read once per rendering.
pub(crate) struct CacheState {
    pub(crate) breaker: BreakerState,
    /// Invalidations waiting to be replayed (see `backlog.rs`).
    pub(crate) pending_invalidations: u64,
}

/// Every metric family, in the order of the Prometheus text.
pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "cache_hits_total",
        help: "Calls answered from the cache.",
        kind: Kind::Counter,
        source: Source::Count(Count::Hits),
    },
    Family {
        name: "cache_near_hits_total",
        help: "Hits served from process memory by the near cache (also in cache_hits_total).",
        kind: Kind::Counter,
        source: Source::Count(Count::NearHits),
    },
    Family {
        name: "cache_misses_total",
        help: "Calls that found nothing in the cache.",
        kind: Kind::Counter,
        source: Source::Count(Count::Misses),
    },
    Family {
        name: "cache_loads_total",
        help: "Times a body ran to fill the cache.",
        kind: Kind::Counter,
        source: Source::Count(Count::Loads),
    },
    Family {
        name: "cache_coalesced_total",
        help: "Misses answered by another caller's concurrent load.",
        kind: Kind::Counter,
        source: Source::Count(Count::Coalesced),
    },
    Family {
        name: "cache_stale_total",
        help: "Expired values served because the body failed or overran its timeout.",
        kind: Kind::Counter,
        source: Source::Count(Count::Stale),
    },
    Family {
        name: "cache_refreshes_total",
        help: "Values recomputed before they expired.",
        kind: Kind::Counter,
        source: Source::Count(Count::Refreshes),
    },
    Family {
        name: "cache_background_failures_total",
        help: "Bodies that failed after their caller was answered (background refresh, load past its timeout).",
        kind: Kind::Counter,
        source: Source::Count(Count::BackgroundFailures),
    },
    Family {
        name: "cache_invalidated_keys_total",
        help: "Keys removed by invalidation.",
        kind: Kind::Counter,
        source: Source::Count(Count::Invalidated),
    },
    Family {
        name: "cache_rate_limited_total",
        help: "Calls refused by a rate limit.",
        kind: Kind::Counter,
        source: Source::Count(Count::RateLimited),
    },
    Family {
        name: "cache_rate_allowed_total",
        help: "Calls a rate limit let through.",
        kind: Kind::Counter,
        source: Source::Count(Count::RateAllowed),
    },
    Family {
        name: "cache_errors_total",
        help: "Cache failures by kind (the call still returned its body's result).",
        kind: Kind::Counter,
        source: Source::ErrorsByKind,
    },
    Family {
        name: "cache_load_duration_seconds",
        help: "Time spent running bodies to fill the cache.",
        kind: Kind::Histogram,
        source: Source::LoadDuration,
    },
    Family {
        name: "cache_batch_size",
        help: "Distinct elements asked for per batch call (#[cached_batch], get_or_load_many, get_many).",
        kind: Kind::Histogram,
        source: Source::BatchSize,
    },
    Family {
        name: "cache_breaker_state",
        help: "Circuit breaker in front of Redis: 1 for the current state.",
        kind: Kind::Gauge,
        source: Source::PerCache(breaker_state),
    },
    Family {
        name: "cache_pending_invalidations",
        help: "Invalidations that could not reach Redis yet, replayed until they land.",
        kind: Kind::Gauge,
        source: Source::PerCache(|cache| vec![(&[], cache.pending_invalidations)]),
    },
];

/// One sample per breaker state: 1 for the current one, 0 for the others.
fn breaker_state(cache: &CacheState) -> Vec<Sample> {
    const STATES: [(BreakerState, &[(&str, &str)]); 3] = [
        (BreakerState::Closed, &[("state", "closed")]),
        (BreakerState::Open, &[("state", "open")]),
        (BreakerState::HalfOpen, &[("state", "half_open")]),
    ];
    STATES.iter().map(|&(state, labels)| (labels, u64::from(state == cache.breaker))).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::stats::StatsRegistry;
    use crate::ErrorKind;

    /// The doc comment of `Cache::prometheus`, without the `///`.
    fn prometheus_doc() -> Vec<&'static str> {
        let source = include_str!("cache/mod.rs");
        let lines: Vec<&str> = source.lines().collect();
        let method = lines
            .iter()
            .position(|line| line.trim_start().starts_with("pub fn prometheus("))
            .expect("Cache::prometheus in cache/mod.rs");
        let mut doc: Vec<&str> = lines[..method]
            .iter()
            .rev()
            .map(|line| line.trim_start())
            .skip_while(|line| line.starts_with("#["))
            .take_while(|line| line.starts_with("///"))
            .map(|line| line.trim_start_matches("///").trim())
            .collect();
        doc.reverse();
        doc
    }

    #[test]
    fn names_are_unique_and_kinds_match_sources() {
        let mut names = HashSet::new();
        for family in FAMILIES {
            assert!(names.insert(family.name), "{} listed twice", family.name);
            assert!(family.name.starts_with("cache_"), "{}", family.name);
            let expected = match family.source {
                Source::Count(_) | Source::ErrorsByKind => Kind::Counter,
                Source::LoadDuration | Source::BatchSize => Kind::Histogram,
                Source::PerCache(_) => continue,
            };
            assert_eq!(family.kind, expected, "{}", family.name);
        }
    }

    #[test]
    fn the_doc_of_cache_prometheus_has_a_row_per_family() {
        let doc = prometheus_doc();
        let rows: Vec<&str> = doc.iter().copied().filter(|line| line.starts_with("| `")).collect();
        for family in FAMILIES {
            let row = format!("| `{}` | {} |", family.name, family.kind.as_str());
            assert!(
                rows.iter().any(|line| line.starts_with(&row)),
                "the doc of Cache::prometheus has no row starting `{row}`:\n{}",
                doc.join("\n")
            );
        }
        assert_eq!(rows.len(), FAMILIES.len(), "a row for a family not in FAMILIES:\n{rows:#?}");
    }

    #[test]
    fn the_text_has_every_family_with_its_type_and_a_sample() {
        let stats = StatsRegistry::default();
        let counters = stats.counters("get_vehicle");
        counters.hit();
        counters.error(ErrorKind::Timeout);
        counters.load(std::time::Duration::from_millis(3));
        counters.batch(12);
        let text = crate::prometheus::render(
            &stats,
            &CacheState { breaker: BreakerState::Open, pending_invalidations: 0 },
        );
        let type_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        assert_eq!(type_lines.len(), FAMILIES.len(), "{text}");
        for (family, type_line) in FAMILIES.iter().zip(type_lines) {
            assert_eq!(type_line, format!("# TYPE {} {}", family.name, family.kind.as_str()));
            assert!(text.contains(&format!("# HELP {} {}\n", family.name, family.help)), "{text}");
            let samples = match family.kind {
                Kind::Histogram => [format!("{}_count{{", family.name), String::new()],
                // A per-cache gauge may have no labels.
                Kind::Counter | Kind::Gauge => {
                    [format!("{}{{", family.name), format!("{} ", family.name)]
                }
            };
            assert!(
                text.lines().any(|line| samples
                    .iter()
                    .any(|sample| !sample.is_empty() && line.starts_with(sample.as_str()))),
                "{samples:?}: {text}"
            );
        }
        assert!(text.contains("cache_breaker_state{state=\"open\"} 1\n"), "{text}");
        assert!(text.contains("cache_breaker_state{state=\"closed\"} 0\n"), "{text}");
        assert!(text.contains("cache_pending_invalidations 0\n"), "{text}");
    }
}
