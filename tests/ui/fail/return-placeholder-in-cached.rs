use cache_runtime::cached;

#[cached(key = "row:<return.id>", ttl = "1m")]
async fn row(id: u64) -> u64 {
    id
}

fn main() {
    drop(row(1));
}
