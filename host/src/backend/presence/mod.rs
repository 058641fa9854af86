//! Presence: who is on a topic, per tenant, across the fleet (the seeds'
//! `createPresence`, multi-tab deduplicated).
//!
//! # Model
//!
//! Per tenant and topic, a set of present **users**, deduplicated by a user
//! key (one user with three tabs is one member), each with JSON `data`
//! (already filtered by the caller's `select`). A user is present while at
//! least one of its **connections** is. A connection id is a globally
//! unique string the caller chooses (host instance id plus local id) and
//! belongs to one host **instance**.
//!
//! Every connection has a deadline (`now + ttl`, the seeds' `ttl` is 90 s).
//! The instance that holds it moves the deadline on with
//! [`PresenceStore::heartbeat`] (the seeds beat every 30 s). A connection
//! whose deadline has passed is **dead**: no longer counted as present,
//! but still stored until [`PresenceStore::expire`] removes it and reports
//! the users that thereby left (an instance that crashed never sends
//! `leave`). Each departure is reported exactly once, by whichever call
//! removed the user's last connection: `leave`, `expire`, or neither when a
//! `join` of the same user replaces its dead connections (then `join`
//! answers `first`, and the user never looked absent to anyone).
//!
//! # Names
//!
//! Topics and user keys are arbitrary strings of 1 to 256 bytes without
//! `'\n'` (the stores use it as a separator); connection ids and instance
//! ids likewise. Data is at most 64 KiB. See [`check_name`].
//!
//! # Bounds
//!
//! [`PresenceLimits`]: users stored per topic (also the most
//! [`PresenceStore::members`] returns), connections per user and topic,
//! connections stored per tenant. Dead connections count until expired.
//!
//! Implementations: [`memory::MemoryPresence`] (one process) and
//! [`redis::RedisPresence`] (a fleet sharing one Redis); both pass
//! `conformance::suite` (test builds).

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Longest topic, user key, connection id or instance id, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Largest user data, in bytes.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

/// Longest TTL a connection may be given (and refreshed with).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The seeds' TTL of a connection that is not refreshed (90 s).
pub const DEFAULT_TTL: Duration = Duration::from_secs(90);

/// The seeds' heartbeat interval (30 s): a third of [`DEFAULT_TTL`].
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// What a [`PresenceStore`] holds at most; over a bound, `join` fails with
/// `QuotaExceeded` and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Users stored per topic (live or dead, until expired); also the most
    /// [`PresenceStore::members`] returns. Default 10 000.
    pub max_users_per_topic: usize,
    /// Live connections (tabs) of one user on one topic. Default 256.
    pub max_conns_per_user: usize,
    /// Connections stored per tenant, over all topics (live or dead, until
    /// expired). Default 100 000.
    pub max_conns_per_tenant: usize,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        Self {
            max_users_per_topic: 10_000,
            max_conns_per_user: 256,
            max_conns_per_tenant: 100_000,
        }
    }
}

/// The outcome of [`PresenceStore::join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The user had no live connection on the topic before: broadcast a join.
    pub first: bool,
    /// No user was live on the topic before this join.
    pub topic_was_empty: bool,
}

/// The outcome of [`PresenceStore::leave`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// No live connection of the user remains on the topic: broadcast a
    /// leave. `false` for an unknown connection.
    pub last: bool,
    /// The user's data (for the leave diff); `Some` exactly when `last`.
    pub data: Option<String>,
    /// No user is live on the topic any more.
    pub topic_now_empty: bool,
}

/// A present user of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user key.
    pub key: String,
    /// The user's JSON data (from its latest join).
    pub data: String,
}

/// One connection to refresh with [`PresenceStore::heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRef {
    /// The tenant of the connection.
    pub tenant: TenantId,
    /// The topic it joined.
    pub topic: String,
    /// The user key it joined as.
    pub user_key: String,
    /// The connection id.
    pub conn: String,
}

/// A user that left a topic because its last connection expired
/// ([`PresenceStore::expire`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The topic the user left.
    pub topic: String,
    /// The user key.
    pub user_key: String,
    /// The user's data (for the leave diff).
    pub data: String,
    /// No user is live on the topic any more.
    pub topic_now_empty: bool,
}

