//! The runtime's spans, as a tracing subscriber (an OpenTelemetry exporter, a log) sees them:
//! their names and fields (the README's "Traces" table), recorded through a small layer over
//! tracing-subscriber's `Registry`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_runtime::{cached, invalidates, Cache};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One closed span: its name, its fields with the values recorded, and its parent's name.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    fields: BTreeMap<String, String>,
    parent: Option<String>,
    /// Names of the spans it follows from.
    follows: Vec<String>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Records every span of the subscriber it is layered on, as it closes; events' fields too
/// (to check that no log line carries a key).
#[derive(Clone, Default)]
struct Recorder {
    closed: Arc<Mutex<Vec<Seen>>>,
    events: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("the registry knows the new span");
        let mut seen = Seen {
            name: span.name().to_owned(),
            fields: BTreeMap::new(),
            parent: span.parent().map(|parent| parent.name().to_owned()),
            follows: Vec::new(),
        };
        attrs.record(&mut Fields(&mut seen.fields));
        span.extensions_mut().insert(seen);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("a recorded span is open");
        if let Some(seen) = span.extensions_mut().get_mut::<Seen>() {
            values.record(&mut Fields(&mut seen.fields));
        };
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        let Some(cause) = ctx.span(follows).map(|cause| cause.name().to_owned()) else { return };
        let span = ctx.span(id).expect("a span is open while it follows from another");
        if let Some(seen) = span.extensions_mut().get_mut::<Seen>() {
            seen.follows.push(cause);
        };
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.events.lock().unwrap().push(fields);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).expect("a closing span is known");
        let seen = span.extensions_mut().remove::<Seen>();
        if let Some(seen) = seen {
            self.closed.lock().unwrap().push(seen);
        }
    }
}

impl Recorder {
    /// Installs the recorder for this thread (the tests run on a current-thread runtime).
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    /// Takes the spans closed so far.
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.closed.lock().unwrap())
    }

    fn named(&self, name: &str) -> Vec<Seen> {
        self.take().into_iter().filter(|seen| seen.name == name).collect()
    }
}

#[cached(key = "vehicle:<id>", ttl = "1m", cache = cache)]
async fn vehicle(cache: &Cache, id: u64) -> Result<Option<String>, String> {
    Ok(Some(format!("vehicle {id}")))
}

#[cached(key = "failing:<id>", ttl = "1m", cache = cache)]
async fn failing(cache: &Cache, id: u64) -> Result<String, String> {
    Err(format!("no row {id}"))
}

#[invalidates("vehicle:<id>", cache = cache)]
async fn sell_vehicle(cache: &Cache, id: u64) -> Result<(), String> {
    let _ = (cache, id);
    Ok(())
}

#[tokio::test]
async fn a_miss_is_one_load_span_and_a_hit_none() {
    let recorder = Recorder::default();
    let _guard = recorder.install();
    let cache = Cache::memory();

    assert_eq!(vehicle(&cache, 7).await, Ok(Some("vehicle 7".to_owned())));
    let loads = recorder.named("cache.load");
    assert_eq!(loads.len(), 1, "{loads:?}");
    let load = &loads[0];
    assert_eq!(load.field("cache.function"), Some("vehicle"));
    assert_eq!(load.field("cache.key"), Some("vehicle:7"));
    assert_eq!(load.field("cache.outcome"), Some("stored"));
    assert_eq!(load.field("otel.status_code"), None);

    // A hit: no span at all.
    assert_eq!(vehicle(&cache, 7).await, Ok(Some("vehicle 7".to_owned())));
    assert_eq!(cache.stats_of("vehicle").hits, 1);
    let spans = recorder.take();
    assert!(spans.is_empty(), "a hit opens no span: {spans:?}");

    // A failing body: outcome `failed`, and the span's status an error.
    assert!(failing(&cache, 1).await.is_err());
    let loads = recorder.named("cache.load");
    assert_eq!(loads.len(), 1, "{loads:?}");
    assert_eq!(loads[0].field("cache.function"), Some("failing"));
    assert_eq!(loads[0].field("cache.outcome"), Some("failed"));
    assert_eq!(loads[0].field("otel.status_code"), Some("ERROR"));

    // The programmatic API: function `direct`.
    let loaded = cache
        .get_or_load("report:1", Duration::from_secs(60), || async {
            Ok::<_, cache_runtime::Error>(1u32)
        })
        .await;
    assert_eq!(loaded.unwrap(), 1);
    let loads = recorder.named("cache.load");
    assert_eq!(loads.len(), 1, "{loads:?}");
    assert_eq!(loads[0].field("cache.function"), Some("direct"));
    assert_eq!(loads[0].field("cache.key"), Some("report:1"));
}

