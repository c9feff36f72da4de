//! Attribute arguments: the grammar (`name = value` pairs, bare flags and, for
//! `#[invalidates]`, string literals, separated by commas) and each argument's typed value.
//! Rules between arguments are in `valid.rs`.

use cache_keys::template::Purpose;
use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Expr, Ident, LitStr, Token};

use crate::errors::Errors;
use crate::ttl::parse_ttl;

/// Which attribute is expanding: what it accepts and requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attribute {
    Cached,
    CachePut,
    Invalidates,
    /// `#[rate_limit]`, whose own arguments are read in `rate_limit.rs`.
    RateLimit,
}

impl Attribute {
    /// The name users write, in messages: `#[cached]`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Attribute::Cached => "cached",
            Attribute::CachePut => "cache_put",
            Attribute::Invalidates => "invalidates",
            Attribute::RateLimit => "rate_limit",
        }
    }

    /// Whether its templates name keys that values are stored under (otherwise they are keys
    /// or patterns to remove).
    pub(crate) fn purpose(self) -> Purpose {
        match self {
            Attribute::Cached | Attribute::CachePut | Attribute::RateLimit => Purpose::Key,
            Attribute::Invalidates => Purpose::Pattern,
        }
    }

    /// Methods must take `&self`: the cached value must not depend on mutable state.
    pub(crate) fn shared_self(self) -> bool {
        self == Attribute::Cached
    }

    /// A return type is needed: there must be a value to store.
    pub(crate) fn needs_return(self) -> bool {
        self != Attribute::Invalidates
    }

    fn accepts(self, keyword: Keyword) -> bool {
        match self {
            Attribute::Cached => true,
            Attribute::CachePut => !matches!(
                keyword,
                Keyword::Lock
                    | Keyword::Refresh
                    | Keyword::AbsentTtl
                    | Keyword::Early
                    | Keyword::Timeout
                    | Keyword::Near
            ),
            Attribute::Invalidates | Attribute::RateLimit => {
                matches!(keyword, Keyword::Cache | Keyword::Name)
            }
        }
    }

    /// What it accepts, for the unknown-argument error.
    fn expected(self) -> &'static str {
        match self {
            Attribute::Cached => {
                "one of `key`, `ttl`, `lock`, `stale`, `refresh`, `early`, `timeout`, `absent_ttl`, `idle`, `near`, `cache`, `name`"
            }
            Attribute::CachePut => "one of `key`, `ttl`, `stale`, `idle`, `cache`, `name`",
            Attribute::Invalidates => "key templates or patterns as strings (`\"vehicle:<v.id>\"`, `\"homepage:*\"`), `cache`, `name`",
            Attribute::RateLimit => "one of `key`, `limit`, `per`, `fail_open`, `fail_closed`, `charge_hits`, `cache`, `name`",
        }
    }

    /// An example for `name = ...`.
    fn name_example(self) -> &'static str {
        match self {
            Attribute::Cached | Attribute::CachePut => "name = \"get_vehicle\"",
            Attribute::Invalidates => "name = \"update_vehicle\"",
            Attribute::RateLimit => "name = \"login\"",
        }
    }
}

/// The named arguments, across attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    Key,
    Ttl,
    Lock,
    Stale,
    Refresh,
    AbsentTtl,
    Early,
    Timeout,
    Idle,
    Near,
    Cache,
    Name,
}

impl Keyword {
    fn of(ident: &Ident) -> Option<Keyword> {
        Some(match ident.to_string().as_str() {
            "key" => Keyword::Key,
            "ttl" => Keyword::Ttl,
            "lock" => Keyword::Lock,
            "stale" => Keyword::Stale,
            "refresh" => Keyword::Refresh,
            "absent_ttl" => Keyword::AbsentTtl,
            "early" => Keyword::Early,
            "timeout" => Keyword::Timeout,
            "idle" => Keyword::Idle,
            "near" => Keyword::Near,
            "cache" => Keyword::Cache,
            "name" => Keyword::Name,
            _ => return None,
        })
    }
}

/// One argument as written.
pub(crate) enum RawArg {
    /// `"homepage:*"` (a template of `#[invalidates]`).
    Positional(LitStr),
    /// `name` or `name = expr`.
    Named { name: Ident, value: Option<Expr> },
}

impl Parse for RawArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            return Ok(RawArg::Positional(input.parse()?));
        }
        let name = Ident::parse_any(input)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(RawArg::Named { name, value })
    }
}

