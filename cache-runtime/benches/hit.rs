//! Cost of a cache **hit** through `#[cached]`, next to the hand-written code it replaces.
//!
//! One criterion run, one process, one tokio (current-thread) runtime for every case:
//!
//! | benchmark                | what one iteration does                                               |
//! |--------------------------|-----------------------------------------------------------------------|
//! | `redis/hand_written`     | `GET bench:vehicle:42` on a redis-rs `ConnectionManager`, then `serde_json::from_slice::<Vehicle>` |
//! | `redis/cached_attr`      | a `#[cached(key = "vehicle:<id>", ttl = "15m", cache = ...)]` hit on a Redis cache (prefix `bench:`) |
//! | `redis/cached_attr_lock` | the same with `lock`                                                  |
//! | `memory/moka_baseline`   | `moka::future::Cache<String, Vehicle>::get(&format!("vehicle:{id}"))` |
//! | `memory/cached_attr`     | a `#[cached]` hit on `Cache::memory()`                                |
//!
//! Every cache is warmed first (the first call is the only miss; the bench checks that the
//! bodies ran once and that the measured calls were hits). The Redis cases use a private
//! `redis-server` started by the bench on a free loopback port (the test helper
//! `tests/src/redis_server.rs`), never a shared server, so `redis-server` must be on `PATH`.
//!
//! After criterion, the bench times subject and baseline again in alternating batches (so
//! machine noise hits both alike) and prints the ratios the issue sets targets for:
//!
//! ```text
//! ratio redis cached/hand-written: 1.01x   (target <= 1.05x)
//! ratio memory cached/moka: 1.30x          (target <= 1.50x)
//! ```
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p cache-runtime --bench hit
//! cargo bench -p cache-runtime --bench hit -- memory     # criterion filter; ratios always print
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

use cache_runtime::{cached, Cache};
use criterion::{criterion_group, Criterion};
use redis::aio::ConnectionManager;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

#[path = "support/interleaved.rs"]
mod interleaved;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;
use interleaved::interleaved;

use redis_server::RedisServer;

/// The id every case reads.
const ID: u64 = 42;
/// `lock` gets its own key so that its first call is a real miss too.
const LOCK_ID: u64 = 43;
/// Redis prefix of the attribute's cache; the hand-written baseline spells it out.
const PREFIX: &str = "bench:";
const TTL: Duration = Duration::from_secs(15 * 60);

/// A realistic cached row: two ids, a few strings, a small list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    make: String,
    model: String,
    price: u32,
    features: Vec<String>,
}

/// What the "database" returns.
fn load_vehicle(id: u64) -> Vehicle {
    Vehicle {
        id,
        dealer_id: 7_311,
        make: "Honda".to_owned(),
        model: "Civic EX 2.0 CVT".to_owned(),
        price: 23_450,
        features: ["sunroof", "heated seats", "apple carplay", "lane assist", "backup camera"]
            .map(str::to_owned)
            .to_vec(),
    }
}

// ---- the subjects ---------------------------------------------------------------------------

static REDIS_CACHE: OnceLock<Cache> = OnceLock::new();
static MEMORY_CACHE: LazyLock<Cache> = LazyLock::new(Cache::memory);

/// Times each body ran (must stay at one per function: every measured call is a hit).
static REDIS_LOADS: AtomicU64 = AtomicU64::new(0);
static REDIS_LOCK_LOADS: AtomicU64 = AtomicU64::new(0);
static MEMORY_LOADS: AtomicU64 = AtomicU64::new(0);

