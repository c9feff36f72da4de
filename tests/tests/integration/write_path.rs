//! A write-through whose value cannot be stored must not leave the old value behind:
//! `#[cache_put]` of a value over `max_value_bytes`, one that does not encode, one that Redis
//! refuses under `OOM` (`maxmemory` with `noeviction`), and a refresh that finds nothing.
//! Each removes the old value instead, in this process and for every process sharing Redis.
//! Also: a time to live that would overflow is an `Error`, not a panic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cache_put, cached, Cache, Error};
use cache_tests::RedisServer;
use serde::{Deserialize, Serialize};

use crate::{Raw, PREFIX};

/// A row whose `body` may be made larger than the cache accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    version: u64,
    body: String,
}

/// The database: the current version of the row, and how many times it was read.
static VERSION: AtomicU64 = AtomicU64::new(0);

#[cached(key = "row:<id>", ttl = "15m", cache = cache)]
async fn read_row(cache: &Cache, id: u64) -> Result<Row, String> {
    let _ = id;
    Ok(Row { version: VERSION.load(SeqCst), body: String::new() })
}

/// Saves a new version and writes it through; `body_bytes` makes the value that large.
#[cache_put(key = "row:<id>", ttl = "15m", cache = cache)]
async fn save_row(cache: &Cache, id: u64, body_bytes: usize) -> Result<Row, String> {
    let _ = id;
    let version = VERSION.fetch_add(1, SeqCst) + 1;
    Ok(Row { version, body: "x".repeat(body_bytes) })
}

/// A map with tuple keys: `serde_json` cannot encode it (map keys must be strings).
#[cached(key = "pairs:<id>", ttl = "15m", cache = cache)]
async fn read_pairs(cache: &Cache, id: u64) -> Result<HashMap<String, u64>, String> {
    let _ = id;
    Ok(HashMap::from([("version".to_owned(), VERSION.load(SeqCst))]))
}

#[cache_put(key = "pairs:<id>", ttl = "15m", cache = cache)]
async fn save_pairs_unencodable(
    cache: &Cache,
    id: u64,
) -> Result<HashMap<(u64, u64), u64>, String> {
    let _ = id;
    Ok(HashMap::from([((1, 2), VERSION.fetch_add(1, SeqCst) + 1)]))
}

async fn too_large_write_through_removes_the_old_value(cache: &Cache, other: &Cache) {
    let before = read_row(cache, 1).await.unwrap();
    assert_eq!(read_row(other, 1).await.unwrap(), before, "both instances hold the old row");
    // Over `max_value_bytes` (4 KiB here): not stored, and the old value must go.
    let saved = save_row(cache, 1, 64 * 1024).await.unwrap();
    assert!(saved.version > before.version);
    let after = read_row(cache, 1).await.unwrap();
    // (`>=`: other tests share the model database's version.)
    assert!(after.version >= saved.version, "this instance read the old row after the write");
    let after = read_row(other, 1).await.unwrap();
    assert!(after.version >= saved.version, "another instance read the old row after the write");
    assert!(cache.stats_of("save_row").errors >= 1, "the refused value is counted");
}

async fn unencodable_write_through_removes_the_old_value(cache: &Cache) {
    let before = read_pairs(cache, 1).await.unwrap();
    save_pairs_unencodable(cache, 1).await.unwrap();
    let after = read_pairs(cache, 1).await.unwrap();
    assert_ne!(after, before, "the old value was served after a write that could not encode");
}

#[tokio::test]
async fn memory_write_through_that_cannot_be_stored_removes_the_old_value() {
    let cache = Cache::builder().max_value_bytes(4096).build().await.unwrap();
    too_large_write_through_removes_the_old_value(&cache, &cache).await;
    unencodable_write_through_removes_the_old_value(&cache).await;
}

