//! Value formats: the codec, optional compression, and the envelope every stored value
//! carries so that readers never decode into wrong data.
//!
//! A stored value is an ASCII header followed by the payload:
//!
//! ```text
//! cr2:<codec>:<compression>:<fingerprint>:<written>:<delta>:<payload>
//! cr2:j:-:3f1c0a9b2e4d5f60:1718000000123:42:{"id":42,"model":"Civic"}
//! cr2:m:l18342:3f1c0a9b2e4d5f60:1718000000123:0:<lz4 block>
//! ```
//!
//! - `cr2`: the envelope version. Readers also decode `cr1` (the previous release's
//!   envelope: the same fields without `written` and `delta`) and plain JSON (no header, the
//!   release before). A reader that meets another version whose header parses (`cr<digits>:`
//!   then the three fields every version starts with, `<codec>:<compression>:<fingerprint>:`,
//!   see [`is_later_envelope`]) treats the value as a later release's: a miss that does not
//!   store. Anything else that starts with `cr` (another application's text) is garbage: a
//!   miss that the fresh value replaces.
//! - codec: `j` JSON, `m` MessagePack (named fields), `p` postcard.
//! - compression: `-` none, or `l<n>`: an lz4 block that inflates to exactly `n` bytes.
//! - fingerprint: 16 hex digits, a hash of the value type's name (references stripped, so
//!   `&Vehicle` and `Vehicle`, `str` and `String` agree), the schema version
//!   ([`CacheBuilder::schema_version`](crate::CacheBuilder::schema_version)) and, when the
//!   writer knows `T: Deserialize` (loads do; `Cache::set` and `#[cache_put]` do not), the
//!   type's serde shape traced by `serde-reflection`. Readers accept either form for their
//!   type, and treat any other fingerprint as another schema: a miss that does not store.
//! - written: when the writer encoded the value, in milliseconds since the Unix epoch by the
//!   writer's wall clock, in decimal (readable in `redis-cli`, and what Lua's `tonumber`
//!   reads). A value's age is `now - written` by the reader's clock, the same on every store,
//!   whatever lifetime the writer gave it (see [`Stamp::age`]). A `cr1` or plain-JSON value
//!   has none: its age falls back to what the store knows (on Redis, `lifetime - PTTL`).
//! - delta: how long the load that produced the value took, in whole milliseconds, decimal;
//!   `0` when unknown (`Cache::set`, `#[cache_put]`). XFetch (`early`) prefers it to the
//!   function's mean load time.
//!
//! **Clocks.** `written` comes from the writer's clock and age from the reader's, so the
//! processes sharing a store must keep their clocks synchronized (NTP): an age is off by at
//! most the skew between the two clocks. A reader whose clock is behind the writer's sees
//! a `written` in its future: the age is clamped to zero (the value looks fresh for up to
//! the skew longer); a reader ahead sees it older by the skew (it expires that much sooner).
//! With NTP's usual millisecond-level skew this is far below any `ttl`.
//!
//! The header starts with `c`, never with a NUL byte (the first byte of a pending marker),
//! and never with the first byte of a JSON text: a value without it is the previous
//! release's plain JSON, decoded as before.
//!
//! **One layout.** [`MAGIC`], [`SEPARATOR`] and [`Field`] define the `cr2` header for the
//! encoder, the decoder, [`Stamp::of`] and the Lua scripts that read a header on the server
//! (`store/redis/scripts.rs` builds its header reader from them): changing the layout here
//! changes it everywhere.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Default `max_value_bytes`: 4 MiB.
pub(crate) const DEFAULT_MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// How values are serialized in Redis ([`CacheBuilder::codec`](crate::CacheBuilder::codec)).
///
/// Every stored value names its codec in its header, so a cache reads values written with
/// any codec: switching needs no flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// `serde_json` (the default): readable in `redis-cli`.
    #[default]
    Json,
    /// MessagePack (`rmp-serde`), structs as maps with field names: about half of JSON's
    /// size on numeric data, and a renamed or missing field still fails to decode.
    MessagePack,
    /// `postcard`: the most compact and fastest, but not self-describing: it relies on the
    /// fingerprint's traced shape to refuse a changed type (or on
    /// [`schema_version`](crate::CacheBuilder::schema_version) for types that cannot be
    /// traced and values written by `Cache::set` / `#[cache_put]`).
    Postcard,
}

impl Codec {
    fn tag(self) -> u8 {
        match self {
            Codec::Json => b'j',
            Codec::MessagePack => b'm',
            Codec::Postcard => b'p',
        }
    }

    /// The Cargo feature this codec needs, when this build lacks it (`None` for JSON, which
    /// is always there).
    pub(crate) fn missing_feature(self) -> Option<&'static str> {
        match self {
            Codec::Json => None,
            Codec::MessagePack => (!cfg!(feature = "msgpack")).then_some("msgpack"),
            Codec::Postcard => (!cfg!(feature = "postcard")).then_some("postcard"),
        }
    }

    fn from_tag(tag: &[u8]) -> Option<Codec> {
        match tag {
            b"j" => Some(Codec::Json),
            b"m" => Some(Codec::MessagePack),
            b"p" => Some(Codec::Postcard),
            _ => None,
        }
    }
}

/// The envelope's version tag, as written: the header starts with it.
pub(crate) const MAGIC: &[u8] = b"cr2:";
/// What separates the header's fields (and ends the last one, before the payload).
pub(crate) const SEPARATOR: u8 = b':';
/// The previous release's envelope (the first [`V1_FIELDS`] fields of `cr2`), still read.
const MAGIC_V1: &[u8] = b"cr1:";
/// How many fields a `cr1` header has: codec, compression, fingerprint.
const V1_FIELDS: usize = 3;
/// Every envelope starts with `cr` and its version in decimal digits.
const FAMILY: &[u8] = b"cr";

/// The longest `cr2` header this release writes: [`MAGIC`], the codec tag (1 byte), the
/// compression (`l` and a length of up to 20 digits), the fingerprint (16), the write time
/// and the load time (up to 20 digits each) and one [`SEPARATOR`] after each field. A
/// stored value is never longer than `max_value_bytes` plus this, which is what bounded
/// reads of the store rely on.
#[cfg(any(feature = "redis", test))]
pub(crate) const MAX_HEADER: usize = MAGIC.len() + 1 + 21 + 16 + 20 + 20 + Field::COUNT;

/// The fields of a `cr2` header after [`MAGIC`], in order, each ended by [`SEPARATOR`].
/// Every envelope version starts with the first three ([`Field::Codec`],
/// [`Field::Compression`], [`Field::Fingerprint`]); later versions may only add fields after
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// `j`, `m` or `p` (see [`Codec`]).
    Codec = 0,
    /// `-`, or `l<n>` for an lz4 block inflating to `n` bytes.
    Compression = 1,
    /// 16 hex digits.
    Fingerprint = 2,
    /// The writer's clock at encoding, ms since the Unix epoch, decimal.
    Written = 3,
    /// How long the load took, whole ms, decimal (`0`: unknown).
    Delta = 4,
}

impl Field {
    /// How many fields a `cr2` header has.
    pub(crate) const COUNT: usize = 5;

