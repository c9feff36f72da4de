//! `refresh`, `early` and `timeout` finish the body in the background: `&self` is cloned,
//! borrowed parameters are copied (`&str` to `String`, `&[u64]` to `Vec<u64>`), owned ones
//! move in, and the body keeps its names and types. `self` in macros and closures, `Self`
//! and items declared in the body keep working, and the future stays `Send`.

use cache_runtime::cached;

#[derive(Clone)]
struct Catalog {
    currency: &'static str,
}

mod helpers {
    pub(crate) fn label(name: &str, id: u64) -> String {
        format!("{name}-{id}")
    }
}

impl Catalog {
    fn unit() -> &'static str {
        "EUR"
    }

    #[cached(key = "price:<id>", ttl = "15m", refresh = "10m")]
    async fn price(&self, id: u64, name: &str, tags: &[u64]) -> Result<String, String> {
        struct Local(u64);
        impl Local {
            fn get(&self) -> u64 {
                self.0
            }
        }
        let total = tags.iter().map(|tag| Local(*tag).get()).sum::<u64>();
        let label = self::helpers::label(name, id);
        let currency = [Self::unit(), self.currency].concat();
        Ok(format!("{label} {total} {currency} {}", self.currency))
    }

    #[cached(key = "rate:<id>", ttl = "15m", early = 1.5)]
    async fn rate(&self, id: u64) -> Option<u64> {
        let scale = |x: u64| x * self.currency.len() as u64;
        Some(scale(id))
    }

    #[cached(key = "list:<page>", ttl = "1m", stale = "1h", timeout = "200ms")]
    async fn list(&self, page: u32) -> Result<Vec<u32>, String> {
        let _ = self;
        Ok(vec![page])
    }
}

#[cached(key = "free:<id>", ttl = "15m", refresh = "10m")]
async fn free(id: u64, name: String) -> String {
    format!("{name}{id}")
}

fn is_send<T: Send>(_: T) {}

fn main() {
    let catalog = Catalog { currency: "eur" };
    let name = String::from("civic");
    is_send(catalog.price(1, &name, &[1, 2]));
    is_send(catalog.rate(1));
    is_send(catalog.list(1));
    is_send(free(1, name.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        cache_runtime::set_default(cache_runtime::Cache::memory());
        assert_eq!(catalog.price(7, "civic", &[1, 2]).await.unwrap(), "civic-7 3 EUReur eur");
        assert_eq!(catalog.rate(2).await, Some(6));
        assert_eq!(catalog.list(3).await.unwrap(), vec![3]);
        assert_eq!(free(4, name).await, "civic4");
    });
}