#[tokio::test]
async fn an_invalidation_is_one_span_with_its_scope_and_count() {
    let recorder = Recorder::default();
    let _guard = recorder.install();
    let cache = Cache::memory();
    vehicle(&cache, 1).await.unwrap();
    vehicle(&cache, 2).await.unwrap();
    recorder.take();

    sell_vehicle(&cache, 1).await.unwrap();
    let removals = recorder.named("cache.invalidate");
    assert_eq!(removals.len(), 1, "{removals:?}");
    let removal = &removals[0];
    assert_eq!(removal.field("cache.function"), Some("sell_vehicle"));
    assert_eq!(removal.field("cache.scope"), Some("key"));
    assert_eq!(removal.field("cache.key"), Some("vehicle:1"));
    assert_eq!(removal.field("cache.keys_removed"), Some("1"));
    assert_eq!(removal.field("cache.outcome"), Some("removed"));

    assert_eq!(cache.invalidate_pattern("vehicle:*").await.unwrap(), 1);
    let removals = recorder.named("cache.invalidate");
    assert_eq!(removals.len(), 1, "{removals:?}");
    let removal = &removals[0];
    assert_eq!(removal.field("cache.function"), Some("direct"));
    assert_eq!(removal.field("cache.scope"), Some("pattern"));
    assert_eq!(removal.field("cache.pattern"), Some("vehicle:*"));
    assert_eq!(removal.field("cache.key"), None);
    assert_eq!(removal.field("cache.keys_removed"), Some("1"));

    cache.clear().await.unwrap();
    let removals = recorder.named("cache.invalidate");
    assert_eq!(removals.len(), 1, "{removals:?}");
    assert_eq!(removals[0].field("cache.scope"), Some("all"));
}

#[tokio::test]
async fn a_background_refresh_is_a_span_of_its_own_that_follows_from_the_caller() {
    #[cached(key = "price:<id>", ttl = "1m", refresh = "1ms", cache = cache)]
    async fn price(cache: &Cache, id: u64) -> u64 {
        id * 100
    }

    let recorder = Recorder::default();
    let _guard = recorder.install();
    let cache = Cache::memory();
    assert_eq!(price(&cache, 3).await, 300);
    tokio::time::sleep(Duration::from_millis(20)).await;
    recorder.take();

    let request = tracing::info_span!("request");
    {
        use tracing::Instrument;
        assert_eq!(price(&cache, 3).instrument(request.clone()).await, 300);
    }
    drop(request);
    // The refresh runs on its own task.
    let mut refreshes = Vec::new();
    for _ in 0..200 {
        refreshes = recorder.named("cache.refresh");
        if !refreshes.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    let refresh = &refreshes[0];
    assert_eq!(refresh.parent, None, "a detached refresh starts a trace of its own");
    assert_eq!(refresh.follows, vec!["request".to_owned()]);
    assert_eq!(refresh.field("cache.function"), Some("price"));
    assert_eq!(refresh.field("cache.key"), Some("price:3"));
    assert_eq!(refresh.field("cache.outcome"), Some("stored"));
}

#[tokio::test]
async fn with_redact_keys_no_span_or_log_line_carries_a_key() {
    let recorder = Recorder::default();
    let _guard = recorder.install();
    let cache = Cache::builder().redact_keys(true).build().await.unwrap();

    vehicle(&cache, 4242).await.unwrap();
    vehicle(&cache, 4242).await.unwrap();
    sell_vehicle(&cache, 4242).await.unwrap();
    cache.invalidate_pattern("vehicle:42*").await.unwrap();
    // A key longer than `max_key_bytes` is logged (bounded): redacted too.
    let long = format!("{}", 4242u64.pow(2)).repeat(200);
    #[cached(key = "long:<id>", ttl = "1m", cache = cache)]
    async fn long_key(cache: &Cache, id: &str) -> u64 {
        id.len() as u64
    }
    long_key(&cache, &long).await;

    let spans = recorder.take();
    let names: Vec<&str> = spans.iter().map(|seen| seen.name.as_str()).collect();
    assert_eq!(names, ["cache.load", "cache.invalidate", "cache.invalidate"], "{spans:?}");
    assert_eq!(spans[0].field("cache.function"), Some("vehicle"));
    assert_eq!(spans[0].field("cache.outcome"), Some("stored"));
    assert_eq!(spans[1].field("cache.keys_removed"), Some("1"));
    for seen in &spans {
        assert_eq!(seen.field("cache.key"), None, "{seen:?}");
        assert_eq!(seen.field("cache.pattern"), None, "{seen:?}");
        for value in seen.fields.values() {
            assert!(!value.contains("4242") && !value.contains("vehicle:"), "{seen:?}");
        }
    }
    let events = recorder.events.lock().unwrap().clone();
    assert!(
        events.iter().any(|fields| fields.get("key").map(String::as_str) == Some("<redacted>")),
        "the long key's line is written, redacted: {events:?}"
    );
    for fields in &events {
        for value in fields.values() {
            assert!(!value.contains("4242") && !value.contains("vehicle:"), "{fields:?}");
        }
    }

    // Without `redact_keys`, the same lines carry the keys.
    let cache = Cache::memory();
    recorder.events.lock().unwrap().clear();
    long_key(&cache, &long).await;
    let events = recorder.events.lock().unwrap().clone();
    assert!(events.iter().any(|fields| fields.get("key").is_some_and(|key| key.contains("long:"))));
}
