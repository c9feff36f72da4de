//! OpenTelemetry: the cache's spans and counters, exported with the OpenTelemetry SDK.
//!
//! The runtime writes `tracing` spans (`cache.load`, `cache.lock_wait`, `cache.refresh`,
//! `cache.invalidate`; see the README's "Traces"); `tracing-opentelemetry` turns them into
//! OpenTelemetry spans. Its counters (`Cache::stats_report`) are read by OpenTelemetry
//! observable counters under the names of the metrics table (`cache_hits_total`, ...).
//! Both go to stdout here (`opentelemetry-stdout`); a service would use an OTLP exporter
//! (`opentelemetry-otlp`) in the same place.
//!
//! ```text
//! cargo run -p examples --bin opentelemetry                  # memory store
//! cargo run -p examples --bin opentelemetry redis://127.0.0.1:6379/   # Redis: shows a lock wait
//! cargo run -p examples --bin opentelemetry -- --redact-keys # no key in any span
//! ```

use std::time::Duration;

use cache_runtime::{cached, invalidates, Cache};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Stands in for the database.
async fn query_price(id: u64) -> Result<u64, String> {
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok(10_000 + id)
}

#[cached(key = "price:<id>", ttl = "10m", lock, cache = cache)]
async fn price(cache: &Cache, id: u64) -> Result<u64, String> {
    query_price(id).await
}

#[invalidates("price:<id>", cache = cache)]
async fn set_price(cache: &Cache, id: u64) -> Result<(), String> {
    let _ = (cache, id); // the database write
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let redact = args.iter().any(|arg| arg == "--redact-keys");
    let url = args.iter().find(|arg| arg.starts_with("redis")).cloned();

    // Traces: the SDK's provider with a stdout exporter, under a `tracing` subscriber whose
    // OpenTelemetry layer takes the INFO spans (the cache's spans are INFO).
    let resource = Resource::builder().with_service_name("cache-opentelemetry-recipe").build();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .with_resource(resource.clone())
        .build();
    let tracer = tracer_provider.tracer("cache-recipe");
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .init();

    // Metrics: the SDK's provider with a stdout exporter (exported at shutdown here).
    let meter_provider = SdkMeterProvider::builder()
        .with_periodic_exporter(opentelemetry_stdout::MetricExporter::default())
        .with_resource(resource)
        .build();

    let build = |prefix: &'static str| {
        let builder = Cache::builder().redact_keys(redact);
        let builder = match &url {
            Some(url) => builder.redis(url.clone()).prefix(prefix),
            None => builder,
        };
        builder.build()
    };
    let cache = build("otel-recipe:").await?;
    export_counters(&meter_provider, &cache);
    if url.is_some() {
        cache.clear().await?;
    }

    // A miss (`cache.load`, outcome `stored`), then a hit (no span).
    let request = tracing::info_span!("GET /prices/7");
    price(&cache, 7).instrument_in(&request).await?;
    price(&cache, 7).instrument_in(&request).await?;
    drop(request);

    // An invalidation (`cache.invalidate`, scope `key`, 1 key removed).
    let request = tracing::info_span!("PUT /prices/7");
    set_price(&cache, 7).instrument_in(&request).await?;
    drop(request);

    // Two concurrent misses of one key with `lock`: one loads, the other is answered by it
    // (`cache.outcome` = `coalesced`). On Redis the second call goes through another handle
    // (as another process would) and waits on the lease (`cache.lock_wait`, `woken`).
    let other = match url {
        Some(_) => build("otel-recipe:").await?,
        None => cache.clone(),
    };
    let request = tracing::info_span!("GET /prices/8 (twice)");
    let (first, second) = tokio::join!(
        price(&cache, 8).instrument_in(&request),
        price(&other, 8).instrument_in(&request),
    );
    assert_eq!(first?, second?);
    drop(request);

    // Flush: spans are exported as they end (simple exporter); metrics at shutdown.
    tracer_provider.shutdown()?;
    meter_provider.shutdown()?;
    let stats = cache.stats_of("price");
    eprintln!(
        "price: {} hits, {} misses, {} loads, {} coalesced; {} key(s) invalidated",
        stats.hits,
        stats.misses,
        stats.loads,
        stats.coalesced,
        cache.stats_of("set_price").invalidated
    );
    Ok(())
}

/// The cache's counters as OpenTelemetry observable counters, read from
/// `Cache::stats_report` when the reader collects, under the metrics table's names and its
/// `function` label.
fn export_counters(provider: &SdkMeterProvider, cache: &Cache) {
    let meter = provider.meter("cache-runtime");
    type Read = fn(&cache_runtime::Stats) -> u64;
    let families: [(&str, &str, Read); 6] = [
        ("cache_hits_total", "calls answered from the cache", |s| s.hits),
        ("cache_misses_total", "calls that found nothing in the cache", |s| s.misses),
        ("cache_loads_total", "times a body ran to fill the cache", |s| s.loads),
        ("cache_coalesced_total", "misses answered by another caller's load", |s| s.coalesced),
        ("cache_invalidated_keys_total", "keys removed by invalidation", |s| s.invalidated),
        ("cache_errors_total", "failures", |s| s.errors),
    ];
    for (name, description, read) in families {
        let cache = cache.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| {
                for (function, stats) in cache.stats_report().functions {
                    observer.observe(read(&stats), &[KeyValue::new("function", function)]);
                }
            })
            .build();
    }
}

/// `tracing::Instrument` under a shorter name, for a future run inside a request's span.
trait InRequest: std::future::Future + Sized {
    fn instrument_in(self, span: &tracing::Span) -> tracing::instrument::Instrumented<Self> {
        tracing::Instrument::instrument(self, span.clone())
    }
}

impl<F: std::future::Future> InRequest for F {}
