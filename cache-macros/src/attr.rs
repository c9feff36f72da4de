//! Attribute arguments: the one table of every attribute's arguments (`arguments!` below),
//! the grammar (`name = value` pairs, bare flags and, for `#[invalidates]`, string literals,
//! separated by commas) and each argument's typed value.
//!
//! From the table come the fields of [`Args`] (one typed slot per argument), the parser
//! (which attribute accepts which argument, how its value is read), the duplicate and
//! unknown-argument errors, and the list of valid arguments in that error. Rules between
//! arguments are in `valid.rs`; what each argument generates is in `expand.rs` and
//! `rate_limit.rs`.
//!
//! # Adding an argument
//!
//! 1. A row in `arguments!` below: `name: Kind, [attributes], "example";`, with a `///`
//!    line. That is the whole parser side: the slot `args.name`, its value's errors, the
//!    duplicate error, and its place in every "expected one of" list. A new kind of value is
//!    a struct in [`kind`] and its `impl Kind`.
//! 2. Its rules in `valid.rs`: one function each, added to `RULES`.
//! 3. Its consumer: where `expand.rs` (or `rate_limit.rs`) turns `args.name` into a call into
//!    `::cache_runtime::__private` (for `#[cached]`, a `with_` call on the `Policy`).
//! 4. Its row in the macro's reference in `lib.rs` (a test fails without it), and its
//!    trybuild cases.

use cache_keys::template::Purpose;
use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Expr, Ident, LitStr, Token};

use crate::errors::Errors;
use crate::ttl::parse_ttl;

