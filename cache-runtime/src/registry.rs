//! Every key template and invalidation pattern in the program, registered at link time,
//! and the check that finds invalidations that can never match a cached key.

use std::fmt;

use cache_keys::glob::Token;
use cache_keys::template::{self, Purpose};

/// What an attribute declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeclarationKind {
    /// A `#[cached]` key template.
    Cached,
    /// A `#[cache_put]` key template.
    Put,
    /// A template or pattern of `#[invalidates]`.
    Invalidates,
    /// A tag template of `#[cached(tags = [...])]` or `#[cache_put(tags = [...])]`.
    Tag,
    /// A tag template of `#[invalidates(tags = [...])]`.
    InvalidatesTag,
}

/// One template written in an attribute, with where it was written.
#[derive(Debug)]
pub struct Declaration {
    /// Which attribute.
    pub kind: DeclarationKind,
    /// The template as written (`"dealer:<v.dealer_id>:*"`).
    pub template: &'static str,
    /// The annotated function's name in stats.
    pub function: &'static str,
    /// The source file.
    pub file: &'static str,
    /// The line in that file.
    pub line: u32,
}

inventory::collect!(Declaration);

/// Every template declared by the attributes in this program (all linked crates).
pub fn declarations() -> impl Iterator<Item = &'static Declaration> {
    inventory::iter::<Declaration>.into_iter()
}

/// Invalidations that can match no key written by `#[cached]` or `#[cache_put]`.
#[derive(Debug)]
pub struct DeadInvalidations {
    /// The `#[invalidates]` templates that match nothing.
    pub dead: Vec<&'static Declaration>,
}

impl fmt::Display for DeadInvalidations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} invalidation(s) can match no cached key template or declared tag:",
            self.dead.len()
        )?;
        for d in &self.dead {
            let what = if d.kind == DeclarationKind::InvalidatesTag { "tag " } else { "" };
            writeln!(f, "  {what}{:?} in `{}` ({}:{})", d.template, d.function, d.file, d.line)?;
        }
        Ok(())
    }
}

impl std::error::Error for DeadInvalidations {}

/// Checks that every `#[invalidates]` template can match a key some `#[cached]` or
/// `#[cache_put]` template writes, so a typo such as `"homepgae:*"` is caught by a test
/// instead of leaving stale data in production. Call it from your test suite:
///
/// ```
/// // in tests/invalidations.rs, as a `#[test]`:
/// cache_runtime::check_invalidations().unwrap();
/// ```
///
/// Placeholders match any encoded value; glob characters match as in Redis. A tag of
/// `#[invalidates(tags = [...])]` is dead when no `#[cached]` or `#[cache_put]` declares a
/// tag it can render equal to (the reverse, a declared tag nobody invalidates, is fine).
///
/// # Errors
///
/// [`DeadInvalidations`] listing each template that matches no cached template, with its
/// function, file and line.
pub fn check_invalidations() -> Result<(), DeadInvalidations> {
    // Read with the parser that compiled them; a declaration it refuses was not written by
    // the attributes, and can match nothing.
    let written: Vec<Vec<Token>> = declarations()
        .filter(|d| matches!(d.kind, DeclarationKind::Cached | DeclarationKind::Put))
        .filter_map(|d| tokens(d.template, Purpose::Key))
        .collect();
    let tagged: Vec<Vec<Token>> = declarations()
        .filter(|d| d.kind == DeclarationKind::Tag)
        .filter_map(|d| tokens(d.template, Purpose::Key))
        .collect();
    let dead: Vec<&'static Declaration> = declarations()
        .filter(|d| match d.kind {
            DeclarationKind::Invalidates => {
                tokens(d.template, Purpose::Pattern).is_none_or(|pattern| {
                    !written.iter().any(|template| intersects(template, &pattern))
                })
            }
            DeclarationKind::InvalidatesTag => tokens(d.template, Purpose::Key)
                .is_none_or(|tag| !tagged.iter().any(|declared| intersects(declared, &tag))),
            _ => false,
        })
        .collect();
    if dead.is_empty() {
        Ok(())
    } else {
        Err(DeadInvalidations { dead })
    }
}

