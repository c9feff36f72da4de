//! Redis-style glob patterns (`*`, `?`, `[abc]`, `[^a-z]`, `\x`): validation, matching (for
//! the memory store), and the literal prefix that selects an invalidation index.

use crate::error::{Error, Result};

/// Whether `text` uses any glob syntax (otherwise it names one key).
pub(crate) fn has_glob(text: &str) -> bool {
    text.chars().any(|c| matches!(c, '*' | '?' | '[' | '\\'))
}

/// Checks a pattern given to [`Cache::invalidate_pattern`](crate::Cache::invalidate_pattern).
pub(crate) fn validate(pattern: &str) -> Result<()> {
    let invalid =
        |reason: &'static str| Err(Error::InvalidPattern { pattern: pattern.to_owned(), reason });
    if pattern.is_empty() {
        return invalid("a pattern must not be empty");
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("a pattern must not contain whitespace or control characters");
    }
    if pattern.contains(crate::key::RESERVED) {
        return invalid(
            "a pattern must not contain `#`: it is reserved for the cache's own keys (indexes, locks, fencing counters and load leases)",
        );
    }
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return invalid("a pattern must not end with `\\`"),
            '[' => loop {
                match chars.next() {
                    None => return invalid("unclosed `[` in pattern"),
                    Some('\\') if chars.next().is_none() => {
                        return invalid("unclosed `[` in pattern")
                    }
                    Some(']') => break,
                    Some(_) => {}
                }
            },
            ']' => return invalid("unmatched `]` in pattern"),
            _ => {}
        }
    }
    Ok(())
}

/// The text before the first glob character: every matching key starts with it.
pub(crate) fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
    &pattern[..end]
}

/// Whether `text` matches `pattern`, with Redis's semantics.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    matches_from(&pattern, &text)
}

fn matches_from(pattern: &[char], text: &[char]) -> bool {
    // Iterative with one backtrack point for the last `*`: linear in practice.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                '?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_matches(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    }
                }
                '\\' if p + 1 < pattern.len() && pattern[p + 1] == text[t] => {
                    p += 2;
                    t += 1;
                    continue;
                }
                '\\' if p + 1 < pattern.len() => {}
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_t)) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `pattern[open] == '['`; returns whether it
/// matched and the index after the closing `]`.
fn class_matches(pattern: &[char], open: usize, c: char) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negated = pattern.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != ']' {
        let mut low = pattern[i];
        if low == '\\' && i + 1 < pattern.len() {
            i += 1;
            low = pattern[i];
        }
        if pattern.get(i + 1) == Some(&'-') && pattern.get(i + 2).is_some_and(|&h| h != ']') {
            let high = pattern[i + 2];
            let (low, high) = if low <= high { (low, high) } else { (high, low) };
            matched |= (low..=high).contains(&c);
            i += 3;
        } else {
            matched |= low == c;
            i += 1;
        }
    }
    (i < pattern.len()).then_some((matched != negated, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_redis() {
        assert!(matches("homepage:*", "homepage:featured"));
        assert!(matches("homepage:*", "homepage:"));
        assert!(!matches("homepage:*", "homepag:x"));
        assert!(matches("dealer:*:vehicles", "dealer:7:vehicles"));
        assert!(!matches("dealer:*:vehicles", "dealer:7:vehicles:2"));
        assert!(matches("v?:[0-9]", "v1:5"));
        assert!(!matches("v?:[^0-9]", "v1:5"));
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        assert!(matches("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!matches("*a*b*c*", "xxaxxcxxbxx"));
    }

    #[test]
    fn validates_patterns() {
        assert!(validate("homepage:*").is_ok());
        assert!(validate("v:[abc]").is_ok());
        assert!(validate("__idx:*").is_ok());
        for bad in ["", "a b", "v:[abc", "v:abc]", "v\\", "#idx:*", "a#*", "*#*", "v:[#]"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn literal_prefix_stops_at_the_first_glob() {
        assert_eq!(literal_prefix("dealer:7:*"), "dealer:7:");
        assert_eq!(literal_prefix("*:x"), "");
        assert_eq!(literal_prefix("plain"), "plain");
    }
}
