use cache_runtime::cached;

// cache-runtime's `uuid` feature is off here.
#[cached(key = "user:<id>", ttl = "1m")]
async fn user(id: uuid::Uuid) -> String {
    id.to_string()
}

fn main() {
    drop(user(uuid::Uuid::nil()));
}
