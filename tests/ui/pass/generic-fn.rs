//! Generic functions: a generic placeholder type (named and `impl Trait`) and a generic
//! cached value type, named in the key (`<T>`: each type has keys of its own).

use std::fmt::Display;

use cache_runtime::{cached, KeyPart};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[cached(key = "describe:<id>", ttl = "15m")]
async fn describe<K>(id: K) -> String
where
    K: KeyPart + Display,
{
    format!("item {id}")
}

#[cached(key = "label:<id>", ttl = "15m")]
async fn label(id: impl KeyPart + Display) -> String {
    format!("label {id}")
}

#[cached(key = "default:<T>:<id>", ttl = "15m")]
async fn load_default<T>(id: u64) -> Option<T>
where
    T: Default + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    (id > 0).then(T::default)
}

#[cached(key = "cloned:<T>:<id>", ttl = "15m")]
async fn load_cloned<T: Clone + Default + Serialize + DeserializeOwned + Send + Sync + 'static>(
    id: u64,
) -> Result<T, String> {
    let _ = id;
    Ok(T::default())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(describe(7u32).await, "item 7");
        assert_eq!(describe("seven").await, "item seven");
        assert_eq!(label('x').await, "label x");
        assert_eq!(load_default::<Vec<u8>>(1).await, Some(Vec::new()));
        assert_eq!(load_cloned::<String>(1).await, Ok(String::new()));
        assert_eq!(load_cloned::<String>(1).await, Ok(String::new()));
    });
}
