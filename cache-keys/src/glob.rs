//! Redis-style glob patterns: `*` (any run of characters), `?` (any one character), `[abc]`,
//! `[a-z]`, `[^a-z]` (one character of a class) and `\x` (`x` itself).
//!
//! One tokenizer ([`tokenize`]) serves validation ([`check_pattern`]), matching ([`matches()`],
//! for the memory store and for loads running in this process), and the patterns of
//! [`template`](crate::template)s. [`literal_prefix`] gives the text every matching key starts
//! with, which selects an invalidation index.

use crate::RESERVED;

/// The characters that make a pattern more than one key.
pub const GLOB_CHARS: [char; 4] = ['*', '?', '[', '\\'];

/// One step of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A character matched as itself: a character without a special meaning, or one escaped
    /// with `\`.
    Literal(char),
    /// `?`: any one character.
    AnyChar,
    /// `*`: any run of characters, the empty one included.
    AnyRun,
    /// `[...]`: one character of a class.
    Class(Class),
    /// A placeholder's value, in a [`template`](crate::template): any run of the characters
    /// that values are made of ([`in_values`](crate::in_values)). [`tokenize`] never produces
    /// it.
    Value,
}

/// A character class, `[...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// `[^...]`: the class holds the characters outside the ranges.
    pub negated: bool,
    /// Inclusive ranges, low end first; a single character is a range of one.
    pub ranges: Vec<(char, char)>,
}

impl Class {
    /// Whether `c` belongs to the class.
    pub fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|&(low, high)| (low..=high).contains(&c)) != self.negated
    }
}

/// What makes a pattern's glob syntax invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobError {
    /// A `[` without its `]`.
    UnclosedClass,
    /// A `]` outside a class.
    UnmatchedClose,
    /// A `\` with nothing after it.
    TrailingBackslash,
}

impl GlobError {
    /// The reason given for a pattern passed to the programmatic API.
    pub fn reason(self) -> &'static str {
        match self {
            GlobError::UnclosedClass => "unclosed `[` in pattern",
            GlobError::UnmatchedClose => "unmatched `]` in pattern",
            GlobError::TrailingBackslash => "a pattern must not end with `\\`",
        }
    }
}

/// Reads `pattern` into tokens.
///
/// # Errors
///
/// The first thing wrong with its glob syntax.
pub fn tokenize(pattern: &str) -> Result<Vec<Token>, GlobError> {
    match lex(pattern) {
        (tokens, None) => Ok(tokens),
        (_, Some(error)) => Err(error),
    }
}

/// Tokens for `pattern` whatever its errors (and the first of them): a stray `]` and a
/// trailing `\` stand for themselves, an unclosed class matches nothing. Matching an invalid
/// pattern with these tokens is what it always was.
fn lex(pattern: &str) -> (Vec<Token>, Option<GlobError>) {
    let mut lexer = Lexer::default();
    let mut first = None;
    for c in pattern.chars() {
        if let Err(error) = lexer.char(c) {
            first.get_or_insert(error);
        }
    }
    let (tokens, error) = lexer.finish();
    (tokens, first.or(error))
}

/// Checks a pattern given to the programmatic API (`Cache::invalidate_pattern`).
///
/// # Errors
///
/// Why the pattern is refused: it is empty, contains whitespace, a control character or
/// [`RESERVED`], or its glob syntax is invalid ([`GlobError::reason`]).
pub fn check_pattern(pattern: &str) -> Result<(), &'static str> {
    if pattern.is_empty() {
        return Err("a pattern must not be empty");
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a pattern must not contain whitespace or control characters");
    }
    if pattern.contains(RESERVED) {
        return Err("a pattern must not contain `#`: it is reserved for the cache's own keys (indexes, locks, fencing counters and load leases)");
    }
    tokenize(pattern).map(drop).map_err(GlobError::reason)
}

/// Whether `text` uses any glob syntax (otherwise it names one key).
pub fn has_glob(text: &str) -> bool {
    text.contains(GLOB_CHARS)
}

