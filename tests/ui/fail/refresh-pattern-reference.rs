use cache_runtime::cached;

#[cached(key = "pair:<a>:<b>", ttl = "1m", refresh = "10s")]
async fn pair(&(a, b): &(u64, u64)) -> u64 {
    a + b
}

fn main() {
    drop(pair(&(1, 2)));
}
