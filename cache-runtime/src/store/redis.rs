//! The Redis store: one multiplexed connection that reconnects by itself
//! (redis-rs's `ConnectionManager`), values as JSON strings under `prefix + key`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::codec::Entry;
use crate::error::{Error, Result};

pub(crate) struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
}

/// Connection settings taken from the builder.
pub(crate) struct RedisOptions {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
}

impl RedisStore {
    /// Checks the URL and prepares the connection without opening it: a cache can be built
    /// while Redis is down, and connects when Redis answers.
    pub(crate) fn new(options: RedisOptions) -> Result<Self> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|source| Error::InvalidUrl { url: options.url.clone(), source })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.command_timeout))
            // One quick retry: a call never waits through a long reconnect schedule; the next
            // call tries again.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisStore { connection, prefix: options.prefix })
    }

    /// `prefix + key`.
    pub(crate) fn full_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    /// One `GET`: a hit costs exactly one round trip.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Arc<Entry>>> {
        let mut connection = self.connection.clone();
        let bytes: Option<Vec<u8>> =
            redis::cmd("GET").arg(self.full_key(key)).query_async(&mut connection).await?;
        Ok(bytes.map(|json| Arc::new(Entry::from_json(json))))
    }

    /// One `SET key value PX ttl`.
    pub(crate) async fn set(&self, key: &str, entry: &Entry, ttl: Duration) -> Result<()> {
        let mut connection = self.connection.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(self.full_key(key))
            .arg(&*entry.json)
            .arg("PX")
            .arg(millis)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }
}
