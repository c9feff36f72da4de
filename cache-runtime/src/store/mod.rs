//! Where entries live: in process ([`memory`]) or in Redis ([`redis`]).
//!
//! Both stores implement the same *fill protocol*, which is what keeps an invalidation from
//! being undone by a load that started before it (see "Consistency" in the crate docs):
//!
//! 1. A miss that is about to run the body calls [`Store::begin_fill`]. If a fresh value
//!    landed meanwhile it is returned; otherwise the store puts a *pending marker* at the
//!    key (indexed like a value, so pattern invalidations find it) or adopts the marker
//!    another loader left, and hands back a [`Ticket`] naming it. A marker that replaces an
//!    expired value kept for `stale` carries that value, so stale fallback keeps working
//!    during the load, and puts it back if the load stores nothing.
//! 2. The body runs (it reads the database only now, after the marker is in place).
//! 3. [`Store::fill`] stores the value only if the key still holds that marker. Every write
//!    and every invalidation replaces or removes the marker, so a load that an invalidation
//!    overtook is refused by the store itself, in whatever process it runs.
//!
//! A batch (`#[cached_batch]`) runs the same three steps for all its keys at once:
//! [`Store::begin_fills`] and [`Store::settle_many`] (its fills and abandons), one round trip
//! each, every key decided as it would be alone.
//!
//! A refresh of a value that is still served uses the same call with a
//! [`Ticket::Replace`]: the new value goes in only if the key still holds the very value
//! the refresh started from.

// Some parameters are for the Redis store only.
#![cfg_attr(not(feature = "redis"), allow(unused_variables))]

#[cfg(feature = "redis")]
pub(crate) mod endpoint;
pub(crate) mod lease;
#[cfg(feature = "redis")]
pub(crate) mod link;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::breaker::BreakerState;
use crate::codec::Entry;
use crate::error::Result;

/// A rate-limit decision taken by a store that processes share.
pub(crate) struct RateWindow {
    pub(crate) allowed: bool,
    pub(crate) remaining: u64,
    pub(crate) retry_after: Duration,
    pub(crate) reset_after: Duration,
}

/// What a pattern invalidation removed.
pub(crate) struct Removed {
    /// Keys removed.
    pub(crate) keys: u64,
    /// Whether the keyspace had to be scanned (no trusted index serves the pattern).
    pub(crate) scanned: bool,
}

/// A value read with what a refresh needs to replace exactly it.
pub(crate) struct Found {
    pub(crate) entry: Arc<Entry>,
    /// Time since the value was written: by the write time in its header (`now - written`,
    /// see `format.rs`) on every store; for a value without one (`cr1`, plain JSON), on
    /// Redis `lifetime - PTTL`. `Duration::MAX` for an expired value that a pending marker
    /// keeps for stale fallback.
    pub(crate) age: Duration,
    /// How long the load that produced the value took, when its header says (`None` for
    /// `set`, `#[cache_put]` and older formats).
    pub(crate) load_time: Option<Duration>,
    /// When the read was sent.
    pub(crate) read_at: Instant,
    /// Identifies this stored value (see [`Ticket::Replace`]).
    pub(crate) version: Version,
}

/// Which stored value a [`Found`] was.
#[derive(Clone, Copy)]
pub(crate) enum Version {
    /// The memory store's write number.
    Memory(u64),
    /// Redis: the key's remaining time to live when read, in milliseconds. Together with
    /// the value's bytes this tells the value apart from a later write of the same bytes,
    /// whose remaining time to live is longer (a refresh that took longer than the value's
    /// age is never stored, see `load.rs`).
    #[cfg(feature = "redis")]
    Redis(i64),
}

/// What a hit does to the value's life (`idle`, sliding expiration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Touch {
    /// A hit extends the value's remaining life to `min(idle, cap - age)`.
    pub(crate) idle: Duration,
    /// The absolute cap (`ttl`), counted from the write time in the value's header: a value
    /// at least this old is a miss.
    pub(crate) cap: Duration,
}

/// What a load is about to store, for [`Store::begin_fill`].
pub(crate) struct FillPlan<'a> {
    /// How long the value will be kept (`ttl`, or `stale` when longer).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) lifetime: Duration,
    /// How long a stored value is fresh (`ttl`): an older one kept for `stale` does not
    /// answer the miss; the marker keeps it, so stale fallback still works meanwhile.
    pub(crate) fresh_for: Duration,
    /// How long the marker lives (the builder's `fill_window`).
    pub(crate) window: Duration,
    /// Replace a stored value the caller could not decode.
    pub(crate) force: bool,
    /// The call is the lookup itself (`read.rs`): any stored value that is not a pending
    /// marker is returned, as a `GET` would, for the caller to classify.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) lookup: bool,
    /// The tags the value will be stored with: the marker joins their tag sets, so an
    /// invalidation of a tag while the load runs removes it and the fill is refused.
    pub(crate) tags: &'a [String],
}

