//! Single flight: concurrent misses of one key inside a process share one run of the body.
//!
//! The first caller to miss becomes the *leader* and runs the body; later callers become
//! *followers* and wait on a `watch` channel for the leader's outcome. The leader holds a
//! [`Leader`] guard: if its future is dropped (cancelled) or its body panics before it
//! publishes, the guard's `Drop` publishes [`Landed::Abandoned`] so followers elect a new
//! leader instead of waiting forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::codec::Entry;
use crate::scope::Scope;

/// How a flight ended, as its followers see it.
#[derive(Clone)]
pub(crate) enum Landed {
    /// Still running.
    Running,
    /// The leader produced this value.
    Value(Arc<Entry>),
    /// The leader's call returned `None` / `Ok(None)`.
    Absent,
    /// The leader's call returned `Err`, or its value could not be encoded.
    Failed,
    /// The leader was cancelled or panicked before finishing.
    Abandoned,
    /// The leader's value was refused by the store: the key was written or invalidated
    /// while it loaded, so the value may predate that write. Followers load again.
    Refused,
    /// The leader's value (`None`: its absent result) could not be checked against the
    /// store (Redis failing). Only followers that joined before its body started may take
    /// it (see [`Follower::early`]); the others load again.
    Unconfirmed(Option<Arc<Entry>>),
}

/// One running flight: its outcome channel, and whether an invalidation of its key happened
/// while it ran (then its value may predate the write, and must not be stored).
struct Flight {
    landed: watch::Sender<Landed>,
    invalidated: AtomicBool,
    /// Set when the leader starts the body (see [`Leader::loading`]).
    loading: AtomicBool,
    /// Set when the leader starts settling its outcome with the store (see
    /// [`Leader::settling`]).
    settling: AtomicBool,
    /// The tags its value will be stored with: an invalidation of one of them detaches it.
    tags: Box<[String]>,
}

type Slot = Arc<Flight>;

/// The flights in progress of one cache, by key.
#[derive(Default)]
pub(crate) struct Flights {
    /// Shared with the leaders, which may run on a task of their own (a background
    /// refresh) and must leave the map when they end.
    running: Arc<Mutex<HashMap<String, Slot>>>,
    /// How many times a flight started or ended (any key): a load that took its fill
    /// ticket in its lookup uses it only if no flight started or ended since, other than
    /// its own start (see `load/mod.rs`).
    changes: Arc<AtomicU64>,
}

/// The role a caller got when joining a flight.
pub(crate) enum Join {
    Leader(Leader),
    Follower(Follower),
}

/// A caller waiting for a flight's outcome.
pub(crate) struct Follower {
    landed: watch::Receiver<Landed>,
    /// Joined before the leader's body started: any write that completed before this caller
    /// started completed before the body read anything, so even an unconfirmed value is
    /// fresh for it.
    pub(crate) early: bool,
    /// Joined before the leader asked the store to confirm its outcome (the fill, or the
    /// check that its ticket still holds). Only such a follower may take a confirmed value:
    /// a write that completed before it started completed before that confirmation, which
    /// the write would have refused. A follower that joined later may have started after a
    /// write that landed just after the fill: it reads the store for itself.
    pub(crate) before_settling: bool,
}

impl Flights {
    /// Joins the flight for `key`, starting one if none is running.
    #[cfg(test)]
    pub(crate) fn join(&self, key: &str) -> Join {
        self.join_tagged(key, &[])
    }

