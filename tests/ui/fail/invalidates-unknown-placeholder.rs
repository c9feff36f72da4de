use cache_runtime::invalidates;

struct Vehicle {
    id: u64,
}

#[invalidates("vehicle:<vehicle.id>")]
async fn update_vehicle(v: &Vehicle) -> Result<(), String> {
    let _ = v.id;
    Ok(())
}

fn main() {
    let _ = update_vehicle(&Vehicle { id: 1 });
}
