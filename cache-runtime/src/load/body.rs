//! The body of a cached call, and whether it may outlive the caller.
//!
//! Most bodies borrow the caller's arguments, so they run in the caller: [`Inline`]. With
//! `refresh`, `early` or `timeout`, the attribute makes the body own its arguments
//! ([`Detachable`]), and the runtime may finish it on a task of its own: a refresh runs
//! while the caller returns the current value at hit latency, and a slow load goes on
//! after a caller with a stale value was answered.

use std::future::Future;

/// What to do with a body that may outlive its caller. A trait rather than a closure: its
/// method is where `R: Send + 'static` is known, which spawning needs.
pub(crate) trait Detach<R> {
    /// What the caller gets back.
    type Output;

    /// Takes over the started body.
    fn detached<F>(self, body: F) -> Self::Output
    where
        F: Future<Output = R> + Send + 'static,
        R: Send + 'static;
}

/// How the miss path starts a body.
pub(crate) trait Body<R>: Sized {
    /// The body's future when run in the caller.
    type Fut: Future<Output = R>;

    /// Starts the body, to be awaited by the caller.
    fn start(self) -> Self::Fut;

    /// Starts the body and hands it to `then`, when the started body owns everything it
    /// uses; `Err` (both back) when it borrows from the caller.
    fn detach<D: Detach<R>>(self, then: D) -> Result<D::Output, (Self, D)>;
}

/// A body that borrows from its caller.
pub(crate) struct Inline<F>(pub(crate) F);

impl<F, Fut, R> Body<R> for Inline<F>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;

    fn start(self) -> Fut {
        (self.0)()
    }

    fn detach<D: Detach<R>>(self, then: D) -> Result<D::Output, (Self, D)> {
        Err((self, then))
    }
}

/// A body that owns its arguments once started: it may run on a task of its own.
pub(crate) struct Detachable<F>(pub(crate) F);

impl<F, Fut, R> Body<R> for Detachable<F>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    type Fut = Fut;

    fn start(self) -> Fut {
        (self.0)()
    }

    fn detach<D: Detach<R>>(self, then: D) -> Result<D::Output, (Self, D)> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err((self, then)); // no runtime to spawn on: run in the caller
        }
        Ok(then.detached((self.0)()))
    }
}
