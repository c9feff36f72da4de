//! Every key template and invalidation pattern in the program, registered at link time,
//! and the check that finds invalidations that can never match a cached key.

use std::fmt;

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
        writeln!(f, "{} invalidation(s) can match no cached key template:", self.dead.len())?;
        for d in &self.dead {
            writeln!(f, "  {:?} in `{}` ({}:{})", d.template, d.function, d.file, d.line)?;
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
/// Placeholders match any encoded value; glob characters match as in Redis.
///
/// # Errors
///
/// [`DeadInvalidations`] listing each template that matches no cached template, with its
/// function, file and line.
pub fn check_invalidations() -> Result<(), DeadInvalidations> {
    let written: Vec<Vec<Token>> = declarations()
        .filter(|d| matches!(d.kind, DeclarationKind::Cached | DeclarationKind::Put))
        .map(|d| tokens(d.template, false))
        .collect();
    let dead: Vec<&'static Declaration> = declarations()
        .filter(|d| d.kind == DeclarationKind::Invalidates)
        .filter(|d| {
            let pattern = tokens(d.template, true);
            !written.iter().any(|template| intersects(template, &pattern))
        })
        .collect();
    if dead.is_empty() {
        Ok(())
    } else {
        Err(DeadInvalidations { dead })
    }
}

/// A set of characters one step of a template or pattern accepts.
#[derive(Debug, Clone)]
enum Chars {
    Any,
    /// What an encoded placeholder value is made of.
    Encoded,
    One(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Chars {
    fn contains(&self, c: char) -> bool {
        match self {
            Chars::Any => true,
            Chars::Encoded => {
                c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '%' | '~' | ',')
            }
            Chars::One(one) => *one == c,
            Chars::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)) != *negated
            }
        }
    }

    /// Characters worth trying when intersecting with another set.
    fn samples(&self, out: &mut Vec<char>) {
        match self {
            Chars::One(c) => out.push(*c),
            Chars::Class { ranges, .. } => ranges.iter().for_each(|&(lo, hi)| out.extend([lo, hi])),
            Chars::Any | Chars::Encoded => {}
        }
    }

    fn intersects(&self, other: &Chars) -> bool {
        let mut candidates = vec!['a', '0', '%', ':', '~', ',', '\u{1}'];
        self.samples(&mut candidates);
        other.samples(&mut candidates);
        candidates.into_iter().any(|c| self.contains(c) && other.contains(c))
    }
}

/// One step: a single character from a set, or any number of them (`*`, a placeholder).
#[derive(Debug, Clone)]
struct Token {
    chars: Chars,
    repeat: bool,
}

/// Tokenizes a template; with `glob`, `*`, `?`, `[...]` and `\x` are pattern syntax.
fn tokens(template: &str, glob: bool) -> Vec<Token> {
    let chars: Vec<char> = template.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let one = |c| Token { chars: Chars::One(c), repeat: false };
    while i < chars.len() {
        match chars[i] {
            '<' => {
                i += chars[i..].iter().position(|&c| c == '>').unwrap_or(chars.len() - i) + 1;
                out.push(Token { chars: Chars::Encoded, repeat: true });
                continue;
            }
            '*' if glob => out.push(Token { chars: Chars::Any, repeat: true }),
            '?' if glob => out.push(Token { chars: Chars::Any, repeat: false }),
            '\\' if glob && i + 1 < chars.len() => {
                i += 1;
                out.push(one(chars[i]));
            }
            '[' if glob => {
                let close =
                    chars[i..].iter().position(|&c| c == ']').map_or(chars.len(), |p| i + p);
                let body = &chars[(i + 1).min(close)..close];
                let (negated, body) = match body.first() {
                    Some('^') => (true, &body[1..]),
                    _ => (false, body),
                };
                let mut ranges = Vec::new();
                let mut j = 0;
                while j < body.len() {
                    if j + 2 < body.len() && body[j + 1] == '-' {
                        ranges.push((body[j].min(body[j + 2]), body[j].max(body[j + 2])));
                        j += 3;
                    } else {
                        ranges.push((body[j], body[j]));
                        j += 1;
                    }
                }
                out.push(Token { chars: Chars::Class { negated, ranges }, repeat: false });
                i = close;
            }
            c => out.push(one(c)),
        }
        i += 1;
    }
    out
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
        if i < a.len() && a[i].repeat {
            stack.push((i + 1, j));
        }
        if j < b.len() && b[j].repeat {
            stack.push((i, j + 1));
        }
        if i < a.len() && j < b.len() && a[i].chars.intersects(&b[j].chars) {
            let next_i = if a[i].repeat { i } else { i + 1 };
            let next_j = if b[j].repeat { j } else { j + 1 };
            stack.push((next_i, next_j));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(template: &str, pattern: &str) -> bool {
        intersects(&tokens(template, false), &tokens(pattern, true))
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
    }

    #[test]
    fn typos_and_structure_mismatches_meet_nothing() {
        assert!(!matches("homepage:<section>", "homepgae:*"));
        assert!(!matches("vehicle:<id>", "vehicles:<v.id>"));
        assert!(!matches("dealer:<id>:vehicles", "dealer:<v.dealer_id>:cars"));
        // A placeholder value never contains a raw `:`.
        assert!(!matches("vehicle:<id>", "vehicle:<v.id>:photos"));
        assert!(!matches("v:<id>", "v:[^a-zA-Z0-9_.%~,-]"));
    }
}
