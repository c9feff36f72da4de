//! Topology changes never disable a cache: a 3-primary Redis Cluster reshards hundreds of
//! slots twice (`redis-cli --cluster reshard`: the lowest 300 slots of node 0 to node 1,
//! then the same slots on to node 2) while two caches take traffic: readers on both, key
//! invalidations and pattern invalidations on one. The moved slots include the slot of the
//! invalidation index that the pattern invalidations walk (`t:#idx:dealer:<d>:`, its
//! dealer chosen so), and of some of the keys.
//!
//! Afterwards:
//!
//! - every instance caches again: breaker closed, no invalidation pending, a repeated read
//!   is a hit;
//! - a pattern invalidation that returns leaves no matching key in the cluster;
//! - no read returned a value older than an invalidation that returned (on the issuing
//!   cache, older than one it issued at all: a kept one is covered there until replayed).
//!
//! Prints one line (`resharding: ...`); see it with
//! `cargo test -p cache-tests --test resharding -- --nocapture`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::{BreakerState, Cache, Error};
use cache_tests::RedisCluster;

const PREFIX: &str = "t:";
const TTL: Duration = Duration::from_secs(300);
/// Slots moved by each reshard: the lowest this many slots of the source node.
const MOVED: u16 = 300;
const CARS: u64 = 40;
/// Other keys in each moving slot, and their size.
const FILLER_PER_SLOT: usize = 100;
const FILLER_BYTES: usize = 2000;
/// Fields of the large hash that moves with the index.
const BIG_FIELDS: usize = 60_000;
/// The caches' command timeout: shorter than the large hash's migration.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// The circuit breaker's longest cool-down (README, "Circuit breaker").
const MAX_COOL_DOWN: Duration = Duration::from_secs(30);