    /// The field's position among the header's fields (0 for the first after [`MAGIC`]).
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// A `cr2` header's fields and the payload after them; `None` when `stored` does not
/// start with [`MAGIC`] or has fewer fields. The fields' contents are not checked.
fn split_v2(stored: &[u8]) -> Option<([&[u8]; Field::COUNT], &[u8])> {
    // A plain scan per field rather than `splitn`: this runs on every hit.
    let mut rest = stored.strip_prefix(MAGIC)?;
    let mut fields: [&[u8]; Field::COUNT] = [&[]; Field::COUNT];
    for field in &mut fields {
        let end = rest.iter().position(|&b| b == SEPARATOR)?;
        *field = &rest[..end];
        rest = &rest[end + 1..];
    }
    Some((fields, rest))
}

/// [`split_v2`] for the header every writer of this release produces, in one pass over its
/// bytes: a one-byte codec tag, a fingerprint field of 16 bytes and `written` and `delta` of
/// 1 to 19 decimal digits each (so both are what [`decimal`] reads: the caller need not
/// check them again). `None` for any other `cr2` header, and for anything else; when
/// `Some`, the answer is exactly [`split_v2`]'s. The hit path reads every value's header:
/// this split checks the fixed-width fields in place and scans the digits and the
/// fingerprint a word at a time instead of byte by byte.
fn split_v2_common(stored: &[u8]) -> Option<([&[u8]; Field::COUNT], &[u8])> {
    let rest = stored.strip_prefix(MAGIC)?;
    // The codec: one byte (every codec's tag is one).
    let [codec, SEPARATOR, rest @ ..] = rest else { return None };
    if *codec == SEPARATOR {
        return None;
    }
    // The compression: `-`, or `l<n>` as `split_v2` reads it.
    let (compression, rest) = match rest {
        [b'-', SEPARATOR, tail @ ..] => (&rest[..1], tail),
        _ => {
            let end = rest.iter().position(|&b| b == SEPARATOR)?;
            (&rest[..end], &rest[end + 1..])
        }
    };
    // The fingerprint: 16 bytes with the separator after them and none among them.
    let (fingerprint, rest) = rest.split_first_chunk::<16>()?;
    if has_separator(fingerprint) {
        return None;
    }
    let rest = rest.strip_prefix(&[SEPARATOR])?;
    // `written` and `delta`: a run of digits, then the separator.
    let stamp_field = |rest: &'_ [u8]| {
        let digits = digit_run(rest);
        ((1..20).contains(&digits) && rest.get(digits) == Some(&SEPARATOR)).then_some(digits)
    };
    let digits = stamp_field(rest)?;
    let (written, rest) = (&rest[..digits], &rest[digits + 1..]);
    let digits = stamp_field(rest)?;
    let (delta, payload) = (&rest[..digits], &rest[digits + 1..]);
    Some(([std::slice::from_ref(codec), compression, &fingerprint[..], written, delta], payload))
}

/// Whether the 16 bytes hold a [`SEPARATOR`]: one 128-bit word tested for a zero byte after
/// an exclusive or with the separator in every lane (exact as a yes or no: the borrows of
/// the test only mark lanes above a lane that is zero).
fn has_separator(bytes: &[u8; 16]) -> bool {
    const LANES: u128 = u128::MAX / 0xFF;
    let x = u128::from_le_bytes(*bytes) ^ (u128::from(SEPARATOR) * LANES);
    x.wrapping_sub(LANES) & !x & (LANES << 7) != 0
}

/// How many ASCII digits `bytes` starts with, eight bytes at a time while eight are left.
/// Per lane: a digit is `0x30..=0x39`, so its high nibble is 3 and stays 3 after adding 6;
/// a lane failing either test is marked. Carries of the addition only reach the lanes above
/// a lane that is not a digit, so the lowest marked lane is exactly the first non-digit.
fn digit_run(bytes: &[u8]) -> usize {
    const LANES: u64 = u64::MAX / 0xFF;
    const HIGH_NIBBLES: u64 = 0xF0 * LANES;
    const THREES: u64 = 0x30 * LANES;
    let mut run = 0;
    while let Some(word) = bytes.get(run..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*word);
        let marks = ((word & HIGH_NIBBLES) ^ THREES)
            | ((word.wrapping_add(6 * LANES) & HIGH_NIBBLES) ^ THREES);
        if marks != 0 {
            return run + marks.trailing_zeros() as usize / 8;
        }
        run += 8;
    }
    run + bytes[run..].iter().take_while(|b| b.is_ascii_digit()).count()
}

/// Whether `stored` is a later release's envelope: `cr`, a version in decimal digits that
/// this release does not read, `:`, then the fields every version starts with, each ended by
/// `:`: a codec tag (ASCII letters and digits), a compression (`-`, or ASCII letters and
/// digits) and a fingerprint (16 hex digits). Another application's text that happens to
/// start with `cr` (`created by ...`, `cr:x`, `cr3 notes`) is not.
pub(crate) fn is_later_envelope(stored: &[u8]) -> bool {
    let Some(rest) = stored.strip_prefix(FAMILY) else { return false };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 9 {
        return false;
    }
    let (version, rest) = rest.split_at(digits);
    if version == &MAGIC[FAMILY.len()..MAGIC.len() - 1]
        || version == &MAGIC_V1[FAMILY.len()..MAGIC_V1.len() - 1]
    {
        return false; // a version this release reads: judged by its own parser
    }
    let Some(rest) = rest.strip_prefix(&[SEPARATOR]) else { return false };
    let mut parts = rest.splitn(V1_FIELDS + 1, |&b| b == SEPARATOR);
    let (Some(codec), Some(compression), Some(fp), Some(_)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let token = |field: &[u8]| !field.is_empty() && field.iter().all(u8::is_ascii_alphanumeric);
    token(codec)
        && (compression == b"-" || token(compression))
        && fp.len() == 16
        && fp.iter().all(u8::is_ascii_hexdigit)
}

/// What a `cr2` header says about when and how a value was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The writer's wall-clock time when it encoded the value, in ms since the Unix epoch.
    pub(crate) written_ms: u64,
    /// How long the load that produced it took (`None` when unknown: written as `0`).
    pub(crate) load_time: Option<std::time::Duration>,
}

impl Stamp {
    /// Reads the stamp of stored bytes: `None` for a `cr1` value, plain JSON, a pending
    /// marker, an absent result or a malformed header.
    pub(crate) fn of(stored: &[u8]) -> Option<Stamp> {
        let (fields, _) = split_v2_common(stored).or_else(|| split_v2(stored))?;
        let written_ms = decimal(fields[Field::Written.index()])?;
        let delta = decimal(fields[Field::Delta.index()])?;
        Some(Stamp {
            written_ms,
            load_time: (delta > 0).then(|| std::time::Duration::from_millis(delta)),
        })
    }

    /// Time since the value was written, by this process's clock: `now - written`, zero when
    /// `written` lies in this process's future (clock skew, see the module docs).
    pub(crate) fn age(&self) -> std::time::Duration {
        std::time::Duration::from_millis(now_ms().saturating_sub(self.written_ms))
    }
}

/// This process's wall clock in milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Exactly 16 hex digits (either case), as a number: a fingerprint field.
fn hex_u64(digits: &[u8]) -> Option<u64> {
    if digits.len() != 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |number, &digit| {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => return None,
        };
        Some(number << 4 | u64::from(value))
    })
}

/// Whether [`decimal`] reads `digits` as a number, without parsing it when it is short.
fn is_decimal(digits: &[u8]) -> bool {
    if (1..20).contains(&digits.len()) {
        return digits.iter().all(u8::is_ascii_digit);
    }
    decimal(digits).is_some()
}

