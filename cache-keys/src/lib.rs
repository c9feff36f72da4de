//! The key and glob grammar of [cache-runtime](https://docs.rs/cache-runtime), in one place.
//!
//! `cache-runtime` renders keys and matches patterns at run time; its attribute macros
//! (`cache-macros`, a proc-macro crate, which cannot depend on the runtime) check key templates
//! and patterns at compile time; `cache_runtime::check_invalidations` reads the templates again
//! to find invalidations that match no cached key. All three must agree on what a key is made
//! of, so the rules live here, in a crate both depend on (as `sqlx-macros-core` sits under
//! `sqlx-macros`):
//!
//! - **Encoding.** A placeholder value writes the bytes of `[A-Za-z0-9_.-]` as they are
//!   ([`is_plain`]) and percent-encodes every other byte ([`encode_into`]). Besides those and
//!   `%`, a value writes only [`NONE_MARK`] (`~`) and [`FIELD_SEPARATOR`] (`,`) raw, so a
//!   character outside [`in_values`] can only come from a template's own text.
//! - **[`RESERVED`]** (`#`) marks the cache's own keys (indexes, locks, ...): no key or pattern
//!   that a user writes may contain it ([`check_key`], [`glob::check_pattern`]).
//! - **[`template`]**: key templates, literal text with `<name.field>` placeholders.
//! - **[`glob`]**: Redis-style patterns (`*`, `?`, `[...]`, `\x`): tokens, validation,
//!   matching and the literal prefix.
//!
//! Depend on `cache-runtime`, not on this crate: its API follows the needs of those two crates,
//! and it is released with them at the same version.

pub mod glob;
pub mod template;

/// Marks the cache's own keys: after the cache's prefix, invalidation indexes (`#idx:`), locks
/// (`#lock:`), fencing counters (`#fence:`) and load leases (`#load:`). Values encode it
/// (`%23`), and templates, programmatic keys and patterns with a `#` are refused, so nothing a
/// user writes can address these keys.
pub const RESERVED: &str = "#";

/// What a value writes for `None`. No encoded value contains a raw `~`.
pub const NONE_MARK: char = '~';

/// What a composite value writes between its fields. No encoded value contains a raw `,`.
pub const FIELD_SEPARATOR: char = ',';

/// The escape of the percent-encoding: `%` followed by two uppercase hex digits.
pub const ESCAPE: char = '%';

/// Whether a value writes byte `b` as it is: `[A-Za-z0-9_.-]`. Every other byte is
/// percent-encoded ([`encode_into`]).
#[inline]
pub const fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Whether a rendered placeholder value can contain `c`: the plain characters, [`ESCAPE`],
/// [`NONE_MARK`] and [`FIELD_SEPARATOR`]. Any other character in a key came from the template.
#[inline]
pub fn in_values(c: char) -> bool {
    u8::try_from(c).is_ok_and(is_plain) || matches!(c, ESCAPE | NONE_MARK | FIELD_SEPARATOR)
}

/// Appends `text` to `out`, percent-encoding every byte that is not plain (`a:b*` becomes
/// `a%3Ab%2A`), so that a value cannot add a `:` level, match a glob or collide with another
/// value.
#[inline]
pub fn encode_into(out: &mut String, text: &str) {
    if text.bytes().all(is_plain) {
        out.push_str(text);
        return;
    }
    encode_slow(out, text);
}

fn encode_slow(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(text.len() + 8);
    for b in text.bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push(ESCAPE);
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
}

/// Checks a rendered key given to the programmatic API.
///
/// # Errors
///
/// Why the key is refused: it is empty, contains whitespace or a control character, or
/// contains [`RESERVED`].
pub fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("a key must not be empty");
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a key must not contain whitespace or control characters");
    }
    if key.contains(RESERVED) {
        return Err("a key must not contain `#`: it is reserved for the cache's own keys (indexes, locks, fencing counters and load leases)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(text: &str) -> String {
        let mut out = String::new();
        encode_into(&mut out, text);
        out
    }

    #[test]
    fn plain_bytes_pass_and_others_are_encoded() {
        assert_eq!(encode("abc_DEF-1.2"), "abc_DEF-1.2");
        assert_eq!(encode("a:b*"), "a%3Ab%2A");
        assert_eq!(encode("x?[y]\\%#~,"), "x%3F%5By%5D%5C%25%23%7E%2C");
        assert_eq!(encode("Zürich"), "Z%C3%BCrich");
    }

    #[test]
    fn value_characters() {
        for c in ['a', 'Z', '0', '_', '.', '-', '%', '~', ','] {
            assert!(in_values(c), "{c:?}");
        }
        for c in [':', '*', '?', '[', ']', '\\', '#', ' ', '/', 'ü', '\u{1}'] {
            assert!(!in_values(c), "{c:?}");
        }
        // Everything an encoding writes is a value character.
        assert!(encode("a:b ü~,%#\n").chars().all(in_values));
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("vehicle:42").is_ok());
        assert!(check_key("__idx:x").is_ok());
        for bad in ["", "a b", "a\u{7}", "a#b", "#idx:dealer:", "dealer:7#"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
