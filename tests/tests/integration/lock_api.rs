//! The lease-lock API (`try_lock`, `lock`, `LockGuard::{extend, release}`, release on drop)
//! over Redis and over the memory store: mutual exclusion, fencing tokens that only grow
//! (also across two `Cache` handles on one server, i.e. two processes), a stale holder that
//! cannot release its successor's lock, waiters woken by the release rather than by the end
//! of the lease, timeouts, and bad input.
//!
//! Each scenario is written once against a `Cache` and run on both stores.

use std::time::{Duration, Instant};

use cache_runtime::{Cache, Error};
use cache_tests::RedisServer;

use crate::{eventually, redis_cache, Raw};

/// A lease that never runs out during a test.
const LONG: Duration = Duration::from_secs(10);

/// How soon after a release a waiting `lock()` must return: far less than any lease here.
const PROMPT: Duration = Duration::from_millis(100);

async fn held_by_someone(cache: &Cache, resource: &str) -> bool {
    cache.try_lock(resource, LONG).await.unwrap().is_none()
}

/// A second `try_lock` is refused while the first holds; `release` frees it; every new
/// acquisition's fencing token is greater than the last. `caches` take turns, so with two
/// handles on one Redis this is two processes sharing the lock.
async fn exclusion_release_and_fencing(caches: &[&Cache]) {
    let first = caches[0].try_lock("order:7", LONG).await.unwrap().expect("a free lock is taken");
    assert_eq!(first.resource(), "order:7");
    assert!(first.fencing_token() >= 1);
    for cache in caches {
        assert!(held_by_someone(cache, "order:7").await, "held: refused");
    }
    let other = caches[0]
        .try_lock("order:8", LONG)
        .await
        .unwrap()
        .expect("another resource is independent");

    let mut last = first.fencing_token();
    assert!(first.release().await.unwrap(), "the holder releases");
    for round in 0..6 {
        let cache = caches[round % caches.len()];
        let guard = cache
            .try_lock("order:7", LONG)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: free again after the release"));
        assert!(
            guard.fencing_token() > last,
            "round {round}: token {} after {last}",
            guard.fencing_token()
        );
        last = guard.fencing_token();
        for cache in caches {
            assert!(held_by_someone(cache, "order:7").await, "round {round}");
        }
        assert!(guard.release().await.unwrap(), "round {round}");
    }
    assert!(other.release().await.unwrap());
}

/// A holder whose lease ran out, and whose lock was taken by another, can neither extend nor
/// release it: the new holder keeps its lock.
async fn a_stale_guard_cannot_touch_the_next_holders_lock(a: &Cache, b: &Cache) {
    let stale = a.try_lock("job:1", Duration::from_millis(100)).await.unwrap().expect("free");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let next = b.try_lock("job:1", LONG).await.unwrap().expect("free once the lease ran out");
    assert!(next.fencing_token() > stale.fencing_token());

    assert!(!stale.extend(LONG).await.unwrap(), "the lock was lost");
    assert!(!stale.release().await.unwrap(), "not the holder any more");
    assert!(held_by_someone(a, "job:1").await, "the new holder keeps it");
    assert!(held_by_someone(b, "job:1").await, "the new holder keeps it");
    assert!(next.release().await.unwrap());
}

