//! Batch loads (`#[cached_batch]`, `Cache::get_or_load_many`, `Cache::get_many`) on the
//! memory store, a standalone Redis and a 3-master Redis Cluster: the same scenarios on each
//! (`memory`, `standalone`, `cluster`), each with a cache of its own prefix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_runtime::{cached, cached_batch, invalidates, Cache};
use cache_tests::{RedisCluster, RedisServer};
use tokio::sync::Semaphore;

/// Where a scenario runs.
enum Deployment {
    Memory,
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Deployment {
    /// A fresh cache (on Redis: of its own prefix).
    async fn cache(&self, prefix: &str) -> Cache {
        let builder = Cache::builder().prefix(prefix).command_timeout(Duration::from_secs(2));
        let builder = match self {
            Deployment::Memory => return Cache::memory(),
            Deployment::Standalone(server) => builder.redis(server.url()),
            Deployment::Cluster(cluster) => builder.redis_cluster(cluster.urls()),
        };
        builder.build().await.expect("cache")
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Vehicle {
    id: u64,
    price: u32,
}

/// A price list, through an alias: the batch return is read from the type, not its spelling.
type Prices = HashMap<u64, u32>;

/// The "database": rows by id, every query recorded, failures and a gate on demand.
#[derive(Default)]
struct Db {
    rows: Mutex<HashMap<u64, u32>>,
    /// The ids of every batch query, in order.
    queries: Mutex<Vec<Vec<u64>>>,
    /// Ids loaded one by one (by the single `#[cached]` function).
    singles: Mutex<Vec<u64>>,
    fail: AtomicBool,
    /// When set, a batch query waits for a permit after it is recorded.
    gate: Mutex<Option<Arc<Semaphore>>>,
}

impl Db {
    fn with_rows(ids: impl IntoIterator<Item = u64>) -> Db {
        let db = Db::default();
        db.rows.lock().unwrap().extend(ids.into_iter().map(|id| (id, 100)));
        db
    }

    async fn query(&self, ids: &[u64]) -> Result<HashMap<u64, Vehicle>, String> {
        self.queries.lock().unwrap().push(ids.to_vec());
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.acquire().await.expect("gate").forget();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.fail.load(SeqCst) {
            return Err("database down".into());
        }
        let rows = self.rows.lock().unwrap();
        Ok(ids
            .iter()
            .filter_map(|id| rows.get(id).map(|&price| (*id, Vehicle { id: *id, price })))
            .collect())
    }

    fn queries(&self) -> Vec<Vec<u64>> {
        std::mem::take(&mut *self.queries.lock().unwrap())
    }
}

struct Service {
    cache: Cache,
    db: Db,
}

impl Service {
    #[cached_batch(key = "vehicle:<ids>", ttl = "15m", cache = self.cache)]
    async fn vehicles(&self, ids: &[u64]) -> Result<HashMap<u64, Vehicle>, String> {
        self.db.query(ids).await
    }

    /// The same entries, one at a time.
    #[cached(key = "vehicle:<id>", ttl = "15m", cache = self.cache)]
    async fn vehicle(&self, id: u64) -> Result<Option<Vehicle>, String> {
        self.db.singles.lock().unwrap().push(id);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let price = self.db.rows.lock().unwrap().get(&id).copied();
        Ok(price.map(|price| Vehicle { id, price }))
    }

    /// Absent results cached; `Vec<K>` and a plain map.
    #[cached_batch(key = "car:<ids>", ttl = "15m", absent_ttl = "30s", cache = self.cache)]
    async fn cars(&self, ids: Vec<u64>) -> HashMap<u64, Vehicle> {
        self.db.query(&ids).await.unwrap_or_default()
    }

    /// Tagged per element: with its dealer (rendered once per call) and with its own id.
    #[cached_batch(
        key = "listing:<ids>",
        ttl = "15m",
        tags = ["dealer:<dealer>", "listing-of:<ids>"],
        cache = self.cache
    )]
    async fn listings(&self, dealer: u64, ids: &[u64]) -> Result<HashMap<u64, Vehicle>, String> {
        let _ = dealer;
        self.db.query(ids).await
    }

    #[invalidates("vehicle:<id>", cache = self.cache)]
    async fn reprice(&self, id: u64, price: u32) -> Result<(), String> {
        self.db.rows.lock().unwrap().insert(id, price);
        Ok(())
    }
}

/// A free function, its cache a parameter, its return type an alias.
#[cached_batch(key = "price:<list>:<ids>", ttl = "1m", cache = cache, name = "prices")]
async fn prices(cache: &Cache, list: &str, ids: Vec<u64>, calls: &AtomicU32) -> Prices {
    calls.fetch_add(1, SeqCst);
    ids.iter().map(|id| (*id, u32::try_from(*id).unwrap() * 10 + list.len() as u32)).collect()
}

async fn service(
    deployment: &Deployment,
    prefix: &str,
    rows: std::ops::RangeInclusive<u64>,
) -> Service {
    Service { cache: deployment.cache(prefix).await, db: Db::with_rows(rows) }
}

/// The body gets exactly the missed elements, deduplicated, in first-seen order; nothing
/// runs for an all-hit or empty batch; the single `#[cached]` shares the entries.
async fn missed_elements(deployment: &Deployment) {
    let s = service(deployment, "b1:", 1..=200).await;
    assert_eq!(s.vehicle(1).await.unwrap(), Some(Vehicle { id: 1, price: 100 }));
    assert_eq!(s.vehicle(2).await.unwrap().unwrap().id, 2);
    // First-seen order (4, 30) is not the keys' order ("vehicle:30" < "vehicle:4").
    let got = s.vehicles(&[4, 1, 30, 4, 2, 30]).await.unwrap();
    assert_eq!(s.db.queries(), [vec![4, 30]], "only the missed, distinct, first-seen order");
    let mut ids: Vec<u64> = got.keys().copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 4, 30]);
    assert_eq!(got[&30], Vehicle { id: 30, price: 100 });
    // Every element hits now: no body; the batch's entries are hits for the single function.
    assert_eq!(s.vehicles(&[4, 30, 2, 1]).await.unwrap().len(), 4);
    assert!(s.db.queries().is_empty());
    assert_eq!(s.vehicle(30).await.unwrap().unwrap().id, 30);
    assert_eq!(*s.db.singles.lock().unwrap(), [1, 2], "the single function hit the batch's entry");
    // Empty input: no body (and no store round trip, see `warm_batch_is_one_mget`).
    assert!(s.vehicles(&[]).await.unwrap().is_empty());
    assert!(s.db.queries().is_empty());
    // Counted per element, under the function's name; the batch sizes in the histogram.
    let stats = s.cache.stats_of("vehicles");
    assert_eq!((stats.hits, stats.misses, stats.loads), (2 + 4, 2, 2), "{stats:?}");
    let text = s.cache.prometheus();
    assert!(text.contains("cache_batch_size_count{function=\"vehicles\"} 3\n"), "{text}");
    assert!(text.contains("cache_batch_size_sum{function=\"vehicles\"} 8\n"), "{text}");
    // A free function, `Vec<K>`, a second placeholder, an alias of the map.
    let calls = AtomicU32::new(0);
    let first = prices(&s.cache, "eu", vec![5, 6], &calls).await;
    let again = prices(&s.cache, "eu", vec![6, 5], &calls).await;
    assert_eq!(first, Prices::from([(5, 52), (6, 62)]));
    assert_eq!((again, calls.load(SeqCst)), (first, 1));
    prices(&s.cache, "us", vec![5], &calls).await;
    assert_eq!(calls.load(SeqCst), 2, "another list renders other keys");
}

