//! The futures of annotated functions and methods are `Send` and can be spawned.

use cache_runtime::{cached, Cache};

fn assert_send<T: Send>(_: T) {}

#[cached(key = "vehicle:<id>", ttl = "15m")]
async fn get_vehicle(id: u64) -> Result<Option<String>, String> {
    tokio::task::yield_now().await;
    Ok(Some(format!("vehicle {id}")))
}

#[cached(key = "name:<name>", ttl = "15m", lock)]
async fn by_name(name: &str) -> Option<String> {
    Some(name.to_uppercase())
}

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(key = "dealer:<id>", ttl = "15m", cache = self.cache)]
    async fn dealer(&self, id: u64) -> u64 {
        id
    }
}

fn main() {
    let service = Service {
        cache: Cache::memory(),
    };
    assert_send(get_vehicle(1));
    assert_send(by_name("civic"));
    assert_send(service.dealer(2));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let handle = tokio::spawn(get_vehicle(1));
        assert_eq!(handle.await.unwrap(), Ok(Some("vehicle 1".to_owned())));
        let handle = tokio::spawn(async move { service.dealer(2).await });
        assert_eq!(handle.await.unwrap(), 2);
    });
}
