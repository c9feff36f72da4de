//! Invalidation indexes: how `invalidate_pattern("homepage:*")` finds its keys on Redis
//! without scanning the keyspace.
//!
//! # Design
//!
//! Every key written through the cache is recorded in up to two *index* sorted sets, named
//! after the key's first one and first two `:`-terminated prefixes: `dealer:7:vehicles` is
//! recorded in `__idx:dealer:` and `__idx:dealer:7:` (under the cache's prefix, e.g.
//! `okla:__idx:dealer:`). Each member's score is its expiry time in milliseconds.
//!
//! A pattern is served by the deepest index its literal text names: `homepage:*` reads
//! `__idx:homepage:`, `dealer:7:*` reads `__idx:dealer:7:`, `dealer:*:vehicles` reads
//! `__idx:dealer:`. The index is walked with `ZSCAN ... MATCH <pattern>`, and the matching
//! keys are `UNLINK`ed. The cost is proportional to the keys under that prefix, whatever
//! else the database holds. A pattern without a `:`-terminated literal prefix (`*:vehicles`,
//! `home*`) falls back to `SCAN MATCH` over the database, counted in
//! [`Stats::pattern_scans`](crate::Stats::pattern_scans).
//!
//! # Costs
//!
//! - A hit: unchanged, one `GET`.
//! - A write: one round trip, a `MULTI` holding the `SET` plus, per index, `ZADD`,
//!   `ZREMRANGEBYSCORE -inf <now>` (drops members whose keys have expired, so an index never
//!   grows beyond the live keys) and `PEXPIRE NX` / `PEXPIRE GT` (an index outlives its
//!   longest-lived member, and disappears when its prefix goes idle).
//! - Memory: one sorted-set member per key and index (the key's text and a score).
//!
//! Keys removed by `invalidate` stay in their indexes until they expire or a pattern
//! invalidation meets them; stale members only cost an `UNLINK` of a missing key.
//!
//! On Redis Cluster, an index lives in one slot and its keys in others: a write becomes a
//! per-node pipeline, and pattern invalidation reads one index and unlinks per slot.

use crate::glob;

/// The reserved key namespace of index sets (after the cache's prefix).
pub(crate) const INDEX_NAMESPACE: &str = "__idx:";

/// How many `:`-levels a key is indexed under.
const LEVELS: usize = 2;

/// The prefixes of `key` it is indexed under: `dealer:7:vehicles` gives `dealer:` and
/// `dealer:7:`; a key without `:` has none.
pub(crate) fn levels(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices(':')
        .take(LEVELS)
        .map(move |(at, _)| &key[..=at])
}

/// The index that holds every key matching `pattern`, if the pattern's literal text names
/// one; `None` means a scan is needed.
pub(crate) fn for_pattern(pattern: &str) -> Option<&str> {
    levels(glob::literal_prefix(pattern)).last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_indexed_under_their_first_two_levels() {
        assert_eq!(
            levels("dealer:7:vehicles").collect::<Vec<_>>(),
            ["dealer:", "dealer:7:"]
        );
        assert_eq!(
            levels("homepage:featured").collect::<Vec<_>>(),
            ["homepage:"]
        );
        assert_eq!(levels("a:b:c:d").collect::<Vec<_>>(), ["a:", "a:b:"]);
        assert_eq!(levels("config").count(), 0);
    }

    #[test]
    fn patterns_use_the_deepest_named_index() {
        assert_eq!(for_pattern("homepage:*"), Some("homepage:"));
        assert_eq!(for_pattern("dealer:7:*"), Some("dealer:7:"));
        assert_eq!(for_pattern("dealer:*:vehicles"), Some("dealer:"));
        assert_eq!(for_pattern("dealer:7:vehicles:*"), Some("dealer:7:"));
        assert_eq!(for_pattern("*:vehicles"), None);
        assert_eq!(for_pattern("home*"), None);
    }
}
