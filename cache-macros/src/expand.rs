//! Code generation.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens as _};
use syn::spanned::Spanned as _;
use syn::{FnArg, GenericArgument, Ident, ItemFn, LitStr, Pat, PathArguments, ReturnType, Type};

use crate::attr::{CachedArgs, InvalidatesArgs, PutArgs, RawArgs};
use crate::errors::Errors;
use crate::template::{self, Purpose, Segment};

/// `#[cached(...)]`.
pub(crate) fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    let keyed = match Keyed::prepare("cached", Rules::CACHED, CachedArgs::from_raw, args, item) {
        Ok(keyed) => keyed,
        Err(original) => return original,
    };
    let Keyed { function, args, key, template, ttl_millis: millis, shape, value, name } = &keyed;
    let ItemFn { attrs, vis, sig, block } = function;
    let lock = args.lock;
    let stale = optional_duration(args.stale);
    let refresh = optional_duration(args.refresh);
    let cache = cache_expr(args.cache.as_ref());
    let register = register("Cached", &[template], name);
    let shape = format_ident!("{}", shape);
    let cloner = cloner(value);
    quote! {
        #(#attrs)*
        #vis #sig {
            static __CACHE_RUNTIME_FN: ::cache_runtime::__private::CachedFn =
                ::cache_runtime::__private::CachedFn {
                    name: #name,
                    ttl: ::core::time::Duration::from_millis(#millis),
                    lock: #lock,
                    stale: #stale,
                    refresh: #refresh,
                    counters: ::cache_runtime::__private::CountersSlot::new(),
                };
            #register
            let __cache_runtime_cache = #cache;
            let __cache_runtime_key = #key;
            ::cache_runtime::__private::cached::<::cache_runtime::__private::#shape, _, _>(
                __cache_runtime_cache,
                &__CACHE_RUNTIME_FN,
                __cache_runtime_key,
                #cloner,
                async move #block,
            )
            .await
        }
    }
}

/// `#[invalidates(...)]`.
pub(crate) fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let Some(function) = parse_function("invalidates", &item, &mut errors) else {
        return with_errors(&errors, item);
    };
    let args = parse_args(args, &mut errors).map(|raw| InvalidatesArgs::from_raw(raw, &mut errors));
    let signature = Signature::inspect(&function, "invalidates", Rules::WRITING, &mut errors);
    let targets: Vec<TokenStream> = args
        .iter()
        .flat_map(|args| &args.templates)
        .filter_map(|template| {
            let segments = template::parse(&template.value(), Purpose::Pattern, template.span())
                .map_err(|error| errors.add(error))
                .ok()?;
            let key = render_key(&segments, template, &signature, &mut errors)?;
            Some(if template::is_glob(&segments) {
                quote!(::cache_runtime::__private::Target::Pattern(#key))
            } else {
                quote!(::cache_runtime::__private::Target::Key(#key))
            })
        })
        .collect();
    let Some(args) = args.filter(|_| errors.is_empty()) else {
        return with_errors(&errors, item);
    };

    let ItemFn { attrs, vis, sig, block } = &function;
    let name = args.name.map_or_else(|| sig.ident.to_string(), |lit| lit.value());
    let cache = cache_expr(args.cache.as_ref());
    let register = register("Invalidates", &args.templates.iter().collect::<Vec<_>>(), &name);
    let returned_ty = returned_annotation(sig);
    // Only a successful call invalidates: `Ok` for `Result`s, any return otherwise.
    let succeeded = match &signature.returned {
        Some(returned) if returned.shape.starts_with("Result") => {
            quote!(::core::result::Result::is_ok(&__cache_runtime_returned))
        }
        _ => quote!(true),
    };
    quote! {
        #(#attrs)*
        #vis #sig {
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
        }
    }
}

/// `#[cache_put(...)]`.
pub(crate) fn cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    let keyed = match Keyed::prepare("cache_put", Rules::PUT, PutArgs::from_raw, args, item) {
        Ok(keyed) => keyed,
        Err(original) => return original,
    };
    let Keyed { function, args, key, template, ttl_millis, shape, value, name } = &keyed;
    let ItemFn { attrs, vis, sig, block } = function;
    // Readers with `stale` compute a value's age from its expiry: write with the same life.
    let millis = args.stale.unwrap_or(0).max(*ttl_millis);
    let cache = cache_expr(args.cache.as_ref());
    let register = register("Put", &[template], name);
    let shape = format_ident!("{}", shape);
    let cloner = cloner(value);
    let returned_ty = returned_annotation(sig);
    quote! {
        #(#attrs)*
        #vis #sig {
            static __CACHE_RUNTIME_FN: ::cache_runtime::__private::WritingFn =
                ::cache_runtime::__private::WritingFn {
                    name: #name,
                    ttl: ::core::time::Duration::from_millis(#millis),
                };
            #register
            let __cache_runtime_cache = #cache;
            let __cache_runtime_key = #key;
            let __cache_runtime_returned #returned_ty = async move #block.await;
            ::cache_runtime::__private::put_after::<::cache_runtime::__private::#shape, _>(
                &__cache_runtime_cache,
                &__CACHE_RUNTIME_FN,
                __cache_runtime_key,
                #cloner,
                &__cache_runtime_returned,
            )
            .await;
            __cache_runtime_returned
        }
    }
}

