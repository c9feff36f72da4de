//! The cached service: the data layer's reads behind `#[cached]`, its writes followed by
//! `#[invalidates]` and `#[cache_put]`.
//!
//! | key | function | TTL | options |
//! |---|---|---|---|
//! | `vehicle:<id>` | [`Marketplace::vehicle`] | 15m | `lock`, `early`, `absent_ttl = "30s"` |
//! | `vehicle:<id>`, one per id | [`Marketplace::vehicles`] (`#[cached_batch]`) | 15m | `absent_ttl = "30s"` |
//! | `dealer:<dealer_id>:vehicles` | [`Marketplace::dealer_listing`] (the dealer and its ids) | 5m | `lock`, `refresh = "4m"`, `absent_ttl = "30s"` |
//! | `homepage:<section>` | [`Marketplace::homepage_section_ids`] | 10m | `lock`, `stale = "1h"`, `refresh = "8m"`, `timeout = "50ms"` |
//! | `search:<make>:<body>:<province>:<min_price>:<max_price>:<year_from>:<sort>:<page>` (`~` for an absent filter) | [`Marketplace::search`] | 5m | `tags = ["searches:<make>:<ceiling>"]` |
//! | `user:<id>` | [`Marketplace::user`] | 1h | `absent_ttl = "30s"` |
//!
//! A dealer page and a homepage section keep only their ids; their rows come through
//! [`Marketplace::vehicles`], one batch per page, whose entries are the single vehicles'
//! (`vehicle:<id>`): a vehicle read on its own page is a hit on the dealer page, and the
//! reverse, and a price change reloads one row, not every list that shows it.
//!
//! A price change drops `vehicle:<id>`, `dealer:<dealer>:*`, `homepage:*`, and the searches
//! that can list the vehicle at its old or new price, by their tags: of its make or of any
//! make (`~`), with a price ceiling at or above the lower of the two prices, or none
//! ([`price_bucket`]). A search for cheaper cars stays cached.
//! A profile change is written through to `user:<id>`. Invalidation removes a key whatever
//! its options: an early refresh, a stale value and an absent entry go with it.
//!
//! `early`, `refresh` and `timeout` finish the body in the background, after the caller got
//! its answer, so those bodies own their arguments: `&self` is cloned, which is why
//! [`Marketplace`] is a cheap `Clone` handle (a pool and a cache, both shared).

use std::collections::HashMap;

use cache_runtime::{cache_put, cached, cached_batch, invalidates, Cache};

