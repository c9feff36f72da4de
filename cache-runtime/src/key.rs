//! Cache keys: the [`KeyPart`] trait for placeholder values and the encoding that keeps a
//! value from injecting separators or glob characters into a key.
//!
//! A key template such as `"dealer:<dealer_id>:vehicles"` is rendered by writing its literal
//! text as it is and every placeholder value through [`KeyWriter`], which percent-encodes every
//! byte outside `[A-Za-z0-9_.-]`. So `dealer_id = "a:b*"` renders `dealer:a%3Ab%2A:vehicles`:
//! the value cannot add a `:` level, cannot match a glob, and cannot collide with another
//! value. Plain values stay readable: `vehicle:<id>` with `id = 42` is `vehicle:42`.
//!
//! Besides `[A-Za-z0-9_.-]` and `%` (from the encoding), a value writes only two characters
//! raw: `~` for `None` and `,` between the fields of a composite value
//! ([`KeyWriter::field_separator`]). So `#[cached]` accepts between two placeholders only text
//! with some other character (such as `:`), and no user key contains a `#`, which marks the
//! cache's own keys.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::rc::Rc;
use std::sync::Arc;

use cache_keys::{encode_into, is_plain, FIELD_SEPARATOR, NONE_MARK};

use crate::error::{Error, Result};

/// A value that can stand in a key placeholder such as `<id>` or `<v.dealer_id>`.
///
/// Implemented for the integer types, `bool`, `char`, `str`, `String`, `Cow<str>`,
/// `std::net::IpAddr` (and `Ipv4Addr`, `Ipv6Addr`), `Option<T>`, references, `Box`, `Rc`
/// and `Arc` of those, and (with the `uuid` feature) `uuid::Uuid`. Implement it for your own identifiers; whatever you write is encoded, so an
/// implementation cannot break the key's structure:
///
/// ```
/// use cache_runtime::{KeyPart, KeyWriter};
///
/// struct Vin(String);
///
/// impl KeyPart for Vin {
///     fn write_key_part(&self, key: &mut KeyWriter<'_>) {
///         key.push_str(&self.0.to_ascii_uppercase());
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used in a cache key",
    label = "used by a key placeholder, so it must implement `cache_runtime::KeyPart`",
    note = "derive it (`#[derive(cache_runtime::KeyPart)]`, for an enum of unit variants or a newtype), implement `cache_runtime::KeyPart` for `{Self}`, or name one of its fields in the template (`<param.field>`)",
    note = "`uuid::Uuid` implements it with cache-runtime's `uuid` feature: `cache-runtime = {{ version = \"0.1\", features = [\"uuid\"] }}`"
)]
pub trait KeyPart {
    /// Writes this value into the key being rendered.
    fn write_key_part(&self, key: &mut KeyWriter<'_>);
}

/// Writes placeholder values into a key, percent-encoding every byte outside `[A-Za-z0-9_.-]`.
pub struct KeyWriter<'a> {
    out: &'a mut String,
}

impl<'a> KeyWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut String) -> Self {
        KeyWriter { out }
    }

    /// Appends `text`, encoded.
    pub fn push_str(&mut self, text: &str) {
        encode_into(self.out, text);
    }

    /// Appends the `Display` form of `value`, encoded.
    pub fn push_display(&mut self, value: &dyn fmt::Display) {
        // Formatting into an encoding adapter avoids a temporary String.
        let _ = write!(Encoder(self.out), "{value}");
    }

    /// Appends another key part (for composite identifiers).
    pub fn push<P: KeyPart + ?Sized>(&mut self, part: &P) {
        part.write_key_part(self);
    }

    /// Appends a raw `,` between two fields of a composite value. Values never contain a
    /// raw `,` (it is encoded), so `a,b` cannot be confused with another split of the fields.
    pub fn field_separator(&mut self) {
        self.out.push(FIELD_SEPARATOR);
    }

    /// Appends text known to be made only of `[A-Za-z0-9_.-]` (digits, `true`, ...).
    fn push_plain(&mut self, text: &str) {
        debug_assert!(text.bytes().all(is_plain));
        self.out.push_str(text);
    }
}

struct Encoder<'a>(&'a mut String);

impl fmt::Write for Encoder<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        encode_into(self.0, s);
        Ok(())
    }
}

/// Writes a placeholder value; called by code that `#[cached]` generates.
#[doc(hidden)]
pub fn push_part<P: KeyPart + ?Sized>(out: &mut String, part: &P) {
    part.write_key_part(&mut KeyWriter::new(out));
}

/// The key of one `#[cached]` call, rendered by the generated code into a `String` reused
/// from this thread's previous call: a hit allocates nothing for its key. The buffer goes
/// back to the thread that drops it (a call may end on another worker than it started on)
/// when the call ends, emptied; one longer than [`KeyBuffer::KEPT_BYTES`] is freed instead.
#[doc(hidden)]
pub struct KeyBuffer(String);

