//! Lease locks: `SET key token NX PX lease`, renewed and released only by their holder
//! (compare-and-set scripts), with a fencing token per resource. Used by `#[cached(lock)]`
//! and offered directly as [`Cache::lock`] / [`Cache::try_lock`].
//! See [`LockGuard`] for why every acquisition carries a fencing token.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::key::validate_key;
use crate::notify::{Signal, RELEASED};
use crate::store::Store;

pub(crate) const LOCK_NAMESPACE: &str = "#lock:";
const FENCE_NAMESPACE: &str = "#fence:";

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
/// Deletes the lock if still held by this token, and publishes `ARGV[3]` on `ARGV[2]` to
/// wake waiters (`1`: look again, `0`: the holder failed).
pub(crate) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0";

/// A token no other holder uses: process id, time and a counter.
pub(crate) fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}-{nanos:x}-{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Lock and fence keys share a hash tag, so the scripts stay in one slot on Redis Cluster.
pub(crate) fn lock_keys(prefix: &str, resource: &str) -> (String, String) {
    (
        format!("{prefix}{LOCK_NAMESPACE}{{{resource}}}"),
        format!("{prefix}{FENCE_NAMESPACE}{{{resource}}}"),
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// In-process locks for the memory store.
#[derive(Default)]
pub(crate) struct LocalLocks {
    held: Mutex<HashMap<String, (String, Instant)>>,
    fences: Mutex<HashMap<String, u64>>,
    released: tokio::sync::Notify,
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

impl Cache {
    /// Tries once to take the lease lock on `resource` for `lease`.
    ///
    /// Returns `None` when another holder has it. On Redis the lock works across processes;
    /// on the memory store, within this process.
    ///
    /// ```
    /// # async fn run() -> Result<(), cache_runtime::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_runtime::Cache::memory();
    /// if let Some(guard) = cache.try_lock("payment:order-7", Duration::from_secs(30)).await? {
    ///     // charge the card, passing guard.fencing_token() to the payment store
    ///     assert!(guard.fencing_token() >= 1);
    ///     guard.release().await?;
    /// }
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a bad resource name, [`Error::InvalidTtl`] for a lease under
    /// one millisecond, [`Error::Backend`] when Redis fails.
    pub async fn try_lock(&self, resource: &str, lease: Duration) -> Result<Option<LockGuard>> {
        validate_key(resource)?;
        crate::cache::validate_ttl(lease)?;
        let token = new_token();
        let fence = match &self.inner.store {
            Store::Memory(_) => self.inner.local_locks.try_acquire(resource, &token, lease),
            Store::Redis(redis) => {
                let (lock_key, fence_key) = lock_keys(&self.inner.prefix, resource);
                let fence: u64 = redis
                    .script(
                        ACQUIRE,
                        &[&lock_key, &fence_key],
                        &[token.as_str(), &millis(lease).to_string()],
                    )
                    .await?;
                (fence > 0).then_some(fence)
            }
        };
        Ok(fence.map(|fence| LockGuard {
            cache: self.clone(),
            resource: resource.to_owned(),
            token,
            fence,
            released: false,
        }))
    }

    /// Takes the lease lock on `resource`, waiting at most `wait` for its holder to release
    /// it (or for the holder's lease to run out). Waiters are woken by the release, not by
    /// polling.
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] when the lock was not free within `wait`; otherwise as
    /// [`try_lock`](Self::try_lock).
    pub async fn lock(&self, resource: &str, lease: Duration, wait: Duration) -> Result<LockGuard> {
        let deadline = Instant::now() + wait;
        let local_release = &self.inner.local_locks.released;
        loop {
            // Register for the release before trying, so a release in between wakes us.
            let woken = self.released_signal(resource);
            let notified = local_release.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(guard) = self.try_lock(resource, lease).await? {
                return Ok(guard);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::LockTimeout { resource: resource.to_owned(), waited: wait });
            }
            let lease_left = self.lease_remaining(resource).await?.unwrap_or(Duration::ZERO);
            // Wake on the release, or when the holder's lease runs out (it may have died).
            let until = deadline.min(now + lease_left + Duration::from_millis(1));
            match woken {
                Woken::Message(receiver) => {
                    let _ = tokio::time::timeout_at(until.into(), receiver).await;
                }
                Woken::Local => {
                    let _ = tokio::time::timeout_at(until.into(), notified).await;
                }
                // First use: the subscription is not live yet. Wait for it (not for the
                // lease), then register again and look again.
                Woken::NotSubscribed => {
                    if let Store::Redis(redis) = &self.inner.store {
                        redis.notifier().wait_subscribed(until - now).await;
                    }
                }
            }
        }
    }

    fn released_signal(&self, resource: &str) -> Woken {
        match &self.inner.store {
            Store::Memory(_) => Woken::Local,
            Store::Redis(redis) => {
                let channel = redis.notifier().channel(RELEASED, resource);
                match redis.notifier().register(&channel) {
                    (receiver, true) => Woken::Message(receiver),
                    (_, false) => Woken::NotSubscribed,
                }
            }
        }
    }

    async fn lease_remaining(&self, resource: &str) -> Result<Option<Duration>> {
        match &self.inner.store {
            Store::Memory(_) => Ok(self.inner.local_locks.remaining(resource)),
            Store::Redis(redis) => {
                let (lock_key, _) = lock_keys(&self.inner.prefix, resource);
                redis.pttl(&lock_key).await
            }
        }
    }

    async fn extend_lock(&self, resource: &str, token: &str, lease: Duration) -> Result<bool> {
        match &self.inner.store {
            Store::Memory(_) => Ok(self.inner.local_locks.extend(resource, token, lease)),
            Store::Redis(redis) => {
                let (lock_key, _) = lock_keys(&self.inner.prefix, resource);
                let extended: u64 = redis
                    .script(EXTEND, &[&lock_key], &[token, &millis(lease).to_string()])
                    .await?;
                Ok(extended == 1)
            }
        }
    }

    async fn release_lock(&self, resource: &str, token: &str) -> Result<bool> {
        match &self.inner.store {
            Store::Memory(_) => Ok(self.inner.local_locks.release(resource, token)),
            Store::Redis(redis) => {
                let (lock_key, _) = lock_keys(&self.inner.prefix, resource);
                let channel = redis.notifier().channel(RELEASED, resource);
                let released: u64 =
                    redis.script(RELEASE, &[&lock_key], &[token, &channel, "1"]).await?;
                Ok(released == 1)
            }
        }
    }
}

enum Woken {
    Message(tokio::sync::oneshot::Receiver<Signal>),
    Local,
    NotSubscribed,
}

/// A held lease lock. Release it with [`release`](Self::release); dropping it releases it
/// in the background (when a Tokio runtime is running) if it is still held.
///
/// # Why fencing tokens
///
/// A lease can expire while its holder still works: a GC pause, a stalled VM, a slow
/// network (Martin Kleppmann, "How to do distributed locking", 2016). The next holder then
/// runs concurrently with the old one, and no lock algorithm alone prevents that. Each
/// acquisition therefore gets a number, strictly greater than every earlier one for the same
/// resource ([`LockGuard::fencing_token`]). Pass it to the resource you protect (a database
/// row's `last_token` column, a storage API) and have it reject writes carrying a token
/// lower than one it has already seen: a stale holder's late write is refused.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    cache: Cache,
    resource: String,
    token: String,
    fence: u64,
    released: bool,
}

impl LockGuard {
    /// The fencing token of this acquisition: greater than every earlier acquisition's for
    /// the same resource. See [why fencing tokens](LockGuard#why-fencing-tokens).
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// The locked resource's name.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Extends the lease to `lease` from now. Returns `false` when the lock was lost (the
    /// lease ran out and someone else may hold it): stop working on the resource.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] for a lease under one millisecond, [`Error::Backend`] when
    /// Redis fails.
    pub async fn extend(&self, lease: Duration) -> Result<bool> {
        crate::cache::validate_ttl(lease)?;
        self.cache.extend_lock(&self.resource, &self.token, lease).await
    }

    /// Releases the lock if this guard still holds it; returns whether it did. A lock whose
    /// lease ran out and was taken by someone else is left alone.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when Redis fails (the lease then runs out by itself).
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        self.cache.release_lock(&self.resource, &self.token).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (cache, resource, token) = (
            self.cache.clone(),
            std::mem::take(&mut self.resource),
            std::mem::take(&mut self.token),
        );
        // Without a runtime the lease runs out by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = cache.release_lock(&resource, &token).await;
            });
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("resource", &self.resource)
            .field("fencing_token", &self.fence)
            .finish()
    }
}
