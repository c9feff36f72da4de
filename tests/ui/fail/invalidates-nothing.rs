use cache_runtime::invalidates;

#[invalidates(name = "reset")]
async fn reset() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = reset();
}
