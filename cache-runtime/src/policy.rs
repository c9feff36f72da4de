//! How one call site caches: [`Policy`], its time to live and options, and what they decide
//! (how long the store keeps a value, when a hit recomputes it).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::Touch;

/// The longest a value with `refresh` or `early` is kept past its TTL for a refresh still
/// running to replace it (see [`Policy::lifetime`]).
pub(crate) const REFRESH_GRACE: Duration = Duration::from_secs(60);

/// How one call site caches: its time to live and options. `#[cached]` builds one per
/// function at compile time, in a `static` ([`Policy::new`]); the programmatic API builds
/// one per call.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long a value is fresh.
    pub(crate) ttl: Duration,
    /// Coordinate loads across processes.
    pub(crate) lock: bool,
    /// How long a value is kept in all (`>= ttl`), to be served if the body fails.
    pub(crate) stale: Option<Duration>,
    /// Age after which a hit recomputes the value (`< ttl`).
    pub(crate) refresh: Option<Duration>,
    /// How long an absent result (`None`, `Ok(None)`) is cached (`absent_ttl = ...`).
    pub(crate) absent_ttl: Option<Duration>,
    /// XFetch's β (`early`, `early = 1.5`): recompute a hit early, with a probability that
    /// grows as the value nears its expiry.
    pub(crate) early: Option<f64>,
    /// With a stale value kept, how long a caller waits for the body before it is answered
    /// with the stale value (`timeout = ...`); the body goes on in the background.
    pub(crate) timeout: Option<Duration>,
    /// Use the cache's near cache, if it has one (`near = false` opts out).
    pub(crate) near: bool,
    /// Sliding expiration (`idle = ...`, `< ttl`): a value is stored for this long, and each
    /// hit extends its remaining life to `min(idle, ttl - age)`, so `ttl` stays an absolute
    /// cap from the write time.
    pub(crate) idle: Option<Duration>,
}

impl Policy {
    /// The policy `#[cached(ttl = ..., lock, stale = ..., refresh = ...)]` describes, with
    /// durations the macro parsed and checked (`stale > ttl`, `refresh < ttl`).
    pub const fn new(
        ttl: Duration,
        lock: bool,
        stale: Option<Duration>,
        refresh: Option<Duration>,
    ) -> Policy {
        Policy {
            ttl,
            lock,
            stale,
            refresh,
            absent_ttl: None,
            early: None,
            timeout: None,
            near: true,
            idle: None,
        }
    }

    /// Caches absent results for `absent_ttl` (negative caching).
    #[must_use]
    pub const fn with_absent_ttl(mut self, absent_ttl: Option<Duration>) -> Policy {
        self.absent_ttl = absent_ttl;
        self
    }

    /// XFetch (`early`, `early = <beta>`): probabilistic early recomputation.
    #[must_use]
    pub const fn with_early(mut self, beta: Option<f64>) -> Policy {
        self.early = beta;
        self
    }

    /// Soft timeout (`timeout = "200ms"`, with `stale`): a caller holding a stale value
    /// waits this long for the body, then gets the stale value.
    #[must_use]
    pub const fn with_timeout(mut self, timeout: Option<Duration>) -> Policy {
        self.timeout = timeout;
        self
    }

    /// Sliding expiration (`idle = "30m"`, checked `< ttl` and without `stale`, `refresh`,
    /// `early` by the macro): each hit extends the value's life by `idle`, up to `ttl` after
    /// it was written. Such a function bypasses the near cache (a near hit would not reach
    /// the store, so the value could idle out there while still served here).
    #[must_use]
    pub const fn with_idle(mut self, idle: Option<Duration>) -> Policy {
        self.idle = idle;
        self
    }

    /// `#[cached(near = false)]`: whether calls use the cache's near cache (default `true`).
    #[must_use]
    pub const fn near(mut self, near: bool) -> Policy {
        self.near = near;
        self
    }