/// An entry as a plain read ([`Store::get_held`]) hands it to its one reader: shared with
/// the memory store's map, or owned (a Redis reply, which nothing else holds: no `Arc` to
/// allocate and free on every hit).
pub(crate) enum Held {
    Shared(Arc<Entry>),
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Owned(Entry),
}

impl std::ops::Deref for Held {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        match self {
            Held::Shared(entry) => entry,
            Held::Owned(entry) => entry,
        }
    }
}

/// What [`Store::begin_fill`] found.
pub(crate) enum Begun {
    /// A value is stored: no need to load.
    Present(Arc<Entry>),
    /// Nothing usable is stored: load, then [`Store::fill`] with this ticket.
    Ticket(Ticket),
}

/// Permission to store one load's result, voided by any later write or removal of the key.
pub(crate) enum Ticket {
    /// The pending marker this load placed at the key.
    Marker(Marker),
    /// The pending marker another loader placed, which this one shares: the first fill
    /// wins, and a load that stores nothing leaves it for the other.
    Adopted(Marker),
    /// A refresh: replace the value only if it is still `old` (same bytes and version).
    Replace {
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        old: Arc<Entry>,
        version: Version,
    },
}

/// One key's step 3 of the fill protocol in a batch ([`Store::settle_many`]).
pub(crate) enum Settle<'a> {
    /// [`Store::fill`]: store `entry` for `ttl` if `ticket` still holds.
    Fill {
        key: &'a str,
        ticket: &'a Ticket,
        entry: &'a Arc<Entry>,
        ttl: Duration,
        tags: &'a [String],
    },
    /// [`Store::abandon`]: the load stores nothing; whether `ticket` still holds.
    Abandon { key: &'a str, ticket: &'a Ticket },
}

// Read by the Redis store's batch scripts only.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Settle<'_> {
    /// The key it settles.
    pub(crate) fn key(&self) -> &str {
        match self {
            Settle::Fill { key, .. } | Settle::Abandon { key, .. } => key,
        }
    }

    /// The ticket it settles.
    pub(crate) fn ticket(&self) -> &Ticket {
        match self {
            Settle::Fill { ticket, .. } | Settle::Abandon { ticket, .. } => ticket,
        }
    }
}

/// A pending marker's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Marker {
    Memory(u64),
    #[cfg(feature = "redis")]
    Redis(Vec<u8>),
}

/// Runs `future`, the replay of kept removals, so that its commands reach a new primary
/// behind Sentinel before the others (which wait for that replay; see
/// `redis/sentinel.rs`, "The hand-over").
pub(crate) async fn replaying<F: std::future::Future>(future: F) -> F::Output {
    #[cfg(feature = "redis")]
    return redis::sentinel::replaying(future).await;
    #[cfg(not(feature = "redis"))]
    future.await
}

/// The store behind a [`Cache`](crate::Cache). An enum rather than a trait object: there are
/// two stores, and static dispatch keeps the hit path free of boxing.
pub(crate) enum Store {
    Memory(memory::MemoryStore),
    #[cfg(feature = "redis")]
    Redis(redis::RedisStore),
}

/// What [`Store::probe`] learned, for [`Cache::health`](crate::Cache::health).
pub(crate) enum Probe {
    /// The memory store's entries and weighed bytes.
    Memory { entries: u64, bytes: u64 },
    /// Redis answered a `PING` (after `round_trip`) and `INFO` of each primary.
    #[cfg(feature = "redis")]
    Redis { round_trip: Duration, info: Vec<String> },
    /// Redis did not answer.
    #[cfg(feature = "redis")]
    Unreachable(crate::Error),
}

impl Store {
    /// An in-process store bounded to about `capacity_bytes`.
    pub(crate) fn memory(capacity_bytes: u64) -> Store {
        Store::Memory(memory::MemoryStore::new(capacity_bytes))
    }

    /// A Redis store (not connected yet).
    #[cfg(feature = "redis")]
    pub(crate) fn redis(options: redis::RedisOptions) -> Result<Store> {
        Ok(Store::Redis(redis::RedisStore::new(options)?))
    }

    /// The prefix of every key in Redis (empty for the memory store, which is private to
    /// its cache).
    pub(crate) fn prefix(&self) -> &str {
        match self {
            Store::Memory(_) => "",
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.prefix(),
        }
    }

    /// The circuit breaker's state (always closed for the memory store).
    pub(crate) fn breaker_state(&self) -> BreakerState {
        match self {
            Store::Memory(_) => BreakerState::Closed,
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.breaker_state(),
        }
    }

