//! Attribute argument grammar: `name = value` pairs and bare flags, separated by commas.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Expr, Ident, LitStr, Token};

use crate::errors::Errors;
use crate::ttl::parse_ttl;

/// One argument as written: `ident` or `ident = expr`.
pub(crate) struct RawArg {
    pub(crate) name: Ident,
    pub(crate) value: Option<Expr>,
}

impl Parse for RawArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let name = Ident::parse_any(input)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(RawArg { name, value })
    }
}

/// All arguments of one attribute.
pub(crate) struct RawArgs(pub(crate) Vec<RawArg>);

impl Parse for RawArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        Ok(RawArgs(Punctuated::<RawArg, Token![,]>::parse_terminated(input)?.into_iter().collect()))
    }
}

/// A parsed time to live.
pub(crate) struct Ttl {
    pub(crate) millis: u64,
}

/// The arguments of `#[cached]`, validated.
pub(crate) struct CachedArgs {
    pub(crate) key: LitStr,
    pub(crate) ttl: Ttl,
    pub(crate) lock: bool,
    pub(crate) cache: Option<Expr>,
    pub(crate) name: Option<LitStr>,
}

const CACHED_ARGS: &str = "`key`, `ttl`, `lock`, `cache`, `name`";

impl CachedArgs {
    /// Validates every argument, reporting all problems at once.
    pub(crate) fn from_raw(raw: RawArgs, errors: &mut Errors) -> Option<CachedArgs> {
        let mut key = None;
        let mut ttl = None;
        let mut lock = None;
        let mut cache = None;
        let mut name = None;
        let mut seen: Vec<String> = Vec::new();
        for arg in raw.0 {
            let arg_name = arg.name.to_string();
            if seen.contains(&arg_name) {
                errors.push(arg.name.span(), format!("duplicate argument `{arg_name}`"));
                continue;
            }
            seen.push(arg_name.clone());
            match arg_name.as_str() {
                "key" => key = string_value(&arg, errors, "key = \"vehicle:<id>\""),
                "name" => name = string_value(&arg, errors, "name = \"get_vehicle\""),
                "ttl" => {
                    if let Some(lit) = string_value(&arg, errors, "ttl = \"15m\"") {
                        match parse_ttl(&lit.value()) {
                            Ok(millis) => ttl = Some(Ttl { millis }),
                            Err(message) => errors.push(lit.span(), message),
                        }
                    }
                }
                "lock" => match arg.value {
                    None => lock = Some(arg.name.span()),
                    Some(value) => errors.push(value.span(), "`lock` is a flag and takes no value: write `lock`"),
                },
                "cache" => match arg.value {
                    Some(value) => cache = Some(value),
                    None => errors.push(arg.name.span(), "`cache` needs a value: `cache = self.cache`"),
                },
                _ => errors.push(
                    arg.name.span(),
                    format!("unknown argument `{arg_name}`; expected one of {CACHED_ARGS}"),
                ),
            }
        }
        if key.is_none() && !seen.iter().any(|s| s == "key") {
            errors.push(Span::call_site(), "missing `key = \"...\"`: `#[cached]` needs a key template such as `key = \"vehicle:<id>\"`");
        }
        if ttl.is_none() && !seen.iter().any(|s| s == "ttl") {
            errors.push(Span::call_site(), "missing `ttl = \"...\"`: `#[cached]` needs a time to live such as `ttl = \"15m\"`");
        }
        Some(CachedArgs { key: key?, ttl: ttl?, lock: lock.is_some(), cache, name })
    }
}

/// The string literal value of `arg`, or an error showing the expected form.
fn string_value(arg: &RawArg, errors: &mut Errors, example: &str) -> Option<LitStr> {
    match &arg.value {
        Some(Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(lit), .. })) => Some(lit.clone()),
        Some(other) => {
            errors.push(other.span(), format!("expected a string literal: `{example}`"));
            None
        }
        None => {
            errors.push(arg.name.span(), format!("`{}` needs a value: `{example}`", arg.name));
            None
        }
    }
}
