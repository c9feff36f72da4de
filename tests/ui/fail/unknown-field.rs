use cache_runtime::cached;

struct Vehicle {
    id: u64,
}

#[cached(key = "vehicle:<v.nope>", ttl = "15m")]
async fn get_vehicle(v: &Vehicle) -> Option<u64> {
    Some(v.id)
}

fn main() {
    let _ = get_vehicle(&Vehicle { id: 42 });
}
