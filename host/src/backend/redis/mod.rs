//! The Redis versions of the backends: several host processes sharing one
//! Redis form a fleet. Every key and channel a tenant's data touches is
//! built by [`keys::TenantKeys`] — `{namespace}:t:{<tenant>}:…`, with the
//! tenant as a Redis Cluster hash tag — so no plugin or client input can
//! name anything outside its tenant.
//!
//! Modules: [`keys`] (the key scheme), [`kv`] (the KV store), [`bus`] (the
//! cross-instance pub/sub bus).

pub mod bus;
pub mod keys;
pub mod kv;
#[cfg(test)]
pub(crate) mod test_support;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::backend::BackendError;

/// Bound on connecting to Redis at start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one Redis command (a slow or stuck Redis is `Timeout`, never a hang).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A shared, self-reconnecting connection to Redis (cheap to clone).
pub async fn connect(url: &str) -> Result<ConnectionManager, BackendError> {
    let client = redis::Client::open(url)
        .map_err(|e| BackendError::Unavailable(format!("invalid Redis URL: {e}")))?;
    // Few, short reconnect attempts per failure: an outage shows up as a
    // fast `Unavailable`, and the manager reconnects on the next command.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| BackendError::Unavailable("connecting to Redis timed out".into()))?
    .map_err(|e| BackendError::Unavailable(format!("cannot connect to Redis: {e}")))
}
