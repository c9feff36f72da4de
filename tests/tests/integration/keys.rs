//! Key rendering as stored in Redis: placeholder values are percent-encoded so that no value
//! injects a separator or a glob, and different arguments never share a key.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::{cached, Cache, KeyPart, KeyWriter};
use cache_tests::RedisServer;

use crate::{redis_cache, Raw};

#[tokio::test]
async fn plain_values_are_written_as_they_are() {
    #[cached(key = "plain:<s>:<n>:<b>", ttl = "1m", cache = cache)]
    async fn plain(cache: &Cache, s: &str, n: i64, b: bool) -> String {
        format!("{s}/{n}/{b}")
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;
    assert_eq!(plain(&cache, "abc_DEF-1.2", -7, true).await, "abc_DEF-1.2/-7/true");
    assert_eq!(raw.keys().await, ["t:plain:abc_DEF-1.2:-7:true"]);
}

#[tokio::test]
async fn a_colon_in_a_value_is_encoded() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "user:<name>", ttl = "1m", cache = cache)]
    async fn user(cache: &Cache, name: &str) -> String {
        CALLS.fetch_add(1, SeqCst);
        name.to_uppercase()
    }

    #[cached(key = "user:a:<rest>", ttl = "1m", cache = cache)]
    async fn user_a(cache: &Cache, rest: &str) -> String {
        CALLS.fetch_add(1, SeqCst);
        format!("a/{rest}")
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    // `user:<name>` with "a:b" must not land on `user:a:<rest>` with "b".
    assert_eq!(user(&cache, "a:b").await, "A:B");
    assert_eq!(user_a(&cache, "b").await, "a/b");
    assert_eq!(user(&cache, "a:b").await, "A:B");
    assert_eq!(user_a(&cache, "b").await, "a/b");
    assert_eq!(CALLS.load(SeqCst), 2);
    assert_eq!(raw.keys().await, ["t:user:a%3Ab", "t:user:a:b"]);
}

#[tokio::test]
async fn two_placeholders_cannot_collide() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "k:<a>:<b>", ttl = "1m", cache = cache)]
    async fn pair(cache: &Cache, a: &str, b: &str) -> String {
        CALLS.fetch_add(1, SeqCst);
        format!("{a}|{b}")
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(pair(&cache, "x:y", "z").await, "x:y|z");
    assert_eq!(pair(&cache, "x", "y:z").await, "x|y:z");
    assert_eq!(CALLS.load(SeqCst), 2, "two argument lists, two loads");
    // Both are cached, each with its own value.
    assert_eq!(pair(&cache, "x:y", "z").await, "x:y|z");
    assert_eq!(pair(&cache, "x", "y:z").await, "x|y:z");
    assert_eq!(CALLS.load(SeqCst), 2);
    assert_eq!(raw.keys().await, ["t:k:x%3Ay:z", "t:k:x:y%3Az"]);
    assert_eq!(cache.stats_of("pair").hits, 2);
}

#[tokio::test]
async fn glob_characters_in_values_are_encoded() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "user:<name>", ttl = "1m", cache = cache)]
    async fn user(cache: &Cache, name: String) -> String {
        CALLS.fetch_add(1, SeqCst);
        format!("<{name}>")
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    let names = ["*", "?", "[ab]", "a*b", "\\"];
    for name in names {
        assert_eq!(user(&cache, name.to_owned()).await, format!("<{name}>"));
    }
    for name in names {
        assert_eq!(user(&cache, name.to_owned()).await, format!("<{name}>"), "hit for {name:?}");
    }
    assert_eq!(CALLS.load(SeqCst), names.len());
    assert_eq!(
        raw.keys().await,
        ["t:user:%2A", "t:user:%3F", "t:user:%5Bab%5D", "t:user:%5C", "t:user:a%2Ab"]
    );
    assert!(raw.exists("t:user:%2A").await);
}

#[tokio::test]
async fn percent_signs_are_encoded_so_encoded_looking_values_do_not_collide() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "tag:<tag>", ttl = "1m", cache = cache)]
    async fn tag(cache: &Cache, tag: &str) -> String {
        CALLS.fetch_add(1, SeqCst);
        tag.to_owned()
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(tag(&cache, ":").await, ":");
    assert_eq!(tag(&cache, "%3A").await, "%3A");
    assert_eq!(tag(&cache, ":").await, ":");
    assert_eq!(tag(&cache, "%3A").await, "%3A");
    assert_eq!(CALLS.load(SeqCst), 2);
    assert_eq!(raw.keys().await, ["t:tag:%253A", "t:tag:%3A"]);
}

