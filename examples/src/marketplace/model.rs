//! The marketplace's types: what the database returns and the API sends.

use cache_runtime::{KeyPart, KeyWriter};
use serde::{Deserialize, Serialize};

/// A vehicle listing (a row of `vehicles`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vehicle {
    /// Primary key.
    pub id: i64,
    /// The dealer selling it.
    pub dealer_id: i64,
    /// Manufacturer, e.g. `Toyota`.
    pub make: String,
    /// Model, e.g. `Corolla`.
    pub model: String,
    /// Model year.
    pub year: i64,
    /// Asking price in whole dollars.
    pub price: i64,
    /// Odometer reading in kilometres.
    pub mileage: i64,
    /// `gasoline`, `diesel`, `hybrid` or `electric`.
    pub fuel: String,
    /// `sedan`, `suv`, `pickup`, `hatchback` or `coupe`.
    pub body: String,
    /// Where the vehicle is.
    pub province: String,
    /// Shown in the homepage's featured section.
    pub featured: bool,
    /// When it was listed (seconds; larger is newer).
    pub listed_at: i64,
}

/// A dealer (a row of `dealers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dealer {
    /// Primary key.
    pub id: i64,
    /// Trading name.
    pub name: String,
    /// Province of the showroom.
    pub province: String,
    /// Average review score, 1 to 5.
    pub rating: f64,
}

/// A dealer and the newest 48 vehicles it lists: `GET /dealers/{id}/vehicles`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DealerVehicles {
    /// The dealer.
    pub dealer: Dealer,
    /// Its newest listings, newest first.
    pub vehicles: Vec<Vehicle>,
}

/// A user's profile (a row of `users`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserProfile {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Contact address.
    pub email: String,
    /// Home province.
    pub province: String,
    /// `free`, `plus` or `dealer`.
    pub plan: String,
}

/// The fields of a profile a user can change: `PUT /users/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileUpdate {
    /// New display name.
    pub name: String,
    /// New home province.
    pub province: String,
}

/// One homepage section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// Featured listings, newest first.
    Featured,
    /// The newest listings.
    Latest,
    /// The cheapest listings.
    Deals,
}

impl Section {
    /// Every section, in page order.
    pub const ALL: [Section; 3] = [Section::Featured, Section::Latest, Section::Deals];

    /// The section's name in keys and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Section::Featured => "featured",
            Section::Latest => "latest",
            Section::Deals => "deals",
        }
    }
}

/// `homepage:<section>` renders `homepage:featured`, ...
impl KeyPart for Section {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(self.name());
    }
}

/// The homepage: `GET /homepage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Homepage {
    /// Featured listings.
    pub featured: Vec<Vehicle>,
    /// Newest listings.
    pub latest: Vec<Vehicle>,
    /// Cheapest listings.
    pub deals: Vec<Vehicle>,
}

/// Search filters as a client sends them: `GET /search?make=toyota&max_price=25000`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchQuery {
    /// Manufacturer, any case.
    pub make: Option<String>,
    /// Body style, any case.
    pub body: Option<String>,
    /// Province, any case.
    pub province: Option<String>,
    /// Lowest price.
    pub min_price: Option<i64>,
    /// Highest price.
    pub max_price: Option<i64>,
    /// Oldest model year.
    pub year_from: Option<i64>,
    /// `newest` (default), `price_asc`, `price_desc` or `mileage`.
    pub sort: Option<String>,
    /// Page number, from 1.
    pub page: Option<i64>,
}

/// How search results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Newest listing first.
    Newest,
    /// Cheapest first.
    PriceAsc,
    /// Most expensive first.
    PriceDesc,
    /// Lowest mileage first.
    Mileage,
}

impl Sort {
    fn name(self) -> &'static str {
        match self {
            Sort::Newest => "newest",
            Sort::PriceAsc => "price_asc",
            Sort::PriceDesc => "price_desc",
            Sort::Mileage => "mileage",
        }
    }
}

