use cache_runtime::cached;

#[cached(key = "name:<id>", ttl = "1m", refresh = "10s")]
async fn name(id: u64, prefix: Option<&str>) -> String {
    format!("{}{id}", prefix.unwrap_or(""))
}

fn main() {
    drop(name(1, None));
}