/// Declares the arguments: one row per argument, `name: Kind, [attributes], "example";`.
///
/// - `name` is what users write and the field of [`Args`] that holds it.
/// - `Kind` (a type in [`kind`]) says how the value is read and what type the field holds.
/// - `[attributes]` are the [`Attribute`]s that accept it; the others report it unknown.
/// - `"example"` is the form shown in messages (`` `ttl` needs a value: `ttl = "15m"` ``);
///   `{key}` and `{function}` stand for the attribute's example key template and function
///   name.
///
/// The order of the rows is the order of the list in "unknown argument ...; expected one of".
macro_rules! arguments {
    ($(
        $(#[$doc:meta])*
        $field:ident: $kind:ident, [$($attribute:ident),+ $(,)?], $example:literal;
    )*) => {
        /// Every argument, in the order the unknown-argument error lists them.
        pub(crate) const ARGS: &[ArgSpec] = &[$(
            ArgSpec {
                name: stringify!($field),
                attributes: &[$(Attribute::$attribute),+],
                example: $example,
            },
        )*];

        /// The arguments of one attribute, each read on its own: one slot per row of the
        /// table (a slot the attribute does not accept is never written).
        pub(crate) struct Args {
            pub(crate) attribute: Attribute,
            $(
                $(#[$doc])*
                pub(crate) $field: Attr<<kind::$kind as Kind>::Value>,
            )*
            /// The templates and patterns of `#[invalidates]`, in order.
            pub(crate) templates: Vec<LitStr>,
        }

        impl Args {
            fn empty(attribute: Attribute) -> Args {
                Args {
                    attribute,
                    $($field: Attr::new(attribute.accepts(stringify!($field))),)*
                    templates: Vec::new(),
                }
            }

            /// Reads `written`, an argument `spec` describes, into its slot.
            fn set(&mut self, spec: &ArgSpec, written: Written, errors: &mut Errors) {
                let attribute = self.attribute;
                $(
                    if spec.name == stringify!($field) {
                        return self.$field.set(written, errors, |written, errors| {
                            <kind::$kind as Kind>::read(written, &spec.example(attribute), errors)
                        });
                    }
                )*
            }
        }
    };
}

arguments! {
    /// `key = "vehicle:<id>"`: the key template.
    key: Str, [Cached, CachePut, RateLimit, CachedBatch], "key = \"{key}\"";
    /// `ttl = "15m"`: the time to live.
    ttl: Duration, [Cached, CachePut, CachedBatch], "ttl = \"15m\"";
    /// `lock`: stampede protection across processes.
    lock: Flag, [Cached], "lock";
    /// `stale = "1h"`: total keep time for stale fallback, longer than `ttl`.
    stale: Duration, [Cached, CachePut], "stale = \"1h\"";
    /// `refresh = "12m"`: the age at which a hit recomputes the value in the background.
    refresh: Duration, [Cached], "refresh = \"12m\"";
    /// `early` or `early = <beta>`: XFetch's β, with the literal's span.
    early: Beta, [Cached], "early = 1.5";
    /// `timeout = "200ms"`: how long a caller holding a stale value waits for the body.
    timeout: Duration, [Cached], "timeout = \"200ms\"";
    /// `absent_ttl = "30s"`: how long absent results are cached.
    absent_ttl: Duration, [Cached, CachedBatch], "absent_ttl = \"30s\"";
    /// `idle = "30m"`: sliding expiration, each hit extends the value's life up to `ttl`.
    idle: Duration, [Cached, CachePut], "idle = \"30m\"";
    /// `tags = ["make:<v.make>", "listings"]`: tag templates (stored with the value, or, in
    /// `#[invalidates]`, the tags whose keys are removed).
    tags: Tags, [Cached, CachePut, Invalidates, CachedBatch], "tags = [\"make:<v.make>\"]";
    /// `near = false`: this function bypasses the cache's near cache.
    near: Bool, [Cached, CachedBatch], "near = false";
    /// `limit = 5`: calls a rate limit admits per window.
    limit: Int, [RateLimit], "limit = 5";
    /// `per = "1m"`: the rate limit's window.
    per: Window, [RateLimit], "per = \"1m\"";
    /// `fail_open`: admit the call when the store cannot be asked (the default).
    fail_open: Flag, [RateLimit], "fail_open";
    /// `fail_closed`: refuse the call when the store cannot be asked.
    fail_closed: Flag, [RateLimit], "fail_closed";
    /// `charge_hits`: charge cache hits too (with `#[cached]` below `#[rate_limit]`).
    charge_hits: Flag, [RateLimit], "charge_hits";
    /// `cache = <expr>`: the `Cache` to use.
    cache: Expr, [Cached, CachePut, Invalidates, RateLimit, CachedBatch], "cache = self.cache";
    /// `name = "..."`: the function's name in stats and metrics.
    name: Str, [Cached, CachePut, Invalidates, RateLimit, CachedBatch], "name = \"{function}\"";
}

/// One row of the table: an argument and the attributes that accept it.
pub(crate) struct ArgSpec {
    pub(crate) name: &'static str,
    pub(crate) attributes: &'static [Attribute],
    example: &'static str,
}

impl ArgSpec {
    /// The form shown in messages, for `attribute`.
    fn example(&self, attribute: Attribute) -> String {
        self.example
            .replace("{key}", attribute.example_key())
            .replace("{function}", attribute.example_function())
    }
}

/// Which attribute is expanding: what it accepts and requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attribute {
    Cached,
    CachePut,
    Invalidates,
    /// `#[rate_limit]`, expanded by `rate_limit.rs`.
    RateLimit,
    /// `#[cached_batch]`, expanded by `batch.rs`.
    CachedBatch,
}

impl Attribute {
    /// The name users write, in messages: `#[cached]`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Attribute::Cached => "cached",
            Attribute::CachePut => "cache_put",
            Attribute::Invalidates => "invalidates",
            Attribute::RateLimit => "rate_limit",
            Attribute::CachedBatch => "cached_batch",
        }
    }

    /// Whether its templates name keys that values are stored under (otherwise they are keys
    /// or patterns to remove).
    pub(crate) fn purpose(self) -> Purpose {
        match self {
            Attribute::Cached
            | Attribute::CachePut
            | Attribute::RateLimit
            | Attribute::CachedBatch => Purpose::Key,
            Attribute::Invalidates => Purpose::Pattern,
        }
    }

    /// Methods must take `&self` (or `self: Arc<Self>`): the cached value must not depend
    /// on mutable state.
    pub(crate) fn shared_self(self) -> bool {
        matches!(self, Attribute::Cached | Attribute::CachedBatch)
    }

    /// Whether its templates may name the returned value (`<return.id>`): rendered after the
    /// body, from the value of `Ok` / `Some` / the whole value.
    pub(crate) fn names_return(self) -> bool {
        matches!(self, Attribute::Invalidates | Attribute::CachePut)
    }

    /// A return type is needed: there must be a value to store.
    pub(crate) fn needs_return(self) -> bool {
        self != Attribute::Invalidates
    }

    /// Whether it takes string literals as arguments (the templates of `#[invalidates]`).
    fn takes_templates(self) -> bool {
        self == Attribute::Invalidates
    }

    /// Whether the table lets it accept the argument `name`.
    pub(crate) fn accepts(self, name: &str) -> bool {
        self.spec(name).is_some()
    }

    /// The table's row for the argument `name`, if this attribute accepts it.
    fn spec(self, name: &str) -> Option<&'static ArgSpec> {
        ARGS.iter().find(|spec| spec.name == name && spec.attributes.contains(&self))
    }

    /// What it accepts, for the unknown-argument error.
    fn expected(self) -> String {
        let names: Vec<String> = ARGS
            .iter()
            .filter(|spec| spec.attributes.contains(&self))
            .map(|spec| format!("`{}`", spec.name))
            .collect();
        let names = names.join(", ");
        if self.takes_templates() {
            format!("key templates or patterns as strings (`\"vehicle:<v.id>\"`, `\"homepage:*\"`), {names}")
        } else {
            format!("one of {names}")
        }
    }

    /// An example key template, for `key = ...` in messages.
    pub(crate) fn example_key(self) -> &'static str {
        match self {
            Attribute::RateLimit => "login:<ip>",
            Attribute::CachedBatch => "vehicle:<ids>",
            Attribute::Cached | Attribute::CachePut | Attribute::Invalidates => "vehicle:<id>",
        }
    }

    /// An example function name, for `name = ...` in messages.
    fn example_function(self) -> &'static str {
        match self {
            Attribute::Cached | Attribute::CachePut => "get_vehicle",
            Attribute::Invalidates => "update_vehicle",
            Attribute::RateLimit => "login",
            Attribute::CachedBatch => "vehicles",
        }
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