    /// [`join`](Self::join) for a value stored with `tags` (a flight it starts is detached
    /// by an invalidation of any of them).
    pub(crate) fn join_tagged(&self, key: &str, tags: &[String]) -> Join {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = running.get(key) {
            return Join::Follower(Follower {
                landed: slot.landed.subscribe(),
                early: !slot.loading.load(Ordering::SeqCst),
                before_settling: !slot.settling.load(Ordering::SeqCst),
            });
        }
        let slot: Slot = Arc::new(Flight {
            landed: watch::Sender::new(Landed::Running),
            invalidated: AtomicBool::new(false),
            loading: AtomicBool::new(false),
            settling: AtomicBool::new(false),
            tags: tags.into(),
        });
        running.insert(key.to_owned(), Arc::clone(&slot));
        let number = self.changes.fetch_add(1, Ordering::SeqCst) + 1;
        Join::Leader(Leader {
            running: Arc::clone(&self.running),
            changes: Arc::clone(&self.changes),
            key: key.to_owned(),
            slot,
            published: false,
            number,
        })
    }

    /// How many times a flight started or ended so far.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Detaches the running flights of the keys `scope` covers: they are marked invalidated
    /// (see [`Leader::invalidated`]) and leave the map, so a caller arriving from now on
    /// starts a new flight instead of joining one whose value may predate the write.
    /// Followers that joined before still get the detached flight's outcome.
    pub(crate) fn detach(&self, scope: &Scope) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Scope::Key(key) = scope {
            if let Some(flight) = running.remove(key) {
                flight.invalidated.store(true, Ordering::SeqCst);
            }
            return;
        }
        running.retain(|key, flight| {
            if scope.covers_tagged(key, &flight.tags) {
                flight.invalidated.store(true, Ordering::SeqCst);
                false
            } else {
                true
            }
        });
    }

    /// Leads a new flight for `key`, or `None` if one is running (used by early refresh,
    /// which never waits).
    pub(crate) fn try_lead(&self, key: &str, tags: &[String]) -> Option<Leader> {
        match self.join_tagged(key, tags) {
            Join::Leader(leader) => Some(leader),
            Join::Follower(_) => None,
        }
    }

    /// How many flights are running (for tests and diagnostics).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.running.lock().unwrap().len()
    }
}

/// Waits for the flight's outcome. A closed channel counts as abandoned.
pub(crate) async fn wait(follower: &mut Follower) -> Landed {
    match follower.landed.wait_for(|landed| !matches!(landed, Landed::Running)).await {
        Ok(landed) => landed.clone(),
        Err(_) => Landed::Abandoned,
    }
}

/// Held by the caller running the body. Dropping it ends the flight.
pub(crate) struct Leader {
    running: Arc<Mutex<HashMap<String, Slot>>>,
    changes: Arc<AtomicU64>,
    key: String,
    slot: Slot,
    published: bool,
    /// [`Flights::changes`] right after this flight started.
    number: u64,
}

impl Leader {
    /// [`Flights::changes`] right after this flight started: `n + 1` when it read `n`
    /// before, so no flight started or ended in between.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Whether a follower is waiting for this flight's outcome now (more may join until
    /// it is published).
    pub(crate) fn followed(&self) -> bool {
        self.slot.landed.receiver_count() > 0
    }

    /// Ends the flight for newcomers, then wakes the followers with the outcome. Callers
    /// arriving from now on read the store instead: only callers that joined while the
    /// value was loading get it from the flight (see `load.rs` for why that order makes
    /// the value safe to hand them).
    pub(crate) fn publish(&mut self, landed: Landed) {
        self.leave();
        self.published = true;
        self.slot.landed.send_replace(landed);
    }

    /// Removes this flight from the map, if it is still there.
    fn leave(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.get(&self.key).is_some_and(|slot| Arc::ptr_eq(slot, &self.slot)) {
            running.remove(&self.key);
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Marks the start of the body: followers joining from now on are not
    /// [`early`](Follower::early).
    pub(crate) fn loading(&self) {
        Leader::loading_all([self]);
    }

    /// [`loading`](Self::loading) for many flights of one cache (a batch's), under one
    /// lock of the flights map.
    pub(crate) fn loading_all<'l>(leaders: impl IntoIterator<Item = &'l Leader>) {
        Leader::mark_all(leaders, |flight| &flight.loading);
    }

    /// Marks the start of settling the outcome with the store: followers joining from now
    /// on are not [`before_settling`](Follower::before_settling).
    pub(crate) fn settling(&self) {
        Leader::settling_all([self]);
    }

    /// [`settling`](Self::settling) for many flights of one cache, under one lock.
    pub(crate) fn settling_all<'l>(leaders: impl IntoIterator<Item = &'l Leader>) {
        Leader::mark_all(leaders, |flight| &flight.settling);
    }

