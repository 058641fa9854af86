//! Operator configuration: an optional TOML file (`tenantry.toml`), the
//! environment, then the command line, over built-in defaults. No file is
//! needed: the defaults run the embedded demo.
//!
//! Every key of the file, with its default:
//!
//! ```toml
//! # Address to listen on. Env TENANTRY_LISTEN and --listen override it.
//! listen = "127.0.0.1:8080"
//! # Tenant from the subdomain: `acme.example.com` → tenant `acme`. Unset: off.
//! base_domain = "example.com"
//! # Honour the `X-Tenant-ID` header (only behind a trusted proxy that sets it).
//! trust_tenant_header = false
//! # Tenant of connections that name none (no path, subdomain or header).
//! # Default: unset, or "demo" when no [[tenant]] is listed.
//! default_tenant = "acme"
//! # Compiled-component cache. Default: $XDG_CACHE_HOME/tenantry,
//! # else $HOME/.cache/tenantry, else ./.tenantry-cache. Relative paths are
//! # relative to this file's directory.
//! cache_dir = "/var/cache/tenantry"
//!
//! # Plan of tenants that name none (built in: free, starter, professional,
//! # enterprise; see docs/limits.md for every limit and its default).
//! default_plan = "starter"
//!
//! # Process-wide limits.
//! [limits]
//! max_instances = 1000          # concurrent plugin instances (pool size)
//! send_queue = 1024             # outbound frames queued per connection
//! call_wall_timeout_ms = 5000   # wall-clock bound of one call, host waits included
//! max_wasm_stack_kb = 512       # guest stack per call (deeper: RESOURCE_EXHAUSTED)
//! memory_keep_resident_kb = 1024 # linear memory a pool slot keeps mapped after a call
//! worker_threads = 0            # async runtime threads; 0 = one per usable CPU
//! cpu_workers_per_tenant = 0    # workers one tenant's long calls may hold; 0 = all but one
//! idle_ping_ms = 60000          # ping a silent connection; drop it after twice this
//! refused_connect_hold_ms = 1000 # hold a connection refused with 4429 this long before closing it
//! max_held_refusals = 1024      # refused connections held at once; past it, closed at once
//!
//! # Change a built-in plan, or define a new one on top of `base`.
//! [plans.free]
//! max_connections = 50
//! [plans.internal]
//! base = "enterprise"
//! call_deadline_ms = 1000
//!
//! # One table per tenant. `plugin` is a path to a `.wasm` component,
//! # relative to this file's directory, or `bundled:chat` for the demo plugin.
//! [[tenant]]
//! id = "acme"
//! plugin = "plugins/acme.wasm"
//! plan = "professional"                    # default: default_plan
//! suspended = false                        # refuse new connections (1008)
//! [tenant.limits]                          # this tenant's own values, over its plan's
//! max_connections = 20000
//! ```
//!
//! With no `[[tenant]]` at all, the embedded default applies: tenant `demo`
//! running the bundled `chat` plugin, and `default_tenant = "demo"`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::replay::ReplaySettings;
use crate::plan::{DEFAULT_PLAN, Plan, PlanOverrides, resolve_plans};
use crate::presence::PresenceSettings;
use crate::presence_events::PresenceEventSettings;
use crate::tenant::{InvalidTenantId, TenantId};

/// The listen address used when nothing else is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The tenant created when the file lists none.
pub const DEMO_TENANT: &str = "demo";

/// Prefix of `plugin` values naming a plugin compiled into the binary.
pub const BUNDLED_PREFIX: &str = "bundled:";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown keys included).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
    /// A tenant id (in `[[tenant]]` or `default_tenant`) is malformed.
    #[error("invalid config: {0}")]
    TenantId(#[from] InvalidTenantId),
    /// Two `[[tenant]]` tables have the same id.
    #[error("invalid config: tenant {0:?} is listed twice")]
    DuplicateTenant(String),
    /// `default_tenant` names no configured tenant.
    #[error("invalid config: default_tenant {0:?} is not a configured tenant")]
    UnknownDefaultTenant(String),
    /// A setting has an unusable value.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Where a tenant's plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A `.wasm` component file (absolute, or resolved against the config file's directory).
    File(PathBuf),
    /// A plugin compiled into the binary, by name (only `chat` today).
    Bundled(String),
}

/// One tenant to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// The tenant's id.
    pub id: TenantId,
    /// Its plugin.
    pub plugin: PluginSource,
    /// Whether new connections are refused (close 1008).
    pub suspended: bool,
    /// The name of its plan.
    pub plan_name: String,
    /// Its own overrides (`[tenant.limits]`).
    pub limits: PlanOverrides,
    /// Its effective limits: the plan with the tenant's own overrides applied.
    pub plan: Plan,
}

/// PostgreSQL (the `[postgres]` table). With it the registry of tenants
/// and plugin versions lives in Postgres, shared by every host of a fleet,
/// and every tenant gets a schema and a role of its own for the `sql`
/// import (see [`crate::backend::postgres`]).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// Connection URL, e.g. `postgres://root@127.0.0.1:5432/test`.
    pub url: String,
    /// Schema of the registry tables. Default `tenantry`.
    #[serde(default = "default_registry_schema")]
    pub registry_schema: String,
    /// First part of every tenant's schema and role name
    /// (`[a-z][a-z0-9_]{0,15}`), so deployments sharing a cluster do not
    /// collide. Default `tenantry`.
    #[serde(default = "default_tenant_prefix")]
    pub tenant_prefix: String,
    /// Secret the tenant roles' passwords are derived from
    /// (HMAC-SHA256(secret, tenant id), hex): every host of a fleet derives
    /// the same password and none is stored. Unset: a fixed development
    /// value, with a warning at start-up.
    #[serde(default)]
    pub tenant_password_secret: Option<String>,
    /// Tenant connections in use at once on this host, over all tenants.
    /// Default 32.
    #[serde(default = "default_sql_max_connections")]
    pub max_connections: usize,
    /// The isolated tier (`[postgres.tenant_urls]`): tenant id → the URL
    /// (a superuser's) of a database of the tenant's own, where its schema
    /// and role are made instead of in `url`'s database.
    #[serde(default)]
    pub tenant_urls: BTreeMap<String, String>,
}

fn default_tenant_prefix() -> String {
    "tenantry".to_owned()
}

fn default_sql_max_connections() -> usize {
    32
}

fn default_registry_schema() -> String {
    "tenantry".to_owned()
}

