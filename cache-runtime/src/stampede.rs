//! Stampede protection across processes (`#[cached(..., lock)]`).
//!
//! Within a process, single flight ([`crate::flight`]) already lets one caller per key
//! load. With `lock`, that local leader also coordinates with the other processes sharing
//! the Redis server:
//!
//! 1. It tries to take a lease, `SET <prefix>__load:{key} <token> NX PX <lease>`.
//! 2. The holder looks at the cache once more (a value may have landed meanwhile), runs the
//!    body while renewing the lease every third of it, stores the value, then releases the
//!    lease with a compare-and-delete script that also publishes on
//!    `<prefix>__filled:<key>` (`1`: stored, `0`: failed).
//! 3. Everyone else subscribes (one pub/sub connection per cache), looks at the value and
//!    the lease's remaining time in one round trip, and sleeps until the message or the end
//!    of the lease, whichever comes first. On `1` it reads the value; on `0` or a lapsed
//!    lease (its holder died) it tries to take the lease itself.
//! 4. Nobody waits longer than the builder's `lock_wait`: past it, or when Redis fails, the
//!    caller runs its own body. A hit never touches any of this.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::Cache;
use crate::cache::Policy;
use crate::codec::{Cloner, Entry};
use crate::error::ErrorKind;
use crate::flight::{Landed, Leader};
use crate::lock::{new_token, RELEASE};
use crate::notify::{Signal, FILLED};
use crate::shape::{Outcome, Shape};
use crate::stats::Counters;
use crate::store::redis::RedisStore;
use crate::store::Store;

/// Where the lease of a load lives: a hash tag keeps it in the key's own slot family.
fn load_lock_key(prefix: &str, key: &str) -> String {
    format!("{prefix}__load:{{{key}}}")
}

impl Cache {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn load_locked<S, R, Fut>(
        &self,
        redis: &RedisStore,
        counters: &Counters,
        key: &str,
        ttl: Duration,
        cloner: Cloner<S::Value>,
        load: impl FnOnce() -> Fut,
        leader: &mut Leader<'_>,
        stale: Option<&Arc<Entry>>,
    ) -> R
    where
        S: Shape<R>,
        S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
        Fut: Future<Output = R>,
    {
        let settings = &self.inner.settings;
        let deadline = Instant::now() + settings.lock_wait;
        let lock_key = load_lock_key(&self.inner.prefix, key);
        let channel = redis.notifier().channel(FILLED, key);
        let token = new_token();
        // The first attempt follows a miss, so it tries the lease before looking again.
        let mut look_first = false;
        loop {
            let (woken, live) = redis.notifier().register(&channel);
            if !look_first {
                match redis.try_lease(&lock_key, &token, settings.lock_lease).await {
                    Ok(true) => {
                        return self
                            .load_holding::<S, R, Fut>(
                                redis, counters, key, ttl, cloner, load, leader, &lock_key, &token,
                                &channel,
                            )
                            .await;
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(key, %error, "could not take the load lock; loading without it");
                        counters.error(error.kind());
                        break;
                    }
                }
            }
            look_first = false;
            let lease_left = match redis.get_and_lease(key, &lock_key).await {
                Ok((Some(entry), _)) => match entry.take(cloner) {
                    Ok(value) => {
                        leader.publish(Landed::Value(entry));
                        counters.coalesced();
                        return S::from_value(value);
                    }
                    Err(_) => {
                        counters.error(ErrorKind::Decode);
                        break;
                    }
                },
                Ok((None, lease_left)) => lease_left,
                Err(error) => {
                    counters.error(error.kind());
                    break;
                }
            };
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(key, "waited lock_wait for another process's load; loading here");
                break;
            }
            if lease_left.is_zero() {
                continue; // released or lapsed: try to take it
            }
            let until = deadline.min(now + lease_left + Duration::from_millis(2));
            if !live {
                // First use of the subscription: wait for it, then look again.
                redis.notifier().wait_subscribed(until - now).await;
                look_first = true;
                continue;
            }
            match tokio::time::timeout_at(until.into(), woken).await {
                // The value landed: read it before contending.
                Ok(Ok(Signal::Ready)) => look_first = true,
                // The holder's body failed: a stale value answers without another run.
                Ok(Ok(Signal::Failed)) => {
                    if let Some(value) = stale.and_then(|entry| entry.take(cloner).ok()) {
                        leader.publish(Landed::Failed);
                        counters.stale();
                        return S::from_value(value);
                    }
                }
                _ => {}
            }
        }
        // Redis failing, or waited too long: load without cross-process coordination.
        self.load_leading::<S, R, Fut>(counters, key, ttl, cloner, load, leader).await
    }

    /// Holding the lease: look again, load while renewing, store, release and wake waiters.
    #[allow(clippy::too_many_arguments)]
    async fn load_holding<S, R, Fut>(
        &self,
        redis: &RedisStore,
        counters: &Counters,
        key: &str,
        ttl: Duration,
        cloner: Cloner<S::Value>,
        load: impl FnOnce() -> Fut,
        leader: &mut Leader<'_>,
        lock_key: &str,
        token: &str,
        channel: &str,
    ) -> R
    where
        S: Shape<R>,
        S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
        Fut: Future<Output = R>,
    {
        let mut held = HeldLease {
            cache: self.clone(),
            lock_key: lock_key.to_owned(),
            token: token.to_owned(),
            channel: channel.to_owned(),
            done: false,
        };
        if let Ok(Some(entry)) = redis.get(key).await {
            if let Ok(value) = entry.take(cloner) {
                leader.publish(Landed::Value(entry));
                held.release(redis, true).await;
                counters.coalesced();
                return S::from_value(value);
            }
        }
        let lease = self.inner.settings.lock_lease;
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                let renewed: Result<u64, _> = redis
                    .script(RENEW, &[lock_key], &[token, &lease.as_millis().to_string()])
                    .await;
                if !matches!(renewed, Ok(1)) {
                    tracing::warn!(key, "lost the load lock while loading (lease ran out)");
                    std::future::pending::<()>().await;
                }
            }
        };
        let started = Instant::now();
        let body = load();
        let returned = tokio::select! {
            biased;
            returned = body => returned,
            () = renew => unreachable!("renewal never ends"),
        };
        counters.load(started.elapsed());
        let stored =
            self.store_outcome::<S, R>(counters, key, ttl, cloner, &returned, leader).await;
        held.release(redis, stored).await;
        returned
    }
}

