//! Redis-style glob patterns (`*`, `?`, `[abc]`, `[^a-z]`, `\x`): validation, matching (for
//! the memory store), and the literal prefix that selects an invalidation index. The grammar
//! is [`cache_keys::glob`], which the attribute macros use too.

pub(crate) use cache_keys::glob::{has_glob, literal_prefix, matches};

use crate::error::{Error, Result};

/// Checks a pattern given to [`Cache::invalidate_pattern`](crate::Cache::invalidate_pattern).
pub(crate) fn validate(pattern: &str) -> Result<()> {
    cache_keys::glob::check_pattern(pattern)
        .map_err(|reason| Error::InvalidPattern { pattern: pattern.to_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_patterns() {
        assert!(validate("homepage:*").is_ok());
        assert!(validate("v:[abc]").is_ok());
        assert!(validate("__idx:*").is_ok());
        for bad in ["", "a b", "v:[abc", "v:abc]", "v\\", "#idx:*", "a#*", "*#*", "v:[#]"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        match validate("v:[abc") {
            Err(Error::InvalidPattern { pattern, reason }) => {
                assert_eq!((pattern.as_str(), reason), ("v:[abc", "unclosed `[` in pattern"));
            }
            other => panic!("{other:?}"),
        }
    }
}
