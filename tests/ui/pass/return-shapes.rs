//! Every return shape: `T`, `Option<T>`, `Result<T, E>`, `Result<Option<T>, E>` and an alias
//! such as `std::io::Result<T>`. Only values, `Some`, `Ok` and `Ok(Some)` are cached.

use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::cached;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vehicle {
    id: u64,
    model: String,
}

#[derive(Debug)]
struct DbError;

static RUNS: AtomicU32 = AtomicU32::new(0);

fn vehicle(id: u64) -> Vehicle {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Vehicle {
        id,
        model: "Civic".to_owned(),
    }
}

#[cached(key = "plain:<id>", ttl = "15m")]
async fn plain(id: u64) -> Vehicle {
    vehicle(id)
}

#[cached(key = "option:<id>", ttl = "15m")]
async fn option(id: u64) -> Option<Vehicle> {
    (id != 0).then(|| vehicle(id))
}

#[cached(key = "result:<id>", ttl = "15m")]
async fn result(id: u64) -> Result<Vehicle, DbError> {
    if id == 0 {
        Err(DbError)
    } else {
        Ok(vehicle(id))
    }
}

#[cached(key = "result_option:<id>", ttl = "15m")]
async fn result_option(id: u64) -> Result<Option<Vehicle>, DbError> {
    Ok((id != 0).then(|| vehicle(id)))
}

#[cached(key = "io:<id>", ttl = "1h30m")]
async fn io_result(id: u64) -> std::io::Result<Vehicle> {
    Ok(vehicle(id))
}

fn runs() -> u32 {
    RUNS.load(Ordering::SeqCst)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(plain(1).await.id, 1);
        assert_eq!(plain(1).await.id, 1);
        assert_eq!(runs(), 1);

        assert_eq!(option(2).await.map(|v| v.id), Some(2));
        assert_eq!(option(2).await.map(|v| v.id), Some(2));
        assert_eq!(option(0).await, None);
        assert_eq!(runs(), 2);

        assert_eq!(result(3).await.unwrap().id, 3);
        assert_eq!(result(3).await.unwrap().id, 3);
        assert!(result(0).await.is_err());
        assert_eq!(runs(), 3);

        assert_eq!(result_option(4).await.unwrap().map(|v| v.id), Some(4));
        assert_eq!(result_option(4).await.unwrap().map(|v| v.id), Some(4));
        assert_eq!(result_option(0).await.unwrap(), None);
        assert_eq!(runs(), 4);

        assert_eq!(io_result(5).await.unwrap().id, 5);
        assert_eq!(io_result(5).await.unwrap().id, 5);
        assert_eq!(runs(), 5);
    });
}
