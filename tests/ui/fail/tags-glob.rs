use cache_runtime::cached;

#[cached(key = "search:<make>", ttl = "15m", tags = ["make:*"])]
async fn search(make: &str) -> Vec<u64> {
    vec![make.len() as u64]
}

fn main() {
    let _ = search("ford");
}
