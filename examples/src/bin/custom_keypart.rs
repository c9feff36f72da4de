//! Your own types in key templates: implement `KeyPart`.
//!
//! Whatever an implementation writes is percent-encoded (every byte outside
//! `[A-Za-z0-9_.-]`), so it cannot add a `:` level or a glob character to the key. For a
//! value made of several fields, separate them with `field_separator()` so that two
//! different values never render the same text.
//!
//! ```text
//! cargo run -p examples --bin custom_keypart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin custom_keypart
//! ```

use cache_runtime::{cached, Cache, KeyPart, KeyWriter};

/// A vehicle identification number: case-insensitive, so normalised to upper case.
struct Vin(String);

impl KeyPart for Vin {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(&self.0.trim().to_ascii_uppercase());
    }
}

/// A composite identifier: make and model.
struct MakeModel<'a> {
    make: &'a str,
    model: &'a str,
}

impl KeyPart for MakeModel<'_> {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(&self.make.to_lowercase());
        key.field_separator(); // a raw `,`: ("a,b", "c") and ("a", "b,c") stay apart
        key.push_str(&self.model.to_lowercase());
    }
}

#[cached(key = "vin:<vin>", ttl = "1h", cache = cache)]
async fn decode_vin(cache: &Cache, vin: &Vin) -> String {
    format!("decoded {}", vin.0)
}

#[cached(key = "specs:<mm>", ttl = "1d", cache = cache)]
async fn specs(cache: &Cache, mm: MakeModel<'_>) -> Vec<String> {
    vec![format!("{} {} specs", mm.make, mm.model)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = examples::cache_from_env("recipes:keypart:").await?;
    cache.clear().await?;

    decode_vin(&cache, &Vin("1hgcm82633a004352 ".into())).await;
    decode_vin(&cache, &Vin("1HGCM82633A004352".into())).await; // same key: a hit
    assert_eq!(cache.stats_of("decode_vin").hits, 1);

    specs(&cache, MakeModel { make: "Land Rover", model: "Defender 110" }).await;
    specs(&cache, MakeModel { make: "Jeep", model: "Grand Cherokee*" }).await;

    // The rendered keys, read back through the programmatic API:
    let vin: Option<String> = cache.get("vin:1HGCM82633A004352").await?;
    println!("{:<36} {vin:?}", "vin:1HGCM82633A004352");
    assert!(vin.is_some());
    for key in ["specs:land%20rover,defender%20110", "specs:jeep,grand%20cherokee%2A"] {
        let value: Option<Vec<String>> = cache.get(key).await?;
        println!("{key:<36} {value:?}");
        assert!(value.is_some());
    }
    Ok(())
}
