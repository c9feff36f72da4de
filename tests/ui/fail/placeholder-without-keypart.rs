use cache_runtime::cached;

struct VehicleId(u64);

#[cached(key = "vehicle:<id>", ttl = "15m")]
async fn get_vehicle(id: VehicleId) -> Option<u64> {
    Some(id.0)
}

fn main() {
    let _ = get_vehicle(VehicleId(42));
}
