//! Tags on Redis: one sorted set per tag, `<prefix>#tag:<tag>`, whose members are the keys
//! stored with the tag, each scored by when the key expires at the latest.
//!
//! **Upkeep.** A tag set is kept exactly like an invalidation index (`index.rs`), by the
//! same scripts and the same `index_add`: a write-through and a load's pending marker join
//! the sets of their tags *before or with* the value (on standalone in the same script as
//! the `SET`, so atomically; on a cluster, where a set and its keys live in different
//! slots, the membership is sent first for a write-through, and with the marker for a
//! load, whose body runs only once both landed). Each add prunes the members whose keys
//! have expired (`ZREMRANGEBYSCORE`), and keeps the set alive an hour past its
//! longest-lived member, so a hot tag holds its live keys and no more.
//!
//! **Removal.** [`RedisStore::remove_tagged`] walks the set (`ZSCAN`) and unlinks its keys,
//! values and pending markers alike: a load running anywhere under the tag finds its marker
//! gone and its fill refused. On standalone each batch's keys leave the set in the same
//! script that unlinks them ([`TagUnlink`]); on a cluster their members expire with their
//! scores.
//!
//! **Completeness.** Like an index, a set is trusted only while it holds its sentinel
//! (`#`), set at its birth on a server that never evicts. A set that Redis may have evicted
//! and a later write re-created lacks it: its loss is noticed, never silent. Which keys the
//! lost set named cannot be rebuilt from the keys' names, so removing an untrusted tag
//! removes every key of the cache (one `SCAN` of the prefix, as `clear()`), bracketed like
//! an index rebuild so the set is trusted afterwards. Complete under every
//! `maxmemory-policy`, at that price on a server that evicts.

use super::scripts::{StartRebuild, TagUnlink, Trust};
use super::{EvictionPolicy, RedisStore};
use crate::error::{Error, Result};
use crate::key::RESERVED;
use crate::store::lease::new_token;
use crate::store::Removed;
use crate::tags::TAG_NAMESPACE;

/// Members asked for per `ZSCAN` step, and unlinked per command.
const BATCH: usize = 1000;

impl RedisStore {
    /// The full key of `tag`'s set.
    pub(super) fn tag_set(&self, tag: &str) -> String {
        self.reserved_key(TAG_NAMESPACE, tag)
    }

    /// The full keys of the sets of `tags`.
    pub(super) fn tag_sets<'t>(&'t self, tags: &'t [String]) -> impl Iterator<Item = String> + 't {
        tags.iter().map(|tag| self.tag_set(tag))
    }

    /// Removes every key stored with `tag`: through its set when it is trusted, else by
    /// removing every key of the cache (see the module docs).
    pub(crate) async fn remove_tagged(&self, tag: &str) -> Result<Removed> {
        let set = self.tag_set(tag);
        if self.trusted(&set).await? {
            let removed = self.unlink_tagged(&set).await?;
            // Lost while we walked it (evicted)? Then it may have missed keys.
            if self.trusted(&set).await? {
                return Ok(Removed { keys: removed, scanned: false });
            }
            tracing::warn!(
                set,
                "tag set lost during a tag invalidation; removing every key of the cache"
            );
        }
        if self.eviction().await? == EvictionPolicy::Never && !self.exists(&set).await? {
            // Without eviction a set goes only an hour after its last key expired: no set,
            // no live key with the tag.
            return Ok(Removed { keys: 0, scanned: false });
        }
        if self.prefix.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "the set of tag {tag:?} is incomplete (Redis may evict keys), so its invalidation must remove every key of the cache; a cache without a prefix refuses it, since it would remove other applications' keys. Give the cache a prefix"
            )));
        }
        tracing::warn!(
            set,
            "tag set not trusted (Redis may evict keys): removing every key of the cache"
        );
        let own = format!("{RESERVED}rebuild:{}", new_token());
        self.call(&StartRebuild { index: &set, own: &own }).await?;
        let removed = self.scan_and_unlink(&format!("{}*", self.prefix)).await?;
        if self.call(&Trust { index: &set, own: &own }).await? == 0 {
            tracing::warn!(set, "tag set lost again while the cache was cleared; the next invalidation of the tag clears again");
        }
        Ok(Removed { keys: removed, scanned: true })
    }

    /// Walks a trusted set and unlinks its keys (see the module docs).
    async fn unlink_tagged(&self, set: &str) -> Result<u64> {
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, flat): (u64, Vec<String>) = self
                .guarded(
                    redis::cmd("ZSCAN")
                        .arg(set)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut connection),
                )
                .await?;
            // ZSCAN replies member, score, member, score, ...
            let members: Vec<&str> = flat
                .iter()
                .step_by(2)
                .map(String::as_str)
                .filter(|member| !member.contains(RESERVED))
                .collect();
            if !members.is_empty() {
                let full_keys: Vec<String> =
                    members.iter().map(|member| self.full_key(member)).collect();
                removed += if self.connection.is_cluster() {
                    self.guarded(
                        redis::cmd("UNLINK").arg(&full_keys).query_async::<u64>(&mut connection),
                    )
                    .await?
                } else {
                    self.call(&TagUnlink { set, full_keys: &full_keys, members: &members }).await?
                };
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}
