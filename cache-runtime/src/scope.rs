//! What one write or removal covers: a key, the keys matching a pattern, the keys stored
//! with a tag, or every key of the cache. One type for every part that must react to a write (the running flights, the
//! near cache, the replay backlog, the store), so they can never disagree on its reach.

use crate::glob;

/// The keys a write or removal covers (rendered keys, without the cache's prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// One key.
    Key(String),
    /// The keys matching a glob (`dealer:7:*`).
    Pattern(String),
    /// The keys stored with a tag (a rendered tag, `make:ford`). Which keys those are is
    /// known only to the store (its tag sets) and to the flights (their tags), not from a
    /// key's text: [`Scope::covers`] answers `false` for it.
    Tag(String),
    /// Every key of the cache (`clear()`).
    All,
}

impl Scope {
    /// A key, or a pattern when `text` has glob characters.
    pub(crate) fn of_pattern(text: &str) -> Scope {
        match glob::has_glob(text) {
            true => Scope::Pattern(text.to_owned()),
            false => Scope::Key(text.to_owned()),
        }
    }

    /// Whether `key` is covered, judged from its text: a [`Scope::Tag`] covers a key only
    /// through the key's tags, which the text does not tell (`false`; see
    /// [`Scope::covers_tagged`]).
    pub(crate) fn covers(&self, key: &str) -> bool {
        match self {
            Scope::Key(covered) => covered == key,
            Scope::Pattern(pattern) => glob::matches(pattern, key),
            Scope::Tag(_) => false,
            Scope::All => true,
        }
    }

    /// Whether `key`, stored with `tags`, is covered.
    pub(crate) fn covers_tagged(&self, key: &str, tags: &[String]) -> bool {
        match self {
            Scope::Tag(tag) => tags.iter().any(|own| own == tag),
            _ => self.covers(key),
        }
    }

    /// The widest scope that covers this one and is still served by an invalidation index
    /// (its first `:`-terminated level, `vehicle:42` -> `vehicle:*`), for a backlog that
    /// must shrink without [`Scope::All`]. `None` when there is no literal first level.
    pub(crate) fn coarsened(&self) -> Option<Scope> {
        let text = match self {
            Scope::Key(key) => key.as_str(),
            Scope::Pattern(pattern) => pattern.as_str(),
            Scope::Tag(_) | Scope::All => return None,
        };
        let literal = match self {
            Scope::Key(_) => text,
            _ => glob::literal_prefix(text),
        };
        let level = &literal[..=literal.find(':')?];
        Some(Scope::Pattern(format!("{level}*")))
    }

    /// For logs.
    pub(crate) fn text(&self) -> &str {
        match self {
            Scope::Key(text) | Scope::Pattern(text) | Scope::Tag(text) => text,
            Scope::All => "*",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Scope;

    #[test]
    fn coarsening_keeps_what_it_covered() {
        let key = Scope::Key("vehicle:42".into());
        let wider = key.coarsened().expect("a first level");
        assert_eq!(wider, Scope::Pattern("vehicle:*".into()));
        assert!(wider.covers("vehicle:42") && wider.covers("vehicle:7"));
        assert_eq!(
            Scope::Pattern("dealer:7:*".into()).coarsened(),
            Some(Scope::Pattern("dealer:*".into()))
        );
        assert_eq!(Scope::Key("plain".into()).coarsened(), None);
        assert_eq!(Scope::Pattern("*:x".into()).coarsened(), None);
    }
}
