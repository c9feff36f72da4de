use cache_runtime::cached;

#[cached(key = "session:<id>", ttl = "1h", idle = "10m", tags = ["user:<id>"])]
async fn session(id: u64) -> u64 {
    id
}

fn main() {
    let _ = session(1);
}