impl std::fmt::Debug for PostgresSettings {
    /// The URL may hold a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &"<redacted>")
            .field("registry_schema", &self.registry_schema)
            .field("tenant_prefix", &self.tenant_prefix)
            .field(
                "tenant_password_secret",
                &self.tenant_password_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("max_connections", &self.max_connections)
            .field("tenant_urls", &self.tenant_urls.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Redis (the `[redis]` table). With it the Redis-capable backends use
/// Redis, so several hosts with the same settings form one fleet.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Connection URL, e.g. `redis://127.0.0.1:6379`.
    pub url: String,
    /// First segment of every key and channel (`[a-z0-9_-]`). Default `tenantry`.
    #[serde(default = "default_redis_namespace")]
    pub namespace: String,
    /// Per-extension override: the pub/sub bus on Redis. Default true.
    #[serde(default = "yes")]
    pub bus: bool,
    /// How the Redis bus uses channels. Default `pubsub`.
    #[serde(default)]
    pub bus_mode: BusMode,
    /// Per-extension override: the KV store on Redis. Default true.
    #[serde(default = "yes")]
    pub kv: bool,
    /// Per-extension override: rate limits on Redis. Default true.
    #[serde(default = "yes")]
    pub ratelimit: bool,
    /// Per-extension override: distributed locks on Redis. Default true.
    #[serde(default = "yes")]
    pub lock: bool,
    /// Per-extension override: idempotency records on Redis. Default true.
    #[serde(default = "yes")]
    pub idempotency: bool,
    /// Per-extension override: presence on Redis. Default true.
    #[serde(default = "yes")]
    pub presence: bool,
    /// Per-extension override: fleet-wide publish rates on Redis. Default true.
    #[serde(default = "yes")]
    pub publish_rates: bool,
    /// Per-extension override: broadcast groups on Redis. Default true.
    #[serde(default = "yes")]
    pub groups: bool,
    /// Per-extension override: cursors on Redis. Default true.
    #[serde(default = "yes")]
    pub cursors: bool,
    /// Tenants whose data lives on a Redis of their own (the "instance per
    /// tenant" tier): tenant id → URL (the `[redis.tenant_urls]` table).
    /// Every Redis-backed extension of such a tenant uses that Redis, with
    /// its own connection, bus and circuit breaker; tenants naming the same
    /// URL share it. Every host of a fleet needs the same map. Default none.
    #[serde(default)]
    pub tenant_urls: std::collections::BTreeMap<crate::tenant::TenantId, String>,
}

/// How the Redis bus carries events between hosts (`[redis] bus_mode`).
/// Every host of a namespace must use the same mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusMode {
    /// One channel per tenant (`PUBLISH`); every host receives every event
    /// of the namespace and drops those it has no subscribers for.
    #[default]
    Pubsub,
    /// One channel per topic (`SPUBLISH`/`SSUBSCRIBE`, Redis 7); a host
    /// follows only the topics it has subscribers for.
    Sharded,
}

fn default_redis_namespace() -> String {
    crate::backend::redis::keys::DEFAULT_NAMESPACE.to_owned()
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for RedisSettings {
    /// The URL may hold a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("namespace", &self.namespace)
            .field("bus", &self.bus)
            .field("bus_mode", &self.bus_mode)
            .field("kv", &self.kv)
            .field("ratelimit", &self.ratelimit)
            .field("lock", &self.lock)
            .field("idempotency", &self.idempotency)
            .field("presence", &self.presence)
            .field("publish_rates", &self.publish_rates)
            .field("groups", &self.groups)
            .field("cursors", &self.cursors)
            .field(
                "tenant_urls",
                &self
                    .tenant_urls
                    .keys()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The `[replay]` table: how many recent events each topic keeps for
/// clients catching up (`replay` and `resume` frames).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayTable {
    /// Events kept per topic; 0 keeps none. Default 1000.
    pub size: usize,
    /// Seconds a topic with no publish is kept (seq included); 0: forever.
    /// Default 86400.
    pub ttl_s: u64,
    /// MiB of buffered events one tenant may hold (memory and Redis;
    /// at least 1). Default 8.
    pub max_mb_per_tenant: u64,
    /// Topics one tenant may buffer (memory and Redis; Postgres: at each
    /// cleanup). Default 10000.
    pub max_topics_per_tenant: usize,
    /// Where the buffers live: `"default"` (with the bus: memory, or Redis
    /// with `[redis] bus`) or `"postgres"` (durable, in the host schema;
    /// needs `[postgres]`).
    pub store: StoreChoice,
    /// How often each host deletes expired topics and trimmed events of the
    /// durable buffers (`store = "postgres"`), ms. Default 60000 (the
    /// seeds' `cleanupInterval`).
    pub cleanup_interval_ms: u64,
}

impl Default for ReplayTable {
    fn default() -> Self {
        let d = ReplaySettings::default();
        Self {
            size: d.size,
            ttl_s: d.ttl.map_or(0, |t| t.as_secs()),
            max_mb_per_tenant: (d.max_bytes_per_tenant >> 20) as u64,
            max_topics_per_tenant: d.max_topics_per_tenant,
            store: StoreChoice::Default,
            cleanup_interval_ms: u64::try_from(
                crate::backend::replay::postgres::DEFAULT_CLEANUP_INTERVAL.as_millis(),
            )
            .unwrap_or(60_000),
        }
    }
}

impl ReplayTable {
    /// How often the durable buffers are cleaned up.
    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_millis(self.cleanup_interval_ms)
    }

    /// The backend settings.
    pub fn settings(&self) -> ReplaySettings {
        ReplaySettings {
            size: self.size,
            ttl: (self.ttl_s > 0).then(|| Duration::from_secs(self.ttl_s)),
            max_bytes_per_tenant: usize::try_from(self.max_mb_per_tenant.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            max_topics_per_tenant: self.max_topics_per_tenant,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.size > MAX_REPLAY_SIZE {
            return Err(ConfigError::Invalid(format!(
                "replay.size must be at most {MAX_REPLAY_SIZE}"
            )));
        }
        if self.max_topics_per_tenant == 0 {
            return Err(ConfigError::Invalid(
                "replay.max_topics_per_tenant must be greater than 0".into(),
            ));
        }
        if self.max_mb_per_tenant == 0 {
            return Err(ConfigError::Invalid(
                "replay.max_mb_per_tenant must be greater than 0".into(),
            ));
        }
        if self.cleanup_interval_ms < 100 {
            return Err(ConfigError::Invalid(
                "replay.cleanup_interval_ms must be at least 100".into(),
            ));
        }
        Ok(())
    }
}

/// Where a store with a durable variant keeps its records (`store` in
/// `[idempotency]` and `[replay]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreChoice {
    /// As without the key: in memory, or on Redis when `[redis]` puts it there.
    #[default]
    Default,
    /// In the host schema on Postgres (`[postgres]` must be set).
    Postgres,
}

/// The `[idempotency]` table: where idempotency records live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyTable {
    /// `"default"` (memory, or Redis with `[redis] idempotency`) or
    /// `"postgres"` (the host schema; needs `[postgres]`).
    pub store: StoreChoice,
}

/// The `[presence]` table: how presence notices users of a host that died.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceTable {
    /// How often a host refreshes its connections' presence and sweeps
    /// expired ones, ms. Default 30000 (the seeds' `heartbeat`).
    pub heartbeat_ms: u64,
    /// How long a connection stays present without a refresh, ms: a dead
    /// host's users leave about this long after it died. Default 90000.
    pub ttl_ms: u64,
    /// How long after a user comes or goes a plugin's `on-presence` hook
    /// hears of it, ms (the debounce: a user back within it produces no
    /// event). Default 2000.
    pub events_delay_ms: u64,
}

impl Default for PresenceTable {
    fn default() -> Self {
        let d = PresenceSettings::default();
        Self {
            heartbeat_ms: u64::try_from(d.heartbeat.as_millis()).unwrap_or(u64::MAX),
            ttl_ms: u64::try_from(d.ttl.as_millis()).unwrap_or(u64::MAX),
            events_delay_ms: u64::try_from(PresenceEventSettings::default().delay.as_millis())
                .unwrap_or(u64::MAX),
        }
    }
}

impl PresenceTable {
    /// The presence settings.
    pub fn settings(&self) -> PresenceSettings {
        PresenceSettings {
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            ttl: Duration::from_millis(self.ttl_ms),
        }
    }

