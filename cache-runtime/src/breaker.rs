//! The circuit breaker in front of Redis: once Redis is known to be down or hung, calls stop
//! waiting on connect or command timeouts and run their bodies at once.
//!
//! - **Closed**: commands go through. [`FAILURES_TO_OPEN`] consecutive connection failures
//!   or timeouts open the breaker.
//! - **Open**: commands fail at once with [`Error::Unavailable`](crate::Error::Unavailable)
//!   for the cool-down (1 s, doubling after each failed probe up to 30 s).
//! - **Half-open**: after the cool-down, one command is let through as a probe. Success
//!   closes the breaker (caching resumes by itself); failure opens it again.
//!
//! Only connection-level failures count: an error reply such as `OOM` means Redis answers,
//! and tripping the breaker would stop reads that still work. A node that cannot serve as
//! primary now (`READONLY` after a failover, `LOADING`, `MASTERDOWN`) counts as a
//! connection failure; a cluster's passing refusal during a slot migration (`TRYAGAIN`,
//! `ASK`, `CLUSTERDOWN`) does not (one moving slot must not stop the other nodes), though
//! a write it refused is kept for replay like one that met a connection failure.
//!
//! Without the `redis` feature only [`BreakerState`] remains (always closed).

#[cfg(feature = "redis")]
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
#[cfg(feature = "redis")]
use std::sync::OnceLock;
#[cfg(feature = "redis")]
use std::time::{Duration, Instant};

/// Consecutive connection failures that open the breaker.
#[cfg(feature = "redis")]
pub(crate) const FAILURES_TO_OPEN: u32 = 3;
#[cfg(feature = "redis")]
const FIRST_COOL_DOWN: Duration = Duration::from_secs(1);
#[cfg(feature = "redis")]
const MAX_COOL_DOWN: Duration = Duration::from_secs(30);

/// The breaker's state, as metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Commands go to Redis.
    Closed,
    /// Redis is known down: commands are skipped until the cool-down ends.
    Open,
    /// A probe is testing whether Redis is back.
    HalfOpen,
}

/// How a command was let through.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The breaker is closed.
    Normal,
    /// The one command testing whether Redis is back.
    Probe,
}

#[cfg(feature = "redis")]
#[derive(Default)]
pub(crate) struct Breaker {
    consecutive_failures: AtomicU32,
    /// Nanoseconds since [`epoch`] until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    cool_down_ms: AtomicU64,
    probing: AtomicBool,
}

/// A process-wide monotonic origin, so instants fit in an atomic.
#[cfg(feature = "redis")]
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(feature = "redis")]
fn now_nanos() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
}

#[cfg(feature = "redis")]
impl Breaker {
    /// Whether a command may go to Redis now, and as what. In half-open state only one
    /// caller gets [`Pass::Probe`]; it must report back with `succeeded`, `failed` or
    /// `abandoned`.
    pub(crate) fn allow(&self) -> Option<Pass> {
        let open_until = self.open_until.load(Relaxed);
        if open_until == 0 {
            return Some(Pass::Normal);
        }
        if now_nanos() < open_until {
            return None;
        }
        self.probing.compare_exchange(false, true, Relaxed, Relaxed).is_ok().then_some(Pass::Probe)
    }

    pub(crate) fn succeeded(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.open_until.load(Relaxed) != 0 {
            self.open_until.store(0, Relaxed);
            self.cool_down_ms.store(0, Relaxed);
            self.probing.store(false, Relaxed);
            tracing::info!("Redis answers again; cache circuit breaker closed");
        }
    }