/// A named argument as written, with its position among the arguments.
pub(crate) struct Written {
    name: Ident,
    value: Option<Expr>,
    position: usize,
}

/// One argument's slot, set at most once (serde_derive's `Attr`).
pub(crate) struct Attr<T> {
    /// Whether the attribute accepts the argument.
    accepted: bool,
    /// Where the argument's name was written, and its position among the arguments.
    written: Option<(Span, usize)>,
    /// Its value, `None` when it was not written or its value was reported invalid.
    value: Option<T>,
}

impl<T> Attr<T> {
    fn new(accepted: bool) -> Self {
        Attr { accepted, written: None, value: None }
    }

    /// Records `written` with the value `read` makes of it (`None` once `read` reported why
    /// it cannot). A second occurrence is reported as a duplicate and its value is not read.
    fn set(
        &mut self,
        written: Written,
        errors: &mut Errors,
        read: impl FnOnce(Written, &mut Errors) -> Option<T>,
    ) {
        let span = written.name.span();
        if self.written.is_some() {
            errors.push(span, format!("duplicate argument `{}`", written.name));
            return;
        }
        self.written = Some((span, written.position));
        self.value = read(written, errors);
    }

    /// The value, if it was written and valid.
    pub(crate) fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// Whether the argument was written, valid or not.
    pub(crate) fn is_written(&self) -> bool {
        self.written.is_some()
    }

