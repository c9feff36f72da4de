//! The error type of the programmatic API.

/// What can go wrong when using a [`Cache`](crate::Cache) directly.
///
/// Annotated functions never return this type: when the cache misbehaves they run their
/// body and count the failure in [`Stats::errors`](crate::Stats::errors). The programmatic
/// API returns it for bad input (checked before anything is changed) and, for calls that
/// cannot fall back on a body such as [`Cache::get`](crate::Cache::get), for backend failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key was empty or contained whitespace or control characters.
    #[error("invalid cache key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An invalidation pattern is not a valid glob (empty, unclosed `[`, trailing `\\`).
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A time to live of zero (or one too large to represent) was given.
    #[error("invalid time to live {ttl:?}: {reason}")]
    InvalidTtl {
        /// The duration as given.
        ttl: std::time::Duration,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The Redis URL given to [`CacheBuilder::redis`](crate::CacheBuilder::redis) is malformed.
    #[error("invalid Redis URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What redis-rs said about it.
        #[source]
        source: redis::RedisError,
    },
    /// [`Cache::lock`](crate::Cache::lock) could not take the lock within its wait.
    #[error("lock {resource:?} was not free within {waited:?}")]
    LockTimeout {
        /// The resource.
        resource: String,
        /// How long the call waited.
        waited: std::time::Duration,
    },
    /// A builder setting is out of range.
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(String),
    /// Redis is known to be down: the circuit breaker skips it until a probe succeeds.
    #[error("cache backend unavailable: Redis is known down (circuit breaker open)")]
    Unavailable,
    /// Redis failed: connection refused or lost, timeout, or an error reply.
    #[error("cache backend error: {0}")]
    Backend(#[from] redis::RedisError),
    /// A value could not be serialized to JSON for storing.
    #[error("could not encode the value for key {key:?}: {source}")]
    Encode {
        /// The key the value was meant for.
        key: String,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn invalid_key(key: &str, reason: &'static str) -> Self {
        Error::InvalidKey {
            key: key.to_owned(),
            reason,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