/// `extend` keeps the lock held past its original lease.
async fn extend_keeps_the_lock_past_its_lease(cache: &Cache) {
    let guard =
        cache.try_lock("report:1", Duration::from_millis(200)).await.unwrap().expect("free");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(guard.extend(Duration::from_secs(2)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await; // 350 ms after taking a 200 ms lease
    assert!(held_by_someone(cache, "report:1").await, "still held past the original lease");
    assert!(guard.extend(Duration::from_secs(2)).await.unwrap());
    assert!(guard.release().await.unwrap());
    assert!(!held_by_someone(cache, "report:1").await);
}

/// `lock()` waits while the lock is held and returns right after the holder releases it.
/// Returns how long after the release it returned.
async fn lock_waits_for_the_release(holder: &Cache, waiter: &Cache, resource: &str) -> Duration {
    let held = holder.try_lock(resource, LONG).await.unwrap().expect("free");
    let token = held.fencing_token();
    let task = {
        let (waiter, resource) = (waiter.clone(), resource.to_owned());
        tokio::spawn(async move {
            let guard = waiter.lock(&resource, LONG, Duration::from_secs(2)).await;
            (Instant::now(), guard)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished(), "lock() waits while the lock is held");
    let released_at = Instant::now();
    assert!(held.release().await.unwrap());
    let (acquired_at, guard) = task.await.unwrap();
    let guard = guard.expect("lock() takes the lock once it is released");
    assert!(guard.fencing_token() > token);
    assert!(guard.release().await.unwrap());
    acquired_at.saturating_duration_since(released_at)
}

/// `lock()` gives up with `LockTimeout` after `wait` when the holder keeps the lock.
async fn lock_times_out_while_the_holder_keeps_it(cache: &Cache) {
    let held = cache.try_lock("invoice:10", LONG).await.unwrap().expect("free");
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = cache.lock("invoice:10", LONG, wait).await;
    let took = started.elapsed();
    match outcome {
        Err(Error::LockTimeout { resource, waited }) => {
            assert_eq!(resource, "invoice:10");
            assert_eq!(waited, wait);
        }
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    assert!(took >= wait && took < wait + Duration::from_millis(500), "gave up after {took:?}");
    assert!(held.release().await.unwrap(), "the holder still holds it");
}

/// A holder that died (its guard leaked, nothing releases it) blocks others only until its
/// lease ends.
async fn a_dead_holders_lease_runs_out(cache: &Cache) {
    let dead = cache.try_lock("job:2", Duration::from_millis(200)).await.unwrap().expect("free");
    let token = dead.fencing_token();
    std::mem::forget(dead);
    let started = Instant::now();
    let guard = cache
        .lock("job:2", LONG, Duration::from_secs(3))
        .await
        .expect("taken over after the lease");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took over after {took:?}");
    assert!(guard.fencing_token() > token);
    assert!(guard.release().await.unwrap());
}

/// Dropping a guard without `release` frees the lock in the background.
async fn a_dropped_guard_is_released(cache: &Cache) {
    {
        let _guard = cache.try_lock("job:3", LONG).await.unwrap().expect("free");
        assert!(held_by_someone(cache, "job:3").await);
    }
    let freed = eventually(Duration::from_secs(2), || {
        let cache = cache.clone();
        async move {
            match cache.try_lock("job:3", LONG).await.unwrap() {
                Some(guard) => guard.release().await.unwrap(),
                None => false,
            }
        }
    })
    .await;
    assert!(freed, "a dropped guard releases its lock");
}

/// Bad input is an error and takes nothing.
async fn bad_input_is_refused(cache: &Cache) {
    for resource in ["", "a b", "line\nbreak"] {
        let refused = cache.try_lock(resource, LONG).await;
        assert!(matches!(refused, Err(Error::InvalidKey { .. })), "{resource:?}: {refused:?}");
        let refused = cache.lock(resource, LONG, Duration::from_millis(10)).await;
        assert!(matches!(refused, Err(Error::InvalidKey { .. })), "{resource:?}: {refused:?}");
    }
    for lease in [Duration::ZERO, Duration::from_micros(10)] {
        let refused = cache.try_lock("job:4", lease).await;
        assert!(matches!(refused, Err(Error::InvalidTtl { .. })), "{lease:?}: {refused:?}");
        let refused = cache.lock("job:4", lease, Duration::from_millis(10)).await;
        assert!(matches!(refused, Err(Error::InvalidTtl { .. })), "{lease:?}: {refused:?}");
    }
    let guard = cache.try_lock("job:4", LONG).await.unwrap().expect("free");
    assert!(matches!(guard.extend(Duration::ZERO).await, Err(Error::InvalidTtl { .. })));
    assert!(held_by_someone(cache, "job:4").await, "a refused extend changes nothing");
    assert!(guard.release().await.unwrap());
}

// ---- memory store ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_try_lock_release_and_fencing() {
    let cache = Cache::memory();
    exclusion_release_and_fencing(&[&cache]).await;
    a_stale_guard_cannot_touch_the_next_holders_lock(&cache, &cache).await;
    bad_input_is_refused(&cache).await;
    // Two memory caches are two separate lock spaces.
    let other = Cache::memory();
    let held = cache.try_lock("order:9", LONG).await.unwrap().unwrap();
    assert!(!held_by_someone(&other, "order:9").await);
    assert!(held.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_extend_drop_and_dead_holder() {
    let cache = Cache::memory();
    extend_keeps_the_lock_past_its_lease(&cache).await;
    a_dropped_guard_is_released(&cache).await;
    a_dead_holders_lease_runs_out(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_lock_is_woken_by_the_release_and_times_out_otherwise() {
    let cache = Cache::memory();
    let after = lock_waits_for_the_release(&cache, &cache, "invoice:9").await;
    assert!(after < PROMPT, "lock() returned {after:?} after the release");
    lock_times_out_while_the_holder_keeps_it(&cache).await;
}

// ---- Redis ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_try_lock_release_and_fencing_across_two_processes() {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let a = redis_cache(&server).await;
    let b = redis_cache(&server).await;
    bad_input_is_refused(&a).await;
    exclusion_release_and_fencing(&[&a]).await;
    exclusion_release_and_fencing(&[&a, &b]).await;
    a_stale_guard_cannot_touch_the_next_holders_lock(&a, &b).await;
    // Nothing is left behind but the fencing counters (locks are released).
    let left: Vec<String> =
        raw.keys().await.into_iter().filter(|k| !k.starts_with("t:__fence:")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_extend_drop_and_dead_holder() {
    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    extend_keeps_the_lock_past_its_lease(&cache).await;
    a_dropped_guard_is_released(&cache).await;
    a_dead_holders_lease_runs_out(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lock_times_out_while_the_holder_keeps_it() {
    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    lock_times_out_while_the_holder_keeps_it(&cache).await;
}

/// The waiter's cache has already used `lock()`, so its pub/sub subscription is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lock_is_woken_by_a_release_in_another_process() {
    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let holder = redis_cache(&server).await;
    let waiter = redis_cache(&server).await;
    let warm_up = waiter.lock("warm-up", LONG, LONG).await.unwrap();
    assert!(warm_up.release().await.unwrap());
    let subscribed = eventually(Duration::from_secs(2), || {
        let raw = raw.clone();
        async move {
            let mut con = raw.0.clone();
            let patterns: u64 = redis::cmd("PUBSUB")
                .arg("NUMPAT")
                .query_async(&mut con)
                .await
                .expect("PUBSUB NUMPAT");
            patterns >= 2
        }
    })
    .await;
    assert!(subscribed, "the waiter's cache subscribes to release notifications");

    let after = lock_waits_for_the_release(&holder, &waiter, "invoice:9").await;
    assert!(after < PROMPT, "lock() returned {after:?} after the release");
}

/// The first `lock()` of a process (a fresh `Cache`): it must be woken by the release too,
/// not sleep until its wait or the holder's lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_first_lock_call_of_a_process_is_woken_by_the_release() {
    let server = RedisServer::start();
    let holder = redis_cache(&server).await;
    let waiter = redis_cache(&server).await;
    let after = lock_waits_for_the_release(&holder, &waiter, "invoice:11").await;
    assert!(
        after < PROMPT,
        "a fresh cache's lock() returned {after:?} after the release (its wait is 2 s, the \
         lease 10 s): it slept instead of being woken"
    );
}

/// Takes `resource` (after four earlier acquisitions, so a fencing counter that restarts is
/// visible), runs `wipe`, and says what the wipe broke. Returns `wipe`'s count of removed keys.
async fn what_a_wipe_breaks<F, Fut>(
    cache: &Cache,
    resource: &str,
    what: &str,
    wipe: F,
    broken: &mut Vec<String>,
) -> u64
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    for _ in 0..4 {
        let guard = cache.try_lock(resource, LONG).await.unwrap().expect("free");
        assert!(guard.release().await.unwrap());
    }
    let held = cache.try_lock(resource, LONG).await.unwrap().expect("free");
    let token = held.fencing_token();
    assert_eq!(token, 5);

    let removed = wipe().await;
    if !held_by_someone(cache, resource).await {
        broken.push(format!("{what} released a lock held by someone else"));
    }
    if !held.release().await.unwrap() {
        broken.push(format!("{what}: the holder no longer holds its lock"));
    }
    let next = cache.try_lock(resource, LONG).await.unwrap().expect("free");
    if next.fencing_token() <= token {
        broken.push(format!(
            "{what}: the fencing token went back from {token} to {}",
            next.fencing_token()
        ));
    }
    assert!(next.release().await.unwrap());
    removed
}

/// Wiping cached data (`clear()`, `invalidate_pattern("*")`, `invalidate` of a runtime key)
/// must not release other holders' locks or reset fencing counters (tokens must never go
/// back), and `clear()` counts the cache's data keys only.
#[tokio::test]
async fn redis_wiping_the_cache_leaves_locks_and_fencing_tokens_alone() {
    let server = RedisServer::start();
    let cache = redis_cache(&server).await;
    let ttl = Duration::from_secs(60);
    let mut broken = Vec::new();

    cache.set("vehicle:1", &1, ttl).await.unwrap();
    let removed = what_a_wipe_breaks(
        &cache,
        "payment:1",
        "clear()",
        || async { cache.clear().await.unwrap() },
        &mut broken,
    )
    .await;
    if removed != 1 {
        broken.push(format!(
            "clear() reported {removed} removed keys for 1 cached entry (it counts lock and \
             fence keys)"
        ));
    }

    cache.set("vehicle:2", &2, ttl).await.unwrap();
    let removed = what_a_wipe_breaks(
        &cache,
        "payment:2",
        "invalidate_pattern(\"*\")",
        || async { cache.invalidate_pattern("*").await.unwrap() },
        &mut broken,
    )
    .await;
    if removed != 1 {
        broken.push(format!(
            "invalidate_pattern(\"*\") reported {removed} removed keys for 1 cached entry"
        ));
    }

    // The lock's own key, named through the programmatic API: refused or left alone.
    what_a_wipe_breaks(
        &cache,
        "payment:3",
        "invalidate(\"#lock:{payment:3}\")",
        || async {
            let _ = cache.invalidate("#lock:{payment:3}").await;
            let _ = cache.invalidate("#fence:{payment:3}").await;
            0
        },
        &mut broken,
    )
    .await;

    assert!(broken.is_empty(), "{broken:#?}");
}
