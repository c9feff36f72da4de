//! Invalidation indexes: how `invalidate_pattern("homepage:*")` finds its keys on Redis
//! without scanning the keyspace.
//!
//! The design and its costs are described in the crate docs (`lib.rs`, "Invalidation").

use crate::glob;

/// The namespace of index sets, after the cache's prefix and the reserved `#`
/// (`okla:#idx:dealer:`).
#[cfg(feature = "redis")]
pub(crate) const INDEX_NAMESPACE: &str = "idx:";

/// The member that marks an index as complete (it holds every live key of its level):
/// set when an index is created on a server that never evicts, or when a pattern
/// invalidation has rebuilt it with a `SCAN`. An index that Redis evicted and a write
/// re-created lacks it, so its loss is noticed instead of silently missing keys. No user
/// key contains `#`, so no key can be mistaken for it.
#[cfg(feature = "redis")]
pub(crate) const SENTINEL: &str = "#";

/// How many `:`-levels a key is indexed under.
const LEVELS: usize = 2;

/// The prefixes of `key` it is indexed under: `dealer:7:vehicles` gives `dealer:` and
/// `dealer:7:`; a key without `:` has none.
pub(crate) fn levels(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices(':').take(LEVELS).map(move |(at, _)| &key[..=at])
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
        assert_eq!(levels("dealer:7:vehicles").collect::<Vec<_>>(), ["dealer:", "dealer:7:"]);
        assert_eq!(levels("homepage:featured").collect::<Vec<_>>(), ["homepage:"]);
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