/// Elements the body leaves out: absent; cached for `absent_ttl` only when it is set.
async fn absent_elements(deployment: &Deployment) {
    let s = service(deployment, "b2:", 1..=1).await;
    assert_eq!(s.vehicles(&[1, 2]).await.unwrap().keys().collect::<Vec<_>>(), [&1]);
    assert_eq!(s.vehicles(&[1, 2]).await.unwrap().len(), 1);
    assert_eq!(s.db.queries(), [vec![1, 2], vec![2]], "without absent_ttl: loaded again");
    assert_eq!(s.cars(vec![1, 2]).await.len(), 1);
    assert_eq!(s.cars(vec![2, 1]).await.len(), 1);
    assert_eq!(s.db.queries(), [vec![1, 2]], "with absent_ttl: the absent result is a hit");
}

/// `Err` stores nothing: the next call loads every element again.
async fn errors_store_nothing(deployment: &Deployment) {
    let s = service(deployment, "b3:", 1..=3).await;
    s.db.fail.store(true, SeqCst);
    assert_eq!(s.vehicles(&[1, 2, 3]).await, Err("database down".to_owned()));
    s.db.fail.store(false, SeqCst);
    assert_eq!(s.vehicles(&[1, 2, 3]).await.unwrap().len(), 3);
    assert_eq!(s.db.queries(), [vec![1, 2, 3], vec![1, 2, 3]]);
    let stats = s.cache.stats_of("vehicles");
    assert_eq!(stats.loads, 6, "{stats:?}");
}

