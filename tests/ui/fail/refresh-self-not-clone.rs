use cache_runtime::cached;

/// Not `Clone`: a refresh in the background cannot take a copy of it.
struct Prices {
    base: u32,
}

impl Prices {
    #[cached(key = "price:<id>", ttl = "15m", refresh = "10m")]
    async fn price(&self, id: u64) -> Result<u32, String> {
        Ok(self.base + id as u32)
    }
}

fn main() {
    let prices = Prices { base: 1 };
    let _ = prices.price(1);
}