    /// The presence-event settings.
    pub fn event_settings(&self) -> PresenceEventSettings {
        PresenceEventSettings {
            delay: Duration::from_millis(self.events_delay_ms),
            ..PresenceEventSettings::default()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.events_delay_ms == 0 || self.events_delay_ms > 60 * 60 * 1000 {
            return Err(ConfigError::Invalid(
                "presence.events_delay_ms must be between 1 ms and an hour".into(),
            ));
        }
        if self.heartbeat_ms == 0 || self.ttl_ms <= self.heartbeat_ms {
            return Err(ConfigError::Invalid(
                "presence: heartbeat_ms must be above 0 and ttl_ms above heartbeat_ms".into(),
            ));
        }
        if self.ttl_ms > 24 * 60 * 60 * 1000 {
            return Err(ConfigError::Invalid(
                "presence.ttl_ms must be at most a day".into(),
            ));
        }
        Ok(())
    }
}

/// The `[groups]` table: how broadcast groups notice members of a host
/// that died.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsTable {
    /// How long a member stays in its group without a refresh, ms (the
    /// seeds' `memberTtl`, 120000): a dead host's members leave about this
    /// long after it died. Hosts refresh their members every 5 s (every
    /// third of the TTL when it is under 15 s).
    pub member_ttl_ms: u64,
}

impl Default for GroupsTable {
    fn default() -> Self {
        Self {
            member_ttl_ms: u64::try_from(crate::backend::groups::DEFAULT_MEMBER_TTL.as_millis())
                .unwrap_or(u64::MAX),
        }
    }
}

impl GroupsTable {
    /// The member TTL.
    pub fn member_ttl(&self) -> Duration {
        Duration::from_millis(self.member_ttl_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.member_ttl_ms < 3 || self.member_ttl_ms > 24 * 60 * 60 * 1000 {
            return Err(ConfigError::Invalid(
                "groups.member_ttl_ms must be between 3 ms and a day".into(),
            ));
        }
        Ok(())
    }
}

/// The `[jobs]` table: the job queue and scheduler (hosts with
/// `[postgres]`; see `docs/configuration.md`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsTable {
    /// How often each host looks for due jobs, ms (it also looks at once
    /// when it enqueued one). Default 200.
    pub poll_ms: u64,
    /// Jobs of one tenant claimed and run at once per host. Default 16.
    pub batch: usize,
    /// How long a claimed job is hidden from other hosts, ms: a job whose
    /// host died runs again this long after its claim. Default 30000.
    pub visibility_ms: u64,
    /// Backoff before a failed job's second attempt, ms; doubling with
    /// each attempt (with jitter), at most `retry_max_ms`. Default 1000.
    pub retry_base_ms: u64,
    /// Longest backoff, ms. Default 300000.
    pub retry_max_ms: u64,
    /// Attempts of a job that names none. Default 5.
    pub max_attempts: u32,
    /// Jobs a tenant may hold that are not dead. Default 10000.
    pub max_queued: u64,
    /// Largest job payload, KiB. Default 256.
    pub max_payload_kb: usize,
    /// How often each host looks for due schedules, ms. Default 250.
    pub schedule_poll_ms: u64,
}

impl Default for JobsTable {
    fn default() -> Self {
        let store = crate::backend::postgres::jobs::JobSettings::default();
        let runner = crate::jobs::JobRunnerSettings::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            poll_ms: ms(runner.poll),
            batch: runner.batch,
            visibility_ms: ms(store.visibility),
            retry_base_ms: ms(store.retry_base),
            retry_max_ms: ms(store.retry_max),
            max_attempts: store.default_max_attempts,
            max_queued: store.max_queued,
            max_payload_kb: store.max_payload_bytes >> 10,
            schedule_poll_ms: ms(runner.schedule_poll),
        }
    }
}

impl JobsTable {
    /// The job queue's settings.
    pub fn store_settings(&self) -> crate::backend::postgres::jobs::JobSettings {
        crate::backend::postgres::jobs::JobSettings {
            max_payload_bytes: self.max_payload_kb << 10,
            max_queued: self.max_queued,
            default_max_attempts: self.max_attempts,
            visibility: Duration::from_millis(self.visibility_ms),
            retry_base: Duration::from_millis(self.retry_base_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
            ..crate::backend::postgres::jobs::JobSettings::default()
        }
    }

    /// The job runner's settings.
    pub fn runner_settings(&self) -> crate::jobs::JobRunnerSettings {
        crate::jobs::JobRunnerSettings {
            poll: Duration::from_millis(self.poll_ms),
            batch: self.batch,
            visibility: Duration::from_millis(self.visibility_ms),
            schedule_poll: Duration::from_millis(self.schedule_poll_ms),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let hour = 60 * 60 * 1000;
        let checks = [
            (
                (1..=60_000).contains(&self.poll_ms),
                "jobs.poll_ms must be 1-60000",
            ),
            (
                (1..=1000).contains(&self.batch),
                "jobs.batch must be 1-1000",
            ),
            (
                (100..=24 * hour).contains(&self.visibility_ms),
                "jobs.visibility_ms must be between 100 ms and a day",
            ),
            (
                self.retry_base_ms >= 1 && self.retry_max_ms >= self.retry_base_ms,
                "jobs: retry_base_ms must be at least 1 and retry_max_ms at least retry_base_ms",
            ),
            (
                self.retry_max_ms <= 24 * hour,
                "jobs.retry_max_ms must be at most a day",
            ),
            (
                (1..=crate::backend::postgres::jobs::MAX_ATTEMPTS_LIMIT)
                    .contains(&self.max_attempts),
                "jobs.max_attempts must be 1-100",
            ),
            (self.max_queued >= 1, "jobs.max_queued must be at least 1"),
            (
                (1..=16 * 1024).contains(&self.max_payload_kb),
                "jobs.max_payload_kb must be 1-16384",
            ),
            (
                (10..=60_000).contains(&self.schedule_poll_ms),
                "jobs.schedule_poll_ms must be 10-60000",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(ConfigError::Invalid((*why).into())),
            None => Ok(()),
        }
    }
}

/// Largest `replay.size`: one `replay` answer sends at most this many events.
pub const MAX_REPLAY_SIZE: usize = 100_000;

/// Settings of the admin API (the `[admin]` table); its address and data
/// directory are top-level keys (`admin_listen`, `data_dir`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Largest plugin upload, MiB. Default 32.
    pub max_upload_mb: u64,
    /// Longest a plugin upload may take to compile, ms. Default 30000.
    pub compile_timeout_ms: u64,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            max_upload_mb: 32,
            compile_timeout_ms: 30_000,
        }
    }
}

