use cache_runtime::cached;

#[cached(key = "session:<token>", ttl = "8h", stale = "9h", idle = "30m")]
async fn session(token: String) -> Option<String> {
    Some(token)
}

fn main() {
    let _ = session(String::new());
}
