use cache_runtime::cached;

// Every `T` would share the key `gen:<id>`: `T` must be in the template.
#[cached(key = "gen:<id>", ttl = "1m")]
async fn load<T: Default + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static>(id: u64) -> T {
    let _ = id;
    T::default()
}

fn main() {
    drop(load::<u64>(1));
}
