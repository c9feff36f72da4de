//! Bodies that outlive their caller (`refresh`, `early`, `timeout`): the runtime may finish
//! them on a task of their own after the caller got its answer, so they must own what they
//! use.
//!
//! The generated closure makes the body `'static` when it is called (only on a miss or a
//! refresh, never on a plain hit): `&self` becomes a clone of `Self`, each `&T` parameter a
//! `T::Owned` (`ToOwned`: `&str` becomes a `String`, `&[u8]` a `Vec<u8>`), and owned
//! parameters move in. Inside the body, the parameters keep their names and types (a `&T`
//! is re-borrowed from the owned copy), and `self` is renamed, token by token, to the
//! clone (as async-trait does), since a block cannot rebind `self`.

use proc_macro2::{Group, Ident, Spacing, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens as _};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::{FnArg, Pat, Type, TypeParamBound};

use crate::errors::Errors;
use crate::item::mentions_impl_trait;

/// The name `self` is renamed to inside a detached body.
const SELF_CLONE: &str = "__cache_runtime_self";

/// A body made to own its arguments.
pub(crate) struct Detached {
    /// Statements run when the body is started (still borrowing the caller's arguments):
    /// the owned copies.
    pub(crate) take: TokenStream,
    /// Statements at the top of the `async move` block: the parameters, re-borrowed.
    pub(crate) rebind: TokenStream,
    /// Checks spanned on the user's parameters, so a type that cannot be owned is reported
    /// there rather than on the attribute.
    pub(crate) checks: TokenStream,
}