impl AdminSettings {
    /// The upload cap in bytes.
    pub fn max_upload_bytes(&self) -> usize {
        usize::try_from(self.max_upload_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }

    /// The compile budget.
    pub fn compile_timeout(&self) -> Duration {
        Duration::from_millis(self.compile_timeout_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_upload_mb == 0 || self.max_upload_mb > 1024 {
            return Err(ConfigError::Invalid(
                "admin.max_upload_mb must be between 1 and 1024".into(),
            ));
        }
        if self.compile_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "admin.compile_timeout_ms must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

/// A size given in KiB, in bytes (saturating at `usize::MAX`).
fn kib_to_bytes(kib: u64) -> usize {
    usize::try_from(kib.saturating_mul(1024)).unwrap_or(usize::MAX)
}

/// Process-wide limits (the `[limits]` table). Per-tenant limits are in plans.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum concurrent plugin instances in the pool. Default 1000.
    pub max_instances: u32,
    /// Outbound frames queued per connection; fan-out beyond it is dropped. Default 1024.
    pub send_queue: usize,
    /// Wall-clock bound of one plugin call including waits on host imports,
    /// in milliseconds (`TIMEOUT`). Default 5000.
    pub call_wall_timeout_ms: u64,
    /// Guest (wasm) stack one call may use, in KiB; deeper recursion is
    /// `RESOURCE_EXHAUSTED`. Default 512.
    pub max_wasm_stack_kb: u64,
    /// Linear memory, in KiB, that a pool slot keeps mapped after a call
    /// ends: those pages are reset with a `memset` and the next call uses
    /// them without page faults; pages past it are given back to the OS.
    /// Raising it up to the plans' `memory_limit_mb` makes calls that
    /// touch much memory cheaper (fewer first-touch faults, shorter
    /// stretches a worker cannot be preempted) at the price of resident
    /// memory: each slot ever used keeps up to this much. Default 1024.
    pub memory_keep_resident_kb: u64,
    /// Worker threads of the async runtime (sockets and plugin calls).
    /// 0 (default): one per CPU the process may run on.
    pub worker_threads: usize,
    /// Worker threads one tenant's long-running calls (past their first
    /// 100 µs slice) may occupy at once, so no tenant takes every worker.
    /// 0 (default): all workers but one, at least one.
    pub cpu_workers_per_tenant: usize,
    /// A connection that sends nothing (pongs included) for this long is
    /// pinged; silent for twice this long, it is dropped. Milliseconds.
    /// Default 60000.
    pub idle_ping_ms: u64,
    /// A connection refused with 4429 before `welcome` (the tenant is over
    /// `connects_per_sec` or at `max_connections`, or `authenticate` could
    /// not run for its call limits) is held this long, unread, before it
    /// is closed: a client reconnecting in a tight loop then costs the host
    /// a few attempts per second instead of thousands. Milliseconds;
    /// 0 closes at once. Default 1000 (clients back off longer than that
    /// after a 4429 anyway).
    pub refused_connect_hold_ms: u64,
    /// Refused connections held at once, over all tenants; a refusal past
    /// it is closed at once. Bounds the sockets holding costs. Default 1024.
    pub max_held_refusals: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            send_queue: 1024,
            call_wall_timeout_ms: 5000,
            max_wasm_stack_kb: 512,
            memory_keep_resident_kb: 1024,
            worker_threads: 0,
            cpu_workers_per_tenant: 0,
            idle_ping_ms: 60_000,
            refused_connect_hold_ms: 1000,
            max_held_refusals: 1024,
        }
    }
}

impl Limits {
    /// The wall-clock bound of one call.
    pub fn call_wall_timeout(&self) -> Duration {
        Duration::from_millis(self.call_wall_timeout_ms)
    }

    /// How long a connection may be silent before it is pinged.
    pub fn idle_ping(&self) -> Duration {
        Duration::from_millis(self.idle_ping_ms)
    }

    /// How long a connection refused with 4429 is held before it is closed.
    pub fn refused_connect_hold(&self) -> Duration {
        Duration::from_millis(self.refused_connect_hold_ms)
    }

    /// The guest stack bound in bytes.
    pub fn max_wasm_stack_bytes(&self) -> usize {
        kib_to_bytes(self.max_wasm_stack_kb)
    }

    /// The linear memory a pool slot keeps resident, in bytes.
    pub fn memory_keep_resident_bytes(&self) -> usize {
        kib_to_bytes(self.memory_keep_resident_kb)
    }

    /// The configured worker thread count; `None`: one per usable CPU.
    pub fn worker_threads(&self) -> Option<usize> {
        match self.worker_threads {
            0 => std::thread::available_parallelism().ok().map(|n| n.get()),
            n => Some(n),
        }
    }

    /// Worker threads one tenant's long calls may hold, for a runtime of `workers` threads.
    pub fn cpu_workers_per_tenant(&self, workers: usize) -> usize {
        match self.cpu_workers_per_tenant {
            0 => workers.saturating_sub(1).max(1),
            n => n,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_instances", u64::from(self.max_instances)),
            ("send_queue", self.send_queue as u64),
            ("call_wall_timeout_ms", self.call_wall_timeout_ms),
            ("max_wasm_stack_kb", self.max_wasm_stack_kb),
            ("idle_ping_ms", self.idle_ping_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name} must be greater than 0"
                )));
            }
        }
        if self.worker_threads > 4096 {
            return Err(ConfigError::Invalid(
                "limits.worker_threads must be at most 4096".into(),
            ));
        }
        if self.max_wasm_stack_kb > 64 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_wasm_stack_kb must be at most 65536".into(),
            ));
        }
        if self.memory_keep_resident_kb > 4 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.memory_keep_resident_kb must be at most 4194304 (4 GiB)".into(),
            ));
        }
        Ok(())
    }
}

