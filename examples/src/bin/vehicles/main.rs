//! `vehicles`: a small vehicles marketplace over a real database, with `#[cached]` service
//! functions in front of it.
//!
//! ```text
//! cargo run --release -p examples --bin vehicles -- demo     # seed, drive a workload, report
//! cargo run --release -p examples --bin vehicles -- serve    # the HTTP API on 127.0.0.1:8080
//! cargo run --release -p examples --bin vehicles -- serve --no-cache  # the same, no cache
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release -p examples --bin vehicles -- serve --near
//! ```
//!
//! The database is an embedded SQLite file (created and seeded on first run) unless
//! `DATABASE_URL` (or `--database-url`) names another, e.g. `postgres://user:pw@host/db`.
//! The cache is the in-process memory store unless `REDIS_URL` is set. `serve` mounts the
//! cache's admin routes under `/admin`; their `POST` routes take `CACHE_ADMIN_TOKEN` (a random
//! token, printed at start, when it is not set).
//!
//! Logs go to stderr through a `tracing` subscriber: `RUST_LOG` chooses them (e.g.
//! `RUST_LOG=cache_runtime=debug` for every hit and miss); without it, warnings from every
//! crate and the runtime's info lines (`cache_runtime=info`) print.

mod demo;
mod workload;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use cache_runtime::Cache;
use clap::{Parser, Subcommand};
use examples::marketplace::http::Mode;
use examples::marketplace::{self, Backend, Db, Marketplace};

#[derive(Debug, Parser)]
#[command(name = "vehicles", about = "A vehicles marketplace cached with cache-runtime")]
struct Cli {
    /// The database: `sqlite://path?mode=rwc` or `postgres://...`. Default: `DATABASE_URL`,
    /// else a SQLite file in the temp dir.
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seeds the database, runs a mixed workload without and with the cache, and reports.
    Demo {
        /// Requests in each run.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Runs the HTTP API.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Cache in Redis with a near cache (`near_cache(64 MiB)`) in front; needs
        /// `REDIS_URL`.
        #[arg(long, conflicts_with = "no_cache")]
        near: bool,
        /// Serve every route straight from the database, without the cache, to compare.
        #[arg(long)]
        no_cache: bool,
    },
}

/// The filter without `RUST_LOG`: warnings from every crate, and the runtime's info lines
/// (Redis's eviction policy at connect, the circuit breaker closing, admin invalidations).
const DEFAULT_LOG: &str = "warn,cache_runtime=info";

/// Logs to stderr, filtered by `RUST_LOG` (else [`DEFAULT_LOG`]).
fn install_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours on a terminal only: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Where the data and the cache live, said once at the start.
struct Setup {
    service: Marketplace,
    /// With `REDIS_URL` and `with_near`: the same service over a Redis cache with a near
    /// cache (`demo` runs the workload a third time through it, `serve --near` serves it).
    near: Option<Marketplace>,
    database: String,
    store: String,
}

async fn setup(database_url: Option<String>, with_near: bool) -> Result<Setup, String> {
    let url = match database_url.or_else(|| std::env::var("DATABASE_URL").ok()) {
        Some(url) if !url.is_empty() => url,
        _ => marketplace::default_sqlite_url().map_err(|e| format!("temp dir: {e}"))?,
    };
    let started = Instant::now();
    let db = Db::connect(&url).await.map_err(|e| format!("cannot open the database: {e}"))?;
    let sizes = db.sizes().await.map_err(|e| e.to_string())?;
    let database = match db.backend() {
        Backend::Sqlite => {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            format!("SQLite {}", path.split('?').next().unwrap_or(path))
        }
        Backend::Postgres => "PostgreSQL (DATABASE_URL)".to_owned(),
    };
    let database = format!(
        "{database}: {} vehicles, {} dealers, {} users ({} in {:.1?})",
        sizes.vehicles,
        sizes.dealers,
        sizes.users,
        if db.seeded() { "created and seeded" } else { "opened" },
        started.elapsed()
    );
    let (cache, near, store) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let builder = Cache::builder().redis(url.clone()).prefix("vehicles:");
            let cache = builder.clone().build().await.map_err(|e| format!("REDIS_URL: {e}"))?;
            let near = if with_near {
                let near = builder.near_cache(64 * 1024 * 1024).build().await;
                Some(near.map_err(|e| format!("REDIS_URL: {e}"))?)
            } else {
                None
            };
            (
                cache,
                near,
                format!("Redis at {}, prefix \"vehicles:\"", cache_runtime::redact_url(&url)),
            )
        }
        _ => (Cache::memory(), None, "in-process memory store".to_owned()),
    };
    let near = near.map(|near| Marketplace::new(db.clone(), near));
    Ok(Setup { service: Marketplace::new(db, cache), near, database, store })
}