    /// Sets `flag` of each leader's flight under the lock of the flights map (which a
    /// joining follower holds while it reads the flags), taken once: the leaders of one
    /// call share the map.
    fn mark_all<'l>(
        leaders: impl IntoIterator<Item = &'l Leader>,
        flag: impl Fn(&Flight) -> &AtomicBool,
    ) {
        let mut leaders = leaders.into_iter().peekable();
        let Some(first) = leaders.peek() else { return };
        let running = Arc::clone(&first.running);
        let guard = running.lock().unwrap_or_else(|e| e.into_inner());
        for leader in leaders {
            debug_assert!(Arc::ptr_eq(&leader.running, &running), "one cache's flights");
            flag(&leader.slot).store(true, Ordering::SeqCst);
        }
        drop(guard);
    }

    /// Whether the key was invalidated while this flight ran: its value may have been read
    /// before the write that caused the invalidation, so it is returned but not stored.
    pub(crate) fn invalidated(&self) -> bool {
        self.slot.invalidated.load(Ordering::SeqCst)
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // A published flight has left already (`publish`).
        if !self.published {
            self.leave();
            self.slot.landed.send_replace(Landed::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_value_and_the_map_empties() {
        let flights = Flights::default();
        let Join::Leader(mut leader) = flights.join("k") else { panic!("first is leader") };
        let Join::Follower(mut follower) = flights.join("k") else { panic!("second follows") };
        assert!(follower.early);
        leader.loading();
        let Join::Follower(late) = flights.join("k") else { panic!("third follows") };
        assert!(!late.early);
        let entry = Arc::new(Entry::from_json(b"1".to_vec()));
        leader.publish(Landed::Value(entry));
        assert!(matches!(wait(&mut follower).await, Landed::Value(_)));
        drop(leader);
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn a_tag_detaches_the_flights_stored_with_it_and_no_other() {
        let flights = Flights::default();
        let tagged = ["make:ford".to_owned(), "listings".to_owned()];
        let Join::Leader(ford) = flights.join_tagged("search:1", &tagged) else { panic!() };
        let Join::Leader(other) = flights.join_tagged("search:2", &["make:audi".into()]) else {
            panic!()
        };
        let Join::Leader(plain) = flights.join("make:ford") else { panic!() };
        flights.detach(&Scope::Tag("make:ford".into()));
        assert!(ford.invalidated(), "stored with the tag");
        assert!(
            !other.invalidated() && !plain.invalidated(),
            "a key named like the tag is not tagged"
        );
        assert_eq!(flights.len(), 2);
    }

    #[tokio::test]
    async fn a_dropped_leader_abandons_its_followers() {
        let flights = Flights::default();
        let leader = flights.join("k");
        let Join::Follower(mut follower) = flights.join("k") else { panic!("second follows") };
        drop(leader);
        assert!(matches!(wait(&mut follower).await, Landed::Abandoned));
        assert!(matches!(flights.join("k"), Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_detached_flight_is_not_joined_and_its_end_spares_the_new_one() {
        let flights = Flights::default();
        let Join::Leader(old) = flights.join("k") else { panic!("first is leader") };
        flights.detach(&Scope::Key("k".into()));
        assert!(old.invalidated());
        let Join::Leader(new) = flights.join("k") else { panic!("a new flight starts") };
        drop(old);
        assert!(matches!(flights.join("k"), Join::Follower(_)), "the new flight stays");
        drop(new);
        assert_eq!(flights.len(), 0);
    }
}
