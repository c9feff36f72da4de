//! Rules between arguments, checked once each argument was read on its own (`attr.rs`).

use proc_macro2::Span;

use crate::attr::{Args, Attribute};
use crate::errors::Errors;

/// How `#[cached]` and `#[cache_put]` store a value, checked: durations in milliseconds.
pub(crate) struct Storage {
    pub(crate) ttl: u64,
    pub(crate) lock: bool,
    /// Total keep time for stale fallback, longer than `ttl`.
    pub(crate) stale: Option<u64>,
    /// Age that triggers an early refresh, shorter than `ttl`.
    pub(crate) refresh: Option<u64>,
    /// How long absent results are cached.
    pub(crate) absent_ttl: Option<u64>,
    /// XFetch's β (`early`).
    pub(crate) early: Option<f64>,
    /// How long a caller holding a stale value waits for the body (`timeout`).
    pub(crate) timeout: Option<u64>,
    /// Use the cache's near cache, if it has one (`near = false` opts out).
    pub(crate) near: bool,
    /// Sliding expiration: a hit extends the value's life by this, up to `ttl`.
    pub(crate) idle: Option<u64>,
}

impl Args {
    /// Reports every rule between arguments that does not hold. Returns how a key-writing
    /// attribute stores, or `None` for `#[invalidates]` and when `ttl` is missing or invalid.
    pub(crate) fn check(&self, errors: &mut Errors) -> Option<Storage> {
        let attribute = self.attribute.name();
        if self.attribute == Attribute::Invalidates {
            if self.templates.is_empty() {
                errors.push(Span::call_site(), "`#[invalidates]` needs at least one key or pattern: `#[invalidates(\"vehicle:<v.id>\", \"homepage:*\")]`");
            }
            return None;
        }
        if !self.key.is_written() {
            errors.push(Span::call_site(), format!("missing `key = \"...\"`: `#[{attribute}]` needs a key template such as `key = \"vehicle:<id>\"`"));
        }
        if !self.ttl.is_written() {
            errors.push(
                Span::call_site(),
                format!("missing `ttl = \"...\"`: `#[{attribute}]` needs a time to live such as `ttl = \"15m\"`"),
            );
        }
        let ttl = self.ttl.get()?.millis;
        if let Some(stale) = self.stale.get().filter(|stale| stale.millis <= ttl) {
            errors.push(stale.span, "`stale` must be longer than `ttl`: it is how long a value is kept in all, to be served when the body fails after the value expired");
        }
        if let Some(refresh) = self.refresh.get().filter(|refresh| refresh.millis >= ttl) {
            errors.push(refresh.span, "`refresh` must be shorter than `ttl`: it is the age at which a hit recomputes the value before it expires");
        }
        if let (Some((_, span)), true) = (self.early.get(), self.refresh.is_written()) {
            errors.push(*span, "`early` and `refresh` exclude each other: both recompute a value before it expires (`refresh` at a fixed age, `early` with XFetch's probability); choose one");
        }
        if let (Some(timeout), false) = (self.timeout.get(), self.stale.is_written()) {
            errors.push(timeout.span, "`timeout` needs `stale`: past the timeout a caller is answered with the expired value that `stale` keeps (the body goes on in the background); without one there is nothing to answer with. Add `stale = \"1h\"`, or remove `timeout`");
        }
        if let Some(idle) = self.idle.get() {
            if idle.millis >= ttl {
                errors.push(idle.span, "`idle` must be shorter than `ttl`: a hit extends the value's life by `idle`, and `ttl` is the absolute cap, counted from when the value was written");
            }
            if self.stale.is_written() {
                errors.push(idle.span, "`idle` and `stale` exclude each other: `idle` ends a value's life once nobody reads it, `stale` keeps it past its `ttl` to serve when the body fails; choose one");
            }
            if self.refresh.is_written() || self.early.is_written() {
                let other = if self.refresh.is_written() { "refresh" } else { "early" };
                errors.push(idle.span, format!("`idle` and `{other}` exclude each other: `{other}` recomputes a value that is still read, which writes it anew and restarts the `ttl` that `idle` keeps as an absolute cap; choose one"));
            }
        }
        Some(Storage {
            ttl,
            lock: self.lock.get().is_some(),
            stale: self.stale.get().map(|stale| stale.millis),
            refresh: self.refresh.get().map(|refresh| refresh.millis),
            absent_ttl: self.absent_ttl.get().map(|absent| absent.millis),
            early: self.early.get().map(|(beta, _)| *beta),
            timeout: self.timeout.get().map(|timeout| timeout.millis),
            near: self.near.get().copied().unwrap_or(true),
            idle: self.idle.get().map(|idle| idle.millis),
        })
    }
}
