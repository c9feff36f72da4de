//! Value formats (issue 15): stored bytes, encode time and decode time of each codec, with
//! and without compression, over three payloads, plus the Redis hit latency of each
//! configuration (one `Cache::get` on a private `redis-server`).
//!
//! | payload  | what it is |
//! |----------|------------|
//! | `vehicle`| one vehicle (about 0.5 KB of JSON) |
//! | `page`   | a dealer page: 200 vehicles (about 100 KB of JSON) |
//! | `report` | a 1 MB (JSON) report: 7,000 rows of numbers, dates and short labels |
//!
//! Encode and decode go through the crate's own envelope (`__private::encode_value` /
//! `decode_value`, what the stores use). Compression is lz4 (`lz4_flex`, the crate's
//! choice); the table also shows zstd level 1 and 3 on the same encoded bytes, measured
//! here only, to justify that choice. Each figure is the median of 15 batches.
//!
//! ```text
//! cargo bench -p cache-runtime --bench formats
//! ```
//!
//! Figures and the machine: `docs/benchmarks.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cache_runtime::__private::{decode_value, encode_value};
use cache_runtime::{Cache, Codec};
use serde::{Deserialize, Serialize};

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/redis_server.rs"]
mod redis_server;

#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
struct Vehicle {
    id: u64,
    dealer_id: u64,
    vin: String,
    make: String,
    model: String,
    trim: String,
    year: u16,
    mileage_km: u32,
    price_cents: u64,
    fuel: String,
    transmission: String,
    color: String,
    photos: Vec<String>,
    features: Vec<String>,
    description: String,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
struct Row {
    day: String,
    dealer_id: u64,
    views: u32,
    leads: u32,
    sales: u32,
    revenue_cents: u64,
    conversion_bp: u32,
    region: String,
}

fn vehicle(i: u64) -> Vehicle {
    const MAKES: [&str; 5] = ["Toyota", "Honda", "Ford", "Chevrolet", "Hyundai"];
    const MODELS: [&str; 5] = ["Corolla", "Civic", "F-150", "Silverado", "Elantra"];
    Vehicle {
        id: 100_000 + i,
        dealer_id: 4_200 + i % 7,
        vin: format!("1HGCM82633A{:06}", i * 37 % 1_000_000),
        make: MAKES[(i % 5) as usize].into(),
        model: MODELS[(i * 3 % 5) as usize].into(),
        trim: ["LX", "EX", "Sport", "Touring"][(i % 4) as usize].into(),
        year: 2012 + (i % 12) as u16,
        mileage_km: (i as u32 * 7_919) % 180_000,
        price_cents: 899_900 + i * 13_577 % 3_000_000,
        fuel: ["gasoline", "hybrid", "diesel"][(i % 3) as usize].into(),
        transmission: ["automatic", "manual"][(i % 2) as usize].into(),
        color: ["white", "black", "silver", "red", "blue"][(i * 7 % 5) as usize].into(),
        photos: (0..4)
            .map(|p| format!("https://img.example.com/v/{}/{p}.jpg", 100_000 + i))
            .collect(),
        features: ["bluetooth", "backup camera", "cruise control", "heated seats"]
            .iter()
            .take(1 + (i % 4) as usize)
            .map(|s| (*s).to_owned())
            .collect(),
        description: format!(
            "One owner, clean title, serviced at {} km. Financing available.",
            i * 311 % 90_000
        ),
    }
}

fn report() -> Vec<Row> {
    (0..7_000u64)
        .map(|i| Row {
            day: format!("2026-{:02}-{:02}", 1 + i % 12, 1 + i % 28),
            dealer_id: 4_200 + i % 97,
            views: (i * 7_919 % 50_000) as u32,
            leads: (i * 31 % 900) as u32,
            sales: (i * 13 % 60) as u32,
            revenue_cents: i * 1_234_567 % 900_000_000,
            conversion_bp: (i * 7 % 10_000) as u32,
            region: ["north", "south", "east", "west"][(i % 4) as usize].into(),
        })
        .collect()
}

/// Median time of one call of `f`, over 15 batches sized to take about 10 ms each.
fn time(mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    f();
    let once = start.elapsed().max(Duration::from_nanos(50));
    let per_batch =
        (Duration::from_millis(10).as_nanos() / once.as_nanos()).clamp(1, 100_000) as u32;
    let mut samples: Vec<Duration> = (0..15)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            start.elapsed() / per_batch
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

const CODECS: [(Codec, &str); 3] =
    [(Codec::Json, "json"), (Codec::MessagePack, "msgpack"), (Codec::Postcard, "postcard")];

fn table<T>(name: &str, value: &T, redis: Option<&(tokio::runtime::Runtime, String)>)
where
    T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug + Send + Sync + 'static,
{
    println!("\n### {name}\n");
    println!("| codec | compression | stored bytes | encode | decode | Redis hit |");
    println!("|---|---|---:|---:|---:|---:|");
    for (codec, codec_name) in CODECS {
        for compress in [None, Some(0)] {
            let stored = encode_value(value, codec, compress);
            let back: T = decode_value(&stored).expect("decodes");
            assert!(&back == value, "{codec_name} round trip");
            let encode = time(|| {
                black_box(encode_value(black_box(value), codec, compress));
            });
            let decode = time(|| {
                black_box(decode_value::<T>(black_box(&stored)));
            });
            let hit = redis.map_or_else(
                || "-".to_owned(),
                |(runtime, url)| {
                    show(runtime.block_on(async {
                        let mut builder = Cache::builder().redis(url.clone()).codec(codec);
                        if let Some(above) = compress {
                            builder = builder.compress_above(above);
                        }
                        let cache = builder.build().await.unwrap();
                        cache.set("bench:value", value, Duration::from_secs(600)).await.unwrap();
                        let mut samples = Vec::new();
                        for _ in 0..15 {
                            let n = 20;
                            let start = Instant::now();
                            for _ in 0..n {
                                black_box(cache.get::<T>("bench:value").await.unwrap().unwrap());
                            }
                            samples.push(start.elapsed() / n);
                        }
                        samples.sort();
                        samples[7]
                    }))
                },
            );
            let compression = if compress.is_some() { "lz4" } else { "none" };
            println!(
                "| {codec_name} | {compression} | {} | {} | {} | {hit} |",
                stored.len(),
                show(encode),
                show(decode)
            );
        }
        // zstd on the same encoded bytes, for the choice of lz4 (not used by the crate).
        let plain = encode_value(value, codec, None);
        for level in [1, 3] {
            let packed = zstd::bulk::compress(&plain, level).unwrap();
            let encode = time(|| {
                let bytes = encode_value(black_box(value), codec, None);
                black_box(zstd::bulk::compress(&bytes, level).unwrap());
            });
            let decode = time(|| {
                let bytes = zstd::bulk::decompress(black_box(&packed), plain.len()).unwrap();
                black_box(decode_value::<T>(&bytes));
            });
            println!(
                "| {codec_name} | zstd {level} (not used) | {} | {} | {} | - |",
                packed.len(),
                show(encode),
                show(decode)
            );
        }
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let with_redis = std::env::var_os("FORMATS_NO_REDIS").is_none();
    let server = with_redis.then(redis_server::RedisServer::start);
    let redis = server.as_ref().map(|server| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        (runtime, server.url())
    });
    let one = vehicle(1);
    let page: Vec<Vehicle> = (0..200).map(vehicle).collect();
    let rows = report();
    println!(
        "JSON sizes: vehicle {} B, page {} B, report {} B",
        serde_json::to_vec(&one).unwrap().len(),
        serde_json::to_vec(&page).unwrap().len(),
        serde_json::to_vec(&rows).unwrap().len()
    );
    table("one vehicle", &one, redis.as_ref());
    table("dealer page (200 vehicles)", &page, redis.as_ref());
    table("report (7,000 rows, 1 MB of JSON)", &rows, redis.as_ref());
}