/// Invalidating one element reloads only it.
async fn one_invalidation_reloads_one(deployment: &Deployment) {
    let s = service(deployment, "b4:", 1..=3).await;
    s.vehicles(&[1, 2, 3]).await.unwrap();
    s.reprice(2, 150).await.unwrap();
    let got = s.vehicles(&[1, 2, 3]).await.unwrap();
    assert_eq!(got[&2].price, 150);
    assert_eq!(s.db.queries(), [vec![1, 2, 3], vec![2]]);
}

/// A batch whose body runs across an invalidation of one of its keys returns what it
/// loaded, but does not store that key (it may predate the write); the others are stored.
async fn gated_invalidation(deployment: &Deployment) {
    let s = Arc::new(service(deployment, "b5:", 1..=3).await);
    let gate = Arc::new(Semaphore::new(0));
    *s.db.gate.lock().unwrap() = Some(Arc::clone(&gate));
    let batch = tokio::spawn({
        let s = Arc::clone(&s);
        async move { s.vehicles(&[1, 2, 3]).await }
    });
    while s.db.queries.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The body read the database; the row changes, the key is invalidated.
    s.reprice(2, 175).await.unwrap();
    gate.add_permits(1);
    let got = batch.await.unwrap().unwrap();
    assert_eq!(got.len(), 3);
    *s.db.gate.lock().unwrap() = None;
    s.db.queries();
    let got = s.vehicles(&[1, 2, 3]).await.unwrap();
    assert_eq!(got[&2].price, 175, "the value loaded before the write was not stored");
    assert_eq!(s.db.queries(), [vec![2]], "1 and 3 were stored");
}

/// Overlapping concurrent batches load each key once; a single caller that misses a key a
/// batch is loading gets the batch's value.
async fn overlapping_batches(deployment: &Deployment) {
    let s = Arc::new(service(deployment, "b6:", 1..=40).await);
    let gate = Arc::new(Semaphore::new(0));
    *s.db.gate.lock().unwrap() = Some(Arc::clone(&gate));
    let spawn = |ids: Vec<u64>| {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.vehicles(&ids).await.unwrap() })
    };
    let first = spawn((1..=20).collect());
    while s.db.queries.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Started while the first batch loads 1..=20.
    let second = spawn((10..=30).rev().collect());
    let third = spawn((25..=40).chain(1..=5).collect());
    let single = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.vehicle(7).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.add_permits(100);
    assert_eq!(first.await.unwrap().len(), 20);
    assert_eq!(second.await.unwrap().len(), 21);
    assert_eq!(third.await.unwrap().len(), 21);
    assert_eq!(single.await.unwrap(), Some(Vehicle { id: 7, price: 100 }));
    let mut loaded: Vec<u64> = s.db.queries().into_iter().flatten().collect();
    loaded.sort_unstable();
    assert_eq!(loaded, (1..=40).collect::<Vec<_>>(), "each key loaded once");
    assert!(s.db.singles.lock().unwrap().is_empty(), "the single caller waited for the batch");
}

/// The programmatic API: `get_many` (one lookup) and `get_or_load_many` (same semantics).
async fn programmatic(deployment: &Deployment) {
    let cache = deployment.cache("b7:").await;
    cache.set("n:1", &1u32, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get_many::<u32>(&["n:1", "n:2"]).await.unwrap(), [Some(1), None]);
    assert!(cache.get_many::<u32>(&["bad key"]).await.is_err());
    let asked = Mutex::new(Vec::new());
    let load = |missed: Vec<String>| {
        asked.lock().unwrap().push(missed.clone());
        async move { Ok::<_, cache_runtime::Error>(missed.into_iter().map(|key| (key, 2u32)).collect()) }
    };
    let got = cache
        .get_or_load_many(&["n:1", "n:2", "n:2"], Duration::from_secs(60), load)
        .await
        .unwrap();
    assert_eq!(got, HashMap::from([("n:1".to_owned(), 1), ("n:2".to_owned(), 2)]));
    assert_eq!(cache.get_many::<u32>(&["n:2"]).await.unwrap(), [Some(2)]);
    assert_eq!(*asked.lock().unwrap(), [vec!["n:2".to_owned()]]);
}

