//! Lease locks: `SET key token NX PX lease`, renewed and released only by their holder
//! (compare-and-set scripts), with a fencing token per resource. Used by `#[cached(lock)]`
//! and offered directly as [`Cache::lock`] / [`Cache::try_lock`].
//! See [`LockGuard`] for why every acquisition carries a fencing token.

use std::fmt;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::core::CacheCore;
use crate::error::{Error, Result};
use crate::notify::Signal;
use crate::policy::validate_ttl;
use crate::store::lease::{new_token, LeaseKind};

/// [`Cache::try_lock`](crate::Cache::try_lock) on valid input.
pub(crate) async fn try_lock(
    core: &Arc<CacheCore>,
    resource: &str,
    lease: Duration,
) -> Result<Option<LockGuard>> {
    core.check_key(resource)?;
    validate_ttl(lease)?;
    let token = new_token();
    let fence = core.store().acquire_lock(resource, &token, lease).await?;
    Ok(fence.map(|fence| LockGuard {
        core: Arc::clone(core),
        resource: resource.to_owned(),
        token,
        fence,
        released: false,
    }))
}

/// [`Cache::lock`](crate::Cache::lock): tries, then waits for a release or the lease's end.
pub(crate) async fn lock(
    core: &Arc<CacheCore>,
    resource: &str,
    lease: Duration,
    wait: Duration,
) -> Result<LockGuard> {
    let deadline = Instant::now() + wait;
    let store = core.store();
    loop {
        // Register for the release before trying, so a release in between wakes us.
        let woken = store.watch(LeaseKind::Lock, resource);
        if let Some(guard) = try_lock(core, resource, lease).await? {
            return Ok(guard);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::LockTimeout { resource: resource.to_owned(), waited: wait });
        }
        let lease_left =
            store.lease_left(LeaseKind::Lock, resource).await?.unwrap_or(Duration::ZERO);
        // Wake on the release, or when the holder's lease runs out (it may have died).
        let until = deadline.min(now + lease_left + Duration::from_millis(1));
        match woken {
            // First use: the subscription is not live yet. Wait for it (not for the
            // lease), then register again and look again.
            crate::store::lease::Wakeup::NotSubscribed => {
                store.wait_subscribed(until - now).await;
            }
            woken => {
                woken.wait(until).await;
            }
        }
    }
}

async fn release_lock(core: &CacheCore, resource: &str, token: &str) -> Result<bool> {
    core.store().release_lease(LeaseKind::Lock, resource, token, Signal::Ready).await
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
    core: Arc<CacheCore>,
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
        validate_ttl(lease)?;
        let store = self.core.store();
        store.extend_lease(LeaseKind::Lock, &self.resource, &self.token, lease).await
    }

    /// Releases the lock if this guard still holds it; returns whether it did. A lock whose
    /// lease ran out and was taken by someone else is left alone.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when Redis fails (the lease then runs out by itself).
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        release_lock(&self.core, &self.resource, &self.token).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (core, resource, token) = (
            Arc::clone(&self.core),
            std::mem::take(&mut self.resource),
            std::mem::take(&mut self.token),
        );
        // Without a runtime the lease runs out by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = release_lock(&core, &resource, &token).await;
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
