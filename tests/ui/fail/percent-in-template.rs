use cache_runtime::cached;

// `q:<x>%3A` with "y" would render `q:y%3A`, the key of `q:<x>` with "y:".
#[cached(key = "q:<x>%3A", ttl = "15m")]
async fn search(x: String) -> Vec<u64> {
    vec![x.len() as u64]
}

fn main() {
    let _ = search(String::new());
}
