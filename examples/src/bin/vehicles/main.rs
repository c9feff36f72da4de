//! `vehicles`: a small vehicles marketplace over a real database, with `#[cached]` service
//! functions in front of it.
//!
//! ```text
//! cargo run --release -p examples --bin vehicles -- demo     # seed, drive a workload, report
//! cargo run --release -p examples --bin vehicles -- serve    # the HTTP API on 127.0.0.1:8080
//! ```
//!
//! The database is an embedded SQLite file (created and seeded on first run) unless
//! `DATABASE_URL` (or `--database-url`) names another, e.g. `postgres://user:pw@host/db`.
//! The cache is the in-process memory store unless `REDIS_URL` is set. `serve` mounts the
//! cache's admin routes under `/admin`; their `POST` routes take `CACHE_ADMIN_TOKEN` (a random
//! token, printed at start, when it is not set).

mod demo;
mod workload;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use cache_runtime::Cache;
use clap::{Parser, Subcommand};
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
    },
}

/// Where the data and the cache live, said once at the start.
struct Setup {
    service: Marketplace,
    /// With `REDIS_URL`: the same service over a Redis cache with a near cache (`demo` runs
    /// the workload a third time through it).
    near: Option<Marketplace>,
    database: String,
    store: String,
}

async fn setup(database_url: Option<String>) -> Result<Setup, String> {
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
            let near = builder
                .near_cache(64 * 1024 * 1024)
                .build()
                .await
                .map_err(|e| format!("REDIS_URL: {e}"))?;
            (cache, Some(near), format!("Redis at {url}, prefix \"vehicles:\""))
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

async fn serve(setup: Setup, addr: SocketAddr) -> Result<(), String> {
    let token = admin_token();
    let router = marketplace::http::router(setup.service, &token)
        .map_err(|e| format!("CACHE_ADMIN_TOKEN: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("database: {}", setup.database);
    println!("cache:    {}", setup.store);
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
    let result = match setup(cli.database_url).await {
        Err(e) => Err(e),
        Ok(setup) => match cli.command {
            Command::Demo { requests, concurrency } => {
                demo::run(setup, requests.max(1), concurrency.max(1)).await
            }
            Command::Serve { addr } => serve(setup, addr).await,
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
