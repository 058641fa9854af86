//! Backend extensions behind traits. The in-memory versions in [`memory`] are
//! the embedded default; Redis and Postgres versions implement the same
//! traits and pass the same behavioural test suite.
//!
//! Every method takes the tenant explicitly: the import layer
//! ([`crate::imports`]) fills it in from the calling plugin's store, so a
//! plugin can never choose it.

pub mod breaker;
pub mod cursor;
pub mod groups;
pub mod idempotency;
pub mod lock;
pub mod memory;
pub mod postgres;
pub mod presence;
pub mod presence_events;
pub mod publish_rate;
pub mod ratelimit;
pub mod redis;
pub mod replay;
pub mod routed;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::tenant::TenantId;

/// A failure of a backend operation; maps one-to-one onto the WIT `host-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The operation is not allowed for this tenant or on this name.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// A quota of the tenant's plan is used up.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The backend did not answer in time.
    #[error("backend timed out")]
    Timeout,
    /// The backend is down or the breaker is open.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// An argument is larger than allowed.
    #[error("too large: {0}")]
    TooLarge(String),
    /// An argument is malformed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A rate of the tenant's plan is exceeded; retry after this many ms.
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited {
        /// When to retry, in milliseconds.
        retry_after_ms: u64,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Publishes events to a tenant's topic subscribers, across every host
/// process of the deployment (the memory bus: this process only).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publish `event` with JSON `data` on `topic` of `tenant`.
    /// The topic and data have already been validated by the caller.
    async fn publish(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
    ) -> Result<(), BackendError>;

    /// Wait until events other hosts publish on `topic` of `tenant` reach
    /// this host's subscribers: for a bus that subscribes in Redis per topic
    /// (the sharded bus), until that subscription is active, bounded by a
    /// second. Called after a local subscribe and before its ack, so the
    /// client misses nothing published after the ack. Others return at once.
    async fn ready(&self, _tenant: &TenantId, _topic: &str) {}
}

/// What one tenant may hold in KV (from its plan): checked atomically with
/// every write that could grow the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Keys the tenant may hold.
    pub max_keys: u64,
    /// Bytes of keys plus values the tenant may hold.
    pub max_bytes: u64,
}

impl KvQuota {
    /// No practical limit (for tests and tools).
    pub const UNLIMITED: KvQuota = KvQuota {
        max_keys: u64::MAX,
        max_bytes: u64::MAX,
    };
}

/// A per-tenant key-value store with TTLs.
#[async_trait]
pub trait Kv: Send + Sync + 'static {
    /// The value at `key`, or `None` if absent or expired.
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// Store `value` at `key`; with `ttl` the key expires after it.
    /// `QuotaExceeded` (and nothing stored) if the tenant would then hold
    /// more than `quota` allows; replacing a value counts only the difference.
    async fn set(
        &self,
        tenant: &TenantId,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        quota: KvQuota,
    ) -> Result<(), BackendError>;
    /// Remove `key`; `true` if it existed.
    async fn delete(&self, tenant: &TenantId, key: &str) -> Result<bool, BackendError>;
    /// Add `delta` to the decimal integer at `key` (absent = 0), keeping any
    /// TTL; returns the new value. `Invalid` if the value is not an integer
    /// or the result overflows; `QuotaExceeded` as for [`Kv::set`].
    async fn incr(
        &self,
        tenant: &TenantId,
        key: &str,
        delta: i64,
        quota: KvQuota,
    ) -> Result<i64, BackendError>;
    /// Remove every key of `tenant` (the tenant is being deleted); returns
    /// how many were removed. Other tenants are untouched.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
    /// Keys and bytes (keys plus values) held by `tenant`, as its quota
    /// counts them (expired keys not yet swept may be included).
    async fn stored(&self, tenant: &TenantId) -> Result<(u64, u64), BackendError>;
}

