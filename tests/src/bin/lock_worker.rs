//! A worker process for the cross-process stampede tests: it runs `CALLERS` concurrent
//! callers of one `#[cached(lock)]` function against `REDIS_URL`, starting when it reads a
//! line on stdin, and prints one line per caller: `<latency µs> <outcome>`.
//!
//! The key is `report:<KEY_ID>` (default 7). The body counts its runs with
//! `INCR lockworker:runs:<KEY_ID>` and announces its start with `SET lockworker:started <pid>`,
//! then sleeps `BODY_MS`; with `FAIL=1` it returns an error. Around the sleep it appends
//! `<pid> start` and `<pid> end` to the list `lockworker:log:<KEY_ID>`, so tests can see, in
//! Redis's own order, which runs overlapped.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[cached(key = "report:<id>", ttl = "1m", lock, cache = cache)]
async fn report(cache: &Cache, redis: &redis::Client, id: u64) -> Result<String, String> {
    let mut connection =
        redis.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
    let _: u64 = redis::cmd("INCR")
        .arg(format!("lockworker:runs:{id}"))
        .query_async(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    let _: () = redis::cmd("SET")
        .arg("lockworker:started")
        .arg(std::process::id())
        .query_async(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    log_run(&mut connection, id, "start").await?;
    tokio::time::sleep(Duration::from_millis(env_u64("BODY_MS", 200))).await;
    log_run(&mut connection, id, "end").await?;
    if env_u64("FAIL", 0) == 1 {
        return Err(format!("body failed in {}", std::process::id()));
    }
    Ok(format!("report {id}"))
}

/// `RPUSH lockworker:log:<id> "<pid> <event>"`.
async fn log_run(
    connection: &mut redis::aio::MultiplexedConnection,
    id: u64,
    event: &str,
) -> Result<(), String> {
    redis::cmd("RPUSH")
        .arg(format!("lockworker:log:{id}"))
        .arg(format!("{} {event}", std::process::id()))
        .query_async::<u64>(connection)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL");
    let callers = env_u64("CALLERS", 100);
    let key_id = env_u64("KEY_ID", 7);
    let cache = Cache::builder()
        .redis(url.as_str())
        .prefix("lockworker:")
        .lock_lease(Duration::from_millis(env_u64("LEASE_MS", 1000)))
        .lock_wait(Duration::from_millis(env_u64("WAIT_MS", 5000)))
        .build()
        .await
        .expect("cache");
    let client = redis::Client::open(url.as_str()).expect("client");
    // Connect before the start signal, as a running service would be.
    assert!(cache.health().await.reachable, "Redis is not reachable");
    println!("ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");

    let started = Instant::now();
    let calls: Vec<_> = (0..callers)
        .map(|_| {
            let (cache, client) = (cache.clone(), client.clone());
            tokio::spawn(async move {
                let outcome = report(&cache, &client, key_id).await;
                (started.elapsed(), outcome)
            })
        })
        .collect();
    for call in calls {
        let (latency, outcome) = call.await.expect("caller panicked");
        let outcome = match outcome {
            Ok(value) => format!("ok:{value}"),
            Err(error) => format!("err:{error}"),
        };
        println!("{} {}", latency.as_micros(), outcome.replace(' ', "_"));
    }
}