thread_local! {
    /// The buffer the last `#[cached]` call on this thread gave back.
    static SPARE_KEY: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

impl KeyBuffer {
    /// The longest buffer a thread keeps: four default `max_key_bytes`.
    const KEPT_BYTES: usize = 4 * DEFAULT_MAX_KEY_BYTES;

    /// This thread's spare buffer (empty), or a new one when a call on this thread holds
    /// it (a cached function called from another one's body).
    pub fn take() -> KeyBuffer {
        KeyBuffer(SPARE_KEY.try_with(std::cell::Cell::take).unwrap_or_default())
    }
}

impl From<String> for KeyBuffer {
    /// A key rendered elsewhere (its buffer is kept for the thread when the call ends).
    fn from(key: String) -> KeyBuffer {
        KeyBuffer(key)
    }
}

impl std::ops::Deref for KeyBuffer {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl std::ops::DerefMut for KeyBuffer {
    fn deref_mut(&mut self) -> &mut String {
        &mut self.0
    }
}

impl fmt::Debug for KeyBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Drop for KeyBuffer {
    fn drop(&mut self) {
        let mut key = std::mem::take(&mut self.0);
        if key.capacity() == 0 || key.capacity() > Self::KEPT_BYTES {
            return;
        }
        key.clear();
        // Keep it unless the thread already has a spare (or is exiting).
        let _ = SPARE_KEY.try_with(|spare| {
            let held = spare.take();
            spare.set(if held.capacity() == 0 { key } else { held });
        });
    }
}

/// Marks the cache's own keys (see [`cache_keys::RESERVED`]): after the prefix, invalidation
/// indexes (`#idx:`), locks (`#lock:`), fencing counters (`#fence:`) and load leases
/// (`#load:`), e.g. `okla:#idx:dealer:`.
#[cfg(feature = "redis")]
pub(crate) const RESERVED: &str = cache_keys::RESERVED;

/// Checks a rendered key given to the programmatic API.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    cache_keys::check_key(key).map_err(|reason| Error::invalid_key(key, reason))
}

/// The default of [`CacheBuilder::max_key_bytes`](crate::CacheBuilder::max_key_bytes).
pub(crate) const DEFAULT_MAX_KEY_BYTES: usize = 1024;

/// The smallest accepted `max_key_bytes`: a hashed rate-limit key ([`bounded_rate_key`])
/// needs [`HASHED_TAIL`] bytes plus some literal head.
pub(crate) const MIN_MAX_KEY_BYTES: usize = 128;

/// The bytes a hashed rate-limit key ends with: `#` and 64 hex digits (SHA-256).
const HASHED_TAIL: usize = 1 + 64;

/// Why a key longer than `max_key_bytes` is refused by the programmatic API.
pub(crate) const TOO_LONG: &str =
    "longer than the cache's max_key_bytes (CacheBuilder::max_key_bytes, 1024 by default)";

/// Checks the length of a rendered key given to the programmatic API.
pub(crate) fn check_length(key: &str, max: usize) -> Result<()> {
    match key.len() > max {
        true => Err(Error::invalid_key(key, TOO_LONG)),
        false => Ok(()),
    }
}

/// Whether some key of at most `max` bytes may match the glob `pattern`: its shortest match
/// (every `*` empty, every `?` or `[...]` one byte) is not longer. A pattern that fails
/// this can match nothing the cache stores, so its invalidation has nothing to remove.
pub(crate) fn pattern_may_match_within(pattern: &str, max: usize) -> bool {
    use cache_keys::glob::Token;
    let Ok(tokens) = cache_keys::glob::tokenize(pattern) else { return true };
    let shortest: usize = tokens
        .iter()
        .map(|token| match token {
            Token::Literal(c) => c.len_utf8(),
            Token::AnyRun => 0,
            Token::AnyChar | Token::Class(_) | Token::Value => 1,
        })
        .sum();
    shortest <= max
}

/// A rate-limit key of at most `max` bytes: `key` itself when it fits; otherwise its first
/// bytes, `#` and the SHA-256 of the whole key in hex (`login:aaaa…#3f2a…`). No rendered key
/// contains `#`, so a hashed key never equals one that fits; two long keys share a limit
/// only if their SHA-256 collide. Rate-limit keys are never matched by patterns, so
/// hashing loses nothing there (cache keys are not hashed: see `max_key_bytes`).
pub(crate) fn bounded_rate_key(key: &str, max: usize) -> Cow<'_, str> {
    use sha2::{Digest, Sha256};
    if key.len() <= max {
        return Cow::Borrowed(key);
    }
    let mut head = max.saturating_sub(HASHED_TAIL);
    while !key.is_char_boundary(head) {
        head -= 1;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut bounded = String::with_capacity(head + HASHED_TAIL);
    bounded.push_str(&key[..head]);
    bounded.push('#');
    for byte in digest {
        let _ = write!(bounded, "{byte:02x}");
    }
    Cow::Owned(bounded)
}

// Digits and `-` are plain: no encoding pass. Written by `itoa`, not through `fmt`: an id is
// rendered on every call of a cached function, and `write!` spends about 200 instructions
// on one.
macro_rules! integer_key_parts {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            fn write_key_part(&self, key: &mut KeyWriter<'_>) {
                key.out.push_str(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}
integer_key_parts!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

impl KeyPart for bool {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_plain(if *self { "true" } else { "false" });
    }
}

impl KeyPart for char {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(self.encode_utf8(&mut [0; 4]));
    }
}

impl KeyPart for str {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(self);
    }
}

