//! Rules between arguments, checked once each argument was read on its own (`attr.rs`): one
//! function per rule, listed in [`RULES`], each spanned on the user's text (the argument it
//! is about, or the whole attribute for a missing one).
//!
//! A rule reads the slots of [`Args`]; an argument the attribute does not accept is never
//! written, so every rule applies to every attribute.

use proc_macro2::Span;

use crate::attr::{Args, Attribute};
use crate::errors::Errors;

/// The largest `limit` (the runtime's `MAX_RATE_LIMIT`).
const MAX_LIMIT: u64 = 1_000_000;

/// Every rule, in the order their errors are reported.
const RULES: &[fn(&Args, &mut Errors)] = &[
    templates_required,
    key_required,
    ttl_required,
    limit_required,
    per_required,
    stale_longer_than_ttl,
    refresh_shorter_than_ttl,
    early_excludes_refresh,
    timeout_needs_stale,
    idle_shorter_than_ttl,
    idle_excludes_stale,
    idle_excludes_refresh_and_early,
    limit_in_range,
    fail_open_excludes_fail_closed,
    tags_exclude_idle,
];

impl Args {
    /// Reports every rule between arguments that does not hold.
    pub(crate) fn check(&self, errors: &mut Errors) {
        for rule in RULES {
            rule(self, errors);
        }
    }
}

fn templates_required(args: &Args, errors: &mut Errors) {
    if args.attribute == Attribute::Invalidates
        && args.templates.is_empty()
        && !args.tags.is_written()
    {
        errors.push(Span::call_site(), "`#[invalidates]` needs at least one key, pattern or tag: `#[invalidates(\"vehicle:<v.id>\", \"homepage:*\")]` or `#[invalidates(tags = [\"listings\"])]`");
    }
}

/// `idle` extends a value's life on each hit, in the read path, which never sees tags: the
/// tag sets could let go of a key that lives on. Not supported together (yet).
fn tags_exclude_idle(args: &Args, errors: &mut Errors) {
    if let (Some(span), Some(_)) = (args.tags.span(), args.idle.get()) {
        errors.push(span, "`tags` cannot be combined with `idle` (yet): a hit extends the value's life without its tags knowing; use `ttl` alone, or drop `tags`");
    }
}

fn key_required(args: &Args, errors: &mut Errors) {
    if args.key.is_missing() {
        let (attribute, example) = (args.attribute.name(), args.attribute.example_key());
        errors.push(Span::call_site(), format!("missing `key = \"...\"`: `#[{attribute}]` needs a key template such as `key = \"{example}\"`"));
    }
}

fn ttl_required(args: &Args, errors: &mut Errors) {
    if args.ttl.is_missing() {
        let attribute = args.attribute.name();
        errors.push(
            Span::call_site(),
            format!("missing `ttl = \"...\"`: `#[{attribute}]` needs a time to live such as `ttl = \"15m\"`"),
        );
    }
}

fn limit_required(args: &Args, errors: &mut Errors) {
    if args.limit.is_missing() {
        errors.push(Span::call_site(), "missing `limit = ...`: `#[rate_limit]` needs the calls admitted per window, such as `limit = 5`");
    }
}

fn per_required(args: &Args, errors: &mut Errors) {
    if args.per.is_missing() {
        errors.push(
            Span::call_site(),
            "missing `per = \"...\"`: `#[rate_limit]` needs the window, such as `per = \"1m\"`",
        );
    }
}

fn stale_longer_than_ttl(args: &Args, errors: &mut Errors) {
    if let (Some(ttl), Some(stale)) = (args.ttl.get(), args.stale.get()) {
        if stale.millis <= ttl.millis {
            errors.push(stale.span, "`stale` must be longer than `ttl`: it is how long a value is kept in all, to be served when the body fails after the value expired");
        }
    }
}

fn refresh_shorter_than_ttl(args: &Args, errors: &mut Errors) {
    if let (Some(ttl), Some(refresh)) = (args.ttl.get(), args.refresh.get()) {
        if refresh.millis >= ttl.millis {
            errors.push(refresh.span, "`refresh` must be shorter than `ttl`: it is the age at which a hit recomputes the value before it expires");
        }
    }
}

fn early_excludes_refresh(args: &Args, errors: &mut Errors) {
    if let (Some(early), true) = (args.early.get(), args.refresh.is_written()) {
        errors.push(early.span, "`early` and `refresh` exclude each other: both recompute a value before it expires (`refresh` at a fixed age, `early` with XFetch's probability); choose one");
    }
}

fn timeout_needs_stale(args: &Args, errors: &mut Errors) {
    if let (Some(timeout), false) = (args.timeout.get(), args.stale.is_written()) {
        errors.push(timeout.span, "`timeout` needs `stale`: past the timeout a caller is answered with the expired value that `stale` keeps (the body goes on in the background); without one there is nothing to answer with. Add `stale = \"1h\"`, or remove `timeout`");
    }
}

fn idle_shorter_than_ttl(args: &Args, errors: &mut Errors) {
    if let (Some(ttl), Some(idle)) = (args.ttl.get(), args.idle.get()) {
        if idle.millis >= ttl.millis {
            errors.push(idle.span, "`idle` must be shorter than `ttl`: a hit extends the value's life by `idle`, and `ttl` is the absolute cap, counted from when the value was written");
        }
    }
}

fn idle_excludes_stale(args: &Args, errors: &mut Errors) {
    if let (Some(idle), true) = (args.idle.get(), args.stale.is_written()) {
        errors.push(idle.span, "`idle` and `stale` exclude each other: `idle` ends a value's life once nobody reads it, `stale` keeps it past its `ttl` to serve when the body fails; choose one");
    }
}

fn idle_excludes_refresh_and_early(args: &Args, errors: &mut Errors) {
    let Some(idle) = args.idle.get() else { return };
    let other = if args.refresh.is_written() {
        "refresh"
    } else if args.early.is_written() {
        "early"
    } else {
        return;
    };
    errors.push(idle.span, format!("`idle` and `{other}` exclude each other: `{other}` recomputes a value that is still read, which writes it anew and restarts the `ttl` that `idle` keeps as an absolute cap; choose one"));
}

fn limit_in_range(args: &Args, errors: &mut Errors) {
    let Some(limit) = args.limit.get() else { return };
    if limit.value == 0 {
        errors
            .push(limit.span, "`limit` must be at least 1: it is how many calls the window admits");
    } else if limit.value > MAX_LIMIT {
        errors.push(
            limit.span,
            "`limit` must be at most 1000000: the exact window keeps one entry per admitted call",
        );
    }
}

/// Spanned on whichever of the two was written last.
fn fail_open_excludes_fail_closed(args: &Args, errors: &mut Errors) {
    let (Some(()), Some(())) = (args.fail_open.get(), args.fail_closed.get()) else { return };
    let last = if args.fail_open.position() > args.fail_closed.position() {
        &args.fail_open
    } else {
        &args.fail_closed
    };
    if let Some(span) = last.span() {
        errors.push(span, "`fail_open` and `fail_closed` exclude each other: choose what a call gets when the store fails (`fail_open`, the default, admits it)");
    }
}
