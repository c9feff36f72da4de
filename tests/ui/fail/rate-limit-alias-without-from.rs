use cache_runtime::rate_limit;

type Res<T> = Result<T, String>;

// `String` has no `From<RateLimited>`: a refused call could not return its `Err`.
#[rate_limit(key = "ping", limit = 5, per = "1m")]
async fn ping() -> Res<()> {
    Ok(())
}

fn main() {
    drop(ping());
}