impl Detached {
    /// Plans the owned copies of `sig`'s arguments, reporting those that cannot be handed to
    /// a background task (`&mut`, a borrow inside an owned type, a borrowed `impl Trait`, a
    /// reference bound to a pattern, a type parameter that may not live long enough), each
    /// on the parameter with the fix. `why` names the argument that requires it.
    pub(crate) fn plan(
        sig: &syn::Signature,
        body: &TokenStream,
        why: &str,
        errors: &mut Errors,
    ) -> Detached {
        let mut take = TokenStream::new();
        let mut rebind = TokenStream::new();
        let mut checks = TokenStream::new();
        for param in sig.generics.type_params() {
            if !outlives_static(sig, &param.ident, &param.bounds) {
                let name = &param.ident;
                errors.push(
                    name.span(),
                    format!("`{why}` finishes the body in the background, after the caller returned, so its values must not borrow: add `'static` (and `Send`) to the bounds of `{name}`: `{name}: Send + 'static`"),
                );
            }
        }
        for input in &sig.inputs {
            match input {
                // Used only by the key or `cache = ...`: nothing to copy.
                FnArg::Receiver(_)
                    if !mentions(body, &Ident::new("self", proc_macro2::Span::call_site())) => {}
                FnArg::Receiver(receiver) => {
                    let span = receiver.span();
                    let clone = Ident::new(SELF_CLONE, proc_macro2::Span::call_site());
                    let copy = if receiver.reference.is_some() {
                        quote_spanned!(span=> ::cache_runtime::__private::detached_self::<Self>(self))
                    } else {
                        // `self: Arc<Self>`: a clone of the handle.
                        quote_spanned!(span=> ::cache_runtime::__private::detached_self(&self))
                    };
                    take.extend(quote_spanned! {span=> let #clone = #copy; });
                }
                FnArg::Typed(typed) => {
                    let ty = &*typed.ty;
                    match (&*typed.pat, ty) {
                        // Bound to nothing: nothing to copy.
                        (Pat::Wild(_), _) => {}
                        (_, Type::Reference(reference)) if reference.mutability.is_some() => {
                            errors.push(
                                ty.span(),
                                format!("`{why}` finishes the body in the background, after the caller returned: a `&mut` parameter cannot be lent to it; take the value, or an owned handle"),
                            );
                        }
                        // Used only by the key or `cache = ...`: nothing to copy.
                        (Pat::Ident(pat), Type::Reference(_)) if !mentions(body, &pat.ident) => {}
                        (_, Type::Reference(reference)) if mentions_impl_trait(&reference.elem) => {
                            errors.push(
                                impl_span(&reference.elem),
                                format!("`{why}` finishes the body in the background and copies each borrowed parameter it uses (`ToOwned`), which a borrowed `impl Trait` cannot be: take a concrete type (`&str`, `&[u8]`, `&Row`) or an owned value"),
                            );
                        }
                        (Pat::Ident(pat), Type::Reference(_)) => {
                            let name = &pat.ident;
                            let owned = format_ident!("__cache_runtime_owned_{}", name.unraw());
                            take.extend(quote_spanned! {ty.span()=>
                                let #owned = ::cache_runtime::__private::detached_param(#name);
                            });
                            rebind.extend(quote! {
                                let #name = ::cache_runtime::__private::OwnedParam::get(&#owned);
                            });
                        }
                        (_, Type::Reference(_)) => {
                            errors.push(
                                typed.pat.span(),
                                format!("`{why}` finishes the body in the background and copies each borrowed parameter for it: this one is bound by a pattern; bind it to a plain name (`pair: &(u64, u64)`) and destructure it in the body"),
                            );
                        }
                        // An owned type that borrows (`Option<&str>`, `Cow<'a, str>`).
                        (_, _) if borrows(ty) => {
                            errors.push(
                                ty.span(),
                                format!("`{why}` finishes the body in the background, after the caller returned, and this parameter borrows from the caller: take it owned (`Option<String>` for `Option<&str>`)"),
                            );
                        }
                        // Owned: moved into the body, which must be able to keep it.
                        (Pat::Ident(pat), _) => {
                            let name = &pat.ident;
                            checks.extend(quote_spanned! {ty.span()=>
                                ::cache_runtime::__private::detached_value(&#name);
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        Detached { take, rebind, checks }
    }
}

/// The span of the first `impl` in `ty`.
fn impl_span(ty: &Type) -> proc_macro2::Span {
    fn find(tokens: TokenStream) -> Option<proc_macro2::Span> {
        tokens.into_iter().find_map(|token| match token {
            TokenTree::Ident(ident) if ident == "impl" => Some(ident.span()),
            TokenTree::Group(group) => find(group.stream()),
            _ => None,
        })
    }
    find(ty.to_token_stream()).unwrap_or_else(|| ty.span())
}

/// Whether the type parameter `name` is bounded by `'static`, in its list or the `where`
/// clause.
fn outlives_static(
    sig: &syn::Signature,
    name: &Ident,
    bounds: &syn::punctuated::Punctuated<TypeParamBound, syn::Token![+]>,
) -> bool {
    let is_static = |bound: &TypeParamBound| matches!(bound, TypeParamBound::Lifetime(lifetime) if lifetime.ident == "static");
    bounds.iter().any(is_static)
        || sig.generics.where_clause.iter().flat_map(|clause| &clause.predicates).any(|predicate| {
            matches!(predicate, syn::WherePredicate::Type(predicate)
                if matches!(&predicate.bounded_ty, Type::Path(path) if path.path.is_ident(name))
                    && predicate.bounds.iter().any(is_static))
        })
}

/// Whether `ty` holds a reference or a lifetime other than `'static`.
fn borrows(ty: &Type) -> bool {
    fn scan(tokens: TokenStream) -> bool {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        tokens.iter().enumerate().any(|(at, token)| match token {
            TokenTree::Punct(punct) if punct.as_char() == '&' => true,
            TokenTree::Punct(punct) if punct.as_char() == '\'' => {
                !matches!(tokens.get(at + 1), Some(TokenTree::Ident(ident)) if ident == "static")
            }
            TokenTree::Group(group) => scan(group.stream()),
            _ => false,
        })
    }
    scan(ty.to_token_stream())
}

/// `block` with every `self` that names the receiver renamed to the receiver's clone.
/// `self::` paths and the bodies of items declared inside (`impl`, `trait`, `mod`), whose
/// `self` is their own, are left as written.
pub(crate) fn rename_self(block: TokenStream) -> TokenStream {
    let tokens: Vec<TokenTree> = block.into_iter().collect();
    let mut renamed = Vec::with_capacity(tokens.len());
    // Inside an item declaration (`impl ... {`): its braces keep their own `self`.
    let mut in_item = false;
    for (at, token) in tokens.iter().enumerate() {
        let token = match token {
            TokenTree::Ident(ident) if ident == "impl" || ident == "trait" || ident == "mod" => {
                in_item = true;
                token.clone()
            }
            TokenTree::Ident(ident) if ident == "self" && !starts_path(&tokens[at + 1..]) => {
                TokenTree::Ident(Ident::new(SELF_CLONE, ident.span()))
            }
            TokenTree::Group(group) if in_item => {
                if group.delimiter() == proc_macro2::Delimiter::Brace {
                    in_item = false;
                }
                token.clone()
            }
            TokenTree::Group(group) => {
                let mut inner = Group::new(group.delimiter(), rename_self(group.stream()));
                inner.set_span(group.span());
                TokenTree::Group(inner)
            }
            TokenTree::Punct(punct) if punct.as_char() == ';' => {
                in_item = false;
                token.clone()
            }
            other => other.clone(),
        };
        renamed.push(token);
    }
    renamed.into_iter().collect()
}

/// Whether `tokens` name `ident` anywhere, macro arguments included, and format strings
/// inline arguments (`format!("{region}")`).
fn mentions(tokens: &TokenStream, ident: &Ident) -> bool {
    let name = ident.unraw().to_string();
    let inline = [format!("{{{name}}}"), format!("{{{name}:")];
    tokens.clone().into_iter().any(|token| match token {
        TokenTree::Ident(other) => other == *ident,
        TokenTree::Group(group) => mentions(&group.stream(), ident),
        TokenTree::Literal(literal) => {
            let text = literal.to_string();
            inline.iter().any(|inline| text.contains(inline.as_str()))
        }
        TokenTree::Punct(_) => false,
    })
}

/// Whether `rest` starts with `::` (so the `self` before it is a module path).
fn starts_path(rest: &[TokenTree]) -> bool {
    matches!(
        rest,
        [TokenTree::Punct(first), TokenTree::Punct(second), ..]
            if first.as_char() == ':' && first.spacing() == Spacing::Joint && second.as_char() == ':'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renamed(source: &str) -> String {
        rename_self(source.parse().unwrap()).to_string()
    }

    #[test]
    fn the_receiver_is_renamed_everywhere_it_is_named() {
        assert_eq!(
            renamed("{ let x = self.db.get(self.id); format!(\"{}\", self.name) }"),
            "{ let x = __cache_runtime_self . db . get (__cache_runtime_self . id) ; format ! (\"{}\" , __cache_runtime_self . name) }"
        );
        assert_eq!(renamed("|v| self.f(v)"), "| v | __cache_runtime_self . f (v)");
    }

    #[test]
    fn module_paths_and_item_bodies_keep_their_self() {
        assert_eq!(renamed("self::helper(self)"), "self :: helper (__cache_runtime_self)");
        assert_eq!(
            renamed("impl Tr for X { fn f(&self) -> u8 { self.0 } } self.g()"),
            "impl Tr for X { fn f (& self) -> u8 { self . 0 } } __cache_runtime_self . g ()"
        );
        assert_eq!(renamed("Self::new(self)"), "Self :: new (__cache_runtime_self)");
    }
}