/// A batch whose future is dropped while its body runs leaves nothing stuck: a single
/// caller waiting on one of its keys loads it itself, a batch waiting on another loads it
/// too, and the next batch for the same keys loads what is missing and caches it (a pending
/// marker the dropped batch left in Redis is taken over, not waited for).
async fn cancelled_batch(deployment: &Deployment) {
    let s = Arc::new(service(deployment, "b8:", 1..=4).await);
    let gate = Arc::new(Semaphore::new(0));
    *s.db.gate.lock().unwrap() = Some(Arc::clone(&gate));
    let cancelled = tokio::spawn({
        let s = Arc::clone(&s);
        async move { s.vehicles(&[1, 2, 3]).await }
    });
    while s.db.queries.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Both wait on keys the first batch leads (joined while its body runs).
    let single = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.vehicle(2).await })
    };
    let overlapping = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.vehicles(&[3, 4]).await })
    };
    // (Had they not joined yet, they would load for themselves: the same outcome.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    // The overlapping batch's body now runs with its keys (3, then 4): let it through.
    gate.add_permits(100);
    // Bounded: each is a few round trips and one 20 ms query once the first batch is gone.
    let bound = Duration::from_secs(20);
    let single = tokio::time::timeout(bound, single).await.expect("the single caller is not stuck");
    assert_eq!(single.unwrap().unwrap(), Some(Vehicle { id: 2, price: 100 }));
    let overlapping =
        tokio::time::timeout(bound, overlapping).await.expect("the other batch is not stuck");
    assert_eq!(overlapping.unwrap().unwrap().len(), 2);
    *s.db.gate.lock().unwrap() = None;
    assert_eq!(s.db.queries(), [vec![1, 2, 3], vec![3, 4]]);
    assert_eq!(*s.db.singles.lock().unwrap(), [2], "the single caller loaded its key itself");
    // 2, 3, 4 were cached by the others; 1 is loaded now and cached.
    assert_eq!(s.vehicles(&[1, 2, 3, 4]).await.unwrap().len(), 4);
    assert_eq!(s.db.queries(), [vec![1]]);
    assert_eq!(s.vehicles(&[1, 2, 3, 4]).await.unwrap().len(), 4);
    assert!(s.db.queries().is_empty(), "every key cached");
}

/// `tags = [...]`: each element's entry carries its rendered tags; a tag of one element
/// reloads only it, the call-wide tag all of them; a gated load across `invalidate_tag`
/// does not store the key.
async fn tagged_elements(deployment: &Deployment) {
    let s = Arc::new(service(deployment, "b9:", 1..=3).await);
    assert_eq!(s.listings(7, &[1, 2, 3]).await.unwrap().len(), 3);
    assert_eq!(s.cache.invalidate_tag("listing-of:2").await.unwrap(), 1);
    assert_eq!(s.listings(7, &[1, 2, 3]).await.unwrap().len(), 3);
    assert_eq!(s.db.queries(), [vec![1, 2, 3], vec![2]]);
    assert_eq!(s.cache.invalidate_tag("dealer:8").await.unwrap(), 0, "another dealer's tag");
    assert_eq!(s.cache.invalidate_tag("dealer:7").await.unwrap(), 3);
    // Gated: the tag of 3 is invalidated while the body runs.
    let gate = Arc::new(Semaphore::new(0));
    *s.db.gate.lock().unwrap() = Some(Arc::clone(&gate));
    let batch = tokio::spawn({
        let s = Arc::clone(&s);
        async move { s.listings(7, &[1, 2, 3]).await }
    });
    while s.db.queries.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    s.cache.invalidate_tag("listing-of:3").await.unwrap();
    gate.add_permits(1);
    assert_eq!(batch.await.unwrap().unwrap().len(), 3);
    *s.db.gate.lock().unwrap() = None;
    assert_eq!(s.listings(7, &[1, 2, 3]).await.unwrap().len(), 3);
    assert_eq!(s.db.queries(), [vec![1, 2, 3], vec![3]], "3 was not stored");
}

