//! The hot paths of issue 25, each next to the code it replaces, in one process and one run
//! (a `harness = false` program that prints its figures; no criterion):
//!
//! | part | subject | baseline | figure |
//! |---|---|---|---|
//! | `redis64` | 64 tasks hitting one hot key through `#[cached]` on Redis | hand-written redis-rs `GET` + `serde_json` on a `ConnectionManager` | throughput ratio |
//! | `hit` | one task, one warm key, `#[cached]` on Redis | the same hand-written `GET` | latency ratio |
//! | `memory` | `#[cached]` hit on `Cache::memory()` | `moka::future::Cache::get(&format!(..))` of the same value | latency ratio |
//! | `near` | `#[cached]` near hit (Redis + `near_cache`) | the same bare moka `get` | latency ratio |
//! | `near64` | 64 tasks of near hits | hand-written `GET`, and bare in-process maps (moka sync in two settings, `quick_cache`, a sharded `RwLock<HashMap>` of `Arc` copies), each returning an owned copy | throughput ratio |
//! | `miss` | `#[cached]` miss and fill, a fresh key each call | hand-written `GET` (nil), body, `SET PX` | latency ratio |
//! | `pattern` | `Cache::invalidate_pattern("page:<n>:*")` of 10 keys | one hand-written `GET` round trip | latency, in round trips |
//! | `tags` | `Cache::invalidate_tag("make:<n>")` of 10 keys stored with `set_tagged` | one hand-written `GET` round trip | latency, in round trips |
//! | `batch` | `#[cached_batch]` of 100 ids: cold (every id new), and warm (all hits) | hand-written `MGET`, the same "query", one pipeline of 100 `SET PX`; and a bare `MGET` + decode | latency ratio |
//!
//! For `valgrind --tool=callgrind`, one side only, untimed: `prof-attr` / `prof-hand` (64
//! tasks of Redis hits), `prof-memory` (memory hits, then as many bare moka gets), and, one
//! contender per run of `HOT_PROF_CALLS` calls, `prof-near`, `prof-memory-hit`, `prof-moka`
//! (bare `moka::future` get) and `prof-quick` (bare `quick_cache::sync` get + clone);
//! `prof-cold-batch` / `prof-cold-hand`: `HOT_PROF_CALLS / 100` cold batches of 100 ids,
//! `#[cached_batch]` or hand-written.
//!
//! Method: each round times subject and baseline in batches, the order alternating round by
//! round (so machine noise hits both alike); the figure is the median of the per-round
//! ratios (9 rounds unless `HOT_ROUNDS` says otherwise). Throughput parts run on one
//! 2-worker tokio runtime, latency parts on a current-thread one.
//!
//! Redis: a private `redis-server` on a free loopback port, or the server at `HOT_REDIS_URL`
//! (the network-namespace harness `cache-runtime/benches/netns.sh` points it at a server
//! behind a veth pair). `HOT_PARTS=redis64,memory` runs some parts only.
//!
//! A network hop: `HOT_DELAY=0.25ms` (or `0`, `250us`, `1ms`) puts a latency proxy
//! (`tests/src/latency_proxy.rs`, OS threads in this process) between every connection and
//! Redis, adding that round trip (half each way) to each exchange: the stand-in for
//! `tc netem delay` on a kernel without `sch_netem`. `HOT_DELAY=0` is the proxy's own cost.
//! The bench prints the round trip it measured (median `PING`, direct and through the
//! proxy) and, per part, the CPU the proxy's threads spent, which they take from the same
//! cores as the client and the server.
//!
//! ```text
//! cargo bench -p cache-runtime --bench hot
//! HOT_PARTS=redis64 HOT_ROUNDS=15 cargo bench -p cache-runtime --bench hot
//! HOT_DELAY=1ms HOT_PARTS=hit,near,miss,pattern,tags,batch cargo bench -p cache-runtime --bench hot
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use cache_runtime::{cached, cached_batch, Cache};
use redis::aio::ConnectionManager;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

