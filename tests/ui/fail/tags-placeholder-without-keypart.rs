use cache_runtime::cached;

struct Make;

#[cached(key = "vehicle:<id>", ttl = "15m", tags = ["make:<make>"])]
async fn vehicle(id: u64, make: Make) -> u64 {
    let _ = make;
    id
}

fn main() {
    let _ = vehicle(1, Make);
}
