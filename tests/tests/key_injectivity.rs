//! Property tests of key rendering: for every template shape, two different argument lists
//! never render the same key, and no rendered key contains `#` (reserved for the cache's own
//! keys).
//!
//! Each shape is a real `#[cached]` function over an in-process cache whose body returns its
//! arguments (`Debug`-formatted). Its key is also rendered here the way the generated code
//! does it (literal text pushed as it is, each placeholder through
//! `cache_runtime::__private::push_part`), and the test checks, for random argument lists:
//!
//! - the rendered key has no `#`;
//! - no earlier, different argument list of the same property rendered the same key;
//! - the function returns its own arguments (a key shared with another argument list would
//!   return the other one's value, a hit);
//! - the value is stored under exactly the rendered key (`Cache::get`), so the rendering here
//!   is the macro's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Debug;

use cache_runtime::__private::push_part;
use cache_runtime::{cached, Cache, KeyPart, KeyWriter};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::runtime::Runtime;

/// Strings likely to collide if the encoding were wrong (`~`, `,`, `%`, `#`, `:`, hex digits
/// that look like an encoding), or any string at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-c0-9A-F~,%#:_.-]{0,4}", 1 => any::<String>()]
}

fn small_u32() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 0u32..12, 1 => any::<u32>()]
}

/// Runs `call` (a `#[cached]` function) on random lists of argument tuples, rendering each
/// tuple's key with `key`, and checks the properties listed in the module docs.
fn check<T: Debug>(
    tuple: impl Strategy<Value = T>,
    key: impl Fn(&T) -> String,
    call: impl Fn(&Runtime, &Cache, &T) -> String,
) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let cache = Cache::memory();
    // Every key rendered in this property (across cases), with the arguments it came from.
    let seen: RefCell<HashMap<String, String>> = RefCell::default();
    let mut runner = TestRunner::new(Config::default());
    let outcome = runner.run(&vec(tuple, 1..8), |tuples| {
        for tuple in &tuples {
            let arguments = format!("{tuple:?}");
            let key = key(tuple);
            prop_assert!(!key.contains('#'), "{arguments} rendered {key:?}, with a `#`");
            if let Some(earlier) = seen.borrow_mut().insert(key.clone(), arguments.clone()) {
                prop_assert_eq!(&earlier, &arguments, "both rendered the key {:?}", key);
            }
            let returned = call(&runtime, &cache, tuple);
            prop_assert_eq!(&returned, &arguments, "a hit on another argument list's key");
            let stored: Option<String> = runtime
                .block_on(cache.get(&key))
                .map_err(|error| TestCaseError::fail(format!("get({key:?}): {error}")))?;
            prop_assert_eq!(stored, Some(arguments), "the macro stored it under another key");
        }
        Ok(())
    });
    if let Err(error) = outcome {
        panic!("{error}");
    }
}

#[test]
fn one_placeholder() {
    #[cached(key = "one:<a>", ttl = "1m", cache = cache)]
    async fn one(cache: &Cache, a: &str) -> String {
        format!("{:?}", (a,))
    }

    check(
        (text(),),
        |(a,)| {
            let mut key = String::new();
            key.push_str("one:");
            push_part(&mut key, &a.as_str());
            key
        },
        |runtime, cache, (a,)| runtime.block_on(one(cache, a)),
    );
}

#[test]
fn two_options_separated_by_a_colon() {
    #[cached(key = "two:<a>:<b>", ttl = "1m", cache = cache)]
    async fn two(cache: &Cache, a: Option<&str>, b: Option<Option<u32>>) -> String {
        format!("{:?}", (a, b))
    }

    check(
        (of(text()), of(of(small_u32()))),
        |(a, b)| {
            let (a, b) = (a.as_deref(), *b);
            let mut key = String::new();
            key.push_str("two:");
            push_part(&mut key, &a);
            key.push(':');
            push_part(&mut key, &b);
            key
        },
        |runtime, cache, (a, b)| runtime.block_on(two(cache, a.as_deref(), *b)),
    );
}

