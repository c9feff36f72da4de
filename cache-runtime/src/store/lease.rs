//! Leases and wake-ups: the coordination between processes that the store offers, behind
//! one interface both stores implement, so that callers never ask which store they have.
//!
//! - A *lock* ([`LeaseKind::Lock`]) is [`Cache::lock`](crate::Cache::lock)'s lease, with a
//!   fencing token per acquisition; its release wakes waiters on `#released:<resource>`.
//! - A *load lease* ([`LeaseKind::Load`]) is what `#[cached(lock)]` takes so that one
//!   process loads a key; its release says on `#filled:<key>` whether waiters should look
//!   again (`1`) or the body failed (`0`).
//!
//! On Redis a lease is `SET <prefix>#lock:{name} token NX PX lease` (or `#load:`), renewed
//! and released only by its holder through compare-and-set scripts; the fencing counter
//! `#fence:{name}` shares the lock's hash tag so the scripts stay in one slot on a cluster.
//! On the memory store, locks are in-process ([`LocalLocks`]) and load leases are not
//! needed: single flight already lets one caller load.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use super::redis::{millis, RedisStore};
use super::Store;
use crate::codec::Entry;
use crate::error::Result;
use crate::notify::{Signal, FILLED, RELEASED};

/// Sets the lock if free and returns the next fencing token, else 0.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0";

/// Extends the lease if still held by this token.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Deletes the lease if still held by this token, and publishes `ARGV[3]` on `ARGV[2]` to
/// wake waiters (`1`: look again, `0`: the holder failed).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0";

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

impl LeaseKind {
    fn namespace(self) -> &'static str {
        match self {
            LeaseKind::Lock => "lock:",
            LeaseKind::Load => "load:",
        }
    }

    fn channel_namespace(self) -> &'static str {
        match self {
            LeaseKind::Lock => RELEASED,
            LeaseKind::Load => FILLED,
        }
    }
}

/// How a waiter is woken.
pub(crate) enum Wakeup<'a> {
    /// A pub/sub message from the holder's release.
    Message(oneshot::Receiver<Signal>),
    /// An in-process release (memory store), already registered.
    Local(Pin<Box<tokio::sync::futures::Notified<'a>>>),
    /// The pub/sub subscription is not live yet: wait for it, then look again.
    NotSubscribed,
}

impl<'a> Wakeup<'a> {
    /// Waits for the wake-up, at most until `until`; returns the signal if one came.
    pub(crate) async fn wait(self, until: Instant) -> Option<Signal> {
        match self {
            Wakeup::Message(receiver) => {
                tokio::time::timeout_at(until.into(), receiver).await.ok().and_then(Result::ok)
            }
            Wakeup::Local(notified) => {
                tokio::time::timeout_at(until.into(), notified).await.ok().map(|()| Signal::Ready)
            }
            Wakeup::NotSubscribed => None,
        }
    }
}

