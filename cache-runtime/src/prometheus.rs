//! The Prometheus text exposition of a cache's counters: every family of
//! [`FAMILIES`], in order.

use std::fmt::Write as _;

use crate::metric_families::{CacheState, Source, FAMILIES};
use crate::stats::{StatsRegistry, BATCH_BUCKETS, LOAD_BUCKETS};
use crate::ErrorKind;

pub(crate) fn render(stats: &StatsRegistry, cache: &CacheState) -> String {
    let all = stats.all();
    let mut out = String::with_capacity(256 + all.len() * 512);
    for family in FAMILIES {
        let metric = family.name;
        let _ = writeln!(
            out,
            "# HELP {metric} {}\n# TYPE {metric} {}",
            family.help,
            family.kind.as_str()
        );
        match family.source {
            Source::Count(count) => {
                for (name, counters) in &all {
                    let value = counters.count(count);
                    let _ = writeln!(out, "{metric}{{function=\"{}\"}} {value}", escape(name));
                }
            }
            Source::ErrorsByKind => {
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
            }
            Source::LoadDuration => {
                for (name, counters) in &all {
                    let name = escape(name);
                    let (cumulative, sum) = counters.load_histogram();
                    for (le, count) in LOAD_BUCKETS.iter().zip(&cumulative) {
                        let _ = writeln!(
                            out,
                            "{metric}_bucket{{function=\"{name}\",le=\"{le}\"}} {count}"
                        );
                    }
                    let count = cumulative[LOAD_BUCKETS.len()];
                    let _ =
                        writeln!(out, "{metric}_bucket{{function=\"{name}\",le=\"+Inf\"}} {count}");
                    let _ = writeln!(out, "{metric}_sum{{function=\"{name}\"}} {sum}");
                    let _ = writeln!(out, "{metric}_count{{function=\"{name}\"}} {count}");
                }
            }
            Source::BatchSize => {
                for (name, counters) in &all {
                    let (cumulative, sum) = counters.batch_histogram();
                    let count = cumulative[BATCH_BUCKETS.len()];
                    if count == 0 {
                        continue; // not a batch function
                    }
                    let name = escape(name);
                    for (le, count) in BATCH_BUCKETS.iter().zip(&cumulative) {
                        let _ = writeln!(
                            out,
                            "{metric}_bucket{{function=\"{name}\",le=\"{le}\"}} {count}"
                        );
                    }
                    let _ =
                        writeln!(out, "{metric}_bucket{{function=\"{name}\",le=\"+Inf\"}} {count}");
                    let _ = writeln!(out, "{metric}_sum{{function=\"{name}\"}} {sum}");
                    let _ = writeln!(out, "{metric}_count{{function=\"{name}\"}} {count}");
                }
            }
            Source::PerCache(samples) => {
                for (labels, value) in samples(cache) {
                    out.push_str(metric);
                    for (i, (label, label_value)) in labels.iter().enumerate() {
                        let open = if i == 0 { "{" } else { "," };
                        let _ = write!(out, "{open}{label}=\"{}\"", escape(label_value));
                    }
                    if !labels.is_empty() {
                        out.push('}');
                    }
                    let _ = writeln!(out, " {value}");
                }
            }
        }
    }
    out
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