/// A template read as a pattern over rendered keys: literal characters, glob syntax (in a
/// pattern) and, for each placeholder, any run of the characters values are made of.
fn tokens(template: &str, purpose: Purpose) -> Option<Vec<Token>> {
    template::parse(template, purpose).ok().map(|template| template.tokens)
}

/// Whether `token` accepts the character `c`.
fn accepts(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(literal) => *literal == c,
        Token::AnyChar | Token::AnyRun => true,
        Token::Class(class) => class.contains(c),
        Token::Value => cache_keys::in_values(c),
    }
}

/// Whether `token` takes any number of characters (otherwise exactly one).
fn repeats(token: &Token) -> bool {
    matches!(token, Token::AnyRun | Token::Value)
}

/// Whether some character is accepted by both tokens.
fn overlap(a: &Token, b: &Token) -> bool {
    // Characters worth trying: one of each kind (plain, encoding, separator, `None` mark,
    // field separator, other) plus those the tokens name.
    let mut candidates = vec!['a', '0', '%', ':', '~', ',', '\u{1}'];
    for token in [a, b] {
        match token {
            Token::Literal(c) => candidates.push(*c),
            Token::Class(class) => {
                class.ranges.iter().for_each(|&(low, high)| candidates.extend([low, high]));
            }
            Token::AnyChar | Token::AnyRun | Token::Value => {}
        }
    }
    candidates.into_iter().any(|c| accepts(a, c) && accepts(b, c))
}

/// Whether some string is accepted by both token sequences (a reachability search over the
/// product of the two automata).
fn intersects(a: &[Token], b: &[Token]) -> bool {
    let mut seen = vec![vec![false; b.len() + 1]; a.len() + 1];
    let mut stack = vec![(0, 0)];
    while let Some((i, j)) = stack.pop() {
        if std::mem::replace(&mut seen[i][j], true) {
            continue;
        }
        if i == a.len() && j == b.len() {
            return true;
        }
        // A repeating step may also match nothing.
        if i < a.len() && repeats(&a[i]) {
            stack.push((i + 1, j));
        }
        if j < b.len() && repeats(&b[j]) {
            stack.push((i, j + 1));
        }
        if i < a.len() && j < b.len() && overlap(&a[i], &b[j]) {
            let next_i = if repeats(&a[i]) { i } else { i + 1 };
            let next_j = if repeats(&b[j]) { j } else { j + 1 };
            stack.push((next_i, next_j));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(template: &str, pattern: &str) -> bool {
        intersects(
            &tokens(template, Purpose::Key).unwrap(),
            &tokens(pattern, Purpose::Pattern).unwrap(),
        )
    }

    #[test]
    fn patterns_meet_the_templates_they_can_match() {
        assert!(matches("homepage:<section>", "homepage:*"));
        assert!(matches("vehicle:<id>", "vehicle:<v.id>"));
        assert!(matches("dealer:<id>:vehicles", "dealer:<v.dealer_id>:vehicles"));
        assert!(matches("dealer:<id>:vehicles", "dealer:*"));
        assert!(matches("dealer:<id>:vehicles", "dealer:?:vehicles"));
        assert!(matches("dealer:<id>:vehicles", "*:vehicles"));
        assert!(matches("v:<id>", "v:[0-9]*"));
        assert!(matches("config", "config"));
        // A class around a placeholder holds whatever the value renders.
        assert!(matches("v:<id>", "v:[<x>]"));
    }

    #[test]
    fn typos_and_structure_mismatches_meet_nothing() {
        assert!(!matches("homepage:<section>", "homepgae:*"));
        assert!(!matches("vehicle:<id>", "vehicles:<v.id>"));
        assert!(!matches("dealer:<id>:vehicles", "dealer:<v.dealer_id>:cars"));
        // A placeholder value never contains a raw `:`.
        assert!(!matches("vehicle:<id>", "vehicle:<v.id>:photos"));
        // (A pattern cannot name `%` any more: templates refuse it, see `cache-keys`.)
        assert!(!matches("v:<id>", "v:[:]"));
    }
}