impl Cache {
    /// Early refresh: a hit on a value older than `refresh` recomputes it, once per process
    /// (a flight) and, on Redis, once across processes (a lease); every other caller, and
    /// this one if the body fails, gets the current value without waiting.
    pub(crate) async fn refresh_early<S, R, Fut>(
        &self,
        counters: &Counters,
        key: &str,
        policy: &Policy,
        cloner: Cloner<S::Value>,
        load: impl FnOnce() -> Fut,
        current: S::Value,
    ) -> R
    where
        S: Shape<R>,
        S::Value: Serialize + DeserializeOwned + Send + Sync + 'static,
        Fut: Future<Output = R>,
    {
        let Some(mut leader) = self.inner.flights.try_lead(key) else {
            return S::from_value(current);
        };
        let mut held = None;
        if let Store::Redis(redis) = &self.inner.store {
            let lock_key = load_lock_key(&self.inner.prefix, key);
            let token = new_token();
            if !matches!(
                redis.try_lease(&lock_key, &token, self.inner.settings.lock_lease).await,
                Ok(true)
            ) {
                return S::from_value(current); // another process refreshes it
            }
            let channel = redis.notifier().channel(FILLED, key);
            held = Some((
                redis,
                HeldLease { cache: self.clone(), lock_key, token, channel, done: false },
            ));
        }
        counters.refresh();
        let started = Instant::now();
        let returned = load().await;
        counters.load(started.elapsed());
        let stored = self
            .store_outcome::<S, R>(counters, key, policy.lifetime(), cloner, &returned, &mut leader)
            .await;
        if let Some((redis, mut lease)) = held {
            lease.release(redis, stored).await;
        }
        match S::outcome(&returned) {
            Outcome::Failed => S::from_value(current),
            _ => returned,
        }
    }
}

/// Extends the lease if still held by this token.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// The lease of a running load. If the load is cancelled or panics, `Drop` releases the
/// lease in the background and tells waiters it failed, so they need not wait for it to
/// lapse.
struct HeldLease {
    cache: Cache,
    lock_key: String,
    token: String,
    channel: String,
    done: bool,
}

impl HeldLease {
    async fn release(&mut self, redis: &RedisStore, stored: bool) {
        self.done = true;
        let outcome = if stored { "1" } else { "0" };
        let released: Result<u64, _> =
            redis.script(RELEASE, &[&self.lock_key], &[&self.token, &self.channel, outcome]).await;
        if let Err(error) = released {
            tracing::warn!(lock = %self.lock_key, %error, "could not release the load lock; it lapses after its lease");
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache = self.cache.clone();
        let (lock_key, token, channel) = (
            std::mem::take(&mut self.lock_key),
            std::mem::take(&mut self.token),
            std::mem::take(&mut self.channel),
        );
        runtime.spawn(async move {
            if let crate::store::Store::Redis(redis) = &cache.inner.store {
                let _: Result<u64, _> =
                    redis.script(RELEASE, &[&lock_key], &[&token, &channel, "0"]).await;
            }
        });
    }
}