async fn every_scenario(deployment: Deployment) {
    missed_elements(&deployment).await;
    absent_elements(&deployment).await;
    errors_store_nothing(&deployment).await;
    one_invalidation_reloads_one(&deployment).await;
    gated_invalidation(&deployment).await;
    overlapping_batches(&deployment).await;
    programmatic(&deployment).await;
    cancelled_batch(&deployment).await;
    tagged_elements(&deployment).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    every_scenario(Deployment::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone() {
    every_scenario(Deployment::Standalone(RedisServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster() {
    every_scenario(Deployment::Cluster(RedisCluster::start(3, 0))).await;
}

/// A warm batch of 100 is one `MGET` and nothing else (the server's own command counts);
/// an empty batch sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_batch_is_one_mget() {
    let server = RedisServer::start();
    let s = Service {
        cache: Cache::builder().redis(server.url()).prefix("w:").build().await.unwrap(),
        db: Db::with_rows(1..=100),
    };
    let ids: Vec<u64> = (1..=100).collect();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    // The batch after one that missed looks up through the begin-fill script (see
    // `a_cold_batch_after_one_that_missed_is_two_scripts`); after hits, `MGET`.
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    let mut raw = server.connection().await;
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut raw).await.unwrap();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    assert!(s.vehicles(&[]).await.unwrap().is_empty());
    assert_eq!(commands(&mut raw).await, [("mget".to_owned(), 1)]);
}

/// The commands a standalone server ran since its last `CONFIG RESETSTAT`, by name (sorted),
/// leaving out the test's own.
async fn commands(raw: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(raw).await.unwrap();
    let mut calls: Vec<(String, u64)> = info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info" && name != "config|resetstat")
        .collect();
    calls.sort();
    calls
}

/// A standalone service of its own with rows `1..=rows`, after one cold batch of `warm`
/// (its scripts loaded, the server's eviction settings read) and the same batch again (all
/// hits: the next lookup is an `MGET`), its command counts reset.
async fn cold_standalone(
    prefix: &str,
    rows: u64,
    warm: u64,
) -> (RedisServer, Service, redis::aio::MultiplexedConnection) {
    let server = RedisServer::start();
    let s = Service {
        cache: Cache::builder().redis(server.url()).prefix(prefix).build().await.unwrap(),
        db: Db::with_rows(1..=rows),
    };
    let first: Vec<u64> = (1..=warm).collect();
    assert_eq!(s.vehicles(&first).await.unwrap().len(), first.len());
    assert_eq!(s.vehicles(&first).await.unwrap().len(), first.len());
    assert_eq!(s.db.queries(), [first]);
    let mut raw = server.connection().await;
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut raw).await.unwrap();
    (server, s, raw)
}

/// The commands a cold batch of `n` keys sharing one index runs inside its scripts
/// (`INFO commandstats` counts them too): per key a `SET NX GET` in begin-fill (the marker
/// placed where nothing is), a `GET` and a `SET` in fill; per script call of begin-fill,
/// one server clock read and one update of the index (one `ZADD` for all its keys, its
/// pruning and expiry).
fn in_scripts(n: u64, calls: u64) -> [(String, u64); 8] {
    [
        ("exists".to_owned(), calls),
        ("get".to_owned(), n),
        ("pexpire".to_owned(), calls),
        ("pttl".to_owned(), calls),
        ("set".to_owned(), 2 * n),
        ("time".to_owned(), calls),
        ("zadd".to_owned(), calls),
        ("zremrangebyscore".to_owned(), calls),
    ]
}

/// What a cold batch on a standalone server should have run: `scripts` `EVALSHA`, one
/// `MGET`, and what they ran inside.
fn cold(n: u64, scripts: u64) -> Vec<(String, u64)> {
    let mut calls = in_scripts(n, scripts / 2).to_vec();
    calls.push(("evalsha".to_owned(), scripts));
    calls.push(("mget".to_owned(), 1));
    calls.sort();
    calls
}

/// A cold batch of 100 on a standalone Redis (the function's previous batch hit) is one
/// `MGET`, one begin-fill script and one fill script (two `EVALSHA`), and nothing else (but
/// what the scripts run inside, see [`in_scripts`]); every value is stored and indexed (a
/// pattern invalidation finds them all through the index, without a scan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_batch_is_one_mget_and_two_scripts() {
    let (_server, s, mut raw) = cold_standalone("c:", 200, 100).await;
    let ids: Vec<u64> = (101..=200).collect();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    assert_eq!(commands(&mut raw).await, cold(100, 2));
    assert_eq!(s.db.queries(), std::slice::from_ref(&ids));
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    assert!(s.db.queries().is_empty(), "all 100 were stored");
    s.cache.invalidate_pattern("vehicle:1*").await.unwrap();
    assert_eq!(s.cache.stats().pattern_scans, 0, "the index served the pattern");
    let got = s.vehicles(&ids).await.unwrap();
    assert_eq!(got.len(), 100);
    let reloaded: Vec<u64> = (101..=199).collect();
    assert_eq!(s.db.queries(), [reloaded], "every key the pattern matches was indexed");
}

/// A batch over the chunk size (500 keys per script call) is split: 1,200 keys are one
/// `MGET`, three begin-fill and three fill scripts; all are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_chunk_size_is_split() {
    let (_server, s, mut raw) = cold_standalone("k:", 1300, 1).await;
    let ids: Vec<u64> = (101..=1300).collect();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 1200);
    // Each begin-fill call extends the index's life only when it lasts less than it should
    // (`PEXPIRE` after `PTTL`): a call in the same millisecond as the previous one skips it.
    let (pexpire, others): (Vec<_>, Vec<_>) =
        commands(&mut raw).await.into_iter().partition(|(name, _)| name == "pexpire");
    let expected: Vec<_> =
        cold(1200, 6).into_iter().filter(|(name, _)| name != "pexpire").collect();
    assert_eq!(others, expected);
    assert!(matches!(pexpire.as_slice(), [(_, 1..=3)]), "{pexpire:?}");
    assert_eq!(s.db.queries(), std::slice::from_ref(&ids));
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut raw).await.unwrap();
    // After a batch that missed, the lookup is the begin-fill script (one per chunk): all
    // hits, nothing written or indexed.
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 1200);
    assert!(s.db.queries().is_empty(), "all 1,200 were stored");
    let calls = [("evalsha".to_owned(), 3), ("set".to_owned(), 1200)];
    assert_eq!(commands(&mut raw).await, calls);
}

