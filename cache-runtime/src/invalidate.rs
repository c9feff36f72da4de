//! Invalidation after an annotated write: the targets of `#[invalidates(...)]`, each removed
//! through the write path (`write.rs`), which detaches the running loads of the keys it
//! covers, removes the keys (and with them the pending markers of loads running anywhere,
//! so those loads cannot store), keeps a removal that failed for a connection reason for
//! replay, and evicts near copies. `Cache::invalidate`, `invalidate_pattern` and `clear`
//! take the same path.

use std::sync::Arc;

use crate::core::CacheCore;
use crate::key::pattern_may_match_within;
use crate::log_limit::LogKind;
use crate::scope::Scope;
use crate::write::{self, Change};

/// One thing an `#[invalidates]` attribute removes after its function succeeds.
#[doc(hidden)]
pub enum Target {
    /// An exact key (the template had no glob characters).
    Key(String),
    /// A glob pattern.
    Pattern(String),
    /// A rendered tag (`tags = [...]`).
    Tag(String),
}

/// Removes every target of an `#[invalidates]` attribute. Failures are counted and logged,
/// never returned: they must not change what the annotated function returns.
pub(crate) async fn invalidate_targets(
    core: &Arc<CacheCore>,
    function: &str,
    targets: Vec<Target>,
) {
    let counters = core.counters(function);
    let max = core.settings().max_key_bytes;
    for target in targets {
        let scope = match target {
            // Nothing is ever stored under a key over `max_key_bytes`, nor under any key a
            // pattern matches only beyond it: nothing to remove.
            Target::Key(key) if key.len() > max => continue,
            Target::Pattern(pattern) if !pattern_may_match_within(&pattern, max) => continue,
            Target::Key(key) => Scope::Key(key),
            Target::Pattern(pattern) => Scope::of_pattern(&pattern),
            // Nothing is stored with a tag over `max_key_bytes` (see `tags.rs`).
            Target::Tag(tag) if tag.len() > max => continue,
            Target::Tag(tag) => Scope::Tag(tag),
        };
        if let Err(error) = write::apply(core, &counters, Change::Remove(scope.clone())).await {
            if let Some(suppressed) = core.log(LogKind::RemovalFailed) {
                let text = scope.text();
                let (target, error) = (core.shown(text), core.shown_error(&error, text));
                tracing::warn!(function, %target, %error, suppressed, "cache invalidation failed");
            }
        }
    }
}
