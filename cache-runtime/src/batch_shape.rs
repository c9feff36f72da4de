//! What a batch function returns (`#[cached_batch]`, [`Cache::get_or_load_many`]): a
//! `HashMap<K, V, S>` or a `Result` of one. Decided by the type the compiler resolves, not by
//! how it is written: an alias of either works.
//!
//! [`Cache::get_or_load_many`]: crate::Cache::get_or_load_many

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hash};

/// The map of a [`BatchReturn`].
pub(crate) type BatchMap<R> =
    HashMap<<R as BatchReturn>::Key, <R as BatchReturn>::Value, <R as BatchReturn>::Hasher>;

/// The return type of a batch function: `HashMap<K, V, S>` (every call succeeds) or
/// `Result<HashMap<K, V, S>, E>` (`Err` stores nothing).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[cached_batch]` functions return `HashMap<K, V>` or `Result<HashMap<K, V>, E>`, not `{Self}`",
    label = "not a `HashMap` or a `Result` of one",
    note = "the map holds one value per element of the batch parameter that has one"
)]
pub trait BatchReturn: Sized {
    /// The element type: the map's keys.
    type Key: Eq + Hash;
    /// The cached value type.
    type Value;
    /// The map's hasher.
    type Hasher: BuildHasher + Default;
    /// The error type (`Infallible` for a plain map).
    type Error;
    /// The map, or the error.
    fn into_result(self) -> Result<BatchMap<Self>, Self::Error>;
    /// Rebuilds the return value.
    fn from_result(result: Result<BatchMap<Self>, Self::Error>) -> Self;
}

impl<K, V, S> BatchReturn for HashMap<K, V, S>
where
    K: Eq + Hash,
    S: BuildHasher + Default,
{
    type Key = K;
    type Value = V;
    type Hasher = S;
    type Error = Infallible;

    fn into_result(self) -> Result<HashMap<K, V, S>, Infallible> {
        Ok(self)
    }

    fn from_result(result: Result<HashMap<K, V, S>, Infallible>) -> Self {
        match result {
            Ok(map) => map,
            Err(never) => match never {},
        }
    }
}

impl<K, V, S, E> BatchReturn for Result<HashMap<K, V, S>, E>
where
    K: Eq + Hash,
    S: BuildHasher + Default,
{
    type Key = K;
    type Value = V;
    type Hasher = S;
    type Error = E;

    fn into_result(self) -> Result<HashMap<K, V, S>, E> {
        self
    }

    fn from_result(result: Result<HashMap<K, V, S>, E>) -> Self {
        result
    }
}
