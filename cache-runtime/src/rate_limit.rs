//! Rate limits shared by every process on the same store: [`Cache::rate_limit`](crate::Cache::rate_limit) and the
//! `#[rate_limit]` attribute, over an exact sliding window: the Lua script of a decision on
//! Redis, the in-process windows of the memory store, and the failure policy.
//!
//! The algorithm and its costs are argued in the docs of [`Cache::rate_limit`](crate::Cache::rate_limit), where
//! users read them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::core::CacheCore;
use crate::error::{Error, Result};
use crate::log_limit::LogKind;
use crate::stats::Counters;

/// The largest `limit` a rate limit accepts. The exact window keeps one entry per call it
/// admitted within the window (see [`Cache::rate_limit`](crate::Cache::rate_limit)), so this bounds a key's memory
/// (about 125 MB on Redis for one full key at this limit).
pub const MAX_RATE_LIMIT: u64 = 1_000_000;

/// What to decide when the store cannot be asked (Redis down, timing out, or the circuit
/// breaker open). The attribute's `fail_open` / `fail_closed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FailMode {
    /// Admit the call (the default): an outage of the cache does not take the service down.
    #[default]
    Open,
    /// Refuse the call, with a `retry_after` of one second (or the window, if shorter): for
    /// limits that protect something more expensive than an outage (login attempts, costly
    /// APIs).
    Closed,
}

/// The outcome of one [`Cache::rate_limit`](crate::Cache::rate_limit) call: whether the call may go ahead, and what an
/// HTTP answer needs (`429` with `Retry-After`, and the `RateLimit-*` headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the call is admitted (and was counted against the limit).
    pub allowed: bool,
    /// The limit: calls admitted per window.
    pub limit: u64,
    /// Calls still admitted in the current window after this one (0 when refused).
    pub remaining: u64,
    /// When refused, how long until a call would be admitted (zero when allowed).
    pub retry_after: Duration,
    /// How long until the limiter is back to its full `limit` (every counted call has left
    /// the window), if no further call is admitted.
    pub reset_after: Duration,
}

impl RateDecision {
    /// `Ok(self)` when allowed, else the refusal as a [`RateLimited`] error.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] when the call was refused.
    pub fn into_result(self) -> Result<RateDecision, RateLimited> {
        if self.allowed {
            Ok(self)
        } else {
            Err(RateLimited {
                limit: self.limit,
                remaining: self.remaining,
                retry_after: self.retry_after,
                reset_after: self.reset_after,
            })
        }
    }
}

/// A call refused by a rate limit: what a `#[rate_limit]` function returns (converted into
/// its error type with `From`) instead of running its body.
///
/// ```
/// use cache_runtime::RateLimited;
///
/// #[derive(Debug)]
/// enum LoginError {
///     TooManyAttempts(RateLimited),
///     WrongPassword,
/// }
///
/// impl From<RateLimited> for LoginError {
///     fn from(limited: RateLimited) -> Self {
///         LoginError::TooManyAttempts(limited)
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// The limit: calls admitted per window.
    pub limit: u64,
    /// Calls left in the window: always 0.
    pub remaining: u64,
    /// How long until a call would be admitted: the `Retry-After` to send.
    pub retry_after: Duration,
    /// How long until the limiter is back to its full `limit`.
    pub reset_after: Duration,
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit of {} calls reached; retry after {} ms",
            self.limit,
            self.retry_after.as_millis()
        )
    }
}

impl std::error::Error for RateLimited {}

/// Checks a limit and window, before anything is counted.
pub(crate) fn validate(limit: u64, per: Duration) -> Result<()> {
    let reason = if limit == 0 {
        "the limit must be at least 1"
    } else if limit > MAX_RATE_LIMIT {
        "the limit must be at most 1,000,000 calls per window (the exact window keeps one entry per admitted call)"
    } else if per < Duration::from_millis(1) {
        "the window must be at least 1ms"
    } else if per.as_micros() > 1 << 53 {
        "the window must be shorter than 285 years"
    } else {
        return Ok(());
    };
    Err(Error::InvalidRateLimit { limit, per, reason })
}

