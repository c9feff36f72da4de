//! Wake-ups across processes: when a `lock` holder stores a value (or gives up), it
//! publishes on `<prefix>#filled:<key>`; a lease lock's release publishes on
//! `<prefix>#released:<resource>`. Each cache keeps one pub/sub connection, subscribed
//! to both patterns, that wakes the local waiters of that key. Waiters never poll on fixed
//! sleeps: they wake on the message, or when the holder's lease runs out.

//!
//! Without the `redis` feature only [`Signal`] and the channel names remain: the memory
//! store wakes its waiters in process.

#[cfg(feature = "redis")]
pub(crate) use subscriber::Notifier;

/// What a wake-up says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The value was stored, or the lock released: look again.
    Ready,
    /// The holder failed and stored nothing.
    Failed,
    /// The holder's body found nothing (an absent result), and the store confirmed it.
    Absent,
}

/// What a waiter hears: the signal, and which holder sent it.
///
/// A waiter registers for a key's channel, not for one holder's release, and a message is
/// delivered to it whenever the subscription reads it: a release published before the
/// waiter even started (by an earlier holder, whose confirmation predates a write the
/// waiter must see) can reach it late, under load. So an absent result names its holder
/// (`2:<token>` on Redis), and a waiter takes it only from a holder it saw holding the
/// lease in a look of its own (see `Load::locked`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Woken {
    /// What became of the load.
    pub(crate) signal: Signal,
    /// The token of the holder that sent it, when the message names one (an absent
    /// result on Redis; `None` for other signals and in process).
    pub(crate) holder: Option<std::sync::Arc<str>>,
}

impl Woken {
    /// A wake-up that names no holder.
    pub(crate) fn anonymous(signal: Signal) -> Woken {
        Woken { signal, holder: None }
    }

    /// Parses a `#filled:` or `#released:` payload: `1` (look again), `0` (failed),
    /// `2:<token>` (absent, from holder `<token>`). A bare `2` (a release by an older
    /// version, naming no holder) is an absent result nobody can vouch for: look again.
    #[cfg(feature = "redis")]
    fn parse(payload: &[u8]) -> Woken {
        match payload {
            b"0" => Woken::anonymous(Signal::Failed),
            [b'2', b':', token @ ..] if !token.is_empty() => Woken {
                signal: Signal::Absent,
                holder: Some(String::from_utf8_lossy(token).into()),
            },
            _ => Woken::anonymous(Signal::Ready),
        }
    }
}

#[cfg(feature = "redis")]
pub(crate) const FILLED: &str = "#filled:";
#[cfg(feature = "redis")]
pub(crate) const RELEASED: &str = "#released:";

