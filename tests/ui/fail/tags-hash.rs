use cache_runtime::invalidates;

#[invalidates("vehicle:<id>", tags = ["make#<id>"])]
async fn update(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {
    let _ = update(1);
}
