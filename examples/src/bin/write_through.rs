//! Write-through: after a successful write, `#[cache_put]` stores the returned row under the
//! key the reads use, so the next read is a hit with the new value (no reload).
//!
//! ```text
//! cargo run -p examples --bin write_through
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin write_through
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use cache_runtime::{cache_put, cached, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    city: String,
}

/// Stands in for the users table.
struct Db {
    rows: Mutex<HashMap<u64, Profile>>,
    reads: AtomicU32,
}

struct Users {
    db: Db,
    cache: Cache,
}

impl Users {
    #[cached(key = "user:<id>", ttl = "1h", cache = self.cache)]
    async fn profile(&self, id: u64) -> Option<Profile> {
        self.db.reads.fetch_add(1, Ordering::SeqCst);
        self.db.rows.lock().unwrap().get(&id).cloned()
    }

    /// Writes the database; on `Ok`, the returned profile replaces the cached one.
    #[cache_put(key = "user:<p.id>", ttl = "1h", cache = self.cache)]
    async fn save(&self, p: Profile) -> Result<Profile, String> {
        if p.name.is_empty() {
            return Err("a name is required".into()); // Err: the cache is left alone
        }
        self.db.rows.lock().unwrap().insert(p.id, p.clone());
        Ok(p)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = examples::cache_from_env("recipes:write_through:").await?;
    cache.clear().await?;
    let ana = Profile { id: 1, name: "Ana".into(), city: "Santiago".into() };
    let users = Users {
        db: Db { rows: Mutex::new(HashMap::from([(1, ana.clone())])), reads: AtomicU32::new(0) },
        cache,
    };

    assert_eq!(users.profile(1).await, Some(ana.clone())); // miss: one read
    let moved = Profile { city: "La Vega".into(), ..ana };
    users.save(moved.clone()).await?;
    assert_eq!(users.profile(1).await, Some(moved.clone())); // hit, already the new city
    assert!(users.save(Profile { name: String::new(), ..moved.clone() }).await.is_err());
    assert_eq!(users.profile(1).await, Some(moved)); // the failed write changed nothing

    let reads = users.db.reads.load(Ordering::SeqCst);
    println!("3 reads around 2 writes: {reads} database read");
    assert_eq!(reads, 1);
    Ok(())
}
