//! Key templates: literal text with `<name>` / `<name.field.field>` placeholders, as written in
//! `#[cached(key = ...)]`, `#[cache_put(key = ...)]` and `#[invalidates(...)]`.
//!
//! [`parse`] is the one reader of templates: the macros compile them with it, and
//! `check_invalidations` reads the registered templates with it again.

use crate::glob::{Lexer, Token};
use crate::{in_values, ESCAPE, RESERVED};

/// A parsed template.
#[derive(Debug, PartialEq)]
pub struct Template {
    /// The pieces, in order: what the key is rendered from.
    pub segments: Vec<Segment>,
    /// The template as a pattern over rendered keys: each literal character, glob syntax (in a
    /// [`Purpose::Pattern`]) and [`Token::Value`] for each placeholder.
    pub tokens: Vec<Token>,
}

impl Template {
    /// Whether the template uses glob syntax (otherwise it names one key).
    pub fn is_glob(&self) -> bool {
        self.tokens.iter().any(|token| !matches!(token, Token::Literal(_) | Token::Value))
    }
}

/// One piece of a template.
#[derive(Debug, PartialEq)]
pub enum Segment {
    /// Text copied into the key as it is.
    Literal(String),
    /// A value from the arguments: `root` is a parameter name or `self`, `fields` a path of
    /// field names or tuple indices.
    Placeholder {
        /// The parameter name, or `self`.
        root: String,
        /// The field path after the root (`<v.dealer.id>`: `dealer`, `id`).
        fields: Vec<String>,
    },
}

/// What the template is for: a stored key (no glob characters) or an invalidation pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A key that values are stored under (`#[cached]`, `#[cache_put]`).
    Key,
    /// A key or a glob pattern to remove (`#[invalidates]`).
    Pattern,
}

