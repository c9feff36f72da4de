//! `#[derive(KeyPart)]` on an enum of unit variants and on newtypes.

use cache_runtime::{cached, KeyPart};

#[derive(KeyPart)]
enum Region {
    Eu,
    Us,
}

#[derive(KeyPart)]
struct Vin(String);

#[derive(KeyPart)]
struct DealerId {
    id: u64,
}

#[derive(KeyPart)]
struct Wrapped<T>(T);

#[cached(key = "stock:<region>:<vin>:<dealer>:<tag>", ttl = "1m")]
async fn stock(region: Region, vin: &Vin, dealer: DealerId, tag: Wrapped<u8>) -> u64 {
    let _ = (region, vin, dealer.id, tag.0);
    1
}

fn main() {
    drop(stock(Region::Us, &Vin("x".into()), DealerId { id: 1 }, Wrapped(1)));
    let _ = Region::Eu;
}
