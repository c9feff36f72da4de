//! `#[derive(KeyPart)]`: a unit-only enum renders its variant's name (`Region::Eu` is `Eu`),
//! a newtype (one field, named or not) renders its field. The text goes through the same
//! encoding as every placeholder value (`KeyWriter::push_str`), so a derived part can no
//! more add a `:` level or a glob character than a `String` can.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Data, DeriveInput, Fields};

use crate::errors::Errors;

/// `#[derive(KeyPart)]`.
pub(crate) fn key_part(item: TokenStream) -> TokenStream {
    let input = match syn::parse2::<DeriveInput>(item) {
        Ok(input) => input,
        Err(error) => return error.to_compile_error(),
    };
    let mut errors = Errors::default();
    let name = &input.ident;
    let mut bounds = Vec::new();
    let body = match &input.data {
        Data::Enum(data) => {
            let arms = data.variants.iter().map(|variant| {
                let ident = &variant.ident;
                if !matches!(variant.fields, Fields::Unit) {
                    errors.push(variant.fields.span(), format!("`#[derive(KeyPart)]` renders an enum variant by its name, so it needs unit variants: `{ident}` has fields; implement `KeyPart` by hand for this enum"));
                }
                let text = ident.to_string();
                quote!(Self::#ident { .. } => __key.push_str(#text),)
            });
            if data.variants.is_empty() {
                quote!(match *self {})
            } else {
                quote!(match self { #(#arms)* })
            }
        }
        Data::Struct(data) if data.fields.len() == 1 => {
            let field = data.fields.iter().next().expect("one field");
            let ty = &field.ty;
            bounds.push(quote_spanned!(ty.span()=> #ty: ::cache_runtime::__private::KeyPart));
            let member = match &field.ident {
                Some(ident) => quote!(#ident),
                None => quote!(0),
            };
            quote_spanned! {ty.span()=>
                ::cache_runtime::__private::KeyPart::write_key_part(&self.#member, __key)
            }
        }
        Data::Struct(_) | Data::Union(_) => {
            errors.push(name.span(), "`#[derive(KeyPart)]` applies to enums of unit variants (rendered by name) and newtypes (one field, rendered as the field); for a struct of several fields, implement `KeyPart` by hand or name its fields in the template (`<param.field>`)");
            quote!()
        }
    };
    if !errors.is_empty() {
        return errors.to_compile_errors();
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut predicates: Vec<TokenStream> = where_clause
        .map(|clause| clause.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    predicates.extend(bounds);
    quote! {
        #[automatically_derived]
        impl #impl_generics ::cache_runtime::__private::KeyPart for #name #ty_generics
        where #(#predicates,)*
        {
            fn write_key_part(&self, __key: &mut ::cache_runtime::__private::KeyWriter<'_>) {
                #body
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    #[test]
    fn unit_variants_render_their_names() {
        let text = key_part(quote!(
            enum Region {
                Eu,
                Us,
            }
        ))
        .to_string();
        assert!(text.contains("Self :: Eu { .. } => __key . push_str (\"Eu\")"), "{text}");
    }

    #[test]
    fn only_unit_variants_and_newtypes() {
        let text = key_part(quote!(
            enum E {
                A(u8),
            }
        ))
        .to_string();
        assert!(text.contains("needs unit variants"), "{text}");
        let text = key_part(quote!(
            struct P(u8, u8);
        ))
        .to_string();
        assert!(text.contains("applies to enums of unit variants"), "{text}");
    }
}
