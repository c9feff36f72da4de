//! How values are stored: JSON bytes (readable in `redis-cli`, shared by every store), plus,
//! in process, a typed copy so a memory hit clones the value instead of decoding it.

use std::any::Any;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Produces an owned value from a shared one without a serialization round trip.
///
/// `#[cached]` fills this in at compile time when the value type implements `Clone`
/// (see [`CloneProbe`]); otherwise values are decoded from their JSON bytes.
pub type Cloner<T> = Option<fn(&T) -> T>;

/// A stored value as the stores and the single-flight map share it.
pub(crate) struct Entry {
    /// The value serialized as JSON: what Redis holds and what any type can be decoded from.
    pub(crate) json: Box<[u8]>,
    /// The value itself, when the writer could clone it: a memory hit downcasts and clones.
    typed: Option<Box<dyn Any + Send + Sync>>,
}

/// What a cached absent result (`absent_ttl`) is stored as: a NUL byte first, which no JSON
/// text has, so no value can be mistaken for it.
pub(crate) const ABSENT: &[u8] = b"\0cache-runtime:absent";

impl Entry {
    /// A cached absent result.
    pub(crate) fn absent() -> Entry {
        Entry { json: ABSENT.into(), typed: None }
    }

    /// Whether this is a cached absent result.
    pub(crate) fn is_absent(&self) -> bool {
        &*self.json == ABSENT
    }

    /// Encodes `value`; keeps a typed copy when a cloner is available.
    pub(crate) fn encode<T>(value: &T, cloner: Cloner<T>) -> Result<Entry, serde_json::Error>
    where
        T: Serialize + Send + Sync + 'static,
    {
        let json = serde_json::to_vec(value)?.into_boxed_slice();
        let typed = cloner.map(|clone| Box::new(clone(value)) as Box<dyn Any + Send + Sync>);
        Ok(Entry { json, typed })
    }

    /// An entry for a value decoded from `json`: the bytes, and a typed copy when a cloner
    /// is available (what the near cache holds).
    pub(crate) fn with_copy<T>(json: &[u8], value: &T, cloner: Cloner<T>) -> Entry
    where
        T: Send + Sync + 'static,
    {
        let typed = cloner.map(|clone| Box::new(clone(value)) as Box<dyn Any + Send + Sync>);
        Entry { json: json.into(), typed }
    }

    /// An entry read back from a remote store: bytes only.
    pub(crate) fn from_json(json: Vec<u8>) -> Entry {
        Entry { json: json.into_boxed_slice(), typed: None }
    }

    /// An owned `T`: a clone of the typed copy when there is one of that type, else decoded.
    pub(crate) fn take<T>(&self, cloner: Cloner<T>) -> Result<T, serde_json::Error>
    where
        T: DeserializeOwned + 'static,
    {
        if let (Some(clone), Some(typed)) = (cloner, &self.typed) {
            if let Some(value) = typed.downcast_ref::<T>() {
                return Ok(clone(value));
            }
        }
        serde_json::from_slice(&self.json)
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
        let entry = Entry::encode(&Cloneable(7), cloner).unwrap();
        assert_eq!(&*entry.json, b"7");
        assert_eq!(entry.take(cloner).unwrap(), Cloneable(7));
        // A different type decodes from the JSON bytes.
        assert_eq!(entry.take::<NotClone>(None).unwrap(), NotClone(7));
        assert!(Entry::from_json(b"\"x\"".to_vec()).take::<u32>(None).is_err());
    }
}
