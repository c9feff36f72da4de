//! `#[rate_limit(key = "...", limit = N, per = "...")]`: arguments, checks and expansion.
//!
//! The expansion puts the check before the body's first statement:
//!
//! ```ignore
//! async fn f(ip: IpAddr) -> Result<T, E> {
//!     {
//!         static RATE: RateLimitFn = ...;                // name, limit, per, fail mode
//!         if let Err(limited) = rate_limit(&cache, &RATE, key).await {
//!             return rate_limited(limited);              // Err(E::from(limited))
//!         }
//!     }
//!     /* the body */
//! }
//! ```
//!
//! With `#[cached]` written below it, `#[rate_limit]` expands first, so `#[cached]` wraps
//! the checked body: a hit answers before the limiter (not charged), a miss is charged
//! before the body runs. With `charge_hits` this attribute expands that `#[cached]` itself
//! and puts the check before the cache lookup. Written below `#[cached]` it would silently
//! charge hits, so that order is an error.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Attribute, Expr, Item, ItemFn, LitStr, Meta, ReturnType, Stmt, Type};

use syn::punctuated::Punctuated;
use syn::{Ident, Token};

use crate::attr::RawArg;
use crate::errors::Errors;
use crate::expand;
use crate::ttl::parse_ttl;

/// The largest `limit` (the runtime's `MAX_RATE_LIMIT`).
const MAX_LIMIT: u64 = 1_000_000;

const ARGS: &str =
    "`key`, `limit`, `per`, `fail_open`, `fail_closed`, `charge_hits`, `cache`, `name`";

/// The validated arguments.
struct Args {
    key: Option<LitStr>,
    limit: Option<u64>,
    per_millis: Option<u64>,
    fail_closed: bool,
    /// Where `charge_hits` is written, if it is.
    charge_hits: Option<Span>,
    cache: Option<Expr>,
    name: Option<LitStr>,
}