    /// How many primary changes the store followed: `Some` behind Redis Sentinel (see
    /// `redis/sentinel.rs`), `None` for every other store.
    pub(crate) fn primary_generation(&self) -> Option<u64> {
        match self {
            Store::Memory(_) => None,
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.primary_generation(),
        }
    }

    /// Checks the store: its size in process; a `PING` round trip and `INFO` on Redis
    /// (bypassing the breaker, bounded by the command timeout).
    pub(crate) async fn probe(&self) -> Probe {
        match self {
            Store::Memory(store) => {
                let (entries, bytes) = store.size();
                Probe::Memory { entries, bytes }
            }
            #[cfg(feature = "redis")]
            Store::Redis(store) => {
                let started = Instant::now();
                match store.ping_and_info().await {
                    Ok(info) => Probe::Redis { round_trip: started.elapsed(), info },
                    Err(error) => Probe::Unreachable(error),
                }
            }
        }
    }

    /// The permissions the Redis user lacks (checked now), each with what fails without
    /// it; `near`: the cache has a near cache (asked by `health()` of a Redis store only).
    #[cfg(feature = "redis")]
    pub(crate) async fn missing_permissions(&self, near: bool) -> Vec<String> {
        match self {
            Store::Memory(_) => Vec::new(),
            Store::Redis(store) => store.missing_permissions(near).await,
        }
    }

    /// Checks at build that the store can keep the contract with this configuration: a
    /// Redis store without a prefix on a server that may evict keys could never invalidate
    /// a pattern, and is an [`Error::InvalidConfig`](crate::Error::InvalidConfig). `Ok` for
    /// the memory store, and when Redis is unreachable (a cache builds while Redis is down).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig), as above.
    #[cfg(feature = "redis")]
    pub(crate) async fn check_setup(&self) -> Result<()> {
        match self {
            Store::Memory(_) => Ok(()),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.check_setup().await,
        }
    }

    /// [`get`](Self::get) when it needs no waiting (the memory store): the hit path calls it
    /// first, saving an async call per hit there.
    pub(crate) fn get_now(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        match self {
            Store::Memory(store) => Some(store.get(key)),
            #[cfg(feature = "redis")]
            Store::Redis(_) => None,
        }
    }

    /// The entry under `key` (without the cache's prefix), if any. A pending marker reads
    /// as absent.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>> {
        match self {
            Store::Memory(store) => Ok(store.get(key)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.get(key).await,
        }
    }

