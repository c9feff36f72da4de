//! A small vehicles marketplace, modelled on the caching service of a real one: vehicles,
//! dealers, homepage sections, searches and user profiles over a real database, with a
//! cache in front.
//!
//! - [`Db`]: the data layer, SQL over SQLite (embedded, the default) or PostgreSQL, created
//!   and seeded on first use; it counts the queries it issues.
//! - [`Marketplace`]: the service; its reads are `#[cached]`, its writes invalidate or write
//!   through (the table of keys is on the [`service`] module).
//! - [`http::router`]: the HTTP API over the service.

pub mod db;
pub mod http;
pub mod model;
mod seed;
pub mod service;

pub use db::{Backend, Db, DbError, Sizes};
pub use model::{
    Dealer, DealerListing, DealerVehicles, FilterTooLong, Homepage, ProfileUpdate, SearchFilters,
    SearchPage, SearchQuery, Section, Sort, UserProfile, Vehicle, MAX_FILTER_BYTES,
};
pub use service::Marketplace;

/// The makes, body styles and provinces of the seeded data, for building workloads.
pub mod catalog {
    pub use super::seed::{BODIES, PROVINCES};

    /// The makes in the seeded data.
    pub fn makes() -> Vec<&'static str> {
        super::seed::makes().collect()
    }
}

/// The default SQLite database: `vehicles-v1.db` in a `cache-runtime-vehicles` folder of the
/// system's temp dir, created on first use.
///
/// # Errors
///
/// When the folder cannot be created.
pub fn default_sqlite_url() -> std::io::Result<String> {
    let dir = std::env::temp_dir().join("cache-runtime-vehicles");
    std::fs::create_dir_all(&dir)?;
    Ok(format!("sqlite://{}?mode=rwc", dir.join("vehicles-v1.db").display()))
}
