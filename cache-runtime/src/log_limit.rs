//! Bounded failure logs. While Redis is down (or the breaker is open) every call fails the
//! same way; logging each one would flood the log with lines that carry user-controlled keys.
//! So the per-call warnings of the read, write and load paths go through a [`LogLimit`]: at
//! most one line per [`LogKind`] per [`LOG_INTERVAL`] and cache, and the line that is
//! written says how many of its kind were left out since the previous one (`suppressed`).
//! Keys and error texts in those lines are cut to [`LOGGED_KEY_BYTES`] with their full length
//! ([`clip`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one line per kind of failure per this interval, per cache.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Longer keys (and error texts) are cut to this many bytes in log lines.
pub(crate) const LOGGED_KEY_BYTES: usize = 128;

/// A kind of per-call failure, each with its own allowance of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogKind {
    /// The store failed a read (`cache read failed`).
    ReadFailed,
    /// A stored value does not decode.
    Undecodable,
    /// A fill or write-through failed, or a value could not be stored.
    WriteFailed,
    /// A removal failed and was kept for replay, or an invalidation failed.
    RemovalFailed,
    /// The miss path could not prepare its fill or encode its value, or take its lock.
    LoadFailed,
    /// A rendered key was longer than `max_key_bytes` and not cached.
    KeyTooLong,
    /// A rate-limit decision could not ask the store and followed its `FailMode`.
    RateLimitFailed,
}

const KINDS: usize = 7;

impl LogKind {
    fn index(self) -> usize {
        self as usize
    }
}

/// The allowance of one kind: when the next line may be written, and how many were left
/// out since the last one.
#[derive(Default)]
struct Allowance {
    /// Milliseconds since [`LogLimit::start`] from which the next line may be written.
    next_at: AtomicU64,
    suppressed: AtomicU64,
}

/// One cache's log allowances (see the module docs).
pub(crate) struct LogLimit {
    start: Instant,
    interval_ms: u64,
    kinds: [Allowance; KINDS],
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(LOG_INTERVAL)
    }
}

impl LogLimit {
    /// At most one line per kind per `interval`.
    pub(crate) fn new(interval: Duration) -> LogLimit {
        LogLimit {
            start: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            kinds: Default::default(),
        }
    }

    /// Whether a line of `kind` may be written now: `Some(n)` with the number of lines of
    /// that kind left out since the previous one, or `None` (this one is counted as left
    /// out).
    pub(crate) fn admit(&self, kind: LogKind) -> Option<u64> {
        let allowance = &self.kinds[kind.index()];
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next_at = allowance.next_at.load(Ordering::Relaxed);
        if now >= next_at
            && allowance
                .next_at
                .compare_exchange(
                    next_at,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(allowance.suppressed.swap(0, Ordering::Relaxed));
        }
        allowance.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `text` for a log line: as it is when at most [`LOGGED_KEY_BYTES`] long, else its first
/// bytes (cut on a character boundary), an ellipsis and its length: `search:aaaa…(61440
/// bytes)`. Works on any `Display` (an error whose message holds a key) without keeping
/// more than the shown bytes.
pub(crate) fn clip<T: fmt::Display + ?Sized>(text: &T) -> Clip<'_, T> {
    Clip(text)
}

/// See [`clip`].
pub(crate) struct Clip<'a, T: ?Sized>(&'a T);

impl<T: fmt::Display + ?Sized> fmt::Display for Clip<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = Bounded { kept: String::new(), total: 0 };
        let _ = fmt::write(&mut shown, format_args!("{}", self.0));
        f.write_str(&shown.kept)?;
        if shown.total > shown.kept.len() {
            write!(f, "…({} bytes)", shown.total)?;
        }
        Ok(())
    }
}

impl<T: fmt::Display + ?Sized> fmt::Debug for Clip<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Keeps the first [`LOGGED_KEY_BYTES`] bytes written (whole characters) and counts all.
struct Bounded {
    kept: String,
    total: usize,
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LOGGED_KEY_BYTES.saturating_sub(self.kept.len());
        if self.total == self.kept.len() {
            // Nothing cut yet: keep what fits.
            let mut cut = s.len().min(room);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.kept.push_str(&s[..cut]);
        }
        self.total += s.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_count_left_out() {
        let limit = LogLimit::new(Duration::from_millis(50));
        assert_eq!(limit.admit(LogKind::ReadFailed), Some(0));
        for _ in 0..999 {
            assert_eq!(limit.admit(LogKind::ReadFailed), None);
        }
        // Another kind has its own allowance.
        assert_eq!(limit.admit(LogKind::WriteFailed), Some(0));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limit.admit(LogKind::ReadFailed), Some(999));
        assert_eq!(limit.admit(LogKind::ReadFailed), None);
    }

    #[test]
    fn long_texts_are_cut_with_their_length() {
        assert_eq!(clip("vehicle:42").to_string(), "vehicle:42");
        let exact = "k".repeat(LOGGED_KEY_BYTES);
        assert_eq!(clip(&exact).to_string(), exact);
        let long = format!("search:{}", "a".repeat(10_000));
        let shown = clip(&long).to_string();
        assert_eq!(shown, format!("{}…(10007 bytes)", &long[..LOGGED_KEY_BYTES]));
        // Cut on a character boundary.
        let wide = "é".repeat(100);
        let shown = clip(&wide).to_string();
        assert!(shown.starts_with(&"é".repeat(64)) && shown.ends_with("…(200 bytes)"), "{shown}");
        // Any Display, written in pieces.
        let error = format!("the value for key {long:?} is too large");
        assert!(clip(&format_args!("{error}")).to_string().len() < LOGGED_KEY_BYTES + 32);
    }
}
