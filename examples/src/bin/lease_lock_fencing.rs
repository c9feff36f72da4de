//! The lease lock API with fencing tokens: `try_lock` (one attempt), `lock` (wait for the
//! holder), and why a lease alone is not enough.
//!
//! A holder can stall past its lease (a GC pause, a slow network) and act after another
//! holder took over. Each acquisition carries a fencing token, larger than every earlier
//! one; the protected resource remembers the largest it saw and refuses older ones.
//!
//! ```text
//! cargo run -p examples --bin lease_lock_fencing
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin lease_lock_fencing
//! ```

use std::sync::Mutex;
use std::time::Duration;

/// The protected resource: a payout ledger that checks fencing tokens.
#[derive(Default)]
struct Ledger {
    highest_token: u64,
    entries: Vec<String>,
}

impl Ledger {
    fn write(&mut self, token: u64, entry: &str) -> Result<(), String> {
        if token < self.highest_token {
            return Err(format!(
                "refused {entry:?}: token {token} is older than {}",
                self.highest_token
            ));
        }
        self.highest_token = token;
        self.entries.push(entry.to_owned());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = examples::cache_from_env("recipes:lease_lock:").await?;
    let ledger = Mutex::new(Ledger::default());
    let resource = "payout:dealer-7";

    // try_lock: one attempt; None while someone else holds the lease.
    let a = cache.try_lock(resource, Duration::from_millis(300)).await?.expect("the lock is free");
    assert!(cache.try_lock(resource, Duration::from_secs(1)).await?.is_none());
    println!("A holds {} with token {}", a.resource(), a.fencing_token());

    // A stalls past its 300 ms lease. B's lock() waits until the lease runs out.
    let b = cache.lock(resource, Duration::from_secs(5), Duration::from_secs(2)).await?;
    println!("A's lease ran out; B holds it with token {}", b.fencing_token());
    assert!(b.fencing_token() > a.fencing_token());
    ledger.lock().unwrap().write(b.fencing_token(), "B: pay 1500")?;

    // A wakes up and writes anyway: the ledger refuses its older token.
    let late = ledger.lock().unwrap().write(a.fencing_token(), "A: pay 1500");
    println!("A's late write: {}", late.as_ref().unwrap_err());
    assert!(late.is_err());
    assert!(!a.extend(Duration::from_secs(1)).await?, "A lost the lock");
    assert!(!a.release().await?, "releasing a lost lock leaves B's alone");

    assert!(b.release().await?);
    let c = cache.lock(resource, Duration::from_secs(5), Duration::from_secs(1)).await?;
    println!("B released; C took it at once with token {}", c.fencing_token());
    c.release().await?;
    println!("ledger: {:?}", ledger.lock().unwrap().entries);
    Ok(())
}
