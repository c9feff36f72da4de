//! How values are stored: bytes in the cache's format (`format.rs`: an envelope around JSON,
//! MessagePack or postcard, shared by every store), plus, in process, a typed copy so a
//! memory hit clones the value instead of decoding it.

use std::any::Any;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::format::{DecodeError, EncodeError, Format, ReadFormat, Stamp};

/// Produces an owned value from a shared one without a serialization round trip.
///
/// `#[cached]` fills this in at compile time when the value type implements `Clone`
/// (see [`CloneProbe`]); otherwise values are decoded from their JSON bytes.
pub type Cloner<T> = Option<fn(&T) -> T>;

/// A stored value as the stores and the single-flight map share it.
pub(crate) struct Entry {
    /// The stored bytes: an envelope (see `format.rs`: header, then the value in the
    /// cache's codec, maybe compressed), or a previous release's plain JSON. What Redis
    /// holds. (Named `json` for history: it is JSON with the default codec.)
    pub(crate) json: Box<[u8]>,
    /// The encoded size before compression, header excluded (what `max_value_bytes`
    /// bounds).
    encoded_len: usize,
    /// How to read `json`: fingerprint salt and inflate limit.
    read: ReadFormat,
    /// Over `max_value_bytes`: the encoder stopped at the limit, or a bounded read of the
    /// store found more than a value of that size can take. `json` is empty then (nothing
    /// of it is kept, and it must never be stored); `encoded_len` is past the limit, so
    /// every size check refuses it, and `take` answers [`DecodeError::TooLarge`].
    over_limit: bool,
    /// The value itself, when the writer could clone it: a memory hit downcasts and clones.
    typed: Option<Box<dyn Any + Send + Sync>>,
    /// What the typed copy is weighed as (see [`Entry::weight`]); 0 without one.
    typed_weight: usize,
}

/// Allocator bookkeeping and the pointer-rich parts of a typed copy (a `String`'s or `Vec`'s
/// own allocation each cost 16 to 32 bytes beyond their bytes), added to its estimate:
/// calibrated on a four-field struct (two `String`s), whose copy measured 217 bytes against
/// 62 bytes of JSON and a 64-byte struct (`tests/tests/memory_bound.rs`).
const TYPED_OVERHEAD: usize = 96;

/// The weight of a typed copy of `T` encoded in `encoded_len` bytes: its inline size plus
/// its encoding's length as the proxy of its heap part (a `String` or a `Vec` of strings or
/// bytes holds no more than its JSON), plus [`TYPED_OVERHEAD`].
fn typed_weight<T>(encoded_len: usize) -> usize {
    std::mem::size_of::<T>() + encoded_len + TYPED_OVERHEAD
}

/// What a cached absent result (`absent_ttl`) is stored as: a NUL byte first, which no JSON
/// text has, so no value can be mistaken for it.
pub(crate) const ABSENT: &[u8] = b"\0cache-runtime:absent";

impl Entry {
    /// A cached absent result.
    pub(crate) fn absent() -> Entry {
        Entry {
            json: ABSENT.into(),
            encoded_len: ABSENT.len(),
            read: ReadFormat::default(),
            over_limit: false,
            typed: None,
            typed_weight: 0,
        }
    }

    /// Whether this is a cached absent result.
    pub(crate) fn is_absent(&self) -> bool {
        &*self.json == ABSENT
    }

    /// Encodes `value` in `format`'s envelope; keeps a typed copy when a cloner is
    /// available.
    pub(crate) fn encode<T>(
        value: &T,
        cloner: Cloner<T>,
        format: &Format,
    ) -> Result<Entry, serde_json::Error>
    where
        T: Serialize + Send + Sync + 'static,
    {
        let typed = cloner.map(|clone| Box::new(clone(value)) as Box<dyn Any + Send + Sync>);
        Entry::encoded(format.encode(value), format, typed).map(Entry::weighed::<T>)
    }