/// Splits `text` into segments and tokens.
///
/// # Errors
///
/// Everything wrong with the template, one message each, in the order found.
pub fn parse(text: &str, purpose: Purpose) -> Result<Template, Vec<String>> {
    let mut errors: Vec<String> = Vec::new();
    let mut segments = Vec::new();
    let mut glob = Lexer::default();
    if text.is_empty() {
        errors.push("the key template is empty".into());
    }
    if text.contains(RESERVED) {
        errors.push(format!(
            "`#` in key template {text:?}: `#` is reserved for the cache's own keys (indexes, locks, fencing counters), so a key or pattern must not contain it"
        ));
    }
    if text.contains(ESCAPE) {
        errors.push(format!(
            "`%` in key template {text:?}: `%` starts the escapes of encoded values (`<x>` with \"a:b\" renders `a%3Ab`), so a literal `%` could render the same key as another template's value; use another character"
        ));
    }
    let mut literal = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match c {
            '<' => {
                let Some(end) = rest.find('>') else {
                    errors.push(format!(
                        "unclosed `<` in key template {text:?}: placeholders are written `<name>`"
                    ));
                    break;
                };
                let inner = &rest[1..end];
                if inner.contains('<') {
                    errors.push(format!(
                        "unclosed `<` in key template {text:?}: placeholders are written `<name>`"
                    ));
                }
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                match parse_placeholder(inner) {
                    Ok(placeholder) => segments.push(placeholder),
                    Err(message) => errors.push(message),
                }
                glob.value();
                rest = &rest[end + 1..];
            }
            '>' => {
                errors.push(format!("unmatched `>` in key template {text:?}"));
                rest = &rest[1..];
            }
            _ => {
                if purpose == Purpose::Key && matches!(c, '*' | '?' | '[' | ']') {
                    errors.push(format!(
                        "glob character `{c}` in the cached key {text:?}: a stored key must not contain `*`, `?`, `[` or `]` (patterns belong in `#[invalidates]`)"
                    ));
                } else if c == '\\' {
                    errors.push(format!(
                        "backslash in key template {text:?}: keys must not contain `\\`"
                    ));
                } else {
                    if c.is_whitespace() || c.is_control() {
                        errors.push(format!(
                            "whitespace or control character {c:?} in key template {text:?}: keys must not contain them"
                        ));
                    }
                    // A key's glob characters were refused above: the rest is literal text.
                    if glob.char(c).is_err() {
                        errors.push(format!("unmatched `]` in pattern {text:?}"));
                    }
                }
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    let (tokens, end) = glob.finish();
    if end.is_some() {
        // Without backslashes, only a class can be left open.
        errors.push(format!("unclosed `[` in pattern {text:?}"));
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    check_separators(&segments, text, &mut errors);
    if errors.is_empty() {
        Ok(Template { segments, tokens })
    } else {
        Err(errors)
    }
}

fn parse_placeholder(inner: &str) -> Result<Segment, String> {
    if inner.is_empty() {
        return Err(
            "empty placeholder `<>`: name a parameter, as in `<id>` or `<vehicle.id>`".into()
        );
    }
    let mut parts = inner.split('.');
    let root = parts.next().unwrap_or_default();
    let is_ident = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_alphanumeric() || c == '_')
    };
    if !is_ident(root) {
        return Err(format!("invalid placeholder `<{inner}>`: expected a parameter name, as in `<id>` or `<vehicle.id>`"));
    }
    let fields: Vec<String> = parts.map(str::to_owned).collect();
    if let Some(bad) = fields
        .iter()
        .find(|f| f.is_empty() || (!is_ident(f) && !f.chars().all(|c| c.is_ascii_digit())))
    {
        return Err(format!("invalid field `{bad}` in placeholder `<{inner}>`"));
    }
    Ok(Segment::Placeholder { root: root.to_owned(), fields })
}

/// Two placeholders must be separated by text containing a character that values never
/// contain (such as `:`); otherwise `<a><b>` renders `a=1,b=23` and `a=12,b=3` alike, and
/// `<a>~<b>` renders `a=Some(""),b=None` and `a=None,b=Some("")` alike.
fn check_separators(segments: &[Segment], text: &str, errors: &mut Vec<String>) {
    for window in segments.windows(2).chain(segments.windows(3)) {
        let (first, between, second) = match window {
            [a @ Segment::Placeholder { .. }, b @ Segment::Placeholder { .. }] => (a, None, b),
            [a @ Segment::Placeholder { .. }, Segment::Literal(l), b @ Segment::Placeholder { .. }] => {
                (a, Some(l), b)
            }
            _ => continue,
        };
        if between.is_none_or(|l| l.chars().all(in_values)) {
            errors.push(format!(
                "placeholders {} and {} in key template {text:?} need a separator such as `:` between them; otherwise different values could render the same key",
                describe(first),
                describe(second)
            ));
        }
    }
}

fn describe(segment: &Segment) -> String {
    match segment {
        Segment::Placeholder { root, fields } if fields.is_empty() => format!("`<{root}>`"),
        Segment::Placeholder { root, fields } => format!("`<{root}.{}>`", fields.join(".")),
        Segment::Literal(text) => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glob::Class;

    fn ok(text: &str) -> Vec<Segment> {
        parse(text, Purpose::Key).unwrap().segments
    }
    fn err(text: &str, purpose: Purpose) -> String {
        parse(text, purpose).unwrap_err().join("\n")
    }

    #[test]
    fn splits_literals_and_placeholders() {
        assert_eq!(
            ok("dealer:<v.dealer_id>:vehicles"),
            vec![
                Segment::Literal("dealer:".into()),
                Segment::Placeholder { root: "v".into(), fields: vec!["dealer_id".into()] },
                Segment::Literal(":vehicles".into()),
            ]
        );
        assert_eq!(ok("<self.0>").len(), 1);
        assert_eq!(ok("a:<x>:<y>").len(), 4);
    }

    #[test]
    fn reports_malformed_templates() {
        assert!(err("", Purpose::Key).contains("empty"));
        assert!(err("vehicle:<>", Purpose::Key).contains("empty placeholder"));
        assert!(err("vehicle:<id", Purpose::Key).contains("unclosed"));
        assert!(err("vehicle:id>", Purpose::Key).contains("unmatched"));
        assert!(err("vehicle:*", Purpose::Key).contains("glob"));
        assert!(err("a:<x><y>", Purpose::Key).contains("separator"));
        assert!(err("a:<x>-<y>", Purpose::Key).contains("separator"));
        assert!(err("a b", Purpose::Key).contains("whitespace"));
        assert!(err("<1x>", Purpose::Key).contains("invalid placeholder"));
        assert!(parse("homepage:*", Purpose::Pattern).is_ok());
        assert!(parse("v:[0-9]*", Purpose::Pattern).is_ok());
        assert!(err("v:[0-9", Purpose::Pattern).contains("unclosed `[`"));
        assert!(err("v:0]", Purpose::Pattern).contains("unmatched `]`"));
        assert!(err("a:<x>~<y>", Purpose::Key).contains("separator"));
        assert!(err("a:<x>,<y>", Purpose::Key).contains("separator"));
        assert!(err("a:<x>~,-<y>", Purpose::Key).contains("separator"));
        assert!(err("a:<x>:<y>~<z>", Purpose::Key).contains("separator"));
        assert!(err("a:<x>~<y>", Purpose::Pattern).contains("separator"));
        assert_eq!(ok("a:<x>~:<y>").len(), 4);
        assert_eq!(ok("a:<x>/<y>").len(), 4);
        assert_eq!(ok("__idx:x").len(), 1);
    }

    #[test]
    fn errors_come_in_text_order() {
        assert_eq!(
            parse("a]:<>:[b", Purpose::Pattern).unwrap_err(),
            vec![
                "unmatched `]` in pattern \"a]:<>:[b\"".to_owned(),
                "empty placeholder `<>`: name a parameter, as in `<id>` or `<vehicle.id>`".into(),
                "unclosed `[` in pattern \"a]:<>:[b\"".into(),
            ]
        );
    }

    #[test]
    fn hash_is_reserved() {
        for purpose in [Purpose::Key, Purpose::Pattern] {
            for text in ["#idx:x", "a#b", "vehicle:<id>#", "a:<x>#<y>", "#"] {
                let message = err(text, purpose);
                assert!(message.contains("`#` is reserved for the cache's own keys"), "{message}");
            }
        }
        // One error per template, however many `#` it has.
        assert_eq!(parse("a#b#c", Purpose::Key).unwrap_err().len(), 1);
    }

    #[test]
    fn a_literal_percent_is_refused() {
        // `q:<x>%3A` with "y" and `q:<x>` with "y:" would both render `q:y%3A`.
        for purpose in [Purpose::Key, Purpose::Pattern] {
            for text in ["q:<x>%3A", "%", "a%b:<x>", "v:<id>:100%", "%25:*"] {
                let message = err(text, purpose);
                assert!(message.contains("`%` in key template"), "{message}");
            }
        }
        // One error per template, however many `%` it has.
        assert_eq!(parse("a%b%c", Purpose::Key).unwrap_err().len(), 1);
        assert!(parse("q:<x>:3A", Purpose::Key).is_ok());
    }

    #[test]
    fn tokens_read_the_template_as_a_pattern() {
        let key = parse("v:<id>", Purpose::Key).unwrap();
        assert_eq!(key.tokens, vec![Token::Literal('v'), Token::Literal(':'), Token::Value]);
        assert!(!key.is_glob());
        let pattern = parse("v:[0-9]<id>*", Purpose::Pattern).unwrap();
        assert_eq!(
            pattern.tokens,
            vec![
                Token::Literal('v'),
                Token::Literal(':'),
                Token::Class(Class { negated: false, ranges: vec![('0', '9')] }),
                Token::Value,
                Token::AnyRun,
            ],
        );
        assert!(pattern.is_glob());
        // A class around a placeholder holds whatever the value renders: any one character.
        assert_eq!(parse("v:[<id>]", Purpose::Pattern).unwrap().tokens[2], Token::AnyChar);
        assert!(parse("v:<id>", Purpose::Pattern).is_ok_and(|t| !t.is_glob()));
    }
}
