//! The task runner's store on PostgreSQL (the seeds' `createTaskRunner`,
//! table `tasks` of the host schema, see [`super::host_tables`]): named
//! tasks with an idempotency key, fenced so that one runner at a time owns
//! a task, taken over when their runner stops heartbeating, and awaited
//! for their result. The runner is [`crate::tasks`].
//!
//! **Life of a task.** `start` inserts `pending` (or finds the task of the
//! same `(name, idempotency key)`: one task per key, whatever the number of
//! starts) → claimed: `running`, `attempt + 1`, a new **fence** token
//! (`fence + 1`, strictly increasing per task), owned until `locked_until`
//! (`now + fence_ttl`, extended by the runner's heartbeat) → `committed`
//! with its result, or on failure `pending` again after a backoff, or
//! `failed` once it had `max_attempts` attempts. A running task whose lock
//! expired (its runner died, or stopped heartbeating) is claimable again:
//! that is the takeover, with the next attempt and a new fence; if it had
//! its last attempt it is `failed` instead. Settled tasks stay for
//! [`TaskSettings::row_ttl`] so later starts with the same key get the
//! same outcome, then [`TaskStore::cleanup`] deletes them.
//!
//! **Fencing.** Heartbeat, commit, fail and release name the fence they
//! claimed: a runner whose task was taken over (its fence is no longer the
//! task's) changes nothing and learns it (`false` / `Lost`). So a task
//! commits at most once, and only the current owner's result.
//!
//! **Bounds.** Names match `^[a-zA-Z][a-zA-Z0-9_-]{0,63}$` (the job queue
//! rule); keys are 1-[`MAX_KEY_BYTES`] bytes; input and result are JSON of
//! at most [`TaskSettings::max_input_bytes`] / [`TaskSettings::max_result_bytes`];
//! a tenant holds at most [`TaskSettings::max_open`] pending or running
//! tasks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::host_tables::HostTables;
use super::jobs::{backoff_between, count, millis, ms, truncate, valid_queue};
use crate::backend::BackendError;
use crate::catalog::postgres::describe;
use crate::metrics::{self, TaskEvent};
use crate::tenant::TenantId;

/// The `tasks` component's migrations (see [`super::host_tables::MIGRATIONS`]).
pub const TASKS_MIGRATIONS: &[&str] = &[TASKS_V1];

/// The tasks table: one row per `(tenant, name, idempotency key)`.
const TASKS_V1: &str = "\
CREATE TABLE {schema}.tasks (
    tenant text NOT NULL,
    id bigserial NOT NULL,
    name text NOT NULL,
    idempotency_key text NOT NULL,
    input text NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'committed', 'failed')),
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    fence bigint NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    owner text,
    result text,
    error text,
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name, idempotency_key)
);
CREATE INDEX tasks_due ON {schema}.tasks (tenant, run_at) WHERE state = 'pending';
CREATE INDEX tasks_locked ON {schema}.tasks (tenant, locked_until) WHERE state = 'running';
CREATE INDEX tasks_settled ON {schema}.tasks (updated_at) WHERE state IN ('committed', 'failed');";

/// Longest idempotency key, bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Most task names one plugin version may run.
pub const MAX_ACCEPTED_TASKS: usize = 64;
/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Most tasks one listing returns.
pub const MAX_LIST: i64 = 1000;
/// Longest error message kept on a task.
const MAX_ERROR_BYTES: usize = 2048;
/// Bound on one database operation of the store.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Settled rows one cleanup statement deletes at most.
const CLEANUP_BATCH: i64 = 10_000;

/// The columns every task query returns, in [`TaskRecord::from_row`]'s order.
const COLUMNS: &str = "id, name, idempotency_key, input, state, attempt, max_attempts, fence, \
    result, error, owner, request_id, \
    (extract(epoch FROM run_at) * 1000)::int8, \
    (extract(epoch FROM locked_until) * 1000)::int8, \
    (extract(epoch FROM created_at) * 1000)::int8, \
    (extract(epoch FROM updated_at) * 1000)::int8";

/// Limits and defaults of the task store (the `[tasks]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSettings {
    /// Largest input, bytes of JSON.
    pub max_input_bytes: usize,
    /// Largest result, bytes of JSON.
    pub max_result_bytes: usize,
    /// Pending or running tasks a tenant may hold.
    pub max_open: u64,
    /// Attempts of a task that names none.
    pub default_max_attempts: u32,
    /// How long a claim (or its last heartbeat) keeps a task its runner's:
    /// a task whose runner died is taken over this long after its last
    /// heartbeat.
    pub fence_ttl: Duration,
    /// Backoff before the second attempt; doubles with each attempt.
    pub retry_base: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// How long settled tasks are kept (and answer starts of their key).
    pub row_ttl: Duration,
    /// How often a waiter looks at its task (it also looks at once when
    /// this host settles one).
    pub await_poll: Duration,
    /// The longest wait of the `tasks` import (below the call's wall-clock
    /// bound).
    pub max_wait: Duration,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            max_input_bytes: 256 << 10,
            max_result_bytes: 256 << 10,
            max_open: 10_000,
            default_max_attempts: 3,
            fence_ttl: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            row_ttl: Duration::from_secs(604_800),
            await_poll: Duration::from_millis(500),
            max_wait: Duration::from_secs(4),
        }
    }
}

/// What a start asks for beyond name, key and input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// Attempts before the task fails (`None`: the default).
    pub max_attempts: Option<u32>,
    /// The request that started it, for logs.
    pub request_id: Option<String>,
}

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting for a runner (new, or retrying after a failed attempt).
    Pending,
    /// Owned by a runner (its fence) until its lock expires.
    Running,
    /// Done; its result is kept.
    Committed,
    /// Out of attempts; its last error is kept.
    Failed,
}

