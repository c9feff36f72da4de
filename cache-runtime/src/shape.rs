//! Which return values of an annotated function are cached: the value of `T`, of `Some`, of
//! `Ok`, of `Ok(Some)`, of `Some(Ok)`. `Err` and `None` never are.
//!
//! The shape is chosen from the return type the compiler resolved, never from how it is
//! written: the generated code asks [`ShapeProbe`] with autoref specialization, so an alias
//! (`type Res<T> = Result<T, String>`), a renamed import or a re-ordered alias parameter is
//! the type it stands for.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

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

/// Maps a return type `R` to the value type cached for it: `T`, `Option<T>`, `Result<T, E>`,
/// `Result<Option<T>, E>` or `Option<Result<T, E>>`, chosen by [`ShapeProbe`].
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
/// `-> Option<Result<T, E>>`: `Some(Ok)` is cached, `None` is absent, `Some(Err)` failed.
#[doc(hidden)]
pub struct OptionResultShape;

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

impl<T, E> Shape<Option<Result<T, E>>> for OptionResultShape {
    type Value = T;
    fn outcome(returned: &Option<Result<T, E>>) -> Outcome<'_, T> {
        match returned {
            Some(Ok(value)) => Outcome::Value(value),
            None => Outcome::Absent,
            Some(Err(_)) => Outcome::Failed,
        }
    }
    fn from_value(value: T) -> Option<Result<T, E>> {
        Some(Ok(value))
    }
    fn absent() -> Option<Option<Result<T, E>>> {
        Some(None)
    }
}

// ---- choosing the shape from the resolved type (autoref specialization) ----------------------

/// Asks which shape the return type `R` has: `(&&&ShapeProbe::<R>::new()).shape()` with the
/// four `By*` traits in scope answers a [`Shaped`], taking the most specific impl that
/// applies (nested shapes, then `Result`, then `Option`, then any `T`). The compiler resolves
/// `R` first, so aliases and renamed imports are seen through; in a generic function a type
/// parameter is a plain value.
#[doc(hidden)]
pub struct ShapeProbe<R>(PhantomData<fn() -> R>);

impl<R> Clone for ShapeProbe<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for ShapeProbe<R> {}

impl<R> ShapeProbe<R> {
    /// The probe for `R`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        ShapeProbe(PhantomData)
    }

    /// The probe for the type of `returned` (for return types a `let` cannot name).
    pub const fn of(_returned: &R) -> Self {
        ShapeProbe(PhantomData)
    }
}

/// The shape `S` chosen for the return type `R`, as a value the generated code passes on.
#[doc(hidden)]
pub struct Shaped<S, R>(PhantomData<fn() -> (S, R)>);

impl<S, R> Clone for Shaped<S, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S, R> Copy for Shaped<S, R> {}

impl<S, R> Shaped<S, R> {
    const NEW: Self = Shaped(PhantomData);
}

impl<S: Shape<R>, R> Shaped<S, R> {
    /// Classifies `returned` (the value of `Ok`, `Some`, ...; absent; failed).
    pub fn outcome(self, returned: &R) -> Outcome<'_, S::Value> {
        S::outcome(returned)
    }

    /// The probe for whether the value type is `Clone` (see `CloneProbe`).
    pub fn clone_probe(self) -> crate::codec::CloneProbe<S::Value> {
        crate::codec::CloneProbe::new()
    }

    /// The probe for whether the value type can be stored (see [`cacheable`]).
    pub fn value_probe(self) -> ValueProbe<S, R> {
        ValueProbe(PhantomData)
    }
}

/// Picked for `Result<Option<T>, E>` and `Option<Result<T, E>>`.
#[doc(hidden)]
pub trait ByNesting {
    /// The shape.
    type Shaped;
    /// The chosen shape.
    fn shape(self) -> Self::Shaped;
}
impl<T, E> ByNesting for &&&ShapeProbe<Result<Option<T>, E>> {
    type Shaped = Shaped<ResultOptionShape, Result<Option<T>, E>>;
    fn shape(self) -> Self::Shaped {
        Shaped::NEW
    }
}
impl<T, E> ByNesting for &&&ShapeProbe<Option<Result<T, E>>> {
    type Shaped = Shaped<OptionResultShape, Option<Result<T, E>>>;
    fn shape(self) -> Self::Shaped {
        Shaped::NEW
    }
}

/// Picked for `Result<T, E>`.
#[doc(hidden)]
pub trait ByResult {
    /// The shape.
    type Shaped;
    /// The chosen shape.
    fn shape(self) -> Self::Shaped;
}
impl<T, E> ByResult for &&ShapeProbe<Result<T, E>> {
    type Shaped = Shaped<ResultShape, Result<T, E>>;
    fn shape(self) -> Self::Shaped {
        Shaped::NEW
    }
}

/// Picked for `Option<T>`.
#[doc(hidden)]
pub trait ByOption {
    /// The shape.
    type Shaped;
    /// The chosen shape.
    fn shape(self) -> Self::Shaped;
}
impl<T> ByOption for &ShapeProbe<Option<T>> {
    type Shaped = Shaped<OptionShape, Option<T>>;
    fn shape(self) -> Self::Shaped {
        Shaped::NEW
    }
}

/// Picked for any other `T`.
#[doc(hidden)]
pub trait ByPlain {
    /// The shape.
    type Shaped;
    /// The chosen shape.
    fn shape(self) -> Self::Shaped;
}
impl<R> ByPlain for ShapeProbe<R> {
    type Shaped = Shaped<PlainShape, R>;
    fn shape(self) -> Self::Shaped {
        Shaped::NEW
    }
}

// ---- whether the value can be stored, reported on the return type ----------------------------