/// A duration argument (`ttl = "15m"`), in milliseconds, with the literal's span.
#[derive(Clone, Copy)]
pub(crate) struct Duration {
    pub(crate) millis: u64,
    pub(crate) span: Span,
}

/// One argument's slot, set at most once (serde_derive's `Attr`).
pub(crate) struct Attr<T> {
    name: &'static str,
    /// Whether the argument was written, whatever its value.
    written: bool,
    /// Its value, `None` when it was not written or its value was reported invalid.
    value: Option<T>,
}

impl<T> Attr<T> {
    fn none(name: &'static str) -> Self {
        Attr { name, written: false, value: None }
    }

    /// Records the argument named at `span` with the value `read` makes of it (`None` once
    /// `read` reported why it cannot). A second occurrence is reported as a duplicate and its
    /// value is not read.
    fn set(
        &mut self,
        span: Span,
        errors: &mut Errors,
        read: impl FnOnce(&mut Errors) -> Option<T>,
    ) {
        if self.written {
            errors.push(span, format!("duplicate argument `{}`", self.name));
            return;
        }
        self.written = true;
        self.value = read(errors);
    }

    /// The value, if it was written and valid.
    pub(crate) fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// Whether the argument was written, valid or not.
    pub(crate) fn is_written(&self) -> bool {
        self.written
    }
}

/// The arguments of one attribute, each read on its own.
pub(crate) struct Args {
    pub(crate) attribute: Attribute,
    pub(crate) key: Attr<LitStr>,
    pub(crate) ttl: Attr<Duration>,
    pub(crate) lock: Attr<()>,
    pub(crate) stale: Attr<Duration>,
    pub(crate) refresh: Attr<Duration>,
    pub(crate) absent_ttl: Attr<Duration>,
    /// `early` or `early = <beta>`: XFetch's β, with the literal's span.
    pub(crate) early: Attr<(f64, Span)>,
    /// `timeout = "200ms"`: how long a caller holding a stale value waits for the body.
    pub(crate) timeout: Attr<Duration>,
    /// `idle = "30m"`: sliding expiration, each hit extends the value's life up to `ttl`.
    pub(crate) idle: Attr<Duration>,
    /// `near = false`: this function bypasses the cache's near cache.
    pub(crate) near: Attr<bool>,
    pub(crate) cache: Attr<Expr>,
    pub(crate) name: Attr<LitStr>,
    /// The templates and patterns of `#[invalidates]`, in order.
    pub(crate) templates: Vec<LitStr>,
}

impl Args {
    /// Reads the arguments of `attribute`, reporting every problem with one of them (syntax
    /// aside, which stops at the first error). `None` when the syntax is invalid.
    pub(crate) fn parse(
        attribute: Attribute,
        tokens: TokenStream,
        errors: &mut Errors,
    ) -> Option<Args> {
        let parser = Punctuated::<RawArg, Token![,]>::parse_terminated;
        let raw =
            syn::parse::Parser::parse2(parser, tokens).map_err(|error| errors.add(error)).ok()?;
        let mut args = Args {
            attribute,
            key: Attr::none("key"),
            ttl: Attr::none("ttl"),
            lock: Attr::none("lock"),
            stale: Attr::none("stale"),
            refresh: Attr::none("refresh"),
            absent_ttl: Attr::none("absent_ttl"),
            early: Attr::none("early"),
            timeout: Attr::none("timeout"),
            idle: Attr::none("idle"),
            near: Attr::none("near"),
            cache: Attr::none("cache"),
            name: Attr::none("name"),
            templates: Vec::new(),
        };
        for arg in raw {
            args.add(arg, errors);
        }
        Some(args)
    }

    /// The key templates or patterns: `key`, or the templates of `#[invalidates]`.
    pub(crate) fn templates(&self) -> impl Iterator<Item = &LitStr> {
        self.key.get().into_iter().chain(&self.templates)
    }