    /// The entry for an encoder's outcome: the stored bytes, or, when the encoder stopped at
    /// the limit, an entry [over the limit](Self::over_limit) that every size check refuses
    /// (so the caller reports `ValueTooLarge` / counts `too_large`, as for any value over
    /// `max_value_bytes`). The typed copy is kept: in-process followers of a load still get
    /// the value it returned.
    fn encoded(
        outcome: Result<(Vec<u8>, usize), EncodeError>,
        format: &Format,
        typed: Option<Box<dyn Any + Send + Sync>>,
    ) -> Result<Entry, serde_json::Error> {
        match outcome {
            Ok((bytes, encoded_len)) => Ok(Entry {
                json: bytes.into_boxed_slice(),
                encoded_len,
                read: format.read,
                over_limit: false,
                typed,
                typed_weight: 0,
            }),
            Err(EncodeError::TooLarge) => {
                Ok(Entry { typed, ..Entry::over_limit(format.read.limit, format.read) })
            }
            Err(EncodeError::Codec(error)) => Err(error),
        }
    }

    /// An entry known to be over `limit` without its bytes (see the `over_limit` field):
    /// `at_least` is what was seen of it (its size counts as at least `limit + 1`).
    pub(crate) fn over_limit(at_least: usize, read: ReadFormat) -> Entry {
        Entry {
            json: Box::default(),
            encoded_len: at_least.max(read.limit.saturating_add(1)),
            read,
            over_limit: true,
            typed: None,
            typed_weight: 0,
        }
    }

    /// This entry with its typed copy (if any) weighed as a copy of `T`.
    fn weighed<T>(mut self) -> Entry {
        if self.typed.is_some() {
            self.typed_weight = typed_weight::<T>(self.encoded_len);
        }
        self
    }

    /// What this entry costs in process memory, as the stores' weighers count it: the entry
    /// and its `Arc`, the stored bytes, and the typed copy's estimate (its inline size plus
    /// its encoding's length plus a fixed overhead: the encoding is the proxy of the copy's
    /// heap part, which cannot be measured for an arbitrary `T`).
    pub(crate) fn weight(&self) -> usize {
        // The `Arc`'s two counters, and the allocator's header of each allocation.
        const ARC_AND_HEADERS: usize = 16 + 2 * 16;
        std::mem::size_of::<Entry>() + ARC_AND_HEADERS + self.json.len() + self.typed_weight
    }

    /// An entry for a value decoded from `source`: the same bytes, and a typed copy when a
    /// cloner is available (what the near cache holds).
    pub(crate) fn with_copy<T>(source: &Entry, value: &T, cloner: Cloner<T>) -> Entry
    where
        T: Send + Sync + 'static,
    {
        let typed = cloner.map(|clone| Box::new(clone(value)) as Box<dyn Any + Send + Sync>);
        Entry {
            json: source.json.clone(),
            encoded_len: source.encoded_len,
            read: source.read,
            over_limit: source.over_limit,
            typed,
            typed_weight: 0,
        }
        .weighed::<T>()
    }

