//! [`Count`]: the per-function events the runtime counts. Shared by the counters
//! (`stats.rs`) and the table of metric families that exports them
//! (`metric_families.rs`), so neither names the other for it.

/// One count kept per function name: an index into [`Counters`](crate::stats::Counters)' atomics, and a field of
/// [`Stats`](crate::Stats). Which counts are exported, and how, is
/// [`FAMILIES`](crate::metric_families::FAMILIES)' business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Hits,
    Misses,
    Loads,
    Coalesced,
    Errors,
    Invalidated,
    PatternScans,
    Stale,
    Refreshes,
    BackgroundFailures,
    RateLimited,
    RateAllowed,
    NearHits,
}

impl Count {
    /// Every count, in declaration order (`Count::ALL[c as usize] == c`).
    pub(crate) const ALL: [Count; 13] = [
        Count::Hits,
        Count::Misses,
        Count::Loads,
        Count::Coalesced,
        Count::Errors,
        Count::Invalidated,
        Count::PatternScans,
        Count::Stale,
        Count::Refreshes,
        Count::BackgroundFailures,
        Count::RateLimited,
        Count::RateAllowed,
        Count::NearHits,
    ];
}