impl KeyPart for String {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(self);
    }
}

impl KeyPart for Cow<'_, str> {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(self);
    }
}

/// `None` renders as a raw `~`, which no encoded value can contain, so it differs from
/// every `Some` (including `Some("")`). `Some(v)` renders as `v` does (so `vehicle:<id>` with
/// `Some(42)` is `vehicle:42`), except that a rendering starting with `~` gets one more `~` in
/// front: nested options stay distinct (`None` is `~`, `Some(None)` is `~~`, `Some(Some(None))`
/// is `~~~`), and so does `Some` of a composite whose first field is `None`.
impl<T: KeyPart> KeyPart for Option<T> {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        match self {
            Some(value) => {
                let start = key.out.len();
                value.write_key_part(key);
                if key.out[start..].starts_with(NONE_MARK) {
                    key.out.insert(start, NONE_MARK);
                }
            }
            None => key.out.push(NONE_MARK),
        }
    }
}

macro_rules! forwarding_key_parts {
    ($($wrapper:ty),*) => {$(
        impl<T: KeyPart + ?Sized> KeyPart for $wrapper {
            fn write_key_part(&self, key: &mut KeyWriter<'_>) {
                (**self).write_key_part(key);
            }
        }
    )*};
}
forwarding_key_parts!(&T, &mut T, Box<T>, Rc<T>, Arc<T>);

#[cfg(feature = "uuid")]
impl KeyPart for uuid::Uuid {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        // Hyphenated lowercase hex: plain characters only.
        key.push_plain(self.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
    }
}

/// IP addresses, as they print (`10.0.0.7`; IPv6 in its canonical form, whose `:` are
/// encoded): what `#[rate_limit(key = "login:<ip>", ...)]` keys on.
macro_rules! display_key_parts {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            fn write_key_part(&self, key: &mut KeyWriter<'_>) {
                key.push_display(self);
            }
        }
    )*};
}
display_key_parts!(std::net::IpAddr, std::net::Ipv4Addr, std::net::Ipv6Addr);

#[cfg(test)]
mod tests {
    use super::*;

    fn render<P: KeyPart + ?Sized>(p: &P) -> String {
        let mut s = String::new();
        push_part(&mut s, p);
        s
    }

    #[test]
    fn plain_values_stay_readable() {
        assert_eq!(render(&42u64), "42");
        assert_eq!(render(&-7i32), "-7");
        assert_eq!(render("abc_DEF-1.2"), "abc_DEF-1.2");
        assert_eq!(render(&true), "true");
        assert_eq!(render(&std::net::Ipv4Addr::new(10, 0, 0, 7)), "10.0.0.7");
        assert_eq!(render(&"::1".parse::<std::net::IpAddr>().unwrap()), "%3A%3A1");
    }

    #[test]
    fn a_key_buffer_is_reused_on_its_thread() {
        let mut first = KeyBuffer::take();
        first.push_str("vehicle:");
        push_part(&mut first, &42u64);
        assert_eq!(first.as_str(), "vehicle:42");
        // Held: a nested call gets a buffer of its own.
        let nested = KeyBuffer::take();
        assert_eq!(nested.capacity(), 0);
        drop(nested);
        let address = first.as_ptr();
        drop(first);
        let again = KeyBuffer::take();
        assert!(again.is_empty(), "given back emptied");
        assert_eq!(again.as_ptr(), address, "the same allocation");
        drop(again);
        // A long key's buffer is not kept.
        let mut long = KeyBuffer::take();
        long.push_str(&"k".repeat(KeyBuffer::KEPT_BYTES + 1));
        drop(long);
        assert_eq!(KeyBuffer::take().capacity(), 0);
    }