/// After a batch of the function that mostly missed, a cold batch is two round trips: the
/// begin-fill script is the lookup (no `MGET`), then the fill script; every value stored.
/// The next batch (all hits) still looks up through the script, and the one after that,
/// the previous having hit, is one `MGET` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_batch_after_one_that_missed_is_two_scripts() {
    let (_server, s, mut raw) = cold_standalone("f:", 300, 100).await;
    let first: Vec<u64> = (101..=200).collect();
    assert_eq!(s.vehicles(&first).await.unwrap().len(), 100);
    assert_eq!(commands(&mut raw).await, cold(100, 2), "after hits: the MGET");
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut raw).await.unwrap();
    let ids: Vec<u64> = (201..=300).collect();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    let mut two_scripts = in_scripts(100, 1).to_vec();
    two_scripts.push(("evalsha".to_owned(), 2));
    two_scripts.sort();
    assert_eq!(commands(&mut raw).await, two_scripts, "after misses: no MGET");
    assert_eq!(s.db.queries(), [first, ids.clone()]);
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut raw).await.unwrap();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    assert!(s.db.queries().is_empty(), "all 100 were stored");
    let lookup = [("evalsha".to_owned(), 1), ("set".to_owned(), 100)];
    assert_eq!(commands(&mut raw).await, lookup, "the lookup script, nothing written");
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut raw).await.unwrap();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    assert_eq!(commands(&mut raw).await, [("mget".to_owned(), 1)], "after hits: the MGET");
    // The lookup's markers were indexed: a pattern invalidation reaches every key.
    s.cache.invalidate_pattern("vehicle:2*").await.unwrap();
    assert_eq!(s.cache.stats().pattern_scans, 0, "the index served the pattern");
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    let reloaded: Vec<u64> = (201..=299).collect();
    assert_eq!(s.db.queries(), [reloaded], "every key the pattern matches was indexed");
}

