//! Value formats (issue 15) against a private `redis-server`:
//!
//! - [`rolling_upgrade_never_returns_wrong_data_and_converges`]: two releases of a service
//!   share keys with value types of different fingerprints; each serves only its own type,
//!   neither overwrites the other's entry, and the new one owns the keys once the old one
//!   is gone. The same with `#[cached(lock)]` and with `schema_version`.
//! - [`codec_switch_needs_no_flush`]: values written with one codec are hits for caches
//!   configured with another, and a previous release's plain JSON is read as before.
//! - [`bad_values_are_counted_misses`]: truncated, corrupted, wrong-codec and
//!   decompression-bomb values are misses with a counted error, then overwritten.
//! - [`compression_and_max_value_bytes`]: what is stored, and the limit on stored and
//!   inflated sizes.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::__private::encode_value;
use cache_runtime::{cached, Cache, Codec};
use cache_tests::RedisServer;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

const TTL: Duration = Duration::from_secs(60);

/// The release being replaced.
mod v1 {
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub(crate) struct Vehicle {
        pub(crate) id: u64,
        pub(crate) price: u32,
    }
}

/// The new release: same field names, one retyped (a change JSON would decode silently as
/// long as the numbers fit; postcard would decode into garbage).
mod v2 {
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub(crate) struct Vehicle {
        pub(crate) id: u64,
        pub(crate) price: u64,
    }
}

async fn cache(server: &RedisServer, codec: Codec) -> Cache {
    Cache::builder().redis(server.url()).prefix("fm:").codec(codec).build().await.unwrap()
}

async fn raw_get(raw: &MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    let mut raw = raw.clone();
    redis::cmd("GET").arg(key).query_async(&mut raw).await.unwrap()
}

async fn raw_set(raw: &MultiplexedConnection, key: &str, value: &[u8]) {
    let mut raw = raw.clone();
    redis::cmd("SET").arg(key).arg(value).query_async::<()>(&mut raw).await.unwrap();
}

