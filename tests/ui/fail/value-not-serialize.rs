use cache_runtime::cached;

struct Row {
    id: u64,
}

#[cached(key = "row:<id>", ttl = "1m")]
async fn row(id: u64) -> Result<Row, String> {
    Ok(Row { id })
}

fn main() {
    drop(row(1));
}