/// `CACHE_ADMIN_TOKEN`, else 128 random bits for this run (from the OS-seeded keys of
/// `RandomState`; a production service takes a managed secret instead).
fn admin_token() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    match std::env::var("CACHE_ADMIN_TOKEN") {
        Ok(token) if !token.is_empty() => token,
        _ => (0..2)
            .map(|_| {
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                hasher.write_u128(Instant::now().elapsed().as_nanos());
                format!("{:016x}", hasher.finish())
            })
            .collect(),
    }
}

/// What `serve` puts between the routes and the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    /// The cache (memory, or Redis with `REDIS_URL`).
    Cached,
    /// Redis with a near cache.
    Near,
    /// Nothing: every route reads the database.
    NoCache,
}

async fn serve(setup: Setup, addr: SocketAddr, serving: Serving) -> Result<(), String> {
    let token = admin_token();
    let (service, mode, store) = match serving {
        Serving::Cached => (setup.service, Mode::Cached, setup.store),
        Serving::Near => match setup.near {
            Some(near) => (near, Mode::Cached, format!("{}, near cache 64 MiB", setup.store)),
            None => return Err("--near needs REDIS_URL: the near cache fronts Redis".to_owned()),
        },
        Serving::NoCache => (
            setup.service,
            Mode::Direct,
            format!(
                "none (--no-cache: every route reads the database; the price-change rate limit still counts in the {})",
                setup.store
            ),
        ),
    };
    let router = marketplace::http::router_with(service, &token, mode)
        .map_err(|e| format!("CACHE_ADMIN_TOKEN: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("database: {}", setup.database);
    println!("cache:    {store}");
    println!("listening on http://{addr}");
    println!("  try /vehicles/1, /dealers/1/vehicles, /homepage, /search?make=toyota&max_price=25000, /users/1");
    println!(
        "  admin: /admin/metrics, /admin/cache/stats; POST /admin/cache/invalidate/{{key}} with"
    );
    if std::env::var_os("CACHE_ADMIN_TOKEN").is_some() {
        println!("  Authorization: Bearer $CACHE_ADMIN_TOKEN");
    } else {
        println!("  Authorization: Bearer {token}  (set CACHE_ADMIN_TOKEN to choose it)");
    }
    // The client's address: `PUT /vehicles/{id}` is rate limited per address.
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    install_logging();
    let with_near = match cli.command {
        Command::Demo { .. } => true,
        Command::Serve { near, .. } => near,
    };
    let result = match setup(cli.database_url, with_near).await {
        Err(e) => Err(e),
        Ok(setup) => match cli.command {
            Command::Demo { requests, concurrency } => {
                demo::run(setup, requests.max(1), concurrency.max(1)).await
            }
            Command::Serve { addr, near, no_cache } => {
                let serving = match (near, no_cache) {
                    (true, _) => Serving::Near,
                    (_, true) => Serving::NoCache,
                    _ => Serving::Cached,
                };
                serve(setup, addr, serving).await
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vehicles: {e}");
            ExitCode::FAILURE
        }
    }
}