/// The whole configuration, after defaults and validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on (`host:port`).
    pub listen: String,
    /// Base domain for subdomain tenancy (`{tenant}.{base_domain}`), lower-case.
    pub base_domain: Option<String>,
    /// Whether the `X-Tenant-ID` header is honoured.
    pub trust_tenant_header: bool,
    /// Tenant for connections that name none.
    pub default_tenant: Option<TenantId>,
    /// Compiled-component cache directory.
    pub cache_dir: PathBuf,
    /// Whether `cache_dir` was set in the file (else it follows `data_dir`).
    pub cache_dir_explicit: bool,
    /// Where the registry of tenants and plugin versions is kept; `None`:
    /// in memory, lost on restart.
    pub data_dir: Option<PathBuf>,
    /// Address of the admin API listener; `None`: no admin API.
    pub admin_listen: Option<String>,
    /// Admin API settings.
    pub admin: AdminSettings,
    /// PostgreSQL, if configured (the registry then lives there).
    pub postgres: Option<PostgresSettings>,
    /// Redis, if configured (the bus and KV then live there).
    pub redis: Option<RedisSettings>,
    /// Replay buffer sizes.
    pub replay: ReplayTable,
    /// Where idempotency records live.
    pub idempotency: IdempotencyTable,
    /// Presence heartbeat and TTL.
    pub presence: PresenceTable,
    /// Broadcast group member TTL.
    pub groups: GroupsTable,
    /// The job queue and scheduler (the `[jobs]` table).
    pub jobs: JobsTable,
    /// The task runner (the `[tasks]` table; with `[postgres]`).
    pub tasks: crate::tasks::TasksTable,
    /// Metric names and label bounds (the `[metrics]` table).
    pub metrics: crate::metrics::MetricsSettings,
    /// The LISTEN/NOTIFY bridge (the `[notify]` table; with `[postgres]`).
    pub notify: crate::notify::NotifyTable,
    /// Process-wide limits.
    pub limits: Limits,
    /// Every plan by name (built-ins, changed and added ones).
    pub plans: BTreeMap<String, Plan>,
    /// The plan of tenants that name none.
    pub default_plan: String,
    /// Tenants to serve (never empty: the demo tenant when the file lists none).
    pub tenants: Vec<TenantConfig>,
}

impl Default for Config {
    fn default() -> Self {
        match Self::from_file_contents(FileConfig::default(), Path::new(".")) {
            Ok(c) => c,
            // The built-in defaults are valid; this arm only keeps the code panic-free.
            Err(_) => Self {
                listen: DEFAULT_LISTEN.to_owned(),
                base_domain: None,
                trust_tenant_header: false,
                default_tenant: None,
                cache_dir: default_cache_dir(),
                cache_dir_explicit: false,
                data_dir: None,
                admin_listen: None,
                admin: AdminSettings::default(),
                postgres: None,
                redis: None,
                replay: ReplayTable::default(),
                idempotency: IdempotencyTable::default(),
                presence: PresenceTable::default(),
                groups: GroupsTable::default(),
                jobs: JobsTable::default(),
                tasks: crate::tasks::TasksTable::default(),
                metrics: crate::metrics::MetricsSettings::default(),
                notify: crate::notify::NotifyTable::default(),
                limits: Limits::default(),
                plans: BTreeMap::new(),
                default_plan: DEFAULT_PLAN.to_owned(),
                tenants: Vec::new(),
            },
        }
    }
}

/// The file as written (all keys optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    base_domain: Option<String>,
    #[serde(default)]
    trust_tenant_header: bool,
    default_tenant: Option<String>,
    cache_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    admin_listen: Option<String>,
    #[serde(default)]
    admin: AdminSettings,
    postgres: Option<PostgresSettings>,
    redis: Option<RedisSettings>,
    #[serde(default)]
    replay: ReplayTable,
    #[serde(default)]
    idempotency: IdempotencyTable,
    #[serde(default)]
    presence: PresenceTable,
    #[serde(default)]
    groups: GroupsTable,
    #[serde(default)]
    jobs: JobsTable,
    #[serde(default)]
    tasks: crate::tasks::TasksTable,
    #[serde(default)]
    metrics: crate::metrics::MetricsSettings,
    #[serde(default)]
    notify: crate::notify::NotifyTable,
    #[serde(default)]
    limits: Limits,
    default_plan: Option<String>,
    #[serde(default)]
    plans: BTreeMap<String, PlanOverrides>,
    #[serde(default, rename = "tenant")]
    tenants: Vec<FileTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTenant {
    id: String,
    plugin: String,
    #[serde(default)]
    suspended: bool,
    plan: Option<String>,
    #[serde(default)]
    limits: PlanOverrides,
}

/// The default cache directory: `$XDG_CACHE_HOME/tenantry`, else
/// `$HOME/.cache/tenantry`, else `./.tenantry-cache`.
pub fn default_cache_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        PathBuf::from(xdg).join("tenantry")
    } else if let Some(home) = non_empty("HOME") {
        PathBuf::from(home).join(".cache").join("tenantry")
    } else {
        PathBuf::from(".tenantry-cache")
    }
}