/// A non-empty run of ASCII digits, as a number.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// How one cache writes values: chosen on the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    pub(crate) codec: Codec,
    /// Compress encoded values longer than this many bytes.
    pub(crate) compress_above: Option<usize>,
    /// What readers need: the fingerprint salt and the inflate limit.
    pub(crate) read: ReadFormat,
}

impl Format {
    /// Why this build cannot write values this way, naming the Cargo feature it lacks (the
    /// builder's [`Error::InvalidConfig`](crate::Error::InvalidConfig)); `None` when it can.
    pub(crate) fn missing_feature(&self) -> Option<String> {
        if let Some(feature) = self.codec.missing_feature() {
            return Some(format!(
                "Codec::{:?} needs the `{feature}` feature of cache-runtime, which this build lacks",
                self.codec
            ));
        }
        if self.compress_above.is_some() && !cfg!(feature = "lz4") {
            return Some(
                "compress_above needs the `lz4` feature of cache-runtime, which this build lacks"
                    .into(),
            );
        }
        None
    }
}

impl Default for Format {
    fn default() -> Self {
        Format { codec: Codec::Json, compress_above: None, read: ReadFormat::default() }
    }
}

/// What a reader needs to decode safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadFormat {
    /// Mixed into every fingerprint ([`CacheBuilder::schema_version`](crate::CacheBuilder::schema_version)).
    pub(crate) schema_version: u32,
    /// No value inflates past this many bytes (`max_value_bytes`).
    pub(crate) limit: usize,
}

impl Default for ReadFormat {
    fn default() -> Self {
        ReadFormat { schema_version: 0, limit: DEFAULT_MAX_VALUE_BYTES }
    }
}

/// Why a stored value was not decoded.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Written for another type or schema (other fingerprint, later envelope version): a
    /// miss that must not overwrite the other writer's entry.
    Schema,
    /// Truncated, corrupted, unknown codec, or the codec refused the payload.
    Corrupt(String),
    /// It would inflate past the limit (a decompression bomb, or a larger writer's limit).
    TooLarge(usize),
}

impl DecodeError {
    /// The error kind it is counted as.
    pub(crate) fn kind(&self) -> crate::ErrorKind {
        match self {
            DecodeError::Schema => crate::ErrorKind::Schema,
            DecodeError::Corrupt(_) => crate::ErrorKind::Decode,
            DecodeError::TooLarge(_) => crate::ErrorKind::TooLarge,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Schema => f.write_str("written for another value type or schema"),
            DecodeError::Corrupt(why) => write!(f, "corrupt value: {why}"),
            DecodeError::TooLarge(bytes) => {
                write!(f, "value would inflate to {bytes} bytes, over the limit")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// The *named* fingerprint of `T`: a hash of its normalized type name and the schema
/// version. What writers that only know `T: Serialize` (`Cache::set`, `#[cache_put]`) use.
pub(crate) fn fingerprint<T: ?Sized>(schema_version: u32) -> u64 {
    fingerprint_of(std::any::type_name::<T>(), None, schema_version)
}

/// The *traced* fingerprint of `T`: its type name, the schema version and its serde shape
/// (every container's name, field names in order and field types, as `serde-reflection`
/// traces them from `T`'s `Deserialize`), so a field added, removed, renamed, retyped or
/// moved changes it. The named fingerprint when `T` cannot be traced.
pub(crate) fn traced_fingerprint<T: DeserializeOwned + 'static>(schema_version: u32) -> u64 {
    let shape = shape_of::<T>().map(u64::to_le_bytes);
    fingerprint_of(std::any::type_name::<T>(), shape.as_ref().map(|s| &s[..]), schema_version)
}

/// The two fingerprints an envelope of `T` may carry: [`traced_fingerprint`] and
/// [`fingerprint`], as numbers and as the 16 lowercase hex digits writers put in the header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    numbers: [u64; 2],
    digits: [[u8; 16]; 2],
}

impl Accepted {
    /// Whether a header's fingerprint field names one of them: a comparison of the digits
    /// as written (every hit), else (another writer's case) of the parsed number. `None`
    /// when the field is not 16 hex digits.
    fn accepts(&self, field: &[u8]) -> Option<bool> {
        if self.digits.iter().any(|digits| digits == field) {
            return Some(true);
        }
        hex_u64(field).map(|number| self.numbers.contains(&number))
    }
}

/// [`Accepted`] for `T`, computed once per type and schema version in each thread: a decode
/// (every Redis hit) compares the envelope's fingerprint with them without hashing the type
/// name, parsing hex or touching a lock shared across threads.
pub(crate) fn accepted_fingerprints<T: DeserializeOwned + 'static>(
    schema_version: u32,
) -> Accepted {
    use std::any::TypeId;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    type Known = HashMap<(TypeId, u32), Accepted, std::hash::BuildHasherDefault<Fnv>>;
    thread_local! {
        static KNOWN: RefCell<Known> = RefCell::new(Known::default());
        static LAST: Cell<Option<((TypeId, u32), Accepted)>> = const { Cell::new(None) };
    }
    let id = (TypeId::of::<T>(), schema_version);
    // Most threads decode one type over and over: the last one answers without a lookup.
    if let Some((last, accepted)) = LAST.get() {
        if last == id {
            return accepted;
        }
    }
    let accepted = KNOWN.with(|known| known.borrow().get(&id).copied()).unwrap_or_else(|| {
        let numbers = [traced_fingerprint::<T>(schema_version), fingerprint::<T>(schema_version)];
        let digits = numbers.map(|number| {
            let mut digits = [0u8; 16];
            digits.copy_from_slice(format!("{number:016x}").as_bytes());
            digits
        });
        let accepted = Accepted { numbers, digits };
        KNOWN.with(|known| known.borrow_mut().insert(id, accepted));
        accepted
    });
    LAST.set(Some((id, accepted)));
    accepted
}

/// A `Hasher` of FNV-1a over the bytes written (a `TypeId` writes a few words).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(FNV_OFFSET)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fingerprint_of(type_name: &str, shape: Option<&[u8]>, schema_version: u32) -> u64 {
    let name = normalized_type_name(type_name);
    let shape = shape.into_iter().flat_map(|shape| b"\0".iter().chain(shape));
    fnv(name.as_bytes().iter().chain(shape).chain(&schema_version.to_le_bytes()))
}

/// FNV-1a, 64 bits: stable across releases and platforms (unlike `std`'s hasher).
fn fnv<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A hash of `T`'s serde shape (as JSON text), traced once per type; `None` when `T` cannot be traced
/// (a `Deserialize` that validates its input, such as a date parsed from a string, an
/// untagged enum, `flatten`).
#[cfg(feature = "redis")]
fn shape_of<T: DeserializeOwned + 'static>() -> Option<u64> {
    use std::any::TypeId;
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    type Shapes = RwLock<HashMap<TypeId, Option<u64>>>;
    static SHAPES: OnceLock<Shapes> = OnceLock::new();
    let shapes = SHAPES.get_or_init(Shapes::default);
    let id = TypeId::of::<T>();
    if let Some(shape) = shapes.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return *shape;
    }
    // A user's `Deserialize` may panic on the tracer's made-up input: then no shape.
    let traced = std::panic::catch_unwind(|| {
        use serde_reflection::{Tracer, TracerConfig};
        let mut tracer = Tracer::new(TracerConfig::default());
        let (format, _) = tracer.trace_simple_type::<T>().ok()?;
        let registry = tracer.registry().ok()?;
        serde_json::to_vec(&(format, registry)).ok()
    })
    .ok()
    .flatten()
    .map(|shape| fnv(&shape));
    shapes.write().unwrap_or_else(|e| e.into_inner()).insert(id, traced);
    traced
}

