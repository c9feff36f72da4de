//! The data layer: plain SQL over an sqlx `Any` pool, SQLite or PostgreSQL.
//!
//! Nothing here caches. Every method issues its queries and counts them in
//! [`Db::queries`], so a program can compare the queries that reached the database with the
//! requests it served. The SQL is portable: `$1` placeholders (which SQLite also accepts),
//! `BIGINT`, `TEXT` and `DOUBLE PRECISION` columns, `RETURNING`, window functions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, ConnectOptions as _, Executor as _, FromRow, Row as _};

use super::model::{
    Dealer, DealerListing, DealerVehicles, Homepage, ProfileUpdate, SearchFilters, SearchPage,
    Section, Sort, UserProfile, Vehicle, PAGE_SIZE,
};
use super::seed;

/// A database failure.
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct DbError(#[from] pub sqlx::Error);

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (a file).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// How many rows each table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Rows of `vehicles`; ids run from 1 to this.
    pub vehicles: i64,
    /// Rows of `dealers`; ids run from 1 to this.
    pub dealers: i64,
    /// Rows of `users`; ids run from 1 to this.
    pub users: i64,
}

/// The marketplace database: a connection pool and a query counter. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    seeded: bool,
    queries: Arc<AtomicU64>,
}

const VEHICLE_COLUMNS: &str =
    "id, dealer_id, make, model, year, price, mileage, fuel, body, province, featured, listed_at";

