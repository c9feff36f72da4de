//! Placeholders of type `&str`, `String`, `Option<u32>`, `char` and `bool`, and how they render.

use cache_runtime::{cached, Cache};

thread_local! {
    static CACHE: Cache = Cache::memory();
}

#[cached(
    key = "p:<text>:<owned>:<maybe>:<letter>:<flag>",
    ttl = "15m",
    cache = CACHE.with(Clone::clone)
)]
async fn render(text: &str, owned: String, maybe: Option<u32>, letter: char, flag: bool) -> String {
    format!("{text}{owned}{maybe:?}{letter}{flag}")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = CACHE.with(Clone::clone);
        render("a:b", "c d".to_owned(), None, '*', true).await;
        render("plain", String::new(), Some(3), 'z', false).await;
        assert!(cache
            .get::<String>("p:a%3Ab:c%20d:~:%2A:true")
            .await
            .unwrap()
            .is_some());
        assert!(cache
            .get::<String>("p:plain::3:z:false")
            .await
            .unwrap()
            .is_some());
    });
}
