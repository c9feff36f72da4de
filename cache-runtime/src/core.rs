//! The core of a cache: its parts, composed once, with private fields. [`Cache`] is a
//! thin handle over it (an `Arc`); the components (the read path, the write path, the miss
//! path, locks, rate limits, health) each take the core and use only what it exposes.
//!
//! [`Cache`]: crate::Cache

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backlog::Backlog;
use crate::breaker::BreakerState;
use crate::error::{ErrorKind, Result};
use crate::flight::Flights;
use crate::format::Format;
use crate::log_limit::{clip, Clip, LogKind, LogLimit};
use crate::near::Near;
use crate::policy::Policy;
use crate::recent::Recent;
use crate::stats::{Counters, StatsRegistry};
use crate::store::Store;

static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

/// Default bound of the memory store: 128 MiB of keys and JSON-encoded values.
pub(crate) const DEFAULT_MEMORY_CAPACITY: u64 = 128 * 1024 * 1024;

/// Tunables set on the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Lease of a `lock` load, renewed while the body runs.
    pub(crate) lock_lease: Duration,
    /// How long a `lock` waiter waits for another process's load before running its body.
    pub(crate) lock_wait: Duration,
    /// Values whose JSON is larger are not cached.
    pub(crate) max_value_bytes: usize,
    /// How long a load may take and still store its value (the life of a pending marker).
    pub(crate) fill_window: Duration,
    /// Codec, compression and schema version of stored values.
    pub(crate) format: Format,
    /// Rendered keys longer than this are never stored (attributes) or refused
    /// (programmatic API); longer rate-limit keys are hashed.
    pub(crate) max_key_bytes: usize,
    /// Keys are left out of spans and log lines (`CacheBuilder::redact_keys`).
    pub(crate) redact_keys: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lock_lease: Duration::from_secs(5),
            lock_wait: Duration::from_secs(10),
            max_value_bytes: crate::format::DEFAULT_MAX_VALUE_BYTES,
            fill_window: Duration::from_secs(60),
            format: Format::default(),
            max_key_bytes: crate::key::DEFAULT_MAX_KEY_BYTES,
            redact_keys: false,
        }
    }
}

/// A cache's parts: the store, its settings and counters, the flights running in this
/// process, the backlog of removals waiting for Redis, and the near cache.
pub(crate) struct CacheCore {
    /// Unique per cache in this process (never reused, unlike an address).
    id: u64,
    store: Store,
    settings: Settings,
    stats: StatsRegistry,
    flights: Flights,
    /// Removals that failed for a connection reason, replayed until they land (`write.rs`).
    backlog: Backlog,
    /// Writes the primary acknowledged lately, replayed after a failover (`recent.rs`).
    recent: Recent,
    /// The near cache (`CacheBuilder::near_cache`), in front of Redis.
    near: Option<Arc<Near>>,
    /// How many failure lines each kind may still write (`log_limit.rs`).
    logs: LogLimit,
}

impl CacheCore {
    /// Composes a cache over `store`.
    pub(crate) fn new(store: Store, settings: Settings, near: Option<Arc<Near>>) -> CacheCore {
        let backlog = Backlog::new(store.prefix().is_empty() && store.shared());
        let recent = Recent::new(store.primary_generation().is_some(), store.prefix().is_empty());
        CacheCore {
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            store,
            settings,
            stats: StatsRegistry::default(),
            flights: Flights::default(),
            backlog,
            recent,
            near,
            logs: LogLimit::default(),
        }
    }

    /// This cache's number in the process.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Where entries live.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The builder's tunables.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every function's counters.
    pub(crate) fn stats(&self) -> &StatsRegistry {
        &self.stats
    }

    /// The counters of one function name.
    pub(crate) fn counters(&self, name: &str) -> Arc<Counters> {
        self.stats.counters(name)
    }

    /// The loads running in this process, by key.
    pub(crate) fn flights(&self) -> &Flights {
        &self.flights
    }

    /// Removals waiting for Redis.
    pub(crate) fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Writes the primary acknowledged lately (kept behind Sentinel only).
    pub(crate) fn recent(&self) -> &Recent {
        &self.recent
    }

    /// The near cache, whatever the policy.
    pub(crate) fn near(&self) -> Option<&Near> {
        self.near.as_deref()
    }

    /// The near cache, when this cache has one and `policy` uses it. Not while the
    /// breaker is open: Redis is known unreachable, so is tracking likely. Never with
    /// `idle`: a near hit does not reach Redis, so it would not extend the value's life
    /// there, and the value would idle out in Redis while still served here.
    pub(crate) fn near_for(&self, policy: &Policy) -> Option<&Near> {
        self.near.as_deref().filter(|_| {
            policy.near && policy.idle.is_none() && self.store.breaker_state() != BreakerState::Open
        })
    }

    /// Whether a line of `kind` may be logged now: `Some(left out since the last one)`.
    pub(crate) fn log(&self, kind: LogKind) -> Option<u64> {
        self.logs.admit(kind)
    }

    /// Checks a key given to the programmatic API: the key grammar, then
    /// `max_key_bytes`.
    pub(crate) fn check_key(&self, key: &str) -> Result<()> {
        crate::key::validate_key(key)?;
        crate::key::check_length(key, self.settings.max_key_bytes)
    }

    /// Whether a key rendered by an attribute may be cached. A longer one is not: it is
    /// counted (as [`ErrorKind::TooLarge`]) and logged (bounded), and the caller goes on
    /// without the cache.
    pub(crate) fn key_fits(&self, counters: &Counters, key: &str) -> bool {
        let max = self.settings.max_key_bytes;
        if key.len() <= max {
            return true;
        }
        counters.error(ErrorKind::TooLarge);
        if let Some(suppressed) = self.log(LogKind::KeyTooLong) {
            tracing::warn!(
                key = %self.shown(key),
                bytes = key.len(),
                max,
                suppressed,
                "cache key longer than max_key_bytes; not cached"
            );
        }
        false
    }

    /// A key (or a pattern, or a scope's text) for a log line: clipped (see
    /// [`clip`]), or `<redacted>` when the builder's `redact_keys` is on.
    pub(crate) fn shown<'a>(&self, key: &'a str) -> Shown<'a> {
        match self.settings.redact_keys {
            true => Shown::Redacted,
            false => Shown::Clipped(clip(key)),
        }
    }

    /// An error's text for a log line, clipped; with `redact_keys`, every occurrence of
    /// `key` in it (an error may name its key) is replaced by `<redacted>`.
    pub(crate) fn shown_error(&self, error: &dyn std::fmt::Display, key: &str) -> String {
        let text = clip(error).to_string();
        match self.settings.redact_keys && !key.is_empty() {
            true => text.replace(key, REDACTED),
            false => text,
        }
    }

    /// Whether keys are left out of spans and log lines.
    pub(crate) fn redacts_keys(&self) -> bool {
        self.settings.redact_keys
    }

    /// The store's short name, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        self.store.kind()
    }
}

/// What stands for a key in a log line when keys are redacted.
pub(crate) const REDACTED: &str = "<redacted>";

/// A key as a log line shows it (see [`CacheCore::shown`]).
pub(crate) enum Shown<'a> {
    /// Clipped to its first bytes and length.
    Clipped(Clip<'a, str>),
    /// Left out (`redact_keys`).
    Redacted,
}

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shown::Clipped(clipped) => std::fmt::Display::fmt(clipped, f),
            Shown::Redacted => f.write_str(REDACTED),
        }
    }
}