/// Redis Cluster's key slot: CRC16 (XMODEM) of the key (no hash tags in these keys).
fn slot(key: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in key.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

/// The versions of the truth, the floor every reader checks against, and the floor of
/// invalidations that returned `Ok` (what another instance must respect).
#[derive(Default)]
struct Db {
    versions: Mutex<HashMap<String, u64>>,
    issued: Mutex<HashMap<String, u64>>,
    landed: Mutex<HashMap<String, u64>>,
}

fn get(map: &Mutex<HashMap<String, u64>>, key: &str, default: u64) -> u64 {
    *map.lock().unwrap().get(key).unwrap_or(&default)
}

fn raise(map: &Mutex<HashMap<String, u64>>, key: &str, to: u64) {
    let mut map = map.lock().unwrap();
    let floor = map.entry(key.to_owned()).or_insert(0);
    *floor = (*floor).max(to);
}

impl Db {
    fn bump(&self, key: &str) -> u64 {
        let mut versions = self.versions.lock().unwrap();
        let version = versions.entry(key.to_owned()).or_insert(1);
        *version += 1;
        *version
    }
}

async fn read(cache: &Cache, db: &Arc<Db>, key: &str) -> u64 {
    let db = Arc::clone(db);
    let owned = key.to_owned();
    cache
        .get_or_load(key, TTL, || async move { Ok::<u64, Error>(get(&db.versions, &owned, 1)) })
        .await
        .unwrap()
}

/// The port of the primary serving `slot`, from `CLUSTER NODES` of node 0.
fn owner(cluster: &RedisCluster, slot: u16) -> u16 {
    for line in cluster.cli(0, &["CLUSTER", "NODES"]).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].contains("master") {
            continue;
        }
        let port = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
        for range in &fields[8..] {
            if range.starts_with('[') {
                continue; // a migration in progress
            }
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            if (first.parse().unwrap()..=last.parse().unwrap()).contains(&slot) {
                return port;
            }
        }
    }
    panic!("no owner for slot {slot}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resharding_twice_during_traffic_leaves_every_instance_caching_and_coherent() {
    let cluster = RedisCluster::start(3, 0);
    let ports: Vec<u16> = cluster
        .urls()
        .iter()
        .map(|url| url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    // A dealer whose index (`t:#idx:dealer:<d>:`) lives in a slot both reshards move.
    let dealer = (0..100_000)
        .find(|d| slot(&format!("{PREFIX}#idx:dealer:{d}:")) < MOVED)
        .expect("a dealer whose index moves");
    let index_slot = slot(&format!("{PREFIX}#idx:dealer:{dealer}:"));
    assert_eq!(owner(&cluster, index_slot), ports[0]);
    let mut keys: Vec<String> = (0..CARS).map(|car| format!("dealer:{dealer}:car:{car}")).collect();
    // And a few keys of the same dealer whose own slots move.
    keys.extend(
        (CARS..100_000)
            .map(|car| format!("dealer:{dealer}:car:{car}"))
            .filter(|key| slot(&format!("{PREFIX}{key}")) < MOVED)
            .take(4),
    );
    let keys = Arc::new(keys);
    // Other data in the moving slots, so that the migrations take a while (and the caches'
    // commands meet `ASK`, `TRYAGAIN` and slow nodes).
    {
        let mut raw = cluster.connection().await;
        let mut tags = Vec::new();
        let mut n = 0u64;
        while tags.len() < usize::from(MOVED) {
            let tag = format!("f{n}");
            n += 1;
            if slot(&tag) < MOVED && !tags.iter().any(|other: &String| slot(other) == slot(&tag)) {
                tags.push(tag);
            }
        }
        let filler = "x".repeat(FILLER_BYTES);
        for tag in &tags {
            let mut pipe = redis::pipe();
            for i in 0..FILLER_PER_SLOT {
                pipe.cmd("SET").arg(format!("other:{{{tag}}}:{i}")).arg(&filler).ignore();
            }
            let () = pipe.query_async(&mut raw).await.unwrap();
        }
        // A large hash in the index's slot: migrating it blocks both nodes for longer
        // than the caches' command timeout.
        let tag = (0..)
            .map(|n| format!("b{n}"))
            .find(|tag| slot(tag) == index_slot)
            .expect("a tag in the index's slot");
        for chunk in 0..BIG_FIELDS / 10_000 {
            let mut hset = redis::cmd("HSET");
            hset.arg(format!("other:{{{tag}}}:big"));
            for field in chunk * 10_000..(chunk + 1) * 10_000 {
                hset.arg(field).arg(&filler[..100]);
            }
            let () = hset.query_async(&mut raw).await.unwrap();
        }
    }
    let build = || async {
        Cache::builder()
            .redis_cluster(cluster.urls())
            .prefix(PREFIX)
            .command_timeout(COMMAND_TIMEOUT)
            .build()
            .await
            .unwrap()
    };
    let (issuer, other) = (build().await, build().await);
    let db = Arc::new(Db::default());
    for key in keys.iter() {
        read(&issuer, &db, key).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let stale = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (worker, cache) in
        [issuer.clone(), issuer.clone(), other.clone(), other.clone()].into_iter().enumerate()
    {
        let own = worker < 2;
        let (db, keys, stop) = (Arc::clone(&db), Arc::clone(&keys), Arc::clone(&stop));
        let (reads, stale) = (Arc::clone(&reads), Arc::clone(&stale));
        tasks.push(tokio::spawn(async move {
            let mut i = worker * 7;
            while !stop.load(SeqCst) {
                let key = &keys[i % keys.len()];
                i += 3;
                let floors = if own { &db.issued } else { &db.landed };
                let floor = get(floors, key, 0);
                let got = read(&cache, &db, key).await;
                reads.fetch_add(1, SeqCst);
                if got < floor {
                    stale.lock().unwrap().push((key.clone(), got, floor, own));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    let invalidations = Arc::new(AtomicU64::new(0));
    let kept = Arc::new(AtomicU64::new(0));
    let kinds: Arc<Mutex<HashMap<&'static str, u64>>> = Arc::default();
    {
        let (cache, db, keys, stop) =
            (issuer.clone(), Arc::clone(&db), Arc::clone(&keys), Arc::clone(&stop));
        let (invalidations, kept) = (Arc::clone(&invalidations), Arc::clone(&kept));
        let kinds = Arc::clone(&kinds);
        tasks.push(tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(SeqCst) {
                round += 1;
                // Every fifth round a pattern invalidation of the whole dealer.
                let changed: Vec<(String, u64)> = if round.is_multiple_of(5) {
                    keys.iter().map(|key| (key.clone(), db.bump(key))).collect()
                } else {
                    let key = keys[round * 7 % keys.len()].clone();
                    let version = db.bump(&key);
                    vec![(key, version)]
                };
                let outcome = if round.is_multiple_of(5) {
                    cache.invalidate_pattern(&format!("dealer:{dealer}:*")).await
                } else {
                    cache.invalidate(&changed[0].0).await
                };
                invalidations.fetch_add(1, SeqCst);
                // Returned, either way: the issuing cache never serves older (a kept
                // removal covers its keys until replayed).
                for (key, version) in &changed {
                    raise(&db.issued, key, *version);
                }
                match outcome {
                    Ok(_) => {
                        for (key, version) in &changed {
                            raise(&db.landed, key, *version);
                        }
                    }
                    Err(error) => {
                        kept.fetch_add(1, SeqCst);
                        *kinds.lock().unwrap().entry(error.kind().as_str()).or_insert(0) += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    let started = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.reshard(0, 1, usize::from(MOVED));
        let first = owner(&cluster, index_slot);
        cluster.reshard(1, 2, usize::from(MOVED));
        let second = owner(&cluster, index_slot);
        (cluster, first, second)
    });
    let (cluster, first, second) = cluster.await.unwrap();
    let resharded = started.elapsed();
    assert_eq!((first, second), (ports[1], ports[2]), "the index's slot moved twice");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    for task in tasks {
        task.await.unwrap();
    }

    // Every instance caches again, within the breaker's longest cool-down: a probe that
    // met a node blocked by a migration (the large hash) doubles the cool-down, up to 30 s
    // (README, "Circuit breaker"). On a quiet machine this takes no time at all; under
    // load, the reshard's probes fail more often and the last cool-down is longer.
    let deadline = Instant::now() + MAX_COOL_DOWN + Duration::from_secs(5);
    let recovering = Instant::now();
    for cache in [&issuer, &other] {
        loop {
            let health = cache.health().await;
            if health.breaker == BreakerState::Closed && health.pending_invalidations == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "an instance does not recover: {health:?}");
            let _ = read(cache, &db, &keys[0]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for key in keys.iter() {
            assert_eq!(read(cache, &db, key).await, get(&db.versions, key, 1), "{key}");
        }
        let hits = cache.stats().hits;
        read(cache, &db, &keys[keys.len() - 1]).await;
        assert!(cache.stats().hits > hits, "a repeated read is a hit");
    }
    let recovered = recovering.elapsed();
    // A pattern invalidation that returns leaves no matching key.
    let removed = issuer.invalidate_pattern(&format!("dealer:{dealer}:*")).await.unwrap();
    assert!(removed >= keys.len() as u64, "{removed} of {}", keys.len());
    let mut left = Vec::new();
    for port in &ports {
        let found = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--scan", "--pattern"])
            .arg(format!("{PREFIX}dealer:{dealer}:*"))
            .output()
            .unwrap();
        left.extend(String::from_utf8_lossy(&found.stdout).lines().map(str::to_owned));
    }
    assert!(left.is_empty(), "keys left after the pattern invalidation: {left:?}");
    let stale = stale.lock().unwrap().clone();
    assert!(stale.is_empty(), "reads older than an invalidation: {stale:?}");
    drop(cluster);
    println!(
        "resharding: 2 x {MOVED} slots (index slot {index_slot}) in {resharded:?} during {} reads and {} invalidations ({} kept for replay: {:?}); both instances caching after {recovered:?}, 0 stale",
        reads.load(SeqCst),
        invalidations.load(SeqCst),
        kept.load(SeqCst),
        kinds.lock().unwrap()
    );
}