/// One decision on valid input, counted in `counters`.
pub(crate) async fn decide(
    core: &CacheCore,
    counters: &Counters,
    key: &str,
    limit: u64,
    per: Duration,
    on_failure: FailMode,
) -> RateDecision {
    // The store decides when processes share it (one script on Redis); a store private to
    // this process leaves it to the in-process limiters.
    let decided: Result<RateDecision> = match core.store().rate_decide(key, limit, per).await {
        Ok(Some(window)) => Ok(RateDecision {
            allowed: window.allowed,
            limit,
            remaining: window.remaining,
            retry_after: window.retry_after,
            reset_after: window.reset_after,
        }),
        Ok(None) => Ok(LOCAL.decide(core.id(), key, limit, per, Instant::now())),
        Err(error) => Err(error),
    };
    let decision = decided.unwrap_or_else(|error| {
        counters.error(error.kind());
        let allowed = on_failure == FailMode::Open;
        if let Some(suppressed) = core.log(LogKind::RateLimitFailed) {
            let (key, error) = (core.shown(key), core.shown_error(&error, key));
            tracing::warn!(
                %key,
                %error,
                suppressed,
                store = core.kind(),
                "rate limit store failed: call {} ({on_failure:?})",
                if allowed { "admitted" } else { "refused" }
            );
        }
        RateDecision {
            allowed,
            limit,
            remaining: if allowed { limit } else { 0 },
            retry_after: if allowed { Duration::ZERO } else { per.min(Duration::from_secs(1)) },
            reset_after: Duration::ZERO,
        }
    });
    if decision.allowed {
        counters.rate_allowed();
    } else {
        counters.rate_limited();
    }
    decision
}

/// The memory store's limiters, for every memory cache of the process: sharded maps from
/// the cache's id and the key to the times of the admitted calls.
static LOCAL: LazyLock<LocalLimiters> = LazyLock::new(LocalLimiters::default);

/// Shards of [`LocalLimiters`]: calls on different keys rarely wait for each other.
const SHARDS: usize = 16;

/// What the in-process limiters of a process may hold, in bytes (16 MiB, about 80,000 keys
/// with a few calls in their window). Beyond it the least recently used windows are
/// forgotten: an evicted key's next call is admitted as if it were new (its calls still in
/// the window no longer count). Each of the [`SHARDS`] shards holds a sixteenth; a single
/// window heavier than that (over about 65,000 admitted calls) crowds out its shard.
pub(crate) const LOCAL_LIMITER_BYTES: usize = 16 << 20;

/// What a window costs besides its key's bytes and 16 bytes per admitted call it can hold:
/// the map's slot, the `String` and the `VecDeque`, allocator headers. Calibrated from RSS:
/// 1,000,000 keys `client:<n>` with one call each grew the process by 260 bytes per key
/// (`tests/tests/memory_bound.rs`, docs/benchmarks.md).
const WINDOW_OVERHEAD: usize = 184;