/// A value over `max_value_bytes` in a batch is returned, not stored, and does not keep the
/// others from being stored; its marker is gone (the next batch loads only it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_large_in_a_batch_is_returned_not_stored() {
    let server = RedisServer::start();
    let s = Service {
        cache: Cache::builder()
            .redis(server.url())
            .prefix("t:")
            .max_value_bytes(200)
            .build()
            .await
            .unwrap(),
        db: Db::with_rows(1..=3),
    };
    let keys = ["big:1", "big:2", "big:3"];
    let loaded = Mutex::new(Vec::new());
    let load = |missed: Vec<String>| async {
        loaded.lock().unwrap().push(missed.clone());
        let long = |key: &str| if key == "big:2" { 500 } else { 5 };
        Ok::<_, cache_runtime::Error>(
            missed.into_iter().map(|k| (k.clone(), "x".repeat(long(&k)))).collect(),
        )
    };
    let got = s.cache.get_or_load_many(&keys, Duration::from_secs(60), load).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got["big:2"].len(), 500, "returned");
    let got = s.cache.get_or_load_many(&keys, Duration::from_secs(60), load).await.unwrap();
    assert_eq!(got.len(), 3);
    let loaded = loaded.into_inner().unwrap();
    assert_eq!(loaded, [vec!["big:1", "big:2", "big:3"], vec!["big:2"]], "1 and 3 were stored");
    let mut raw = server.connection().await;
    let marker: Option<Vec<u8>> =
        redis::cmd("GET").arg("t:big:2").query_async(&mut raw).await.unwrap();
    assert_eq!(marker, None, "no marker left behind");
    assert!(s.cache.stats().errors >= 1);
}

/// The commands each node of `cluster` ran since its last `CONFIG RESETSTAT`, by name,
/// leaving out the test's own and the cluster client's topology and health commands.
fn commands_on(cluster: &RedisCluster, masters: usize) -> Vec<(String, u64)> {
    let mut calls: Vec<(String, u64)> = Vec::new();
    for node in 0..masters {
        let info = cluster.cli(node, &["INFO", "commandstats"]);
        for line in info.lines() {
            let Some((name, rest)) =
                line.trim().strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let ours = ["info", "config|resetstat", "ping", "readonly"];
            if ours.contains(&name) || name.starts_with("cluster|") {
                continue;
            }
            let count = rest.strip_prefix("calls=").and_then(|r| r.split(',').next());
            let count: u64 = count.and_then(|c| c.parse().ok()).expect("calls=");
            match calls.iter_mut().find(|(known, _)| known == name) {
                Some((_, total)) => *total += count,
                None => calls.push((name.to_owned(), count)),
            }
        }
    }
    calls
}

/// On a cluster a warm batch is `MGET`s only: one per slot its keys fall in (here at most one
/// per key, sent in parallel), and no other command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_batch_on_a_cluster_is_mgets_only() {
    let cluster = RedisCluster::start(3, 0);
    let s = Service {
        cache: Cache::builder().redis_cluster(cluster.urls()).prefix("wc:").build().await.unwrap(),
        db: Db::with_rows(1..=100),
    };
    let ids: Vec<u64> = (1..=100).collect();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    // After hits (not misses), the lookup is `MGET`s.
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    for node in 0..3 {
        assert_eq!(cluster.cli(node, &["CONFIG", "RESETSTAT"]).trim(), "OK");
    }
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    let calls = commands_on(&cluster, 3);
    println!("a warm batch of 100 on 3 masters: {calls:?}");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (name, count) = &calls[0];
    assert_eq!(name, "mget", "{calls:?}");
    assert!((1..=100).contains(count), "{calls:?}");
    assert!(s.db.queries().len() == 1, "the second batch loaded nothing");
}

/// With a near cache: a batch holds what it read in L1, and the next batch answers from
/// process memory without a command to Redis; an invalidation reaches the batch's copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_hits_answer_without_redis() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis(server.url())
        .prefix("n:")
        .near_cache(1 << 20)
        .build()
        .await
        .unwrap();
    while !cache.near_cache_live() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = Service { cache, db: Db::with_rows(1..=10) };
    let ids: Vec<u64> = (1..=10).collect();
    s.vehicles(&ids).await.unwrap(); // loads and fills
                                     // Reads Redis and holds the values in L1. The fills' own tracking messages arrive
                                     // asynchronously, and a read they overtake is not held (it may predate them): read
                                     // until the values are held, as the next batch's near hits show.
    let near_hits = || s.cache.stats_of("vehicles").near_hits;
    let mut held = false;
    for _ in 0..100 {
        let before = near_hits();
        s.vehicles(&ids).await.unwrap();
        if near_hits() - before == 10 {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "the values were never held in L1");
    let mut raw = server.connection().await;
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut raw).await.unwrap();
    let before = near_hits();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 10);
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut raw).await.unwrap();
    let commands: Vec<&str> = info
        .lines()
        .filter(|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info:"))
        .filter(|line| !line.starts_with("cmdstat_config|resetstat:"))
        .filter(|line| !line.starts_with("cmdstat_ping:")) // the tracking connections' health
        .collect();
    assert!(commands.is_empty(), "{commands:?}");
    assert_eq!(near_hits() - before, 10);
    s.reprice(3, 999).await.unwrap();
    assert_eq!(s.vehicles(&ids).await.unwrap()[&3].price, 999);
    assert_eq!(s.db.queries(), [ids.clone(), vec![3]]);
}