/// The text before the first glob character: every matching key starts with it.
pub fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(GLOB_CHARS).unwrap_or(pattern.len());
    &pattern[..end]
}

/// Whether `text` matches `pattern`, with Redis's semantics.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (pattern, _) = lex(pattern);
    let text: Vec<char> = text.chars().collect();
    // Iterative with one backtrack point, the last `*`: linear in practice.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Token::AnyRun) => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(Token::AnyChar) => {
                p += 1;
                t += 1;
                continue;
            }
            Some(Token::Class(class)) if class.contains(text[t]) => {
                p += 1;
                t += 1;
                continue;
            }
            Some(Token::Literal(c)) if *c == text[t] => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((star_p, star_t)) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|token| *token == Token::AnyRun)
}

/// Reads a pattern one character (or, in a template, one placeholder value) at a time.
#[derive(Default)]
pub(crate) struct Lexer {
    tokens: Vec<Token>,
    /// Outside a class, after a `\`: the next character is literal.
    escape: bool,
    class: Option<ClassLexer>,
}

/// A class being read.
struct ClassLexer {
    negated: bool,
    ranges: Vec<(char, char)>,
    /// Just after the `[`, where `^` negates.
    first: bool,
    /// A placeholder value was read inside it (in a template).
    has_value: bool,
    state: ClassState,
}

#[derive(Clone, Copy)]
enum ClassState {
    /// At the start of an item (or at the `]`).
    Item,
    /// After a `\` at the start of an item: the next character is the item's low end.
    Escape,
    /// After an item's low end.
    Low(char),
    /// After `low-`: the next character is the high end, unless it is `]`.
    Dash(char),
}

impl Lexer {
    /// Reads one character of the pattern.
    pub(crate) fn char(&mut self, c: char) -> Result<(), GlobError> {
        if let Some(class) = &mut self.class {
            if std::mem::take(&mut class.first) && c == '^' {
                class.negated = true;
                return Ok(());
            }
            match class.state {
                ClassState::Item => match c {
                    '\\' => class.state = ClassState::Escape,
                    ']' => self.close_class(),
                    _ => class.state = ClassState::Low(c),
                },
                ClassState::Escape => class.state = ClassState::Low(c),
                ClassState::Low(low) if c == '-' => class.state = ClassState::Dash(low),
                ClassState::Low(low) => {
                    class.ranges.push((low, low));
                    class.state = ClassState::Item;
                    return self.char(c);
                }
                ClassState::Dash(low) if c == ']' => {
                    class.ranges.extend([(low, low), ('-', '-')]);
                    self.close_class();
                }
                ClassState::Dash(low) => {
                    class.ranges.push((low.min(c), low.max(c)));
                    class.state = ClassState::Item;
                }
            }
            return Ok(());
        }
        if std::mem::take(&mut self.escape) {
            self.tokens.push(Token::Literal(c));
            return Ok(());
        }
        match c {
            '*' => self.tokens.push(Token::AnyRun),
            '?' => self.tokens.push(Token::AnyChar),
            '\\' => self.escape = true,
            '[' => {
                self.class = Some(ClassLexer {
                    negated: false,
                    ranges: Vec::new(),
                    first: true,
                    has_value: false,
                    state: ClassState::Item,
                })
            }
            ']' => {
                self.tokens.push(Token::Literal(']'));
                return Err(GlobError::UnmatchedClose);
            }
            _ => self.tokens.push(Token::Literal(c)),
        }
        Ok(())
    }

    /// Reads a template's placeholder value. Inside a class, the value decides what the class
    /// holds, so the class is read as `?` (any one character).
    pub(crate) fn value(&mut self) {
        match &mut self.class {
            Some(class) => {
                class.first = false;
                class.has_value = true;
                class.state = ClassState::Item;
            }
            None => self.tokens.push(Token::Value),
        }
    }