/// No shape without the `redis` feature: no bytes leave the process (the memory store keeps
/// typed copies), so serde-reflection is not built and loads write the named fingerprint.
#[cfg(not(feature = "redis"))]
#[allow(clippy::extra_unused_type_parameters)] // the same signature as with `redis`
fn shape_of<T: DeserializeOwned + 'static>() -> Option<u64> {
    None
}

/// `&T`, `&mut T` → `T`; `str` → `String`; `[T]` → `Vec<T>`: what a value written
/// through a borrow decodes as.
fn normalized_type_name(mut name: &str) -> std::borrow::Cow<'_, str> {
    loop {
        if let Some(rest) = name.strip_prefix("&mut ") {
            name = rest;
        } else if let Some(rest) = name.strip_prefix('&') {
            name = rest;
        } else {
            break;
        }
    }
    if name == "str" {
        return "alloc::string::String".into();
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        if !inner.contains(';') {
            return format!("alloc::vec::Vec<{inner}>").into();
        }
    }
    name.into()
}

/// Why a value was not encoded.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// The codec refused the value (a map with non-string keys in JSON, a failing
    /// `Serialize`).
    Codec(serde_json::Error),
    /// The encoded value passed the limit (`max_value_bytes`): encoding stopped there.
    TooLarge,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::Codec(error) => error.fmt(f),
            EncodeError::TooLarge => f.write_str("the encoded value is over the size limit"),
        }
    }
}

/// Appends `n` as exactly 16 lowercase hex digits (`{n:016x}`, without the formatter).
fn push_hex16(out: &mut Vec<u8>, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend((0..16).rev().map(|at| DIGITS[((n >> (4 * at)) & 0xf) as usize]));
}

/// Appends `n` in decimal (`{n}`, without the formatter).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// An encoding buffer that holds at most `limit` bytes after its `head` (the envelope's
/// header, written first): a write that would pass it fails (and sets `over`), which makes
/// every codec's serializer stop where it is. It grows as a `Vec` does, but never reserves
/// past the limit.
struct Bounded {
    bytes: Vec<u8>,
    /// The limit on `bytes`: the head's length plus the payload's limit.
    limit: usize,
    /// How far `bytes` may grow without a check: its capacity, or the limit if lower.
    room_end: usize,
    /// A write was refused: the value is longer than the limit.
    over: bool,
}

impl Bounded {
    /// A buffer that already holds its head (`bytes`), then takes at most `limit` more.
    fn new(bytes: Vec<u8>, limit: usize) -> Self {
        let limit = bytes.len().saturating_add(limit);
        let room_end = bytes.capacity().min(limit);
        Bounded { bytes, limit, room_end, over: false }
    }

    /// Appends `data`, or refuses it (and sets `over`) when it would pass the limit.
    /// Inlined into the serializers, which write a value in many small pieces: one
    /// comparison while the buffer has room, the rest out of line.
    #[inline(always)]
    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.len() <= self.room_end - self.bytes.len() {
            self.bytes.extend_from_slice(data);
            return Ok(());
        }
        self.append_past_room(data)
    }

    /// [`append`](Self::append) when the buffer must grow, or refuse.
    #[cold]
    #[inline(never)]
    fn append_past_room(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = self.bytes.len();
        if data.len() > self.limit - len {
            self.over = true;
            return Err(std::io::Error::other("over max_value_bytes"));
        }
        // Double the capacity (at least to fit `data`), never past the limit.
        let wanted = (self.bytes.capacity() * 2).max(len + data.len()).min(self.limit);
        self.bytes.reserve_exact(wanted - len);
        self.room_end = self.bytes.capacity().min(self.limit);
        self.bytes.extend_from_slice(data);
        Ok(())
    }
}

impl std::io::Write for Bounded {
    #[inline(always)]
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.append(data).map(|()| data.len())
    }

    #[inline(always)]
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.append(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Format {
    /// Encodes `value` in an envelope with its named fingerprint. Returns the stored bytes
    /// and the encoded size before compression, or [`EncodeError::TooLarge`] as soon as the
    /// encoding passes `max_value_bytes` (the rest of the value is never serialized).
    pub(crate) fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<(Vec<u8>, usize), EncodeError> {
        self.encode_with(value, fingerprint::<T>(self.read.schema_version), None)
    }

    /// Encodes `value` in an envelope with its traced fingerprint and, when known, how long
    /// the load that produced it took.
    pub(crate) fn encode_traced<T: Serialize + DeserializeOwned + 'static>(
        &self,
        value: &T,
        load_time: Option<std::time::Duration>,
    ) -> Result<(Vec<u8>, usize), EncodeError> {
        let traced = accepted_fingerprints::<T>(self.read.schema_version).numbers[0];
        self.encode_with(value, traced, load_time)
    }

    fn encode_with<T: Serialize + ?Sized>(
        &self,
        value: &T,
        fp: u64,
        load_time: Option<std::time::Duration>,
    ) -> Result<(Vec<u8>, usize), EncodeError> {
        use serde::ser::Error as _;
        use std::io::Write as _;
        // A load shorter than a millisecond is recorded as 1 ms: 0 means unknown.
        let delta =
            load_time.map_or(0, |took| u64::try_from(took.as_millis()).unwrap_or(u64::MAX).max(1));
        // The header, then the payload, into one buffer: this runs on every fill. The
        // header's second field is `-` (not compressed); a payload compressed below is
        // written again behind a header saying so.
        let now = now_ms();
        let header = |out: &mut Vec<u8>, compressed: Option<usize>| {
            out.extend_from_slice(MAGIC);
            out.push(self.codec.tag());
            out.push(SEPARATOR);
            // Writing into a `Vec` cannot fail.
            let _ = match compressed {
                Some(encoded_len) => write!(out, "l{encoded_len}:"),
                None => out.write_all(b"-:"),
            };
            push_hex16(out, fp);
            out.push(b':');
            push_decimal(out, now);
            out.push(b':');
            push_decimal(out, delta);
            out.push(b':');
        };
        // Sized for a small value at once: one allocation for most values, and none copied
        // (the stored bytes are this buffer).
        let mut head = Vec::with_capacity(self.read.limit.saturating_add(64).min(256));
        header(&mut head, None);
        let head_len = head.len();
        // The codec writes into a buffer that refuses to grow past the limit: a value over
        // it stops the serializer there, so neither the work nor the memory goes further.
        let mut sink = Bounded::new(head, self.read.limit);
        let written = match self.codec {
            // The serializer owns the buffer (not `&mut` it): its many small writes call
            // `Bounded`'s, inlined, not a forwarding `Write for &mut W` each.
            Codec::Json => {
                let mut serializer = serde_json::Serializer::new(sink);
                let written = value.serialize(&mut serializer);
                sink = serializer.into_inner();
                written
            }
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => {
                rmp_serde::encode::write_named(&mut sink, value).map_err(serde_json::Error::custom)
            }
            #[cfg(feature = "postcard")]
            Codec::Postcard => {
                postcard::to_io(value, &mut sink).map(drop).map_err(serde_json::Error::custom)
            }
            // Refused by the builder (`Format::missing_feature`); never reached.
            #[cfg(not(all(feature = "msgpack", feature = "postcard")))]
            codec => Err(serde_json::Error::custom(format!("{codec:?} is not in this build"))),
        };
        if sink.over {
            return Err(EncodeError::TooLarge);
        }
        written.map_err(EncodeError::Codec)?;
        let stored = sink.bytes;
        let encoded_len = stored.len() - head_len;
        #[cfg(feature = "lz4")]
        if let Some(compressed) = self.compress(&stored[head_len..]) {
            let mut out = Vec::with_capacity(96 + compressed.len());
            header(&mut out, Some(encoded_len));
            out.extend_from_slice(&compressed);
            return Ok((out, encoded_len));
        }
        Ok((stored, encoded_len))
    }

    /// The payload compressed, when `compress_above` asks for it and that is smaller.
    #[cfg(feature = "lz4")]
    fn compress(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let compress = self.compress_above.is_some_and(|above| payload.len() > above);
        let compressed = compress.then(|| lz4_flex::block::compress(payload));
        // Keep the compressed form only when it is smaller.
        compressed.filter(|c| c.len() < payload.len())
    }
}

