//! Attribute argument grammar: `name = value` pairs and bare flags, separated by commas.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Expr, Ident, LitStr, Token};

use crate::errors::Errors;
use crate::ttl::parse_ttl;

/// One argument as written: `ident`, `ident = expr`, or (for `#[invalidates]`) a string.
pub(crate) struct RawArg {
    pub(crate) name: Ident,
    pub(crate) value: Option<Expr>,
    /// A bare string literal (`"homepage:*"`), in which case `name` is a placeholder.
    pub(crate) positional: Option<LitStr>,
}

impl Parse for RawArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            return Ok(RawArg {
                name: Ident::new("template", lit.span()),
                value: None,
                positional: Some(lit),
            });
        }
        let name = Ident::parse_any(input)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(RawArg { name, value, positional: None })
    }
}

/// All arguments of one attribute.
pub(crate) struct RawArgs(pub(crate) Vec<RawArg>);

impl Parse for RawArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        Ok(RawArgs(Punctuated::<RawArg, Token![,]>::parse_terminated(input)?.into_iter().collect()))
    }
}

/// A parsed time to live.
pub(crate) struct Ttl {
    pub(crate) millis: u64,
}

/// The arguments of `#[cached]`, validated.
pub(crate) struct CachedArgs {
    /// `None` only after an error was reported.
    pub(crate) key: Option<LitStr>,
    /// `None` only after an error was reported.
    pub(crate) ttl: Option<Ttl>,
    pub(crate) lock: bool,
    pub(crate) cache: Option<Expr>,
    pub(crate) name: Option<LitStr>,
    /// Total keep time for stale fallback, in milliseconds.
    pub(crate) stale: Option<u64>,
    /// Age that triggers an early refresh, in milliseconds.
    pub(crate) refresh: Option<u64>,
}

const CACHED_ARGS: &str = "`key`, `ttl`, `lock`, `stale`, `refresh`, `cache`, `name`";

impl CachedArgs {
    /// Validates every argument, reporting all problems at once. A missing or invalid `key`
    /// or `ttl` is reported and left `None`, so the other arguments are still checked.
    pub(crate) fn from_raw(raw: RawArgs, errors: &mut Errors) -> CachedArgs {
        let mut key = None;
        let mut ttl = None;
        let mut lock = None;
        let mut cache = None;
        let mut name = None;
        let mut stale = None;
        let mut refresh = None;
        let mut seen: Vec<String> = Vec::new();
        for arg in raw.0 {
            if let Some(lit) = &arg.positional {
                errors.push(lit.span(), "expected `name = value`: write `key = \"...\"`");
                continue;
            }
            let arg_name = arg.name.to_string();
            if seen.contains(&arg_name) {
                errors.push(arg.name.span(), format!("duplicate argument `{arg_name}`"));
                continue;
            }
            seen.push(arg_name.clone());
            match arg_name.as_str() {
                "key" => key = string_value(&arg, errors, "key = \"vehicle:<id>\""),
                "name" => name = string_value(&arg, errors, "name = \"get_vehicle\""),
                "ttl" => {
                    if let Some(lit) = string_value(&arg, errors, "ttl = \"15m\"") {
                        match parse_ttl(&lit.value()) {
                            Ok(millis) => ttl = Some(Ttl { millis }),
                            Err(message) => errors.push(lit.span(), message),
                        }
                    }
                }
                "stale" => stale = duration_value(&arg, errors, "stale = \"1h\""),
                "refresh" => refresh = duration_value(&arg, errors, "refresh = \"12m\""),
                "lock" => match arg.value {
                    None => lock = Some(arg.name.span()),
                    Some(value) => errors
                        .push(value.span(), "`lock` is a flag and takes no value: write `lock`"),
                },
                "cache" => match arg.value {
                    Some(value) => cache = Some(value),
                    None => {
                        errors.push(arg.name.span(), "`cache` needs a value: `cache = self.cache`")
                    }
                },
                _ => errors.push(
                    arg.name.span(),
                    format!("unknown argument `{arg_name}`; expected one of {CACHED_ARGS}"),
                ),
            }
        }
        if key.is_none() && !seen.iter().any(|s| s == "key") {
            errors.push(Span::call_site(), "missing `key = \"...\"`: `#[cached]` needs a key template such as `key = \"vehicle:<id>\"`");
        }
        if ttl.is_none() && !seen.iter().any(|s| s == "ttl") {
            errors.push(
                Span::call_site(),
                "missing `ttl = \"...\"`: `#[cached]` needs a time to live such as `ttl = \"15m\"`",
            );
        }
        if let (Some(ttl), Some((stale, span))) = (&ttl, stale) {
            if stale <= ttl.millis {
                errors.push(span, "`stale` must be longer than `ttl`: it is how long a value is kept in all, to be served when the body fails after the value expired");
            }
        }
        if let (Some(ttl), Some((refresh, span))) = (&ttl, refresh) {
            if refresh >= ttl.millis {
                errors.push(span, "`refresh` must be shorter than `ttl`: it is the age at which a hit recomputes the value before it expires");
            }
        }
        CachedArgs {
            key,
            ttl,
            lock: lock.is_some(),
            cache,
            name,
            stale: stale.map(|(millis, _)| millis),
            refresh: refresh.map(|(millis, _)| millis),
        }
    }
}

