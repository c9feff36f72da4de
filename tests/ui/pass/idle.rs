//! `idle` (sliding expiration) on a reader, with `lock` and `absent_ttl`, and on a
//! write-through that stores for `idle`.

use cache_runtime::{cache_put, cached, default_cache};

#[cached(key = "session:<token>", ttl = "8h", idle = "30m", lock, absent_ttl = "5s")]
async fn session(token: &str) -> Option<String> {
    Some(format!("user of {token}"))
}

#[cache_put(key = "session:<token>", ttl = "8h", idle = "30m")]
async fn login(token: &str) -> Result<String, String> {
    Ok(format!("user of {token}"))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        login("t1").await.unwrap();
        assert_eq!(session("t1").await.as_deref(), Some("user of t1"));
        assert_eq!(default_cache().stats_of("session").hits, 1);
    });
}
