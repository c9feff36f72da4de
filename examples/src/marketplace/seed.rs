//! The schema and the generated data: 3,000 vehicles, 50 dealers, 500 users, the same on
//! every machine (a fixed-seed generator).

use sqlx::{AnyPool, Row as _};

/// Vehicles seeded into an empty database.
pub(crate) const VEHICLES: i64 = 3_000;
/// Dealers seeded into an empty database.
pub(crate) const DEALERS: i64 = 50;
/// Users seeded into an empty database.
pub(crate) const USERS: i64 = 500;

const SCHEMA: [&str; 7] = [
    "CREATE TABLE IF NOT EXISTS dealers (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        province TEXT NOT NULL,
        rating DOUBLE PRECISION NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS vehicles (
        id BIGINT PRIMARY KEY,
        dealer_id BIGINT NOT NULL REFERENCES dealers (id),
        make TEXT NOT NULL,
        model TEXT NOT NULL,
        year BIGINT NOT NULL,
        price BIGINT NOT NULL,
        mileage BIGINT NOT NULL,
        fuel TEXT NOT NULL,
        body TEXT NOT NULL,
        province TEXT NOT NULL,
        featured BIGINT NOT NULL,
        listed_at BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS vehicles_dealer ON vehicles (dealer_id, listed_at)",
    "CREATE INDEX IF NOT EXISTS vehicles_listed ON vehicles (listed_at)",
    "CREATE INDEX IF NOT EXISTS vehicles_price ON vehicles (price)",
    // Searches filter on the make in any case: `LOWER(make) = $1`.
    "CREATE INDEX IF NOT EXISTS vehicles_make ON vehicles (LOWER(make), listed_at)",
    "CREATE TABLE IF NOT EXISTS users (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        province TEXT NOT NULL,
        plan TEXT NOT NULL
    )",
];

/// Makes and their models, each with its body style.
const MODELS: [(&str, &[(&str, &str)]); 8] = [
    (
        "Toyota",
        &[
            ("Corolla", "sedan"),
            ("Camry", "sedan"),
            ("RAV4", "suv"),
            ("Hilux", "pickup"),
            ("Land Cruiser", "suv"),
        ],
    ),
    ("Honda", &[("Civic", "sedan"), ("Accord", "sedan"), ("CR-V", "suv"), ("Fit", "hatchback")]),
    (
        "Hyundai",
        &[("Elantra", "sedan"), ("Tucson", "suv"), ("Santa Fe", "suv"), ("Accent", "hatchback")],
    ),
    (
        "Kia",
        &[("Rio", "hatchback"), ("Sportage", "suv"), ("Sorento", "suv"), ("Picanto", "hatchback")],
    ),
    (
        "Nissan",
        &[("Sentra", "sedan"), ("Frontier", "pickup"), ("X-Trail", "suv"), ("Versa", "sedan")],
    ),
    (
        "Ford",
        &[("Ranger", "pickup"), ("Explorer", "suv"), ("Mustang", "coupe"), ("F-150", "pickup")],
    ),
    ("Mitsubishi", &[("L200", "pickup"), ("Outlander", "suv"), ("Montero", "suv")]),
    ("Jeep", &[("Wrangler", "suv"), ("Grand Cherokee", "suv"), ("Compass", "suv")]),
];
/// Fuels, weighted: most vehicles run on gasoline.
const FUELS: [&str; 10] = [
    "gasoline", "gasoline", "gasoline", "gasoline", "gasoline", "gasoline", "diesel", "diesel",
    "hybrid", "electric",
];
/// Body styles of the seeded vehicles.
pub const BODIES: [&str; 5] = ["sedan", "suv", "pickup", "hatchback", "coupe"];
/// Provinces of the Dominican Republic, where the seed service's marketplace sells.
pub const PROVINCES: [&str; 8] = [
    "Santo Domingo",
    "Santiago",
    "La Vega",
    "Puerto Plata",
    "San Cristobal",
    "La Romana",
    "La Altagracia",
    "Duarte",
];
const FIRST_NAMES: [&str; 10] =
    ["Ana", "Luis", "Maria", "Jose", "Carmen", "Pedro", "Rosa", "Juan", "Elena", "Miguel"];