/// A duration literal (`"1h"`) and its span, or `None` after reporting the error.
fn duration_value(arg: &RawArg, errors: &mut Errors, example: &str) -> Option<(u64, Span)> {
    let lit = string_value(arg, errors, example)?;
    match parse_ttl(&lit.value()) {
        Ok(millis) => Some((millis, lit.span())),
        Err(message) => {
            errors.push(lit.span(), message);
            None
        }
    }
}

/// The string literal value of `arg`, or an error showing the expected form.
fn string_value(arg: &RawArg, errors: &mut Errors, example: &str) -> Option<LitStr> {
    match &arg.value {
        Some(Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(lit), .. })) => Some(lit.clone()),
        Some(other) => {
            errors.push(other.span(), format!("expected a string literal: `{example}`"));
            None
        }
        None => {
            errors.push(arg.name.span(), format!("`{}` needs a value: `{example}`", arg.name));
            None
        }
    }
}

/// The arguments of `#[invalidates("tmpl", ..., cache = ..., name = ...)]`.
pub(crate) struct InvalidatesArgs {
    pub(crate) templates: Vec<LitStr>,
    pub(crate) cache: Option<Expr>,
    pub(crate) name: Option<LitStr>,
}

impl InvalidatesArgs {
    pub(crate) fn from_raw(raw: RawArgs, errors: &mut Errors) -> InvalidatesArgs {
        let mut args = InvalidatesArgs { templates: Vec::new(), cache: None, name: None };
        let mut seen: Vec<String> = Vec::new();
        for arg in raw.0 {
            if let Some(lit) = arg.positional {
                args.templates.push(lit);
                continue;
            }
            let arg_name = arg.name.to_string();
            if seen.contains(&arg_name) {
                errors.push(arg.name.span(), format!("duplicate argument `{arg_name}`"));
                continue;
            }
            seen.push(arg_name.clone());
            match arg_name.as_str() {
                "cache" => match arg.value {
                    Some(value) => args.cache = Some(value),
                    None => errors.push(arg.name.span(), "`cache` needs a value: `cache = self.cache`"),
                },
                "name" => args.name = string_value(&arg, errors, "name = \"update_vehicle\""),
                _ => errors.push(
                    arg.name.span(),
                    format!("unknown argument `{arg_name}`; expected key templates or patterns as strings (`\"vehicle:<v.id>\"`, `\"homepage:*\"`), `cache`, `name`"),
                ),
            }
        }
        if args.templates.is_empty() {
            errors.push(Span::call_site(), "`#[invalidates]` needs at least one key or pattern: `#[invalidates(\"vehicle:<v.id>\", \"homepage:*\")]`");
        }
        args
    }
}

/// The arguments of `#[cache_put(key = ..., ttl = ..., stale = ..., cache = ..., name = ...)]`:
/// those of `#[cached]` without `lock` and `refresh`.
pub(crate) struct PutArgs;

impl PutArgs {
    pub(crate) fn from_raw(raw: RawArgs, errors: &mut Errors) -> CachedArgs {
        // The grammar of `#[cached]`, without its read-side options.
        let read_only = |arg: &RawArg| {
            arg.positional.is_none() && (arg.name == "lock" || arg.name == "refresh")
        };
        for arg in raw.0.iter().filter(|arg| read_only(arg)) {
            errors.push(
                arg.name.span(),
                format!(
                    "unknown argument `{}`; expected one of `key`, `ttl`, `stale`, `cache`, `name`",
                    arg.name
                ),
            );
        }
        let raw = RawArgs(raw.0.into_iter().filter(|arg| !read_only(arg)).collect());
        CachedArgs::from_raw(raw, errors)
    }
}
