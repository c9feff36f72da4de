use cache_runtime::invalidates;

#[invalidates("vehicle:[0-9*")]
async fn reprice_all() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = reprice_all();
}