/// The set of backends a host process uses.
#[derive(Clone)]
pub struct Backends {
    /// Pub/sub bus (it appends every event to `replay`).
    pub bus: Arc<dyn Bus>,
    /// The replay buffers the bus appends to (memory with the memory bus,
    /// Redis with the Redis bus: one seq source).
    pub replay: Arc<dyn replay::ReplayBuffer>,
    /// Key-value store.
    pub kv: Arc<dyn Kv>,
    /// Token-bucket rate limits.
    pub ratelimit: Arc<dyn ratelimit::RateLimiter>,
    /// Distributed locks.
    pub lock: Arc<dyn lock::DistributedLock>,
    /// Idempotency records.
    pub idempotency: Arc<dyn idempotency::IdempotencyStore>,
    /// Presence (who is on which topic).
    pub presence: Arc<dyn presence::PresenceStore>,
    /// The queue of presence changes for plugins' `on-presence` hook.
    pub presence_events: Arc<dyn presence_events::PresenceOutbox>,
    /// This host's publish-rate sampler and the board it reports to.
    pub publish_rates: Arc<publish_rate::PublishRates>,
    /// Broadcast groups: the store (membership, roles, capacity) and this
    /// host's members' wire side.
    pub groups: Arc<crate::groups::Groups>,
    /// Live cursors.
    pub cursors: Arc<dyn cursor::CursorStore>,
    /// The circuit breaker of every remote backend (one per Redis server;
    /// none in memory), for health checks and metrics.
    pub breakers: Vec<Arc<breaker::CircuitBreaker>>,
    /// Tenant SQL (`[postgres]`): schemas, roles and the `sql` import;
    /// `None` when the host has no Postgres.
    pub sql: Option<Arc<postgres::TenantSql>>,
    /// The host's own tables on Postgres (`[postgres]`; job queue,
    /// scheduler, tasks, durable stores); `None` without Postgres.
    pub host_tables: Option<Arc<postgres::host_tables::HostTables>>,
    /// The job queue (`[postgres]`; the `jobs` import and the poller);
    /// `None` without Postgres.
    pub jobs: Option<Arc<postgres::jobs::JobStore>>,
    /// Recurring jobs (`[postgres]`; the `schedule` import and the
    /// scheduler); `None` without Postgres.
    pub schedules: Option<Arc<postgres::schedules::ScheduleStore>>,
    /// The task runner's store (`[postgres]`; the `tasks` import and the
    /// runner); `None` without Postgres.
    pub tasks: Option<Arc<postgres::tasks::TaskStore>>,
}

impl Backends {
    /// Remove every piece of `tenant`'s data from every backend (the tenant
    /// is being deleted). Stops at the first backend that fails, naming it.
    pub async fn purge_tenant(
        &self,
        tenant: &TenantId,
    ) -> Result<PurgeReport, (&'static str, BackendError)> {
        Ok(PurgeReport {
            kv_keys: self
                .kv
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("KV data", e))?,
            replay_topics: self
                .replay
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("replay buffers", e))?,
            rate_limit_keys: self
                .ratelimit
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("rate limits", e))?,
            locks: self
                .lock
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("locks", e))?,
            idempotency_keys: self
                .idempotency
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("idempotency records", e))?,
            presence_connections: self
                .presence
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("presence", e))?,
            publish_rate_reports: self
                .publish_rates
                .board()
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("publish rates", e))?,
            groups: self
                .groups
                .store()
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("groups", e))?,
            cursors: self
                .cursors
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("cursors", e))?,
            presence_events: self
                .presence_events
                .purge_tenant(tenant)
                .await
                .map_err(|e| ("presence events", e))?,
            jobs: match &self.jobs {
                Some(j) => j.purge_tenant(tenant).await.map_err(|e| ("jobs", e))?,
                None => 0,
            },
            schedules: match &self.schedules {
                Some(s) => s.purge_tenant(tenant).await.map_err(|e| ("schedules", e))?,
                None => 0,
            },
            tasks: match &self.tasks {
                Some(t) => t.purge_tenant(tenant).await.map_err(|e| ("tasks", e))?,
                None => 0,
            },
            sql_schema: match &self.sql {
                Some(sql) => sql
                    .drop_tenant(tenant)
                    .await
                    .map_err(|e| ("SQL schema and role", BackendError::Unavailable(e.message)))?,
                None => false,
            },
        })
    }
}

/// What [`Backends::purge_tenant`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeReport {
    /// KV keys.
    pub kv_keys: u64,
    /// Replay topics.
    pub replay_topics: u64,
    /// Rate-limit buckets and bans.
    pub rate_limit_keys: u64,
    /// Held locks.
    pub locks: u64,
    /// Idempotency records.
    pub idempotency_keys: u64,
    /// Presence connections.
    pub presence_connections: u64,
    /// Publish-rate reports.
    pub publish_rate_reports: u64,
    /// Broadcast groups.
    pub groups: u64,
    /// Live cursors.
    pub cursors: u64,
    /// Queued presence events and delivered presence states.
    pub presence_events: u64,
    /// Whether a SQL schema or role was dropped.
    pub sql_schema: bool,
    /// Jobs (queued, running and dead).
    pub jobs: u64,
    /// Schedules.
    pub schedules: u64,
    /// Tasks (every state).
    pub tasks: u64,
}