    fn add(&mut self, arg: RawArg, errors: &mut Errors) {
        let (name, value) = match arg {
            RawArg::Positional(lit) if self.attribute == Attribute::Invalidates => {
                self.templates.push(lit);
                return;
            }
            RawArg::Positional(lit) => {
                errors.push(lit.span(), "expected `name = value`: write `key = \"...\"`");
                return;
            }
            RawArg::Named { name, value } => (name, value),
        };
        let Some(keyword) = Keyword::of(&name).filter(|&keyword| self.attribute.accepts(keyword))
        else {
            let expected = self.attribute.expected();
            errors.push(name.span(), format!("unknown argument `{name}`; expected {expected}"));
            return;
        };
        let span = name.span();
        let value = Value { name, value };
        match keyword {
            Keyword::Key => {
                self.key.set(span, errors, |errors| value.string(errors, "key = \"vehicle:<id>\""))
            }
            Keyword::Ttl => {
                self.ttl.set(span, errors, |errors| value.duration(errors, "ttl = \"15m\""))
            }
            Keyword::Stale => {
                self.stale.set(span, errors, |errors| value.duration(errors, "stale = \"1h\""))
            }
            Keyword::Refresh => {
                self.refresh.set(span, errors, |errors| value.duration(errors, "refresh = \"12m\""))
            }
            Keyword::AbsentTtl => self
                .absent_ttl
                .set(span, errors, |errors| value.duration(errors, "absent_ttl = \"30s\"")),
            Keyword::Timeout => self
                .timeout
                .set(span, errors, |errors| value.duration(errors, "timeout = \"200ms\"")),
            Keyword::Idle => {
                self.idle.set(span, errors, |errors| value.duration(errors, "idle = \"30m\""))
            }
            Keyword::Near => self.near.set(span, errors, |errors| value.boolean(errors)),
            Keyword::Early => self.early.set(span, errors, |errors| value.beta(errors, span)),
            Keyword::Lock => self.lock.set(span, errors, |errors| value.flag(errors)),
            Keyword::Cache => self.cache.set(span, errors, |errors| value.expr(errors)),
            Keyword::Name => {
                let example = self.attribute.name_example();
                self.name.set(span, errors, |errors| value.string(errors, example))
            }
        }
    }
}

/// A named argument's value, read as the type its name calls for.
struct Value {
    name: Ident,
    value: Option<Expr>,
}

impl Value {
    /// A string literal, or an error showing the expected form.
    fn string(self, errors: &mut Errors, example: &str) -> Option<LitStr> {
        match self.value {
            Some(Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(lit), .. })) => Some(lit),
            Some(other) => {
                errors.push(other.span(), format!("expected a string literal: `{example}`"));
                None
            }
            None => {
                errors
                    .push(self.name.span(), format!("`{}` needs a value: `{example}`", self.name));
                None
            }
        }
    }

    /// A duration literal (`"1h"`).
    fn duration(self, errors: &mut Errors, example: &str) -> Option<Duration> {
        let lit = self.string(errors, example)?;
        match parse_ttl(&lit.value()) {
            Ok(millis) => Some(Duration { millis, span: lit.span() }),
            Err(message) => {
                errors.push(lit.span(), message);
                None
            }
        }
    }

    /// A bare flag (`lock`).
    fn flag(self, errors: &mut Errors) -> Option<()> {
        match self.value {
            None => Some(()),
            Some(value) => {
                let name = &self.name;
                errors.push(
                    value.span(),
                    format!("`{name}` is a flag and takes no value: write `{name}`"),
                );
                None
            }
        }
    }

    /// A boolean literal (`near = false`).
    fn boolean(self, errors: &mut Errors) -> Option<bool> {
        match self.value {
            Some(Expr::Lit(syn::ExprLit { lit: syn::Lit::Bool(lit), .. })) => Some(lit.value),
            other => {
                let span = other.as_ref().map_or(self.name.span(), |value| value.span());
                let name = &self.name;
                errors.push(span, format!("expected `{name} = false` or `{name} = true`"));
                None
            }
        }
    }

    /// `early` (β = 1) or `early = 1.5`: a positive number.
    fn beta(self, errors: &mut Errors, span: Span) -> Option<(f64, Span)> {
        let Some(value) = self.value else { return Some((1.0, span)) };
        let parsed = match &value {
            Expr::Lit(syn::ExprLit { lit: syn::Lit::Float(lit), .. }) => {
                lit.base10_parse::<f64>().ok()
            }
            Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(lit), .. }) => {
                lit.base10_parse::<f64>().ok()
            }
            _ => None,
        };
        match parsed {
            Some(beta) if beta > 0.0 && beta.is_finite() => Some((beta, value.span())),
            _ => {
                errors.push(
                    value.span(),
                    "expected a positive number: `early = 1.5` (XFetch's beta; `early` alone is 1)",
                );
                None
            }
        }
    }

    /// Any expression (`cache = self.cache`).
    fn expr(self, errors: &mut Errors) -> Option<Expr> {
        if self.value.is_none() {
            errors.push(
                self.name.span(),
                format!("`{}` needs a value: `cache = self.cache`", self.name),
            );
        }
        self.value
    }
}