    #[test]
    fn integers_render_as_display_prints_them() {
        macro_rules! check {
            ($($t:ty),*) => {$(
                for n in [<$t>::MIN, <$t>::MAX, 0, 1, 9, 10, 99, 100, <$t>::MAX / 10, <$t>::MIN / 10] {
                    assert_eq!(render(&n), n.to_string(), "{}", stringify!($t));
                }
            )*};
        }
        check!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);
        for n in [-1i64, -9, -10, 1_234_567_890_123, -9_876_543_210] {
            assert_eq!(render(&n), n.to_string());
        }
    }

    #[test]
    fn separators_and_globs_are_encoded() {
        assert_eq!(render("a:b"), "a%3Ab");
        assert_eq!(render("*"), "%2A");
        assert_eq!(render("x?[y]\\%"), "x%3F%5By%5D%5C%25");
        assert_eq!(render("a b\n"), "a%20b%0A");
        assert_eq!(render("{tag}"), "%7Btag%7D");
        assert_eq!(render("Zürich"), "Z%C3%BCrich");
    }

    #[test]
    fn option_none_differs_from_every_some() {
        assert_eq!(render(&None::<&str>), "~");
        assert_eq!(render(&Some("")), "");
        assert_eq!(render(&Some("~")), "%7E");
        assert_eq!(render(&Some(42u64)), "42");
    }

    #[test]
    fn nested_options_render_distinctly() {
        assert_eq!(render(&None::<Option<u32>>), "~");
        assert_eq!(render(&Some(None::<u32>)), "~~");
        assert_eq!(render(&Some(Some(7u32))), "7");
        assert_eq!(render(&None::<Option<Option<&str>>>), "~");
        assert_eq!(render(&Some(None::<Option<&str>>)), "~~");
        assert_eq!(render(&Some(Some(None::<&str>))), "~~~");
        assert_eq!(render(&Some(Some(Some("")))), "");
        assert_eq!(render(&Some(Some(Some("~")))), "%7E");

        // `Some` of a composite starting with `None` differs from `None` and from `Some`
        // of the composite's other renderings.
        struct Pair(Option<u8>, u8);
        impl KeyPart for Pair {
            fn write_key_part(&self, key: &mut KeyWriter<'_>) {
                key.push(&self.0);
                key.field_separator();
                key.push(&self.1);
            }
        }
        assert_eq!(render(&Pair(None, 1)), "~,1");
        assert_eq!(render(&Some(Pair(None, 1))), "~~,1");
        assert_eq!(render(&Some(Pair(Some(1), 1))), "1,1");
        assert_eq!(render(&None::<Pair>), "~");

        // The `~` goes in front of this value only, not of what was written before it.
        let mut s = String::from("k:~");
        push_part(&mut s, &Some(None::<u8>));
        assert_eq!(s, "k:~~~");
    }

    #[test]
    fn long_keys_are_refused_by_length() {
        assert!(check_length(&"k".repeat(1024), 1024).is_ok());
        match check_length(&"k".repeat(1025), 1024) {
            Err(Error::InvalidKey { reason, .. }) => assert_eq!(reason, TOO_LONG),
            other => panic!("{other:?}"),
        }
        assert!(pattern_may_match_within("a:*", 3));
        assert!(!pattern_may_match_within("ab:*", 2));
        assert!(pattern_may_match_within(&format!("{}*", "?".repeat(10)), 10));
        assert!(!pattern_may_match_within(&format!("{}*", "[ab]".repeat(11)), 10));
    }

    #[test]
    fn long_rate_keys_are_hashed_within_the_bound() {
        assert_eq!(bounded_rate_key("login:1.2.3.4", 128), "login:1.2.3.4");
        let a = format!("login:{}a", "x".repeat(10_000));
        let b = format!("login:{}b", "x".repeat(10_000));
        let (ha, hb) = (bounded_rate_key(&a, 128), bounded_rate_key(&b, 128));
        assert_eq!(ha.len(), 128);
        assert!(ha.starts_with("login:xxx") && ha.contains('#'), "{ha}");
        assert_ne!(ha, hb, "keys differing past the head stay apart");
        assert_eq!(ha, bounded_rate_key(&a, 128), "the same key, the same limit");
        // A multi-byte character at the cut.
        let wide = "é".repeat(1000);
        assert!(bounded_rate_key(&wide, 128).len() <= 128);
    }

    #[test]
    fn programmatic_keys_are_checked() {
        assert!(validate_key("vehicle:42").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("a b").is_err());
        assert!(validate_key("a\u{7}").is_err());
        assert!(validate_key("__idx:x").is_ok());
        assert!(validate_key("a#b").is_err());
        assert!(validate_key("#idx:dealer:").is_err());
        assert!(validate_key("dealer:7#").is_err());
    }
}