#[tokio::test]
async fn unicode_whitespace_and_control_characters_are_encoded() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "city:<name>", ttl = "1m", cache = cache)]
    async fn city(cache: &Cache, name: &str) -> usize {
        CALLS.fetch_add(1, SeqCst);
        name.chars().count()
    }

    #[cached(key = "initial:<c>", ttl = "1m", cache = cache)]
    async fn initial(cache: &Cache, c: char) -> char {
        c
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(city(&cache, "Zürich city").await, 11);
    assert_eq!(city(&cache, "tab\there\r\n").await, 10);
    assert_eq!(city(&cache, "東京").await, 2);
    assert_eq!(city(&cache, "").await, 0);
    assert_eq!(initial(&cache, 'é').await, 'é');
    for (name, chars) in [("Zürich city", 11), ("tab\there\r\n", 10), ("東京", 2), ("", 0)] {
        assert_eq!(city(&cache, name).await, chars);
    }
    assert_eq!(CALLS.load(SeqCst), 4);
    assert_eq!(
        raw.keys().await,
        [
            "t:city:",
            "t:city:%E6%9D%B1%E4%BA%AC",
            "t:city:Z%C3%BCrich%20city",
            "t:city:tab%09here%0D%0A",
            "t:initial:%C3%A9",
        ]
    );
}

#[tokio::test]
async fn option_none_differs_from_some_empty() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "search:<make>:<model>", ttl = "1m", cache = cache)]
    async fn search(cache: &Cache, make: Option<&str>, model: Option<String>) -> String {
        CALLS.fetch_add(1, SeqCst);
        format!("{make:?}/{model:?}")
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    let cases: [(Option<&str>, Option<&str>); 5] = [
        (None, None),
        (Some(""), None),
        (None, Some("")),
        (Some(""), Some("")),
        (Some("~"), Some("x")),
    ];
    for _ in 0..2 {
        for (make, model) in cases {
            let expected = format!("{make:?}/{:?}", model.map(str::to_owned));
            assert_eq!(search(&cache, make, model.map(str::to_owned)).await, expected);
        }
    }
    assert_eq!(CALLS.load(SeqCst), cases.len(), "each argument list has its own key");
    assert_eq!(
        raw.keys().await,
        ["t:search:%7E:x", "t:search::", "t:search::~", "t:search:~:", "t:search:~:~"]
    );
}

#[tokio::test]
async fn nested_options_have_their_own_keys() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "discount:<pct>", ttl = "1m", cache = cache)]
    async fn discount(cache: &Cache, pct: Option<Option<u32>>) -> String {
        CALLS.fetch_add(1, SeqCst);
        format!("{pct:?}")
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    for _ in 0..2 {
        for pct in [None, Some(None), Some(Some(5))] {
            assert_eq!(discount(&cache, pct).await, format!("{pct:?}"));
        }
    }
    assert_eq!(CALLS.load(SeqCst), 3, "`None` and `Some(None)` have different keys");
    assert_eq!(raw.keys().await, ["t:discount:5", "t:discount:~", "t:discount:~~"]);
}

/// A user identifier with its own `KeyPart`: whatever it writes is encoded too.
struct Vin(String);

impl KeyPart for Vin {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(&self.0.to_ascii_uppercase());
    }
}

/// A composite identifier written as two fields.
struct Coord {
    x: i32,
    y: &'static str,
}

impl KeyPart for Coord {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push(&self.x);
        key.field_separator();
        key.push(self.y);
    }
}

#[tokio::test]
async fn user_key_parts_are_encoded() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "vin:<vin>", ttl = "1m", cache = cache)]
    async fn by_vin(cache: &Cache, vin: &Vin) -> String {
        CALLS.fetch_add(1, SeqCst);
        vin.0.clone()
    }

    #[cached(key = "at:<c>", ttl = "1m", cache = cache)]
    async fn at(cache: &Cache, c: Coord) -> String {
        CALLS.fetch_add(1, SeqCst);
        format!("{}/{}", c.x, c.y)
    }

    let server = RedisServer::start();
    let raw = Raw::connect(&server).await;
    let cache = redis_cache(&server).await;

    assert_eq!(by_vin(&cache, &Vin("wvw zzz:1*".into())).await, "wvw zzz:1*");
    assert_eq!(by_vin(&cache, &Vin("WVW ZZZ:1*".into())).await, "wvw zzz:1*", "same key: a hit");
    assert_eq!(at(&cache, Coord { x: 1, y: "2,3" }).await, "1/2,3");
    assert_eq!(at(&cache, Coord { x: 12, y: "3" }).await, "12/3");
    assert_eq!(CALLS.load(SeqCst), 3);
    assert_eq!(raw.keys().await, ["t:at:1,2%2C3", "t:at:12,3", "t:vin:WVW%20ZZZ%3A1%2A"]);
}