fn redis_cache() -> &'static Cache {
    REDIS_CACHE.get().expect("the Redis cache is built in main")
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = redis_cache())]
async fn redis_vehicle(id: u64) -> Result<Option<Vehicle>, String> {
    REDIS_LOADS.fetch_add(1, Relaxed);
    Ok(Some(load_vehicle(id)))
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = redis_cache(), lock)]
async fn redis_vehicle_lock(id: u64) -> Result<Option<Vehicle>, String> {
    REDIS_LOCK_LOADS.fetch_add(1, Relaxed);
    Ok(Some(load_vehicle(id)))
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = &*MEMORY_CACHE)]
async fn memory_vehicle(id: u64) -> Result<Option<Vehicle>, String> {
    MEMORY_LOADS.fetch_add(1, Relaxed);
    Ok(Some(load_vehicle(id)))
}

// ---- the baselines --------------------------------------------------------------------------

/// What a service writes by hand: `GET` then decode.
async fn redis_hand_written(
    connection: &ConnectionManager,
    id: u64,
) -> Result<Option<Vehicle>, String> {
    let mut connection = connection.clone();
    let bytes: Option<Vec<u8>> =
        connection.get(format!("{PREFIX}hand:vehicle:{id}")).await.map_err(|e| e.to_string())?;
    match bytes {
        Some(json) => serde_json::from_slice(&json).map(Some).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

async fn moka_get(moka: &moka::future::Cache<String, Vehicle>, id: u64) -> Option<Vehicle> {
    moka.get(&format!("vehicle:{id}")).await
}

// ---- setup ----------------------------------------------------------------------------------

/// Everything the cases share; built (and warmed) once in `main`.
struct Fixture {
    runtime: Runtime,
    connection: ConnectionManager,
    moka: moka::future::Cache<String, Vehicle>,
}

impl Fixture {
    fn new() -> Fixture {
        let server = RedisServer::start();
        let (url, client) = (server.url(), server.client());
        *SERVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (connection, moka) = runtime.block_on(async {
            let cache =
                Cache::builder().redis(url).prefix(PREFIX).build().await.expect("a Redis cache");
            REDIS_CACHE.set(cache).expect("built once");
            let connection = ConnectionManager::new(client)
                .await
                .expect("a connection to the bench's redis-server");
            let moka =
                moka::future::Cache::builder().max_capacity(10_000).time_to_live(TTL).build();
            (connection, moka)
        });
        let fixture = Fixture { runtime, connection, moka };
        fixture.warm();
        fixture
    }

    /// First call of each subject is the miss that fills the cache; then everything must hit.
    fn warm(&self) {
        self.runtime.block_on(async {
            let expected = Some(load_vehicle(ID));
            for _ in 0..2 {
                assert_eq!(redis_vehicle(ID).await.unwrap(), expected);
                assert_eq!(redis_vehicle_lock(LOCK_ID).await.unwrap(), Some(load_vehicle(LOCK_ID)));
                assert_eq!(memory_vehicle(ID).await.unwrap(), expected);
            }
            self.moka.insert(format!("vehicle:{ID}"), load_vehicle(ID)).await;
            // The baseline reads the same value as plain JSON, stored by hand (the attribute's
            // bytes carry the cache's envelope header).
            let mut connection = self.connection.clone();
            let json = serde_json::to_vec(&load_vehicle(ID)).unwrap();
            let _: () = connection.set(format!("{PREFIX}hand:vehicle:{ID}"), json).await.unwrap();
            assert_eq!(redis_hand_written(&self.connection, ID).await.unwrap(), expected);
            assert_eq!(moka_get(&self.moka, ID).await, expected);
        });
        self.check_all_hits();
    }

    /// Every body ran exactly once (the warm-up miss): all measured calls were hits.
    fn check_all_hits(&self) {
        assert_eq!(REDIS_LOADS.load(Relaxed), 1, "redis_vehicle body ran again: not a hit");
        assert_eq!(REDIS_LOCK_LOADS.load(Relaxed), 1, "redis_vehicle_lock body ran again");
        assert_eq!(MEMORY_LOADS.load(Relaxed), 1, "memory_vehicle body ran again");
        for (name, cache) in [
            ("redis_vehicle", redis_cache()),
            ("redis_vehicle_lock", redis_cache()),
            ("memory_vehicle", &*MEMORY_CACHE),
        ] {
            let stats = cache.stats_of(name);
            assert_eq!((stats.misses, stats.errors), (1, 0), "{name}: {stats:?}");
        }
    }
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// The bench's redis-server. Statics are never dropped, so it lives here rather than in
/// [`Fixture`], and [`StopServer`] kills it when `main` returns or unwinds.
static SERVER: Mutex<Option<RedisServer>> = Mutex::new(None);

/// Kills the bench's redis-server (if one was started) on drop.
struct StopServer;

impl Drop for StopServer {
    fn drop(&mut self) {
        let server = SERVER.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(server);
    }
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(Fixture::new)
}

// ---- criterion ------------------------------------------------------------------------------

// `fixture()` is called inside the closures: `--list` then starts no redis-server.
fn redis_hits(c: &mut Criterion) {
    let mut group = c.benchmark_group("redis");
    group.bench_function("hand_written", |b| {
        let f = fixture();
        b.to_async(&f.runtime).iter(|| async {
            black_box(redis_hand_written(&f.connection, black_box(ID)).await.unwrap())
        });
    });
    group.bench_function("cached_attr", |b| {
        let f = fixture();
        b.to_async(&f.runtime)
            .iter(|| async { black_box(redis_vehicle(black_box(ID)).await.unwrap()) });
    });
    group.bench_function("cached_attr_lock", |b| {
        let f = fixture();
        b.to_async(&f.runtime)
            .iter(|| async { black_box(redis_vehicle_lock(black_box(LOCK_ID)).await.unwrap()) });
    });
    group.finish();
}

fn memory_hits(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    group.bench_function("moka_baseline", |b| {
        let f = fixture();
        b.to_async(&f.runtime).iter(|| async { black_box(moka_get(&f.moka, black_box(ID)).await) });
    });
    group.bench_function("cached_attr", |b| {
        let f = fixture();
        b.to_async(&f.runtime)
            .iter(|| async { black_box(memory_vehicle(black_box(ID)).await.unwrap()) });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = redis_hits, memory_hits
}

// ---- interleaved ratios ---------------------------------------------------------------------

fn print_ratios() {
    let f = fixture();
    let (redis, redis_ns, hand_ns) = interleaved(
        &f.runtime,
        60,
        500,
        || async { redis_vehicle(ID).await.unwrap() },
        || redis_hand_written(&f.connection, ID),
    );
    let (lock, lock_ns, lock_hand_ns) = interleaved(
        &f.runtime,
        30,
        500,
        || async { redis_vehicle_lock(LOCK_ID).await.unwrap() },
        || redis_hand_written(&f.connection, ID),
    );
    let (memory, memory_ns, moka_ns) = interleaved(
        &f.runtime,
        200,
        5_000,
        || async { memory_vehicle(ID).await.unwrap() },
        || moka_get(&f.moka, ID),
    );
    f.check_all_hits();
    println!();
    println!("interleaved batches (median of per-round ratios; mean ns per call):");
    println!("  redis  cached_attr      {redis_ns:>9.0} ns   hand_written {hand_ns:>9.0} ns");
    println!("  redis  cached_attr_lock {lock_ns:>9.0} ns   hand_written {lock_hand_ns:>9.0} ns");
    println!("  memory cached_attr      {memory_ns:>9.0} ns   moka_baseline {moka_ns:>8.0} ns");
    println!("ratio redis cached/hand-written: {redis:.2}x   (target <= 1.05x)");
    println!("ratio redis cached+lock/hand-written: {lock:.2}x");
    println!("ratio memory cached/moka: {memory:.2}x   (target <= 1.50x)");
}

fn main() {
    let _stop_server = StopServer;
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only a real benchmark run (`cargo bench`) times the ratios; `cargo test --benches`
    // (no `--bench`), `--test`, `--list` and `--profile-time` do not.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--bench") && !has("--test") && !has("--list") && !has("--profile-time") {
        print_ratios();
    }
}
