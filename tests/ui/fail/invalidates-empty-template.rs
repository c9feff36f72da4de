use cache_runtime::invalidates;

#[invalidates("")]
async fn reset() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = reset();
}