/// Search filters normalised, so that equivalent queries share one cache entry:
/// `?make=Toyota&page=1` and `?make=%20toyota` are the same search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchFilters {
    /// Lowercase manufacturer.
    pub make: Option<String>,
    /// Lowercase body style.
    pub body: Option<String>,
    /// Lowercase province.
    pub province: Option<String>,
    /// Lowest price.
    pub min_price: Option<i64>,
    /// Highest price.
    pub max_price: Option<i64>,
    /// Oldest model year.
    pub year_from: Option<i64>,
    /// Order.
    pub sort: Sort,
    /// Page number, from 1.
    pub page: i64,
}

/// Results per search page.
pub const PAGE_SIZE: i64 = 20;

impl SearchFilters {
    /// Normalises a client's query: trims and lowercases text, drops empty values and
    /// unknown sort orders, clamps the page to at least 1.
    pub fn normalise(query: &SearchQuery) -> SearchFilters {
        fn text(value: &Option<String>) -> Option<String> {
            value.as_deref().map(|v| v.trim().to_lowercase()).filter(|v| !v.is_empty())
        }
        let sort = match query.sort.as_deref().map(str::trim) {
            Some(s) if s.eq_ignore_ascii_case("price_asc") => Sort::PriceAsc,
            Some(s) if s.eq_ignore_ascii_case("price_desc") => Sort::PriceDesc,
            Some(s) if s.eq_ignore_ascii_case("mileage") => Sort::Mileage,
            _ => Sort::Newest,
        };
        SearchFilters {
            make: text(&query.make),
            body: text(&query.body),
            province: text(&query.province),
            min_price: query.min_price,
            max_price: query.max_price,
            year_from: query.year_from,
            sort,
            page: query.page.unwrap_or(1).max(1),
        }
    }

    /// The canonical text of the filters: one `name=value` per field, in a fixed order,
    /// `~` for an absent value. Equal filters give equal text.
    pub fn canonical(&self) -> String {
        fn opt<T: ToString>(value: &Option<T>) -> String {
            value.as_ref().map_or_else(|| "~".to_owned(), T::to_string)
        }
        format!(
            "make={}&body={}&province={}&min_price={}&max_price={}&year_from={}&sort={}&page={}",
            opt(&self.make),
            opt(&self.body),
            opt(&self.province),
            opt(&self.min_price),
            opt(&self.max_price),
            opt(&self.year_from),
            self.sort.name(),
            self.page,
        )
    }

    /// A 16-hex-digit FNV-1a hash of [`canonical`](Self::canonical): short, stable across
    /// processes, builds and platforms (unlike `std`'s randomly seeded `DefaultHasher`).
    pub fn hash(&self) -> String {
        format!("{:016x}", fnv1a_64(self.canonical().as_bytes()))
    }
}

/// `<filters>` renders the filters' [hash](SearchFilters::hash), as in the seed service's
/// `search:vehicles:{hash}`.
///
/// A hash gives short keys whatever the filters, at the price of the guarantee that two
/// different argument lists never share a key: two filter sets could in principle collide.
/// With 64 bits the odds are about n²/2⁶⁵ for n distinct live searches (1 in 3.7 million for
/// ten thousand). Write the canonical text instead (`key.push_str(&self.canonical())`) where
/// that is not good enough.
impl KeyPart for SearchFilters {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(&self.hash());
    }
}

/// 64-bit FNV-1a (Fowler–Noll–Vo): a fixed, seedless hash.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

/// One page of search results: `GET /search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchPage {
    /// Vehicles matching the filters, over all pages.
    pub total: i64,
    /// This page's page number.
    pub page: i64,
    /// This page's vehicles.
    pub vehicles: Vec<Vehicle>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn equivalent_queries_share_a_hash() {
        let a = SearchFilters::normalise(&SearchQuery {
            make: Some(" Toyota ".into()),
            page: Some(1),
            ..SearchQuery::default()
        });
        let b = SearchFilters::normalise(&SearchQuery {
            make: Some("toyota".into()),
            sort: Some("bogus".into()),
            ..SearchQuery::default()
        });
        assert_eq!(a.hash(), b.hash());
        let c = SearchFilters::normalise(&SearchQuery {
            make: Some("toyota".into()),
            page: Some(2),
            ..SearchQuery::default()
        });
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.hash().len(), 16);
    }
}