/// Per-tenant, per-topic presence (see the module docs for the model).
/// Every method but [`PresenceStore::heartbeat`] takes the tenant first.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Add connection `conn` of `instance` as `user_key` to `topic`, with
    /// the user's `data` and a deadline `ttl` from now. Joining again with
    /// a live `conn` is idempotent (`first == false`) and replaces the data
    /// and the deadline. Dead connections of the same user on the topic are
    /// dropped (not reported). `QuotaExceeded` over a [`PresenceLimits`]
    /// bound; `Invalid`/`TooLarge` for bad names, data or ttl.
    #[allow(clippy::too_many_arguments)]
    async fn join(
        &self,
        tenant: &TenantId,
        topic: &str,
        user_key: &str,
        instance: &str,
        conn: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<Joined, BackendError>;

    /// Remove connection `conn` of `user_key` from `topic` (also when it is
    /// already dead but not yet expired). When no live connection of the
    /// user remains, the user leaves (`last`, with its data) and its dead
    /// connections go with it. An unknown connection changes nothing.
    async fn leave(
        &self,
        tenant: &TenantId,
        topic: &str,
        user_key: &str,
        conn: &str,
    ) -> Result<Left, BackendError>;

    /// The live users of `topic`, one per user key, sorted by key; at most
    /// [`PresenceLimits::max_users_per_topic`].
    async fn members(&self, tenant: &TenantId, topic: &str) -> Result<Vec<Member>, BackendError>;

    /// Move the deadline of every listed connection that is live and
    /// belongs to `instance` to `ttl` from now. Dead, unknown or other
    /// instances' connections are skipped (a dead one stays dead and is
    /// reported by `expire`; the host should join it again). Each
    /// [`ConnRef`] carries its tenant.
    async fn heartbeat(
        &self,
        instance: &str,
        conns: &[ConnRef],
        ttl: Duration,
    ) -> Result<(), BackendError>;

    /// Remove up to `limit` dead connections of `tenant` (oldest deadline
    /// first) and report every user that thereby left a topic. Atomic: when
    /// several hosts expire at once, each departure is reported by exactly
    /// one of them.
    async fn expire(&self, tenant: &TenantId, limit: usize) -> Result<Vec<Expired>, BackendError>;

    /// Remove everything of `tenant` (the tenant is being deleted); returns
    /// how many connections were removed. Reports no departures.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
}

/// Check a topic, user key, connection id or instance id (`what` names it
/// in the error): empty or containing `'\n'` is `Invalid`, longer than
/// [`MAX_NAME_BYTES`] is `TooLarge`.
pub fn check_name(what: &str, name: &str) -> Result<(), BackendError> {
    if name.is_empty() {
        return Err(BackendError::Invalid(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(BackendError::TooLarge(format!(
            "{what} is {} bytes, the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.contains('\n') {
        return Err(BackendError::Invalid(format!(
            "{what} must not contain a newline"
        )));
    }
    Ok(())
}

/// Check user data: longer than [`MAX_DATA_BYTES`] is `TooLarge`.
pub fn check_data(data: &str) -> Result<(), BackendError> {
    if data.len() > MAX_DATA_BYTES {
        return Err(BackendError::TooLarge(format!(
            "presence data is {} bytes, the limit is {MAX_DATA_BYTES}",
            data.len()
        )));
    }
    Ok(())
}

/// Check a TTL: zero or over [`MAX_TTL`] is `Invalid`. Returns it in whole
/// milliseconds, rounded up (the Redis store's resolution).
pub fn check_ttl(ttl: Duration) -> Result<u64, BackendError> {
    if ttl.is_zero() {
        return Err(BackendError::Invalid("ttl must be positive".into()));
    }
    if ttl > MAX_TTL {
        return Err(BackendError::Invalid(format!(
            "ttl is over the limit of {} s",
            MAX_TTL.as_secs()
        )));
    }
    // At most MAX_TTL in ms: fits in u64.
    Ok(ttl.as_nanos().div_ceil(1_000_000) as u64)
}

/// Check the arguments of [`PresenceStore::join`]; the TTL in ms.
pub fn check_join(
    topic: &str,
    user_key: &str,
    instance: &str,
    conn: &str,
    data: &str,
    ttl: Duration,
) -> Result<u64, BackendError> {
    check_name("topic", topic)?;
    check_name("user key", user_key)?;
    check_name("instance id", instance)?;
    check_name("connection id", conn)?;
    check_data(data)?;
    check_ttl(ttl)
}

/// Check the arguments of [`PresenceStore::heartbeat`]; the TTL in ms.
pub fn check_heartbeat(
    instance: &str,
    conns: &[ConnRef],
    ttl: Duration,
) -> Result<u64, BackendError> {
    check_name("instance id", instance)?;
    for conn in conns {
        check_name("topic", &conn.topic)?;
        check_name("user key", &conn.user_key)?;
        check_name("connection id", &conn.conn)?;
    }
    check_ttl(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("topic", "room:1").is_ok());
        assert!(check_name("topic", &"x".repeat(256)).is_ok());
        assert!(matches!(
            check_name("topic", ""),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            check_name("topic", &"x".repeat(257)),
            Err(BackendError::TooLarge(_))
        ));
        assert!(matches!(
            check_name("user key", "a\nb"),
            Err(BackendError::Invalid(_))
        ));
        assert!(check_data(&"x".repeat(MAX_DATA_BYTES)).is_ok());
        assert!(matches!(
            check_data(&"x".repeat(MAX_DATA_BYTES + 1)),
            Err(BackendError::TooLarge(_))
        ));
    }

    #[test]
    fn ttls_round_up_to_milliseconds() {
        assert_eq!(check_ttl(Duration::from_nanos(1)), Ok(1));
        assert_eq!(check_ttl(Duration::from_micros(1500)), Ok(2));
        assert_eq!(check_ttl(MAX_TTL), Ok(86_400_000));
        for bad in [Duration::ZERO, MAX_TTL + Duration::from_nanos(1)] {
            assert!(matches!(check_ttl(bad), Err(BackendError::Invalid(_))));
        }
    }
}