    /// Whether the attribute accepts the argument and it was not written.
    pub(crate) fn is_missing(&self) -> bool {
        self.accepted && self.written.is_none()
    }

    /// Where the argument's name was written.
    pub(crate) fn span(&self) -> Option<Span> {
        self.written.map(|(span, _)| span)
    }

    /// Its position among the arguments, if written.
    pub(crate) fn position(&self) -> Option<usize> {
        self.written.map(|(_, position)| position)
    }
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
        let mut args = Args::empty(attribute);
        for (position, arg) in raw.into_iter().enumerate() {
            args.add(arg, position, errors);
        }
        Some(args)
    }

    /// The key templates or patterns: `key`, or the templates of `#[invalidates]`.
    pub(crate) fn templates(&self) -> impl Iterator<Item = &LitStr> {
        self.key.get().into_iter().chain(&self.templates)
    }

    fn add(&mut self, arg: RawArg, position: usize, errors: &mut Errors) {
        let (name, value) = match arg {
            RawArg::Positional(lit) if self.attribute.takes_templates() => {
                self.templates.push(lit);
                return;
            }
            RawArg::Positional(lit) => {
                errors.push(lit.span(), "expected `name = value`: write `key = \"...\"`");
                return;
            }
            RawArg::Named { name, value } => (name, value),
        };
        let Some(spec) = self.attribute.spec(&name.to_string()) else {
            let expected = self.attribute.expected();
            // An option of `#[cached]` that batch loads do not support (yet): said so.
            let of_cached = Attribute::Cached.accepts(&name.to_string());
            if self.attribute == Attribute::CachedBatch && of_cached {
                errors.push(name.span(), format!("`{name}` is an option of `#[cached]` that `#[cached_batch]` does not support (yet); it accepts {expected}"));
                return;
            }
            errors.push(name.span(), format!("unknown argument `{name}`; expected {expected}"));
            return;
        };
        self.set(spec, Written { name, value, position }, errors);
    }
}

/// How a kind of argument reads its value.
pub(crate) trait Kind {
    /// What its slot in [`Args`] holds.
    type Value;

    /// Reads `written`'s value, or reports why it cannot; `example` is the form to suggest.
    fn read(written: Written, example: &str, errors: &mut Errors) -> Option<Self::Value>;
}

/// A duration argument (`ttl = "15m"`), in milliseconds, with the literal's span.
#[derive(Clone, Copy)]
pub(crate) struct Duration {
    pub(crate) millis: u64,
    pub(crate) span: Span,
}

/// A positive number (`early = 1.5`), with the literal's span.
#[derive(Clone, Copy)]
pub(crate) struct Beta {
    pub(crate) beta: f64,
    pub(crate) span: Span,
}

/// An integer literal (`limit = 5`), with its span.
#[derive(Clone, Copy)]
pub(crate) struct Int {
    pub(crate) value: u64,
    pub(crate) span: Span,
}

/// The kinds of argument, named in the table.
pub(crate) mod kind {
    /// A bare flag: `lock`.
    pub(crate) struct Flag;
    /// A string literal: `key = "vehicle:<id>"`.
    pub(crate) struct Str;
    /// A duration literal, in milliseconds: `ttl = "15m"`.
    pub(crate) struct Duration;
    /// A duration literal called a window in messages: `per = "1m"`.
    pub(crate) struct Window;
    /// XFetch's β: `early` alone (1) or a positive number, `early = 1.5`.
    pub(crate) struct Beta;
    /// A boolean literal: `near = false`.
    pub(crate) struct Bool;
    /// An integer literal: `limit = 5`.
    pub(crate) struct Int;
    /// Any expression: `cache = self.cache`.
    pub(crate) struct Expr;
    /// An array of string literals: `tags = ["make:<v.make>", "listings"]`.
    pub(crate) struct Tags;
}

impl Kind for kind::Tags {
    type Value = Vec<LitStr>;

