//! The demo's workload: a fixed-seed list of requests, skewed to hot keys like real traffic,
//! and the two ways to serve one: the data layer directly, or the cached service.

use examples::marketplace::catalog::{makes, BODIES, PROVINCES};
use examples::marketplace::{
    Db, DbError, Marketplace, ProfileUpdate, SearchFilters, SearchQuery, Sizes,
};

/// One request of the workload.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Vehicle(i64),
    Dealer(i64),
    Homepage,
    Search(Box<SearchFilters>),
    User(i64),
    UpdatePrice(i64, i64),
    UpdateProfile(i64, ProfileUpdate),
}

impl Op {
    /// What the request reads or writes, for the report.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Op::Vehicle(_) => "vehicle",
            Op::Dealer(_) => "dealer page",
            Op::Homepage => "homepage",
            Op::Search(_) => "search",
            Op::User(_) => "user",
            Op::UpdatePrice(..) => "price change",
            Op::UpdateProfile(..) => "profile change",
        }
    }
}

/// The mix, in percent: reads 95 (3 of them for vehicles that do not exist), writes 5.
pub(crate) const MIX: [(&str, u64); 8] = [
    ("vehicle", 47),
    ("unknown vehicle", 3),
    ("dealer page", 12),
    ("homepage", 10),
    ("search", 15),
    ("user", 8),
    ("price change", 2),
    ("profile change", 3),
];

/// How many ids past the last vehicle the "unknown vehicle" requests ask for.
pub(crate) const UNKNOWN_VEHICLES: i64 = 100;

/// xorshift64*: the same workload on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An id in `1..=n`, skewed: the lowest 1% of ids get about a fifth of the picks, the
    /// lowest 10% almost half.
    fn hot(&mut self, n: i64) -> i64 {
        1 + (self.unit().powi(3) * n as f64) as i64
    }
}

/// The searches users run, most popular first: make, price ceiling, body, sort, page.
fn popular_searches(rng: &mut Rng) -> Vec<SearchFilters> {
    let makes = makes();
    let sorts = ["newest", "price_asc", "price_desc", "mileage"];
    (0..400)
        .map(|_| {
            let pick = |rng: &mut Rng, n: usize| (rng.next() % n as u64) as usize;
            let query = SearchQuery {
                make: (rng.unit() < 0.8).then(|| makes[pick(rng, makes.len())].to_owned()),
                body: (rng.unit() < 0.3).then(|| BODIES[pick(rng, BODIES.len())].to_owned()),
                province: (rng.unit() < 0.2)
                    .then(|| PROVINCES[pick(rng, PROVINCES.len())].to_owned()),
                min_price: None,
                max_price: (rng.unit() < 0.6).then(|| 10_000 + 5_000 * pick(rng, 7) as i64),
                year_from: (rng.unit() < 0.2).then(|| 2015 + pick(rng, 8) as i64),
                sort: Some(sorts[pick(rng, sorts.len())].to_owned()),
                page: Some(if rng.unit() < 0.85 { 1 } else { 2 }),
            };
            SearchFilters::normalise(&query)
        })
        .collect()
}

/// `requests` requests over a database of `sizes`.
pub(crate) fn generate(requests: usize, sizes: Sizes) -> Vec<Op> {
    let mut rng = Rng(0x00C0_FFEE_D00D_F00D);
    let searches = popular_searches(&mut rng);
    let total: u64 = MIX.iter().map(|(_, weight)| weight).sum();
    (0..requests)
        .map(|_| {
            let mut roll = rng.next() % total;
            let mut kind = 0;
            while roll >= MIX[kind].1 {
                roll -= MIX[kind].1;
                kind += 1;
            }
            match kind {
                0 => Op::Vehicle(rng.hot(sizes.vehicles)),
                // Sold listings still linked from elsewhere, and crawlers: a few dead ids
                // come back again and again.
                1 => Op::Vehicle(sizes.vehicles + rng.hot(UNKNOWN_VEHICLES)),
                2 => Op::Dealer(rng.hot(sizes.dealers)),
                3 => Op::Homepage,
                4 => {
                    let n = searches.len() as i64;
                    Op::Search(Box::new(searches[(rng.hot(n) - 1) as usize].clone()))
                }
                5 => Op::User(rng.hot(sizes.users)),
                6 => {
                    let price = 5_000 + (rng.next() % 400) as i64 * 100;
                    Op::UpdatePrice(rng.hot(sizes.vehicles), price)
                }
                _ => {
                    let id = rng.hot(sizes.users);
                    let province = PROVINCES[(rng.next() % PROVINCES.len() as u64) as usize];
                    Op::UpdateProfile(
                        id,
                        ProfileUpdate { name: format!("User {id}"), province: province.to_owned() },
                    )
                }
            }
        })
        .collect()
}

/// Serves `op` from the database alone.
pub(crate) async fn uncached(db: &Db, op: &Op) -> Result<(), DbError> {
    match op {
        Op::Vehicle(id) => drop(db.vehicle(*id).await?),
        Op::Dealer(id) => drop(db.dealer_vehicles(*id).await?),
        Op::Homepage => drop(db.homepage().await?),
        Op::Search(filters) => drop(db.search(filters).await?),
        Op::User(id) => drop(db.user(*id).await?),
        Op::UpdatePrice(id, price) => drop(db.update_price(*id, *price).await?),
        Op::UpdateProfile(id, update) => drop(db.update_profile(*id, update).await?),
    }
    Ok(())
}

/// Serves `op` through the cached service.
pub(crate) async fn cached(service: &Marketplace, op: &Op) -> Result<(), DbError> {
    match op {
        Op::Vehicle(id) => drop(service.vehicle(*id).await?),
        Op::Dealer(id) => drop(service.dealer_vehicles(*id).await?),
        Op::Homepage => drop(service.homepage().await?),
        Op::Search(filters) => drop(service.search(filters).await?),
        Op::User(id) => drop(service.user(*id).await?),
        Op::UpdatePrice(id, price) => drop(service.update_price(*id, *price).await?),
        Op::UpdateProfile(id, update) => drop(service.update_profile(*id, update).await?),
    }
    Ok(())
}
