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

/// A dealer and the ids of its newest listings, newest first: what the cache keeps for a
/// dealer page (the rows themselves come through the vehicles' own entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DealerListing {
    /// The dealer.
    pub dealer: Dealer,
    /// Its newest listings' ids, newest first.
    pub ids: Vec<i64>,
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
    /// The price bucket of `max_price` ([`price_bucket`]), `None` without a ceiling: the
    /// search's cache tag (`searches:<make>:<ceiling>`), so a price change drops only the
    /// searches that can list the vehicle at its old or new price.
    pub ceiling: Option<i64>,
}

/// The width of a price bucket, for the searches' cache tags.
pub const PRICE_BUCKET: i64 = 5_000;

/// The highest bucket: every ceiling from `MAX_BUCKET * PRICE_BUCKET` up shares it.
pub const MAX_BUCKET: i64 = 20;

/// The bucket of a price, `0..=MAX_BUCKET`. A vehicle priced `p` can be listed by a search
/// with ceiling `c` only if `p <= c`, so only if `price_bucket(p) <= price_bucket(c)`.
pub fn price_bucket(price: i64) -> i64 {
    (price.max(0) / PRICE_BUCKET).min(MAX_BUCKET)
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
            ceiling: query.max_price.map(price_bucket),
        }
    }

    /// [Normalises](Self::normalise) a client's query and checks its text filters: each of
    /// `make`, `body` and `province` is at most [`MAX_FILTER_BYTES`] once normalised.
    ///
    /// # Errors
    ///
    /// [`FilterTooLong`], naming the first filter over the bound.
    pub fn from_query(query: &SearchQuery) -> Result<SearchFilters, FilterTooLong> {
        let filters = SearchFilters::normalise(query);
        for (filter, value) in
            [("make", &filters.make), ("body", &filters.body), ("province", &filters.province)]
        {
            let bytes = value.as_ref().map_or(0, String::len);
            if bytes > MAX_FILTER_BYTES {
                return Err(FilterTooLong { filter, bytes });
            }
        }
        Ok(filters)
    }
}

/// The longest text filter (`make`, `body`, `province`) a search accepts, in bytes of UTF-8
/// once trimmed and lowercased. No make, body style or province is longer; the bound keeps a
/// search key short (each value is at most 192 bytes once percent-encoded, a whole key at most
/// about 700, under the cache's default `max_key_bytes` of 1024), so a client cannot make the
/// cache store huge keys.
pub const MAX_FILTER_BYTES: usize = 64;

/// A search filter longer than [`MAX_FILTER_BYTES`]: `GET /search` answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {filter} filter is {bytes} bytes long; at most {MAX_FILTER_BYTES} are accepted")]
pub struct FilterTooLong {
    /// The filter: `make`, `body` or `province`.
    pub filter: &'static str,
    /// Its length in bytes, normalised.
    pub bytes: usize,
}

/// `<filters.sort>` renders the order's name: `newest`, `price_asc`, `price_desc`, `mileage`.
impl KeyPart for Sort {
    fn write_key_part(&self, key: &mut KeyWriter<'_>) {
        key.push_str(self.name());
    }
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
    fn equivalent_queries_normalise_to_equal_filters() {
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
        assert_eq!(a, b);
        let c = SearchFilters::normalise(&SearchQuery {
            make: Some("toyota".into()),
            page: Some(2),
            ..SearchQuery::default()
        });
        assert_ne!(a, c);
    }

    #[test]
    fn text_filters_are_bounded_once_normalised() {
        let query = |make: String| SearchQuery { make: Some(make), ..SearchQuery::default() };
        let at_bound = "ü".repeat(MAX_FILTER_BYTES / 2);
        assert!(SearchFilters::from_query(&query(format!("  {at_bound}  "))).is_ok());
        assert_eq!(
            SearchFilters::from_query(&query(format!("{at_bound}a"))),
            Err(FilterTooLong { filter: "make", bytes: MAX_FILTER_BYTES + 1 })
        );
        // Lowercasing can grow a value (`İ` is 2 bytes, `i̇` 3): the normalised length counts.
        assert!(SearchFilters::from_query(&query("İ".repeat(MAX_FILTER_BYTES / 2))).is_err());
        let long_body = SearchQuery { body: Some("x".repeat(65)), ..SearchQuery::default() };
        assert_eq!(SearchFilters::from_query(&long_body).unwrap_err().filter, "body");
        let long_province =
            SearchQuery { province: Some("x".repeat(65)), ..SearchQuery::default() };
        assert_eq!(SearchFilters::from_query(&long_province).unwrap_err().filter, "province");
    }
}
