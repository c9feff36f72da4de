//! Invalidation: removing keys by name or by glob pattern, and clearing a cache.
//!
//! Every invalidation first detaches the running loads of the keys it covers from their
//! flights (so no caller arriving afterwards gets their values), then removes the keys, and
//! with them the pending markers of loads running anywhere (so those loads cannot store).
//! One that fails because Redis is unreachable is kept and replayed (`pending.rs`).

use crate::cache::Cache;
use crate::error::Result;
use crate::glob;
use crate::key::validate_key;
use crate::pending::{retryable, PendingTarget};
use crate::stats::{Counters, DIRECT_CALLS};

/// One thing an `#[invalidates]` attribute removes after its function succeeds.
#[doc(hidden)]
pub enum Target {
    /// An exact key (the template had no glob characters).
    Key(String),
    /// A glob pattern.
    Pattern(String),
}

impl Cache {
    /// Removes `key` (a rendered key, without the prefix). Returns how many keys went: 0 or 1.
    ///
    /// If Redis cannot be reached, the invalidation is kept and replayed in the background
    /// until it lands (see "Consistency" in the crate docs), and the error is returned.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) for an empty key or one with whitespace, control characters or `#`;
    /// [`Error::Backend`](crate::Error::Backend) or [`Error::Unavailable`](crate::Error::Unavailable) when Redis fails.
    pub async fn invalidate(&self, key: &str) -> Result<u64> {
        validate_key(key)?;
        let counters = self.inner.stats.counters(DIRECT_CALLS);
        self.remove_key(&counters, key).await
    }

    /// Removes every key matching the Redis-style glob `pattern` (`*`, `?`, `[a-z]`, `\x`),
    /// such as `"homepage:*"` or `"dealer:7:*"`. Returns how many keys went.
    ///
    /// Patterns whose literal text starts with one or two `:`-terminated levels
    /// (`homepage:*`, `dealer:7:*`, `dealer:*:vehicles`) are served from an index and cost
    /// the same however many unrelated keys Redis holds. Others (`*:vehicles`) scan the
    /// database with `SCAN MATCH`, counted in [`Stats::pattern_scans`](crate::Stats::pattern_scans);
    /// a cache without a prefix refuses them, since the scan would reach other caches' keys.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPattern`](crate::Error::InvalidPattern) for an empty pattern, an unclosed `[`, a trailing `\`,
    /// whitespace or `#`; [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a pattern that needs a scan on a
    /// cache without a prefix; [`Error::Backend`](crate::Error::Backend) when Redis fails (the invalidation is then
    /// kept and replayed until it lands).
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        glob::validate(pattern)?;
        let counters = self.inner.stats.counters(DIRECT_CALLS);
        self.remove_pattern(&counters, pattern).await
    }

    /// Removes every key of this cache: with Redis, the keys under its prefix (never
    /// `FLUSHDB`: other prefixes, other applications' keys and the runtime's own locks and
    /// fencing counters stay); with the memory store, every entry. Returns how many keys
    /// went.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a Redis cache without a prefix (clearing it would remove
    /// the whole database); [`Error::Backend`](crate::Error::Backend) when Redis fails (then kept and replayed).
    pub async fn clear(&self) -> Result<u64> {
        let counters = self.inner.stats.counters(DIRECT_CALLS);
        self.inner.flights.detach(|_| true);
        let removed = self.inner.store.clear().await.inspect_err(|error| {
            counters.error(error.kind());
            if retryable(error.kind()) {
                self.keep_pending(PendingTarget::All);
            }
        });
        self.near_evict_matching(None);
        let removed = removed?;
        counters.invalidated(removed);
        Ok(removed)
    }

    async fn remove_key(&self, counters: &Counters, key: &str) -> Result<u64> {
        // A load of this key running now may have read the data before the write: no caller
        // from now on may join it, and its marker goes with the key, so it cannot store.
        let removed = self.remove_for_write(key).await.inspect_err(|error| {
            counters.error(error.kind());
        })?;
        counters.invalidated(removed);
        Ok(removed)
    }

    async fn remove_pattern(&self, counters: &Counters, pattern: &str) -> Result<u64> {
        if !glob::has_glob(pattern) {
            return self.remove_key(counters, pattern).await;
        }
        self.inner.flights.detach(|running| glob::matches(pattern, running));
        let removed = self.inner.store.remove_matching(pattern).await.inspect_err(|error| {
            counters.error(error.kind());
            if retryable(error.kind()) {
                self.keep_pending(PendingTarget::Pattern(pattern.to_owned()));
            }
        });
        self.near_evict_matching(Some(pattern));
        let removed = removed?;
        if removed.scanned {
            counters.pattern_scan();
        }
        counters.invalidated(removed.keys);
        Ok(removed.keys)
    }

    /// Removes every target of an `#[invalidates]` attribute. Failures are counted and
    /// logged, never returned: they must not change what the annotated function returns.
    pub(crate) async fn invalidate_targets(&self, function: &str, targets: Vec<Target>) {
        let counters = self.inner.stats.counters(function);
        for target in targets {
            let (text, result) = match &target {
                Target::Key(key) => (key, self.remove_key(&counters, key).await),
                Target::Pattern(pattern) => {
                    (pattern, self.remove_pattern(&counters, pattern).await)
                }
            };
            if let Err(error) = result {
                tracing::warn!(function, target = %text, %error, "cache invalidation failed");
            }
        }
    }
}
