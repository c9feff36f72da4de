//! The Prometheus text exposition of a cache's counters.

use std::fmt::Write as _;

use crate::stats::{StatsRegistry, LOAD_BUCKETS};
use crate::{BreakerState, ErrorKind, Stats};

/// A counter: its name, help text, and the field of [`Stats`] it shows.
type CounterMetric = (&'static str, &'static str, fn(&Stats) -> u64);

pub(crate) fn render(stats: &StatsRegistry, breaker: BreakerState) -> String {
    let all = stats.all();
    let mut out = String::with_capacity(256 + all.len() * 512);
    let counters: [CounterMetric; 7] = [
        ("cache_hits_total", "Calls answered from the cache.", |s| s.hits),
        ("cache_misses_total", "Calls that found nothing in the cache.", |s| s.misses),
        ("cache_loads_total", "Times a body ran to fill the cache.", |s| s.loads),
        ("cache_coalesced_total", "Misses answered by another caller's concurrent load.", |s| {
            s.coalesced
        }),
        ("cache_stale_total", "Expired values served because the body failed.", |s| s.stale),
        ("cache_refreshes_total", "Values recomputed before they expired.", |s| s.refreshes),
        ("cache_invalidated_keys_total", "Keys removed by invalidation.", |s| s.invalidated),
    ];
    for (metric, help, field) in counters {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for (name, counters) in &all {
            let value = field(&counters.snapshot());
            let _ = writeln!(out, "{metric}{{function=\"{}\"}} {value}", escape(name));
        }
    }
    let metric = "cache_errors_total";
    let _ = writeln!(out, "# HELP {metric} Cache failures by kind (the call still returned its body's result).\n# TYPE {metric} counter");
    for (name, counters) in &all {
        let name = escape(name);
        for (kind, count) in ErrorKind::ALL.iter().zip(counters.errors_by_kind()) {
            if count > 0 || *kind == ErrorKind::Connection {
                let _ = writeln!(
                    out,
                    "{metric}{{function=\"{name}\",kind=\"{}\"}} {count}",
                    kind.as_str()
                );
            }
        }
    }
    let metric = "cache_load_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {metric} Time spent running bodies to fill the cache.\n# TYPE {metric} histogram"
    );
    for (name, counters) in &all {
        let name = escape(name);
        let (cumulative, sum) = counters.load_histogram();
        for (le, count) in LOAD_BUCKETS.iter().zip(&cumulative) {
            let _ = writeln!(out, "{metric}_bucket{{function=\"{name}\",le=\"{le}\"}} {count}");
        }
        let count = cumulative[LOAD_BUCKETS.len()];
        let _ = writeln!(out, "{metric}_bucket{{function=\"{name}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{metric}_sum{{function=\"{name}\"}} {sum}");
        let _ = writeln!(out, "{metric}_count{{function=\"{name}\"}} {count}");
    }
    let metric = "cache_breaker_state";
    let _ = writeln!(
        out,
        "# HELP {metric} Circuit breaker in front of Redis: 1 for the current state.\n# TYPE {metric} gauge"
    );
    for (state, name) in [
        (BreakerState::Closed, "closed"),
        (BreakerState::Open, "open"),
        (BreakerState::HalfOpen, "half_open"),
    ] {
        let _ = writeln!(out, "{metric}{{state=\"{name}\"}} {}", u8::from(state == breaker));
    }
    out
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
