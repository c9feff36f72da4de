use cache_runtime::rate_limit;

#[derive(Debug)]
struct DbError;

#[rate_limit(key = "login:<ip>", limit = 5, per = "1m")]
async fn login(ip: u32) -> Result<(), DbError> {
    let _ = ip;
    Ok(())
}

fn main() {
    let _ = login(7);
}
