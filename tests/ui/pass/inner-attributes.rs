//! Inner attributes at the top of an annotated function's body (`#![allow(...)]`) apply to
//! the function, as they do without the attribute: the crate denies the lints they allow.

#![deny(unused_variables, unused_mut)]

use cache_runtime::{cache_put, cached, invalidates};

#[cached(key = "square:<n>", ttl = "15m")]
async fn square(n: u64) -> u64 {
    #![allow(unused_variables)]
    let unused = n;
    n * n
}

#[cache_put(key = "square:<n>", ttl = "15m")]
async fn put_square(n: u64) -> Result<u64, String> {
    #![allow(unused_variables)]
    #![allow(clippy::let_unit_value)]
    let unused = ();
    Ok(n * n)
}

#[invalidates("square:<n>")]
async fn forget(n: u64) {
    #![allow(unused_mut)]
    let mut kept = n;
    let _ = kept;
}

struct Service;

impl Service {
    #[cached(key = "cube:<n>", ttl = "15m")]
    async fn cube(&self, n: u64) -> Option<u64> {
        #![allow(unused_variables, unused_mut)]
        let mut unused = n;
        Some(n * n * n)
    }
}

fn main() {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        assert_eq!(square(3).await, 9);
        assert_eq!(put_square(4).await, Ok(16));
        assert_eq!(square(4).await, 16);
        forget(4).await;
        assert_eq!(Service.cube(2).await, Some(8));
    });
}