/// What `#[cached]` and `#[cache_put]` both need: the function, its validated arguments,
/// the key expression and the cached value's type.
struct Keyed {
    function: ItemFn,
    args: CachedArgs,
    key: TokenStream,
    template: LitStr,
    ttl_millis: u64,
    shape: &'static str,
    value: Type,
    name: String,
}

impl Keyed {
    /// Parses and validates everything, reporting every error at once; on error, returns
    /// the original item with the errors.
    fn prepare(
        attribute: &str,
        rules: Rules,
        from_raw: fn(RawArgs, &mut Errors) -> CachedArgs,
        args: TokenStream,
        item: TokenStream,
    ) -> Result<Keyed, TokenStream> {
        let mut errors = Errors::default();
        let Some(function) = parse_function(attribute, &item, &mut errors) else {
            return Err(with_errors(&errors, item));
        };
        let args = parse_args(args, &mut errors).map(|raw| from_raw(raw, &mut errors));
        let signature = Signature::inspect(&function, attribute, rules, &mut errors);
        let key = args
            .as_ref()
            .and_then(|args| args.key.as_ref())
            .and_then(|template| key_expr(template, Purpose::Key, &signature, &mut errors));
        let returned =
            signature.returned.as_ref().map(|returned| (returned.shape, returned.value.clone()));
        let (Some(args), Some(key), Some((shape, value)), true) =
            (args, key, returned, errors.is_empty())
        else {
            return Err(with_errors(&errors, item));
        };
        let (Some(template), Some(ttl)) =
            (args.key.clone(), args.ttl.as_ref().map(|ttl| ttl.millis))
        else {
            return Err(with_errors(&errors, item));
        };
        let name = args.name.as_ref().map_or_else(|| function.sig.ident.to_string(), LitStr::value);
        Ok(Keyed { function, args, key, template, ttl_millis: ttl, shape, value, name })
    }
}

fn parse_function(attribute: &str, item: &TokenStream, errors: &mut Errors) -> Option<ItemFn> {
    match syn::parse2(item.clone()) {
        Ok(function) => Some(function),
        Err(_) => {
            errors.push(
                Span::call_site(),
                format!("`#[{attribute}]` applies to `async fn` items and methods"),
            );
            None
        }
    }
}

fn parse_args(args: TokenStream, errors: &mut Errors) -> Option<RawArgs> {
    syn::parse2::<RawArgs>(args).map_err(|error| errors.add(error)).ok()
}

/// The key expression for a template, or `None` after reporting its errors.
fn key_expr(
    template: &LitStr,
    purpose: Purpose,
    signature: &Signature<'_>,
    errors: &mut Errors,
) -> Option<TokenStream> {
    let segments = template::parse(&template.value(), purpose, template.span())
        .map_err(|error| errors.add(error))
        .ok()?;
    render_key(&segments, template, signature, errors)
}

