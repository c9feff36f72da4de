use cache_runtime::cached;

struct Service {
    loads: u32,
}

impl Service {
    #[cached(key = "vehicle:<id>", ttl = "15m")]
    async fn get_vehicle(&mut self, id: u64) -> Option<u64> {
        self.loads += 1;
        Some(id)
    }
}

fn main() {
    let mut service = Service { loads: 0 };
    let _ = service.get_vehicle(42);
}
