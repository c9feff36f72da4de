use cache_runtime::cached;

#[cached(key = "session:<token>", ttl = "8h", early, idle = "30m")]
async fn session(token: String) -> Option<String> {
    Some(token)
}

fn main() {
    let _ = session(String::new());
}