    /// [`get`](Self::get) for a reader that only reads the entry (the plain hit path,
    /// `read.rs`): a Redis reply is handed over as it is, not put behind an `Arc`.
    pub(crate) async fn get_held(&self, key: &str) -> Result<Option<Held>> {
        match self {
            Store::Memory(store) => Ok(store.get(key).map(Held::Shared)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => Ok(store.get_owned(key).await?.map(Held::Owned)),
        }
    }

    /// The entries under `keys` (without the cache's prefix), in order: what
    /// [`get`](Self::get) answers for each, in one round trip on Redis (`MGET`; on a cluster
    /// redis-rs splits it into one `MGET` per slot, sent in parallel).
    pub(crate) async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Arc<Entry>>>> {
        match self {
            Store::Memory(store) => {
                let mut entries = Vec::with_capacity(keys.len());
                for key in keys {
                    entries.push(store.get(key));
                }
                Ok(entries)
            }
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.get_many(keys).await,
        }
    }

    /// [`get`](Self::get) for `idle`: a hit extends the value's remaining life to
    /// `min(idle, cap - age)` (age from the write time in its header), in the same round
    /// trip on Redis (one script); a value at least `cap` old reads as absent. Values
    /// without a write time (absent results, older formats) are returned untouched.
    pub(crate) async fn get_touched(&self, key: &str, touch: Touch) -> Result<Option<Arc<Entry>>> {
        match self {
            Store::Memory(store) => Ok(store.get_touched(key, touch)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.get_touched(key, touch).await,
        }
    }

    /// The entry under `key`, its age and version, for entries stored with `lifetime`.
    pub(crate) async fn get_aged(&self, key: &str, lifetime: Duration) -> Result<Option<Found>> {
        match self {
            Store::Memory(store) => Ok(store.get_aged(key)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.get_aged(key, lifetime).await,
        }
    }

    /// Step 1 of the fill protocol (module docs): the value if a fresh one landed, else a
    /// ticket.
    pub(crate) async fn begin_fill(&self, key: &str, plan: &FillPlan<'_>) -> Result<Begun> {
        match self {
            Store::Memory(store) => Ok(store.begin_fill(key, plan)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.begin_fill(key, plan).await,
        }
    }

    /// Step 1 for many keys (a batch), each with its plan (the plans share `lifetime`,
    /// `fresh_for`, `window` and `lookup`, one policy): what
    /// [`begin_fill`](Self::begin_fill) answers for each, in order. On Redis one script call
    /// (per slot on a cluster, in parallel; per 500 keys), each key classified as alone.
    pub(crate) async fn begin_fills(&self, fills: &[(&str, FillPlan<'_>)]) -> Vec<Result<Begun>> {
        match self {
            Store::Memory(store) => {
                let mut begun = Vec::with_capacity(fills.len());
                for (key, plan) in fills {
                    begun.push(Ok(store.begin_fill(key, plan)));
                }
                begun
            }
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.begin_fills(fills).await,
        }
    }

    /// Step 3 for many keys (a batch's fills and abandons): what [`fill`](Self::fill) or
    /// [`abandon`](Self::abandon) answers for each, in order. On Redis one script call (per
    /// slot on a cluster, in parallel; per 500 keys).
    pub(crate) async fn settle_many(&self, settles: &[Settle<'_>]) -> Vec<Result<bool>> {
        match self {
            Store::Memory(_) => {
                let mut settled = Vec::with_capacity(settles.len());
                for settle in settles {
                    settled.push(match settle {
                        Settle::Fill { key, ticket, entry, ttl, tags } => {
                            self.fill(key, ticket, entry, *ttl, tags).await
                        }
                        Settle::Abandon { key, ticket } => self.abandon(key, ticket).await,
                    });
                }
                settled
            }
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.settle_many(settles).await,
        }
    }

    /// Step 3 of the fill protocol: stores `entry` for `ttl` if `ticket` still holds.
    /// Returns whether it was stored. `tags` are the ticket's (a marker is already in their
    /// tag sets; a refresh's replacement joins them for its new lifetime).
    pub(crate) async fn fill(
        &self,
        key: &str,
        ticket: &Ticket,
        entry: &Arc<Entry>,
        ttl: Duration,
        tags: &[String],
    ) -> Result<bool> {
        match self {
            Store::Memory(store) => Ok(store.fill(key, ticket, Arc::clone(entry), ttl, tags)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.fill(key, ticket, entry, ttl, tags).await,
        }
    }

    /// A load stores nothing: whether its ticket still holds (no write or invalidation of
    /// the key since it was taken). A marker the load placed itself is removed (putting back
    /// the expired value it kept); a shared one is left to the other loaders.
    pub(crate) async fn abandon(&self, key: &str, ticket: &Ticket) -> Result<bool> {
        match self {
            Store::Memory(store) => Ok(store.abandon(key, ticket)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.abandon(key, ticket).await,
        }
    }

    /// Stores `entry` under `key` for `ttl` with `tags`, replacing whatever is there
    /// (write-through).
    pub(crate) async fn set(
        &self,
        key: &str,
        entry: &Arc<Entry>,
        ttl: Duration,
        tags: &[String],
    ) -> Result<()> {
        match self {
            Store::Memory(store) => {
                store.set(key, Arc::clone(entry), ttl, tags);
                Ok(())
            }
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.set(key, entry, ttl, tags).await,
        }
    }

    /// Removes `key` (a value or a pending marker); returns how many values went (0 or 1).
    pub(crate) async fn remove(&self, key: &str) -> Result<u64> {
        match self {
            Store::Memory(store) => Ok(store.remove(key)),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.remove(key).await,
        }
    }

    /// Removes the keys matching a glob.
    pub(crate) async fn remove_matching(&self, pattern: &str) -> Result<Removed> {
        match self {
            Store::Memory(store) => {
                Ok(Removed { keys: store.remove_matching(pattern), scanned: false })
            }
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.remove_matching(pattern).await,
        }
    }

    /// Removes the keys stored with `tag` (values and pending markers alike, so loads
    /// running anywhere cannot store): through the tag's set (see `tags.rs` and
    /// `redis/tags.rs`).
    pub(crate) async fn remove_tagged(&self, tag: &str) -> Result<Removed> {
        match self {
            Store::Memory(store) => Ok(Removed { keys: store.remove_tagged(tag), scanned: false }),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.remove_tagged(tag).await,
        }
    }

    /// A rate-limit decision, when other processes share this store (one script on Redis);
    /// `None` for a store private to this process, whose limits the in-process limiters keep
    /// (`rate_limit.rs`).
    pub(crate) async fn rate_decide(
        &self,
        key: &str,
        limit: u64,
        per: Duration,
    ) -> Result<Option<RateWindow>> {
        match self {
            Store::Memory(_) => Ok(None),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.rate_decide(key, limit, per).await.map(Some),
        }
    }

    /// Removes every key of this cache.
    pub(crate) async fn clear(&self) -> Result<u64> {
        match self {
            Store::Memory(store) => Ok(store.clear()),
            #[cfg(feature = "redis")]
            Store::Redis(store) => store.clear().await,
        }
    }

    /// A short name for logs and `Debug`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Store::Redis(_) => "redis",
        }
    }
}
