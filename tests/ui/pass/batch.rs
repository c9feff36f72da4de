//! `#[cached_batch]`: free functions and `&self` methods, `&[K]`, `&Vec<K>` and `Vec<K>`,
//! plain maps and `Result`s of maps, through aliases and another hasher, `?` and `return`
//! in the body, a future that is `Send`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;

use cache_runtime::{cached_batch, Cache};

type Map<V> = HashMap<u64, V>;
type Fallible<T> = Result<T, String>;

#[cached_batch(key = "price:<ids>", ttl = "1m", absent_ttl = "10s", near = false)]
async fn prices(ids: &[u64]) -> Fallible<Map<u32>> {
    if ids.is_empty() {
        return Ok(Map::new());
    }
    let parsed: u32 = "7".parse().map_err(|_| "bad".to_owned())?;
    Ok(ids.iter().map(|id| (*id, parsed)).collect())
}

#[cached_batch(key = "name:<region>:<ids>", ttl = "1m", name = "names")]
async fn names(region: &str, mut ids: Vec<String>) -> HashMap<String, String, RandomState> {
    ids.sort();
    ids.into_iter().map(|id| (id.clone(), format!("{region}/{id}"))).collect()
}

struct Service {
    cache: Cache,
    region: String,
}

impl Service {
    #[cached_batch(key = "vehicle:<self.region>:<ids>", ttl = "1m", cache = self.cache)]
    async fn vehicles(&self, ids: &Vec<u64>) -> Map<String> {
        ids.iter().map(|id| (*id, id.to_string())).collect()
    }
}

fn require_send<T: Send>(_: T) {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    require_send(prices(&[1]));
    assert_eq!(prices(&[1, 2, 1]).await.unwrap().len(), 2);
    assert_eq!(names("eu", vec!["b".into(), "a".into()]).await["a"], "eu/a");
    let service = Service { cache: Cache::memory(), region: "eu".into() };
    assert_eq!(service.vehicles(&vec![3]).await[&3], "3");
}
