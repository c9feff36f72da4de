//! Leases and wake-ups: the coordination between processes that the store offers, behind
//! one interface both stores implement, so that callers never ask which store they have.
//!
//! - A *lock* ([`LeaseKind::Lock`]) is [`Cache::lock`](crate::Cache::lock)'s lease, with a
//!   fencing token per acquisition; its release wakes waiters on `#released:<resource>`.
//! - A *load lease* ([`LeaseKind::Load`]) is what `#[cached(lock)]` takes so that one
//!   process loads a key; its holder may mark it *settling* ([`Store::settle_load_lease`])
//!   when it is about to confirm its outcome with the store; its release says on
//!   `#filled:<key>` whether waiters should look again (`1`) or the body failed (`0`).
//!
//! On Redis (`store/redis/lease.rs`) a lease is a key set with `NX PX`, renewed, settled
//! and released only by its holder through compare-and-set scripts. On the memory store,
//! locks are in-process (`LocalLocks` in `store/memory.rs`) and load leases are not needed:
//! single flight already lets one caller load.

// Some parameters are for the Redis store only.
#![cfg_attr(not(feature = "redis"), allow(unused_variables))]

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "redis")]
use tokio::sync::oneshot;

use super::Store;
use crate::codec::Entry;
use crate::error::Result;
use crate::notify::{Signal, Woken};
#[cfg(feature = "redis")]
use crate::notify::{FILLED, RELEASED};

/// A token no other holder uses: process id, time and a counter.
pub(crate) fn new_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}-{nanos:x}-{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Which lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseKind {
    /// [`Cache::lock`](crate::Cache::lock): fenced; its release wakes lock waiters.
    Lock,
    /// A `#[cached(lock)]` load: its release wakes the processes waiting for the value.
    Load,
}

#[cfg(feature = "redis")]
impl LeaseKind {
    pub(crate) fn namespace(self) -> &'static str {
        match self {
            LeaseKind::Lock => "lock:",
            LeaseKind::Load => "load:",
        }
    }

    pub(crate) fn channel_namespace(self) -> &'static str {
        match self {
            LeaseKind::Lock => RELEASED,
            LeaseKind::Load => FILLED,
        }
    }
}

/// How a waiter is woken.
pub(crate) enum Wakeup<'a> {
    /// A pub/sub message from the holder's release.
    #[cfg(feature = "redis")]
    Message(oneshot::Receiver<Woken>),
    /// An in-process release (memory store), already registered.
    Local(Pin<Box<tokio::sync::futures::Notified<'a>>>),
    /// The pub/sub subscription is not live yet: wait for it, then look again (Redis only;
    /// kept in every build so that callers match on it without a `cfg`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    NotSubscribed,
}

impl<'a> Wakeup<'a> {
    /// Waits for the wake-up, at most until `until`; returns what it said if one came.
    pub(crate) async fn wait(self, until: Instant) -> Option<Woken> {
        match self {
            #[cfg(feature = "redis")]
            Wakeup::Message(receiver) => {
                tokio::time::timeout_at(until.into(), receiver).await.ok().and_then(Result::ok)
            }
            Wakeup::Local(notified) => {
                let woken = tokio::time::timeout_at(until.into(), notified).await.ok();
                woken.map(|()| Woken::anonymous(Signal::Ready))
            }
            Wakeup::NotSubscribed => None,
        }
    }
}

/// A waiter's look ([`Store::peek_with_lease`]).
pub(crate) struct Peek {
    /// The value under the key (a pending marker reads as absent).
    pub(crate) entry: Option<Arc<Entry>>,
    /// How long the load lease has left (zero when there is none).
    pub(crate) lease_left: Duration,
    /// Whether the lease's holder marked it settling: it is confirming its outcome with
    /// the store.
    pub(crate) settling: bool,
    /// The token of the lease's holder (without the settling mark), if the lease is held
    /// (Redis only): the one whose absent result a waiter may take (see [`Woken`]).
    pub(crate) holder: Option<String>,
}

impl Store {
    /// Whether other processes share this store (so loads coordinate through leases).
    pub(crate) fn shared(&self) -> bool {
        match self {
            Store::Memory(_) => false,
            #[cfg(feature = "redis")]
            Store::Redis(_) => true,
        }
    }