#[derive(Default)]
struct LocalLimiters {
    shards: [Mutex<Shard>; SHARDS],
    /// Windows forgotten to stay within [`LOCAL_LIMITER_BYTES`].
    evicted: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Shard {
    /// By cache id, then key.
    windows: HashMap<u64, HashMap<String, Window>>,
    /// Windows held, and the count at which idle ones are swept next.
    len: usize,
    sweep_at: usize,
    /// What the windows weigh (see [`Window::weight`]).
    bytes: usize,
}

/// One limiter's admitted calls, oldest first.
struct Window {
    admitted: VecDeque<Instant>,
    /// When the newest admitted call leaves the window: the limiter is idle after that.
    idle_at: Instant,
    /// The last decision on it: the least recently used windows are evicted first.
    used: Instant,
}

/// Windows a shard may hold before its first sweep.
const FIRST_SWEEP: usize = 1024;

impl LocalLimiters {
    fn decide(
        &self,
        cache: u64,
        key: &str,
        limit: u64,
        per: Duration,
        now: Instant,
    ) -> RateDecision {
        let mut hasher = DefaultHasher::new();
        (cache, key).hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() % SHARDS as u64) as usize];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if shard.len >= shard.sweep_at.max(FIRST_SWEEP) {
            shard.sweep(now);
        }
        let windows = shard.windows.entry(cache).or_default();
        let created = !windows.contains_key(key);
        if created {
            let window = Window { admitted: VecDeque::new(), idle_at: now, used: now };
            windows.insert(key.to_owned(), window);
        }
        let window = windows.get_mut(key).expect("inserted above");
        let before = if created { 0 } else { window.weight(key) };
        let decision = window.decide(limit, per, now);
        let after = window.weight(key);
        if created {
            shard.len += 1;
        }
        shard.bytes = shard.bytes + after - before;
        if shard.bytes > LOCAL_LIMITER_BYTES / SHARDS {
            let evicted = shard.evict(now, (cache, key));
            self.evicted.fetch_add(evicted, std::sync::atomic::Ordering::Relaxed);
        }
        decision
    }

    /// Windows held, and windows evicted so far.
    #[cfg(test)]
    fn census(&self) -> (usize, u64) {
        let held = self
            .shards
            .iter()
            .map(|shard| shard.lock().unwrap().windows.values().map(HashMap::len).sum::<usize>())
            .sum();
        (held, self.evicted.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Shard {
    /// Drops the windows whose calls have all left (amortized: the next sweep waits until
    /// the shard has doubled).
    fn sweep(&mut self, now: Instant) {
        for windows in self.windows.values_mut() {
            windows.retain(|_, window| window.idle_at > now);
        }
        self.windows.retain(|_, windows| !windows.is_empty());
        self.recount();
        self.sweep_at = self.len * 2;
    }

    fn recount(&mut self) {
        self.len = self.windows.values().map(HashMap::len).sum();
        self.bytes = self
            .windows
            .values()
            .flat_map(|windows| windows.iter().map(|(key, window)| window.weight(key)))
            .sum();
    }

    /// Over its share of [`LOCAL_LIMITER_BYTES`]: drops idle windows, then the least
    /// recently used ones (never `current`) until an eighth of the share is free, so the
    /// next eviction waits for that eighth to fill. Returns how many active windows it
    /// dropped.
    fn evict(&mut self, now: Instant, current: (u64, &str)) -> u64 {
        self.sweep(now);
        let target = LOCAL_LIMITER_BYTES / SHARDS / 8 * 7;
        if self.bytes <= target {
            return 0;
        }
        let mut by_use: Vec<(Instant, u64, String, usize)> = self
            .windows
            .iter()
            .flat_map(|(&cache, windows)| {
                windows
                    .iter()
                    .map(move |(key, window)| (window.used, cache, key.clone(), window.weight(key)))
            })
            .filter(|(_, cache, key, _)| (*cache, key.as_str()) != current)
            .collect();
        by_use.sort_unstable_by_key(|(used, ..)| *used);
        let mut evicted = 0;
        for (_, cache, key, weight) in by_use {
            if self.bytes <= target {
                break;
            }
            if let Some(windows) = self.windows.get_mut(&cache) {
                windows.remove(&key);
                self.bytes -= weight;
                self.len -= 1;
                evicted += 1;
            }
        }
        self.windows.retain(|_, windows| !windows.is_empty());
        self.sweep_at = self.len * 2;
        evicted
    }
}

impl Window {
    /// What this window costs in memory, as [`LOCAL_LIMITER_BYTES`] counts it.
    fn weight(&self, key: &str) -> usize {
        key.len() + self.admitted.capacity() * std::mem::size_of::<Instant>() + WINDOW_OVERHEAD
    }

    fn decide(&mut self, limit: u64, per: Duration, now: Instant) -> RateDecision {
        self.used = now;
        while self.admitted.front().is_some_and(|&at| now.saturating_duration_since(at) >= per) {
            self.admitted.pop_front();
        }
        let count = self.admitted.len() as u64;
        if count < limit {
            self.admitted.push_back(now);
            self.idle_at = now + per;
            return RateDecision {
                allowed: true,
                limit,
                remaining: limit - count - 1,
                retry_after: Duration::ZERO,
                reset_after: per,
            };
        }
        let left = |at: Instant| (at + per).saturating_duration_since(now);
        let freeing = self.admitted[usize::try_from(count - limit).unwrap_or(0)];
        let newest = self.admitted.back().copied().unwrap_or(now);
        RateDecision {
            allowed: false,
            limit,
            remaining: 0,
            retry_after: left(freeing),
            reset_after: left(newest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_window_admits_limit_calls_then_frees_one_slot_per_expired_call() {
        let mut window =
            Window { admitted: VecDeque::new(), idle_at: Instant::now(), used: Instant::now() };
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(window.decide(3, SECOND, at(0)).remaining, 2);
        assert_eq!(window.decide(3, SECOND, at(100)).remaining, 1);
        assert_eq!(window.decide(3, SECOND, at(200)).remaining, 0);
        let refused = window.decide(3, SECOND, at(300));
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(700), "the call at 0 leaves at 1000");
        assert_eq!(
            refused.reset_after,
            Duration::from_millis(900),
            "the call at 200 leaves at 1200"
        );
        assert!(!window.decide(3, SECOND, at(999)).allowed, "refused calls are not recorded");
        let again = window.decide(3, SECOND, at(1000));
        assert!(again.allowed, "exactly `per` old: out of the window");
        assert_eq!(again.remaining, 0);
        assert!(!window.decide(3, SECOND, at(1050)).allowed);
        // A lowered limit waits for enough calls to leave.
        let lowered = window.decide(2, SECOND, at(1050));
        assert_eq!(lowered.retry_after, Duration::from_millis(150), "the call at 200 leaves");
    }

    #[test]
    fn no_window_of_length_per_holds_more_than_limit() {
        let mut window =
            Window { admitted: VecDeque::new(), idle_at: Instant::now(), used: Instant::now() };
        let start = Instant::now();
        let mut admitted = Vec::new();
        for ms in 0..5_000 {
            let now = start + Duration::from_millis(ms);
            if window.decide(100, SECOND, now).allowed {
                admitted.push(ms);
            }
        }
        assert_eq!(admitted.len(), 500);
        for (i, &first) in admitted.iter().enumerate() {
            let within = admitted[i..].iter().take_while(|&&ms| ms < first + 1_000).count();
            assert!(within <= 100, "{within} calls in the second from {first} ms");
        }
    }

    #[test]
    fn idle_windows_are_swept() {
        let limiters = LocalLimiters::default();
        let start = Instant::now();
        let ms = Duration::from_millis(1);
        for i in 0..40_000 {
            limiters.decide(1, &format!("k:{i}"), 1, ms, start + ms * i);
        }
        let (held, _) = limiters.census();
        // Every window but the newest is idle at each sweep: a shard never holds more than
        // its first sweep's threshold.
        assert!(held <= SHARDS * FIRST_SWEEP, "{held} windows held");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(validate(0, SECOND).is_err());
        assert!(validate(MAX_RATE_LIMIT + 1, SECOND).is_err());
        assert!(validate(1, Duration::from_micros(999)).is_err());
        assert!(validate(1, Duration::from_millis(1)).is_ok());
        assert!(validate(MAX_RATE_LIMIT, Duration::from_secs(86_400)).is_ok());
    }

    #[test]
    fn a_million_keys_stay_within_the_byte_cap() {
        let limiters = LocalLimiters::default();
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        for i in 0..1_000_000 {
            assert!(limiters.decide(1, &format!("client:{i}"), 10, hour, now).allowed);
        }
        let (held, evicted) = limiters.census();
        let bytes: usize = limiters.shards.iter().map(|shard| shard.lock().unwrap().bytes).sum();
        assert!(bytes <= LOCAL_LIMITER_BYTES, "{bytes} bytes in {held} windows");
        assert!(held < 100_000, "{held} windows held");
        assert_eq!(held as u64 + evicted, 1_000_000, "every window is held or counted");
        // The most recent keys are kept and still limited: what is lost is the oldest.
        for _ in 0..9 {
            limiters.decide(1, "client:999999", 10, hour, now);
        }
        assert!(!limiters.decide(1, "client:999999", 10, hour, now).allowed);
        assert!(limiters.decide(1, "client:0", 10, hour, now).allowed, "forgotten: new again");
    }
}