#[path = "support/interleaved.rs"]
mod interleaved;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/latency_proxy.rs"]
mod latency_proxy;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;
use interleaved::interleaved;
use latency_proxy::LatencyProxy;

const ID: u64 = 42;
const PREFIX: &str = "hot:";
const TTL: Duration = Duration::from_secs(15 * 60);

/// A realistic cached row (the one of `hit.rs` and `peers.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    make: String,
    model: String,
    price: u32,
    features: Vec<String>,
}

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

static REDIS: OnceLock<Cache> = OnceLock::new();
static MEMORY: OnceLock<Cache> = OnceLock::new();
static NEAR: OnceLock<Cache> = OnceLock::new();
/// Body runs of `fill_vehicle` (each measured miss runs it once).
static FILLS: AtomicU64 = AtomicU64::new(0);

#[cached(key = "vehicle:<id>", ttl = "15m", cache = REDIS.get().unwrap())]
async fn redis_vehicle(id: u64) -> Result<Vehicle, String> {
    Ok(load_vehicle(id))
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = MEMORY.get().unwrap())]
async fn memory_vehicle(id: u64) -> Result<Vehicle, String> {
    Ok(load_vehicle(id))
}

#[cached(key = "vehicle:<id>", ttl = "15m", cache = NEAR.get().unwrap())]
async fn near_vehicle(id: u64) -> Result<Vehicle, String> {
    Ok(load_vehicle(id))
}

#[cached(key = "fill:<id>", ttl = "15m", cache = REDIS.get().unwrap())]
async fn fill_vehicle(id: u64) -> Result<Vehicle, String> {
    FILLS.fetch_add(1, Relaxed);
    Ok(load_vehicle(id))
}

/// Ids in one batch of the `batch` part.
const BATCH: u64 = 100;

/// The "query" of the `batch` part: one row per id, in process (no database).
fn query(ids: &[u64]) -> HashMap<u64, Vehicle> {
    ids.iter().map(|&id| (id, load_vehicle(id))).collect()
}

#[cached_batch(key = "bvehicle:<ids>", ttl = "15m", cache = REDIS.get().unwrap())]
async fn batch_vehicles(ids: &[u64]) -> Result<HashMap<u64, Vehicle>, String> {
    Ok(query(ids))
}

/// What a service writes by hand for a batch: `MGET`, one query for what missed, `SET PX`
/// of each missed row in one pipeline (none when every id was found).
async fn hand_batch(connection: &ConnectionManager, ids: &[u64]) -> HashMap<u64, Vehicle> {
    let mut connection = connection.clone();
    let keys: Vec<String> = ids.iter().map(|id| format!("{PREFIX}handb:vehicle:{id}")).collect();
    let found: Vec<Option<Vec<u8>>> =
        redis::cmd("MGET").arg(&keys).query_async(&mut connection).await.expect("MGET");
    let mut rows = HashMap::with_capacity(ids.len());
    let mut missed = Vec::new();
    for ((id, key), found) in ids.iter().zip(&keys).zip(found) {
        match found.and_then(|json| serde_json::from_slice::<Vehicle>(&json).ok()) {
            Some(vehicle) => {
                rows.insert(*id, vehicle);
            }
            None => missed.push((*id, key)),
        }
    }
    if missed.is_empty() {
        return rows;
    }
    let ids: Vec<u64> = missed.iter().map(|(id, _)| *id).collect();
    let loaded = query(&ids);
    let mut pipe = redis::pipe();
    for (id, key) in &missed {
        if let Some(vehicle) = loaded.get(id) {
            let json = serde_json::to_vec(vehicle).expect("encodes");
            pipe.cmd("SET").arg(*key).arg(json).arg("PX").arg(TTL.as_millis() as u64).ignore();
        }
    }
    let () = pipe.query_async(&mut connection).await.expect("pipelined SETs");
    rows.extend(loaded);
    rows
}

