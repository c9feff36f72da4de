//! The annotated function, and what the attributes need from its signature.
//!
//! As in tokio-macros, the signature is parsed and the body is kept as tokens: it is not
//! parsed at all, so the macro costs nothing per statement, inner attributes
//! (`#![allow(...)]`) stay at the top of the body, and a body that does not parse is reported
//! by the compiler on the user's own text.
//!
//! A method of an `#[async_trait]` impl reaches the attributes already expanded by
//! async-trait: a non-`async` fn returning `Pin<Box<dyn Future<Output = T> + Send + '_>>`
//! whose body is `Box::pin(async move { ... })`. As tracing-attributes' `AsyncInfo` does, it
//! is recognised ([`Boxed`]): the attributes wrap the inner `async` block and box the result
//! again, so the method keeps the signature async-trait gave it.

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens as _};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::{
    braced, token, Expr, FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Type,
    TypeParamBound, Visibility,
};

use crate::attr::Attribute;
use crate::errors::Errors;

/// An `fn` item or method, its body as tokens.
pub(crate) struct Function {
    /// Outer attributes, other attribute macros included.
    pub(crate) attrs: Vec<syn::Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: syn::Signature,
    /// `#![...]` at the top of the body: they apply to the function.
    pub(crate) inner_attrs: Vec<syn::Attribute>,
    brace: token::Brace,
    body: TokenStream,
    /// async-trait's expansion of an `async fn`, when this is one.
    boxed: Option<Boxed>,
}

/// An `async fn` as async-trait expands it: `fn f(..) -> Pin<Box<dyn Future<Output = T> +
/// Send + 'async_trait>> { Box::pin(async move { ... }) }`.
struct Boxed {
    /// The future's output: the `async fn`'s return type.
    output: Type,
    /// The `async move` block's braces and statements.
    brace: token::Brace,
    body: TokenStream,
}

impl Parse for Function {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(syn::Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig: syn::Signature = input.parse()?;
        let content;
        let brace = braced!(content in input);
        let inner_attrs = content.call(syn::Attribute::parse_inner)?;
        let body: TokenStream = content.parse()?;
        let boxed = if sig.asyncness.is_none() { Boxed::recognise(&sig, &body) } else { None };
        Ok(Function { attrs, vis, sig, inner_attrs, brace, body, boxed })
    }
}

impl Boxed {
    /// async-trait's shape: the return type `Pin<Box<dyn Future<Output = T> ...>>` and a body
    /// that is exactly `Box::pin(async move { ... })`.
    fn recognise(sig: &syn::Signature, body: &TokenStream) -> Option<Boxed> {
        let ReturnType::Type(_, ty) = &sig.output else { return None };
        let output = future_output(generic_of(generic_of(ty, "Pin")?, "Box")?)?;
        let Ok(Expr::Call(call)) = syn::parse2::<Expr>(body.clone()) else { return None };
        let Expr::Path(func) = &*call.func else { return None };
        let mut segments = func.path.segments.iter().rev();
        let (pin, boxed) = (segments.next()?, segments.next()?);
        if pin.ident != "pin" || boxed.ident != "Box" || call.args.len() != 1 {
            return None;
        }
        let Some(Expr::Async(block)) = call.args.first() else { return None };
        block.capture?;
        let stmts = &block.block.stmts;
        Some(Boxed {
            output: output.clone(),
            brace: block.block.brace_token,
            body: quote!(#(#stmts)*),
        })
    }
}

/// The first type argument of `ty` when its last path segment is `wrapper`.
fn generic_of<'a>(ty: &'a Type, wrapper: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != wrapper {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    args.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}

/// `T` of `dyn Future<Output = T> + ...`.
fn future_output(ty: &Type) -> Option<&Type> {
    let Type::TraitObject(object) = ty else { return None };
    object.bounds.iter().find_map(|bound| {
        let TypeParamBound::Trait(bound) = bound else { return None };
        let last = bound.path.segments.last()?;
        if last.ident != "Future" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
        args.args.iter().find_map(|arg| match arg {
            GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(&assoc.ty),
            _ => None,
        })
    })
}

impl Function {
    /// The body of the `async fn`, in its own braces (`{ ... }`, spans kept), without its
    /// inner attributes: async-trait's `async move` block for a method it expanded.
    pub(crate) fn block(&self) -> TokenStream {
        let (brace, body) = match &self.boxed {
            Some(boxed) => (&boxed.brace, &boxed.body),
            None => (&self.brace, &self.body),
        };
        let mut block = TokenStream::new();
        brace.surround(&mut block, |tokens| tokens.extend(body.clone()));
        block
    }

