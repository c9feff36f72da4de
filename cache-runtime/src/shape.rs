//! Which return values of an annotated function are cached: the value of `T`, of `Some`, of
//! `Ok`, of `Ok(Some)`. `Err` and `None` never are.

/// What a call returned, as the cache sees it.
#[doc(hidden)]
pub enum Outcome<'a, T> {
    /// A value to store.
    Value(&'a T),
    /// `None` (or `Ok(None)`): nothing to store, and concurrent callers may share the answer.
    Absent,
    /// `Err`: nothing to store; concurrent callers run their own body.
    Failed,
}

/// Maps a return type `R` to the value type cached for it. `#[cached]` picks the shape from
/// the written return type: `T`, `Option<T>`, `Result<T, E>` or `Result<Option<T>, E>`.
#[doc(hidden)]
pub trait Shape<R>: 'static {
    /// The type stored in the cache.
    type Value;
    /// Classifies a returned value.
    fn outcome(returned: &R) -> Outcome<'_, Self::Value>;
    /// Rebuilds the return value from a cached value.
    fn from_value(value: Self::Value) -> R;
    /// The return value for "absent", when the shape has one.
    fn absent() -> Option<R>;
}

/// `-> T`: every value is cached.
#[doc(hidden)]
pub struct PlainShape;
/// `-> Option<T>`: `Some` is cached.
#[doc(hidden)]
pub struct OptionShape;
/// `-> Result<T, E>`: `Ok` is cached.
#[doc(hidden)]
pub struct ResultShape;
/// `-> Result<Option<T>, E>`: `Ok(Some)` is cached.
#[doc(hidden)]
pub struct ResultOptionShape;

impl<T> Shape<T> for PlainShape {
    type Value = T;
    fn outcome(returned: &T) -> Outcome<'_, T> {
        Outcome::Value(returned)
    }
    fn from_value(value: T) -> T {
        value
    }
    fn absent() -> Option<T> {
        None
    }
}

impl<T> Shape<Option<T>> for OptionShape {
    type Value = T;
    fn outcome(returned: &Option<T>) -> Outcome<'_, T> {
        match returned {
            Some(value) => Outcome::Value(value),
            None => Outcome::Absent,
        }
    }
    fn from_value(value: T) -> Option<T> {
        Some(value)
    }
    fn absent() -> Option<Option<T>> {
        Some(None)
    }
}

impl<T, E> Shape<Result<T, E>> for ResultShape {
    type Value = T;
    fn outcome(returned: &Result<T, E>) -> Outcome<'_, T> {
        match returned {
            Ok(value) => Outcome::Value(value),
            Err(_) => Outcome::Failed,
        }
    }
    fn from_value(value: T) -> Result<T, E> {
        Ok(value)
    }
    fn absent() -> Option<Result<T, E>> {
        None
    }
}

impl<T, E> Shape<Result<Option<T>, E>> for ResultOptionShape {
    type Value = T;
    fn outcome(returned: &Result<Option<T>, E>) -> Outcome<'_, T> {
        match returned {
            Ok(Some(value)) => Outcome::Value(value),
            Ok(None) => Outcome::Absent,
            Err(_) => Outcome::Failed,
        }
    }
    fn from_value(value: T) -> Result<Option<T>, E> {
        Ok(Some(value))
    }
    fn absent() -> Option<Result<Option<T>, E>> {
        Some(Ok(None))
    }
}
