use cache_runtime::cached;

#[cached(key = "price:<id>", ttl = "15m", refresh = "10m")]
async fn price(id: u64, seen: &mut Vec<u64>) -> Result<u32, String> {
    seen.push(id);
    Ok(id as u32)
}

fn main() {
    let mut seen = Vec::new();
    let _ = price(1, &mut seen);
}