#[tokio::test]
async fn redis_write_through_that_cannot_be_stored_removes_the_old_value() {
    let server = RedisServer::start();
    let build = || async {
        Cache::builder()
            .redis(server.url())
            .prefix(PREFIX)
            .max_value_bytes(4096)
            .build()
            .await
            .unwrap()
    };
    let (cache, other) = (build().await, build().await);
    too_large_write_through_removes_the_old_value(&cache, &other).await;
    unencodable_write_through_removes_the_old_value(&cache).await;
}

/// Redis under `OOM` refuses the new value (`SET` and scripts) but still accepts `DEL`: the
/// old value goes, in this instance and in another one, and once memory is free again the
/// writes land as usual.
#[tokio::test]
async fn redis_write_through_refused_by_oom_removes_the_old_value() {
    #[cached(key = "oom:<id>", ttl = "15m", cache = cache)]
    async fn read(cache: &Cache, id: u64) -> Result<u64, String> {
        let _ = id;
        Ok(OOM_VERSION.load(SeqCst))
    }

    #[cache_put(key = "oom:<id>", ttl = "15m", cache = cache)]
    async fn save(cache: &Cache, id: u64) -> Result<u64, String> {
        let _ = id;
        Ok(OOM_VERSION.fetch_add(1, SeqCst) + 1)
    }
    static OOM_VERSION: AtomicU64 = AtomicU64::new(0);

    let server =
        RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let raw = Raw::connect(&server).await;
    let build =
        || async { Cache::builder().redis(server.url()).prefix(PREFIX).build().await.unwrap() };
    let (cache, other) = (build().await, build().await);
    assert_eq!(read(&cache, 1).await.unwrap(), 0);
    assert_eq!(read(&other, 1).await.unwrap(), 0);

    // Fill the server until it refuses writes: large values first, then small ones, so
    // that the server stays over its limit (a refused large command's own buffer may have
    // been what tipped it over).
    let mut con = raw.0.clone();
    for size in [64 * 1024, 64] {
        let filler = "f".repeat(size);
        for i in 0.. {
            let set: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("filler:{size}:{i}"))
                .arg(&filler)
                .query_async(&mut con)
                .await;
            match set {
                Ok(()) => assert!(i < 200_000, "the server never ran out of memory"),
                Err(error) => {
                    assert!(error.to_string().contains("OOM"), "{error}");
                    break;
                }
            }
        }
    }

    let saved = save(&cache, 1).await.unwrap();
    assert_eq!(saved, 1);
    assert_eq!(
        read(&cache, 1).await.unwrap(),
        saved,
        "this instance served the old value under OOM"
    );
    assert_eq!(
        read(&other, 1).await.unwrap(),
        saved,
        "another instance served the old value under OOM"
    );

    // Memory back: a write-through lands and is a hit again.
    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap();
    let saved = save(&cache, 1).await.unwrap();
    let hits = other.stats().hits;
    assert_eq!(read(&other, 1).await.unwrap(), saved);
    assert_eq!(other.stats().hits, hits + 1, "after the outage the write-through is stored");
}

/// A time to live that would overflow the stores' clocks is a clear error, on both stores.
#[tokio::test]
async fn a_time_to_live_that_would_overflow_is_an_error() {
    let memory = Cache::memory();
    assert!(matches!(memory.set("k", &1u64, Duration::MAX).await, Err(Error::InvalidTtl { .. })));
    assert_eq!(memory.get::<u64>("k").await.unwrap(), None, "nothing was stored");
    let loaded: Result<u64, Error> =
        memory.get_or_load("k", Duration::MAX, || async { Ok(1) }).await;
    assert!(matches!(loaded, Err(Error::InvalidTtl { .. })));

    let server = RedisServer::start();
    let redis = Cache::builder().redis(server.url()).prefix(PREFIX).build().await.unwrap();
    assert!(matches!(redis.set("k", &1u64, Duration::MAX).await, Err(Error::InvalidTtl { .. })));
    // A long one works.
    redis.set("k", &1u64, Duration::from_secs(50 * 365 * 24 * 3600)).await.unwrap();
    assert_eq!(redis.get::<u64>("k").await.unwrap(), Some(1));
}
