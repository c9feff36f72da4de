//! Pattern invalidation on Redis: the walk of a trusted invalidation index, the rebuild of
//! an untrusted one with a `SCAN` of its level, and the keyspace-wide scans (`clear`, and
//! patterns that name no index). The indexes' naming and levels are `crate::index`; their
//! upkeep on writes is in the write scripts ([`super::scripts`]).

use std::future::Future;

use futures_util::future::try_join_all;

use super::scripts::{IndexAdd, Reindex, StartRebuild, Trust};
use super::{millis, EvictionPolicy, RedisStore};
use crate::error::{Error, Result};
use crate::index::{for_pattern, SENTINEL};
use crate::key::RESERVED;
use crate::store::lease::new_token;
use crate::store::Removed;

/// Keys asked for per `SCAN`/`ZSCAN` step, and unlinked per command.
const BATCH: usize = 1000;

impl RedisStore {
    /// At build: a cache without a prefix on a server that may evict keys could never
    /// invalidate a pattern (its indexes are never trusted, and a `SCAN` without a prefix is
    /// refused), so it is refused as a configuration error. Redis unreachable: `Ok` (a cache
    /// builds while Redis is down; the policy is read on the first write instead).
    pub(crate) async fn check_setup(&self) -> Result<()> {
        if !self.prefix.is_empty() {
            return Ok(());
        }
        // Read here rather than through `eviction()`: a reading that does not last (a node
        // loading, a dead primary) must not refuse the build; a lasting one is kept.
        match self.read_eviction().await {
            Ok(reading) if reading.settled => {
                let _ = self.eviction.set(reading.policy);
                if reading.policy == EvictionPolicy::Never {
                    return Ok(());
                }
                Err(Error::InvalidConfig(
                    "a cache without a prefix on a Redis that may evict keys (maxmemory set with an allkeys-* or volatile-* maxmemory-policy, or CONFIG GET refused) cannot invalidate patterns: its invalidation indexes may lose keys, and the SCAN that would make up for it is refused without a prefix, since it would remove other applications' keys. Give the cache a prefix, or set maxmemory-policy noeviction (or maxmemory 0)".into(),
                ))
            }
            Ok(_) => {
                tracing::debug!(
                    "Redis eviction policy not settled at build; read again on the first write"
                );
                Ok(())
            }
            Err(error) => {
                tracing::debug!(%error, "Redis eviction policy not read at build; read again on the first write");
                Ok(())
            }
        }
    }

    pub(super) async fn exists(&self, full_key: &str) -> Result<bool> {
        let mut connection = self.connection.clone();
        let found: u64 =
            self.guarded(redis::cmd("EXISTS").arg(full_key).query_async(&mut connection)).await?;
        Ok(found == 1)
    }

    /// Whether the index holds its sentinel: it has every live key of its level.
    pub(super) async fn trusted(&self, index: &str) -> Result<bool> {
        let mut connection = self.connection.clone();
        let score: Option<f64> = self
            .guarded(redis::cmd("ZSCORE").arg(index).arg(SENTINEL).query_async(&mut connection))
            .await?;
        Ok(score.is_some())
    }