impl Config {
    /// Load the configuration: the file at `path` if given (else the
    /// defaults), then `listen_override` (from `--listen` or
    /// `TENANTRY_LISTEN`) if given.
    pub fn load(path: Option<&Path>, listen_override: Option<&str>) -> Result<Self, ConfigError> {
        let mut config = match path {
            None => Self::from_file_contents(FileConfig::default(), Path::new("."))?,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let base = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Self::from_toml(&text, base).map_err(|e| match e {
                    ConfigError::Parse { message, .. } => ConfigError::Parse {
                        path: path.to_owned(),
                        message,
                    },
                    other => other,
                })?
            }
        };
        if let Some(listen) = listen_override {
            config.listen = listen.to_owned();
        }
        Ok(config)
    }

    /// Keep the registry in `dir` (from `--data-dir` or `TENANTRY_DATA_DIR`,
    /// or the file). Unless the file set `cache_dir`, compiled components
    /// are cached in `dir/cache`.
    pub fn set_data_dir(&mut self, dir: PathBuf) {
        if !self.cache_dir_explicit {
            self.cache_dir = dir.join("cache");
        }
        self.data_dir = Some(dir);
    }

    /// Parse TOML text; relative paths are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.to_string(),
        })?;
        Self::from_file_contents(file, base_dir)
    }

    fn from_file_contents(file: FileConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        file.limits.validate()?;
        file.admin.validate()?;
        file.replay.validate()?;
        file.presence.validate()?;
        file.groups.validate()?;
        file.jobs.validate()?;
        file.tasks.validate().map_err(ConfigError::Invalid)?;
        file.notify.validate().map_err(ConfigError::Invalid)?;
        file.metrics.validate().map_err(ConfigError::Invalid)?;
        if let Some(r) = &file.redis {
            let ns = r.namespace.as_bytes();
            if ns.is_empty()
                || ns.len() > 64
                || !ns.iter().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-'
                })
            {
                return Err(ConfigError::Invalid(format!(
                    "redis.namespace {:?} must be 1-64 chars of [a-z0-9_-]",
                    r.namespace
                )));
            }
            if r.url.trim().is_empty() {
                return Err(ConfigError::Invalid("redis.url must not be empty".into()));
            }
            if let Some((tenant, _)) = r.tenant_urls.iter().find(|(_, u)| u.trim().is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "redis.tenant_urls.{tenant} must not be empty"
                )));
            }
        }
        if let Some(pg) = &file.postgres {
            let s = pg.registry_schema.as_bytes();
            let ok = !s.is_empty()
                && s.len() <= 63
                && (s[0].is_ascii_lowercase() || s[0] == b'_')
                && s.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "postgres.registry_schema {:?} must match [a-z_][a-z0-9_]{{0,62}}",
                    pg.registry_schema
                )));
            }
            if pg.url.trim().is_empty() {
                return Err(ConfigError::Invalid(
                    "postgres.url must not be empty".into(),
                ));
            }
            let p = pg.tenant_prefix.as_bytes();
            let ok = !p.is_empty()
                && p.len() <= 16
                && p[0].is_ascii_lowercase()
                && p.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "postgres.tenant_prefix {:?} must match [a-z][a-z0-9_]{{0,15}}",
                    pg.tenant_prefix
                )));
            }
            for (id, url) in &pg.tenant_urls {
                if TenantId::parse(id).is_err() {
                    return Err(ConfigError::Invalid(format!(
                        "postgres.tenant_urls: {id:?} is not a tenant id"
                    )));
                }
                if url.trim().is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "postgres.tenant_urls.{id} must not be empty"
                    )));
                }
            }
            if pg.max_connections == 0 || pg.max_connections > 10_000 {
                return Err(ConfigError::Invalid(
                    "postgres.max_connections must be 1-10000".into(),
                ));
            }
        }
        for (table, store) in [
            ("idempotency", file.idempotency.store),
            ("replay", file.replay.store),
        ] {
            if store == StoreChoice::Postgres && file.postgres.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "{table}.store = \"postgres\" needs a [postgres] table"
                )));
            }
        }
        let plans = resolve_plans(&file.plans).map_err(ConfigError::Invalid)?;
        let default_plan = file.default_plan.unwrap_or_else(|| DEFAULT_PLAN.to_owned());
        if !plans.contains_key(&default_plan) {
            return Err(ConfigError::Invalid(format!(
                "default_plan {default_plan:?} is not a plan (known: {})",
                plans.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let plan_of = |tenant: &str,
                       name: Option<&str>,
                       own: &PlanOverrides|
         -> Result<(String, Plan), ConfigError> {
            let name = name.unwrap_or(&default_plan);
            let plan = plans.get(name).ok_or_else(|| {
                ConfigError::Invalid(format!("tenant {tenant}: plan {name:?} is not a plan"))
            })?;
            if own.base.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "tenant {tenant}: `base` belongs in [plans.NAME], not in a tenant's limits"
                )));
            }
            let plan = plan.with(own);
            plan.validate()
                .map_err(|e| ConfigError::Invalid(format!("tenant {tenant}: limits.{e}")))?;
            Ok((name.to_owned(), plan))
        };
        let listen = file.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        if listen.trim().is_empty() {
            return Err(ConfigError::Invalid("listen must not be empty".into()));
        }
        let base_domain = match file.base_domain {
            None => None,
            Some(d) => {
                let d = d.trim().trim_matches('.').to_ascii_lowercase();
                if d.is_empty() || d.contains(|c: char| c == ':' || c == '/' || c.is_whitespace()) {
                    return Err(ConfigError::Invalid(format!(
                        "base_domain {d:?} must be a domain name such as example.com"
                    )));
                }
                Some(d)
            }
        };

        let mut tenants = Vec::with_capacity(file.tenants.len());
        let mut seen = HashSet::new();
        for t in file.tenants {
            let id = TenantId::parse(&t.id)?;
            if !seen.insert(id.clone()) {
                return Err(ConfigError::DuplicateTenant(t.id));
            }
            let plugin = match t.plugin.strip_prefix(BUNDLED_PREFIX) {
                Some(name) => PluginSource::Bundled(name.to_owned()),
                None if t.plugin.is_empty() => {
                    return Err(ConfigError::Invalid(format!(
                        "tenant {id}: plugin must be a path to a .wasm file"
                    )));
                }
                None => PluginSource::File(base_dir.join(&t.plugin)),
            };
            let (plan_name, plan) = plan_of(id.as_str(), t.plan.as_deref(), &t.limits)?;
            tenants.push(TenantConfig {
                id,
                plugin,
                suspended: t.suspended,
                plan_name,
                limits: t.limits,
                plan,
            });
        }

        let mut default_tenant = file
            .default_tenant
            .as_deref()
            .map(TenantId::parse)
            .transpose()?;
        if tenants.is_empty() {
            let demo = TenantId::parse(DEMO_TENANT)?;
            let (plan_name, plan) = plan_of(DEMO_TENANT, None, &PlanOverrides::default())?;
            tenants.push(TenantConfig {
                id: demo.clone(),
                plugin: PluginSource::Bundled("chat".to_owned()),
                suspended: false,
                plan_name,
                limits: PlanOverrides::default(),
                plan,
            });
            default_tenant.get_or_insert(demo);
        }
        if let Some(d) = &default_tenant
            && !tenants.iter().any(|t| &t.id == d)
        {
            return Err(ConfigError::UnknownDefaultTenant(d.to_string()));
        }

        if let Some(a) = &file.admin_listen
            && a.trim().is_empty()
        {
            return Err(ConfigError::Invalid(
                "admin_listen must not be empty".into(),
            ));
        }
        let mut config = Self {
            listen,
            base_domain,
            trust_tenant_header: file.trust_tenant_header,
            default_tenant,
            cache_dir_explicit: file.cache_dir.is_some(),
            cache_dir: match file.cache_dir {
                Some(dir) => base_dir.join(dir),
                None => default_cache_dir(),
            },
            data_dir: None,
            admin_listen: file.admin_listen,
            admin: file.admin,
            postgres: file.postgres,
            redis: file.redis,
            replay: file.replay,
            idempotency: file.idempotency,
            presence: file.presence,
            groups: file.groups,
            jobs: file.jobs,
            tasks: file.tasks,
            metrics: file.metrics,
            notify: file.notify,
            limits: file.limits,
            plans,
            default_plan,
            tenants,
        };
        if let Some(dir) = file.data_dir {
            config.set_data_dir(base_dir.join(dir));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/tenantry"))
    }

    #[test]
    fn redis_tenant_urls() {
        let c = parse(
            "[redis]\nurl = \"redis://u:secret@shared\"\n\
             [redis.tenant_urls]\nacme = \"redis://u:secret@own\"\nbeta = \"redis://own2\"\n",
        )
        .unwrap();
        let r = c.redis.clone().unwrap();
        let ids: Vec<&str> = r.tenant_urls.keys().map(|t| t.as_str()).collect();
        assert_eq!(ids, ["acme", "beta"]);
        assert_eq!(
            r.tenant_urls[&TenantId::parse("acme").unwrap()],
            "redis://u:secret@own"
        );
        // URLs may hold passwords: never printed.
        let debug = format!("{r:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("own2"),
            "{debug}"
        );
        assert!(debug.contains("acme"), "{debug}");
        // Not a tenant id, or no URL: refused.
        for bad in ["\"Not_A_Tenant\" = \"redis://x\"", "acme = \" \""] {
            let text = format!("[redis]\nurl = \"redis://x\"\n[redis.tenant_urls]\n{bad}\n");
            assert!(parse(&text).is_err(), "{bad}");
        }
        // Without the table: nobody has a Redis of their own.
        let c = parse("[redis]\nurl = \"redis://x\"\n").unwrap();
        assert!(c.redis.unwrap().tenant_urls.is_empty());
    }

    #[test]
    fn empty_file_is_the_embedded_demo() {
        let c = parse("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.base_domain, None);
        assert!(!c.trust_tenant_header);
        assert_eq!(
            c.default_tenant.as_ref().map(TenantId::as_str),
            Some("demo")
        );
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.call_wall_timeout(), Duration::from_secs(5));
        assert_eq!(c.limits.send_queue, 1024);
        assert_eq!(c.default_plan, "starter");
        assert_eq!(c.plans.len(), 4);
        let starter = c.plans["starter"].clone();
        assert_eq!(starter.call_deadline(), Duration::from_millis(50));
        assert_eq!(starter.memory_limit_bytes(), 16 << 20);
        assert_eq!(starter.max_frame_bytes, 1 << 20);
        assert_eq!(
            c.tenants,
            vec![TenantConfig {
                id: TenantId::parse("demo").unwrap(),
                plugin: PluginSource::Bundled("chat".into()),
                suspended: false,
                plan_name: "starter".into(),
                limits: PlanOverrides::default(),
                plan: starter,
            }]
        );
        assert_eq!(c.data_dir, None);
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.admin, AdminSettings::default());
        assert_eq!(Config::default(), c);
        assert_eq!(Config::load(None, None).unwrap(), c);
    }

    #[test]
    fn admin_and_data_dir() {
        let c = parse(
            r#"
            admin_listen = "127.0.0.1:9090"
            data_dir = "data"
            [admin]
            max_upload_mb = 8
            compile_timeout_ms = 1000
            "#,
        )
        .unwrap();
        assert_eq!(c.admin_listen.as_deref(), Some("127.0.0.1:9090"));
        assert_eq!(c.data_dir, Some(PathBuf::from("/etc/tenantry/data")));
        assert_eq!(c.cache_dir, PathBuf::from("/etc/tenantry/data/cache"));
        assert_eq!(c.admin.max_upload_bytes(), 8 << 20);
        assert_eq!(c.admin.compile_timeout(), Duration::from_secs(1));
        assert_eq!(c.postgres, None);
        let c = parse("[postgres]\nurl = \"postgres://u:secret@db/x\"").unwrap();
        let pg = c.postgres.clone().unwrap();
        assert_eq!(pg.registry_schema, "tenantry");
        assert!(
            !format!("{c:?}").contains("secret@"),
            "the URL is never printed"
        );
        assert_eq!(pg.tenant_prefix, "tenantry");
        assert_eq!(pg.max_connections, 32);
        assert_eq!(pg.tenant_password_secret, None);
        let c = parse("[postgres]\nurl = \"x\"\ntenant_password_secret = \"hush\"").unwrap();
        assert!(
            !format!("{c:?}").contains("hush"),
            "the secret is never printed"
        );
        assert!(parse("[postgres]\nurl = \"x\"\nregistry_schema = \"A-b\"").is_err());
        for bad in ["\"\"", "\"1a\"", "\"a-b\"", "\"abcdefghijklmnopq\""] {
            let toml = format!("[postgres]\nurl = \"x\"\ntenant_prefix = {bad}");
            assert!(parse(&toml).is_err(), "{bad}");
        }
        assert!(parse("[postgres]\nurl = \"x\"\nmax_connections = 0").is_err());
        let c = parse(
            "[postgres]\nurl = \"x\"\n[postgres.tenant_urls]\nacme = \"postgres://u:pw@db/acme\"",
        )
        .unwrap();
        assert_eq!(c.postgres.as_ref().unwrap().tenant_urls.len(), 1);
        assert!(
            !format!("{c:?}").contains("pw@"),
            "tenant URLs are never printed"
        );
        assert!(parse("[postgres]\nurl = \"x\"\n[postgres.tenant_urls]\nACME = \"y\"").is_err());
        assert!(
            parse("[postgres]\nregistry_schema = \"a\"").is_err(),
            "url is required"
        );
        // An explicit cache_dir stays where it is.
        let mut c = parse("cache_dir = \"/var/cache/t\"").unwrap();
        c.set_data_dir(PathBuf::from("/srv/t"));
        assert_eq!(c.cache_dir, PathBuf::from("/var/cache/t"));
        for bad in [
            "[admin]\nmax_upload_mb = 0",
            "[admin]\ncompile_timeout_ms = 0",
            "[admin]\nbogus = 1",
            "admin_listen = \" \"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
            listen = "0.0.0.0:9000"
            base_domain = "Example.COM"
            trust_tenant_header = true
            default_tenant = "beta"
            cache_dir = "cache"

            default_plan = "free"

            [limits]
            call_wall_timeout_ms = 100
            send_queue = 8
            idle_ping_ms = 250
            refused_connect_hold_ms = 0
            memory_keep_resident_kb = 16384

            [plans.free]
            max_connections = 7

            [plans.gold]
            base = "enterprise"
            call_deadline_ms = 1000

            [[tenant]]
            id = "acme"
            plugin = "plugins/acme.wasm"
            plan = "gold"
            [tenant.limits]
            max_connections = 3

            [[tenant]]
            id = "beta"
            plugin = "/abs/beta.wasm"
            suspended = true

            [[tenant]]
            id = "demo"
            plugin = "bundled:chat"
            "#,
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.base_domain.as_deref(), Some("example.com"));
        assert!(c.trust_tenant_header);
        assert_eq!(c.default_tenant.unwrap().as_str(), "beta");
        assert_eq!(c.cache_dir, PathBuf::from("/etc/tenantry/cache"));
        assert_eq!(c.limits.call_wall_timeout_ms, 100);
        assert_eq!(c.limits.send_queue, 8);
        assert_eq!(c.limits.idle_ping(), Duration::from_millis(250));
        assert_eq!(c.limits.refused_connect_hold(), Duration::ZERO);
        assert_eq!(c.limits.max_held_refusals, 1024);
        assert_eq!(c.limits.memory_keep_resident_bytes(), 16 << 20);
        assert_eq!(c.limits.max_instances, 1000, "unset limits keep defaults");
        assert_eq!(c.tenants[0].plan_name, "gold");
        assert_eq!(c.tenants[0].plan.call_deadline_ms, 1000, "from the plan");
        assert_eq!(
            c.tenants[0].plan.max_connections, 3,
            "the tenant's own value"
        );
        assert_eq!(c.tenants[0].plan.memory_limit_mb, 64, "from enterprise");
        assert_eq!(c.tenants[1].plan_name, "free", "default_plan");
        assert_eq!(c.tenants[1].plan.max_connections, 7);
        assert_eq!(c.tenants.len(), 3);
        assert_eq!(
            c.tenants[0].plugin,
            PluginSource::File("/etc/tenantry/plugins/acme.wasm".into())
        );
        assert_eq!(
            c.tenants[1].plugin,
            PluginSource::File("/abs/beta.wasm".into())
        );
        assert!(c.tenants[1].suspended);
        assert_eq!(c.tenants[2].plugin, PluginSource::Bundled("chat".into()));
    }

    #[test]
    fn listed_tenants_replace_the_demo() {
        let c = parse("[[tenant]]\nid = \"acme\"\nplugin = \"a.wasm\"\n").unwrap();
        assert_eq!(c.tenants.len(), 1);
        assert_eq!(c.default_tenant, None);
    }

    #[test]
    fn errors_are_clear() {
        let e = parse("lisen = \"x\"").unwrap_err().to_string();
        assert!(e.contains("unknown field") && e.contains("lisen"), "{e}");
        let e = parse("[limits]\nsend_qeue = 1").unwrap_err().to_string();
        assert!(e.contains("send_qeue"), "{e}");
        let e = parse("[[tenant]]\nid = \"acme\"\nplugin = \"a.wasm\"\ncolor = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("color"), "{e}");
        let e = parse("[[tenant]]\nid = \"Acme\"\nplugin = \"a.wasm\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid tenant id \"Acme\""), "{e}");
        let e = parse("[[tenant]]\nid = \"a\"\nplugin = \"a.wasm\"\n[[tenant]]\nid = \"a\"\nplugin = \"b.wasm\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
        let e = parse("default_tenant = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("not a configured tenant"), "{e}");
        let e = parse("default_tenant = \"No!\"").unwrap_err().to_string();
        assert!(e.contains("invalid tenant id"), "{e}");
        let e = parse("[limits]\nsend_queue = 0").unwrap_err().to_string();
        assert!(e.contains("send_queue must be greater than 0"), "{e}");
        let e = parse("[limits]\nsend_queue = -1").unwrap_err().to_string();
        assert!(e.contains("send_queue"), "{e}");
        let e = parse("[limits]\nmemory_keep_resident_kb = 5000000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory_keep_resident_kb must be at most"), "{e}");
        assert!(
            parse("[limits]\nmemory_keep_resident_kb = 0").is_ok(),
            "0 keeps nothing resident"
        );
        let e = parse("listen = 8080").unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        let e = parse("[[tenant]]\nid = \"acme\"").unwrap_err().to_string();
        assert!(e.contains("plugin"), "{e}");
        let e = parse("default_plan = \"gold\"").unwrap_err().to_string();
        assert!(
            e.contains("\"gold\" is not a plan") && e.contains("starter"),
            "{e}"
        );
        let e = parse("[[tenant]]\nid = \"acme\"\nplugin = \"a.wasm\"\nplan = \"gold\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tenant acme: plan \"gold\""), "{e}");
        let e = parse(
            "[[tenant]]\nid = \"acme\"\nplugin = \"a.wasm\"\n[tenant.limits]\nmax_connections = 0",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("tenant acme: limits.max_connections must be greater than 0"),
            "{e}"
        );
        let e = parse("[plans.free]\nmax_conections = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn durable_stores_need_postgres() {
        let c = parse("").unwrap();
        assert_eq!(c.idempotency.store, StoreChoice::Default);
        assert_eq!(c.replay.store, StoreChoice::Default);
        let pg = "[postgres]\nurl = \"postgres://root@127.0.0.1/test\"\n";
        let c = parse(&format!(
            "{pg}[idempotency]\nstore = \"postgres\"\n[replay]\nstore = \"postgres\"\n"
        ))
        .unwrap();
        assert_eq!(c.idempotency.store, StoreChoice::Postgres);
        assert_eq!(c.replay.store, StoreChoice::Postgres);
        for table in ["idempotency", "replay"] {
            let e = parse(&format!("[{table}]\nstore = \"postgres\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{table}.store")) && e.contains("[postgres]"),
                "{e}"
            );
            let e = parse(&format!("[{table}]\nstore = \"mongo\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("mongo"), "{e}");
        }
        assert_eq!(
            c.replay.cleanup_interval(),
            crate::backend::replay::postgres::DEFAULT_CLEANUP_INTERVAL
        );
        let c = parse("[replay]\ncleanup_interval_ms = 250\n").unwrap();
        assert_eq!(c.replay.cleanup_interval(), Duration::from_millis(250));
        let e = parse("[replay]\ncleanup_interval_ms = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cleanup_interval_ms"), "{e}");
    }

    #[test]
    fn load_from_file_and_override_listen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenantry.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[[tenant]]\nid = \"acme\"\nplugin = \"p/acme.wasm\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), None).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(
            c.tenants[0].plugin,
            PluginSource::File(dir.path().join("p/acme.wasm"))
        );
        let c = Config::load(Some(&path), Some("127.0.0.1:0")).unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");

        let e = Config::load(Some(&dir.path().join("missing.toml")), None).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
        std::fs::write(&path, "listen = ").unwrap();
        let e = Config::load(Some(&path), None).unwrap_err().to_string();
        assert!(e.contains("tenantry.toml"), "{e}");
    }
}
