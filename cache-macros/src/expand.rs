//! Code generation: every attribute goes through [`Prepared::new`] (parse the function and the
//! arguments, check them, resolve the templates), then through its own expansion, which
//! consumes the checked arguments (`args.<name>`, the slots of `attr.rs`'s table). Generated
//! code names runtime items only through `::cache_runtime::__private`.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{LitStr, Type};

use crate::attr::{Args, Attribute, Duration};
use crate::detach::{rename_self, Detached};
use crate::errors::Errors;
use crate::item::{mentions, mentions_impl_trait, shape_of, storable, Function, Signature};
use crate::template::{resolve_tag, Key};

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
    /// The tag templates (`tags = [...]`), resolved.
    tags: Vec<Key>,
    plan: Plan,
}

/// What each attribute generates around the body.
enum Plan {
    /// `#[cached]`: look up, on a miss run the body and store. `detached` when the body
    /// may finish in the background (`refresh`, `early`, `timeout`).
    Cached { key: Key, ttl: Duration, detached: Option<Detached> },
    /// `#[cache_put]`: run the body, store what it returned.
    Put { key: Key, ttl: Duration },
    /// `#[invalidates]`: run the body, then remove keys and patterns.
    Invalidates { targets: Vec<Key> },
}

/// The binding of the shape (`Shaped<S, R>`) in the generated code.
fn shape_binding() -> Ident {
    Ident::new("__cache_runtime_shape", Span::call_site())
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
        let signature = Signature::inspect(&function, attribute, &mut errors);
        let keys: Vec<Key> = args
            .iter()
            .flat_map(Args::templates)
            .filter_map(|template| {
                Key::resolve(template, attribute.purpose(), &signature, &mut errors)
            })
            .collect();
        if attribute == Attribute::Cached {
            rate_limit_below(&function, &mut errors);
        }
        if matches!(attribute, Attribute::Cached | Attribute::CachePut) {
            type_params_in_key(&function.sig, &signature, &keys, &mut errors);
        }
        let tags: Vec<Key> = args
            .iter()
            .flat_map(|args| args.tags.get().into_iter().flatten())
            .filter_map(|template| resolve_tag(template, &signature, &mut errors))
            .collect();
        let output = signature.output.cloned();
        let rejected = |errors: &Errors| {
            let errors = errors.to_compile_errors();
            quote!(#errors #item)
        };
        let (Some(args), true) = (args, errors.is_empty()) else {
            return Err(rejected(&errors));
        };
        let plan = match attribute {
            Attribute::Invalidates => Plan::Invalidates { targets: keys },
            // Expanded by `rate_limit.rs` and `batch.rs`, which never prepare through here.
            Attribute::RateLimit | Attribute::CachedBatch => return Err(rejected(&errors)),
            Attribute::Cached | Attribute::CachePut => {
                // With no error reported, there are a valid `ttl`, one key and a value.
                let (Some(&ttl), Ok([key]), Some(returned)) =
                    (args.ttl.get(), <[Key; 1]>::try_from(keys), output)
                else {
                    return Err(rejected(&errors));
                };
                if borrowed_value(&returned) {
                    errors.push(returned.span(), "the cached value must be `Serialize + DeserializeOwned + Send + Sync + 'static`, and a borrowed value (`&str`, `&[u8]`) cannot be read back from the cache: return an owned type (`String`, `Vec<u8>`, `Cow<'static, str>`)");
                }
                if attribute == Attribute::Cached {
                    if mentions_impl_trait(&returned) {
                        errors.push(returned.span(), "a cached value is read back as the type it was stored as, and `impl Trait` names none: return a named type that is `Serialize + DeserializeOwned`");
                    }
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
                    Plan::Cached { key, ttl, detached }
                } else {
                    if !errors.is_empty() {
                        return Err(rejected(&errors));
                    }
                    Plan::Put { key, ttl }
                }
            }
        };
        let name = args.name.get().map_or_else(|| function.sig.ident.to_string(), LitStr::value);
        Ok(Prepared { function, args, name, tags, plan })
    }

    fn expand(&self) -> TokenStream {
        match &self.plan {
            Plan::Cached { key, ttl, detached } => self.cached(key, ttl.millis, detached.as_ref()),
            Plan::Put { key, ttl } => self.put(key, ttl.millis),
            Plan::Invalidates { targets } => self.invalidates(targets),
        }
    }

    /// The shape of the returned value, once the body ran (`__cache_runtime_returned`):
    /// from the written return type, or from the value when the type names `impl Trait`.
    fn shape_after(&self) -> TokenStream {
        match self.function.output() {
            Some(ty) if !mentions_impl_trait(ty) => {
                shape_of(&quote!(::cache_runtime::__private::ShapeProbe::<#ty>::new()), ty.span())
            }
            _ => shape_of(
                &quote!(::cache_runtime::__private::ShapeProbe::of(&__cache_runtime_returned)),
                Span::call_site(),
            ),
        }
    }

    /// The span errors about the returned value are reported on: the return type.
    fn output_span(&self) -> Span {
        self.function.output().map_or_else(|| self.function.sig.ident.span(), Spanned::span)
    }

    fn cached(&self, key: &Key, ttl: u64, detached: Option<&Detached>) -> TokenStream {
        let Prepared { function, args, name, .. } = self;
        let returned = function.output().expect("checked: `#[cached]` has a return type");
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
        // Run in the caller: the cache is borrowed for the call where it can be; a
        // detached body owns a handle.
        let cache = match detached {
            None => cache_holder(args.cache.get(), &function.sig),
            Some(_) => cache_expr(args.cache.get()),
        };
        let register = register("Cached", [&key.template], name);
        let register_tags = self::register("Tag", self.tags.iter().map(|tag| &tag.template), name);
        let tags = self.rendered_tags();
        // Rendered into the thread's reused buffer: a hit allocates nothing for its key.
        let key = key.render_into(&quote!(::cache_runtime::__private::KeyBuffer::take()));
        let shape = shape_binding();
        let span = returned.span();
        let probe =
            shape_of(&quote!(::cache_runtime::__private::ShapeProbe::<#returned>::new()), span);
        let storable = storable(&shape, span);
        // `absent_ttl` on a shape without an absent result: reported on the argument.
        let absent_check = args.absent_ttl.get().map(|absent_ttl| {
            let shape = Ident::new("__cache_runtime_shape", absent_ttl.span);
            quote_spanned! {absent_ttl.span=>
                ::cache_runtime::__private::absent_ttl_applies(#shape);
            }
        });
        let cloner = cloner(&shape);
        let lints = function.body_lints();
        let block = function.block();
        // The body: run in the caller, or, when it may outlive it, made to own its arguments.
        let (entry, checks, body) = match detached {
            None => (quote!(cached), quote!(), quote!(|| async move #block)),
            Some(Detached { take, rebind, checks }) => {
                // The re-borrowed parameters go first in the body's own braces (a block
                // inside a block would be `unused_braces` for a one-line body).
                let block = prepend(rename_self(block), rebind);
                let body = quote! {
                    move || {
                        #take
                        async move #block
                    }
                };
                (quote!(cached_detached), checks.clone(), body)
            }
        };
        function.around(quote! {
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
            #register_tags
            let __cache_runtime_cache = #cache;
            let __cache_runtime_key = #key;
            let __cache_runtime_tags = #tags;
            #checks
            let #shape = #probe;
            let #shape = #storable;
            #absent_check
            #lints
            let __cache_runtime_body = #body;
            ::cache_runtime::__private::#entry(
                #shape,
                ::cache_runtime::__private::cache_ref(&__cache_runtime_cache),
                &__CACHE_RUNTIME_FN,
                __cache_runtime_key,
                __cache_runtime_tags,
                #cloner,
                __cache_runtime_body,
            )
            .await
        })
    }

    fn put(&self, key: &Key, ttl: u64) -> TokenStream {
        let Prepared { function, args, name, .. } = self;
        // Live long enough for readers with the same `stale` (their age comes from the write
        // time stored with the value); with `idle`, for `idle` (readers' hits extend it).
        let (idle, stale) = (args.idle.get(), args.stale.get());
        let millis =
            idle.map_or_else(|| stale.map_or(0, |stale| stale.millis).max(ttl), |idle| idle.millis);
        let cache = cache_expr(args.cache.get());
        let register = register("Put", [&key.template], name);
        let register_tags = self::register("Tag", self.tags.iter().map(|tag| &tag.template), name);
        let tags = self.rendered_tags();
        let shape = shape_binding();
        let probe = self.shape_after();
        let storable = storable(&shape, self.output_span());
        let cloner = cloner(&shape);
        let returned_ty = function.returned_annotation();
        let lints = function.body_lints();
        let block = function.block();
        let expr = &key.expr;
        let put = quote! {
            ::cache_runtime::__private::put_after(
                #shape,
                &__cache_runtime_cache,
                &__CACHE_RUNTIME_FN,
                __cache_runtime_key,
                __cache_runtime_tags,
                #cloner,
                &__cache_runtime_returned,
            )
            .await;
        };
        // A key (or a tag) naming the returned value is rendered from it, when there is one.
        let (before, after) = if key.after || self.tags.iter().any(|tag| tag.after) {
            let value = Ident::new(crate::template::RETURNED_VALUE, Span::call_site());
            let after = quote! {
                if let ::core::option::Option::Some(#value) =
                    ::cache_runtime::__private::returned_value(#shape, &__cache_runtime_returned)
                {
                    let __cache_runtime_key = #expr;
                    let __cache_runtime_tags = #tags;
                    #put
                }
            };
            (quote!(), after)
        } else {
            (quote!(let __cache_runtime_key = #expr; let __cache_runtime_tags = #tags;), put)
        };
        function.around(quote! {
            static __CACHE_RUNTIME_FN: ::cache_runtime::__private::WritingFn =
                ::cache_runtime::__private::WritingFn {
                    name: #name,
                    ttl: ::core::time::Duration::from_millis(#millis),
                };
            #register
            #register_tags
            let __cache_runtime_cache = #cache;
            #before
            #lints
            let __cache_runtime_returned #returned_ty = async move #block.await;
            let #shape = #probe;
            let #shape = #storable;
            #after
            __cache_runtime_returned
        })
    }

    fn invalidates(&self, targets: &[Key]) -> TokenStream {
        let Prepared { function, args, name, .. } = self;
        let cache = cache_expr(args.cache.get());
        let register = register("Invalidates", targets.iter().map(|key| &key.template), name);
        let target = |Key { expr, glob, .. }: &Key| {
            let variant = if *glob { format_ident!("Pattern") } else { format_ident!("Key") };
            quote!(::cache_runtime::__private::Target::#variant(#expr))
        };
        let register_tags =
            self::register("InvalidatesTag", self.tags.iter().map(|tag| &tag.template), name);
        let tag = |Key { expr, .. }: &Key| quote!(::cache_runtime::__private::Target::Tag(#expr));
        let before: Vec<TokenStream> = targets
            .iter()
            .filter(|key| !key.after)
            .map(target)
            .chain(self.tags.iter().filter(|key| !key.after).map(tag))
            .collect();
        let after: Vec<TokenStream> = targets
            .iter()
            .filter(|key| key.after)
            .map(target)
            .chain(self.tags.iter().filter(|key| key.after).map(tag))
            .collect();
        let shape = shape_binding();
        let probe = self.shape_after();
        let returned_ty = function.returned_annotation();
        // Targets naming the returned value, from its value (of `Ok`, `Some`, ...).
        let add_after = if after.is_empty() {
            quote!()
        } else {
            let value = Ident::new(crate::template::RETURNED_VALUE, Span::call_site());
            quote! {
                if let ::core::option::Option::Some(#value) =
                    ::cache_runtime::__private::returned_value(#shape, &__cache_runtime_returned)
                {
                    __cache_runtime_targets.extend([#(#after),*]);
                }
            }
        };
        let targets_binding = if after.is_empty() {
            quote!(__cache_runtime_targets)
        } else {
            quote!(mut __cache_runtime_targets)
        };
        let lints = function.body_lints();
        let block = function.block();
        // Only a successful call invalidates: anything but an `Err` (by type, through aliases).
        function.around(quote! {
            static __CACHE_RUNTIME_FN: ::cache_runtime::__private::WritingFn =
                ::cache_runtime::__private::WritingFn { name: #name, ttl: ::core::time::Duration::ZERO };
            #register
            #register_tags
            let __cache_runtime_cache = #cache;
            let #targets_binding: ::std::vec::Vec<::cache_runtime::__private::Target> = ::std::vec![#(#before),*];
            #lints
            let __cache_runtime_returned #returned_ty = async move #block.await;
            let #shape = #probe;
            if ::cache_runtime::__private::succeeded(#shape, &__cache_runtime_returned) {
                #add_after
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

/// Whether the value type borrows, as far as the written type shows (`&'static str`,
/// `Option<&str>`, `Result<&[u8], E>`; an error type that borrows is fine): serde can write
/// it but not read it back as an owned value, which rustc would report on the attribute.
fn borrowed_value(returned: &Type) -> bool {
    match returned {
        Type::Reference(_) => true,
        Type::Paren(inner) => borrowed_value(&inner.elem),
        Type::Path(path) => path.path.segments.last().is_some_and(|last| match &last.arguments {
            syn::PathArguments::AngleBracketed(args) => {
                args.args.iter().find_map(|arg| match arg {
                    syn::GenericArgument::Type(ty) => Some(borrowed_value(ty)),
                    _ => None,
                }) == Some(true)
            }
            _ => false,
        }),
        _ => false,
    }
}

/// `block` (one braced group) with `first` before its statements, its braces' span kept.
fn prepend(block: TokenStream, first: &TokenStream) -> TokenStream {
    let mut tokens = block.clone().into_iter();
    match (tokens.next(), tokens.next()) {
        (Some(proc_macro2::TokenTree::Group(group)), None) => {
            let mut inner = first.clone();
            inner.extend(group.stream());
            let mut braced = proc_macro2::Group::new(group.delimiter(), inner);
            braced.set_span(group.span());
            quote!(#braced)
        }
        _ => quote!({ #first #block }),
    }
}

/// `#[rate_limit]` written below `#[cached]`, wherever among other attributes: it would run
/// before the cache lookup and charge hits (it expands after `#[cached]`, inside it).
fn rate_limit_below(function: &Function, errors: &mut Errors) {
    let below = function
        .attrs
        .iter()
        .find(|attr| attr.path().segments.last().is_some_and(|last| last.ident == "rate_limit"));
    if let Some(attr) = below {
        errors.push(
            attr.path().span(),
            "write `#[rate_limit]` above `#[cached]`, not below it: below, it would run before the cache lookup and charge cache hits too (to charge them, write `#[rate_limit(..., charge_hits)]` above `#[cached]`)",
        );
    }
}

/// A type parameter of the function that reaches the returned value must be in the key
/// (`<T>`), or every instantiation would share one key.
fn type_params_in_key(
    sig: &syn::Signature,
    signature: &Signature<'_>,
    keys: &[Key],
    errors: &mut Errors,
) {
    let Some(output) = signature.output else { return };
    let output = quote::ToTokens::to_token_stream(output);
    for param in sig.generics.type_params() {
        let name = param.ident.to_string();
        let in_key = keys.iter().any(|key| key.roots.contains(&name));
        if mentions(&output, &name) && !in_key {
            errors.push(
                param.ident.span(),
                format!("the type parameter `{name}` reaches the cached value, so each `{name}` needs keys of its own: name it in the key template, such as `key = \"...:<{name}>:...\"` (it renders `std::any::type_name::<{name}>()`)"),
            );
        }
    }
}

impl Prepared {
    /// The rendered tags, a `Vec<String>` (empty, without allocating, when there are none).
    fn rendered_tags(&self) -> TokenStream {
        if self.tags.is_empty() {
            return quote!(::std::vec::Vec::new());
        }
        let tags = self.tags.iter().map(|tag| &tag.expr);
        quote!(::std::vec![#(#tags),*])
    }
}

/// The `Cache` a `#[cached]` call runs with, held for the call: `cache = <expr>` borrowed
/// (`&(expr)`: a temporary the expression makes lives to the end of the function), or, when
/// the expression names a parameter the body may move ([`cache_moves_with_body`]), a clone
/// of it (`cache_of`, as [`cache_expr`]); the process default otherwise. Borrowing spares
/// each call the shared handle's reference count, which every thread of a hot function
/// would otherwise write.
fn cache_holder(cache: Option<&syn::Expr>, sig: &syn::Signature) -> TokenStream {
    match cache {
        Some(expr) if !cache_moves_with_body(expr, sig) => quote_spanned!(expr.span()=> &(#expr)),
        _ => cache_expr(cache),
    }
}

/// Whether `expr` names a parameter the body may take by value: a `self` not behind a
/// reference (`self`, `self: Arc<Self>`), or a name bound by a parameter whose type is not a
/// reference. Such an expression is cloned for the call: a borrow of it would keep the body
/// from moving the parameter (`tests/ui/pass/arc-self.rs`).
fn cache_moves_with_body(expr: &syn::Expr, sig: &syn::Signature) -> bool {
    let expr = quote::ToTokens::to_token_stream(expr);
    sig.inputs.iter().any(|input| match input {
        syn::FnArg::Receiver(receiver) => {
            !matches!(*receiver.ty, Type::Reference(_)) && mentions(&expr, "self")
        }
        syn::FnArg::Typed(typed) => {
            !matches!(*typed.ty, Type::Reference(_))
                && bound_names(&quote::ToTokens::to_token_stream(&typed.pat))
                    .iter()
                    .any(|name| mentions(&expr, name))
        }
    })
}

/// The identifiers in a parameter's pattern (its bound names, and any path in it: a
/// superset, which only makes [`cache_moves_with_body`] clone more often).
fn bound_names(pattern: &TokenStream) -> Vec<String> {
    let mut names = Vec::new();
    for token in pattern.clone() {
        match token {
            proc_macro2::TokenTree::Ident(ident) if ident != "mut" && ident != "ref" => {
                names.push(ident.to_string());
            }
            proc_macro2::TokenTree::Group(group) => names.extend(bound_names(&group.stream())),
            _ => {}
        }
    }
    names
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
fn cloner(shape: &Ident) -> TokenStream {
    quote! {{
        #[allow(unused_imports)]
        use ::cache_runtime::__private::{ViaClone as _, ViaDecode as _};
        // The borrow selects the `Clone` impl when there is one (autoref specialization).
        #[allow(clippy::needless_borrow, clippy::let_and_return)]
        let cloner = (&#shape.clone_probe()).cloner();
        cloner
    }}
}

/// [`cloner`] for a value type named in the generated code (`#[cached_batch]`'s map values).
pub(crate) fn cloner_of(value: &Type) -> TokenStream {
    quote! {{
        #[allow(unused_imports)]
        use ::cache_runtime::__private::{ViaClone as _, ViaDecode as _};
        // The borrow selects the `Clone` impl when there is one (autoref specialization).
        #[allow(clippy::needless_borrow, clippy::let_and_return)]
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
    function: &Function,
    template: Option<&syn::LitStr>,
    errors: &mut Errors,
) -> Option<TokenStream> {
    let signature = Signature::inspect(function, Attribute::RateLimit, errors);
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
        assert!(text.contains("cached_detached (__cache_runtime_shape ,"), "{text}");
        // The shape is the compiler's answer for the written type, not read from its name.
        assert!(
            text.contains("ShapeProbe :: < Result < Option < u64 > , String > > :: new ()"),
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
                "unknown argument `what`; expected one of `key`, `ttl`, `lock`, `stale`, `refresh`, `early`, `timeout`, `absent_ttl`, `idle`, `tags`, `near`, `cache`, `name`",
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
            "unknown argument `refresh`; expected one of `key`, `ttl`, `stale`, `idle`, `tags`, `cache`, `name`"
        ));
        assert!(errors[1].starts_with("missing `ttl = \"...\"`: `#[cache_put]`"), "{errors:?}");
        let errors = errors_of(invalidates(quote!(key = "v:<id>"), item));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("unknown argument `key`; expected key templates"));
        assert!(errors[1].starts_with("`#[invalidates]` needs at least one key, pattern or tag"));
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
        assert!(text.contains(
            "if :: cache_runtime :: __private :: succeeded (__cache_runtime_shape , & __cache_runtime_returned)"
        ));
    }

    #[test]
    fn async_trait_methods_are_wrapped_inside_their_box() {
        // What `#[async_trait]` makes of `async fn get(&self, id: u64) -> u64 { id }`.
        let text = expanded(cached(
            quote!(key = "v:<id>", ttl = "1m"),
            quote!(
                fn get<'life0, 'async_trait>(
                    &'life0 self,
                    id: u64,
                ) -> ::core::pin::Pin<
                    Box<
                        dyn ::core::future::Future<Output = u64>
                            + ::core::marker::Send
                            + 'async_trait,
                    >,
                >
                where
                    'life0: 'async_trait,
                    Self: 'async_trait,
                {
                    Box::pin(async move {
                        let __self = self;
                        let id = id;
                        let __ret: u64 = { id };
                        #[allow(unreachable_code)]
                        __ret
                    })
                }
            ),
        ));
        assert!(
            text.contains(
                "{ :: std :: boxed :: Box :: pin (async move { static __CACHE_RUNTIME_FN"
            ),
            "{text}"
        );
        assert!(text.contains("ShapeProbe :: < u64 > :: new ()"), "{text}");
        assert!(text.contains("|| async move { let __self = self ;"), "{text}");
    }

    #[test]
    fn a_type_parameter_reaching_the_value_must_be_in_the_key() {
        let item = quote!(
            async fn load<T: Default>(id: u64) -> Option<T> {
                Some(T::default())
            }
        );
        let errors = errors_of(cached(quote!(key = "gen:<id>", ttl = "1m"), item.clone()));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("the type parameter `T` reaches the cached value"));
        let errors = errors_of(cached(quote!(key = "gen:<T>:<id>", ttl = "1m"), item));
        assert!(errors.is_empty(), "{errors:?}");
    }
}
