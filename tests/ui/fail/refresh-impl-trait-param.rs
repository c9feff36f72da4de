use cache_runtime::cached;

#[cached(key = "name:<id>", ttl = "1m", refresh = "10s")]
async fn name(id: u64, prefix: &(impl AsRef<str> + ?Sized)) -> String {
    format!("{}{id}", prefix.as_ref())
}

fn main() {
    drop(name(1, "x"));
}