const LAST_NAMES: [&str; 8] =
    ["Perez", "Rodriguez", "Gomez", "Martinez", "Santos", "Reyes", "Diaz", "Castillo"];
const DEALER_WORDS: [&str; 10] = [
    "Autos",
    "Motors",
    "Car Center",
    "Auto Plaza",
    "Vehiculos",
    "Auto Import",
    "Dealer",
    "Autoventas",
    "Car Gallery",
    "Auto Mall",
];

/// The makes in the seeded data.
pub(crate) fn makes() -> impl Iterator<Item = &'static str> {
    MODELS.iter().map(|(make, _)| *make)
}

/// A small fixed-seed generator (xorshift64*), so every run seeds the same data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Creates the tables and indexes if they are missing, and fills them when `vehicles` is
/// empty, in one transaction. Returns whether it seeded.
pub(crate) async fn create_and_seed(pool: &AnyPool) -> Result<bool, sqlx::Error> {
    for statement in SCHEMA {
        sqlx::query(statement).execute(pool).await?;
    }
    let existing: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM vehicles").fetch_one(pool).await?.try_get("n")?;
    if existing > 0 {
        return Ok(false);
    }
    let mut rng = Rng::new(0x5EED_CA5E);
    let mut tx = pool.begin().await?;

    let mut dealers = String::from("INSERT INTO dealers (id, name, province, rating) VALUES ");
    let mut dealer_province = Vec::new();
    for id in 1..=DEALERS {
        let province = *rng.pick(&PROVINCES);
        dealer_province.push(province);
        let name = format!("{} {}", rng.pick(&LAST_NAMES), rng.pick(&DEALER_WORDS));
        let rating = 3.0 + (rng.below(21) as f64) / 10.0;
        if id > 1 {
            dealers.push(',');
        }
        dealers.push_str(&format!("({id}, '{name}', '{province}', {rating:.1})"));
    }
    sqlx::query(&dealers).execute(&mut *tx).await?;

    // The generated text comes from the constant word lists above (no quotes), so values
    // can be written inline; batches keep each statement small.
    for batch in (1..=VEHICLES).collect::<Vec<_>>().chunks(500) {
        let mut sql = String::from(
            "INSERT INTO vehicles (id, dealer_id, make, model, year, price, mileage, fuel, \
             body, province, featured, listed_at) VALUES ",
        );
        for (n, &id) in batch.iter().enumerate() {
            // A few big dealers list most vehicles.
            let dealer_id = 1 + ((rng.unit().powi(2)) * DEALERS as f64) as i64;
            let (make, models) = rng.pick(&MODELS);
            let (model, body) = *rng.pick(models);
            let year = 2008 + rng.below(18) as i64;
            let age = 2026 - year;
            let price = (45_000 - age * 2_200 + rng.below(20_000) as i64).max(3_500) / 100 * 100;
            let mileage = age * 12_000 + rng.below(15_000) as i64;
            let fuel = if body == "pickup" { "diesel" } else { *rng.pick(&FUELS) };
            let province = dealer_province[(dealer_id - 1) as usize];
            let featured = i64::from(rng.below(20) == 0);
            let listed_at = 1_760_000_000 + id * 600 + rng.below(600) as i64;
            if n > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "({id}, {dealer_id}, '{make}', '{model}', {year}, {price}, {mileage}, '{fuel}', \
                 '{body}', '{province}', {featured}, {listed_at})"
            ));
        }
        sqlx::query(&sql).execute(&mut *tx).await?;
    }

    let mut users = String::from("INSERT INTO users (id, name, email, province, plan) VALUES ");
    for id in 1..=USERS {
        let first = *rng.pick(&FIRST_NAMES);
        let last = *rng.pick(&LAST_NAMES);
        let province = *rng.pick(&PROVINCES);
        let plan = *rng.pick(&["free", "free", "free", "plus", "dealer"]);
        let email = format!("{}.{}{id}@example.com", first, last).to_lowercase();
        if id > 1 {
            users.push(',');
        }
        users.push_str(&format!("({id}, '{first} {last}', '{email}', '{province}', '{plan}')"));
    }
    sqlx::query(&users).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(true)
}
