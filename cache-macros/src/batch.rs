//! `#[cached_batch]`: one key per element of the batch parameter (`&[K]` or `Vec<K>`), one
//! lookup for all of them, the body at most once with the elements that missed.
//!
//! The arguments go through the table of `attr.rs` (`key`, `ttl`, `absent_ttl`, `tags`,
//! `near`, `cache`, `name`) and its rules (`valid.rs`). What is read here: which placeholder names
//! the batch parameter (by its written type: `&[K]`, `&Vec<K>`, `Vec<K>`; exactly one may).
//! The return type is left to the compiler: the runtime's `BatchReturn` accepts the types
//! that *are* `HashMap<K, V>` or `Result<HashMap<K, V>, E>` (aliases too), and its error
//! points at the return type; the elements are checked against the map's keys on the batch
//! parameter's type.

use cache_keys::template::{self, Purpose, Segment};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{FnArg, GenericArgument, Ident, LitStr, Pat, PathArguments, ReturnType, Type};

use crate::attr::{Args, Attribute};
use crate::errors::Errors;
use crate::expand::{cache_expr, cloner_of, optional_duration, register};
use crate::item::{Function, Signature};
use crate::template::{resolve_tag, Key};

/// `#[cached_batch(...)]`.
pub(crate) fn cached_batch(args: TokenStream, item: TokenStream) -> TokenStream {
    let function = match syn::parse2::<Function>(item.clone()) {
        Ok(function) => function,
        Err(error) => {
            let error = error.to_compile_error();
            return quote!(#error #item);
        }
    };
    let mut errors = Errors::default();
    let args = Args::parse(Attribute::CachedBatch, args, &mut errors);
    if let Some(args) = &args {
        args.check(&mut errors);
    }
    let signature = Signature::inspect(&function, Attribute::CachedBatch, &mut errors);
    let batch = args
        .as_ref()
        .and_then(|args| args.key.get())
        .and_then(|template| batch_parameter(template, &function.sig, &mut errors));
    let key = args
        .as_ref()
        .and_then(|args| args.key.get())
        .and_then(|template| Key::resolve(template, Purpose::Key, &signature, &mut errors));
    // Rendered like the key, once per element: a tag may name the element (`<ids>`) and
    // the single-valued parameters.
    let tags: Vec<Key> = args
        .iter()
        .flat_map(|args| args.tags.get().into_iter().flatten())
        .filter_map(|template| resolve_tag(template, &signature, &mut errors))
        .collect();
    let (Some(args), Some(batch), Some(key), true) = (args, batch, key, errors.is_empty()) else {
        let errors = errors.to_compile_errors();
        return quote!(#errors #item);
    };
    let (Some(ttl), ReturnType::Type(_, returned)) = (args.ttl.get(), &function.sig.output) else {
        let errors = errors.to_compile_errors();
        return quote!(#errors #item);
    };
    expand(&function, &args, ttl.millis, &batch, &key, &tags, returned)
}

/// The batch parameter: its pattern (`ids`, `mut ids`), its name, its type.
struct Batch {
    pattern: Pat,
    name: Ident,
    ty: Type,
    /// How the body's parameter is bound to the missed elements (a `Vec<K>`).
    rebind: TokenStream,
}

/// Finds the one placeholder of `template` that names a `&[K]`, `&Vec<K>` or `Vec<K>`
/// parameter; reports none or several on the template.
fn batch_parameter(template: &LitStr, sig: &syn::Signature, errors: &mut Errors) -> Option<Batch> {
    // Template errors are reported by `Key::resolve`.
    let parsed = template::parse(&template.value(), Purpose::Key).ok()?;
    let mut found: Vec<Batch> = Vec::new();
    // The parameters the placeholders name that are not written as a collection (an alias
    // of one is among them: the type is read as written, before aliases are resolved).
    let mut singles: Vec<String> = Vec::new();
    for segment in &parsed.segments {
        let Segment::Placeholder { root, .. } = segment else { continue };
        let parameter = sig.inputs.iter().find_map(|input| match input {
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) if pat.ident == root => Some(typed),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        });
        let Some(typed) = parameter else { continue };
        let Some(written) = collection(&typed.ty) else {
            let ty = &typed.ty;
            let named = format!("`{root}: {}`", shown(ty));
            if !singles.contains(&named) {
                singles.push(named);
            }
            continue;
        };
        let Pat::Ident(pat) = &*typed.pat else { continue };
        found.push(Batch {
            pattern: (*typed.pat).clone(),
            name: pat.ident.clone(),
            ty: (*typed.ty).clone(),
            rebind: match written {
                Written::Slice => quote!(&__cache_runtime_missed[..]),
                Written::VecRef => quote!(&__cache_runtime_missed),
                Written::Vec => quote!(__cache_runtime_missed),
            },
        });
    }
    match found.len() {
        1 => found.pop(),
        0 => {
            let mut message = "`#[cached_batch]` needs a placeholder that names the batch parameter, a `&[K]` or `Vec<K>` whose elements each render one key: `key = \"vehicle:<ids>\"` with `ids: &[u64]`".to_owned();
            if !singles.is_empty() {
                message.push_str(&format!("; the placeholders here name {}, not written `&[K]`, `&Vec<K>` or `Vec<K>` (the parameter's type is read as written: for an alias of a `Vec` or a slice, write the type out in the signature, e.g. `ids: Vec<u64>`)", singles.join(", ")));
            }
            errors.push(template.span(), message);
            None
        }
        _ => {
            let names: Vec<String> =
                found.iter().map(|batch| format!("`<{}>`", batch.name)).collect();
            errors.push(template.span(), format!("`#[cached_batch]` takes one batch parameter, and this key names {}: {}; the other placeholders must name single values, which render once per call", names.len(), names.join(", ")));
            None
        }
    }
}

/// A type as written, for a message: `&[u64]`, `Vec<u64>`, `&'a str`.
fn shown(ty: &Type) -> String {
    let mut text = quote!(#ty).to_string();
    for (spaced, tight) in [
        (" < ", "<"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        ("& ", "&"),
        (" [", "["),
        ("[ ", "["),
        (" ]", "]"),
        (" :: ", "::"),
        (" ,", ","),
    ] {
        text = text.replace(spaced, tight);
    }
    text
}

/// How a batch parameter is written.
enum Written {
    /// `&[K]`.
    Slice,
    /// `&Vec<K>`.
    VecRef,
    /// `Vec<K>`.
    Vec,
}

/// How `ty` is written, if it is a batch parameter's type.
fn collection(ty: &Type) -> Option<Written> {
    match ty {
        Type::Paren(inner) => collection(&inner.elem),
        Type::Group(inner) => collection(&inner.elem),
        Type::Reference(reference) if reference.mutability.is_none() => match &*reference.elem {
            Type::Slice(_) => Some(Written::Slice),
            elem => is_vec(elem).then_some(Written::VecRef),
        },
        _ => is_vec(ty).then_some(Written::Vec),
    }
}

/// Whether `ty` is written `Vec<K>` (or a path ending so).
fn is_vec(ty: &Type) -> bool {
    let Type::Path(path) = ty else { return false };
    let Some(last) = path.path.segments.last() else { return false };
    let PathArguments::AngleBracketed(args) = &last.arguments else { return false };
    last.ident == "Vec"
        && path.qself.is_none()
        && args.args.iter().filter(|arg| matches!(arg, GenericArgument::Type(_))).count() == 1
}

fn expand(
    function: &Function,
    args: &Args,
    ttl: u64,
    batch: &Batch,
    key: &Key,
    tags: &[Key],
    returned: &Type,
) -> TokenStream {
    let Function { attrs, vis, sig, inner_attrs, .. } = function;
    let name = args.name.get().map_or_else(|| sig.ident.to_string(), LitStr::value);
    let absent_ttl = optional_duration(args.absent_ttl.get());
    let near = args.near.get().copied().unwrap_or(true);
    let cache = cache_expr(args.cache.get());
    let register_tags = register("Tag", tags.iter().map(|tag| &tag.template), &name);
    let register = register("Cached", [&key.template], &name);
    let key = &key.expr;
    let Batch { pattern, name: batch_name, ty, rebind } = batch;
    // Spanned on the return type: a type that is not a map (or a `Result` of one) is
    // reported there.
    let batch_return = quote_spanned!(returned.span()=> ::cache_runtime::__private::BatchReturn);
    let value = quote!(<#returned as #batch_return>::Value);
    let cloner = cloner_of(&syn::parse_quote!(#value));
    // The calls that need `BatchReturn` are spanned on the return type (one error there,
    // deduplicated, when it is not a map); the elements on the batch parameter's type (a
    // key type other than the map's is reported there).
    let on_return = returned.span();
    let check = quote_spanned!(on_return=> ::cache_runtime::__private::batch_elements::<#returned>);
    let entry =
        quote_spanned!(on_return=> ::cache_runtime::__private::cached_batch::<#returned, _, _>);
    let elements = quote_spanned!(ty.span()=> &#batch_name[..]);
    let elements = quote_spanned! {on_return=>
        // `&ids[..]` for a `&[K]` too, so that one expression serves every written type.
        #[allow(clippy::redundant_slicing)]
        let __cache_runtime_elements = #check(#elements);
    };
    // One key per element: the batch parameter's placeholder renders the element.
    let element = Ident::new(&batch_name.to_string(), Span::call_site());
    let keys = quote_spanned! {on_return=>
        let __cache_runtime_keys: ::std::vec::Vec<::std::string::String> =
            ::core::iter::Iterator::collect(::core::iter::Iterator::map(
                <[_]>::iter(__cache_runtime_elements),
                |#element| #key,
            ));
    };
    // The tags of each element, in the elements' order (none: an empty `Vec`, no allocation).
    let tags = if tags.is_empty() {
        quote!(let __cache_runtime_tags: ::std::vec::Vec<::std::vec::Vec<::std::string::String>> = ::std::vec::Vec::new();)
    } else {
        let tags = tags.iter().map(|tag| &tag.expr);
        quote_spanned! {on_return=>
            let __cache_runtime_tags: ::std::vec::Vec<::std::vec::Vec<::std::string::String>> =
                ::core::iter::Iterator::collect(::core::iter::Iterator::map(
                    <[_]>::iter(__cache_runtime_elements),
                    |#element| ::std::vec![#(#tags),*],
                ));
        }
    };
    let block = function.block();
    // The function itself only borrows the batch parameter (the body gets the missed
    // elements): a `mut` written on it applies to the body's binding, not to the function's.
    let mut sig = sig.clone();
    for input in &mut sig.inputs {
        if let FnArg::Typed(typed) = input {
            if let Pat::Ident(pat) = &mut *typed.pat {
                if pat.ident == *batch_name {
                    pat.mutability = None;
                }
            }
        }
    }
    quote! {
        #(#attrs)*
        #vis #sig {
            #(#inner_attrs)*
            static __CACHE_RUNTIME_FN: ::cache_runtime::__private::CachedFn =
                ::cache_runtime::__private::CachedFn {
                    name: #name,
                    policy: ::cache_runtime::__private::Policy::new(
                        ::core::time::Duration::from_millis(#ttl),
                        false,
                        ::core::option::Option::None,
                        ::core::option::Option::None,
                    )
                    .with_absent_ttl(#absent_ttl)
                    .near(#near),
                    counters: ::cache_runtime::__private::CountersSlot::new(),
                };
            #register
            #register_tags
            let __cache_runtime_cache = #cache;
            #elements
            #keys
            #tags
            #entry(
                __cache_runtime_cache,
                &__CACHE_RUNTIME_FN,
                __cache_runtime_elements,
                __cache_runtime_keys,
                __cache_runtime_tags,
                #cloner,
                |__cache_runtime_missed| async move {
                    #[allow(unused_mut)]
                    let #pattern = #rebind;
                    #block
                },
            )
            .await
        }
    }
}