    /// A policy with a time to live only.
    pub(crate) const fn ttl(ttl: Duration) -> Policy {
        Policy::new(ttl, false, None, None)
    }

    /// How long the store keeps a value when it is written: `ttl`, `stale` when longer, and
    /// with `refresh` or `early` a grace period past `ttl` ([`REFRESH_GRACE`] at most), so
    /// that a refresh still running when the value's TTL ends can replace it, and the
    /// callers that miss meanwhile join that refresh instead of loading again. A value past
    /// `ttl` is never served unless `stale` says so. With `idle`, `idle` (hits extend it).
    pub(crate) fn lifetime(&self) -> Duration {
        if let Some(idle) = self.idle {
            return idle.min(self.ttl);
        }
        let kept = match self.refresh.is_some() || self.early.is_some() {
            true => self.ttl + self.ttl.min(REFRESH_GRACE),
            false => self.ttl,
        };
        self.stale.map_or(kept, |stale| stale.max(kept))
    }

    /// The longest anything this policy stores may live (a value, hits included, or an
    /// absent result): what the invalidation indexes must cover.
    pub(crate) fn longest(&self) -> Duration {
        let value = if self.idle.is_some() { self.ttl } else { self.lifetime() };
        self.absent_ttl.map_or(value, |absent| absent.max(value))
    }

    /// What a hit does to the value's life (`idle`).
    pub(crate) fn touch(&self) -> Option<Touch> {
        self.idle.map(|idle| Touch { idle, cap: self.ttl })
    }

    /// Whether hits need the value's age (one pipelined `PTTL` more on Redis).
    pub(crate) fn tracks_age(&self) -> bool {
        self.stale.is_some() || self.refresh.is_some() || self.early.is_some()
    }

    /// Whether a hit on a value of `age` recomputes it now: `refresh` once the value is that
    /// old; with `early`, XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): recompute
    /// when `δ·β·(−ln r) ≥ time left`, `r` uniform in (0, 1], `δ` the function's mean load
    /// time. Each reader draws on its own, so the first recompute comes earlier the more
    /// readers a key has and the longer its body takes, and usually before the value expires.
    /// `δ` is the load time stored with the value when there is one (see `format.rs`),
    /// else the function's mean load time: the caller passes it as `mean_load`.
    pub(crate) fn recompute_now(&self, age: Duration, mean_load: Duration) -> bool {
        if self.refresh.is_some_and(|refresh| age >= refresh) {
            return true;
        }
        let Some(beta) = self.early else { return false };
        let left = self.ttl.saturating_sub(age).as_secs_f64();
        let draw = uniform_draw();
        mean_load.as_secs_f64() * beta * -draw.ln() >= left
    }
}

/// The policy of [`Cache::get`] on a near cache: any stored value is fresh.
/// (A finite lifetime, so a key without expiry reads with a finite age.)
pub(crate) const DIRECT_GET: Policy = Policy::ttl(Duration::from_secs(1 << 32));

/// The longest time to live accepted: far beyond any cache's need, and far from the
/// overflow of `Instant` arithmetic and of Redis' millisecond expiries.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Rejects TTLs the stores cannot honour.
pub(crate) fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < Duration::from_millis(1) {
        return Err(Error::InvalidTtl { ttl, reason: "a time to live must be at least 1ms" });
    }
    if ttl > MAX_TTL {
        return Err(Error::InvalidTtl { ttl, reason: "a time to live must be at most 100 years" });
    }
    Ok(())
}

/// A uniform draw in (0, 1] from a per-thread xorshift generator (XFetch needs a cheap,
/// independent draw per reader, not a cryptographic one).
pub(crate) fn uniform_draw() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9E37_79B9, |elapsed| elapsed.as_nanos() as u64);
            (nanos ^ (&nanos as *const u64 as u64)) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        // 53 random bits, shifted into (0, 1].
        ((x >> 11) + 1) as f64 / (1u64 << 53) as f64
    })
}
