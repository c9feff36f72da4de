use cache_runtime::cached;

#[cached(key = "label:<id>", ttl = "1m")]
async fn label(id: u64) -> &'static str {
    if id == 0 { "zero" } else { "many" }
}

fn main() {
    drop(label(1));
}
