//! A user type implementing `KeyPart`, alone and as a composite of fields.

use cache_runtime::{cached, Cache, KeyPart, KeyWriter};

struct Vin(String);

impl KeyPart for Vin {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(&self.0.to_ascii_uppercase());
    }
}

struct Position {
    lat: i32,
    lon: i32,
}

impl KeyPart for Position {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push(&self.lat);
        key.field_separator();
        key.push(&self.lon);
    }
}

thread_local! {
    static CACHE: Cache = Cache::memory();
}

#[cached(key = "vin:<vin>", ttl = "15m", cache = CACHE.with(Clone::clone))]
async fn by_vin(vin: &Vin) -> String {
    vin.0.clone()
}

#[cached(key = "near:<at>", ttl = "15m", cache = CACHE.with(Clone::clone))]
async fn near(at: Position) -> u32 {
    at.lat.unsigned_abs() + at.lon.unsigned_abs()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = CACHE.with(Clone::clone);
        assert_eq!(by_vin(&Vin("1hgcm:x".into())).await, "1hgcm:x");
        assert_eq!(near(Position { lat: 48, lon: -2 }).await, 50);
        assert!(cache
            .get::<String>("vin:1HGCM%3AX")
            .await
            .unwrap()
            .is_some());
        assert!(cache.get::<u32>("near:48,-2").await.unwrap().is_some());
    });
}
