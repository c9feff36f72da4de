//! Code generation: every attribute goes through [`Prepared::new`] (parse the function and the
//! arguments, check them, resolve the templates), then through its own expansion, which
//! consumes the checked arguments (`args.<name>`, the slots of `attr.rs`'s table). Generated
//! code names runtime items only through `::cache_runtime::__private`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{LitStr, Type};

use crate::attr::{Args, Attribute, Duration};
use crate::detach::{rename_self, Detached};
use crate::errors::Errors;
use crate::item::{returned_annotation, Function, Returned, Signature};
use crate::template::Key;
use crate::valid::absent_ttl_needs_an_absent_result;

/// `#[cached(...)]`.
pub(crate) fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(Attribute::Cached, args, item)
}

/// `#[invalidates(...)]`.
pub(crate) fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(Attribute::Invalidates, args, item)
}

/// `#[cache_put(...)]`.
pub(crate) fn cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(Attribute::CachePut, args, item)
}

fn expand(attribute: Attribute, args: TokenStream, item: TokenStream) -> TokenStream {
    match Prepared::new(attribute, args, item) {
        Ok(prepared) => prepared.expand(),
        Err(original) => original,
    }
}

/// An attribute whose function, arguments and templates were all accepted.
struct Prepared {
    function: Function,
    args: Args,
    /// The name in stats and metrics.
    name: String,
    plan: Plan,
}

/// What each attribute generates around the body.
enum Plan {
    /// `#[cached]`: look up, on a miss run the body and store. `detached` when the body
    /// may finish in the background (`refresh`, `early`, `timeout`).
    Cached { key: Key, ttl: Duration, returned: Returned, detached: Option<Detached> },
    /// `#[cache_put]`: run the body, store what it returned.
    Put { key: Key, ttl: Duration, returned: Returned },
    /// `#[invalidates]`: run the body, then remove keys and patterns.
    Invalidates { targets: Vec<Key>, returned: Option<Returned> },
}

