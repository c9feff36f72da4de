use cache_runtime::cached;

/// Not `Clone`: a refresh in the background cannot take a copy of it.
struct Db {
    base: u32,
}

#[cached(key = "price:<id>", ttl = "15m", early)]
async fn price(db: &Db, id: u64) -> Result<u32, String> {
    Ok(db.base + id as u32)
}

fn main() {
    let db = Db { base: 1 };
    let _ = price(&db, 1);
}