impl ReadFormat {
    /// Decodes stored bytes as `T`: an envelope, or (no header) the previous release's JSON.
    /// An envelope must carry `T`'s traced fingerprint, or its named one (written by
    /// `Cache::set` or `#[cache_put]`, which do not know `T: Deserialize`).
    pub(crate) fn decode<T: DeserializeOwned + 'static>(
        &self,
        stored: &[u8],
    ) -> Result<T, DecodeError> {
        let version = self.schema_version;
        self.decode_checked(stored, |fp| accepted_fingerprints::<T>(version).accepts(fp))
    }

    /// Decodes stored bytes as `T` if `accepts` the envelope's fingerprint field (`None`:
    /// the field is no fingerprint).
    fn decode_checked<T: DeserializeOwned>(
        &self,
        stored: &[u8],
        accepts: impl FnOnce(&[u8]) -> Option<bool>,
    ) -> Result<T, DecodeError> {
        if !stored.starts_with(FAMILY) {
            // No header: plain JSON from the previous release.
            if stored.len() > self.limit {
                return Err(DecodeError::TooLarge(stored.len()));
            }
            return serde_json::from_slice(stored).map_err(|e| DecodeError::Corrupt(e.to_string()));
        }
        let (codec, compression, fp, payload) = if stored.starts_with(MAGIC) {
            // The header as this release writes it (its stamp checked by the split), else
            // any other split and checked here.
            let (fields, payload) = match split_v2_common(stored) {
                Some(split) => split,
                None => {
                    let Some((fields, payload)) = split_v2(stored) else {
                        return Err(DecodeError::Corrupt("truncated header".into()));
                    };
                    // `written` and `delta` (read by `Stamp::of`): digits, or the header
                    // is corrupt.
                    if [Field::Written, Field::Delta]
                        .iter()
                        .any(|field| !is_decimal(fields[field.index()]))
                    {
                        return Err(DecodeError::Corrupt("bad write stamp".into()));
                    }
                    (fields, payload)
                }
            };
            (
                fields[Field::Codec.index()],
                fields[Field::Compression.index()],
                fields[Field::Fingerprint.index()],
                payload,
            )
        } else if let Some(rest) = stored.strip_prefix(MAGIC_V1) {
            let mut parts = rest.splitn(V1_FIELDS + 1, |&b| b == SEPARATOR);
            let (Some(codec), Some(compression), Some(fp), Some(payload)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(DecodeError::Corrupt("truncated header".into()));
            };
            (codec, compression, fp, payload)
        } else if is_later_envelope(stored) {
            return Err(DecodeError::Schema); // a later release's envelope
        } else {
            // Starts with `cr` but is no envelope: another application's data.
            return Err(DecodeError::Corrupt("not an envelope".into()));
        };
        let codec =
            Codec::from_tag(codec).ok_or_else(|| DecodeError::Corrupt("unknown codec".into()))?;
        match accepts(fp) {
            Some(true) => {}
            Some(false) => return Err(DecodeError::Schema),
            None => return Err(DecodeError::Corrupt("bad fingerprint".into())),
        }
        #[cfg(feature = "lz4")]
        let inflated;
        let payload = match compression {
            b"-" => payload,
            // A compressed value, in a build without lz4: like another release's value, a
            // miss that leaves it in place for the builds that read it.
            #[cfg(not(feature = "lz4"))]
            [b'l', ..] => return Err(DecodeError::Schema),
            #[cfg(feature = "lz4")]
            [b'l', len @ ..] => {
                let len: usize = std::str::from_utf8(len)
                    .ok()
                    .filter(|len| !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|len| len.parse().ok())
                    .ok_or_else(|| DecodeError::Corrupt("bad compressed length".into()))?;
                if len > self.limit {
                    return Err(DecodeError::TooLarge(len));
                }
                // Allocates `len` bytes at most and fails if the block inflates otherwise.
                inflated = lz4_flex::block::decompress(payload, len)
                    .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
                if inflated.len() != len {
                    return Err(DecodeError::Corrupt("compressed length mismatch".into()));
                }
                &inflated[..]
            }
            _ => return Err(DecodeError::Corrupt("unknown compression".into())),
        };
        if payload.len() > self.limit {
            return Err(DecodeError::TooLarge(payload.len()));
        }
        let corrupt = |e: &dyn std::fmt::Display| DecodeError::Corrupt(e.to_string());
        match codec {
            Codec::Json => serde_json::from_slice(payload).map_err(|e| corrupt(&e)),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => rmp_serde::from_slice(payload).map_err(|e| corrupt(&e)),
            #[cfg(feature = "postcard")]
            Codec::Postcard => {
                let (value, rest) = postcard::take_from_bytes(payload).map_err(|e| corrupt(&e))?;
                if !rest.is_empty() {
                    return Err(DecodeError::Corrupt("trailing bytes after postcard value".into()));
                }
                Ok(value)
            }
            // A codec this build lacks: like another release's value, a miss that leaves
            // it in place for the builds that read it.
            #[cfg(not(all(feature = "msgpack", feature = "postcard")))]
            _ => Err(DecodeError::Schema),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_numbers_are_written_as_the_formatter_writes_them() {
        for n in [0, 1, 9, 10, 255, 1_733_500_000_123, u64::MAX] {
            let (mut hex, mut decimal) = (Vec::new(), Vec::new());
            push_hex16(&mut hex, n);
            push_decimal(&mut decimal, n);
            assert_eq!(String::from_utf8(hex).unwrap(), format!("{n:016x}"));
            assert_eq!(String::from_utf8(decimal).unwrap(), n.to_string());
        }
    }

    #[test]
    fn a_fingerprint_field_is_matched_as_written_or_by_number() {
        let accepted = accepted_fingerprints::<u32>(0);
        let traced = traced_fingerprint::<u32>(0);
        let lower = format!("{traced:016x}");
        assert_eq!(accepted.accepts(lower.as_bytes()), Some(true));
        // Another writer's case: the same number.
        assert_eq!(accepted.accepts(lower.to_uppercase().as_bytes()), Some(true));
        // A well-formed fingerprint of another type: the other release's value.
        assert_eq!(accepted.accepts(format!("{:016x}", traced ^ 1).as_bytes()), Some(false));
        // Not 16 hex digits: no fingerprint at all.
        for field in ["", "0123", "0123456789abcdefa", "0123456789abcdeg", "+123456789abcdef"] {
            assert_eq!(accepted.accepts(field.as_bytes()), None, "{field:?}");
        }
        assert_eq!(hex_u64(b"00000000000000fF"), Some(255));
    }
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn the_common_split_takes_what_this_release_writes() {
        let (bytes, _) = format(Codec::Json, None).encode(&7u32).unwrap();
        assert_eq!(split_v2_common(&bytes), split_v2(&bytes));
        assert!(split_v2_common(&bytes).is_some());
        let (bytes, _) = format(Codec::Json, None)
            .encode_traced(&vehicle(), Some(Duration::from_millis(1234)))
            .unwrap();
        assert!(split_v2_common(&bytes).is_some());
        assert_eq!(split_v2_common(&bytes), split_v2(&bytes));
        // Anything else is left to the general split (and its checks).
        for other in [
            &b"cr2:j:-:0123456789abcdef:x:0:7"[..],
            b"cr2:j:-:0123456789abcdef::0:7",
            b"cr2:j:-:0123456789abcdef:12345678901234567890:0:7",
            b"cr2:j:-:0123456789abcde:1:0:7",
            b"cr2:j:-:0123456:89abcdef0:1:0:7",
            b"cr2:j:-:0123456789abcdef:1:0",
            b"cr1:j:-:0123456789abcdef:7",
            b"7",
        ] {
            assert_eq!(split_v2_common(other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    /// Header fields from an alphabet that makes every split decision come up.
    fn header_field(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop::sample::select(b"0189:ax-".to_vec()), 0..max)
    }

    /// Decimal digits, `min..max` of them: the common layout's stamp (and, 16 of them, a
    /// fingerprint field without separator).
    fn digits(min: usize, max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(b'0'..=b'9', min..max)
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug, Clone)]
    struct Vehicle {
        id: u64,
        model: String,
        tags: Vec<String>,
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct VehicleV2 {
        id: u64,
        model: String,
        tags: Vec<String>,
    }

    fn vehicle() -> Vehicle {
        Vehicle { id: 42, model: "Civic".into(), tags: vec!["used".into(); 40] }
    }

    fn format(codec: Codec, compress_above: Option<usize>) -> Format {
        Format { codec, compress_above, read: ReadFormat::default() }
    }

    #[cfg(all(feature = "msgpack", feature = "postcard", feature = "lz4"))]
    const CODECS: [Codec; 3] = [Codec::Json, Codec::MessagePack, Codec::Postcard];

    #[cfg(all(feature = "msgpack", feature = "postcard", feature = "lz4"))]
    #[test]
    fn every_codec_round_trips_with_and_without_compression() {
        for codec in CODECS {
            for compress in [None, Some(0)] {
                let (bytes, _) = format(codec, compress).encode(&vehicle()).unwrap();
                assert_ne!(bytes[0], 0, "an envelope never starts with NUL");
                assert_eq!(ReadFormat::default().decode::<Vehicle>(&bytes).unwrap(), vehicle());
            }
        }
    }

    #[test]
    fn json_stays_readable() {
        let (bytes, _) = format(Codec::Json, None).encode(&7u32).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("cr2:j:-:") && text.ends_with(":0:7"), "{text}");
    }

    #[test]
    fn the_header_carries_the_write_time_and_the_load_time() {
        let before = now_ms();
        let (bytes, _) = format(Codec::Json, None)
            .encode_traced(&7u32, Some(Duration::from_millis(42)))
            .unwrap();
        let stamp = Stamp::of(&bytes).unwrap();
        assert!((before..=now_ms()).contains(&stamp.written_ms), "{stamp:?}");
        assert_eq!(stamp.load_time, Some(Duration::from_millis(42)));
        assert!(stamp.age() < Duration::from_secs(1));
        let (bytes, _) = format(Codec::Json, None).encode(&7u32).unwrap();
        assert_eq!(Stamp::of(&bytes).unwrap().load_time, None, "0: unknown");
        // A write time in the future (the writer's clock is ahead): age zero.
        let future = Stamp { written_ms: now_ms() + 60_000, load_time: None };
        assert_eq!(future.age(), Duration::ZERO);
        // No stamp on older formats, markers and absent results.
        assert!(Stamp::of(b"7").is_none());
        assert!(Stamp::of(b"cr1:j:-:0000000000000000:7").is_none());
        assert!(Stamp::of(crate::codec::ABSENT).is_none());
        assert!(Stamp::of(b"cr2:j:-:0000000000000000:12x:0:7").is_none());
    }

    #[test]
    fn cr1_values_still_decode() {
        let fp = fingerprint::<u32>(0);
        let v1 = format!("cr1:j:-:{fp:016x}:7");
        assert_eq!(ReadFormat::default().decode::<u32>(v1.as_bytes()).unwrap(), 7);
        let traced = traced_fingerprint::<Vehicle>(0);
        let json = serde_json::to_string(&vehicle()).unwrap();
        let v1 = format!("cr1:j:-:{traced:016x}:{json}");
        assert_eq!(ReadFormat::default().decode::<Vehicle>(v1.as_bytes()).unwrap(), vehicle());
        // A cr2 header with a malformed stamp is corrupt, not another schema.
        let bad = format!("cr2:j:-:{fp:016x}:x:0:7");
        assert!(matches!(
            ReadFormat::default().decode::<u32>(bad.as_bytes()),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn legacy_json_decodes() {
        assert_eq!(ReadFormat::default().decode::<u32>(b"7").unwrap(), 7);
        assert!(matches!(
            ReadFormat::default().decode::<u32>(b"\"x\""),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn foreign_text_starting_with_cr_is_garbage_not_a_later_release() {
        let reader = ReadFormat::default();
        for foreign in [
            &b"created by another app"[..],
            b"cr",
            b"cr:",
            b"cr3",
            b"cr3:",
            b"cr3 notes",
            b"cr12:j:-:",
            b"cr3:j:-:not-a-fingerprint:1:0:{}",
            b"cr3:j:-:0000000000000000",
            b"cr3::-:0000000000000000:{}",
            b"cr3:j::0000000000000000:{}",
            b"crx:j:-:0000000000000000:{}",
            b"cr2 and more",
            b"cr1 and more",
        ] {
            assert!(!is_later_envelope(foreign), "{:?}", String::from_utf8_lossy(foreign));
            for decoded in [
                reader.decode::<String>(foreign).map(drop),
                reader.decode::<Vehicle>(foreign).map(drop),
            ] {
                assert!(
                    matches!(decoded, Err(DecodeError::Corrupt(_))),
                    "{:?}: {decoded:?}",
                    String::from_utf8_lossy(foreign)
                );
            }
        }
    }

    #[test]
    fn a_later_envelope_header_is_another_schema() {
        let reader = ReadFormat::default();
        for later in [
            &b"cr3:j:-:0000000000000000:1:0:{}"[..],
            b"cr3:z:-:0123456789abcdef:",
            b"cr10:j:l12:0123456789ABCDEF:new:fields:payload",
            b"cr3:m:-:0000000000000000:\xff\x00",
        ] {
            assert!(is_later_envelope(later), "{:?}", String::from_utf8_lossy(later));
            assert!(matches!(reader.decode::<String>(later), Err(DecodeError::Schema)));
        }
        // The versions this release reads are judged by their own parser.
        assert!(!is_later_envelope(b"cr2:j:-:0000000000000000:1:0:7"));
        assert!(!is_later_envelope(b"cr1:j:-:0000000000000000:7"));
    }

    #[test]
    fn the_layout_constants_describe_what_is_written() {
        let (bytes, _) = format(Codec::Json, None)
            .encode_traced(&7u32, Some(Duration::from_millis(42)))
            .unwrap();
        let (fields, payload) = split_v2(&bytes).unwrap();
        assert_eq!(fields[Field::Codec.index()], b"j");
        assert_eq!(fields[Field::Compression.index()], b"-");
        let fp = format!("{:016x}", traced_fingerprint::<u32>(0));
        assert_eq!(fields[Field::Fingerprint.index()], fp.as_bytes());
        assert_eq!(
            decimal(fields[Field::Written.index()]),
            Some(Stamp::of(&bytes).unwrap().written_ms)
        );
        assert_eq!(fields[Field::Delta.index()], b"42");
        assert_eq!(payload, b"7");
    }

    #[cfg(all(feature = "msgpack", feature = "postcard", feature = "lz4"))]
    #[test]
    fn other_types_and_versions_are_schema_misses() {
        let (bytes, _) = format(Codec::Postcard, None).encode(&vehicle()).unwrap();
        assert!(matches!(
            ReadFormat::default().decode::<VehicleV2>(&bytes),
            Err(DecodeError::Schema)
        ));
        let v1 = ReadFormat { schema_version: 1, ..ReadFormat::default() };
        assert!(matches!(v1.decode::<Vehicle>(&bytes), Err(DecodeError::Schema)));
        assert!(matches!(
            ReadFormat::default().decode::<Vehicle>(b"cr3:j:-:0000000000000000:1:0:{}"),
            Err(DecodeError::Schema)
        ));
    }

    /// Two releases of `app::Vehicle`: same path, a field retyped; then reordered.
    #[cfg(all(feature = "redis", feature = "msgpack", feature = "postcard", feature = "lz4"))]
    mod release {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        pub(super) struct Old {
            pub(super) id: u64,
            pub(super) price: u32,
        }
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        pub(super) struct Retyped {
            pub(super) id: u64,
            pub(super) price: u64,
        }
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        pub(super) struct Reordered {
            pub(super) price: u32,
            pub(super) id: u64,
        }
    }

    // The traced shape tells the types apart: serde-reflection comes with `redis`.
    #[cfg(all(feature = "redis", feature = "msgpack", feature = "postcard", feature = "lz4"))]
    #[test]
    fn a_changed_type_under_the_same_name_is_another_schema() {
        let shape = |s: Option<u64>| s.expect("traceable").to_le_bytes();
        let old = shape(shape_of::<release::Old>());
        let retyped = shape(shape_of::<release::Retyped>());
        let reordered = shape(shape_of::<release::Reordered>());
        // Pretend all three are `app::Vehicle` in successive releases.
        let fp = |shape: &[u8; 8]| fingerprint_of("app::Vehicle", Some(shape), 0);
        assert_ne!(fp(&old), fp(&retyped));
        assert_ne!(fp(&old), fp(&reordered));
        let (written, _) = format(Codec::Postcard, None)
            .encode_with(&release::Old { id: 1, price: 7 }, fp(&old), None)
            .unwrap();
        // Postcard would decode the reordered type into wrong data; the fingerprint says no.
        let reader = ReadFormat::default();
        let accepts_reordered = |got: &[u8]| hex_u64(got).map(|got| got == fp(&reordered));
        assert!(matches!(
            reader.decode_checked::<release::Reordered>(&written, accepts_reordered),
            Err(DecodeError::Schema)
        ));
        assert_eq!(
            reader
                .decode_checked::<release::Old>(&written, |got| hex_u64(got)
                    .map(|got| got == fp(&old)))
                .unwrap(),
            release::Old { id: 1, price: 7 }
        );
        // Traced and named fingerprints are both read; types that cannot be traced fall
        // back to the name.
        let (traced, _) = format(Codec::Json, None).encode_traced(&vehicle(), None).unwrap();
        assert_eq!(reader.decode::<Vehicle>(&traced).unwrap(), vehicle());
        assert_ne!(traced_fingerprint::<Vehicle>(0), fingerprint::<Vehicle>(0));
    }

    #[test]
    fn borrowed_and_owned_types_share_a_fingerprint() {
        assert_eq!(fingerprint::<&str>(0), fingerprint::<String>(0));
        assert_eq!(fingerprint::<[u8]>(0), fingerprint::<Vec<u8>>(0));
        assert_eq!(fingerprint::<&&Vehicle>(0), fingerprint::<Vehicle>(0));
        assert_ne!(fingerprint::<Vehicle>(0), fingerprint::<VehicleV2>(0));
    }

    #[cfg(all(feature = "msgpack", feature = "postcard", feature = "lz4"))]
    #[test]
    fn truncated_and_corrupted_values_fail() {
        for codec in CODECS {
            for compress in [None, Some(0)] {
                let (bytes, _) = format(codec, compress).encode(&vehicle()).unwrap();
                for cut in 0..bytes.len() {
                    assert!(ReadFormat::default().decode::<Vehicle>(&bytes[..cut]).is_err());
                }
            }
        }
    }

    #[cfg(all(feature = "msgpack", feature = "postcard", feature = "lz4"))]
    #[test]
    fn wrong_codec_tag_fails() {
        let (mut bytes, _) = format(Codec::MessagePack, None).encode(&vehicle()).unwrap();
        bytes[4] = b'j'; // claims JSON, holds MessagePack
        assert!(matches!(
            ReadFormat::default().decode::<Vehicle>(&bytes),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[cfg(all(feature = "msgpack", feature = "postcard", feature = "lz4"))]
    #[test]
    fn bombs_never_inflate_past_the_limit() {
        let big = "a".repeat(1 << 20);
        let (bytes, _) = format(Codec::Json, Some(0)).encode(&big).unwrap();
        assert!(bytes.len() < 10_000);
        let small = ReadFormat { limit: 64 * 1024, ..ReadFormat::default() };
        assert!(matches!(small.decode::<String>(&bytes), Err(DecodeError::TooLarge(_))));
        // A header that lies about the size is refused before allocating.
        let fp = fingerprint::<String>(0);
        let lie = format!("cr2:j:l99999999999:{fp:016x}:1:0:xx");
        assert!(matches!(
            ReadFormat::default().decode::<String>(lie.as_bytes()),
            Err(DecodeError::TooLarge(_))
        ));
        let lie = format!("cr2:j:l100:{fp:016x}:1:0:xx");
        assert!(matches!(
            ReadFormat::default().decode::<String>(lie.as_bytes()),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn a_codec_or_compression_this_build_lacks_reads_as_another_release() {
        let fp = fingerprint::<Vehicle>(0);
        let json = serde_json::to_string(&vehicle()).unwrap();
        let missing = |codec: Codec| codec.missing_feature().is_some();
        for codec in [Codec::Json, Codec::MessagePack, Codec::Postcard] {
            let format = format(codec, None);
            assert_eq!(format.missing_feature().is_some(), missing(codec), "{codec:?}");
            if let Some(why) = format.missing_feature() {
                let feature = codec.missing_feature().unwrap();
                assert!(why.contains(&format!("`{feature}` feature")), "{why}");
                // A value another build wrote with it: left alone, like a later release's.
                let tag = codec.tag() as char;
                let stored = format!("cr2:{tag}:-:{fp:016x}:1718000000000:0:x");
                assert!(matches!(
                    ReadFormat::default().decode::<Vehicle>(stored.as_bytes()),
                    Err(DecodeError::Schema)
                ));
            }
        }
        let compressed = format(Codec::Json, Some(0));
        let lz4 = format!("cr2:j:l{}:{fp:016x}:1718000000000:0:xx", json.len());
        let decoded = ReadFormat::default().decode::<Vehicle>(lz4.as_bytes());
        if cfg!(feature = "lz4") {
            assert!(compressed.missing_feature().is_none());
            assert!(matches!(decoded, Err(DecodeError::Corrupt(_))), "not an lz4 block");
        } else {
            let why = compressed.missing_feature().unwrap();
            assert!(why.contains("`lz4` feature"), "{why}");
            assert!(matches!(decoded, Err(DecodeError::Schema)));
        }
    }

    #[test]
    fn the_longest_header_fits_max_header() {
        let fp = u64::MAX;
        let header = format!("cr2:j:l{}:{fp:016x}:{}:{}:", usize::MAX, u64::MAX, u64::MAX);
        assert_eq!(header.len(), MAX_HEADER);
    }

    proptest! {
        /// The bounded encoder, at random limits and sizes around them, for every codec
        /// with and without compression: a value fits exactly when its full encoding is
        /// at most the limit (then the same bytes and size as an unbounded encoding, read
        /// back whole, and never longer than the limit plus `MAX_HEADER`); otherwise the
        /// encoder stops with `TooLarge`, never with a codec error.
        #[cfg(all(feature = "msgpack", feature = "postcard", feature = "lz4"))]
        #[test]
        fn the_encoder_stops_exactly_past_the_limit(
            codec in 0usize..3,
            compressed in any::<bool>(),
            limit in 0usize..4096,
            around in -8i64..8,
        ) {
            let codec = CODECS[codec];
            let unbounded = |text: &String| match codec {
                Codec::Json => serde_json::to_vec(text).unwrap().len(),
                Codec::MessagePack => rmp_serde::to_vec_named(text).unwrap().len(),
                Codec::Postcard => postcard::to_stdvec(text).unwrap().len(),
            };
            // A string whose encoding is about `limit + around` bytes.
            let len = usize::try_from((limit as i64 + around).max(0)).unwrap();
            let text = "z".repeat(len.saturating_sub(unbounded(&String::new())));
            let full = unbounded(&text);
            let read = ReadFormat { limit, ..ReadFormat::default() };
            let format = Format { codec, compress_above: compressed.then_some(0), read };
            match format.encode(&text) {
                Ok((bytes, encoded_len)) => {
                    prop_assert!(full <= limit, "{full} bytes accepted under a {limit}-byte limit");
                    prop_assert_eq!(encoded_len, full);
                    prop_assert!(bytes.len() <= limit + MAX_HEADER);
                    prop_assert_eq!(read.decode::<String>(&bytes).unwrap(), text);
                }
                Err(EncodeError::TooLarge) => prop_assert!(full > limit, "{full} refused under {limit}"),
                Err(EncodeError::Codec(error)) => prop_assert!(false, "{error}"),
            }
        }

        /// The decoder's limit, at random limits and payload sizes around them: a payload
        /// (or the length a compressed one claims) over the limit is `TooLarge`, at or
        /// under it decodes.
        #[test]
        fn the_decoder_refuses_exactly_past_the_limit(
            compressed in any::<bool>(),
            limit in 2usize..4096,
            around in -8i64..8,
        ) {
            let len = usize::try_from((limit as i64 + around).max(2)).unwrap();
            let text = "z".repeat(len - 2); // JSON: two quotes around it
            let writer = Format {
                codec: Codec::Json,
                compress_above: compressed.then_some(0),
                read: ReadFormat { limit: usize::MAX, ..ReadFormat::default() },
            };
            let (bytes, encoded_len) = writer.encode(&text).unwrap();
            prop_assert_eq!(encoded_len, len);
            let reader = ReadFormat { limit, ..ReadFormat::default() };
            match reader.decode::<String>(&bytes) {
                Ok(decoded) => {
                    prop_assert!(len <= limit);
                    prop_assert_eq!(decoded, text);
                }
                Err(DecodeError::TooLarge(_)) => prop_assert!(len > limit),
                Err(error) => prop_assert!(false, "{error}"),
            }
        }

        #[test]
        fn the_common_split_is_the_general_split_or_nothing(
            codec in prop_oneof![header_field(3), Just(b"j".to_vec())],
            compression in prop_oneof![header_field(3), Just(b"-".to_vec())],
            fingerprint in prop_oneof![header_field(19), digits(16, 17)],
            written in prop_oneof![header_field(23), digits(1, 22)],
            delta in prop_oneof![header_field(23), digits(1, 22)],
            payload in header_field(12),
        ) {
            let mut stored = MAGIC.to_vec();
            for field in [&codec, &compression, &fingerprint, &written, &delta] {
                stored.extend_from_slice(field);
                stored.push(SEPARATOR);
            }
            stored.extend_from_slice(&payload);
            let general = split_v2(&stored);
            match split_v2_common(&stored) {
                Some(common) => {
                    prop_assert_eq!(Some(common), general);
                    prop_assert!(is_decimal(common.0[3]) && is_decimal(common.0[4]));
                }
                // Not taken only when the general split differs from the common layout.
                None => {
                    let short = |field: &[u8]| {
                        (1..20).contains(&field.len()) && field.iter().all(u8::is_ascii_digit)
                    };
                    let common = general.is_some_and(|(fields, _)| {
                        fields[0].len() == 1
                            && fields[2].len() == 16
                            && short(fields[3])
                            && short(fields[4])
                    });
                    prop_assert!(!common, "the common layout was left to the general split");
                }
            }
        }

        #[test]
        fn the_word_scans_answer_as_the_byte_scans(
            bytes in proptest::collection::vec(prop_oneof![any::<u8>(), b'0'..=b'9', Just(b':')], 0..40),
            shift in 0usize..8,
        ) {
            let bytes = &bytes[shift.min(bytes.len())..];
            let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            prop_assert_eq!(digit_run(bytes), digits);
            if let Some(chunk) = bytes.first_chunk::<16>() {
                prop_assert_eq!(has_separator(chunk), chunk.contains(&SEPARATOR));
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ReadFormat::default().decode::<Vehicle>(&bytes);
            let _ = ReadFormat::default().decode::<String>(&bytes);
        }

        #[test]
        fn random_payloads_behind_a_valid_header_never_panic(
            codec in 0usize..3,
            compressed in any::<bool>(),
            len in 0usize..100_000,
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let tag = [b'j', b'm', b'p'][codec] as char;
            let fp = fingerprint::<Vehicle>(0);
            let compression = if compressed { format!("l{len}") } else { "-".into() };
            let mut bytes = format!("cr2:{tag}:{compression}:{fp:016x}:1718000000000:0:").into_bytes();
            bytes.extend_from_slice(&payload);
            let _ = ReadFormat::default().decode::<Vehicle>(&bytes);
        }

        #[cfg(all(feature = "msgpack", feature = "postcard", feature = "lz4"))]
        #[test]
        fn mutated_values_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>(), codec in 0usize..3) {
            let (mut bytes, _) = format(CODECS[codec], Some(0)).encode(&vehicle()).unwrap();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = ReadFormat::default().decode::<Vehicle>(&bytes);
        }
    }
}
