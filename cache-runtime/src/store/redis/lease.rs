//! Leases, fencing and wake-ups on Redis (the interface both stores offer is
//! `store/lease.rs`).
//!
//! A lease is `SET <prefix>#lock:{name} token NX PX lease` (or `#load:`), renewed, settled
//! and released only by its holder through compare-and-set scripts ([`super::scripts`]);
//! the fencing counter `#fence:{name}` shares the lock's hash tag so the scripts stay in one
//! slot on a cluster. A release publishes on the lease's channel to wake its waiters.

use std::time::Duration;

use super::scripts::{Acquire, Extend, Release, Settle, SETTLED_SUFFIX};
use super::{millis, RedisStore};
use crate::error::Result;
use crate::notify::Signal;
use crate::store::lease::{LeaseKind, Peek, Wakeup};

/// A lease's value (its holder's token, settling or not) and `PTTL`.
type LeaseState = (Option<Vec<u8>>, i64);

impl RedisStore {
    /// `<prefix>#lock:{name}` or `<prefix>#load:{name}`: the hash tag keeps a lock and its
    /// fencing counter in one slot.
    fn lease_key(&self, kind: LeaseKind, name: &str) -> String {
        self.reserved_key(kind.namespace(), &format!("{{{name}}}"))
    }

    /// The wake-up channel of a lease.
    fn channel(&self, kind: LeaseKind, name: &str) -> String {
        format!("{}{}{name}", self.prefix(), kind.channel_namespace())
    }

    /// Takes the lock on `resource`: its fencing token, or `None` when held.
    pub(crate) async fn acquire_lock(
        &self,
        resource: &str,
        token: &str,
        lease: Duration,
    ) -> Result<Option<u64>> {
        let lock = self.lease_key(LeaseKind::Lock, resource);
        let fence = self.reserved_key("fence:", &format!("{{{resource}}}"));
        let acquire = Acquire { lock: &lock, fence: &fence, token, lease_ms: millis(lease) };
        let fence = self.call(&acquire).await?;
        Ok((fence > 0).then_some(fence))
    }

    /// `SET #load:{key} token NX PX lease`: whether the load lease was taken.
    pub(crate) async fn try_load_lease(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool> {
        let mut connection = self.connection.clone();
        let set: Option<String> = self
            .guarded(
                redis::cmd("SET")
                    .arg(self.lease_key(LeaseKind::Load, key))
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(lease))
                    .query_async(&mut connection),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Extends a lease `token` holds (settling or not); `false` when it was lost.
    pub(crate) async fn extend_lease(
        &self,
        kind: LeaseKind,
        name: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool> {
        let lease_key = self.lease_key(kind, name);
        let extend = Extend { lease: &lease_key, token, lease_ms: millis(lease) };
        Ok(self.call(&extend).await? == 1)
    }

    /// Releases a lease `token` holds (settling or not) and wakes its waiters with
    /// `signal`; `false` when it was no longer held.
    pub(crate) async fn release_lease(
        &self,
        kind: LeaseKind,
        name: &str,
        token: &str,
        signal: Signal,
    ) -> Result<bool> {
        let (lease, channel) = (self.lease_key(kind, name), self.channel(kind, name));
        // An absent result names its holder: a waiter takes it only from a holder it saw
        // (see `notify::Woken`).
        let payload = match signal {
            Signal::Ready => "1".to_owned(),
            Signal::Failed => "0".to_owned(),
            Signal::Absent => format!("2:{token}"),
        };
        let release = Release { lease: &lease, token, channel: &channel, payload: &payload };
        Ok(self.call(&release).await? == 1)
    }

    /// Marks the load lease of `key` settling if `token` holds it; whether it held.
    pub(crate) async fn settle_load_lease(&self, key: &str, token: &str) -> Result<bool> {
        let lease = self.lease_key(LeaseKind::Load, key);
        Ok(self.call(&Settle { lease: &lease, token }).await? == 1)
    }

    /// How long the current holder's lease has left, if any.
    pub(crate) async fn lease_left(&self, kind: LeaseKind, name: &str) -> Result<Option<Duration>> {
        self.pttl(&self.lease_key(kind, name)).await
    }

    /// A waiter's look, in one round trip: `GET` of the value, and `GET`+`PTTL` of the
    /// load lease pipelined (one slot), in flight together (two slots on a cluster).
    pub(crate) async fn peek_with_lease(&self, key: &str) -> Result<Peek> {
        let (mut value_connection, mut lease_connection) =
            (self.connection.clone(), self.connection.clone());
        let lease_key = self.lease_key(LeaseKind::Load, key);
        let get = self.bounded_get(key);
        let lease = redis::pipe().cmd("GET").arg(&lease_key).cmd("PTTL").arg(&lease_key).clone();
        let (bytes, lease_state): (Vec<u8>, LeaseState) = self
            .guarded(futures_util::future::try_join(
                get.query_async(&mut value_connection),
                lease.query_async(&mut lease_connection),
            ))
            .await?;
        let (holder, millis) = lease_state;
        let entry = self.stored(bytes);
        let holder = holder.map(|held| String::from_utf8_lossy(&held).into_owned());
        let (holder, settling) = match holder {
            Some(held) => match held.strip_suffix(SETTLED_SUFFIX) {
                Some(token) => (Some(token.to_owned()), true),
                None => (Some(held), false),
            },
            None => (None, false),
        };
        Ok(Peek {
            entry,
            lease_left: Duration::from_millis(u64::try_from(millis).unwrap_or(0)),
            settling,
            holder,
        })
    }

    /// Registers for the release of a lease (see `Store::watch`).
    pub(crate) fn watch(&self, kind: LeaseKind, name: &str) -> Wakeup<'_> {
        match self.notifier().register(&self.channel(kind, name)) {
            (receiver, true) => Wakeup::Message(receiver),
            (_, false) => Wakeup::NotSubscribed,
        }
    }
}
