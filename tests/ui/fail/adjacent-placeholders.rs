use cache_runtime::cached;

#[cached(key = "pair:<a><b>", ttl = "15m")]
async fn pair(a: u32, b: u32) -> u32 {
    a + b
}

fn main() {
    let _ = pair(1, 23);
}