    /// [`encode`](Self::encode) with the traced fingerprint (see `format.rs`) and how long
    /// the load took: what a load, which knows `T: DeserializeOwned`, stores.
    pub(crate) fn encode_traced<T>(
        value: &T,
        cloner: Cloner<T>,
        format: &Format,
        load_time: Option<std::time::Duration>,
    ) -> Result<Entry, serde_json::Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let typed = cloner.map(|clone| Box::new(clone(value)) as Box<dyn Any + Send + Sync>);
        Entry::encoded(format.encode_traced(value, load_time), format, typed)
            .map(Entry::weighed::<T>)
    }

    /// Encodes a borrowed value (the programmatic `set`): no typed copy.
    pub(crate) fn encode_unsized<T>(value: &T, format: &Format) -> Result<Entry, serde_json::Error>
    where
        T: Serialize + ?Sized,
    {
        Entry::encoded(format.encode(value), format, None)
    }

    /// An entry read back from a remote store, read with the default [`ReadFormat`].
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn from_json(json: Vec<u8>) -> Entry {
        Entry::from_stored(json, ReadFormat::default())
    }

    /// An entry read back from a remote store: bytes only, decoded on `take` with `read`.
    pub(crate) fn from_stored(bytes: Vec<u8>, read: ReadFormat) -> Entry {
        Entry {
            encoded_len: bytes.len(),
            json: bytes.into_boxed_slice(),
            read,
            over_limit: false,
            typed: None,
            typed_weight: 0,
        }
    }

    /// The size `max_value_bytes` applies to: the encoded value before compression (the
    /// stored payload is never larger; the header, under [`MAX_HEADER`](crate::format::MAX_HEADER)
    /// bytes, is not counted), so a reader never inflates past the limit the writer
    /// honoured. For an entry over the limit, `limit + 1` (or what a bounded read saw):
    /// encoding stopped there, so the real size is never computed.
    pub(crate) fn size(&self) -> usize {
        self.encoded_len
    }

    /// When the value was written and how long its load took, from its header (`None` for
    /// a `cr1` value, a previous release's plain JSON, or an absent result).
    pub(crate) fn stamp(&self) -> Option<Stamp> {
        Stamp::of(&self.json)
    }

    /// An owned `T`: a clone of the typed copy when there is one of that type, else decoded
    /// from the stored bytes (checking the envelope's fingerprint).
    pub(crate) fn take<T>(&self, cloner: Cloner<T>) -> Result<T, DecodeError>
    where
        T: DeserializeOwned + 'static,
    {
        if let (Some(clone), Some(typed)) = (cloner, &self.typed) {
            if let Some(value) = typed.downcast_ref::<T>() {
                return Ok(clone(value));
            }
        }
        if self.over_limit {
            return Err(DecodeError::TooLarge(self.encoded_len));
        }
        self.read.decode(&self.json)
    }
}

/// Chooses a [`Cloner`] for `T` at compile time (autoref specialization): `Some(T::clone)`
/// when `T: Clone`, `None` otherwise. Used by generated code as
/// `(&CloneProbe::<T>::new()).cloner()` with both traits in scope.
#[doc(hidden)]
pub struct CloneProbe<T>(PhantomData<fn() -> T>);

impl<T> CloneProbe<T> {
    #[doc(hidden)]
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        CloneProbe(PhantomData)
    }
}

/// Picked when `T: Clone`.
#[doc(hidden)]
pub trait ViaClone<T> {
    fn cloner(&self) -> Cloner<T>;
}

impl<T: Clone> ViaClone<T> for CloneProbe<T> {
    fn cloner(&self) -> Cloner<T> {
        Some(T::clone)
    }
}

/// The fallback, one autoref further away.
#[doc(hidden)]
pub trait ViaDecode<T> {
    fn cloner(&self) -> Cloner<T>;
}

impl<T> ViaDecode<T> for &CloneProbe<T> {
    fn cloner(&self) -> Cloner<T> {
        None
    }
}

#[cfg(test)]
#[allow(clippy::needless_borrow)] // the borrow is what selects the impl
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
    struct Cloneable(u32);
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct NotClone(u32);

    #[test]
    fn probe_picks_clone_only_when_available() {
        assert!((&CloneProbe::<Cloneable>::new()).cloner().is_some());
        assert!((&CloneProbe::<NotClone>::new()).cloner().is_none());
    }

    #[test]
    fn entries_round_trip_with_and_without_typed_copy() {
        let cloner = (&CloneProbe::<Cloneable>::new()).cloner();
        let entry = Entry::encode(&Cloneable(7), cloner, &Format::default()).unwrap();
        assert!(entry.json.starts_with(b"cr2:j:-:") && entry.json.ends_with(b":0:7"));
        assert!(entry.stamp().is_some());
        assert_eq!(entry.take(cloner).unwrap(), Cloneable(7));
        // Without the typed copy, from the bytes.
        assert_eq!(entry.take::<Cloneable>(None).unwrap(), Cloneable(7));
        // A different type is another schema: never decoded into.
        assert!(matches!(entry.take::<NotClone>(None), Err(DecodeError::Schema)));
        // A previous release's plain JSON decodes as any type.
        assert_eq!(Entry::from_json(b"7".to_vec()).take::<NotClone>(None).unwrap(), NotClone(7));
        assert!(Entry::from_json(b"\"x\"".to_vec()).take::<u32>(None).is_err());
    }
}
