//! Key templates, read with the grammar the runtime shares ([`cache_keys::template`]), their
//! errors spanned on the template literal.

use proc_macro2::Span;

pub(crate) use cache_keys::template::{Purpose, Segment, Template};

/// Splits `text` into segments, or says everything wrong with it, spanned on `span`.
pub(crate) fn parse(text: &str, purpose: Purpose, span: Span) -> Result<Template, syn::Error> {
    cache_keys::template::parse(text, purpose).map_err(|messages| {
        messages
            .into_iter()
            .map(|message| syn::Error::new(span, message))
            .reduce(|mut all, error| {
                all.combine(error);
                all
            })
            .unwrap_or_else(|| syn::Error::new(span, "invalid key template"))
    })
}
