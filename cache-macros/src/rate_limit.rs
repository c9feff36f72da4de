//! `#[rate_limit(key = "...", limit = N, per = "...")]`: checks on the function and expansion.
//! Its arguments are rows of the one table in `attr.rs`, read by the same parser as the other
//! attributes'; the rules between them (`limit`'s range, `fail_open` with `fail_closed`, the
//! missing ones) are in `valid.rs`.
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
//! charge hits, so that order is an error (reported by `#[cached]`, which sees every
//! attribute below it, whatever stands between them).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Attribute, LitStr, Meta};

use crate::attr::{self, Args};
use crate::errors::Errors;
use crate::expand;
use crate::item::{mentions_impl_trait, Function};

/// `#[rate_limit(...)]`.
pub(crate) fn rate_limit(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let Ok(mut function) = syn::parse2::<Function>(item.clone()) else {
        errors.push(Span::call_site(), "`#[rate_limit]` applies to `async fn` items and methods");
        return with_errors(&errors, item);
    };
    let args = Args::parse(attr::Attribute::RateLimit, args, &mut errors);
    if let Some(args) = &args {
        args.check(&mut errors);
    }
    let key = expand::rate_limit_key(
        &function,
        args.as_ref().and_then(|args| args.key.get()),
        &mut errors,
    );
    if function.output().is_none() {
        errors.push(function.sig.ident.span(), NOT_A_RESULT);
    }
    let cached = function.attrs.iter().position(is_cached);
    let charge_hits =
        args.as_ref().and_then(|args| args.charge_hits.get().and(args.charge_hits.span()));
    if let (Some(span), None) = (charge_hits, cached) {
        errors.push(
            span,
            "`charge_hits` needs `#[cached]` below `#[rate_limit]`: without a cache every call is charged anyway",
        );
    }
    let (Some(args), Some(key), true) = (args, key, errors.is_empty()) else {
        return with_errors(&errors, item);
    };
    let (Some(limit), Some(per)) = (args.limit.get(), args.per.get()) else {
        return with_errors(&errors, item);
    };

    // The arguments' consumers: the limiter's static.
    let (limit, per) = (limit.value, per.millis);
    let name = args.name.get().map_or_else(|| function.sig.ident.to_string(), LitStr::value);
    let cache = expand::rate_limit_cache(args.cache.get());
    let mode =
        format_ident!("{}", if args.fail_closed.get().is_some() { "Closed" } else { "Open" });
    // `Err(E::from(limited))`, for whatever `Result` the return type resolves to (an alias
    // included); reported on the return type when it is not one.
    let refused = match function.output() {
        Some(ty) if !mentions_impl_trait(ty) => quote_spanned! {ty.span()=>
            ::cache_runtime::__private::rate_limited::<#ty>(__cache_runtime_limited)
        },
        Some(ty) => quote_spanned! {ty.span()=>
            ::cache_runtime::__private::rate_limited(__cache_runtime_limited)
        },
        None => unreachable!("checked: the function returns a value"),
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

    if let (Some(_), Some(index)) = (charge_hits, cached) {
        // Before the cache lookup: expand the `#[cached]` below now, then check first.
        let attr = function.attrs.remove(index);
        let cached_args = match &attr.meta {
            Meta::List(list) => list.tokens.clone(),
            _ => TokenStream::new(),
        };
        let expanded = expand::cached(cached_args, function.with_first(&TokenStream::new()));
        let Ok(cached_fn) = syn::parse2::<Function>(expanded.clone()) else {
            return expanded; // `#[cached]`'s own errors
        };
        return cached_fn.with_first(&check);
    }
    function.with_first(&check)
}

/// A refused call returns `Err`: the function must return a `Result`.
const NOT_A_RESULT: &str = "`#[rate_limit]` needs a function returning `Result<T, E>` with `E: From<cache_runtime::RateLimited>`: a refused call returns `Err`";

/// `#[cached]` or `#[cache_runtime::cached]` (by its last path segment).
fn is_cached(attr: &Attribute) -> bool {
    attr.path().segments.last().is_some_and(|last| last.ident == "cached")
}

/// The original item plus `compile_error!`s, so call sites do not cascade into more errors.
fn with_errors(errors: &Errors, item: TokenStream) -> TokenStream {
    let errors = errors.to_compile_errors();
    quote!(#errors #item)
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenTree;
    use quote::quote;

    use super::*;

    /// The messages of the `compile_error!`s in the output.
    fn errors_of(output: TokenStream) -> Vec<String> {
        let tokens: Vec<TokenTree> = output.into_iter().collect();
        tokens
            .windows(3)
            .filter_map(|window| match window {
                [TokenTree::Ident(name), TokenTree::Punct(bang), TokenTree::Group(group)]
                    if name == "compile_error" && bang.as_char() == '!' =>
                {
                    Some(syn::parse2::<LitStr>(group.stream()).unwrap().value())
                }
                _ => None,
            })
            .collect()
    }

    fn login() -> TokenStream {
        quote!(
            async fn login(ip: u32) -> Result<u32, E> {
                Ok(ip)
            }
        )
    }

    #[test]
    fn the_limiter_is_built_from_the_arguments() {
        let output = rate_limit(
            quote!(key = "login:<ip>", limit = 5, per = "1m", fail_closed, name = "n"),
            login(),
        );
        let text = output.to_string();
        assert!(errors_of(output).is_empty(), "{text}");
        assert!(text.contains("name : \"n\" , limit : 5u64 , per : :: core :: time :: Duration :: from_millis (60000u64) , on_failure : :: cache_runtime :: __private :: FailMode :: Closed"), "{text}");
    }

    #[test]
    fn arguments_are_read_by_the_shared_parser() {
        let errors = errors_of(rate_limit(
            quote!(key = 1, limit = "5", limit = 6, per = "1m", burst = 2, fail_open = true),
            login(),
        ));
        assert_eq!(
            errors,
            [
                "expected a string literal: `key = \"login:<ip>\"`",
                "expected an integer literal: `limit = 5`",
                "duplicate argument `limit`",
                "unknown argument `burst`; expected one of `key`, `limit`, `per`, `fail_open`, `fail_closed`, `charge_hits`, `cache`, `name`",
                "`fail_open` is a flag and takes no value: write `fail_open`",
            ]
        );
    }

    #[test]
    fn rules_between_arguments_apply() {
        for args in [
            quote!(key = "login:<ip>", limit = 5, per = "1m", fail_open, fail_closed),
            quote!(key = "login:<ip>", limit = 5, per = "1m", fail_closed, fail_open),
        ] {
            let errors = errors_of(rate_limit(args, login()));
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].starts_with("`fail_open` and `fail_closed` exclude each other"));
        }
        let errors = errors_of(rate_limit(quote!(limit = 0), login()));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("missing `key = \"...\"`: `#[rate_limit]`"), "{errors:?}");
        assert!(errors[1].starts_with("missing `per = \"...\"`"), "{errors:?}");
        assert!(errors[2].starts_with("`limit` must be at least 1"), "{errors:?}");
    }
}