    pub(crate) fn failed(&self, pass: Pass) {
        if pass == Pass::Normal && self.open_until.load(Relaxed) != 0 {
            // A command that was already in flight when the breaker opened: it tells
            // nothing new, and must not stretch the cool-down.
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        let was_probe = pass == Pass::Probe;
        if was_probe || failures >= FAILURES_TO_OPEN {
            let previous = Duration::from_millis(self.cool_down_ms.load(Relaxed));
            let cool_down = if was_probe {
                (previous * 2).clamp(FIRST_COOL_DOWN, MAX_COOL_DOWN)
            } else {
                FIRST_COOL_DOWN
            };
            self.cool_down_ms
                .store(u64::try_from(cool_down.as_millis()).unwrap_or(u64::MAX), Relaxed);
            let until =
                now_nanos().saturating_add(u64::try_from(cool_down.as_nanos()).unwrap_or(u64::MAX));
            if !was_probe {
                tracing::warn!(
                    ?cool_down,
                    "Redis unreachable; cache circuit breaker opened, calls run their bodies"
                );
            }
            self.open_until.store(until, Relaxed);
            self.probing.store(false, Relaxed);
        }
    }

    /// A command was cancelled before it finished: if it was the probe, let another probe.
    pub(crate) fn abandoned(&self, pass: Pass) {
        if pass == Pass::Probe {
            self.probing.store(false, Relaxed);
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.open_until.load(Relaxed) {
            0 => BreakerState::Closed,
            until if now_nanos() < until => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

/// Whether an error means Redis could not be reached in time (as opposed to an error reply).
#[cfg(feature = "redis")]
pub(crate) fn is_connection_failure(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || is_refused_session(error)
        || is_failover_refusal(error)
}

/// Refused credentials (`AUTH` failed at connect, `NOAUTH`, `WRONGPASS`) or a peer that does
/// not speak the Redis protocol: no command can succeed on that connection, like an
/// unreachable server, and a later attempt may (a rotated password, the right service back).
#[cfg(feature = "redis")]
fn is_refused_session(error: &redis::RedisError) -> bool {
    matches!(error.kind(), redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::Parse)
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// Whether `error` says the node cannot serve as primary now: a demoted primary
/// (`READONLY`), one still loading its data set (`LOADING`), one whose replication link
/// is down (`MASTERDOWN`), or one that lost its replicas under `min-replicas-to-write`
/// (`NOREPLICAS`: isolated, it may be replaced). Like a lost connection: the command did
/// not run, and another node (the new primary) or a later attempt will take it.
#[cfg(feature = "redis")]
pub(crate) fn is_failover_refusal(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::ReadOnly | ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown
        )
    ) || error.code() == Some("NOREPLICAS")
}

/// Whether `error` is a cluster's passing refusal during a topology change: a slot being
/// migrated (`TRYAGAIN`, an `ASK` or `MOVED` the client could not follow) or a cluster
/// briefly down (`CLUSTERDOWN`). The command did not run; a later attempt will land. Not a
/// reason to stop using the other nodes: the breaker does not count it.
#[cfg(feature = "redis")]
pub(crate) fn is_passing_refusal(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::Ask
                | ServerErrorKind::Moved
        )
    )
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cool_down() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.failed(Pass::Normal);
            assert!(breaker.allow().is_some());
        }
        breaker.succeeded(); // a success in between resets the count
        for _ in 0..FAILURES_TO_OPEN {
            breaker.failed(Pass::Normal);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.allow().is_none());
        // End the cool-down early: one probe passes, others wait for its verdict.
        breaker.open_until.store(1, Relaxed);
        assert!(breaker.allow().is_some());
        assert!(breaker.allow().is_none());
        breaker.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow().is_some());
    }

    #[test]
    fn a_failed_probe_reopens_with_a_longer_cool_down() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            breaker.failed(Pass::Normal);
        }
        breaker.open_until.store(1, Relaxed);
        assert_eq!(breaker.allow(), Some(Pass::Probe));
        breaker.failed(Pass::Probe);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.cool_down_ms.load(Relaxed), 2000);
        // Late failures of commands sent before the breaker opened change nothing.
        breaker.failed(Pass::Normal);
        breaker.failed(Pass::Normal);
        assert_eq!(breaker.cool_down_ms.load(Relaxed), 2000);
    }
}
