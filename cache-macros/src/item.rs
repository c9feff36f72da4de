//! The annotated function, and what the attributes need from its signature.
//!
//! As in tokio-macros, the signature is parsed and the body is kept as tokens: it is not
//! parsed at all, so the macro costs nothing per statement, inner attributes
//! (`#![allow(...)]`) stay at the top of the body, and a body that does not parse is reported
//! by the compiler on the user's own text.

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::{
    braced, token, FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Type, Visibility,
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
}

impl Parse for Function {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(syn::Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let content;
        let brace = braced!(content in input);
        let inner_attrs = content.call(syn::Attribute::parse_inner)?;
        let body = content.parse()?;
        Ok(Function { attrs, vis, sig, inner_attrs, brace, body })
    }
}

impl Function {
    /// The body, in its own braces (`{ ... }`, spans kept), without its inner attributes.
    pub(crate) fn block(&self) -> TokenStream {
        let mut block = TokenStream::new();
        self.brace.surround(&mut block, |tokens| tokens.extend(self.body.clone()));
        block
    }
}

/// How the cached value sits in the return type, chosen from how the type is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `-> T`: every value.
    Plain,
    /// `-> Option<T>`: `Some`.
    Option,
    /// `-> Result<T, E>`: `Ok`.
    Result,
    /// `-> Result<Option<T>, E>`: `Ok(Some)`.
    ResultOption,
}

impl Shape {
    /// Whether it has an absent result (`None`, `Ok(None)`), which `absent_ttl` caches.
    pub(crate) fn has_absent(self) -> bool {
        matches!(self, Shape::Option | Shape::ResultOption)
    }

    /// Whether the function returns a `Result` (and succeeded only on `Ok`).
    pub(crate) fn is_result(self) -> bool {
        matches!(self, Shape::Result | Shape::ResultOption)
    }
}

/// The runtime's marker type for the shape: `::cache_runtime::__private::ResultShape`.
impl ToTokens for Shape {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        let name = match self {
            Shape::Plain => "PlainShape",
            Shape::Option => "OptionShape",
            Shape::Result => "ResultShape",
            Shape::ResultOption => "ResultOptionShape",
        };
        let name = Ident::new(name, Span::call_site());
        tokens.extend(quote!(::cache_runtime::__private::#name));
    }
}

/// The cached value type and how it sits in the return type.
pub(crate) struct Returned {
    pub(crate) shape: Shape,
    pub(crate) value: Type,
}

impl Returned {
    /// Recognises `Option<T>`, `Result<T, E>` and `Result<Option<T>, E>` by their written
    /// names (also through paths and aliases such as `io::Result<T>`); anything else is `T`.
    fn of(ty: &Type) -> Returned {
        let (shape, value) = match single_generic(ty, "Result") {
            Some(ok) => match single_generic(ok, "Option") {
                Some(value) => (Shape::ResultOption, value),
                None => (Shape::Result, ok),
            },
            None => match single_generic(ty, "Option") {
                Some(value) => (Shape::Option, value),
                None => (Shape::Plain, ty),
            },
        };
        Returned { shape, value: value.clone() }
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

/// What the attributes need from a function's signature.
pub(crate) struct Signature<'a> {
    pub(crate) has_self: bool,
    /// Parameters bound to a plain identifier, with their types.
    pub(crate) params: Vec<(&'a Ident, &'a Type)>,
    pub(crate) returned: Option<Returned>,
}

impl<'a> Signature<'a> {
    /// Reads the signature, reporting what `attribute` does not accept.
    pub(crate) fn inspect(
        sig: &'a syn::Signature,
        attribute: Attribute,
        errors: &mut Errors,
    ) -> Signature<'a> {
        let name = attribute.name();
        if sig.asyncness.is_none() {
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
                    if attribute.shared_self()
                        && !matches!(&*receiver.ty, Type::Reference(r) if r.mutability.is_none())
                    {
                        errors.push(
                            receiver.span(),
                            format!("`#[{name}]` methods must take `&self`"),
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
            ReturnType::Default if attribute.needs_return() => {
                errors.push(
                    sig.ident.span(),
                    format!("`#[{name}]` needs a return type: there is no value to store"),
                );
                None
            }
            ReturnType::Default => None,
        };
        Signature { has_self, params, returned }
    }
}

/// `: ReturnType` for the binding that holds the body's result, so `?` in the body infers
/// its error type (omitted for `impl Trait`, which a `let` cannot name).
pub(crate) fn returned_annotation(sig: &syn::Signature) -> TokenStream {
    match &sig.output {
        ReturnType::Type(_, ty) if !matches!(**ty, Type::ImplTrait(_)) => quote!(: #ty),
        ReturnType::Type(..) => quote!(),
        ReturnType::Default => quote!(: ()),
    }
}
