use cache_runtime::rate_limit;

#[rate_limit(key = "login:<ip>", limit = 5, per = "1m")]
async fn login(ip: u32) -> Option<String> {
    Some(ip.to_string())
}

fn main() {
    let _ = login(7);
}
