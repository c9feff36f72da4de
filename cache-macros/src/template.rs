//! Key templates in the generated code: read with [`cache_keys::template`] (the grammar the
//! runtime shares), their placeholders resolved against the signature, rendered as an
//! expression building the key.

use cache_keys::template::{self, Purpose, Segment};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens as _};
use syn::ext::IdentExt as _;
use syn::{Ident, LitStr};

use crate::errors::Errors;
use crate::item::Signature;

/// The placeholder root that names the returned value (`<return>`, `<return.id>`): a
/// keyword, so no parameter can have that name.
pub(crate) const RETURN: &str = "return";

/// The binding the returned value is read from, for `<return...>` placeholders.
pub(crate) const RETURNED_VALUE: &str = "__cache_runtime_value";

/// A template and the expression that renders its key from the arguments.
pub(crate) struct Key {
    pub(crate) template: LitStr,
    /// An expression of type `String`.
    pub(crate) expr: TokenStream,
    /// The statements that render the key into `__cache_runtime_key` (a `String`, or what
    /// derefs to one): [`Key::render_into`].
    steps: Vec<TokenStream>,
    /// Whether it is a glob pattern (otherwise it names one key).
    pub(crate) glob: bool,
    /// Whether it names the returned value (`<return...>`): rendered after the body, with
    /// `__cache_runtime_value` bound to it.
    pub(crate) after: bool,
    /// The placeholders' roots (parameters, `self`, type parameters, `return`).
    pub(crate) roots: Vec<String>,
}

impl Key {
    /// Reads `template` and renders it, or reports everything wrong with it (each error
    /// spanned on the literal) and returns `None`.
    pub(crate) fn resolve(
        template: &LitStr,
        purpose: Purpose,
        signature: &Signature<'_>,
        errors: &mut Errors,
    ) -> Option<Key> {
        let span = template.span();
        let parsed = match template::parse(&template.value(), purpose) {
            Ok(parsed) => parsed,
            Err(messages) => {
                messages.into_iter().for_each(|message| errors.push(span, message));
                return None;
            }
        };
        let mut capacity = 0;
        let mut steps = Vec::new();
        let mut roots = Vec::new();
        for segment in &parsed.segments {
            match segment {
                Segment::Literal(text) => {
                    capacity += text.len();
                    steps.push(quote!(__cache_runtime_key.push_str(#text);));
                }
                Segment::Placeholder { root, fields } => {
                    capacity += 8;
                    roots.push(root.clone());
                    steps.extend(placeholder_value(root, fields, span, signature, errors));
                }
            }
        }
        let expr = quote! {{
            let mut __cache_runtime_key = ::std::string::String::with_capacity(#capacity);
            #(#steps)*
            __cache_runtime_key
        }};
        let after = roots.iter().any(|root| root == RETURN);
        Some(Key { template: template.clone(), expr, steps, glob: parsed.is_glob(), after, roots })
    }

    /// An expression rendering the key into `buffer` (an expression of a type that derefs
    /// mutably to `String`, such as `__private::KeyBuffer::take()`) and evaluating to it.
    pub(crate) fn render_into(&self, buffer: &TokenStream) -> TokenStream {
        let steps = &self.steps;
        quote! {{
            let mut __cache_runtime_key = #buffer;
            #(#steps)*
            __cache_runtime_key
        }}
    }
}

/// A tag template (`tags = ["make:<f.make>"]`): the key grammar (placeholders, encoding; no
/// glob characters, not empty, no `#`), its errors worded for a tag, spanned on the literal.
pub(crate) fn resolve_tag(
    template: &LitStr,
    signature: &Signature<'_>,
    errors: &mut Errors,
) -> Option<Key> {
    if let Err(messages) = template::parse(&template.value(), Purpose::Key) {
        for message in messages {
            let message = message
                .replace("the key template is empty", "the tag template is empty")
                .replace("in the cached key", "in the tag")
                .replace(
                    "a stored key must not contain `*`, `?`, `[` or `]` (patterns belong in `#[invalidates]`)",
                    "a tag is never a pattern, so it must not contain `*`, `?`, `[` or `]` (placeholder values are encoded)",
                )
                .replace("so a key or pattern must not contain it", "so a tag must not contain it")
                .replace("key template", "tag template");
            errors.push(template.span(), message);
        }
        return None;
    }
    Key::resolve(template, Purpose::Key, signature, errors)
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
    } else if root == RETURN {
        if !signature.names_return {
            errors.push(span, "`<return>` names the value the function returned, known only after its body ran: only `#[invalidates]` and `#[cache_put]` templates can use it");
            return None;
        }
        (Ident::new(RETURNED_VALUE, span).to_token_stream(), span)
    } else if let Some(param) = signature.param(root) {
        // The parameter's name, spanned on its type: a missing `KeyPart` is reported there.
        let mut ident = param.ident.clone();
        ident.set_span(param.span);
        (ident.to_token_stream(), param.span)
    } else if let Some(ty) = signature.type_params.iter().find(|ty| **ty == root) {
        // A type parameter: its name, so each instantiation has keys of its own.
        if !fields.is_empty() {
            errors.push(
                span,
                format!("`<{root}>` names a type parameter, which has no fields: write `<{root}>`"),
            );
            return None;
        }
        return Some(quote_spanned! {span=>
            ::cache_runtime::__private::push_part(&mut __cache_runtime_key, ::core::any::type_name::<#ty>());
        });
    } else {
        errors.push(span, unknown_placeholder(root, signature));
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

/// The error for a placeholder naming no parameter, with a suggestion and the parameters.
fn unknown_placeholder(root: &str, signature: &Signature<'_>) -> String {
    let mut names: Vec<String> =
        signature.params.iter().map(|param| param.ident.unraw().to_string()).collect();
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
    format!("unknown placeholder `<{root}>`: no parameter named `{root}`{suggestion} ({available})")
}