impl TaskState {
    /// The state's name, as stored and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Committed => "committed",
            TaskState::Failed => "failed",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(TaskState::Pending),
            "running" => Some(TaskState::Running),
            "committed" => Some(TaskState::Committed),
            "failed" => Some(TaskState::Failed),
            _ => None,
        }
    }

    /// Whether the task is done (committed or failed).
    pub fn is_settled(self) -> bool {
        matches!(self, TaskState::Committed | TaskState::Failed)
    }
}

/// A task as stored (input and result as JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Its id (a `BIGINT`).
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// Its input (JSON text).
    pub input: String,
    /// Its state.
    pub state: TaskState,
    /// Attempts made (the running one included).
    pub attempt: u32,
    /// Attempts it may have.
    pub max_attempts: u32,
    /// The fence of its last claim (0: never claimed).
    pub fence: u64,
    /// Its result (JSON text), once committed.
    pub result: Option<String>,
    /// The last failed attempt's error.
    pub error: Option<String>,
    /// The runner (`host/pid`) that claimed it last.
    pub owner: Option<String>,
    /// The request that started it.
    pub request_id: Option<String>,
    /// When it is (or was last) due, ms since the epoch.
    pub run_at_ms: u64,
    /// When a running task's lock expires, ms since the epoch.
    pub locked_until_ms: Option<u64>,
    /// When it was started, ms since the epoch.
    pub created_at_ms: u64,
    /// When it last changed, ms since the epoch.
    pub updated_at_ms: u64,
}

impl TaskRecord {
    fn from_row(r: &tokio_postgres::Row) -> Self {
        let state: String = r.get(4);
        Self {
            id: r.get(0),
            name: r.get(1),
            idempotency_key: r.get(2),
            input: r.get(3),
            state: TaskState::parse(&state).unwrap_or(TaskState::Pending),
            attempt: count(r.get(5)),
            max_attempts: count(r.get(6)),
            fence: ms(r.get(7)),
            result: r.get(8),
            error: r.get(9),
            owner: r.get(10),
            request_id: r.get(11),
            run_at_ms: ms(r.get(12)),
            locked_until_ms: r.get::<_, Option<i64>>(13).map(ms),
            created_at_ms: ms(r.get(14)),
            updated_at_ms: ms(r.get(15)),
        }
    }

    /// The task as listed for the operator.
    pub fn view(&self) -> TaskView {
        let json = |s: &str| {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_owned()))
        };
        TaskView {
            id: self.id.to_string(),
            name: self.name.clone(),
            idempotency_key: self.idempotency_key.clone(),
            input: json(&self.input),
            state: self.state.as_str(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            fence: self.fence,
            result: self.result.as_deref().map(json),
            error: self.error.clone(),
            owner: self.owner.clone(),
            request_id: self.request_id.clone(),
            run_at_ms: self.run_at_ms,
            locked_until_ms: self.locked_until_ms,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }
}

/// A task as listed for the operator (the admin API's JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskView {
    /// Its id, as a string (a `BIGINT`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// Its input.
    pub input: serde_json::Value,
    /// `pending`, `running`, `committed` or `failed`.
    pub state: &'static str,
    /// Attempts made.
    pub attempt: u32,
    /// Attempts it may have.
    pub max_attempts: u32,
    /// The fence of its last claim.
    pub fence: u64,
    /// Its result, once committed.
    pub result: Option<serde_json::Value>,
    /// The last failed attempt's error.
    pub error: Option<String>,
    /// The runner that claimed it last (`host/pid`).
    pub owner: Option<String>,
    /// The request that started it.
    pub request_id: Option<String>,
    /// When it is (or was last) due, ms since the epoch.
    pub run_at_ms: u64,
    /// When a running task's lock expires, ms since the epoch.
    pub locked_until_ms: Option<u64>,
    /// When it was started, ms since the epoch.
    pub created_at_ms: u64,
    /// When it last changed, ms since the epoch.
    pub updated_at_ms: u64,
}

/// A claimed task, as the runner gets it: its fence is the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedTask {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// Its input (JSON text).
    pub input: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts it may have.
    pub max_attempts: u32,
    /// This claim's fencing token.
    pub fence: u64,
    /// The request that started it.
    pub request_id: Option<String>,
    /// The claim took the task over from a runner whose lock expired.
    pub taken_over: bool,
}

/// How many tasks of a tenant are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TaskCounts {
    /// Pending.
    pub pending: u64,
    /// Running.
    pub running: u64,
    /// Committed.
    pub committed: u64,
    /// Failed.
    pub failed: u64,
    /// All of them.
    pub total: u64,
}

/// What [`TaskStore::fail`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFailOutcome {
    /// Pending again, due this many ms from now.
    Retrying {
        /// The backoff chosen.
        after_ms: u64,
    },
    /// Out of attempts: failed.
    Failed,
    /// The fence was no longer the task's; nothing changed.
    Lost,
}

/// The task store (see the module docs). Share it as `Arc<TaskStore>`.
pub struct TaskStore {
    tables: Arc<HostTables>,
    settings: TaskSettings,
    /// Woken when this host started a task, so its runner claims at once.
    started: Notify,
    /// Woken when this host settled a task, so its waiters look at once.
    settled: Notify,
}

fn unavailable(what: &str, e: &tokio_postgres::Error) -> BackendError {
    BackendError::Unavailable(format!("task store {what}: {}", describe(e)))
}