impl Store {
    /// Whether other processes share this store (so loads coordinate through leases).
    pub(crate) fn shared(&self) -> bool {
        matches!(self, Store::Redis(_))
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
            Store::Redis(redis) => {
                let (lock_key, fence_key) = (
                    redis.lease_key(LeaseKind::Lock, resource),
                    redis.reserved_key("fence:", &format!("{{{resource}}}")),
                );
                let fence: u64 = redis
                    .script(ACQUIRE, &[&lock_key, &fence_key], &[token, &millis(lease).to_string()])
                    .await?;
                Ok((fence > 0).then_some(fence))
            }
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
            Store::Redis(redis) => {
                redis.try_lease(&redis.lease_key(LeaseKind::Load, key), token, lease).await
            }
        }
    }

    /// Extends a lease this token holds; `false` when it was lost.
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
            Store::Redis(redis) => {
                let extended: u64 = redis
                    .script(
                        EXTEND,
                        &[&redis.lease_key(kind, name)],
                        &[token, &millis(lease).to_string()],
                    )
                    .await?;
                Ok(extended == 1)
            }
        }
    }

    /// Releases a lease this token holds and wakes its waiters with `signal`; `false` when
    /// it was no longer held.
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
            Store::Redis(redis) => {
                let channel = redis.channel(kind, name);
                let payload = match signal {
                    Signal::Ready => "1",
                    Signal::Failed => "0",
                    Signal::Absent => "2",
                };
                let released: u64 = redis
                    .script(RELEASE, &[&redis.lease_key(kind, name)], &[token, &channel, payload])
                    .await?;
                Ok(released == 1)
            }
        }
    }

    /// How long the current holder's lease has left, if any.
    pub(crate) async fn lease_left(&self, kind: LeaseKind, name: &str) -> Result<Option<Duration>> {
        match self {
            Store::Memory(store) => Ok(match kind {
                LeaseKind::Lock => store.locks().remaining(name),
                LeaseKind::Load => None,
            }),
            Store::Redis(redis) => redis.pttl(&redis.lease_key(kind, name)).await,
        }
    }

    /// A waiter's look: the value under `key` and how long its load lease has left, in one
    /// round trip.
    pub(crate) async fn peek_with_lease(
        &self,
        key: &str,
    ) -> Result<(Option<Arc<Entry>>, Duration)> {
        match self {
            Store::Memory(store) => Ok((store.get(key).await, Duration::ZERO)),
            Store::Redis(redis) => {
                redis.get_and_lease(key, &redis.lease_key(LeaseKind::Load, key)).await
            }
        }
    }

    /// Registers for the release of a lease. Register *before* looking again, so a release
    /// in between is not missed.
    pub(crate) fn watch(&self, kind: LeaseKind, name: &str) -> Wakeup<'_> {
        match self {
            Store::Memory(store) => {
                let mut notified = Box::pin(store.locks().released.notified());
                notified.as_mut().enable();
                Wakeup::Local(notified)
            }
            Store::Redis(redis) => match redis.notifier().register(&redis.channel(kind, name)) {
                (receiver, true) => Wakeup::Message(receiver),
                (_, false) => Wakeup::NotSubscribed,
            },
        }
    }

    /// Waits (at most `timeout`) for the wake-up subscription to be live.
    pub(crate) async fn wait_subscribed(&self, timeout: Duration) {
        if let Store::Redis(redis) = self {
            redis.notifier().wait_subscribed(timeout).await;
        }
    }
}

impl RedisStore {
    /// `<prefix>#lock:{name}` or `<prefix>#load:{name}`: the hash tag keeps a lock and its
    /// fencing counter in one slot.
    fn lease_key(&self, kind: LeaseKind, name: &str) -> String {
        self.reserved_key(kind.namespace(), &format!("{{{name}}}"))
    }

    /// The wake-up channel of a lease.
    fn channel(&self, kind: LeaseKind, name: &str) -> String {
        format!("{}{}{name}", self.prefix(), kind.channel_namespace())
    }
}

/// In-process locks for the memory store.
#[derive(Default)]
pub(crate) struct LocalLocks {
    held: Mutex<HashMap<String, (String, Instant)>>,
    fences: Mutex<HashMap<String, u64>>,
    released: Notify,
}

impl LocalLocks {
    fn try_acquire(&self, resource: &str, token: &str, lease: Duration) -> Option<u64> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if held.get(resource).is_some_and(|(_, until)| *until > now) {
            return None;
        }
        held.insert(resource.to_owned(), (token.to_owned(), now + lease));
        let mut fences = self.fences.lock().unwrap_or_else(|e| e.into_inner());
        let fence = fences.entry(resource.to_owned()).or_default();
        *fence += 1;
        Some(*fence)
    }

    fn extend(&self, resource: &str, token: &str, lease: Duration) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get_mut(resource) {
            Some((owner, until)) if owner == token && *until > Instant::now() => {
                *until = Instant::now() + lease;
                true
            }
            _ => false,
        }
    }

    fn release(&self, resource: &str, token: &str) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let owned = held
            .get(resource)
            .is_some_and(|(owner, until)| owner == token && *until > Instant::now());
        if owned {
            held.remove(resource);
            self.released.notify_waiters();
        }
        owned
    }

    fn remaining(&self, resource: &str) -> Option<Duration> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(resource).and_then(|(_, until)| until.checked_duration_since(Instant::now()))
    }
}