impl Db {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://...`), creates the tables
    /// if they are missing and seeds them if they are empty.
    ///
    /// # Errors
    ///
    /// When the database cannot be reached or the schema cannot be created.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let mut options: AnyConnectOptions = url.parse()?;
        // `DEMO_DB_SLOW_MS`: statements at least this slow are logged (a `WARN` of target
        // `sqlx::query`, with the time they took), to tell a slow query from a wait elsewhere.
        if let Some(ms) = std::env::var("DEMO_DB_SLOW_MS").ok().and_then(|ms| ms.parse().ok()) {
            options =
                options.log_slow_statements(log::LevelFilter::Warn, Duration::from_millis(ms));
        }
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Readers do not wait for the writer; commits skip one fsync.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let seeded = seed::create_and_seed(&pool).await?;
        Ok(Db { pool, backend, seeded, queries: Arc::new(AtomicU64::new(0)) })
    }

    /// The kind of database.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether [`connect`](Self::connect) found the database empty and seeded it.
    pub fn seeded(&self) -> bool {
        self.seeded
    }

    /// Queries issued through this handle (and its clones) so far; seeding is not counted.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn count(&self, queries: u64) {
        self.queries.fetch_add(queries, Ordering::Relaxed);
    }

    /// Row counts (not counted as queries: bookkeeping, not traffic).
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn sizes(&self) -> Result<Sizes, DbError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM vehicles) AS vehicles, \
                    (SELECT COUNT(*) FROM dealers) AS dealers, \
                    (SELECT COUNT(*) FROM users) AS users",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Sizes {
            vehicles: row.try_get("vehicles")?,
            dealers: row.try_get("dealers")?,
            users: row.try_get("users")?,
        })
    }

    /// One vehicle. One query.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn vehicle(&self, id: i64) -> Result<Option<Vehicle>, DbError> {
        self.count(1);
        let sql = format!("SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE id = $1");
        Ok(sqlx::query_as(&sql).bind(id).fetch_optional(&self.pool).await?)
    }

    /// A dealer and its newest 48 vehicles; `None` for an unknown dealer. Two queries.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn dealer_vehicles(&self, dealer_id: i64) -> Result<Option<DealerVehicles>, DbError> {
        self.count(1);
        let dealer: Option<Dealer> =
            sqlx::query_as("SELECT id, name, province, rating FROM dealers WHERE id = $1")
                .bind(dealer_id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(dealer) = dealer else {
            return Ok(None);
        };
        self.count(1);
        let sql = format!(
            "SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE dealer_id = $1 \
             ORDER BY listed_at DESC, id DESC LIMIT 48"
        );
        let vehicles = sqlx::query_as(&sql).bind(dealer_id).fetch_all(&self.pool).await?;
        Ok(Some(DealerVehicles { dealer, vehicles }))
    }

    /// Vehicles by id, one query (`WHERE id IN (...)`); ids without a row are left out.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn vehicles_by_ids(
        &self,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, Vehicle>, DbError> {
        if ids.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        self.count(1);
        let slots: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql =
            format!("SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE id IN ({})", slots.join(", "));
        let mut query = sqlx::query_as::<_, Vehicle>(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|vehicle| (vehicle.id, vehicle)).collect())
    }

    /// A dealer and the ids of its newest 48 vehicles; `None` for an unknown dealer. Two
    /// queries.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn dealer_listing(&self, dealer_id: i64) -> Result<Option<DealerListing>, DbError> {
        self.count(1);
        let dealer: Option<Dealer> =
            sqlx::query_as("SELECT id, name, province, rating FROM dealers WHERE id = $1")
                .bind(dealer_id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(dealer) = dealer else {
            return Ok(None);
        };
        self.count(1);
        let ids = sqlx::query_scalar(
            "SELECT id FROM vehicles WHERE dealer_id = $1 ORDER BY listed_at DESC, id DESC LIMIT 48",
        )
        .bind(dealer_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(DealerListing { dealer, ids }))
    }

    /// The ids of one homepage section's twelve vehicles, in order. One query.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn homepage_section_ids(&self, section: Section) -> Result<Vec<i64>, DbError> {
        self.count(1);
        let sql = format!("SELECT id FROM vehicles {} LIMIT 12", section_clause(section));
        Ok(sqlx::query_scalar(&sql).fetch_all(&self.pool).await?)
    }

    /// The twelve vehicles of one homepage section. One query.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn homepage_section(&self, section: Section) -> Result<Vec<Vehicle>, DbError> {
        self.count(1);
        let clause = section_clause(section);
        let sql = format!("SELECT {VEHICLE_COLUMNS} FROM vehicles {clause} LIMIT 12");
        Ok(sqlx::query_as(&sql).fetch_all(&self.pool).await?)
    }

    /// The homepage: its three sections, read concurrently. Three queries.
    ///
    /// # Errors
    ///
    /// When a section cannot be read.
    pub async fn homepage(&self) -> Result<Homepage, DbError> {
        let (featured, latest, deals) = tokio::try_join!(
            self.homepage_section(Section::Featured),
            self.homepage_section(Section::Latest),
            self.homepage_section(Section::Deals),
        )?;
        Ok(Homepage { featured, latest, deals })
    }

    /// One page of vehicles matching `filters`, with the total over all pages. One query.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn search(&self, filters: &SearchFilters) -> Result<SearchPage, DbError> {
        self.count(1);
        let mut conditions = Vec::new();
        let mut texts = Vec::new();
        let mut numbers = Vec::new();
        // Text parameters come first, then numbers: `$n` follows the bind order.
        for (column, value) in
            [("make", &filters.make), ("body", &filters.body), ("province", &filters.province)]
        {
            if let Some(value) = value {
                texts.push(value.clone());
                conditions.push(format!("LOWER({column}) = ${}", texts.len()));
            }
        }
        for (condition, value) in [
            ("price >= ", filters.min_price),
            ("price <= ", filters.max_price),
            ("year >= ", filters.year_from),
        ] {
            if let Some(value) = value {
                numbers.push(value);
                conditions.push(format!("{condition}${}", texts.len() + numbers.len()));
            }
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let order = match filters.sort {
            Sort::Newest => "listed_at DESC, id DESC",
            Sort::PriceAsc => "price ASC, id ASC",
            Sort::PriceDesc => "price DESC, id ASC",
            Sort::Mileage => "mileage ASC, id ASC",
        };
        let offset = (filters.page - 1).saturating_mul(PAGE_SIZE);
        let sql = format!(
            "SELECT {VEHICLE_COLUMNS}, COUNT(*) OVER () AS total FROM vehicles {filter} \
             ORDER BY {order} LIMIT {PAGE_SIZE} OFFSET {offset}"
        );
        let mut query = sqlx::query(&sql);
        for text in texts {
            query = query.bind(text);
        }
        for number in numbers {
            query = query.bind(number);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let total = match rows.first() {
            Some(row) => row.try_get("total")?,
            None => 0,
        };
        let vehicles = rows.iter().map(Vehicle::from_row).collect::<Result<_, _>>()?;
        Ok(SearchPage { total, page: filters.page, vehicles })
    }

    /// One user's profile. One query.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn user(&self, id: i64) -> Result<Option<UserProfile>, DbError> {
        self.count(1);
        Ok(sqlx::query_as("SELECT id, name, email, province, plan FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Sets a vehicle's price; returns the updated row (`None` for an unknown id). One query.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn update_price(&self, id: i64, price: i64) -> Result<Option<Vehicle>, DbError> {
        self.count(1);
        let sql =
            format!("UPDATE vehicles SET price = $1 WHERE id = $2 RETURNING {VEHICLE_COLUMNS}");
        Ok(sqlx::query_as(&sql).bind(price).bind(id).fetch_optional(&self.pool).await?)
    }

    /// Changes a user's name and province; returns the updated row (`None` for an unknown
    /// id). One query.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn update_profile(
        &self,
        id: i64,
        update: &ProfileUpdate,
    ) -> Result<Option<UserProfile>, DbError> {
        self.count(1);
        Ok(sqlx::query_as(
            "UPDATE users SET name = $1, province = $2 WHERE id = $3 \
             RETURNING id, name, email, province, plan",
        )
        .bind(update.name.clone())
        .bind(update.province.clone())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

impl FromRow<'_, AnyRow> for Vehicle {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Vehicle {
            id: row.try_get("id")?,
            dealer_id: row.try_get("dealer_id")?,
            make: row.try_get("make")?,
            model: row.try_get("model")?,
            year: row.try_get("year")?,
            price: row.try_get("price")?,
            mileage: row.try_get("mileage")?,
            fuel: row.try_get("fuel")?,
            body: row.try_get("body")?,
            province: row.try_get("province")?,
            featured: row.try_get::<i64, _>("featured")? != 0,
            listed_at: row.try_get("listed_at")?,
        })
    }
}

impl FromRow<'_, AnyRow> for Dealer {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Dealer {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            province: row.try_get("province")?,
            rating: row.try_get("rating")?,
        })
    }
}

impl FromRow<'_, AnyRow> for UserProfile {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(UserProfile {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            province: row.try_get("province")?,
            plan: row.try_get("plan")?,
        })
    }
}

/// Which vehicles a homepage section lists, in which order.
fn section_clause(section: Section) -> &'static str {
    match section {
        Section::Featured => "WHERE featured = 1 ORDER BY listed_at DESC, id DESC",
        Section::Latest => "ORDER BY listed_at DESC, id DESC",
        Section::Deals => "ORDER BY price ASC, id ASC",
    }
}
