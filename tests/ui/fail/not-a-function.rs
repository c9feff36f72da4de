use cache_runtime::cached;

#[cached(key = "vehicle:<id>", ttl = "15m")]
struct Vehicle {
    id: u64,
}

fn main() {
    let _ = Vehicle { id: 42 }.id;
}