/// The pub/sub side, on Redis.
#[cfg(feature = "redis")]
mod subscriber {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, Weak};
    use std::time::Duration;

    use futures_util::StreamExt as _;
    use tokio::sync::{oneshot, watch};

    use super::{Woken, FILLED, RELEASED};
    use crate::store::redis::sentinel::SentinelLink;

    type Waiters = Mutex<HashMap<String, Vec<oneshot::Sender<Woken>>>>;

    pub(crate) struct Notifier {
        /// The nodes to subscribe through, tried in turn (any node of a cluster hears every
        /// classic pub/sub message).
        clients: Vec<redis::Client>,
        /// Behind Sentinel: subscribe through the primary it names (at each connection;
        /// `clients` is then unused).
        primary: Option<SentinelLink>,
        /// What the subscription listens to: `<prefix>#filled:*` and `<prefix>#released:*`.
        patterns: [String; 2],
        /// Local waiters by channel name.
        waiters: Arc<Waiters>,
        /// `true` while the subscription is live; started on first use.
        subscribed: Mutex<Option<watch::Receiver<bool>>>,
        /// Dropped with the cache, which ends the subscriber task.
        _alive: Arc<()>,
    }

    impl Notifier {
        /// Wake-ups for the cache whose keys start with `prefix`.
        pub(crate) fn new(clients: Vec<redis::Client>, prefix: &str) -> Self {
            Notifier {
                clients,
                primary: None,
                patterns: [format!("{prefix}{FILLED}*"), format!("{prefix}{RELEASED}*")],
                waiters: Arc::default(),
                subscribed: Mutex::new(None),
                _alive: Arc::new(()),
            }
        }

        /// Wake-ups for the cache behind Sentinel whose keys start with `prefix`: the
        /// subscription goes through the current primary (a replica would hear the
        /// replicated messages too, but may be gone after a failover).
        pub(crate) fn following(primary: SentinelLink, prefix: &str) -> Self {
            Notifier { primary: Some(primary), ..Notifier::new(Vec::new(), prefix) }
        }

        /// Registers interest in `channel` and returns whether the subscription is live (if it
        /// is not, the caller must not rely on the message and waits for the lease instead).
        /// Register *before* re-checking the condition, so a message in between is not lost.
        pub(crate) fn register(&self, channel: &str) -> (oneshot::Receiver<Woken>, bool) {
            let live = self.ensure_subscriber();
            let (sender, receiver) = oneshot::channel();
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            let list = waiters.entry(channel.to_owned()).or_default();
            // Waiters that gave up (timed out) are dropped here rather than accumulating.
            list.retain(|waiter| !waiter.is_closed());
            list.push(sender);
            (receiver, live)
        }

        /// Waits until the subscription is live, at most `timeout` (used once, on first use,
        /// so that the first waiters get their message).
        pub(crate) async fn wait_subscribed(&self, timeout: Duration) -> bool {
            self.ensure_subscriber();
            let Some(mut live) = self.subscribed.lock().unwrap_or_else(|e| e.into_inner()).clone()
            else {
                return false;
            };
            let subscribed = tokio::time::timeout(timeout, live.wait_for(|up| *up)).await;
            matches!(subscribed, Ok(Ok(_)))
        }

        /// Starts the subscriber task if needed; returns whether it is subscribed now.
        fn ensure_subscriber(&self) -> bool {
            let mut subscribed = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(live) = subscribed.as_ref() {
                return *live.borrow();
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return false;
            };
            let (state, live) = watch::channel(false);
            *subscribed = Some(live);
            runtime.spawn(subscribe(
                self.clients.clone(),
                self.primary.clone(),
                self.patterns.clone(),
                Arc::downgrade(&self.waiters),
                Arc::downgrade(&self._alive),
                state,
            ));
            false
        }
    }

    /// The subscriber task: (re)connects, subscribes, and dispatches messages to local waiters
    /// until the cache is dropped.
    async fn subscribe(
        clients: Vec<redis::Client>,
        primary: Option<SentinelLink>,
        patterns: [String; 2],
        waiters: Weak<Waiters>,
        alive: Weak<()>,
        state: watch::Sender<bool>,
    ) {
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0;
        while alive.strong_count() > 0 {
            let client = match &primary {
                Some(primary) => primary.primary_info().await.and_then(redis::Client::open),
                None => Ok(clients[attempt % clients.len()].clone()),
            };
            attempt += 1;
            let connected = async {
                let mut pubsub = client?.get_async_pubsub().await?;
                pubsub.psubscribe(&patterns[..]).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(Duration::from_secs(2), connected).await {
                Ok(Ok(pubsub)) => pubsub,
                _ => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            state.send_replace(true);
            let mut messages = pubsub.into_on_message();
            loop {
                // Wake up now and then to notice a dropped cache on an idle channel.
                match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                    Ok(Some(message)) => {
                        let Some(waiters) = waiters.upgrade() else {
                            return;
                        };
                        let woken = Woken::parse(message.get_payload_bytes());
                        let waiting = waiters
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(message.get_channel_name());
                        for waiter in waiting.into_iter().flatten() {
                            let _ = waiter.send(woken.clone());
                        }
                    }
                    Ok(None) => break, // connection lost: resubscribe
                    Err(_) if alive.strong_count() == 0 => return,
                    Err(_) => {}
                }
            }
            state.send_replace(false);
        }
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::{Signal, Woken};

    #[test]
    fn an_absent_result_is_heard_with_its_holder_and_a_bare_one_means_look_again() {
        assert_eq!(Woken::parse(b"0"), Woken::anonymous(Signal::Failed));
        assert_eq!(Woken::parse(b"1"), Woken::anonymous(Signal::Ready));
        let heard = Woken::parse(b"2:4d2-18c-7");
        assert_eq!(heard.signal, Signal::Absent);
        assert_eq!(heard.holder.as_deref(), Some("4d2-18c-7"));
        // An older release names no holder: nobody can vouch for it.
        assert_eq!(Woken::parse(b"2"), Woken::anonymous(Signal::Ready));
        assert_eq!(Woken::parse(b"2:"), Woken::anonymous(Signal::Ready));
    }
}
