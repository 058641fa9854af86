//! The Redis versions of the backends: several host processes sharing one
//! Redis form a fleet. Every key and channel a tenant's data touches is
//! built by [`keys::TenantKeys`] — `{namespace}:t:{<tenant>}:…`, with the
//! tenant as a Redis Cluster hash tag — so no plugin or client input can
//! name anything outside its tenant.
//!
//! Modules: [`keys`] (the key scheme), [`kv`] (the KV store), [`bus`] (the
//! cross-instance pub/sub bus, one channel per tenant, with publish
//! pipelining), [`sharded_bus`] (one channel per topic, SPUBLISH /
//! SSUBSCRIBE, followed only while a topic has local subscribers),
//! [`scope`] (what every store holds: connection, namespace and breaker,
//! and its calls through them). The other extensions' Redis versions live
//! with their traits (`backend::{replay, ratelimit, lock, idempotency,
//! presence, presence_events, groups, cursor, publish_rate}::redis`) and
//! make their calls through a [`RedisScope`] (the call helpers below).

pub mod backends;
pub mod bus;
pub mod keys;
pub mod kv;
pub mod scope;
pub mod sharded_bus;
#[cfg(test)]
pub(crate) mod test_support;

use std::time::Duration;

pub use backends::{RedisBackends, fleet_backends};
pub use scope::RedisScope;

use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;

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

/// `fut` bounded by `limit`, with Redis errors mapped.
pub async fn bounded<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(BackendError::Timeout),
        Ok(Err(e)) => Err(redis_error(what, &e)),
        Ok(Ok(v)) => Ok(v),
    }
}

/// A Redis failure as a [`BackendError`]: timeouts are `Timeout`; a lost
/// connection or a server that cannot serve now is `Unavailable`.
pub fn redis_error(what: &str, e: &RedisError) -> BackendError {
    if e.is_timeout() {
        return BackendError::Timeout;
    }
    let transient = matches!(
        e.code(),
        Some(
            "LOADING"
                | "BUSY"
                | "OOM"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
                | "MASTERDOWN"
                | "READONLY"
                | "NOREPLICAS"
                | "MISCONF"
        )
    );
    if transient || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        BackendError::Unavailable(format!("{what}: {e}"))
    } else {
        BackendError::Other(format!("{what}: Redis error: {e}"))
    }
}

/// Bound on one script call, including the reload after `NOSCRIPT` (three
/// commands, each bounded by [`COMMAND_TIMEOUT`] in the connection).
pub const SCRIPT_TIMEOUT: Duration = COMMAND_TIMEOUT.saturating_mul(3);
/// Keys `SCAN` looks at per call while purging a tenant.
pub const SCAN_COUNT: u64 = 1000;

/// `fut` (one Redis command or script call) through `breaker`, bounded by
/// `limit`: a timeout is `Timeout`, a lost connection `Unavailable`, an open
/// breaker `Unavailable` without calling.
pub async fn call<T>(
    breaker: &CircuitBreaker,
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, BackendError> {
    breaker
        .call(async {
            match tokio::time::timeout(limit, fut).await {
                Err(_) => Err(BackendError::Timeout),
                Ok(Err(e)) => Err(redis_error(what, &e)),
                Ok(Ok(v)) => Ok(v),
            }
        })
        .await
}

/// `s` with the glob characters of `SCAN MATCH` escaped.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Delete every key starting with `prefix` (a tenant's prefix plus a kind,
/// so all in the tenant's hash slot); returns how many existed. Walks the
/// keyspace with `SCAN` ([`SCAN_COUNT`] per call, each call bounded), so it
/// costs one pass over the Redis keyspace: meant for deleting a tenant.
/// Keys written behind the cursor while it runs may survive.
pub async fn delete_matching(
    conn: &ConnectionManager,
    breaker: &CircuitBreaker,
    what: &str,
    prefix: &str,
) -> Result<u64, BackendError> {
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let mut c = conn.clone();
        let (next, keys): (u64, Vec<Vec<u8>>) =
            call(breaker, what, COMMAND_TIMEOUT, scan.query_async(&mut c)).await?;
        if !keys.is_empty() {
            let mut del = redis::cmd("DEL");
            del.arg(keys);
            let n: u64 = call(breaker, what, COMMAND_TIMEOUT, del.query_async(&mut c)).await?;
            removed += n;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_escaping() {
        assert_eq!(glob_escape("ns:t:{a}:rl:"), "ns:t:{a}:rl:");
        assert_eq!(glob_escape(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
    }
}