/// `cache_errors_total{function="<function>",kind="<kind>"}`, 0 when absent.
fn errors(cache: &Cache, function: &str, kind: &str) -> u64 {
    let prefix = format!("cache_errors_total{{function=\"{function}\",kind=\"{kind}\"}} ");
    cache
        .prometheus()
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()).map(|n| n.parse().unwrap()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_never_returns_wrong_data_and_converges() {
    let server = RedisServer::start();
    let raw = server.connection().await;
    for codec in [Codec::Json, Codec::MessagePack, Codec::Postcard] {
        let old = cache(&server, codec).await;
        let new = cache(&server, codec).await;
        let key = format!("vehicle:{codec:?}");
        let full = format!("fm:{key}");
        let (old_loads, new_loads) = (AtomicU64::new(0), AtomicU64::new(0));
        let old_call = || {
            old.get_or_load(&key, TTL, || async {
                old_loads.fetch_add(1, SeqCst);
                Ok::<_, cache_runtime::Error>(v1::Vehicle { id: 1, price: 100 })
            })
        };
        let new_call = || {
            new.get_or_load(&key, TTL, || async {
                new_loads.fetch_add(1, SeqCst);
                Ok::<_, cache_runtime::Error>(v2::Vehicle { id: 1, price: 5_000_000_000 })
            })
        };

        // The old release filled the key; the new one starts during the deploy.
        assert_eq!(old_call().await.unwrap(), v1::Vehicle { id: 1, price: 100 });
        let old_entry = raw_get(&raw, &full).await.unwrap();
        for round in 0..10 {
            assert_eq!(new_call().await.unwrap(), v2::Vehicle { id: 1, price: 5_000_000_000 });
            assert_eq!(old_call().await.unwrap(), v1::Vehicle { id: 1, price: 100 });
            // No ping-pong: the new release never overwrote the old one's entry.
            assert_eq!(raw_get(&raw, &full).await.unwrap(), old_entry, "round {round}");
        }
        assert_eq!(old_loads.load(SeqCst), 1, "the old release kept hitting");
        assert_eq!(new_loads.load(SeqCst), 10, "the new release loaded for itself");
        assert_eq!(errors(&new, cache_runtime::DIRECT_CALLS, "schema"), 10);
        assert_eq!(errors(&new, cache_runtime::DIRECT_CALLS, "decode"), 0);

        // The old entry goes (its TTL, or an invalidation); the new release fills and keeps
        // the key: a straggler of the old release misses without overwriting it.
        old.invalidate(&key).await.unwrap();
        new_call().await.unwrap();
        let new_entry = raw_get(&raw, &full).await.unwrap();
        assert_ne!(new_entry, old_entry);
        assert_eq!(old_call().await.unwrap(), v1::Vehicle { id: 1, price: 100 });
        assert_eq!(raw_get(&raw, &full).await.unwrap(), new_entry);
        let loads = new_loads.load(SeqCst);
        for _ in 0..5 {
            new_call().await.unwrap();
        }
        assert_eq!(new_loads.load(SeqCst), loads, "converged: the new release hits");
    }
}

static LOCKED_OLD: AtomicU64 = AtomicU64::new(0);
static LOCKED_NEW: AtomicU64 = AtomicU64::new(0);

#[cached(key = "locked:<id>", ttl = "1m", lock, cache = cache)]
async fn locked_old(cache: &Cache, id: u64) -> v1::Vehicle {
    LOCKED_OLD.fetch_add(1, SeqCst);
    v1::Vehicle { id, price: 1 }
}

#[cached(key = "locked:<id>", ttl = "1m", lock, cache = cache)]
async fn locked_new(cache: &Cache, id: u64) -> v2::Vehicle {
    LOCKED_NEW.fetch_add(1, SeqCst);
    v2::Vehicle { id, price: 2 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_with_lock_and_schema_version() {
    let server = RedisServer::start();
    let raw = server.connection().await;
    let old = cache(&server, Codec::Json).await;
    let new = cache(&server, Codec::Json).await;
    assert_eq!(locked_old(&old, 3).await, v1::Vehicle { id: 3, price: 1 });
    let stored = raw_get(&raw, "fm:locked:3").await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let new = new.clone();
        calls.spawn(async move { locked_new(&new, 3).await });
    }
    while let Some(value) = calls.join_next().await {
        assert_eq!(value.unwrap(), v2::Vehicle { id: 3, price: 2 });
    }
    assert_eq!(raw_get(&raw, "fm:locked:3").await.unwrap(), stored);
    assert_eq!(locked_old(&old, 3).await, v1::Vehicle { id: 3, price: 1 });
    assert_eq!(LOCKED_OLD.load(SeqCst), 1);
    assert!(errors(&new, "locked_new", "schema") >= 1);

    // Same type, another schema version: a miss too, and nothing overwritten.
    let bumped =
        Cache::builder().redis(server.url()).prefix("fm:").schema_version(2).build().await.unwrap();
    let before = LOCKED_OLD.load(SeqCst);
    assert_eq!(locked_old(&bumped, 3).await, v1::Vehicle { id: 3, price: 1 });
    assert_eq!(LOCKED_OLD.load(SeqCst), before + 1, "schema version 2 does not read version 0");
    assert_eq!(raw_get(&raw, "fm:locked:3").await.unwrap(), stored);
    assert_eq!(errors(&bumped, "locked_old", "schema"), 1);
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Page {
    dealer: u64,
    vehicles: Vec<String>,
}

fn page() -> Page {
    Page { dealer: 7, vehicles: (0..200).map(|i| format!("vehicle {i}: Civic EX 2019")).collect() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codec_switch_needs_no_flush() {
    let server = RedisServer::start();
    let raw = server.connection().await;
    let codecs = [Codec::Json, Codec::MessagePack, Codec::Postcard];
    for writer in codecs {
        let writing = Cache::builder()
            .redis(server.url())
            .prefix("fm:")
            .codec(writer)
            .compress_above(256)
            .build()
            .await
            .unwrap();
        writing.set("page:7", &page(), TTL).await.unwrap();
        for reader in codecs {
            let reading = cache(&server, reader).await;
            assert_eq!(
                reading.get::<Page>("page:7").await.unwrap(),
                Some(page()),
                "{writer:?} -> {reader:?}"
            );
            assert_eq!(reading.stats().errors, 0);
        }
    }
    // The previous release's plain JSON (no header) is read by every codec.
    raw_set(&raw, "fm:page:7", &serde_json::to_vec(&page()).unwrap()).await;
    for reader in codecs {
        assert_eq!(cache(&server, reader).await.get::<Page>("page:7").await.unwrap(), Some(page()));
    }
    // JSON stays readable in redis-cli: a short ASCII header, then the JSON.
    cache(&server, Codec::Json).await.set("price:1", &1999u32, TTL).await.unwrap();
    let stored = String::from_utf8(raw_get(&raw, "fm:price:1").await.unwrap()).unwrap();
    assert!(stored.starts_with("cr2:j:-:") && stored.ends_with(":0:1999"), "{stored}");
}

static BAD_LOADS: AtomicU64 = AtomicU64::new(0);

#[cached(key = "bad:<id>", ttl = "1m", cache = cache)]
async fn bad(cache: &Cache, id: u64) -> Page {
    BAD_LOADS.fetch_add(1, SeqCst);
    Page { dealer: id, vehicles: vec!["Civic".into()] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_counted_misses() {
    let server = RedisServer::start();
    let raw = server.connection().await;
    let cache = Cache::builder()
        .redis(server.url())
        .prefix("fm:")
        .codec(Codec::Postcard)
        .max_value_bytes(64 * 1024)
        .build()
        .await
        .unwrap();
    let good = |id| Page { dealer: id, vehicles: vec!["Civic".into()] };
    let valid = encode_value(&good(0), Codec::Postcard, None);
    let mut truncated = valid.clone();
    truncated.truncate(valid.len() - 3);
    let mut corrupted = valid.clone();
    let last = corrupted.len() - 1;
    corrupted[last] ^= 0xff;
    corrupted[last - 2] = 0xff;
    let mut wrong_codec = encode_value(&good(0), Codec::MessagePack, None);
    wrong_codec[4] = b'p'; // says postcard, holds MessagePack
    let cut_header = b"cr2:p:-:0123".to_vec();
    // 1 MiB of one byte: about 4 KB stored, over the 64 KiB limit once inflated.
    let bomb = encode_value(
        &Page { dealer: 0, vehicles: vec!["a".repeat(1 << 20)] },
        Codec::Postcard,
        Some(0),
    );
    assert!(bomb.len() < 8 * 1024, "{}", bomb.len());
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("truncated", truncated, "decode"),
        ("corrupted", corrupted, "decode"),
        ("wrong codec", wrong_codec, "decode"),
        ("cut header", cut_header, "decode"),
        ("bomb", bomb, "too_large"),
    ];
    for (id, (name, bytes, kind)) in (1u64..).zip(cases) {
        let key = format!("fm:bad:{id}");
        raw_set(&raw, &key, &bytes).await;
        let before = (BAD_LOADS.load(SeqCst), errors(&cache, "bad", kind));
        assert_eq!(bad(&cache, id).await, good(id), "{name}");
        assert_eq!(BAD_LOADS.load(SeqCst), before.0 + 1, "{name}: a miss");
        assert_eq!(errors(&cache, "bad", kind), before.1 + 1, "{name}: counted as {kind}");
        // Replaced by the fresh value: a hit from now on.
        assert_ne!(raw_get(&raw, &key).await.unwrap(), bytes, "{name}");
        assert_eq!(bad(&cache, id).await, good(id));
        assert_eq!(BAD_LOADS.load(SeqCst), before.0 + 1, "{name}: a hit after the overwrite");
    }
    assert_eq!(errors(&cache, "bad", "schema"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_and_max_value_bytes() {
    let server = RedisServer::start();
    let raw = server.connection().await;
    let big = Page { dealer: 1, vehicles: vec!["Civic EX 2019, one owner".to_owned(); 4_000] };
    let json_len = serde_json::to_vec(&big).unwrap().len();
    let cache = Cache::builder()
        .redis(server.url())
        .prefix("fm:")
        .compress_above(1024)
        .max_value_bytes(json_len + 100)
        .build()
        .await
        .unwrap();
    cache.set("big", &big, TTL).await.unwrap();
    let stored = raw_get(&raw, "fm:big").await.unwrap();
    assert!(stored.starts_with(b"cr2:j:l"), "compressed");
    assert!(stored.len() * 10 < json_len, "{} stored for {json_len}", stored.len());
    assert_eq!(cache.get::<Page>("big").await.unwrap(), Some(big.clone()));
    // Small values stay readable.
    cache.set("small", &1u8, TTL).await.unwrap();
    assert!(raw_get(&raw, "fm:small").await.unwrap().starts_with(b"cr2:j:-:"));
    // The limit bounds the size before compression too: a reader never inflates past it.
    let tight = Cache::builder()
        .redis(server.url())
        .prefix("fm:")
        .compress_above(1024)
        .max_value_bytes(json_len / 2)
        .build()
        .await
        .unwrap();
    assert!(matches!(
        tight.set("big", &big, TTL).await,
        Err(cache_runtime::Error::ValueTooLarge { .. })
    ));
    assert_eq!(tight.get::<Page>("big").await.unwrap(), None, "inflates past its limit");
    assert_eq!(errors(&tight, cache_runtime::DIRECT_CALLS, "too_large"), 1);
}

static SHARED_A: AtomicU64 = AtomicU64::new(0);
static SHARED_B: AtomicU64 = AtomicU64::new(0);

#[cached(key = "shared:<id>", ttl = "1m", cache = cache)]
async fn shared_a(cache: &Cache, id: u64) -> v1::Vehicle {
    SHARED_A.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    v1::Vehicle { id, price: 1 }
}

#[cached(key = "shared:<id>", ttl = "1m", cache = cache)]
async fn shared_b(cache: &Cache, id: u64) -> v2::Vehicle {
    SHARED_B.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    v2::Vehicle { id, price: 2 }
}

/// Two functions of one cache share a key with different value types (a mistake, or two
/// versions in one binary): each gets its own type, concurrent calls included (single
/// flight hands a leader's value to followers of the other type), and neither overwrites
/// the other's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_types_under_one_key_in_one_process() {
    let server = RedisServer::start();
    let raw = server.connection().await;
    let cache = cache(&server, Codec::Postcard).await;
    for round in 0..5 {
        let (a, b) = tokio::join!(shared_a(&cache, 1), shared_b(&cache, 1));
        assert_eq!(a, v1::Vehicle { id: 1, price: 1 }, "round {round}");
        assert_eq!(b, v2::Vehicle { id: 1, price: 2 }, "round {round}");
    }
    let stored = raw_get(&raw, "fm:shared:1").await.unwrap();
    for _ in 0..3 {
        let (a, b) = tokio::join!(shared_a(&cache, 1), shared_b(&cache, 1));
        assert_eq!((a.price, b.price), (1, 2));
        assert_eq!(raw_get(&raw, "fm:shared:1").await.unwrap(), stored, "no ping-pong");
    }
    assert!(errors(&cache, "shared_a", "schema") + errors(&cache, "shared_b", "schema") >= 8);
}
