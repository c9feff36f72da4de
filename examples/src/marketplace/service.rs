//! The cached service: the data layer's reads behind `#[cached]`, its writes followed by
//! `#[invalidates]` and `#[cache_put]`.
//!
//! | key | function | TTL | options |
//! |---|---|---|---|
//! | `vehicle:<id>` | [`Marketplace::vehicle`] | 15m | `lock` |
//! | `dealer:<dealer_id>:vehicles` | [`Marketplace::dealer_vehicles`] | 5m | `lock` |
//! | `homepage:<section>` | [`Marketplace::homepage_section`] | 10m | `lock`, `stale = "1h"` |
//! | `search:<make or ~>:<hash of the filters>` | [`Marketplace::search`] | 5m | |
//! | `user:<id>` | [`Marketplace::user`] | 1h | |
//!
//! A price change drops `vehicle:<id>`, `dealer:<dealer>:*`, `homepage:*`, and the searches
//! that can list the vehicle: `search:<its make>:*` and `search:~:*` (searches of any make).
//! A profile change is written through to `user:<id>`.

use cache_runtime::{cache_put, cached, invalidates, Cache};

use super::db::{Db, DbError};
use super::model::{
    DealerVehicles, Homepage, ProfileUpdate, SearchFilters, SearchPage, Section, UserProfile,
    Vehicle,
};

/// The marketplace service: the database plus the cache in front of it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Marketplace {
    db: Db,
    cache: Cache,
}

impl Marketplace {
    /// A service reading `db` through `cache`.
    pub fn new(db: Db, cache: Cache) -> Marketplace {
        Marketplace { db, cache }
    }

    /// The database, uncached.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// One vehicle: the hottest read. `lock`: one load per key at a time, across processes.
    ///
    /// # Errors
    ///
    /// When the database fails (never cached).
    #[cached(key = "vehicle:<id>", ttl = "15m", lock, cache = self.cache)]
    pub async fn vehicle(&self, id: i64) -> Result<Option<Vehicle>, DbError> {
        self.db.vehicle(id).await
    }

    /// A dealer's page.
    ///
    /// # Errors
    ///
    /// When the database fails.
    #[cached(key = "dealer:<dealer_id>:vehicles", ttl = "5m", lock, cache = self.cache)]
    pub async fn dealer_vehicles(&self, dealer_id: i64) -> Result<Option<DealerVehicles>, DbError> {
        self.db.dealer_vehicles(dealer_id).await
    }

    /// One homepage section. Every visitor reads it, so it is locked, and kept an hour past
    /// its TTL: if the database fails after the 10 minutes, the last value is served.
    ///
    /// # Errors
    ///
    /// When the database fails and no stale value is left.
    #[cached(key = "homepage:<section>", ttl = "10m", lock, stale = "1h", cache = self.cache)]
    pub async fn homepage_section(&self, section: Section) -> Result<Vec<Vehicle>, DbError> {
        self.db.homepage_section(section).await
    }

    /// The homepage: its three sections, read concurrently.
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

    /// A search, keyed by its make (`~` for any) and the hash of its normalised filters:
    /// `search:toyota:9f0c7d2e41a6b3c8`. The make in the key lets a price change drop only
    /// the searches that can list the vehicle.
    ///
    /// # Errors
    ///
    /// When the database fails.
    #[cached(key = "search:<filters.make>:<filters>", ttl = "5m", cache = self.cache)]
    pub async fn search(&self, filters: &SearchFilters) -> Result<SearchPage, DbError> {
        self.db.search(filters).await
    }

    /// A user's profile.
    ///
    /// # Errors
    ///
    /// When the database fails.
    #[cached(key = "user:<id>", ttl = "1h", cache = self.cache)]
    pub async fn user(&self, id: i64) -> Result<Option<UserProfile>, DbError> {
        self.db.user(id).await
    }

    /// Changes a vehicle's price: writes the database, then drops every cached view that
    /// shows the price. Returns the updated vehicle, `None` for an unknown id.
    ///
    /// The keys to drop name the vehicle's dealer, so the current row is read first (through
    /// the cache: a vehicle never changes dealer).
    ///
    /// # Errors
    ///
    /// When the database fails; nothing is invalidated then.
    pub async fn update_price(&self, id: i64, price: i64) -> Result<Option<Vehicle>, DbError> {
        let Some(current) = self.vehicle(id).await? else {
            return Ok(None);
        };
        let make = current.make.to_lowercase(); // as SearchFilters normalises it
        self.save_price(&current, &make, price).await
    }

    #[invalidates(
        "vehicle:<v.id>",
        "dealer:<v.dealer_id>:*",
        "homepage:*",
        "search:<make>:*",
        "search:~:*",
        cache = self.cache
    )]
    async fn save_price(
        &self,
        v: &Vehicle,
        make: &str,
        price: i64,
    ) -> Result<Option<Vehicle>, DbError> {
        self.db.update_price(v.id, price).await
    }

    /// Changes a user's profile and writes the new profile through to `user:<id>`, so the
    /// next read is a hit with the new values.
    ///
    /// # Errors
    ///
    /// When the database fails; the cache is left alone then.
    #[cache_put(key = "user:<id>", ttl = "1h", cache = self.cache)]
    pub async fn update_profile(
        &self,
        id: i64,
        update: &ProfileUpdate,
    ) -> Result<Option<UserProfile>, DbError> {
        self.db.update_profile(id, update).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_invalidation_can_match_a_cached_key() {
        cache_runtime::check_invalidations().unwrap();
    }
}