/// Whether `name` is a valid task name (the queue name rule).
pub fn valid_name(name: &str) -> bool {
    valid_queue(name)
}

fn i32_of(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl TaskStore {
    /// The store in `tables` with `settings`.
    pub fn new(tables: Arc<HostTables>, settings: TaskSettings) -> Arc<Self> {
        Arc::new(Self {
            tables,
            settings,
            started: Notify::new(),
            settled: Notify::new(),
        })
    }

    /// The store's settings.
    pub fn settings(&self) -> &TaskSettings {
        &self.settings
    }

    /// The host tables the store lives in.
    pub fn tables(&self) -> &Arc<HostTables> {
        &self.tables
    }

    /// Resolves when this host started a task since the last wait (or with
    /// the next start).
    pub async fn started(&self) {
        self.started.notified().await;
    }

    async fn client(&self, tenant: &TenantId) -> Result<deadpool_postgres::Object, BackendError> {
        self.tables
            .client(tenant)
            .await
            .map_err(|e| BackendError::Unavailable(format!("task store: {}", e.message)))
    }

    /// Bound `work` by [`OP_TIMEOUT`].
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        tokio::time::timeout(OP_TIMEOUT, work)
            .await
            .map_err(|_| BackendError::Timeout)?
    }

    /// Check a start's arguments; the attempts it gets.
    fn check(
        &self,
        name: &str,
        key: &str,
        input: &str,
        options: &StartOptions,
    ) -> Result<u32, BackendError> {
        if !valid_name(name) {
            return Err(BackendError::Invalid(format!(
                "task name {name:?} must match ^[a-zA-Z][a-zA-Z0-9_-]{{0,63}}$"
            )));
        }
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(BackendError::Invalid(format!(
                "the idempotency key must be 1-{MAX_KEY_BYTES} bytes"
            )));
        }
        if input.len() > self.settings.max_input_bytes {
            return Err(BackendError::TooLarge(format!(
                "task input is {} bytes, at most {} allowed",
                input.len(),
                self.settings.max_input_bytes
            )));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(input)
            .map_err(|e| BackendError::Invalid(format!("task input is not JSON: {e}")))?;
        let attempts = options
            .max_attempts
            .unwrap_or(self.settings.default_max_attempts);
        if attempts == 0 || attempts > MAX_ATTEMPTS_LIMIT {
            return Err(BackendError::Invalid(format!(
                "max attempts must be 1-{MAX_ATTEMPTS_LIMIT}"
            )));
        }
        Ok(attempts)
    }

    /// Start task `name` of `tenant` with idempotency key `key` and JSON
    /// `input`, unless a task of that name and key exists: the task, and
    /// whether this call created it (an existing one is returned as it is,
    /// whatever its input). `Invalid` (name, key, JSON, options),
    /// `TooLarge` (input), `QuotaExceeded` (the tenant holds
    /// [`TaskSettings::max_open`] open tasks).
    pub async fn start(
        &self,
        tenant: &TenantId,
        name: &str,
        key: &str,
        input: &str,
        options: &StartOptions,
    ) -> Result<(TaskRecord, bool), BackendError> {
        let attempts = i32_of(self.check(name, key, input, options)?);
        let schema = self.tables.schema();
        let cap = i64_of(self.settings.max_open);
        let (record, created) = self
            .bounded(async {
                let client = self.client(tenant).await?;
                let inserted = client
                    .query_opt(
                        &format!(
                            "INSERT INTO {schema}.tasks (tenant, name, idempotency_key, input, max_attempts, request_id) \
                             SELECT $1, $2, $3, $4, $5, $6 \
                             WHERE (SELECT count(*) FROM {schema}.tasks WHERE tenant = $1 \
                                    AND state IN ('pending', 'running')) < $7 \
                             ON CONFLICT (tenant, name, idempotency_key) DO NOTHING RETURNING {COLUMNS}"
                        ),
                        &[
                            &tenant.as_str(),
                            &name,
                            &key,
                            &input,
                            &attempts,
                            &options.request_id,
                            &cap,
                        ],
                    )
                    .await
                    .map_err(|e| unavailable("start", &e))?;
                if let Some(row) = inserted {
                    return Ok((TaskRecord::from_row(&row), true));
                }
                let existing = client
                    .query_opt(
                        &format!(
                            "SELECT {COLUMNS} FROM {schema}.tasks \
                             WHERE tenant = $1 AND name = $2 AND idempotency_key = $3"
                        ),
                        &[&tenant.as_str(), &name, &key],
                    )
                    .await
                    .map_err(|e| unavailable("start", &e))?;
                match existing {
                    Some(row) => Ok((TaskRecord::from_row(&row), false)),
                    None => Err(BackendError::QuotaExceeded(format!(
                        "the tenant already holds {} open tasks",
                        self.settings.max_open
                    ))),
                }
            })
            .await?;
        if created {
            metrics::task(tenant, TaskEvent::Created);
            self.started.notify_one();
        }
        Ok((record, created))
    }

    /// Task `id` of `tenant`, if it exists.
    pub async fn get(
        &self,
        tenant: &TenantId,
        id: i64,
    ) -> Result<Option<TaskRecord>, BackendError> {
        let schema = self.tables.schema();
        self.bounded(async {
            let client = self.client(tenant).await?;
            let row = client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM {schema}.tasks WHERE tenant = $1 AND id = $2"),
                    &[&tenant.as_str(), &id],
                )
                .await
                .map_err(|e| unavailable("get", &e))?;
            Ok(row.as_ref().map(TaskRecord::from_row))
        })
        .await
    }

    /// Wait until task `id` of `tenant` is settled, for at most `timeout`,
    /// looking every `poll` (and at once when this host settles a task):
    /// the task as last seen (not settled if the time ran out), `None` if
    /// there is no such task.
    pub async fn wait(
        &self,
        tenant: &TenantId,
        id: i64,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Option<TaskRecord>, BackendError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before the look, so a settle in between wakes us.
            let settled = self.settled.notified();
            let Some(task) = self.get(tenant, id).await? else {
                return Ok(None);
            };
            let now = Instant::now();
            if task.state.is_settled() || now >= deadline {
                return Ok(Some(task));
            }
            let nap = poll.min(deadline - now);
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = settled => {}
            }
        }
    }

    /// Claim up to `batch` due tasks of `tenant` named in `names` for
    /// `owner` (`FOR UPDATE SKIP LOCKED`: concurrent claimers get different
    /// tasks): pending ones whose backoff passed, and running ones whose
    /// lock expired (taken over). Each gets its next attempt, a new fence
    /// and a lock of [`TaskSettings::fence_ttl`]. Running tasks whose lock
    /// expired on their last attempt fail instead.
    pub async fn claim(
        &self,
        tenant: &TenantId,
        names: &[String],
        batch: usize,
        owner: &str,
    ) -> Result<Vec<ClaimedTask>, BackendError> {
        if names.is_empty() || batch == 0 {
            return Ok(Vec::new());
        }
        let schema = self.tables.schema();
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let ttl = millis(self.settings.fence_ttl) as f64;
        let tasks = self
            .bounded(async {
                let client = self.client(tenant).await?;
                let died = client
                    .execute(
                        &format!(
                            "UPDATE {schema}.tasks SET state = 'failed', locked_until = NULL, updated_at = now(), \
                             error = 'its runner stopped heartbeating during the last attempt' \
                             WHERE tenant = $1 AND state = 'running' AND locked_until <= now() \
                             AND attempt >= max_attempts"
                        ),
                        &[&tenant.as_str()],
                    )
                    .await
                    .map_err(|e| unavailable("claim", &e))?;
                for _ in 0..died {
                    metrics::task(tenant, TaskEvent::Failed);
                }
                if died > 0 {
                    self.settled.notify_waiters();
                }
                let rows = client
                    .query(
                        &format!(
                            "WITH due AS ( \
                                SELECT tenant, id, state AS was FROM {schema}.tasks \
                                WHERE tenant = $1 AND name = ANY($2) \
                                  AND ((state = 'pending' AND run_at <= now()) \
                                    OR (state = 'running' AND locked_until <= now())) \
                                ORDER BY run_at, id LIMIT $3 \
                                FOR UPDATE SKIP LOCKED) \
                             UPDATE {schema}.tasks t SET state = 'running', attempt = t.attempt + 1, \
                                fence = t.fence + 1, owner = $5, updated_at = now(), \
                                locked_until = now() + $4::float8 * interval '1 millisecond' \
                             FROM due WHERE t.tenant = due.tenant AND t.id = due.id \
                             RETURNING t.id, t.name, t.idempotency_key, t.input, t.attempt, \
                                t.max_attempts, t.fence, t.request_id, due.was = 'running'"
                        ),
                        &[&tenant.as_str(), &names, &limit, &ttl, &owner],
                    )
                    .await
                    .map_err(|e| unavailable("claim", &e))?;
                Ok(rows
                    .iter()
                    .map(|r| ClaimedTask {
                        id: r.get(0),
                        name: r.get(1),
                        idempotency_key: r.get(2),
                        input: r.get(3),
                        attempt: count(r.get(4)),
                        max_attempts: count(r.get(5)),
                        fence: ms(r.get(6)),
                        request_id: r.get(7),
                        taken_over: r.get(8),
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        for t in &tasks {
            if t.taken_over {
                metrics::task(tenant, TaskEvent::TakenOver);
            }
        }
        Ok(tasks)
    }

    /// Run one fenced update of `task` (`$1` tenant, `$2` id, `$3` fence,
    /// then `extra`); whether the fence was still the task's.
    async fn fenced(
        &self,
        tenant: &TenantId,
        what: &str,
        task: &ClaimedTask,
        set: &str,
        extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<bool, BackendError> {
        let schema = self.tables.schema();
        let fence = i64_of(task.fence);
        let tenant_str = tenant.as_str();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&tenant_str, &task.id, &fence];
        params.extend_from_slice(extra);
        self.bounded(async {
            let client = self.client(tenant).await?;
            client
                .execute(
                    &format!(
                        "UPDATE {schema}.tasks SET {set}, updated_at = now() \
                         WHERE tenant = $1 AND id = $2 AND fence = $3 AND state = 'running'"
                    ),
                    &params,
                )
                .await
                .map(|n| n > 0)
                .map_err(|e| unavailable(what, &e))
        })
        .await
    }

    /// Extend the lock of `task`'s claim to [`TaskSettings::fence_ttl`] from
    /// now (the runner's heartbeat). `false` if the task was taken over.
    pub async fn heartbeat(
        &self,
        tenant: &TenantId,
        task: &ClaimedTask,
    ) -> Result<bool, BackendError> {
        let ttl = millis(self.settings.fence_ttl) as f64;
        self.fenced(
            tenant,
            "heartbeat",
            task,
            "locked_until = now() + $4::float8 * interval '1 millisecond'",
            &[&ttl],
        )
        .await
    }

    /// The attempt of `task`'s claim succeeded with JSON `result`: commit
    /// it. `false` if the task was taken over (nothing is stored).
    /// `Invalid` / `TooLarge` for a result that is not JSON or too big.
    pub async fn commit(
        &self,
        tenant: &TenantId,
        task: &ClaimedTask,
        result: &str,
    ) -> Result<bool, BackendError> {
        if result.len() > self.settings.max_result_bytes {
            return Err(BackendError::TooLarge(format!(
                "task result is {} bytes, at most {} allowed",
                result.len(),
                self.settings.max_result_bytes
            )));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(result)
            .map_err(|e| BackendError::Invalid(format!("task result is not JSON: {e}")))?;
        let done = self
            .fenced(
                tenant,
                "commit",
                task,
                "state = 'committed', result = $4, locked_until = NULL",
                &[&result],
            )
            .await?;
        if done {
            metrics::task(tenant, TaskEvent::Committed);
            self.settled.notify_waiters();
        }
        Ok(done)
    }

    /// The backoff before attempt `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff_between(self.settings.retry_base, self.settings.retry_max, attempt)
    }

    /// The attempt of `task`'s claim failed with `error`: pending again
    /// after the backoff, or failed if that was its last attempt.
    pub async fn fail(
        &self,
        tenant: &TenantId,
        task: &ClaimedTask,
        error: &str,
    ) -> Result<TaskFailOutcome, BackendError> {
        let schema = self.tables.schema();
        let fence = i64_of(task.fence);
        let backoff = self.backoff(task.attempt);
        let error = truncate(error, MAX_ERROR_BYTES);
        let state: Option<String> = self
            .bounded(async {
                let client = self.client(tenant).await?;
                let row = client
                    .query_opt(
                        &format!(
                            "UPDATE {schema}.tasks SET \
                                state = CASE WHEN attempt >= max_attempts THEN 'failed' ELSE 'pending' END, \
                                run_at = CASE WHEN attempt >= max_attempts THEN run_at \
                                    ELSE now() + $4::float8 * interval '1 millisecond' END, \
                                locked_until = NULL, error = $5, updated_at = now() \
                             WHERE tenant = $1 AND id = $2 AND fence = $3 AND state = 'running' \
                             RETURNING state"
                        ),
                        &[
                            &tenant.as_str(),
                            &task.id,
                            &fence,
                            &(millis(backoff) as f64),
                            &error,
                        ],
                    )
                    .await
                    .map_err(|e| unavailable("fail", &e))?;
                Ok(row.map(|r| r.get(0)))
            })
            .await?;
        Ok(match state.as_deref() {
            None => TaskFailOutcome::Lost,
            Some("failed") => {
                metrics::task(tenant, TaskEvent::Failed);
                self.settled.notify_waiters();
                TaskFailOutcome::Failed
            }
            Some(_) => {
                metrics::task(tenant, TaskEvent::Retried);
                TaskFailOutcome::Retrying {
                    after_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                }
            }
        })
    }

    /// Give `task`'s claim back without counting the attempt (the runner
    /// could not start it, e.g. the tenant was at its concurrency cap):
    /// pending again, due now. `false` if the task was taken over.
    pub async fn release(
        &self,
        tenant: &TenantId,
        task: &ClaimedTask,
    ) -> Result<bool, BackendError> {
        let released = self
            .fenced(
                tenant,
                "release",
                task,
                "state = 'pending', attempt = greatest(attempt - 1, 0), locked_until = NULL, run_at = now()",
                &[],
            )
            .await?;
        if released {
            self.started.notify_one();
        }
        Ok(released)
    }

    /// Take task `id` of `tenant` over now if it is running: its fence
    /// moves on (the current runner is fenced out: its heartbeat, commit
    /// and failure are refused) and its lock expires at once, so the next
    /// claim (on any host) runs it again with the next attempt and a new
    /// fence (the seeds' `takeover(id)`). `false` if it is not running.
    pub async fn takeover(&self, tenant: &TenantId, id: i64) -> Result<bool, BackendError> {
        let schema = self.tables.schema();
        let n = self
            .bounded(async {
                let client = self.client(tenant).await?;
                client
                    .execute(
                        &format!(
                            "UPDATE {schema}.tasks SET locked_until = now(), fence = fence + 1, \
                             updated_at = now() WHERE tenant = $1 AND id = $2 AND state = 'running'"
                        ),
                        &[&tenant.as_str(), &id],
                    )
                    .await
                    .map_err(|e| unavailable("takeover", &e))
            })
            .await?;
        if n > 0 {
            self.started.notify_one();
        }
        Ok(n > 0)
    }

    /// Tasks of `tenant` (in `state`, or all), oldest first, at most
    /// `limit` (capped at [`MAX_LIST`]).
    pub async fn list(
        &self,
        tenant: &TenantId,
        state: Option<TaskState>,
        limit: i64,
    ) -> Result<Vec<TaskRecord>, BackendError> {
        let schema = self.tables.schema();
        let limit = limit.clamp(1, MAX_LIST);
        let state = state.map(TaskState::as_str);
        self.bounded(async {
            let client = self.client(tenant).await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM {schema}.tasks WHERE tenant = $1 \
                         AND ($2::text IS NULL OR state = $2) ORDER BY id LIMIT $3"
                    ),
                    &[&tenant.as_str(), &state, &limit],
                )
                .await
                .map_err(|e| unavailable("list", &e))?;
            Ok(rows.iter().map(TaskRecord::from_row).collect())
        })
        .await
    }

    /// How many tasks `tenant` has in each state.
    pub async fn counts(&self, tenant: &TenantId) -> Result<TaskCounts, BackendError> {
        let schema = self.tables.schema();
        self.bounded(async {
            let client = self.client(tenant).await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT state, count(*) FROM {schema}.tasks WHERE tenant = $1 GROUP BY state"
                    ),
                    &[&tenant.as_str()],
                )
                .await
                .map_err(|e| unavailable("counts", &e))?;
            let mut c = TaskCounts::default();
            for r in &rows {
                let n = ms(r.get(1));
                match TaskState::parse(r.get(0)) {
                    Some(TaskState::Pending) => c.pending = n,
                    Some(TaskState::Running) => c.running = n,
                    Some(TaskState::Committed) => c.committed = n,
                    Some(TaskState::Failed) => c.failed = n,
                    None => {}
                }
                c.total += n;
            }
            Ok(c)
        })
        .await
    }

    /// Delete settled tasks older than [`TaskSettings::row_ttl`] in every
    /// database of the host tables (at most [`CLEANUP_BATCH`] per database
    /// and call); how many.
    pub async fn cleanup(&self) -> Result<u64, BackendError> {
        let schema = self.tables.schema();
        let ttl = millis(self.settings.row_ttl) as f64;
        let mut total = 0;
        for db in self.tables.databases() {
            total += self
                .bounded(async {
                    let client = self.tables.database_client(db.as_ref()).await.map_err(|e| {
                        BackendError::Unavailable(format!("task store: {}", e.message))
                    })?;
                    client
                        .execute(
                            &format!(
                                "DELETE FROM {schema}.tasks WHERE ctid IN ( \
                                    SELECT ctid FROM {schema}.tasks \
                                    WHERE state IN ('committed', 'failed') \
                                      AND updated_at < now() - $1::float8 * interval '1 millisecond' \
                                    LIMIT $2)"
                            ),
                            &[&ttl, &CLEANUP_BATCH],
                        )
                        .await
                        .map_err(|e| unavailable("cleanup", &e))
                })
                .await?;
        }
        Ok(total)
    }

    /// Remove every task of `tenant` (the tenant is being deleted); how many.
    pub async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let schema = self.tables.schema();
        self.bounded(async {
            let client = self.client(tenant).await?;
            client
                .execute(
                    &format!("DELETE FROM {schema}.tasks WHERE tenant = $1"),
                    &[&tenant.as_str()],
                )
                .await
                .map_err(|e| unavailable("purge", &e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn url() -> String {
        std::env::var("TENANTRY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
    }

    /// A store in a host schema of its own, dropped at the end.
    struct Fixture {
        store: Arc<TaskStore>,
    }

    impl Fixture {
        fn new(name: &str, settings: TaskSettings) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let prefix = format!("tk{name}{}x{nanos}", std::process::id() % 100_000);
            let tables = HostTables::new(&url(), &prefix, &BTreeMap::new(), 4).unwrap();
            Self {
                store: TaskStore::new(tables, settings),
            }
        }

        async fn drop_schema(&self) {
            let t = TenantId::parse("cleanup").unwrap();
            let c = self.store.tables.client(&t).await.unwrap();
            c.batch_execute(&format!(
                "DROP SCHEMA {} CASCADE",
                self.store.tables.schema()
            ))
            .await
            .unwrap();
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    fn acme() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    #[tokio::test]
    async fn one_task_per_key_claimed_committed_and_awaited() {
        let f = Fixture::new("a", TaskSettings::default());
        let s = &f.store;
        let (a, b) = (acme(), TenantId::parse("beta").unwrap());
        let o = StartOptions {
            request_id: Some("r1".into()),
            ..StartOptions::default()
        };
        let (t, created) = s
            .start(&a, "charge", "k1", r#"{"cents":5}"#, &o)
            .await
            .unwrap();
        assert!(created);
        assert_eq!(
            (t.state, t.attempt, t.max_attempts, t.fence),
            (TaskState::Pending, 0, 3, 0)
        );
        assert_eq!(t.request_id.as_deref(), Some("r1"));
        // The same key: the same task, whatever the input.
        let (again, created) = s.start(&a, "charge", "k1", "2", &o).await.unwrap();
        assert!(!created);
        assert_eq!((again.id, again.input.as_str()), (t.id, r#"{"cents":5}"#));
        // Another name, another tenant: other tasks.
        let (other, created) = s.start(&a, "refund", "k1", "1", &o).await.unwrap();
        assert!(created && other.id != t.id);
        let (theirs, created) = s.start(&b, "charge", "k1", "1", &o).await.unwrap();
        assert!(created && theirs.id != t.id);

        let claimed = s.claim(&a, &names(&["charge"]), 10, "h1/1").await.unwrap();
        assert_eq!(claimed.len(), 1, "only acme's charge task");
        let c = &claimed[0];
        assert_eq!(
            (c.id, c.attempt, c.fence, c.taken_over),
            (t.id, 1, 1, false)
        );
        assert_eq!(c.input, r#"{"cents":5}"#);
        assert!(
            s.claim(&a, &names(&["charge"]), 10, "h2/2")
                .await
                .unwrap()
                .is_empty(),
            "owned while locked"
        );
        let running = s.get(&a, t.id).await.unwrap().unwrap();
        assert_eq!(
            (running.state, running.owner.as_deref()),
            (TaskState::Running, Some("h1/1"))
        );
        assert!(running.locked_until_ms.is_some());

        // A waiter sees the commit (woken at once, not after its poll).
        let waiter = {
            let (s, a, id) = (Arc::clone(s), a.clone(), t.id);
            tokio::spawn(async move {
                let started = Instant::now();
                let r = s
                    .wait(&a, id, Duration::from_secs(5), Duration::from_secs(3))
                    .await
                    .unwrap()
                    .unwrap();
                (r, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(
            s.commit(&a, c, "not json").await,
            Err(BackendError::Invalid(_))
        ));
        assert!(s.commit(&a, c, r#"{"ok":true}"#).await.unwrap());
        assert!(
            !s.commit(&a, c, r#"{"ok":2}"#).await.unwrap(),
            "commits once"
        );
        let (done, took) = waiter.await.unwrap();
        assert_eq!(
            (done.state, done.result.as_deref()),
            (TaskState::Committed, Some(r#"{"ok":true}"#))
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        // A later start of the key answers the committed task.
        let (later, created) = s.start(&a, "charge", "k1", "{}", &o).await.unwrap();
        assert!(!created);
        assert_eq!(later.result.as_deref(), Some(r#"{"ok":true}"#));
        // Waiting on an unsettled task times out with it as it is; no task: None.
        let pending = s
            .wait(
                &a,
                other.id,
                Duration::from_millis(120),
                Duration::from_millis(50),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pending.state, TaskState::Pending);
        assert!(
            s.wait(
                &a,
                999_999_999,
                Duration::from_millis(50),
                Duration::from_millis(10)
            )
            .await
            .unwrap()
            .is_none()
        );
        assert!(
            s.get(&b, t.id).await.unwrap().is_none(),
            "ids are per tenant"
        );

        let counts = s.counts(&a).await.unwrap();
        assert_eq!(
            counts,
            TaskCounts {
                pending: 1,
                running: 0,
                committed: 1,
                failed: 0,
                total: 2
            }
        );
        let listed = s.list(&a, Some(TaskState::Committed), 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        let v = listed[0].view();
        assert_eq!(
            (v.state, v.result.clone()),
            ("committed", Some(serde_json::json!({"ok": true})))
        );
        assert_eq!(s.list(&a, None, 10).await.unwrap().len(), 2);
        assert_eq!(s.purge_tenant(&b).await.unwrap(), 1);
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn bad_input_and_the_cap_are_refused() {
        let f = Fixture::new(
            "b",
            TaskSettings {
                max_open: 2,
                max_input_bytes: 10,
                ..TaskSettings::default()
            },
        );
        let s = &f.store;
        let a = acme();
        let o = StartOptions::default();
        for bad in ["", "1abc", "a b", "a.b", &"a".repeat(65)] {
            assert!(
                matches!(
                    s.start(&a, bad, "k", "1", &o).await,
                    Err(BackendError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        for key in ["", &"k".repeat(MAX_KEY_BYTES + 1)] {
            assert!(matches!(
                s.start(&a, "t", key, "1", &o).await,
                Err(BackendError::Invalid(_))
            ));
        }
        assert!(matches!(
            s.start(&a, "t", "k", "nope", &o).await,
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            s.start(&a, "t", "k", "\"0123456789\"", &o).await,
            Err(BackendError::TooLarge(_))
        ));
        let zero = StartOptions {
            max_attempts: Some(0),
            ..StartOptions::default()
        };
        assert!(matches!(
            s.start(&a, "t", "k", "1", &zero).await,
            Err(BackendError::Invalid(_))
        ));
        s.start(&a, "t", "k1", "1", &o).await.unwrap();
        s.start(&a, "t", "k2", "1", &o).await.unwrap();
        assert!(matches!(
            s.start(&a, "t", "k3", "1", &o).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        // At the cap, an existing key still answers.
        assert!(!s.start(&a, "t", "k1", "1", &o).await.unwrap().1);
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn failures_back_off_then_fail_and_release_does_not_count() {
        let f = Fixture::new(
            "c",
            TaskSettings {
                retry_base: Duration::from_millis(50),
                ..TaskSettings::default()
            },
        );
        let s = &f.store;
        let a = acme();
        let o = StartOptions {
            max_attempts: Some(2),
            ..StartOptions::default()
        };
        let (t, _) = s.start(&a, "t", "k", "{}", &o).await.unwrap();
        let n = names(&["t"]);
        // A released claim is not an attempt.
        let c = s.claim(&a, &n, 1, "h").await.unwrap().remove(0);
        assert_eq!((c.attempt, c.fence), (1, 1));
        assert!(s.release(&a, &c).await.unwrap());
        assert!(!s.release(&a, &c).await.unwrap());
        let c = s.claim(&a, &n, 1, "h").await.unwrap().remove(0);
        assert_eq!((c.attempt, c.fence), (1, 2), "same attempt, new fence");
        assert!(matches!(
            s.fail(&a, &c, "boom").await.unwrap(),
            TaskFailOutcome::Retrying { after_ms } if (25..=50).contains(&after_ms)
        ));
        assert!(
            s.claim(&a, &n, 1, "h").await.unwrap().is_empty(),
            "backing off"
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        let c = s.claim(&a, &n, 1, "h").await.unwrap().remove(0);
        assert_eq!(c.attempt, 2);
        assert_eq!(
            s.fail(&a, &c, "boom again").await.unwrap(),
            TaskFailOutcome::Failed
        );
        let failed = s.get(&a, t.id).await.unwrap().unwrap();
        assert_eq!(
            (failed.state, failed.error.as_deref()),
            (TaskState::Failed, Some("boom again"))
        );
        assert!(s.claim(&a, &n, 1, "h").await.unwrap().is_empty());
        let w = s
            .wait(&a, t.id, Duration::from_secs(1), Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(w.state, TaskState::Failed);
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn a_task_whose_runner_stops_heartbeating_is_taken_over_and_the_old_runner_is_fenced_out()
    {
        let f = Fixture::new(
            "d",
            TaskSettings {
                fence_ttl: Duration::from_millis(150),
                ..TaskSettings::default()
            },
        );
        let s = &f.store;
        let a = acme();
        let o = StartOptions {
            max_attempts: Some(2),
            ..StartOptions::default()
        };
        let (t, _) = s.start(&a, "t", "k", "{}", &o).await.unwrap();
        let n = names(&["t"]);
        let old = s.claim(&a, &n, 1, "old/1").await.unwrap().remove(0);
        // Heartbeats keep it: no takeover while they come.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(80)).await;
            assert!(s.heartbeat(&a, &old).await.unwrap());
            assert!(s.claim(&a, &n, 1, "new/2").await.unwrap().is_empty());
        }
        // They stop: taken over with the next attempt and a new fence.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let new = s.claim(&a, &n, 1, "new/2").await.unwrap().remove(0);
        assert_eq!(
            (new.id, new.attempt, new.fence, new.taken_over),
            (t.id, 2, 2, true)
        );
        // The old runner can neither heartbeat, commit, fail nor release.
        assert!(!s.heartbeat(&a, &old).await.unwrap());
        assert!(!s.commit(&a, &old, "\"old\"").await.unwrap());
        assert_eq!(
            s.fail(&a, &old, "late").await.unwrap(),
            TaskFailOutcome::Lost
        );
        assert!(!s.release(&a, &old).await.unwrap());
        assert!(s.commit(&a, &new, "\"new\"").await.unwrap());
        let done = s.get(&a, t.id).await.unwrap().unwrap();
        assert_eq!(
            (done.state, done.result.as_deref(), done.attempt),
            (TaskState::Committed, Some("\"new\""), 2)
        );

        // A lock that expires on the last attempt fails the task.
        let (t2, _) = s
            .start(
                &a,
                "t",
                "k2",
                "{}",
                &StartOptions {
                    max_attempts: Some(1),
                    ..o
                },
            )
            .await
            .unwrap();
        let c = s.claim(&a, &n, 1, "old/1").await.unwrap().remove(0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(s.claim(&a, &n, 1, "new/2").await.unwrap().is_empty());
        let dead = s.get(&a, t2.id).await.unwrap().unwrap();
        assert_eq!(dead.state, TaskState::Failed);
        assert!(!s.commit(&a, &c, "1").await.unwrap());

        // An explicit takeover of a running task.
        let (t3, _) = s
            .start(&a, "t", "k3", "{}", &StartOptions::default())
            .await
            .unwrap();
        assert!(!s.takeover(&a, t3.id).await.unwrap(), "not running");
        let first = s.claim(&a, &n, 1, "old/1").await.unwrap().remove(0);
        assert!(s.takeover(&a, t3.id).await.unwrap());
        let second = s.claim(&a, &n, 1, "new/2").await.unwrap().remove(0);
        assert_eq!(
            (second.id, second.attempt, second.taken_over),
            (t3.id, 2, true)
        );
        assert!(!s.heartbeat(&a, &first).await.unwrap());
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn concurrent_starts_of_one_key_make_one_task_and_claimers_never_share() {
        let f = Fixture::new("e", TaskSettings::default());
        let s = &f.store;
        let a = acme();
        let starts = (0..8).map(|_| {
            let (s, a) = (Arc::clone(s), a.clone());
            tokio::spawn(async move {
                s.start(&a, "t", "same", "1", &StartOptions::default())
                    .await
                    .unwrap()
            })
        });
        let mut ids = Vec::new();
        let mut created = 0;
        for st in starts {
            let (t, c) = st.await.unwrap();
            ids.push(t.id);
            created += usize::from(c);
        }
        ids.dedup();
        assert_eq!((ids.len(), created), (1, 1));
        for i in 0..60 {
            s.start(&a, "t", &format!("k{i}"), "1", &StartOptions::default())
                .await
                .unwrap();
        }
        let claimers = (0..4).map(|i| {
            let (s, a) = (Arc::clone(s), a.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = s
                        .claim(&a, &names(&["t"]), 5, &format!("h/{i}"))
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    for t in got {
                        assert!(s.commit(&a, &t, "null").await.unwrap());
                        mine.push(t.id);
                    }
                }
            })
        });
        let mut all = Vec::new();
        for c in claimers {
            all.extend(c.await.unwrap());
        }
        all.sort_unstable();
        let before = all.len();
        all.dedup();
        assert_eq!((before, all.len()), (61, 61));
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn cleanup_deletes_only_old_settled_tasks() {
        let f = Fixture::new(
            "f",
            TaskSettings {
                row_ttl: Duration::from_millis(100),
                ..TaskSettings::default()
            },
        );
        let s = &f.store;
        let a = acme();
        let (done, _) = s
            .start(&a, "t", "done", "1", &StartOptions::default())
            .await
            .unwrap();
        let (open, _) = s
            .start(&a, "t", "open", "1", &StartOptions::default())
            .await
            .unwrap();
        let c = s.claim(&a, &names(&["t"]), 1, "h").await.unwrap().remove(0);
        assert_eq!(c.id, done.id);
        assert!(s.commit(&a, &c, "1").await.unwrap());
        assert_eq!(s.cleanup().await.unwrap(), 0, "not old yet");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(s.cleanup().await.unwrap(), 1);
        assert!(s.get(&a, done.id).await.unwrap().is_none());
        assert!(
            s.get(&a, open.id).await.unwrap().is_some(),
            "open tasks stay"
        );
        // The key is free again.
        assert!(
            s.start(&a, "t", "done", "1", &StartOptions::default())
                .await
                .unwrap()
                .1
        );
        f.drop_schema().await;
    }
}