    fn close_class(&mut self) {
        if let Some(class) = self.class.take() {
            self.tokens.push(if class.has_value {
                Token::AnyChar
            } else {
                Token::Class(Class { negated: class.negated, ranges: class.ranges })
            });
        }
    }

    /// The tokens, and what is wrong with the end of the pattern.
    pub(crate) fn finish(mut self) -> (Vec<Token>, Option<GlobError>) {
        if self.class.take().is_some() {
            // Matches nothing, as an unclosed class always did.
            self.tokens.push(Token::Class(Class { negated: false, ranges: Vec::new() }));
            return (self.tokens, Some(GlobError::UnclosedClass));
        }
        if self.escape {
            self.tokens.push(Token::Literal('\\'));
            return (self.tokens, Some(GlobError::TrailingBackslash));
        }
        (self.tokens, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_redis() {
        assert!(matches("homepage:*", "homepage:featured"));
        assert!(matches("homepage:*", "homepage:"));
        assert!(!matches("homepage:*", "homepag:x"));
        assert!(matches("dealer:*:vehicles", "dealer:7:vehicles"));
        assert!(!matches("dealer:*:vehicles", "dealer:7:vehicles:2"));
        assert!(matches("v?:[0-9]", "v1:5"));
        assert!(!matches("v?:[^0-9]", "v1:5"));
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        assert!(matches("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!matches("*a*b*c*", "xxaxxcxxbxx"));
    }

    #[test]
    fn classes() {
        assert!(matches("[a-c]", "b"));
        assert!(matches("[c-a]", "b"));
        assert!(matches("[a-]", "-"));
        assert!(!matches("[a-]", "b"));
        assert!(matches("[\\]]", "]"));
        assert!(matches("[\\a-c]", "b"));
        assert!(!matches("[]", "a"));
        assert!(matches("[^]", "a"));
        assert!(matches("[[]", "["));
    }

    #[test]
    fn invalid_patterns_match_as_they_always_did() {
        // An unclosed class matches nothing; a stray `]` and a trailing `\` stand for
        // themselves.
        assert!(!matches("a[b", "a[b"));
        assert!(!matches("*[", "x"));
        assert!(matches("a]", "a]"));
        assert!(matches("a\\", "a\\"));
    }

    #[test]
    fn validates_patterns() {
        assert!(check_pattern("homepage:*").is_ok());
        assert!(check_pattern("v:[abc]").is_ok());
        assert!(check_pattern("__idx:*").is_ok());
        for bad in ["", "a b", "v:[abc", "v:abc]", "v\\", "#idx:*", "a#*", "*#*", "v:[#]", "[a\\"] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
        assert_eq!(tokenize("v:[abc"), Err(GlobError::UnclosedClass));
        assert_eq!(tokenize("v:abc]"), Err(GlobError::UnmatchedClose));
        assert_eq!(tokenize("v\\"), Err(GlobError::TrailingBackslash));
        assert_eq!(tokenize("v:[a\\"), Err(GlobError::UnclosedClass));
        // The first error wins.
        assert_eq!(tokenize("a]["), Err(GlobError::UnmatchedClose));
    }

    #[test]
    fn tokens() {
        assert_eq!(
            tokenize("a\\*?[^x-z]*").unwrap(),
            vec![
                Token::Literal('a'),
                Token::Literal('*'),
                Token::AnyChar,
                Token::Class(Class { negated: true, ranges: vec![('x', 'z')] }),
                Token::AnyRun,
            ]
        );
    }

    #[test]
    fn literal_prefix_stops_at_the_first_glob() {
        assert_eq!(literal_prefix("dealer:7:*"), "dealer:7:");
        assert_eq!(literal_prefix("*:x"), "");
        assert_eq!(literal_prefix("plain"), "plain");
        assert_eq!(literal_prefix("a\\*"), "a");
        assert!(has_glob("a\\b") && has_glob("[x]") && !has_glob("a:b"));
    }
}
