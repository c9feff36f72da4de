use cache_runtime::cached;

#[cached(key = "label:<id>", ttl = "1m")]
async fn label(id: u64) -> impl serde::Serialize {
    id
}

fn main() {
    drop(label(1));
}