/// Asks whether the value type of `S` for `R` can be stored: `(&&probe).verdict()` with
/// [`ViaSerde`] and [`ViaAnything`] in scope answers [`Storable`] or [`NotStorable`], and
/// [`cacheable`] accepts only the first, with a message naming the cause (instead of
/// `Serialize` errors deep in the runtime's bounds, which the error type then silences).
#[doc(hidden)]
pub struct ValueProbe<S, R>(PhantomData<fn() -> (S, R)>);

/// A value type the cache can store.
#[doc(hidden)]
pub struct Storable<S, R>(PhantomData<fn() -> (S, R)>);

/// A value type the cache cannot store.
#[doc(hidden)]
pub struct NotStorable<S, R>(PhantomData<fn() -> (S, R)>);

/// Picked when the value is `Serialize + DeserializeOwned + Send + Sync + 'static`.
#[doc(hidden)]
pub trait ViaSerde<S, R> {
    /// The verdict.
    fn verdict(&self) -> Storable<S, R>;
}
impl<S: Shape<R>, R> ViaSerde<S, R> for &ValueProbe<S, R>
where
    S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn verdict(&self) -> Storable<S, R> {
        Storable(PhantomData)
    }
}

/// The fallback, one autoref further away.
#[doc(hidden)]
pub trait ViaAnything<S, R> {
    /// The verdict.
    fn verdict(&self) -> NotStorable<S, R>;
}
impl<S, R> ViaAnything<S, R> for ValueProbe<S, R> {
    fn verdict(&self) -> NotStorable<S, R> {
        NotStorable(PhantomData)
    }
}

/// The value type a verdict is about, to name it in the message.
#[doc(hidden)]
pub trait VerdictOn {
    /// The cached value type.
    type Value;
}
impl<S: Shape<R>, R> VerdictOn for Storable<S, R> {
    type Value = S::Value;
}
impl<S: Shape<R>, R> VerdictOn for NotStorable<S, R> {
    type Value = S::Value;
}

/// Implemented by the verdict on a value type the cache can store only.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "the cached value `{V}` must be `Serialize + DeserializeOwned + Send + Sync + 'static`",
    label = "the cached value (of `Ok`, `Some` or the whole type) is stored serialized: `{V}` must implement serde's `Serialize` and `DeserializeOwned`",
    note = "derive them: `#[derive(serde::Serialize, serde::Deserialize)]`; for `Arc<T>` or `Rc<T>`, enable serde's `rc` feature; a borrowed type (`&str`) or `impl Trait` cannot be read back: return an owned, named type"
)]
pub trait CacheableValue<V> {
    /// The shape, once accepted.
    type Shaped;
}
impl<S: Shape<R>, R> CacheableValue<S::Value> for Storable<S, R> {
    type Shaped = Shaped<S, R>;
}

/// The shape, once its value type was found storable; a compile error spanned on the return
/// type otherwise (whose error type silences the runtime's own bounds).
pub fn cacheable<C>(_verdict: C) -> <C as CacheableValue<C::Value>>::Shaped
where
    C: VerdictOn + CacheableValue<<C as VerdictOn>::Value>,
    <C as CacheableValue<C::Value>>::Shaped: Default,
{
    Default::default()
}

impl<S, R> Default for Shaped<S, R> {
    fn default() -> Self {
        Shaped::NEW
    }
}

/// Shapes with an absent result (`None`, `Ok(None)`), which `absent_ttl` caches.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`absent_ttl` caches absent results, and this function has none",
    label = "`absent_ttl` needs a return type with an absent result: `Option<T>`, `Result<Option<T>, E>` or `Option<Result<T, E>>` (through any alias)"
)]
pub trait AbsentShape {}
impl AbsentShape for OptionShape {}
impl AbsentShape for ResultOptionShape {}
impl AbsentShape for OptionResultShape {}

/// Compiles only for a shape with an absent result.
pub fn absent_ttl_applies<S: AbsentShape, R>(_shape: Shaped<S, R>) {}

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    use super::*;

    type Res<T> = Result<T, String>;
    type Maybe<T> = Option<T>;
    type Flipped<E, T> = Result<T, E>;

    fn id<S: 'static, R>(_: Shaped<S, R>) -> TypeId {
        TypeId::of::<S>()
    }

    /// The shape the probe picks for a concrete type, as the generated code asks it (in a
    /// generic function a type parameter is a plain value, so this is a macro).
    macro_rules! pick {
        ($r:ty) => {{
            #[allow(clippy::needless_borrow)]
            let shape = (&&&ShapeProbe::<$r>::new()).shape();
            id(shape)
        }};
    }

    #[test]
    fn the_shape_follows_the_resolved_type() {
        assert_eq!(pick!(Res<u64>), TypeId::of::<ResultShape>());
        assert_eq!(pick!(Maybe<u64>), TypeId::of::<OptionShape>());
        assert_eq!(pick!(Result<Maybe<u64>, String>), TypeId::of::<ResultOptionShape>());
        assert_eq!(pick!(Flipped<String, u64>), TypeId::of::<ResultShape>());
        assert_eq!(pick!(Option<Res<u64>>), TypeId::of::<OptionResultShape>());
        assert_eq!(pick!(u64), TypeId::of::<PlainShape>());
    }

    #[test]
    fn option_of_result_caches_some_ok_only() {
        type S = OptionResultShape;
        let ok: Option<Result<u64, String>> = Some(Ok(1));
        assert!(matches!(<S as Shape<_>>::outcome(&ok), Outcome::Value(1)));
        assert!(matches!(<S as Shape<_>>::outcome(&Some(Err::<u64, _>("e"))), Outcome::Failed));
        assert!(matches!(<S as Shape<_>>::outcome(&None::<Result<u64, String>>), Outcome::Absent));
    }
}
