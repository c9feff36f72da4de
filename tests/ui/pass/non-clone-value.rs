//! A cached value type that does not implement `Clone`: hits decode the stored JSON.

use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::cached;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Report {
    lines: Vec<String>,
}

static RUNS: AtomicU32 = AtomicU32::new(0);

#[cached(key = "report:<day>", ttl = "1d")]
async fn report(day: u32) -> Result<Option<Report>, std::io::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(Some(Report {
        lines: vec![format!("day {day}")],
    }))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let expected = Report {
            lines: vec!["day 3".to_owned()],
        };
        assert_eq!(report(3).await.unwrap().as_ref(), Some(&expected));
        assert_eq!(report(3).await.unwrap().as_ref(), Some(&expected));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    });
}