/// On a cluster a cold batch of 100 is, besides its `MGET`s, one begin-fill script and one
/// fill script per slot its keys fall in (sent in parallel) and one index update for the
/// index they share (`vehicle:`): `2 × slots + 1` scripts, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_batch_on_a_cluster_is_one_script_per_slot() {
    let cluster = RedisCluster::start(3, 0);
    let s = Service {
        cache: Cache::builder().redis_cluster(cluster.urls()).prefix("cc:").build().await.unwrap(),
        db: Db::with_rows(1..=200),
    };
    let first: Vec<u64> = (1..=100).collect();
    assert_eq!(s.vehicles(&first).await.unwrap().len(), 100);
    // All hits: the next batch's lookup is `MGET`s (after misses, it would be the scripts).
    assert_eq!(s.vehicles(&first).await.unwrap().len(), 100);
    for node in 0..3 {
        assert_eq!(cluster.cli(node, &["CONFIG", "RESETSTAT"]).trim(), "OK");
    }
    let ids: Vec<u64> = (101..=200).collect();
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    let slots: std::collections::HashSet<_> = ids
        .iter()
        .map(|id| redis::cluster_routing::Slot::for_key(format!("cc:vehicle:{id}")))
        .collect();
    let mut calls = commands_on(&cluster, 3);
    calls.sort();
    println!("a cold batch of 100 on 3 masters ({} slots): {calls:?}", slots.len());
    let scripts = 2 * slots.len() as u64 + 1;
    let evalsha = calls.iter().find(|(name, _)| name == "evalsha");
    assert_eq!(evalsha, Some(&("evalsha".to_owned(), scripts)), "{calls:?}");
    let mgets = calls.iter().find(|(name, _)| name == "mget").map(|(_, n)| *n);
    assert!(mgets.is_some_and(|n| (1..=100).contains(&n)), "{calls:?}");
    // Inside the scripts (see `in_scripts`); one index update.
    let others: Vec<_> =
        calls.iter().filter(|(name, _)| name != "evalsha" && name != "mget").cloned().collect();
    assert_eq!(others, in_scripts(100, 1), "{calls:?}");
    assert_eq!(s.db.queries(), [first, ids.clone()]);
    assert_eq!(s.vehicles(&ids).await.unwrap().len(), 100);
    assert!(s.db.queries().is_empty(), "all 100 were stored");
}

/// A key holding another type (another application's data) in a batch: its element is
/// loaded and returned, the key left alone, and the batch's other keys are stored (the
/// begin-fill script answers per key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_in_a_batch_is_loaded_not_stored() {
    let server = RedisServer::start();
    let s = Service {
        cache: Cache::builder().redis(server.url()).prefix("o:").build().await.unwrap(),
        db: Db::with_rows(1..=3),
    };
    let mut raw = server.connection().await;
    let _: () =
        redis::cmd("RPUSH").arg("o:vehicle:2").arg("theirs").query_async(&mut raw).await.unwrap();
    assert_eq!(s.vehicles(&[1, 2, 3]).await.unwrap().len(), 3);
    assert_eq!(s.vehicles(&[1, 2, 3]).await.unwrap().len(), 3);
    assert_eq!(s.db.queries(), [vec![1, 2, 3], vec![2]], "1 and 3 were stored");
    let kind: String = redis::cmd("TYPE").arg("o:vehicle:2").query_async(&mut raw).await.unwrap();
    assert_eq!(kind, "list", "another application's key is left alone");
    assert!(s.cache.stats_of("vehicles").errors >= 1);
}
