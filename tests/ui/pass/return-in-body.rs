//! `return` and `?` inside the body leave the body, not the caching around it: an early
//! `Ok` is still cached, an early `Err` is not.

use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::cached;

static RUNS: AtomicU32 = AtomicU32::new(0);

#[cached(key = "grade:<score>", ttl = "15m")]
async fn grade(score: &str) -> Result<String, String> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    let score: u32 = score
        .parse()
        .map_err(|_| format!("not a number: {score}"))?;
    if score > 100 {
        return Err("out of range".to_owned());
    }
    if score >= 50 {
        return Ok("pass".to_owned());
    }
    Ok("fail".to_owned())
}

#[cached(key = "plain:<n>", ttl = "15m")]
async fn plain(n: u32) -> u32 {
    if n == 0 {
        return 1;
    }
    n
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(grade("70").await.as_deref(), Ok("pass"));
        assert_eq!(grade("70").await.as_deref(), Ok("pass"));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
        assert!(grade("x").await.is_err());
        assert!(grade("x").await.is_err());
        assert!(grade("101").await.is_err());
        assert_eq!(RUNS.load(Ordering::SeqCst), 4);
        assert_eq!(plain(0).await, 1);
        assert_eq!(plain(0).await, 1);
    });
}