/// The `Cache` to use: `cache = <expr>` or the process default.
fn cache_expr(cache: Option<&syn::Expr>) -> TokenStream {
    match cache {
        Some(expr) => quote_spanned!(expr.span()=> ::cache_runtime::__private::cache_of(&(#expr))),
        None => quote!(::cache_runtime::__private::default_cache()),
    }
}

/// `Some(Duration)` or `None` for an optional duration argument.
fn optional_duration(millis: Option<u64>) -> TokenStream {
    match millis {
        Some(millis) => {
            quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#millis)))
        }
        None => quote!(::core::option::Option::None),
    }
}

/// `Some(T::clone)` when the cached value type is `Clone`, chosen at compile time.
fn cloner(value: &Type) -> TokenStream {
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
fn register(kind: &str, templates: &[&LitStr], function: &str) -> TokenStream {
    let kind = format_ident!("{}", kind);
    let submits = templates.iter().map(|template| {
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

/// `: ReturnType` for the binding that holds the body's result, so `?` in the body infers
/// its error type (omitted for `impl Trait`, which a `let` cannot name).
fn returned_annotation(sig: &syn::Signature) -> TokenStream {
    match &sig.output {
        ReturnType::Type(_, ty) if !matches!(**ty, Type::ImplTrait(_)) => quote!(: #ty),
        ReturnType::Type(..) => quote!(),
        ReturnType::Default => quote!(: ()),
    }
}

/// The original item plus `compile_error!`s, so call sites do not cascade into more errors.
fn with_errors(errors: &Errors, item: TokenStream) -> TokenStream {
    let errors = errors.to_compile_errors();
    quote!(#errors #item)
}

/// What the macro needs from a function's signature.
struct Signature<'a> {
    has_self: bool,
    /// Parameters bound to a plain identifier, with their types.
    params: Vec<(&'a Ident, &'a Type)>,
    returned: Option<Returned<'a>>,
}

/// The cached value type and how it sits in the return type.
struct Returned<'a> {
    shape: &'static str,
    value: &'a Type,
}

/// What an attribute requires of the function's signature.
struct Rules {
    /// Only `&self` receivers (the cached value must not depend on mutable state).
    shared_self: bool,
    /// A return type is needed (there must be a value to store).
    needs_return: bool,
}

impl Rules {
    const CACHED: Rules = Rules { shared_self: true, needs_return: true };
    const PUT: Rules = Rules { shared_self: false, needs_return: true };
    const WRITING: Rules = Rules { shared_self: false, needs_return: false };
}

impl<'a> Signature<'a> {
    fn inspect(
        function: &'a ItemFn,
        attribute: &str,
        rules: Rules,
        errors: &mut Errors,
    ) -> Signature<'a> {
        let sig = &function.sig;
        if sig.asyncness.is_none() {
            errors.push(
                sig.fn_token.span,
                format!("`#[{attribute}]` applies to `async fn` only; make this function `async`"),
            );
        }
        let mut has_self = false;
        let mut params = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(receiver) => {
                    has_self = true;
                    if rules.shared_self
                        && !matches!(&*receiver.ty, Type::Reference(r) if r.mutability.is_none())
                    {
                        errors.push(
                            receiver.span(),
                            format!("`#[{attribute}]` methods must take `&self`"),
                        );
                    }
                }
                FnArg::Typed(typed) => {
                    if let Pat::Ident(pat) = &*typed.pat {
                        params.push((&pat.ident, &*typed.ty));
                    }
                }
            }
        }
        let returned = match &sig.output {
            ReturnType::Type(_, ty) => Some(Returned::of(ty)),
            ReturnType::Default if rules.needs_return => {
                errors.push(
                    sig.ident.span(),
                    format!("`#[{attribute}]` needs a return type: there is no value to store"),
                );
                None
            }
            ReturnType::Default => None,
        };
        Signature { has_self, params, returned }
    }
}

impl<'a> Returned<'a> {
    /// Recognises `Option<T>`, `Result<T, E>` and `Result<Option<T>, E>` by their written
    /// names (also through paths and aliases such as `io::Result<T>`); anything else is `T`.
    fn of(ty: &'a Type) -> Returned<'a> {
        if let Some(ok) = single_generic(ty, "Result") {
            return match single_generic(ok, "Option") {
                Some(value) => Returned { shape: "ResultOptionShape", value },
                None => Returned { shape: "ResultShape", value: ok },
            };
        }
        match single_generic(ty, "Option") {
            Some(value) => Returned { shape: "OptionShape", value },
            None => Returned { shape: "PlainShape", value: ty },
        }
    }
}

/// The first type argument of `ty` when its last path segment is named `wrapper`.
fn single_generic<'a>(ty: &'a Type, wrapper: &str) -> Option<&'a Type> {
    match ty {
        Type::Paren(inner) => single_generic(&inner.elem, wrapper),
        Type::Group(inner) => single_generic(&inner.elem, wrapper),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            if last.ident != wrapper {
                return None;
            }
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            args.args.iter().find_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
        }
        _ => None,
    }
}

/// An expression building the key `String` from the template and the arguments.
fn render_key(
    segments: &[Segment],
    template: &LitStr,
    signature: &Signature<'_>,
    errors: &mut Errors,
) -> Option<TokenStream> {
    let span = template.span();
    let mut capacity = 0;
    let mut steps = Vec::new();
    for segment in segments {
        match segment {
            Segment::Literal(text) => {
                capacity += text.len();
                steps.push(quote!(__cache_runtime_key.push_str(#text);));
            }
            Segment::Placeholder { root, fields } => {
                capacity += 8;
                let Some(value) = placeholder_value(root, fields, span, signature, errors) else {
                    continue;
                };
                steps.push(value);
            }
        }
    }
    Some(quote! {{
        let mut __cache_runtime_key = ::std::string::String::with_capacity(#capacity);
        #(#steps)*
        __cache_runtime_key
    }})
}

/// `push_part(&mut key, &param.field)`, spanned so that a missing `KeyPart` or an unknown
/// field is reported on the user's parameter type or template.
fn placeholder_value(
    root: &str,
    fields: &[String],
    span: Span,
    signature: &Signature<'_>,
    errors: &mut Errors,
) -> Option<TokenStream> {
    let (base, type_span) = if root == "self" {
        if !signature.has_self {
            errors.push(span, "placeholder `<self...>` in a function without `self`");
            return None;
        }
        (quote_spanned!(span=> self), span)
    } else if let Some((ident, ty)) = signature.params.iter().find(|(ident, _)| *ident == root) {
        // The parameter's name, spanned on its type: a missing `KeyPart` is reported there.
        (Ident::new(&ident.to_string(), ty.span()).to_token_stream(), ty.span())
    } else {
        let mut names: Vec<String> =
            signature.params.iter().map(|(ident, _)| ident.to_string()).collect();
        if signature.has_self {
            names.insert(0, "self".into());
        }
        let suggestion = names
            .iter()
            .map(|name| (strsim::levenshtein(root, name), name))
            .filter(|(distance, name)| *distance <= 2.max(name.len() / 3))
            .min()
            .map(|(_, name)| format!("; did you mean `<{name}>`?"))
            .unwrap_or_default();
        let available = if names.is_empty() {
            "the function has no named parameters".to_owned()
        } else {
            format!(
                "parameters: {}",
                names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )
        };
        errors.push(span, format!("unknown placeholder `<{root}>`: no parameter named `{root}`{suggestion} ({available})"));
        return None;
    };
    if fields.is_empty() {
        return Some(quote_spanned! {type_span=>
            ::cache_runtime::__private::push_part(&mut __cache_runtime_key, &#base);
        });
    }
    let fields = fields.iter().map(|field| match field.parse::<u32>() {
        Ok(index) => syn::Index { index, span }.to_token_stream(),
        Err(_) => Ident::new(field, span).to_token_stream(),
    });
    Some(quote_spanned! {span=>
        ::cache_runtime::__private::push_part(&mut __cache_runtime_key, &#base #(.#fields)*);
    })
}

// ---- used by `#[rate_limit]` (rate_limit.rs) ------------------------------------------------

/// Checks `function`'s signature for `#[rate_limit]` (an `async fn`, any receiver) and
/// renders `template`, if given, as `#[cached]` renders its key. `None` after reporting.
pub(crate) fn rate_limit_key(
    function: &ItemFn,
    template: Option<&LitStr>,
    errors: &mut Errors,
) -> Option<TokenStream> {
    let signature = Signature::inspect(function, "rate_limit", Rules::WRITING, errors);
    key_expr(template?, Purpose::Key, &signature, errors)
}

/// The `Cache` expression for `#[rate_limit]`, as for the other attributes.
pub(crate) fn rate_limit_cache(cache: Option<&syn::Expr>) -> TokenStream {
    cache_expr(cache)
}