impl Prepared {
    /// Parses the function and the arguments, checks the rules between the arguments and
    /// the signature, and resolves the templates, reporting every error at once. On error,
    /// returns the original item with the errors, so call sites do not cascade.
    fn new(
        attribute: Attribute,
        args: TokenStream,
        item: TokenStream,
    ) -> Result<Self, TokenStream> {
        let function = match syn::parse2::<Function>(item.clone()) {
            Ok(function) => function,
            Err(error) => {
                let error = error.to_compile_error();
                return Err(quote!(#error #item));
            }
        };
        let mut errors = Errors::default();
        let args = Args::parse(attribute, args, &mut errors);
        if let Some(args) = &args {
            args.check(&mut errors);
        }
        let signature = Signature::inspect(&function.sig, attribute, &mut errors);
        let keys: Vec<Key> = args
            .iter()
            .flat_map(Args::templates)
            .filter_map(|template| {
                Key::resolve(template, attribute.purpose(), &signature, &mut errors)
            })
            .collect();
        let returned = signature.returned;
        let rejected = |errors: &Errors| {
            let errors = errors.to_compile_errors();
            quote!(#errors #item)
        };
        let (Some(args), true) = (args, errors.is_empty()) else {
            return Err(rejected(&errors));
        };
        let plan = match attribute {
            Attribute::Invalidates => Plan::Invalidates { targets: keys, returned },
            // Expanded by `rate_limit.rs` and `batch.rs`, which never prepare through here.
            Attribute::RateLimit | Attribute::CachedBatch => return Err(rejected(&errors)),
            Attribute::Cached | Attribute::CachePut => {
                // With no error reported, there are a valid `ttl`, one key and a value.
                let (Some(&ttl), Ok([key]), Some(returned)) =
                    (args.ttl.get(), <[Key; 1]>::try_from(keys), returned)
                else {
                    return Err(rejected(&errors));
                };
                absent_ttl_needs_an_absent_result(&args, returned.shape, &mut errors);
                if !errors.is_empty() {
                    return Err(rejected(&errors));
                }
                if attribute == Attribute::Cached {
                    let why = [
                        ("refresh", args.refresh.get().is_some()),
                        ("early", args.early.get().is_some()),
                        ("timeout", args.timeout.get().is_some()),
                    ]
                    .into_iter()
                    .find_map(|(name, used)| used.then_some(name));
                    let detached = why.map(|why| {
                        Detached::plan(&function.sig, &function.block(), why, &mut errors)
                    });
                    if !errors.is_empty() {
                        return Err(rejected(&errors));
                    }
                    Plan::Cached { key, ttl, returned, detached }
                } else {
                    Plan::Put { key, ttl, returned }
                }
            }
        };
        let name = args.name.get().map_or_else(|| function.sig.ident.to_string(), LitStr::value);
        Ok(Prepared { function, args, name, plan })
    }

    fn expand(&self) -> TokenStream {
        match &self.plan {
            Plan::Cached { key, ttl, returned, detached } => {
                self.cached(key, ttl.millis, returned, detached.as_ref())
            }
            Plan::Put { key, ttl, returned } => self.put(key, ttl.millis, returned),
            Plan::Invalidates { targets, returned } => self.invalidates(targets, returned.as_ref()),
        }
    }

    /// The function with `body` as its body, after the original's inner attributes.
    fn around(&self, body: TokenStream) -> TokenStream {
        let Function { attrs, vis, sig, inner_attrs, .. } = &self.function;
        quote! {
            #(#attrs)*
            #vis #sig {
                #(#inner_attrs)*
                #body
            }
        }
    }

    fn cached(
        &self,
        key: &Key,
        ttl: u64,
        returned: &Returned,
        detached: Option<&Detached>,
    ) -> TokenStream {
        let Prepared { function, args, name, .. } = self;
        // The arguments' consumers: each argument becomes an argument of `Policy::new` or of
        // one of its `with_` calls.
        let lock = args.lock.get().is_some();
        let stale = optional_duration(args.stale.get());
        let refresh = optional_duration(args.refresh.get());
        let absent_ttl = optional_duration(args.absent_ttl.get());
        let early = match args.early.get() {
            Some(early) => {
                let beta = early.beta;
                quote!(::core::option::Option::Some(#beta))
            }
            None => quote!(::core::option::Option::None),
        };
        let timeout = optional_duration(args.timeout.get());
        let near = args.near.get().copied().unwrap_or(true);
        let idle = optional_duration(args.idle.get());
        let cache = cache_expr(args.cache.get());
        let register = register("Cached", [&key.template], name);
        let key = &key.expr;
        let shape = returned.shape;
        let cloner = cloner(&returned.value);
        let block = function.block();
        // The body: run in the caller, or, when it may outlive it, made to own its arguments.
        let (entry, checks, body) = match detached {
            None => (quote!(cached), quote!(), quote!(|| async move #block)),
            Some(Detached { take, rebind, checks }) => {
                let block = rename_self(block);
                let body = quote! {
                    move || {
                        #take
                        async move {
                            #rebind
                            #block
                        }
                    }
                };
                (quote!(cached_detached), checks.clone(), body)
            }
        };
        self.around(quote! {
            static __CACHE_RUNTIME_FN: ::cache_runtime::__private::CachedFn =
                ::cache_runtime::__private::CachedFn {
                    name: #name,
                    policy: ::cache_runtime::__private::Policy::new(
                        ::core::time::Duration::from_millis(#ttl),
                        #lock,
                        #stale,
                        #refresh,
                    )
                    .with_absent_ttl(#absent_ttl)
                    .with_early(#early)
                    .with_timeout(#timeout)
                    .near(#near)
                    .with_idle(#idle),
                    counters: ::cache_runtime::__private::CountersSlot::new(),
                };
            #register
            let __cache_runtime_cache = #cache;
            let __cache_runtime_key = #key;
            #checks
            ::cache_runtime::__private::#entry::<#shape, _, _, _>(
                __cache_runtime_cache,
                &__CACHE_RUNTIME_FN,
                __cache_runtime_key,
                #cloner,
                #body,
            )
            .await
        })
    }

    fn put(&self, key: &Key, ttl: u64, returned: &Returned) -> TokenStream {
        let Prepared { function, args, name, .. } = self;
        // Live long enough for readers with the same `stale` (their age comes from the write
        // time stored with the value); with `idle`, for `idle` (readers' hits extend it).
        let (idle, stale) = (args.idle.get(), args.stale.get());
        let millis =
            idle.map_or_else(|| stale.map_or(0, |stale| stale.millis).max(ttl), |idle| idle.millis);
        let cache = cache_expr(args.cache.get());
        let register = register("Put", [&key.template], name);
        let key = &key.expr;
        let shape = returned.shape;
        let cloner = cloner(&returned.value);
        let returned_ty = returned_annotation(&function.sig);
        let block = function.block();
        self.around(quote! {
            static __CACHE_RUNTIME_FN: ::cache_runtime::__private::WritingFn =
                ::cache_runtime::__private::WritingFn {
                    name: #name,
                    ttl: ::core::time::Duration::from_millis(#millis),
                };
            #register
            let __cache_runtime_cache = #cache;
            let __cache_runtime_key = #key;
            let __cache_runtime_returned #returned_ty = async move #block.await;
            ::cache_runtime::__private::put_after::<#shape, _>(
                &__cache_runtime_cache,
                &__CACHE_RUNTIME_FN,
                __cache_runtime_key,
                #cloner,
                &__cache_runtime_returned,
            )
            .await;
            __cache_runtime_returned
        })
    }

    fn invalidates(&self, targets: &[Key], returned: Option<&Returned>) -> TokenStream {
        let Prepared { function, args, name, .. } = self;
        let cache = cache_expr(args.cache.get());
        let register = register("Invalidates", targets.iter().map(|key| &key.template), name);
        let targets = targets.iter().map(|Key { expr, glob, .. }| {
            let variant = if *glob { format_ident!("Pattern") } else { format_ident!("Key") };
            quote!(::cache_runtime::__private::Target::#variant(#expr))
        });
        let returned_ty = returned_annotation(&function.sig);
        // Only a successful call invalidates: `Ok` for `Result`s, any return otherwise.
        let succeeded = match returned {
            Some(returned) if returned.shape.is_result() => {
                quote!(::core::result::Result::is_ok(&__cache_runtime_returned))
            }
            _ => quote!(true),
        };
        let block = function.block();
        self.around(quote! {
            static __CACHE_RUNTIME_FN: ::cache_runtime::__private::WritingFn =
                ::cache_runtime::__private::WritingFn { name: #name, ttl: ::core::time::Duration::ZERO };
            #register
            let __cache_runtime_cache = #cache;
            let __cache_runtime_targets = ::std::vec![#(#targets),*];
            let __cache_runtime_returned #returned_ty = async move #block.await;
            if #succeeded {
                ::cache_runtime::__private::invalidate_after(
                    &__cache_runtime_cache,
                    &__CACHE_RUNTIME_FN,
                    __cache_runtime_targets,
                )
                .await;
            }
            __cache_runtime_returned
        })
    }
}

/// The `Cache` to use: `cache = <expr>` or the process default.
pub(crate) fn cache_expr(cache: Option<&syn::Expr>) -> TokenStream {
    match cache {
        Some(expr) => quote_spanned!(expr.span()=> ::cache_runtime::__private::cache_of(&(#expr))),
        None => quote!(::cache_runtime::__private::default_cache()),
    }
}

/// `Some(Duration)` or `None` for an optional duration argument.
pub(crate) fn optional_duration(duration: Option<&Duration>) -> TokenStream {
    match duration {
        Some(&Duration { millis, .. }) => {
            quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#millis)))
        }
        None => quote!(::core::option::Option::None),
    }
}

/// `Some(T::clone)` when the cached value type is `Clone`, chosen at compile time.
pub(crate) fn cloner(value: &Type) -> TokenStream {
    quote! {{
        #[allow(unused_imports)]
        use ::cache_runtime::__private::{ViaClone as _, ViaDecode as _};
        // The borrow selects the `Clone` impl when there is one (autoref specialization).
        #[allow(clippy::needless_borrow)]
        let cloner = (&::cache_runtime::__private::CloneProbe::<#value>::new()).cloner();
        cloner
    }}
}

/// Registers the templates at link time, for `check_invalidations`.
pub(crate) fn register<'a>(
    kind: &str,
    templates: impl IntoIterator<Item = &'a LitStr>,
    function: &str,
) -> TokenStream {
    let kind = format_ident!("{}", kind);
    let submits = templates.into_iter().map(|template| {
        quote! {
            ::cache_runtime::__private::inventory::submit! {
                ::cache_runtime::__private::Declaration {
                    kind: ::cache_runtime::__private::DeclarationKind::#kind,
                    template: #template,
                    function: #function,
                    file: ::core::file!(),
                    line: ::core::line!(),
                }
            }
        }
    });
    quote!(#(#submits)*)
}

// ---- used by `#[rate_limit]` (rate_limit.rs) ------------------------------------------------

/// Checks `sig` for `#[rate_limit]` (an `async fn`, any receiver) and renders `template`,
/// if given, as `#[cached]` renders its key. `None` after reporting.
pub(crate) fn rate_limit_key(
    sig: &syn::Signature,
    template: Option<&syn::LitStr>,
    errors: &mut Errors,
) -> Option<TokenStream> {
    let signature = Signature::inspect(sig, Attribute::RateLimit, errors);
    Key::resolve(template?, Attribute::RateLimit.purpose(), &signature, errors).map(|key| key.expr)
}

/// The `Cache` expression for `#[rate_limit]`, as for the other attributes.
pub(crate) fn rate_limit_cache(cache: Option<&syn::Expr>) -> TokenStream {
    cache_expr(cache)
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenTree;
    use quote::quote;

    use super::*;

    /// The expansion, with tokens separated by single spaces.
    fn expanded(output: TokenStream) -> String {
        output.to_string()
    }

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

    #[test]
    fn inner_attributes_stay_inside_the_body() {
        let output = cached(
            quote!(key = "v:<id>", ttl = "15m"),
            quote! {
                /// Docs.
                async fn get(id: u64) -> u64 {
                    #![allow(unused_variables)]
                    let unused = 1;
                    id
                }
            },
        );
        let text = expanded(output);
        let signature = text.find("async fn get").unwrap();
        let inner = text.find("# ! [allow (unused_variables)]").unwrap();
        assert!(signature < inner, "{text}");
        assert!(text.find("# [doc").unwrap() < signature, "{text}");
        // Once, at the top of the function's body, not again in the async block.
        assert_eq!(text.matches("unused_variables").count(), 1, "{text}");
    }

    #[test]
    fn the_policy_is_built_at_compile_time() {
        let output = cached(
            quote!(key = "v:<id>", ttl = "15m", lock, stale = "1h", refresh = "10m"),
            quote!(
                async fn get(id: u64) -> Result<Option<u64>, String> {
                    Ok(Some(id))
                }
            ),
        );
        let text = expanded(output);
        assert!(text.contains(":: cache_runtime :: __private :: Policy :: new (:: core :: time :: Duration :: from_millis (900000u64) , true , :: core :: option :: Option :: Some (:: core :: time :: Duration :: from_millis (3600000u64)) , :: core :: option :: Option :: Some (:: core :: time :: Duration :: from_millis (600000u64)) ,)"), "{text}");
        assert!(
            text.contains(
                "cached_detached :: < :: cache_runtime :: __private :: ResultOptionShape , _ , _ , _ >"
            ),
            "{text}"
        );
    }

    #[test]
    fn syn_errors_pass_through() {
        let errors = errors_of(cached(
            quote!(key = "v", ttl = "1m"),
            quote!(
                struct Vehicle;
            ),
        ));
        assert_eq!(errors, ["expected `fn`"]);
        let errors = errors_of(cached(
            quote!(key = "v" ttl = "1m"),
            quote!(
                async fn f() -> u8 {
                    1
                }
            ),
        ));
        assert_eq!(errors, ["expected `,`"]);
    }

    #[test]
    fn a_body_that_does_not_parse_is_left_to_the_compiler() {
        let output =
            cached(quote!(key = "v", ttl = "1m"), quote!(async fn f() -> u8 { let = ; 1 }));
        assert!(errors_of(output.clone()).is_empty());
        assert!(expanded(output).contains("async move { let = ; 1 }"));
    }

    #[test]
    fn every_argument_error_is_reported_once() {
        let errors = errors_of(cached(
            quote!(
                key = "v:<id>",
                ttl = "15m",
                ttl = "bad",
                lock = true,
                lock,
                stale = "10m",
                what
            ),
            quote!(
                async fn get(id: u64) -> u64 {
                    id
                }
            ),
        ));
        assert_eq!(
            errors,
            [
                "duplicate argument `ttl`",
                "`lock` is a flag and takes no value: write `lock`",
                "duplicate argument `lock`",
                "unknown argument `what`; expected one of `key`, `ttl`, `lock`, `stale`, `refresh`, `early`, `timeout`, `absent_ttl`, `idle`, `near`, `cache`, `name`",
                "`stale` must be longer than `ttl`: it is how long a value is kept in all, to be served when the body fails after the value expired",
            ]
        );
    }

    #[test]
    fn rules_that_do_not_need_the_ttl_apply_without_it() {
        let errors = errors_of(cached(
            quote!(key = "v:<id>", timeout = "1s"),
            quote!(
                async fn get(id: u64) -> u64 {
                    id
                }
            ),
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("missing `ttl = \"...\"`"), "{errors:?}");
        assert!(errors[1].starts_with("`timeout` needs `stale`"), "{errors:?}");
    }

    #[test]
    fn each_attribute_accepts_its_own_arguments() {
        let item = quote!(
            async fn put(id: u64) -> Result<u64, String> {
                Ok(id)
            }
        );
        let errors = errors_of(cache_put(quote!(key = "v:<id>", refresh = "1m"), item.clone()));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with(
            "unknown argument `refresh`; expected one of `key`, `ttl`, `stale`, `idle`, `cache`, `name`"
        ));
        assert!(errors[1].starts_with("missing `ttl = \"...\"`: `#[cache_put]`"), "{errors:?}");
        let errors = errors_of(invalidates(quote!(key = "v:<id>"), item));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("unknown argument `key`; expected key templates"));
        assert!(errors[1].starts_with("`#[invalidates]` needs at least one key or pattern"));
    }

    #[test]
    fn invalidation_targets_follow_the_templates() {
        let text = expanded(invalidates(
            quote!("vehicle:<id>", "dealer:*"),
            quote!(
                async fn save(id: u64) -> Result<(), String> {
                    Ok(())
                }
            ),
        ));
        let key = text.find("Target :: Key").unwrap();
        let pattern = text.find("Target :: Pattern").unwrap();
        assert!(key < pattern, "{text}");
        assert!(
            text.contains("if :: core :: result :: Result :: is_ok (& __cache_runtime_returned)")
        );
    }
}