    /// `[...]` of string literals, at least one; each is checked as a template later.
    fn read(written: Written, example: &str, errors: &mut Errors) -> Option<Vec<LitStr>> {
        let name = &written.name;
        let Some(value) = written.value else {
            errors.push(name.span(), format!("`{name}` needs a value: `{example}`"));
            return None;
        };
        let Expr::Array(array) = value else {
            errors.push(value.span(), format!("expected an array of string literals: `{example}`"));
            return None;
        };
        if array.elems.is_empty() {
            errors.push(array.span(), format!("`{name}` needs at least one tag: `{example}`"));
            return None;
        }
        let mut tags = Vec::new();
        for element in array.elems {
            match element {
                Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(lit), .. }) => tags.push(lit),
                other => errors.push(
                    other.span(),
                    format!("expected a string literal (a tag template): `{example}`"),
                ),
            }
        }
        Some(tags)
    }
}

impl Kind for kind::Str {
    type Value = LitStr;

    /// A string literal, or an error showing the expected form.
    fn read(written: Written, example: &str, errors: &mut Errors) -> Option<LitStr> {
        match written.value {
            Some(Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(lit), .. })) => Some(lit),
            Some(other) => {
                errors.push(other.span(), format!("expected a string literal: `{example}`"));
                None
            }
            None => {
                let name = &written.name;
                errors.push(name.span(), format!("`{name}` needs a value: `{example}`"));
                None
            }
        }
    }
}

impl Kind for kind::Duration {
    type Value = Duration;

    /// A duration literal (`"1h"`).
    fn read(written: Written, example: &str, errors: &mut Errors) -> Option<Duration> {
        let lit = kind::Str::read(written, example, errors)?;
        match parse_ttl(&lit.value()) {
            Ok(millis) => Some(Duration { millis, span: lit.span() }),
            Err(message) => {
                errors.push(lit.span(), message);
                None
            }
        }
    }
}

impl Kind for kind::Window {
    type Value = Duration;

    /// A duration literal (`"1m"`), called a window in messages.
    fn read(written: Written, example: &str, errors: &mut Errors) -> Option<Duration> {
        let lit = kind::Str::read(written, example, errors)?;
        match parse_ttl(&lit.value()) {
            Ok(millis) => Some(Duration { millis, span: lit.span() }),
            Err(message) => {
                errors.push(lit.span(), message.replace("time to live", "window"));
                None
            }
        }
    }
}

impl Kind for kind::Flag {
    type Value = ();

    /// A bare flag (`lock`).
    fn read(written: Written, _: &str, errors: &mut Errors) -> Option<()> {
        match written.value {
            None => Some(()),
            Some(value) => {
                let name = &written.name;
                errors.push(
                    value.span(),
                    format!("`{name}` is a flag and takes no value: write `{name}`"),
                );
                None
            }
        }
    }
}

impl Kind for kind::Bool {
    type Value = bool;

    /// A boolean literal (`near = false`).
    fn read(written: Written, _: &str, errors: &mut Errors) -> Option<bool> {
        match written.value {
            Some(Expr::Lit(syn::ExprLit { lit: syn::Lit::Bool(lit), .. })) => Some(lit.value),
            other => {
                let span = other.as_ref().map_or(written.name.span(), |value| value.span());
                let name = &written.name;
                errors.push(span, format!("expected `{name} = false` or `{name} = true`"));
                None
            }
        }
    }
}

impl Kind for kind::Beta {
    type Value = Beta;

    /// `early` (β = 1, spanned on the name) or `early = 1.5`: a positive number.
    fn read(written: Written, example: &str, errors: &mut Errors) -> Option<Beta> {
        let Some(value) = written.value else {
            return Some(Beta { beta: 1.0, span: written.name.span() });
        };
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
            Some(beta) if beta > 0.0 && beta.is_finite() => Some(Beta { beta, span: value.span() }),
            _ => {
                let name = &written.name;
                errors.push(
                    value.span(),
                    format!("expected a positive number: `{example}` (XFetch's beta; `{name}` alone is 1)"),
                );
                None
            }
        }
    }
}