    /// The lint attributes for the statement holding the body: for a method async-trait
    /// expanded, whose `let id = id;` rebinding in the body is unused when only the key
    /// names `id`, `unused_variables` is allowed (the body is the user's, the binding
    /// async-trait's).
    pub(crate) fn body_lints(&self) -> TokenStream {
        match &self.boxed {
            Some(_) => quote!(#[allow(unused_variables)]),
            None => quote!(),
        }
    }

    /// Whether it is an `async fn` (itself, or as async-trait expanded it).
    pub(crate) fn is_async(&self) -> bool {
        self.sig.asyncness.is_some() || self.boxed.is_some()
    }

    /// The `async fn`'s return type (`None` for `()` written as nothing).
    pub(crate) fn output(&self) -> Option<&Type> {
        match (&self.boxed, &self.sig.output) {
            (Some(boxed), _) => Some(&boxed.output),
            (None, ReturnType::Type(_, ty)) => Some(ty),
            (None, ReturnType::Default) => None,
        }
    }

    /// The function with `body` as the body of its `async fn` (boxed again for
    /// async-trait), after the original's inner attributes.
    pub(crate) fn around(&self, body: TokenStream) -> TokenStream {
        let Function { attrs, vis, sig, inner_attrs, .. } = self;
        let body = match &self.boxed {
            Some(_) => quote!(::std::boxed::Box::pin(async move { #body })),
            None => body,
        };
        quote! {
            #(#attrs)*
            #vis #sig {
                #(#inner_attrs)*
                #body
            }
        }
    }

    /// The function with `first` before the first statement of its `async fn` body.
    pub(crate) fn with_first(&self, first: &TokenStream) -> TokenStream {
        let body = match &self.boxed {
            Some(boxed) => &boxed.body,
            None => &self.body,
        };
        self.around(quote!(#first #body))
    }

    /// `: T` for the binding that holds the body's result, so `?` in the body infers its
    /// error type (omitted for `impl Trait`, which a `let` cannot name).
    pub(crate) fn returned_annotation(&self) -> TokenStream {
        match self.output() {
            Some(ty) if !mentions_impl_trait(ty) => quote!(: #ty),
            Some(_) => quote!(),
            None => quote!(: ()),
        }
    }
}

/// Whether `ty` contains `impl Trait` (which no `let` or turbofish can name).
pub(crate) fn mentions_impl_trait(ty: &Type) -> bool {
    mentions(&ty.to_token_stream(), "impl")
}

/// Whether `tokens` contain the identifier `name`, in groups too.
pub(crate) fn mentions(tokens: &TokenStream, name: &str) -> bool {
    tokens.clone().into_iter().any(|token| match token {
        proc_macro2::TokenTree::Ident(ident) => ident == name,
        proc_macro2::TokenTree::Group(group) => mentions(&group.stream(), name),
        _ => false,
    })
}

/// A name a placeholder can use: a parameter, or a name bound by a parameter's pattern.
pub(crate) struct Param<'a> {
    pub(crate) ident: &'a Ident,
    /// Where a missing `KeyPart` is reported: the parameter's type, or the bound name.
    pub(crate) span: Span,
}

/// What the attributes need from a function's signature.
pub(crate) struct Signature<'a> {
    pub(crate) has_self: bool,
    /// Names bound by the parameters (plain names and names in patterns).
    pub(crate) params: Vec<Param<'a>>,
    /// The function's type parameters (`<T>` in a template renders `type_name::<T>()`).
    pub(crate) type_params: Vec<&'a Ident>,
    /// The `async fn`'s return type.
    pub(crate) output: Option<&'a Type>,
    /// Whether templates may name the returned value (`<return>`, `<return.field>`).
    pub(crate) names_return: bool,
}

impl<'a> Signature<'a> {
    /// Reads the signature, reporting what `attribute` does not accept.
    pub(crate) fn inspect(
        function: &'a Function,
        attribute: Attribute,
        errors: &mut Errors,
    ) -> Signature<'a> {
        let sig = &function.sig;
        let name = attribute.name();
        if !function.is_async() {
            errors.push(
                sig.fn_token.span,
                format!("`#[{name}]` applies to `async fn` only; make this function `async`"),
            );
        }
        let mut has_self = false;
        let mut params = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(receiver) => {
                    has_self = true;
                    if attribute.shared_self() && !is_shared_receiver(receiver) {
                        errors.push(
                            receiver.span(),
                            format!("`#[{name}]` methods must take `&self` or `self: Arc<Self>`: the cached value must not depend on state the method changes"),
                        );
                    }
                }
                FnArg::Typed(typed) => match &*typed.pat {
                    Pat::Ident(pat) if pat.subpat.is_none() => {
                        params.push(Param { ident: &pat.ident, span: typed.ty.span() });
                    }
                    pat => bound_names(pat, &mut params),
                },
            }
        }
        let type_params = sig.generics.type_params().map(|param| &param.ident).collect();
        let output = function.output();
        if output.is_none() && attribute.needs_return() {
            errors.push(
                sig.ident.span(),
                format!("`#[{name}]` needs a return type: there is no value to store"),
            );
        }
        Signature { has_self, params, type_params, output, names_return: attribute.names_return() }
    }

    /// The parameter or pattern-bound name `root` (raw identifiers match without `r#`).
    pub(crate) fn param(&self, root: &str) -> Option<&Param<'a>> {
        self.params.iter().find(|param| param.ident.unraw() == root)
    }
}

/// `&self` or `self: Arc<Self>`.
fn is_shared_receiver(receiver: &syn::Receiver) -> bool {
    match &*receiver.ty {
        Type::Reference(reference) => reference.mutability.is_none(),
        ty => {
            receiver.reference.is_none()
                && receiver.mutability.is_none()
                && receiver.colon_token.is_some()
                && generic_of(ty, "Arc").is_some_and(
                    |inner| matches!(inner, Type::Path(path) if path.path.is_ident("Self")),
                )
        }
    }
}

/// The names a pattern binds (`(a, b)`, `Point { x, y }`, `id @ 1..`), spanned on
/// themselves.
fn bound_names<'a>(pat: &'a Pat, names: &mut Vec<Param<'a>>) {
    match pat {
        Pat::Ident(pat) => {
            names.push(Param { ident: &pat.ident, span: pat.ident.span() });
            if let Some((_, sub)) = &pat.subpat {
                bound_names(sub, names);
            }
        }
        Pat::Tuple(tuple) => tuple.elems.iter().for_each(|pat| bound_names(pat, names)),
        Pat::TupleStruct(tuple) => tuple.elems.iter().for_each(|pat| bound_names(pat, names)),
        Pat::Struct(item) => item.fields.iter().for_each(|field| bound_names(&field.pat, names)),
        Pat::Slice(slice) => slice.elems.iter().for_each(|pat| bound_names(pat, names)),
        Pat::Reference(reference) => bound_names(&reference.pat, names),
        Pat::Paren(paren) => bound_names(&paren.pat, names),
        Pat::Type(typed) => bound_names(&typed.pat, names),
        Pat::Or(or) => or.cases.iter().take(1).for_each(|pat| bound_names(pat, names)),
        _ => {}
    }
}

