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
    /// A tag given to [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) is not a
    /// rendered tag (empty, whitespace, control or glob characters, `#`, too long).
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The tag as given.
        tag: String,
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
        /// The URL, its password replaced by `***` (`redis://user:***@host`).
        url: String,
        /// What the Redis client said about it.
        #[source]
        source: BackendError,
    },
    /// A value's encoded size is larger than the builder's `max_value_bytes`. Encoding
    /// stops as soon as it passes the limit, so a huge value costs no more work or memory
    /// than the limit itself.
    #[error("the value for key {key:?} is over the {max}-byte limit once encoded (at least {bytes} bytes; encoding stopped there)")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// How much of the encoded value was seen: `max + 1` (encoding stops there; the
        /// real size is never computed).
        bytes: usize,
        /// The configured maximum.
        max: usize,
    },
    /// [`Cache::lock`](crate::Cache::lock) could not take the lock within its wait.
    #[error("lock {resource:?} was not free within {waited:?}")]
    LockTimeout {
        /// The resource.
        resource: String,
        /// How long the call waited.
        waited: std::time::Duration,
    },
    /// A rate limit that cannot be enforced was given to
    /// [`Cache::rate_limit`](crate::Cache::rate_limit): a `limit` of 0 or over
    /// [`MAX_RATE_LIMIT`](crate::MAX_RATE_LIMIT), a window under one millisecond.
    #[error("invalid rate limit of {limit} per {per:?}: {reason}")]
    InvalidRateLimit {
        /// The limit as given.
        limit: u64,
        /// The window as given.
        per: std::time::Duration,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A builder setting is out of range.
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(String),
    /// Redis is known to be down: the circuit breaker skips it until a probe succeeds.
    #[error("cache backend unavailable: Redis is known down (circuit breaker open)")]
    Unavailable,
    /// Redis failed: connection refused or lost, timeout, or an error reply.
    #[error("cache backend error: {0}")]
    Backend(#[source] BackendError),
    /// A value could not be serialized for storing (by the cache's codec).
    #[error("could not encode the value for key {key:?}: {source}")]
    Encode {
        /// The key the value was meant for.
        key: String,
        /// What the codec said (a `serde_json::Error` carrying the message for the other
        /// codecs).
        #[source]
        source: serde_json::Error,
    },
}

/// What kind of failure an [`Error`] is; the `kind` label of `cache_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Redis could not be reached or the connection broke, or the node could not take the
    /// command now: a demoted primary (`READONLY`), loading (`LOADING`), a failover or a
    /// slot migration in progress (`MASTERDOWN`, `TRYAGAIN`, `CLUSTERDOWN`). A removal that
    /// failed so is kept and replayed.
    Connection,
    /// Redis did not answer within the command timeout.
    Timeout,
    /// Redis is known down; the circuit breaker skipped it.
    Unavailable,
    /// Redis answered with an error (`OOM`, `WRONGTYPE`, ...).
    Server,
    /// A stored value did not decode as the expected type.
    Decode,
    /// A stored value was written for another value type or schema (another
    /// fingerprint, a later envelope version): a miss that leaves it in place.
    Schema,
    /// A value could not be encoded.
    Encode,
    /// A value (or a key rendered by an attribute) was larger than the configured maximum
    /// (`max_value_bytes`, `max_key_bytes`) and was not cached.
    TooLarge,
    /// Bad input or misuse of the API (never counted by the cache itself).
    Usage,
}

impl ErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Unavailable,
        ErrorKind::Server,
        ErrorKind::Decode,
        ErrorKind::Schema,
        ErrorKind::Encode,
        ErrorKind::TooLarge,
        ErrorKind::Usage,
    ];

    /// The label value: `connection`, `timeout`, `unavailable`, `server`, `decode`,
    /// `schema`, `encode`, `too_large`, `usage`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Server => "server",
            ErrorKind::Decode => "decode",
            ErrorKind::Schema => "schema",
            ErrorKind::Encode => "encode",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Usage => "usage",
        }
    }
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Backend(error) => error.kind(),
            Error::Unavailable => ErrorKind::Unavailable,
            Error::Encode { .. } => ErrorKind::Encode,
            Error::ValueTooLarge { .. } => ErrorKind::TooLarge,
            _ => ErrorKind::Usage,
        }
    }

    /// A failure of the Redis client.
    #[cfg(feature = "redis")]
    pub(crate) fn backend(error: redis::RedisError) -> Self {
        Error::Backend(BackendError(error))
    }

    pub(crate) fn invalid_key(key: &str, reason: &'static str) -> Self {
        Error::InvalidKey { key: key.to_owned(), reason }
    }
}

/// A failure reported by the Redis client, as it described it.
///
/// Opaque on purpose: the client library is an implementation detail, so its error type is
/// not part of this crate's API (a new redis-rs release cannot break your code). Its
/// message is in `Display`, and its own cause in [`source`](std::error::Error::source);
/// [`Error::kind`] classifies it.
///
/// Without the `redis` feature there is no client, and no value of this type exists: the
/// type stays so that code matching on [`Error::Backend`] compiles with any features.
#[derive(Debug)]
pub struct BackendError(pub(crate) Client);

/// The client's error type: redis-rs's, or none in a build without Redis.
#[cfg(feature = "redis")]
pub(crate) type Client = redis::RedisError;
/// The client's error type: redis-rs's, or none in a build without Redis.
#[cfg(not(feature = "redis"))]
#[derive(Debug)]
pub(crate) enum Client {}

impl BackendError {
    /// Timeout, connection failure, or an error reply.
    fn kind(&self) -> ErrorKind {
        #[cfg(feature = "redis")]
        {
            if self.0.is_timeout() {
                ErrorKind::Timeout
            } else if crate::breaker::is_connection_failure(&self.0)
                || crate::breaker::is_passing_refusal(&self.0)
            {
                ErrorKind::Connection
            } else {
                ErrorKind::Server
            }
        }
        #[cfg(not(feature = "redis"))]
        match self.0 {}
    }
}

impl std::fmt::Display for BackendError {
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(feature = "redis")]
        {
            self.0.fmt(f)
        }
        #[cfg(not(feature = "redis"))]
        match self.0 {}
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        #[cfg(feature = "redis")]
        {
            std::error::Error::source(&self.0)
        }
        #[cfg(not(feature = "redis"))]
        match self.0 {}
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