#[test]
fn owned_string_integer_bool_char_and_nested_options() {
    #[cached(key = "s:<s>:<n>:<f>:<c>:<o>", ttl = "1m", cache = cache)]
    async fn scalars(
        cache: &Cache,
        s: String,
        n: i64,
        f: bool,
        c: char,
        o: Option<Option<Option<bool>>>,
    ) -> String {
        format!("{:?}", (s, n, f, c, o))
    }

    let integer = prop_oneof![3 => -12i64..12, 1 => any::<i64>()];
    let letter = prop_oneof![3 => proptest::sample::select(vec!['a', '~', ',', '%', '#', ':', '-']), 1 => any::<char>()];
    check(
        (text(), integer, any::<bool>(), letter, of(of(of(any::<bool>())))),
        |(s, n, f, c, o)| {
            let (s, n, f, c, o) = (s.clone(), *n, *f, *c, *o);
            let mut key = String::new();
            key.push_str("s:");
            push_part(&mut key, &s);
            key.push(':');
            push_part(&mut key, &n);
            key.push(':');
            push_part(&mut key, &f);
            key.push(':');
            push_part(&mut key, &c);
            key.push(':');
            push_part(&mut key, &o);
            key
        },
        |runtime, cache, (s, n, f, c, o)| {
            runtime.block_on(scalars(cache, s.clone(), *n, *f, *c, *o))
        },
    );
}

#[test]
fn literal_prefix_middle_and_suffix() {
    #[cached(key = "pre.fix-<a>:mid~,:<b>:suffix", ttl = "1m", cache = cache)]
    async fn affixes(cache: &Cache, a: &str, b: Option<&str>) -> String {
        format!("{:?}", (a, b))
    }

    check(
        (text(), of(text())),
        |(a, b)| {
            let (a, b) = (a.as_str(), b.as_deref());
            let mut key = String::new();
            key.push_str("pre.fix-");
            push_part(&mut key, &a);
            key.push_str(":mid~,:");
            push_part(&mut key, &b);
            key.push_str(":suffix");
            key
        },
        |runtime, cache, (a, b)| runtime.block_on(affixes(cache, a, b.as_deref())),
    );
}

#[test]
fn placeholders_at_both_ends() {
    #[cached(key = "<a>:<b>", ttl = "1m", cache = cache)]
    async fn edges(cache: &Cache, a: Option<String>, b: u16) -> String {
        format!("{:?}", (a, b))
    }

    check(
        (of(text()), prop_oneof![3 => 0u16..12, 1 => any::<u16>()]),
        |(a, b)| {
            let (a, b) = (a.clone(), *b);
            let mut key = String::new();
            push_part(&mut key, &a);
            key.push(':');
            push_part(&mut key, &b);
            key
        },
        |runtime, cache, (a, b)| runtime.block_on(edges(cache, a.clone(), *b)),
    );
}

/// A composite identifier: an optional number and a name, written as two fields.
#[derive(Debug, Clone)]
struct Coord {
    x: Option<i32>,
    y: String,
}

impl KeyPart for Coord {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push(&self.x);
        key.field_separator();
        key.push(self.y.as_str());
    }
}

fn coord() -> impl Strategy<Value = Coord> {
    (of(prop_oneof![3 => -3i32..12, 1 => any::<i32>()]), text()).prop_map(|(x, y)| Coord { x, y })
}

#[test]
fn composite_key_parts_with_field_separators() {
    #[cached(key = "at:<c>:<d>", ttl = "1m", cache = cache)]
    async fn at(cache: &Cache, c: Coord, d: Option<Coord>) -> String {
        format!("{:?}", (c, d))
    }

    check(
        (coord(), of(coord())),
        |(c, d)| {
            let (c, d) = (c.clone(), d.clone());
            let mut key = String::new();
            key.push_str("at:");
            push_part(&mut key, &c);
            key.push(':');
            push_part(&mut key, &d);
            key
        },
        |runtime, cache, (c, d)| runtime.block_on(at(cache, c.clone(), d.clone())),
    );
}