/// The shape of the value `R` returned, chosen by the compiler from the resolved type
/// (`::cache_runtime::__private::ShapeProbe`): an expression of type `Shaped<S, R>`, spanned
/// on `span` (the return type). `probe` is `ShapeProbe::<R>::new()` or `ShapeProbe::of(&r)`.
pub(crate) fn shape_of(probe: &TokenStream, span: Span) -> TokenStream {
    quote::quote_spanned! {span=> {
        #[allow(unused_imports)]
        use ::cache_runtime::__private::{ByNesting as _, ByOption as _, ByPlain as _, ByResult as _};
        #[allow(clippy::needless_borrow, clippy::let_and_return)]
        let shape = (&&&#probe).shape();
        shape
    }}
}

/// `shape` (a `Shaped<S, R>` binding) once its value type was found storable: a compile error
/// on the return type (`span`) naming the cause otherwise.
pub(crate) fn storable(shape: &Ident, span: Span) -> TokenStream {
    quote::quote_spanned! {span=>
        ::cache_runtime::__private::cacheable({
            #[allow(unused_imports)]
            use ::cache_runtime::__private::{ViaAnything as _, ViaSerde as _};
            #[allow(clippy::needless_borrow, clippy::let_and_return)]
            let verdict = (&&#shape.value_probe()).verdict();
            verdict
        })
    }
}