    /// Takes the lock on `resource` for `lease`: its fencing token, or `None` when held.
    pub(crate) async fn acquire_lock(
        &self,
        resource: &str,
        token: &str,
        lease: Duration,
    ) -> Result<Option<u64>> {
        match self {
            Store::Memory(store) => Ok(store.locks().try_acquire(resource, token, lease)),
            #[cfg(feature = "redis")]
            Store::Redis(redis) => redis.acquire_lock(resource, token, lease).await,
        }
    }

    /// Takes the load lease of `key` (always granted on a store no other process shares).
    pub(crate) async fn try_load_lease(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool> {
        match self {
            Store::Memory(_) => Ok(true),
            #[cfg(feature = "redis")]
            Store::Redis(redis) => redis.try_load_lease(key, token, lease).await,
        }
    }

    /// Marks the load lease of `key` that `token` holds as *settling*: its holder is about
    /// to confirm its outcome with the store. The lease keeps its time to live, and
    /// [`extend_lease`](Self::extend_lease) and [`release_lease`](Self::release_lease) still
    /// take the same token. Returns whether `token` held the lease (always on a store no
    /// other process shares).
    pub(crate) async fn settle_load_lease(&self, key: &str, token: &str) -> Result<bool> {
        match self {
            Store::Memory(_) => Ok(true),
            #[cfg(feature = "redis")]
            Store::Redis(redis) => redis.settle_load_lease(key, token).await,
        }
    }

    /// Extends a lease this token holds (settling or not); `false` when it was lost.
    pub(crate) async fn extend_lease(
        &self,
        kind: LeaseKind,
        name: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool> {
        match self {
            Store::Memory(store) => {
                Ok(kind == LeaseKind::Load || store.locks().extend(name, token, lease))
            }
            #[cfg(feature = "redis")]
            Store::Redis(redis) => redis.extend_lease(kind, name, token, lease).await,
        }
    }

    /// Releases a lease this token holds (settling or not) and wakes its waiters with
    /// `signal`; `false` when it was no longer held.
    pub(crate) async fn release_lease(
        &self,
        kind: LeaseKind,
        name: &str,
        token: &str,
        signal: Signal,
    ) -> Result<bool> {
        match self {
            Store::Memory(store) => {
                Ok(kind == LeaseKind::Load || store.locks().release(name, token))
            }
            #[cfg(feature = "redis")]
            Store::Redis(redis) => redis.release_lease(kind, name, token, signal).await,
        }
    }

    /// How long the current holder's lease has left, if any.
    pub(crate) async fn lease_left(&self, kind: LeaseKind, name: &str) -> Result<Option<Duration>> {
        match self {
            Store::Memory(store) => Ok(match kind {
                LeaseKind::Lock => store.locks().remaining(name),
                LeaseKind::Load => None,
            }),
            #[cfg(feature = "redis")]
            Store::Redis(redis) => redis.lease_left(kind, name).await,
        }
    }

    /// A waiter's look: the value under `key`, how long its load lease has left and whether
    /// the lease is settling, in one round trip.
    pub(crate) async fn peek_with_lease(&self, key: &str) -> Result<Peek> {
        match self {
            Store::Memory(store) => Ok(Peek {
                entry: store.get(key),
                lease_left: Duration::ZERO,
                settling: false,
                holder: None,
            }),
            #[cfg(feature = "redis")]
            Store::Redis(redis) => redis.peek_with_lease(key).await,
        }
    }

    /// Registers for the release of a lease. Register *before* looking again, so a release
    /// in between is not missed.
    pub(crate) fn watch(&self, kind: LeaseKind, name: &str) -> Wakeup<'_> {
        match self {
            Store::Memory(store) => Wakeup::Local(store.locks().watch()),
            #[cfg(feature = "redis")]
            Store::Redis(redis) => redis.watch(kind, name),
        }
    }

    /// Waits (at most `timeout`) for the wake-up subscription to be live.
    pub(crate) async fn wait_subscribed(&self, timeout: Duration) {
        match self {
            Store::Memory(_) => {}
            #[cfg(feature = "redis")]
            Store::Redis(redis) => {
                redis.notifier().wait_subscribed(timeout).await;
            }
        }
    }
}