use super::db::{Db, DbError};
use super::model::{
    price_bucket, DealerListing, DealerVehicles, Homepage, ProfileUpdate, SearchFilters,
    SearchPage, Section, UserProfile, Vehicle, MAX_BUCKET,
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

    /// One vehicle: the hottest read.
    ///
    /// # Errors
    ///
    /// When the database fails (never cached).
    // - `lock`: one load per key at a time, across processes.
    // - `early`: a hot vehicle is recomputed in the background shortly before its 15 minutes
    //   end (XFetch: the closer to expiry, the likelier a hit starts it), so its readers never
    //   wait for the database when it expires; the caller that starts it gets the current
    //   value, which is still within its TTL. A price change still drops the key at once.
    // - `absent_ttl = "30s"`: an unknown id (a sold listing, an old link, a crawler) is
    //   remembered as absent for 30 s instead of querying the database on every call (cache
    //   penetration). Ids are never reused; a new row under that id shows within 30 s.
    #[cached(key = "vehicle:<id>", ttl = "15m", lock, early, absent_ttl = "30s", cache = self.cache)]
    pub async fn vehicle(&self, id: i64) -> Result<Option<Vehicle>, DbError> {
        self.db.vehicle(id).await
    }

    /// Vehicles by id: one lookup for all of them, one query (`WHERE id IN (...)`) for the
    /// ids that missed. The same entries as [`vehicle`](Self::vehicle).
    ///
    /// # Errors
    ///
    /// When the database fails (nothing is cached then).
    // - `absent_ttl = "30s"`: as for `vehicle`, an id without a row is remembered as absent.
    #[cached_batch(key = "vehicle:<ids>", ttl = "15m", absent_ttl = "30s", cache = self.cache)]
    pub async fn vehicles(&self, ids: &[i64]) -> Result<HashMap<i64, Vehicle>, DbError> {
        self.db.vehicles_by_ids(ids).await
    }

    /// `ids`' vehicles in their order, through [`vehicles`](Self::vehicles) (ids without a
    /// row are left out).
    async fn in_order(&self, ids: &[i64]) -> Result<Vec<Vehicle>, DbError> {
        let mut rows = self.vehicles(ids).await?;
        Ok(ids.iter().filter_map(|id| rows.remove(id)).collect())
    }

    /// A dealer's page: its listing (cached), then its vehicles in one batch.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn dealer_vehicles(&self, dealer_id: i64) -> Result<Option<DealerVehicles>, DbError> {
        let Some(DealerListing { dealer, ids }) = self.dealer_listing(dealer_id).await? else {
            return Ok(None);
        };
        Ok(Some(DealerVehicles { dealer, vehicles: self.in_order(&ids).await? }))
    }

    /// A dealer and the ids of its newest listings.
    ///
    /// # Errors
    ///
    /// When the database fails.
    // - `refresh = "4m"`: a page read after it is 4 minutes old is recomputed in the
    //   background while its readers keep the current one (at most 5 minutes old, as
    //   without `refresh`), so a busy dealer's page never expires under its visitors.
    //   Price changes drop it at once (`dealer:<dealer>:*`).
    // - `absent_ttl = "30s"`: an unknown dealer id is answered from the cache for 30 s.
    #[cached(
        key = "dealer:<dealer_id>:vehicles",
        ttl = "5m",
        lock,
        refresh = "4m",
        absent_ttl = "30s",
        cache = self.cache
    )]
    pub async fn dealer_listing(&self, dealer_id: i64) -> Result<Option<DealerListing>, DbError> {
        self.db.dealer_listing(dealer_id).await
    }

    /// One homepage section: its ids (cached), then its vehicles in one batch.
    ///
    /// # Errors
    ///
    /// When the database fails and no stale list of ids is left.
    pub async fn homepage_section(&self, section: Section) -> Result<Vec<Vehicle>, DbError> {
        let ids = self.homepage_section_ids(section).await?;
        self.in_order(&ids).await
    }

    /// The ids of one homepage section. Every visitor reads it, so it is locked, and kept an
    /// hour past its TTL: if the database fails after the 10 minutes, the last list is served.
    ///
    /// # Errors
    ///
    /// When the database fails and no stale value is left.
    // - `refresh = "8m"`: every visitor reads it, so it is recomputed in the background once
    //   it is 8 minutes old and never expires while read.
    // - `stale = "1h"` + `timeout = "50ms"`: a list page can be a few minutes old. Once a
    //   section has expired (nobody read it in its last 2 minutes), a caller waits at most
    //   50 ms for the database and then gets the expired section while the query finishes
    //   in the background; a failing database is answered with it too. A price change
    //   drops the sections (`homepage:*`), stale values included.
    #[cached(
        key = "homepage:<section>",
        ttl = "10m",
        lock,
        stale = "1h",
        refresh = "8m",
        timeout = "50ms",
        cache = self.cache
    )]
    pub async fn homepage_section_ids(&self, section: Section) -> Result<Vec<i64>, DbError> {
        self.db.homepage_section_ids(section).await
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

    /// A search, keyed by every normalised filter, each a placeholder (`~` for an absent
    /// one): `?make=Toyota&max_price=25000` is `search:toyota:~:~:~:25000:~:newest:1`.
    ///
    /// Placeholder values are percent-encoded (every byte outside `[A-Za-z0-9_.-]`), so a
    /// value cannot spill into the next level: two different filter sets always have two
    /// different keys, where a hash of the filters could collide, and a client who computed
    /// a collision could have one search answered with another's result. Tagged with its
    /// make and price ceiling bucket, so that a price change drops only the searches that
    /// can list the vehicle (see [`Marketplace::update_price`]). The HTTP API bounds the text filters
    /// ([`MAX_FILTER_BYTES`](super::MAX_FILTER_BYTES)), which keeps the keys short.
    ///
    /// # Errors
    ///
    /// When the database fails.
    #[cached(
        key = "search:<filters.make>:<filters.body>:<filters.province>:<filters.min_price>:\
               <filters.max_price>:<filters.year_from>:<filters.sort>:<filters.page>",
        ttl = "5m",
        tags = ["searches:<filters.make>:<filters.ceiling>"],
        cache = self.cache
    )]
    pub async fn search(&self, filters: &SearchFilters) -> Result<SearchPage, DbError> {
        self.db.search(filters).await
    }

    /// A user's profile.
    ///
    /// # Errors
    ///
    /// When the database fails.
    // - `absent_ttl = "30s"`: an unknown user id is answered from the cache for 30 s. No
    //   `refresh`: profiles change only through `update_profile`, which writes through.
    #[cached(key = "user:<id>", ttl = "1h", absent_ttl = "30s", cache = self.cache)]
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
        let updated = self.save_price(&current, price).await?;
        if updated.is_some() {
            // The searches that can list it, before or after: every ceiling from the lower
            // of the two prices' buckets up, and the searches without a ceiling. Up to 22
            // invalidations of two tags each, all at once: one after the other they cost
            // ~22 x 2 x 4 round trips, which over a 1 ms hop made every price change take
            // 200-350 ms (the demo's p99 over a hop). Once all returned, no search that
            // could list the vehicle is served, as before.
            let lowest = price_bucket(current.price.min(price));
            let drops = (lowest..=MAX_BUCKET)
                .map(Some)
                .chain([None])
                .map(|ceiling| self.drop_searches(&make, ceiling));
            futures_util::future::join_all(drops).await;
        }
        Ok(updated)
    }

    /// Drops the searches of `make` and of any make (`~`) under the price ceiling bucket
    /// `ceiling` (`None`: without a ceiling).
    #[invalidates(tags = ["searches:<make>:<ceiling>", "searches:~:<ceiling>"], cache = self.cache)]
    async fn drop_searches(&self, make: &str, ceiling: Option<i64>) {}

    #[invalidates("vehicle:<v.id>", "dealer:<v.dealer_id>:*", "homepage:*", cache = self.cache)]
    async fn save_price(&self, v: &Vehicle, price: i64) -> Result<Option<Vehicle>, DbError> {
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