/// `#[rate_limit(...)]`.
pub(crate) fn rate_limit(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let Ok(mut function) = syn::parse2::<ItemFn>(item.clone()) else {
        errors.push(Span::call_site(), "`#[rate_limit]` applies to `async fn` items and methods");
        return with_errors(&errors, item);
    };
    let parser = Punctuated::<RawArg, Token![,]>::parse_terminated;
    let args = syn::parse::Parser::parse2(parser, args)
        .map_err(|error| errors.add(error))
        .ok()
        .map(|raw| Args::from_raw(raw, &mut errors));
    let key = expand::rate_limit_key(
        &function.sig,
        args.as_ref().and_then(|args| args.key.as_ref()),
        &mut errors,
    );
    check_result(&function.sig.output, function.sig.ident.span(), &mut errors);
    if expanded_by_cached(&function) {
        errors.push(
            Span::call_site(),
            "write `#[rate_limit]` above `#[cached]`, not below it: below, it would run before the cache lookup and charge cache hits too (to charge them, write `#[rate_limit(..., charge_hits)]` above `#[cached]`)",
        );
    }
    let cached = function.attrs.iter().position(is_cached);
    if let (Some(span), None) = (args.as_ref().and_then(|args| args.charge_hits), cached) {
        errors.push(
            span,
            "`charge_hits` needs `#[cached]` below `#[rate_limit]`: without a cache every call is charged anyway",
        );
    }
    let (Some(args), Some(key), true) = (args, key, errors.is_empty()) else {
        return with_errors(&errors, item);
    };
    let (Some(limit), Some(per)) = (args.limit, args.per_millis) else {
        return with_errors(&errors, item);
    };

    let name = args.name.as_ref().map_or_else(|| function.sig.ident.to_string(), LitStr::value);
    let cache = expand::rate_limit_cache(args.cache.as_ref());
    let mode = format_ident!("{}", if args.fail_closed { "Closed" } else { "Open" });
    let refused = match &function.sig.output {
        ReturnType::Type(_, ty) => quote_spanned! {ty.span()=>
            ::cache_runtime::__private::rate_limited(__cache_runtime_limited)
        },
        ReturnType::Default => unreachable!("checked: the function returns a `Result`"),
    };
    let check = quote! {{
        static __CACHE_RUNTIME_RATE: ::cache_runtime::__private::RateLimitFn =
            ::cache_runtime::__private::RateLimitFn {
                name: #name,
                limit: #limit,
                per: ::core::time::Duration::from_millis(#per),
                on_failure: ::cache_runtime::__private::FailMode::#mode,
                counters: ::cache_runtime::__private::CountersSlot::new(),
            };
        let __cache_runtime_rate_key = #key;
        if let ::core::result::Result::Err(__cache_runtime_limited) =
            ::cache_runtime::__private::rate_limit(&#cache, &__CACHE_RUNTIME_RATE, __cache_runtime_rate_key)
                .await
        {
            return #refused;
        }
    }};

    if let (Some(_), Some(index)) = (args.charge_hits, cached) {
        // Before the cache lookup: expand the `#[cached]` below now, then check first.
        let attr = function.attrs.remove(index);
        let cached_args = match &attr.meta {
            Meta::List(list) => list.tokens.clone(),
            _ => TokenStream::new(),
        };
        let expanded = expand::cached(cached_args, quote!(#function));
        let Ok(mut cached_fn) = syn::parse2::<ItemFn>(expanded.clone()) else {
            return expanded; // `#[cached]`'s own errors
        };
        prepend(&mut cached_fn, check);
        return quote!(#cached_fn);
    }
    prepend(&mut function, check);
    quote!(#function)
}

/// Puts `check` before the first statement of `function`'s body.
fn prepend(function: &mut ItemFn, check: TokenStream) {
    let check = Stmt::Expr(Expr::Verbatim(check), None);
    function.block.stmts.insert(0, check);
}

impl Args {
    /// Validates every argument, reporting all problems at once.
    fn from_raw(raw: Punctuated<RawArg, Token![,]>, errors: &mut Errors) -> Args {
        let mut args = Args {
            key: None,
            limit: None,
            per_millis: None,
            fail_closed: false,
            charge_hits: None,
            cache: None,
            name: None,
        };
        let mut seen: Vec<String> = Vec::new();
        let mut fail_flags: Vec<&'static str> = Vec::new();
        for arg in raw {
            let arg = match arg {
                RawArg::Positional(lit) => {
                    errors.push(lit.span(), "expected `name = value`: write `key = \"...\"`");
                    continue;
                }
                RawArg::Named { name, value } => Named { name, value },
            };
            let arg_name = arg.name.to_string();
            if seen.contains(&arg_name) {
                errors.push(arg.name.span(), format!("duplicate argument `{arg_name}`"));
                continue;
            }
            seen.push(arg_name.clone());
            match arg_name.as_str() {
                "key" => args.key = string_value(&arg, errors, "key = \"login:<ip>\""),
                "name" => args.name = string_value(&arg, errors, "name = \"login\""),
                "limit" => args.limit = limit_value(&arg, errors),
                "per" => {
                    if let Some(lit) = string_value(&arg, errors, "per = \"1m\"") {
                        match parse_ttl(&lit.value()) {
                            Ok(millis) => args.per_millis = Some(millis),
                            Err(message) => {
                                errors.push(lit.span(), message.replace("time to live", "window"))
                            }
                        }
                    }
                }
                "fail_open" | "fail_closed" | "charge_hits" => {
                    if let Some(value) = &arg.value {
                        errors.push(
                            value.span(),
                            format!(
                                "`{arg_name}` is a flag and takes no value: write `{arg_name}`"
                            ),
                        );
                        continue;
                    }
                    match arg_name.as_str() {
                        "fail_open" => fail_flags.push("fail_open"),
                        "fail_closed" => {
                            fail_flags.push("fail_closed");
                            args.fail_closed = true;
                        }
                        _ => args.charge_hits = Some(arg.name.span()),
                    }
                    if fail_flags.len() == 2 {
                        errors.push(
                            arg.name.span(),
                            "`fail_open` and `fail_closed` exclude each other: choose what a call gets when the store fails (`fail_open`, the default, admits it)",
                        );
                    }
                }
                "cache" => match arg.value {
                    Some(value) => args.cache = Some(value),
                    None => {
                        errors.push(arg.name.span(), "`cache` needs a value: `cache = self.cache`")
                    }
                },
                _ => errors.push(
                    arg.name.span(),
                    format!("unknown argument `{arg_name}`; expected one of {ARGS}"),
                ),
            }
        }
        let missing = |name: &str| !seen.iter().any(|s| s == name);
        if missing("key") {
            errors.push(Span::call_site(), "missing `key = \"...\"`: `#[rate_limit]` needs a key template such as `key = \"login:<ip>\"`");
        }
        if missing("limit") {
            errors.push(Span::call_site(), "missing `limit = ...`: `#[rate_limit]` needs the calls admitted per window, such as `limit = 5`");
        }
        if missing("per") {
            errors.push(
                Span::call_site(),
                "missing `per = \"...\"`: `#[rate_limit]` needs the window, such as `per = \"1m\"`",
            );
        }
        args
    }
}

/// One `name` or `name = value` argument.
struct Named {
    name: Ident,
    value: Option<Expr>,
}

/// `limit = <integer literal>`, 1 to [`MAX_LIMIT`].
fn limit_value(arg: &Named, errors: &mut Errors) -> Option<u64> {
    let Some(value) = &arg.value else {
        errors.push(arg.name.span(), "`limit` needs a value: `limit = 5`");
        return None;
    };
    let Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(int), .. }) = value else {
        errors.push(value.span(), "expected an integer literal: `limit = 5`");
        return None;
    };
    match int.base10_parse::<u64>() {
        Ok(0) => errors
            .push(int.span(), "`limit` must be at least 1: it is how many calls the window admits"),
        Ok(limit) if limit > MAX_LIMIT => errors.push(
            int.span(),
            "`limit` must be at most 1000000: the exact window keeps one entry per admitted call",
        ),
        Ok(limit) => return Some(limit),
        Err(error) => errors.add(error),
    }
    None
}

/// The string literal value of `arg`, or an error showing the expected form.
fn string_value(arg: &Named, errors: &mut Errors, example: &str) -> Option<LitStr> {
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

/// A refused call returns `Err`: the function must return a `Result` (by its written name,
/// also through paths and aliases such as `io::Result<T>`).
fn check_result(output: &ReturnType, ident: Span, errors: &mut Errors) {
    const WHY: &str = "`#[rate_limit]` needs a function returning `Result<T, E>` with `E: From<cache_runtime::RateLimited>`: a refused call returns `Err`";
    match output {
        ReturnType::Default => errors.push(ident, WHY),
        ReturnType::Type(_, ty) if !is_result(ty) => errors.push(ty.span(), WHY),
        ReturnType::Type(..) => {}
    }
}

fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Paren(inner) => is_result(&inner.elem),
        Type::Group(inner) => is_result(&inner.elem),
        Type::Path(path) => path.path.segments.last().is_some_and(|last| last.ident == "Result"),
        _ => false,
    }
}

/// `#[cached]` or `#[cache_runtime::cached]` (by its last path segment).
fn is_cached(attr: &Attribute) -> bool {
    attr.path().segments.last().is_some_and(|last| last.ident == "cached")
}

/// Whether `#[cached]` already expanded this function (it was written above this
/// attribute): its body starts with the `CachedFn` static it generates.
fn expanded_by_cached(function: &ItemFn) -> bool {
    function.block.stmts.iter().any(|stmt| match stmt {
        Stmt::Item(Item::Static(item)) => {
            item.ident == "__CACHE_RUNTIME_FN"
                && matches!(&*item.ty, Type::Path(path)
                    if path.path.segments.last().is_some_and(|last| last.ident == "CachedFn"))
        }
        _ => false,
    })
}

/// The original item plus `compile_error!`s, so call sites do not cascade into more errors.
fn with_errors(errors: &Errors, item: TokenStream) -> TokenStream {
    let errors = errors.to_compile_errors();
    quote!(#errors #item)
}
