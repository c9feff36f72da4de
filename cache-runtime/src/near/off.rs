//! The near cache in a build without the `redis` feature: there is no Redis to keep an L1
//! coherent, so there is none. [`Near`] is an empty type, so a cache's `Option<Near>` is
//! always `None` and the read and write paths that ask for it compile to nothing; they
//! need no `cfg` of their own. The real one is `near/mod.rs`.

use std::sync::Arc;

use crate::codec::{Cloner, Entry};
use crate::policy::Policy;
use crate::scope::Scope;
use crate::store::Found;

/// No value of it exists.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Epoch {}

/// No value of it exists.
pub(crate) enum Near {}

impl Near {
    pub(crate) fn is_live(&self) -> bool {
        match *self {}
    }

    pub(crate) fn answer<T>(
        &self,
        _: &str,
        _: &Policy,
        _: Cloner<T>,
        _: impl FnOnce() -> std::time::Duration,
    ) -> Answer<T> {
        match *self {}
    }

    pub(crate) fn epoch(&self, _: &str) -> Option<Epoch> {
        match *self {}
    }

    pub(crate) fn insert(&self, _: &str, epoch: Epoch, _: &Found, _: Arc<Entry>) {
        match epoch {}
    }

    pub(crate) fn evict(&self, _: &Scope) {
        match *self {}
    }

    pub(crate) fn size(&self) -> (u64, u64) {
        match *self {}
    }

    pub(crate) fn trouble(&self) -> Option<String> {
        match *self {}
    }
}

/// What the near cache answers (never asked in this build).
#[allow(dead_code)]
pub(crate) enum Answer<T> {
    Hit(T),
    Due,
    Miss,
}