/// Median `PING` round trip over `url`, in µs (200 pings after 20 untimed ones).
async fn ping_us(url: &str) -> f64 {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("a connection");
    let mut times = Vec::with_capacity(200);
    for i in 0..220 {
        let started = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut connection).await.expect("PING");
        if i >= 20 {
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    median(times)
}

/// The proxy's CPU since `before`, as a line to print after a part (nothing without one).
fn proxy_cpu(proxy: Option<&LatencyProxy>, before: Duration, wall: Duration) -> String {
    match proxy {
        Some(proxy) => {
            let spent = proxy.cpu_time().saturating_sub(before);
            format!(
                "  (latency proxy: {:.0} ms CPU in {:.2} s of this part = {:.0}% of one core)",
                spent.as_secs_f64() * 1e3,
                wall.as_secs_f64(),
                spent.as_secs_f64() * 100.0 / wall.as_secs_f64().max(1e-9)
            )
        }
        None => String::new(),
    }
}

/// Hand-written hit: `GET` + `serde_json::from_slice`.
async fn hand_written(connection: &ConnectionManager, id: u64) -> Result<Vehicle, String> {
    let mut connection = connection.clone();
    let bytes: Option<Vec<u8>> =
        connection.get(format!("{PREFIX}hand:vehicle:{id}")).await.map_err(|e| e.to_string())?;
    match bytes {
        Some(json) => serde_json::from_slice(&json).map_err(|e| e.to_string()),
        None => Err("hand-written key missing".to_owned()),
    }
}

/// Hand-written cache-aside on a miss: `GET`, the body, `SET PX`.
async fn hand_fill(connection: &ConnectionManager, id: u64) -> Result<Vehicle, String> {
    let mut connection = connection.clone();
    let key = format!("{PREFIX}handfill:vehicle:{id}");
    let bytes: Option<Vec<u8>> = connection.get(&key).await.map_err(|e| e.to_string())?;
    if let Some(json) = bytes {
        return serde_json::from_slice(&json).map_err(|e| e.to_string());
    }
    let value = load_vehicle(id);
    let json = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(json)
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    Ok(value)
}

fn median(mut list: Vec<f64>) -> f64 {
    list.sort_by(f64::total_cmp);
    list[list.len() / 2]
}

fn min_max(list: &[f64]) -> (f64, f64) {
    list.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// One contender of a throughput part: a name and a call, cloned into each task.
type Call = Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn call<F, Fut>(f: F) -> Call
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// Calls per second of `tasks` tasks each making `per_task` calls.
async fn rate(tasks: usize, per_task: usize, call: &Call) -> f64 {
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let call = Arc::clone(call);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    call().await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a task");
    }
    (tasks * per_task) as f64 / started.elapsed().as_secs_f64()
}

/// Throughput of each contender over `rounds` rounds, the order rotating each round; per
/// contender the list of its rates and of its ratios to contender 0 (the baseline) in the
/// same round.
async fn throughput(
    rounds: usize,
    contenders: &[(&str, usize, Call)],
) -> Vec<(Vec<f64>, Vec<f64>)> {
    for (_, per_task, call) in contenders {
        rate(64, (*per_task / 10).max(1), call).await;
    }
    let n = contenders.len();
    let mut out = vec![(Vec::new(), Vec::new()); n];
    for round in 0..rounds {
        let mut rates = vec![0.0; n];
        for step in 0..n {
            // Rotate the order, and reverse it every other round.
            let mut i = (step + round) % n;
            if round % 2 == 1 {
                i = n - 1 - i;
            }
            let (_, per_task, call) = &contenders[i];
            rates[i] = rate(64, *per_task, call).await;
        }
        for i in 0..n {
            out[i].0.push(rates[i]);
            out[i].1.push(rates[i] / rates[0]);
        }
    }
    out
}

fn report(title: &str, contenders: &[(&str, usize, Call)], figures: &[(Vec<f64>, Vec<f64>)]) {
    println!("{title}");
    for ((name, _, _), (rates, ratios)) in contenders.iter().zip(figures) {
        let (lo, hi) = min_max(ratios);
        println!(
            "  {name:<48} {:>11.0} calls/s (median)  ratio to {}: {:.3}x (rounds {lo:.3}-{hi:.3})",
            median(rates.clone()),
            contenders[0].0,
            median(ratios.clone()),
        );
    }
}

/// A sharded map of `Arc` copies: the simplest in-process map a user could write.
struct Sharded {
    hasher: RandomState,
    shards: Vec<RwLock<HashMap<String, Arc<Vehicle>>>>,
}

impl Sharded {
    fn new(shards: usize) -> Sharded {
        Sharded {
            hasher: RandomState::new(),
            shards: (0..shards).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
    fn shard(&self, key: &str) -> &RwLock<HashMap<String, Arc<Vehicle>>> {
        &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()]
    }
    fn insert(&self, key: String, value: Vehicle) {
        self.shard(&key).write().unwrap().insert(key, Arc::new(value));
    }
    fn get(&self, key: &str) -> Option<Vehicle> {
        self.shard(key).read().unwrap().get(key).map(|value| Vehicle::clone(value))
    }
}

fn parts() -> Vec<String> {
    let all = "hit,redis64,memory,near,near64,miss,pattern,tags,batch";
    std::env::var("HOT_PARTS")
        .unwrap_or_else(|_| all.to_owned())
        .split(',')
        .map(|part| part.trim().to_owned())
        .collect()
}

fn main() {
    let parts = parts();
    let runs = |part: &str| parts.iter().any(|p| p == part);
    let rounds: usize = std::env::var("HOT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(9);
    let (_server, direct_url) = match std::env::var("HOT_REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = redis_server::RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let delay = std::env::var("HOT_DELAY").ok().map(|text| {
        latency_proxy::parse_delay(&text)
            .unwrap_or_else(|| panic!("HOT_DELAY={text}: not a delay (0, 250us, 0.25ms, 1ms)"))
    });
    let proxy = delay.map(|delay| {
        LatencyProxy::for_redis(&direct_url, delay).expect("a latency proxy in front of Redis")
    });
    let url = proxy.as_ref().map_or_else(|| direct_url.clone(), LatencyProxy::url);
    println!("hot: Redis at {url}, {rounds} rounds, {} workers for the 64-task parts", 2);
    let threaded = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Some(proxy) = &proxy {
        let (direct, through) =
            threaded.block_on(async { (ping_us(&direct_url).await, ping_us(&url).await) });
        println!(
            "hot: latency proxy adding {:?} per round trip in front of {direct_url}; median PING {direct:.1} µs direct, {through:.1} µs through it (+{:.1} µs)",
            proxy.round_trip(),
            through - direct
        );
    }
    let proxy = proxy.as_ref();
    // The CPU the proxy spent before a part, and when the part started.
    let mark = || (proxy.map_or(Duration::ZERO, LatencyProxy::cpu_time), Instant::now());
    let single =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    // Caches built on the threaded runtime (their connections' drivers live there); the
    // current-thread parts use connections made on their own runtime.
    let client = redis::Client::open(url.as_str()).expect("a Redis URL");
    threaded.block_on(async {
        let redis = Cache::builder().redis(&url).prefix(PREFIX).build().await.expect("Redis");
        REDIS.set(redis).expect("once");
        MEMORY.set(Cache::memory()).expect("once");
        let near = Cache::builder()
            .redis(&url)
            .prefix("hotnear:")
            .near_cache(64 << 20)
            .build()
            .await
            .expect("a near cache");
        while !near.near_cache_live() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        NEAR.set(near).expect("once");
        let mut connection = ConnectionManager::new(client.clone()).await.expect("a connection");
        let json = serde_json::to_vec(&load_vehicle(ID)).unwrap();
        let _: () = connection.set(format!("{PREFIX}hand:vehicle:{ID}"), json).await.unwrap();
        assert_eq!(redis_vehicle(ID).await.unwrap(), load_vehicle(ID));
        assert_eq!(memory_vehicle(ID).await.unwrap(), load_vehicle(ID));
        let near = NEAR.get().unwrap();
        while near.stats().near_hits == 0 {
            assert_eq!(near_vehicle(ID).await.unwrap(), load_vehicle(ID));
        }
    });
    let stats = |cache: &OnceLock<Cache>| cache.get().unwrap().stats();
    let (redis_before, near_before) = (stats(&REDIS), stats(&NEAR));

    if runs("redis64") {
        let figures = threaded.block_on(async {
            let connection = ConnectionManager::new(client.clone()).await.expect("a connection");
            let contenders: Vec<(&str, usize, Call)> = vec![
                (
                    "hand-written GET + serde_json",
                    200,
                    call(move || {
                        let connection = connection.clone();
                        async move {
                            black_box(hand_written(&connection, ID).await.unwrap());
                        }
                    }),
                ),
                (
                    "#[cached] hit",
                    200,
                    call(|| async {
                        black_box(redis_vehicle(ID).await.unwrap());
                    }),
                ),
            ];
            let figures = throughput(rounds, &contenders).await;
            report("redis64: 64 tasks x 200 hits of one hot key on Redis", &contenders, &figures);
            figures
        });
        let _ = figures;
    }

    // For `valgrind --tool=callgrind`: one side only, 64 tasks x 200 hits, no timing.
    for (part, attr) in [("prof-attr", true), ("prof-hand", false)] {
        if runs(part) {
            threaded.block_on(async {
                let connection = ConnectionManager::new(client.clone()).await.expect("conn");
                let contender = if attr {
                    call(|| async {
                        black_box(redis_vehicle(ID).await.unwrap());
                    })
                } else {
                    call(move || {
                        let connection = connection.clone();
                        async move {
                            black_box(hand_written(&connection, ID).await.unwrap());
                        }
                    })
                };
                println!("{part}: {:.0} hits/s", rate(64, 200, &contender).await);
            });
        }
    }

    if runs("prof-memory") {
        // For callgrind: 100,000 memory hits, then as many bare moka gets.
        let moka: moka::future::Cache<String, Vehicle> =
            moka::future::Cache::builder().max_capacity(10_000).time_to_live(TTL).build();
        single.block_on(async {
            moka.insert(format!("vehicle:{ID}"), load_vehicle(ID)).await;
            for _ in 0..100_000 {
                black_box(memory_vehicle(ID).await.unwrap());
            }
            for _ in 0..100_000 {
                black_box(moka.get(&format!("vehicle:{ID}")).await.unwrap());
            }
        });
    }

    // For callgrind, one contender per run, `HOT_PROF_CALLS` calls (100,000 unless told) on
    // the current-thread runtime: two runs with N and 2N calls give the instructions of one
    // call as their difference / N (the setup cancels out).
    let prof_calls: usize =
        std::env::var("HOT_PROF_CALLS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    if runs("prof-near") {
        single.block_on(async {
            for _ in 0..prof_calls {
                black_box(near_vehicle(ID).await.unwrap());
            }
        });
    }
    if runs("prof-memory-hit") {
        single.block_on(async {
            for _ in 0..prof_calls {
                black_box(memory_vehicle(ID).await.unwrap());
            }
        });
    }
    if runs("prof-moka") {
        let moka: moka::future::Cache<String, Vehicle> =
            moka::future::Cache::builder().max_capacity(10_000).time_to_live(TTL).build();
        single.block_on(async {
            moka.insert(format!("vehicle:{ID}"), load_vehicle(ID)).await;
            for _ in 0..prof_calls {
                black_box(moka.get(&format!("vehicle:{ID}")).await.unwrap());
            }
        });
    }
    // Cold batches of 100 ids (every id new), `HOT_PROF_CALLS / 100` of them: the client's
    // instructions per batch, ours and the hand-written one's (the server runs outside
    // callgrind).
    for (part, attr) in [("prof-cold-batch", true), ("prof-cold-hand", false)] {
        if !runs(part) {
            continue;
        }
        let connection = single.block_on(ConnectionManager::new(client.clone())).expect("conn");
        let mut first = if attr { 20_000_000 } else { 30_000_000 };
        single.block_on(async {
            for _ in 0..prof_calls / 100 {
                let ids: Vec<u64> = (first..first + BATCH).collect();
                first += BATCH;
                match attr {
                    true => black_box(batch_vehicles(&ids).await.unwrap()),
                    false => black_box(hand_batch(&connection, &ids).await),
                };
            }
        });
    }
    if runs("prof-quick") {
        let quick: quick_cache::sync::Cache<String, Arc<Vehicle>> =
            quick_cache::sync::Cache::new(10_000);
        quick.insert(format!("vehicle:{ID}"), Arc::new(load_vehicle(ID)));
        single.block_on(async {
            for _ in 0..prof_calls {
                let found = quick.get(&format!("vehicle:{ID}")).map(|v| (*v).clone());
                black_box(async { found.unwrap() }.await);
            }
        });
    }

    if runs("hit") {
        let (cpu, started) = mark();
        // The attribute's cache lives on the threaded runtime: a sequential caller there, and
        // the baseline's connection too.
        let connection =
            threaded.block_on(ConnectionManager::new(client.clone())).expect("a connection");
        let (ratio, subject, baseline) = interleaved(
            &threaded,
            rounds.max(15),
            300,
            || async { redis_vehicle(ID).await.unwrap() },
            || hand_written(&connection, ID),
        );
        println!(
            "hit: one task, #[cached] Redis hit / hand-written GET + serde_json: {ratio:.3}x ({subject:.0} vs {baseline:.0} ns){}",
            proxy_cpu(proxy, cpu, started.elapsed())
        );
    }

    if runs("memory") {
        let moka: moka::future::Cache<String, Vehicle> =
            moka::future::Cache::builder().max_capacity(10_000).time_to_live(TTL).build();
        single.block_on(moka.insert(format!("vehicle:{ID}"), load_vehicle(ID)));
        let (ratio, subject, baseline) = interleaved(
            &single,
            rounds.max(15) * 4,
            20_000,
            || async { memory_vehicle(ID).await.unwrap() },
            || async { moka.get(&format!("vehicle:{ID}")).await.unwrap() },
        );
        println!(
            "memory: #[cached] memory hit / moka::future get: {ratio:.3}x ({subject:.0} vs {baseline:.0} ns; goal <= 1.2x)"
        );
    }

    if runs("near") {
        let (cpu, started) = mark();
        let moka: moka::future::Cache<String, Vehicle> =
            moka::future::Cache::builder().max_capacity(10_000).time_to_live(TTL).build();
        single.block_on(moka.insert(format!("vehicle:{ID}"), load_vehicle(ID)));
        let (ratio, subject, baseline) = interleaved(
            &single,
            rounds.max(15) * 4,
            20_000,
            || async { near_vehicle(ID).await.unwrap() },
            || async { moka.get(&format!("vehicle:{ID}")).await.unwrap() },
        );
        println!(
            "near: #[cached] near hit / moka::future get: {ratio:.3}x ({subject:.0} vs {baseline:.0} ns; goal <= 1.1x){}",
            proxy_cpu(proxy, cpu, started.elapsed())
        );
    }

    if runs("near64") {
        threaded.block_on(async {
            let connection = ConnectionManager::new(client.clone()).await.expect("a connection");
            let connection_for_size = connection.clone();
            let key = format!("vehicle:{ID}");
            let sync_default: moka::sync::Cache<String, Vehicle> =
                moka::sync::Cache::builder().max_capacity(10_000).time_to_live(TTL).build();
            sync_default.insert(key.clone(), load_vehicle(ID));
            let sync_plain: moka::sync::Cache<String, Arc<Vehicle>> =
                moka::sync::Cache::builder().max_capacity(10_000).build();
            sync_plain.insert(key.clone(), Arc::new(load_vehicle(ID)));
            let quick: Arc<quick_cache::sync::Cache<String, Arc<Vehicle>>> =
                Arc::new(quick_cache::sync::Cache::new(10_000));
            quick.insert(key.clone(), Arc::new(load_vehicle(ID)));
            let sharded = Arc::new(Sharded::new(64));
            sharded.insert(key, load_vehicle(ID));
            let contenders: Vec<(&str, usize, Call)> = vec![
                (
                    "hand-written GET + serde_json",
                    50,
                    call(move || {
                        let connection = connection.clone();
                        async move {
                            black_box(hand_written(&connection, ID).await.unwrap());
                        }
                    }),
                ),
                (
                    "#[cached] near hit",
                    2_000,
                    call(|| async {
                        black_box(near_vehicle(ID).await.unwrap());
                    }),
                ),
                (
                    "moka::sync, ttl, owned value, get + clone",
                    2_000,
                    call(move || {
                        let found = sync_default.get(&format!("vehicle:{ID}"));
                        async move {
                            black_box(found.unwrap());
                        }
                    }),
                ),
                (
                    "moka::sync, no ttl, Arc value, get + clone",
                    2_000,
                    call(move || {
                        let found = sync_plain.get(&format!("vehicle:{ID}")).map(|v| (*v).clone());
                        async move {
                            black_box(found.unwrap());
                        }
                    }),
                ),
                (
                    "quick_cache::sync, Arc value, get + clone",
                    2_000,
                    call(move || {
                        let found = quick.get(&format!("vehicle:{ID}")).map(|v| (*v).clone());
                        async move {
                            black_box(found.unwrap());
                        }
                    }),
                ),
                (
                    "64 RwLock<HashMap> shards of Arc, get + clone",
                    2_000,
                    call(move || {
                        let found = sharded.get(&format!("vehicle:{ID}"));
                        async move {
                            black_box(found.unwrap());
                        }
                    }),
                ),
            ];
            let figures = throughput(rounds, &contenders).await;
            report(
                "near64: 64 tasks of in-process hits (goal: near >= 20x hand-written)",
                &contenders,
                &figures,
            );
            // Each call's future is boxed by the harness (as a spawned task holds it).
            println!(
                "  future sizes: #[cached] call {} bytes, hand-written GET {} bytes",
                std::mem::size_of_val(&near_vehicle(ID)),
                std::mem::size_of_val(&hand_written(&connection_for_size, ID)),
            );
        });
    }

    if runs("miss") {
        let (cpu, started) = mark();
        let connection = threaded.block_on(ConnectionManager::new(client.clone())).expect("conn");
        let next = AtomicU64::new(1_000_000);
        let fills_before = FILLS.load(Relaxed);
        let (ratio, subject, baseline) = interleaved(
            &threaded,
            rounds,
            300,
            || fill_vehicle(next.fetch_add(1, Relaxed)),
            || hand_fill(&connection, next.fetch_add(1, Relaxed)),
        );
        let calls = FILLS.load(Relaxed) - fills_before;
        assert_eq!(calls, (rounds as u64 + 1) * 300, "every measured call was a miss");
        println!(
            "miss: #[cached] miss and fill / hand-written GET + SET PX: {ratio:.3}x ({subject:.0} vs {baseline:.0} ns; goal <= 1.3x){}",
            proxy_cpu(proxy, cpu, started.elapsed())
        );
    }

    if runs("pattern") {
        let (cpu, started) = mark();
        // Per round: 10 keys written through the cache (so indexed; untimed), then the
        // pattern removal timed, next to one hand-written `GET` round trip timed alone.
        let (pattern_us, get_us) = threaded.block_on(async {
            let connection = ConnectionManager::new(client.clone()).await.expect("conn");
            let cache = REDIS.get().unwrap();
            let (mut patterns, mut gets) = (Vec::new(), Vec::new());
            for n in 0..(rounds * 20) {
                for i in 0..10 {
                    cache.set(&format!("page:{n}:{i}"), &i, TTL).await.unwrap();
                }
                let started = Instant::now();
                let removed = cache.invalidate_pattern(&format!("page:{n}:*")).await.unwrap();
                patterns.push(started.elapsed().as_secs_f64() * 1e6);
                assert_eq!(removed, 10);
                let started = Instant::now();
                black_box(hand_written(&connection, ID).await.unwrap());
                gets.push(started.elapsed().as_secs_f64() * 1e6);
            }
            (median(patterns), median(gets))
        });
        println!(
            "pattern: invalidate_pattern of 10 indexed keys: median {pattern_us:.1} µs; one hand-written GET: median {get_us:.1} µs ({:.2} round trips){}",
            pattern_us / get_us,
            proxy_cpu(proxy, cpu, started.elapsed())
        );
    }

    if runs("tags") {
        let (cpu, started) = mark();
        // Per round: 10 keys stored with one tag (untimed), then `invalidate_tag` timed,
        // next to one hand-written `GET` round trip timed alone.
        let (tag_us, get_us) = threaded.block_on(async {
            let connection = ConnectionManager::new(client.clone()).await.expect("conn");
            let cache = REDIS.get().unwrap();
            let (mut tags, mut gets) = (Vec::new(), Vec::new());
            for n in 0..(rounds * 20) {
                let tag = format!("make:{n}");
                for i in 0..10 {
                    cache.set_tagged(&format!("tagged:{n}:{i}"), &i, TTL, &[&tag]).await.unwrap();
                }
                let started = Instant::now();
                let removed = cache.invalidate_tag(&tag).await.unwrap();
                tags.push(started.elapsed().as_secs_f64() * 1e6);
                assert_eq!(removed, 10);
                let started = Instant::now();
                black_box(hand_written(&connection, ID).await.unwrap());
                gets.push(started.elapsed().as_secs_f64() * 1e6);
            }
            (median(tags), median(gets))
        });
        println!(
            "tags: invalidate_tag of 10 tagged keys: median {tag_us:.1} µs; one hand-written GET: median {get_us:.1} µs ({:.2} round trips){}",
            tag_us / get_us,
            proxy_cpu(proxy, cpu, started.elapsed())
        );
    }

    if runs("batch") {
        let (cpu, started) = mark();
        let connection = threaded.block_on(ConnectionManager::new(client.clone())).expect("conn");
        let next = AtomicU64::new(5_000_000);
        let cold_ids = || {
            let first = next.fetch_add(BATCH, Relaxed);
            (first..first + BATCH).collect::<Vec<u64>>()
        };
        let (cold, cold_ns, hand_ns) = interleaved(
            &threaded,
            rounds,
            20,
            || {
                let ids = cold_ids();
                async move { batch_vehicles(&ids).await.unwrap() }
            },
            || {
                let ids = cold_ids();
                let connection = connection.clone();
                async move { hand_batch(&connection, &ids).await }
            },
        );
        let warm: Vec<u64> = (1..=BATCH).collect();
        threaded.block_on(async {
            assert_eq!(batch_vehicles(&warm).await.unwrap().len(), warm.len());
            assert_eq!(hand_batch(&connection, &warm).await.len(), warm.len());
        });
        let (hot, warm_ns, mget_ns) = interleaved(
            &threaded,
            rounds,
            50,
            || async { batch_vehicles(&warm).await.unwrap() },
            || hand_batch(&connection, &warm),
        );
        println!(
            "batch: 100 ids, cold: #[cached_batch] / hand-written MGET + query + pipelined SET PX: {cold:.3}x ({:.1} vs {:.1} µs)",
            cold_ns / 1e3,
            hand_ns / 1e3
        );
        println!(
            "batch: 100 ids, warm: #[cached_batch] / hand-written MGET + decode: {hot:.3}x ({:.1} vs {:.1} µs){}",
            warm_ns / 1e3,
            mget_ns / 1e3,
            proxy_cpu(proxy, cpu, started.elapsed())
        );
    }

    let (redis_after, near_after) = (stats(&REDIS), stats(&NEAR));
    // The batch part's misses are its cold ids (each filled by its one query).
    let batch_misses = REDIS.get().unwrap().stats_of("batch_vehicles").misses;
    let misses = redis_after.misses - redis_before.misses - batch_misses;
    let fills = FILLS.load(Relaxed);
    assert!(misses <= fills, "only the miss part missed on Redis ({misses} misses, {fills} fills)");
    assert_eq!(near_after.misses, near_before.misses, "every near call was a hit");
}
