//! Tags: a value is stored with the tags its attribute renders (`tags = ["make:<f.make>"]`),
//! and `Cache::invalidate_tag` removes every key stored with one of them.
//!
//! A tag is one more kind of write scope ([`Scope::Tag`](crate::scope::Scope::Tag)); what
//! it covers is kept by the store, in one set per tag beside the invalidation indexes:
//!
//! - **memory**: the tag's keys among the prefix index's levels, under the reserved name
//!   `#tag:<tag>` (no key contains `#`), each with the write number of the value or pending
//!   marker that joined, removed when that entry goes (expired, evicted, removed).
//! - **Redis**: a sorted set `<prefix>#tag:<tag>` per tag, members the keys, scored by when
//!   the key expires at the latest, kept up by the same scripts as the indexes (see
//!   `store/redis/tags.rs`).
//!
//! Reads never look at tags: the hit path stays one `GET`.

use crate::error::{Error, Result};

/// The namespace of tag sets after the reserved `#`: `okla:#tag:make:ford` on Redis,
/// `#tag:make:ford` among the memory store's index levels.
pub(crate) const TAG_NAMESPACE: &str = "tag:";

/// The memory store's name for the set of `tag` among its index levels.
pub(crate) fn tag_level(tag: &str) -> String {
    format!("{}{TAG_NAMESPACE}{tag}", cache_keys::RESERVED)
}

/// Checks a rendered tag given to [`Cache::invalidate_tag`](crate::Cache::invalidate_tag):
/// the rules of a rendered key, no glob characters (a tag is never a pattern: a value `*`
/// renders as `%2A`), and at most `max` bytes.
pub(crate) fn validate_tag(tag: &str, max: usize) -> Result<()> {
    let invalid = |reason| Err(Error::InvalidTag { tag: tag.to_owned(), reason });
    if let Err(reason) = cache_keys::check_key(tag) {
        return invalid(reason);
    }
    if crate::glob::has_glob(tag) {
        return invalid("a tag is not a pattern: it must not contain glob characters (`*`, `?`, `[`, `]`); placeholder values render them percent-encoded (`*` is `%2A`)");
    }
    if tag.len() > max {
        return invalid(crate::key::TOO_LONG);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_tags_pass_and_patterns_do_not() {
        assert!(validate_tag("make:ford", 1024).is_ok());
        assert!(validate_tag("make:a%3Ab", 1024).is_ok());
        assert!(validate_tag("make:%2A", 1024).is_ok());
        for bad in ["", "make:*", "a b", "make:#", "price:[1]"] {
            assert!(matches!(validate_tag(bad, 1024), Err(Error::InvalidTag { .. })), "{bad:?}");
        }
        assert!(validate_tag("tag:long", 5).is_err());
        assert_eq!(tag_level("listings"), "#tag:listings");
    }
}
