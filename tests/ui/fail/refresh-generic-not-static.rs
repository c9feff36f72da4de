use cache_runtime::cached;

#[cached(key = "name:<id>", ttl = "1m", refresh = "10s")]
async fn name<T: std::fmt::Display + Send + Sync>(id: u64, suffix: T) -> String {
    format!("{id}{suffix}")
}

fn main() {
    drop(name(1, 2));
}