impl Kind for kind::Int {
    type Value = Int;

    /// An integer literal (`limit = 5`); its range is a rule in `valid.rs`.
    fn read(written: Written, example: &str, errors: &mut Errors) -> Option<Int> {
        let Some(value) = written.value else {
            let name = &written.name;
            errors.push(name.span(), format!("`{name}` needs a value: `{example}`"));
            return None;
        };
        let Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(int), .. }) = value else {
            errors.push(value.span(), format!("expected an integer literal: `{example}`"));
            return None;
        };
        match int.base10_parse::<u64>() {
            Ok(parsed) => Some(Int { value: parsed, span: int.span() }),
            Err(error) => {
                errors.add(error);
                None
            }
        }
    }
}

impl Kind for kind::Expr {
    type Value = Expr;

    /// Any expression (`cache = self.cache`).
    fn read(written: Written, example: &str, errors: &mut Errors) -> Option<Expr> {
        if written.value.is_none() {
            let name = &written.name;
            errors.push(name.span(), format!("`{name}` needs a value: `{example}`"));
        }
        written.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Attribute; 5] = [
        Attribute::Cached,
        Attribute::CachePut,
        Attribute::Invalidates,
        Attribute::RateLimit,
        Attribute::CachedBatch,
    ];

    #[test]
    fn each_argument_has_one_row_per_attribute() {
        for attribute in ALL {
            for spec in ARGS {
                let rows = ARGS
                    .iter()
                    .filter(|other| {
                        other.name == spec.name && other.attributes.contains(&attribute)
                    })
                    .count();
                assert!(rows <= 1, "`{}` has {rows} rows for {attribute:?}", spec.name);
            }
        }
    }

    #[test]
    fn the_expected_lists_follow_the_table() {
        assert_eq!(
            Attribute::Cached.expected(),
            "one of `key`, `ttl`, `lock`, `stale`, `refresh`, `early`, `timeout`, `absent_ttl`, `idle`, `tags`, `near`, `cache`, `name`"
        );
        assert_eq!(
            Attribute::CachePut.expected(),
            "one of `key`, `ttl`, `stale`, `idle`, `tags`, `cache`, `name`"
        );
        assert_eq!(
            Attribute::Invalidates.expected(),
            "key templates or patterns as strings (`\"vehicle:<v.id>\"`, `\"homepage:*\"`), `tags`, `cache`, `name`"
        );
        assert_eq!(
            Attribute::RateLimit.expected(),
            "one of `key`, `limit`, `per`, `fail_open`, `fail_closed`, `charge_hits`, `cache`, `name`"
        );
        assert_eq!(
            Attribute::CachedBatch.expected(),
            "one of `key`, `ttl`, `absent_ttl`, `tags`, `near`, `cache`, `name`"
        );
    }

    /// The macro reference in `lib.rs` has a row for every argument each attribute accepts
    /// (`#[invalidates]` names its two in a sentence).
    #[test]
    fn the_docs_list_every_argument() {
        let docs = include_str!("lib.rs");
        for (attribute, entry) in [
            (Attribute::Cached, "pub fn cached("),
            (Attribute::CachePut, "pub fn cache_put("),
            (Attribute::RateLimit, "pub fn rate_limit("),
            (Attribute::Invalidates, "pub fn invalidates("),
            (Attribute::CachedBatch, "pub fn cached_batch("),
        ] {
            let end = docs.find(entry).unwrap();
            let doc = &docs[docs[..end].rfind("pub fn ").unwrap_or(0)..end];
            for spec in ARGS.iter().filter(|spec| spec.attributes.contains(&attribute)) {
                let name = spec.name;
                assert!(
                    doc.contains(&format!("| `{name}")) || doc.contains(&format!("`{name} = ")),
                    "the docs of `#[{}]` do not mention `{name}`",
                    attribute.name()
                );
            }
        }
    }
}