    /// Removes every key matching `pattern`: through its index when the pattern names one
    /// and the index is trusted, else by scanning (and then rebuilding the index).
    pub(crate) async fn remove_matching(&self, pattern: &str) -> Result<Removed> {
        let Some(level) = for_pattern(pattern) else {
            if self.prefix.is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "pattern {pattern:?} names no index level (such as `homepage:`), so it needs a SCAN of the whole database; a cache without a prefix refuses it, since it would remove other applications' keys. Give the cache a prefix, or start the pattern with a literal `level:`"
                )));
            }
            let keys = self.scan_and_unlink(&self.full_key(pattern)).await?;
            return Ok(Removed { keys, scanned: true });
        };
        let index = self.index_key(level);
        if self.trusted(&index).await? {
            let removed = self.unlink_indexed(&index, pattern).await?;
            // Lost while we walked it (evicted)? Then it may have missed keys: scan.
            if self.trusted(&index).await? {
                return Ok(Removed { keys: removed, scanned: false });
            }
            tracing::warn!(
                index,
                "invalidation index lost during a pattern invalidation; scanning"
            );
        }
        if self.eviction().await? == EvictionPolicy::Never && !self.exists(&index).await? {
            // Without eviction an index goes only an hour after its last key expired: no
            // index, no live key under this level.
            return Ok(Removed { keys: 0, scanned: false });
        }
        if self.prefix.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "the invalidation index for {level:?} is incomplete (Redis may evict keys), so {pattern:?} needs a SCAN of the whole database; a cache without a prefix refuses it, since it would remove other applications' keys. Give the cache a prefix"
            )));
        }
        let keys = self.rebuild(&index, level, pattern).await?;
        Ok(Removed { keys, scanned: true })
    }

    /// Walks a trusted index and unlinks the keys matching `pattern`. Members stay: a key
    /// refilled meanwhile keeps its entry, and removed keys' members expire with their
    /// scores (an `UNLINK` of a missing key costs nothing).
    async fn unlink_indexed(&self, index: &str, pattern: &str) -> Result<u64> {
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, flat): (u64, Vec<String>) = self
                .guarded(
                    redis::cmd("ZSCAN")
                        .arg(index)
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut connection),
                )
                .await?;
            // ZSCAN replies member, score, member, score, ...
            let keys: Vec<String> = flat
                .iter()
                .step_by(2)
                .filter(|member| !member.contains(RESERVED))
                .map(|member| self.full_key(member))
                .collect();
            if !keys.is_empty() {
                removed += self
                    .guarded(redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut connection))
                    .await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Pattern invalidation on an untrusted index (new, evicted, or its sentinel not yet
    /// set): `SCAN` the level, unlink what matches, index the rest, and mark the index
    /// trusted if it survived the scan. `SCAN` returns every key that exists for the whole
    /// scan; keys written during it index themselves.
    async fn rebuild(&self, index: &str, level: &str, pattern: &str) -> Result<u64> {
        let own = format!("{RESERVED}rebuild:{}", new_token());
        self.call(&StartRebuild { index, own: &own }).await?;
        let trusted_at_birth = self.trusted_at_birth().await?;
        let mut removed = 0;
        let full_level = self.full_key(level);
        self.scan(
            &format!("{full_level}*"),
            |batch| async move {
                let (gone, keep): (Vec<String>, Vec<String>) = batch
                    .into_iter()
                    .partition(|full| crate::glob::matches(pattern, &full[self.prefix.len()..]));
                let mut unlinked = 0;
                if !gone.is_empty() {
                    let mut connection = self.connection.clone();
                    unlinked = self
                        .guarded(
                            redis::cmd("UNLINK").arg(&gone).query_async::<u64>(&mut connection),
                        )
                        .await?;
                }
                if !keep.is_empty() {
                    self.reindex(index, &keep, trusted_at_birth).await?;
                }
                Ok(unlinked)
            },
            &mut removed,
        )
        .await?;
        if self.call(&Trust { index, own: &own }).await? == 0 {
            tracing::warn!(index, "invalidation index lost during its rebuild; the next pattern invalidation scans again");
        }
        Ok(removed)
    }

    /// Puts the surviving keys of a rebuilt level back into its index, each with its
    /// remaining time to live: one script for the whole batch on standalone; on a cluster,
    /// where the keys live in other slots, their `PTTL`s in flight together, then the
    /// index update.
    async fn reindex(
        &self,
        index: &str,
        full_keys: &[String],
        trusted_at_birth: bool,
    ) -> Result<()> {
        if !self.connection.is_cluster() {
            let prefix_len = self.prefix.len();
            return self.call(&Reindex { index, full_keys, prefix_len, trusted_at_birth }).await;
        }
        let lefts = try_join_all(full_keys.iter().map(|full| self.pttl(full))).await?;
        let updates: Vec<_> = full_keys
            .iter()
            .zip(lefts)
            .filter_map(|(full, left)| {
                let add = IndexAdd {
                    index,
                    member: &full[self.prefix.len()..],
                    ttl_ms: millis(left?),
                    trusted_at_birth,
                };
                Some(async move { self.call(&add).await })
            })
            .collect();
        try_join_all(updates).await?;
        Ok(())
    }

    /// Removes every data key under this cache's prefix (pending markers included). The
    /// runtime's own keys stay: indexes keep their members, which expire with their scores.
    pub(crate) async fn clear(&self) -> Result<u64> {
        if self.prefix.is_empty() {
            return Err(Error::InvalidConfig(
                "clear() needs a cache with a prefix: without one it would remove every key in the database".into(),
            ));
        }
        self.scan_and_unlink(&format!("{}*", self.prefix)).await
    }

    /// `SCAN MATCH` + `UNLINK` of the data keys matching `full_pattern`. Keys with a `#`
    /// are some cache's own (indexes, locks, fencing counters, load leases, under any
    /// prefix): never removed, since no user key contains `#`.
    pub(super) async fn scan_and_unlink(&self, full_pattern: &str) -> Result<u64> {
        let mut removed = 0;
        self.scan(
            full_pattern,
            |keys| async move {
                if keys.is_empty() {
                    return Ok(0);
                }
                let mut connection = self.connection.clone();
                self.guarded(redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut connection))
                    .await
            },
            &mut removed,
        )
        .await?;
        Ok(removed)
    }

    /// `SCAN MATCH` over the whole keyspace (every primary of a cluster), handing each
    /// batch of data keys (no reserved keys) to `each` and summing what it returns.
    async fn scan<F, Fut>(&self, full_pattern: &str, each: F, total: &mut u64) -> Result<()>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<u64>>,
    {
        let nodes: Vec<Option<(String, u16)>> = if self.connection.is_cluster() {
            self.guarded(self.connection.primaries()).await?.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let scan = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(full_pattern)
                    .arg("COUNT")
                    .arg(BATCH)
                    .clone();
                let (next, keys): (u64, Vec<String>) = match &node {
                    Some((host, port)) => {
                        self.guarded(self.connection.on_node(scan, host, *port)).await?
                    }
                    None => {
                        let mut connection = self.connection.clone();
                        self.guarded(scan.query_async(&mut connection)).await?
                    }
                };
                let keys: Vec<String> =
                    keys.into_iter().filter(|key| !key.contains(RESERVED)).collect();
                if !keys.is_empty() {
                    *total += each(keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }
}
