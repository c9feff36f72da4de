//! A session store: login writes the session (`#[cache_put]` with `idle`), every request
//! reads it with `#[cached(..., idle = ...)]`, which slides its expiry, and logout removes
//! it (`#[invalidates]`). A session nobody uses for `idle` is gone; one used all the time
//! still ends `ttl` after login. (Short durations so the recipe runs in seconds; a real one
//! would say `ttl = "8h", idle = "30m"`.)
//!
//! ```text
//! cargo run -p examples --bin sessions
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin sessions
//! ```

use std::time::{Duration, Instant};

use cache_runtime::{cache_put, cached, invalidates, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    user: String,
}

struct Sessions {
    cache: Cache,
}

impl Sessions {
    /// Checks the password (stand-in), then stores the session for `idle`.
    #[cache_put(key = "session:<token>", ttl = "3s", idle = "1s", cache = self.cache)]
    async fn login(&self, token: &str, user: &str, password: &str) -> Result<Session, String> {
        let _ = token;
        if password != "secret" {
            return Err("wrong password".into()); // Err: nothing stored
        }
        Ok(Session { user: user.to_owned() })
    }

    /// The session behind a request's token. A hit extends it by `idle` (up to `ttl` after
    /// login); the body runs only when there is none: the session store is the cache.
    #[cached(key = "session:<token>", ttl = "3s", idle = "1s", cache = self.cache)]
    async fn session(&self, token: &str) -> Option<Session> {
        let _ = token;
        None
    }

    #[invalidates("session:<token>", cache = self.cache)]
    async fn logout(&self, token: &str) {
        let _ = token;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = examples::cache_from_env("recipes:sessions:").await?;
    cache.clear().await?;
    let sessions = Sessions { cache };
    let ana = Some(Session { user: "ana".into() });

    // Requests every 300 ms keep the session alive well past `idle`...
    assert!(sessions.login("t1", "ana", "wrong").await.is_err());
    assert_eq!(sessions.session("t1").await, None);
    let login = Instant::now();
    sessions.login("t1", "ana", "secret").await?;
    while login.elapsed() < Duration::from_millis(2400) {
        assert_eq!(sessions.session("t1").await, ana, "used: alive at {:?}", login.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ...but not past `ttl` after login, however recently it was used.
    tokio::time::sleep(Duration::from_millis(3200).saturating_sub(login.elapsed())).await;
    assert_eq!(sessions.session("t1").await, None, "ttl is an absolute cap");
    println!("a session used every 300 ms lived until its 3 s cap");

    // A session left alone for longer than `idle` is gone.
    sessions.login("t2", "ana", "secret").await?;
    assert_eq!(sessions.session("t2").await, ana);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(sessions.session("t2").await, None, "idle for 1.3 s");
    println!("a session idle for 1.3 s expired");

    // Logout ends it at once.
    sessions.login("t3", "ana", "secret").await?;
    assert_eq!(sessions.session("t3").await, ana);
    sessions.logout("t3").await;
    assert_eq!(sessions.session("t3").await, None);
    println!("logout removed the session");
    Ok(())
}
