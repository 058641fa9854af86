//! The job queue on PostgreSQL (the seeds' `createJobQueue`, table
//! `jobs` of the host schema, see [`super::host_tables`]): plugins enqueue
//! through the `jobs` import, every host's poller ([`crate::jobs`]) claims
//! due jobs with `FOR UPDATE SKIP LOCKED` and runs them through the
//! plugin's `on-job` hook.
//!
//! **Life of a job.** `queued` (due at `run_at`) → claimed: `running`,
//! `attempts + 1`, hidden until `locked_until` (the visibility timeout) →
//! completed: deleted; failed: `queued` again after an exponential backoff
//! with jitter, or `dead` once it has had `max_attempts` attempts. A
//! running job whose visibility timeout passed (its host died or hung) is
//! claimable again, or dead if it had its last attempt. Dead jobs stay
//! until the operator retries them (`attempts` back to 0) or the tenant is
//! deleted.
//!
//! **Fencing.** Completing, failing or extending names the attempt it
//! claimed: a runner whose visibility timeout passed and whose job was
//! claimed again cannot settle the newer claim (it gets `false`).
//!
//! **Bounds.** Queue names match `^[a-zA-Z][a-zA-Z0-9_-]{0,63}$`; a
//! payload is JSON of at most [`JobSettings::max_payload_bytes`]; a tenant
//! holds at most [`JobSettings::max_queued`] jobs that are not dead
//! (checked at each enqueue; concurrent enqueues may overshoot by the
//! number in flight).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::host_tables::HostTables;
use crate::backend::BackendError;
use crate::catalog::postgres::describe;
use crate::tenant::TenantId;

/// The `jobs` component's migrations (see [`super::host_tables::MIGRATIONS`]).
pub const JOBS_MIGRATIONS: &[&str] = &[JOBS_V1];

/// The jobs table. `schedule_id` / `occurrence` are set on jobs the
/// scheduler enqueued: one job per occurrence of a schedule.
const JOBS_V1: &str = "\
CREATE TABLE {schema}.jobs (
    tenant text NOT NULL,
    id bigserial NOT NULL,
    queue text NOT NULL,
    payload text NOT NULL,
    state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    run_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    last_error text,
    request_id text,
    schedule_id text,
    occurrence bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
CREATE INDEX jobs_due ON {schema}.jobs (tenant, run_at) WHERE state = 'queued';
CREATE INDEX jobs_locked ON {schema}.jobs (tenant, locked_until) WHERE state = 'running';
CREATE INDEX jobs_dead ON {schema}.jobs (tenant, id) WHERE state = 'dead';
CREATE UNIQUE INDEX jobs_occurrence ON {schema}.jobs (tenant, schedule_id, occurrence)
    WHERE schedule_id IS NOT NULL;";

/// Longest queue name.
pub const MAX_QUEUE_NAME: usize = 64;
/// Most queues one plugin version may run jobs of.
pub const MAX_ACCEPTED_QUEUES: usize = 64;
/// Most attempts a job may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest error message kept on a failed job.
const MAX_ERROR_BYTES: usize = 2048;
/// Bound on one database operation of the queue.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most jobs one listing returns.
pub const MAX_LIST: i64 = 1000;

/// Limits and defaults of the job queue (the `[jobs]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSettings {
    /// Largest payload, bytes of JSON.
    pub max_payload_bytes: usize,
    /// Jobs a tenant may hold that are not dead.
    pub max_queued: u64,
    /// Attempts of a job that names none.
    pub default_max_attempts: u32,
    /// How long a claimed job is hidden from other runners.
    pub visibility: Duration,
    /// Backoff before the second attempt; doubles with each attempt.
    pub retry_base: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// Longest delay an enqueue may ask for.
    pub max_delay: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 << 10,
            max_queued: 10_000,
            default_max_attempts: 5,
            visibility: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            max_delay: Duration::from_secs(30 * 86_400),
        }
    }
}

/// What an enqueue asks for beyond queue and payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// Run no earlier than this from now.
    pub delay: Duration,
    /// Attempts before the job is dead (`None`: the default).
    pub max_attempts: Option<u32>,
    /// The request that enqueued it, for logs.
    pub request_id: Option<String>,
}

/// A claimed job, as the runner gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its id (a `BIGINT`).
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its payload (JSON text).
    pub payload: String,
    /// This attempt's number, from 1; also its fencing token.
    pub attempt: u32,
    /// Attempts it may have.
    pub max_attempts: u32,
    /// When it was enqueued, ms since the Unix epoch.
    pub enqueued_at_ms: u64,
    /// The request that enqueued it.
    pub request_id: Option<String>,
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting to run (maybe not yet due).
    Queued,
    /// Claimed by a runner.
    Running,
    /// Out of attempts; waits for the operator.
    Dead,
}

impl JobState {
    /// The state's name, as stored and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Dead => "dead",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(JobState::Queued),
            "running" => Some(JobState::Running),
            "dead" => Some(JobState::Dead),
            _ => None,
        }
    }
}

/// A job as listed for the operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobView {
    /// Its id, as a string (a `BIGINT`).
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Its payload (JSON).
    pub payload: serde_json::Value,
    /// `queued`, `running` or `dead`.
    pub state: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// Attempts it may have.
    pub max_attempts: u32,
    /// When it is due (queued) or was last due, ms since the epoch.
    pub run_at_ms: u64,
    /// When a running job's claim expires, ms since the epoch.
    pub locked_until_ms: Option<u64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When it was enqueued, ms since the epoch.
    pub created_at_ms: u64,
}

/// What [`JobStore::fail`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Queued again, due this many ms from now.
    Retrying {
        /// The backoff chosen.
        after_ms: u64,
    },
    /// Out of attempts: dead.
    Dead,
    /// The claim was no longer this runner's (fenced out); nothing changed.
    Lost,
}

/// The job queue (see the module docs). Share it as `Arc<JobStore>`.
pub struct JobStore {
    tables: Arc<HostTables>,
    settings: JobSettings,
    /// Woken when this host enqueued, so its poller claims at once.
    enqueued: Notify,
}

fn unavailable(what: &str, e: &tokio_postgres::Error) -> BackendError {
    BackendError::Unavailable(format!("job queue {what}: {}", describe(e)))
}

/// Whether `name` is a valid queue name.
pub fn valid_queue(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && name.len() <= MAX_QUEUE_NAME
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A non-negative `BIGINT` (ms, counts) as `u64` (0 if negative).
pub(super) fn ms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A non-negative `INTEGER` as `u32` (0 if negative).
pub(super) fn count(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// `d` in whole milliseconds, saturating.
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The backoff before attempt `attempt + 1`: `base * 2^(attempt-1)` capped
/// at `max`, with jitter (between half and all of it).
pub(super) fn backoff_between(base: Duration, max: Duration, attempt: u32) -> Duration {
    let base = base.as_millis() as f64;
    let exp = 2f64.powi(i32::try_from(attempt.saturating_sub(1).min(40)).unwrap_or(40));
    let full = (base * exp).min(max.as_millis() as f64);
    // Random in [0.5, 1).
    let r = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
    Duration::from_millis((full * (0.5 + r / 2.0)) as u64)
}

/// Truncate `s` to at most `max` bytes on a character boundary.
pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl JobStore {
    /// The queue in `tables` with `settings`.
    pub fn new(tables: Arc<HostTables>, settings: JobSettings) -> Arc<Self> {
        Arc::new(Self {
            tables,
            settings,
            enqueued: Notify::new(),
        })
    }

    /// The queue's settings.
    pub fn settings(&self) -> &JobSettings {
        &self.settings
    }

    /// Resolves when this host enqueued a job since the last wait (or
    /// with the next enqueue).
    pub async fn enqueued(&self) {
        self.enqueued.notified().await;
    }

    async fn client(&self, tenant: &TenantId) -> Result<deadpool_postgres::Object, BackendError> {
        self.tables
            .client(tenant)
            .await
            .map_err(|e| BackendError::Unavailable(format!("job queue: {}", e.message)))
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

    /// Check an enqueue's arguments; the attempts it gets.
    fn check(
        &self,
        queue: &str,
        payload: &str,
        options: &EnqueueOptions,
    ) -> Result<u32, BackendError> {
        if !valid_queue(queue) {
            return Err(BackendError::Invalid(format!(
                "queue name {queue:?} must match ^[a-zA-Z][a-zA-Z0-9_-]{{0,63}}$"
            )));
        }
        if payload.len() > self.settings.max_payload_bytes {
            return Err(BackendError::TooLarge(format!(
                "job payload is {} bytes, at most {} allowed",
                payload.len(),
                self.settings.max_payload_bytes
            )));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(payload)
            .map_err(|e| BackendError::Invalid(format!("job payload is not JSON: {e}")))?;
        if options.delay > self.settings.max_delay {
            return Err(BackendError::Invalid(format!(
                "delay of {} ms is over the {} ms allowed",
                options.delay.as_millis(),
                self.settings.max_delay.as_millis()
            )));
        }
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

    /// Enqueue a job on `queue` of `tenant` with JSON `payload`; its id.
    /// `Invalid` (queue name, JSON, options), `TooLarge` (payload),
    /// `QuotaExceeded` (the tenant holds [`JobSettings::max_queued`] jobs).
    pub async fn enqueue(
        &self,
        tenant: &TenantId,
        queue: &str,
        payload: &str,
        options: &EnqueueOptions,
    ) -> Result<i64, BackendError> {
        let attempts = self.check(queue, payload, options)?;
        let id = self
            .insert(tenant, queue, payload, options, attempts, None)
            .await?
            .ok_or_else(|| {
                BackendError::QuotaExceeded(format!(
                    "the tenant already holds {} jobs",
                    self.settings.max_queued
                ))
            })?;
        crate::metrics::job(tenant, crate::metrics::JobEvent::Enqueued);
        self.enqueued.notify_one();
        Ok(id)
    }

    /// Insert a job unless the tenant is at its cap (`None`); with an
    /// occurrence `(schedule id, n)`, also `None` when that occurrence
    /// was already enqueued.
    async fn insert(
        &self,
        tenant: &TenantId,
        queue: &str,
        payload: &str,
        options: &EnqueueOptions,
        attempts: u32,
        occurrence: Option<(&str, i64)>,
    ) -> Result<Option<i64>, BackendError> {
        let schema = self.tables.schema();
        let cap = i64::try_from(self.settings.max_queued).unwrap_or(i64::MAX);
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let delay = millis(options.delay);
        let (schedule, n) = occurrence.unzip();
        self.bounded(async {
            let client = self.client(tenant).await?;
            let row = client
                .query_opt(
                    &format!(
                        "INSERT INTO {schema}.jobs (tenant, queue, payload, max_attempts, run_at, request_id, schedule_id, occurrence) \
                         SELECT $1, $2, $3, $4, now() + $5::float8 * interval '1 millisecond', $6, $8, $9 \
                         WHERE (SELECT count(*) FROM {schema}.jobs WHERE tenant = $1 AND state <> 'dead') < $7 \
                         ON CONFLICT DO NOTHING RETURNING id"
                    ),
                    &[
                        &tenant.as_str(),
                        &queue,
                        &payload,
                        &attempts,
                        &(delay as f64),
                        &options.request_id,
                        &cap,
                        &schedule,
                        &n,
                    ],
                )
                .await
                .map_err(|e| unavailable("enqueue", &e))?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    /// Enqueue occurrence `occurrence` of schedule `schedule_id` inside the
    /// scheduler's transaction `tx` (on `tenant`'s database): at most once
    /// per occurrence. `false` if it was already enqueued or the tenant is
    /// at its cap.
    pub async fn enqueue_occurrence(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        tenant: &TenantId,
        schedule_id: &str,
        occurrence: i64,
        queue: &str,
        payload: &str,
    ) -> Result<bool, BackendError> {
        let schema = self.tables.schema();
        let cap = i64::try_from(self.settings.max_queued).unwrap_or(i64::MAX);
        let attempts = i32::try_from(self.settings.default_max_attempts).unwrap_or(5);
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO {schema}.jobs (tenant, queue, payload, max_attempts, schedule_id, occurrence) \
                     SELECT $1, $2, $3, $4, $5, $6 \
                     WHERE (SELECT count(*) FROM {schema}.jobs WHERE tenant = $1 AND state <> 'dead') < $7 \
                     ON CONFLICT DO NOTHING RETURNING id"
                ),
                &[
                    &tenant.as_str(),
                    &queue,
                    &payload,
                    &attempts,
                    &schedule_id,
                    &occurrence,
                    &cap,
                ],
            )
            .await
            .map_err(|e| unavailable("scheduled enqueue", &e))?;
        if row.is_some() {
            crate::metrics::job(tenant, crate::metrics::JobEvent::Enqueued);
            self.enqueued.notify_one();
        }
        Ok(row.is_some())
    }

    /// Claim up to `batch` due jobs of `tenant` on `queues` (`FOR UPDATE
    /// SKIP LOCKED`: concurrent claimers get different jobs), hiding each
    /// for `visibility` and counting the attempt. Running jobs whose
    /// visibility passed are claimable again; those that had their last
    /// attempt become dead instead.
    pub async fn claim(
        &self,
        tenant: &TenantId,
        queues: &[String],
        batch: usize,
        visibility: Duration,
    ) -> Result<Vec<Job>, BackendError> {
        if queues.is_empty() || batch == 0 {
            return Ok(Vec::new());
        }
        let schema = self.tables.schema();
        let started = std::time::Instant::now();
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let visibility = millis(visibility) as f64;
        let jobs = self
            .bounded(async {
                let client = self.client(tenant).await?;
                let died = client
                    .execute(
                        &format!(
                            "UPDATE {schema}.jobs SET state = 'dead', locked_until = NULL, \
                             last_error = 'visibility timeout expired on the last attempt' \
                             WHERE tenant = $1 AND state = 'running' AND locked_until <= now() \
                             AND attempts >= max_attempts"
                        ),
                        &[&tenant.as_str()],
                    )
                    .await
                    .map_err(|e| unavailable("claim", &e))?;
                for _ in 0..died {
                    crate::metrics::job(tenant, crate::metrics::JobEvent::Dead);
                }
                let rows = client
                    .query(
                        &format!(
                            "WITH due AS ( \
                                SELECT tenant, id FROM {schema}.jobs \
                                WHERE tenant = $1 AND queue = ANY($2) \
                                  AND ((state = 'queued' AND run_at <= now()) \
                                    OR (state = 'running' AND locked_until <= now())) \
                                ORDER BY run_at, id LIMIT $3 \
                                FOR UPDATE SKIP LOCKED) \
                             UPDATE {schema}.jobs j SET state = 'running', attempts = j.attempts + 1, \
                                locked_until = now() + $4::float8 * interval '1 millisecond' \
                             FROM due WHERE j.tenant = due.tenant AND j.id = due.id \
                             RETURNING j.id, j.queue, j.payload, j.attempts, j.max_attempts, \
                                (extract(epoch FROM j.created_at) * 1000)::int8, j.request_id"
                        ),
                        &[&tenant.as_str(), &queues, &limit, &visibility],
                    )
                    .await
                    .map_err(|e| unavailable("claim", &e))?;
                Ok(rows
                    .iter()
                    .map(|r| Job {
                        id: r.get(0),
                        queue: r.get(1),
                        payload: r.get(2),
                        attempt: count(r.get(3)),
                        max_attempts: count(r.get(4)),
                        enqueued_at_ms: ms(r.get(5)),
                        request_id: r.get(6),
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        crate::metrics::job_claim(started.elapsed());
        Ok(jobs)
    }

    /// Attempt `job.attempt` of `job` succeeded: remove it. `false` if the
    /// claim was no longer this runner's.
    pub async fn complete(&self, tenant: &TenantId, job: &Job) -> Result<bool, BackendError> {
        let schema = self.tables.schema();
        let attempt = i32::try_from(job.attempt).unwrap_or(i32::MAX);
        let done = self
            .bounded(async {
                let client = self.client(tenant).await?;
                client
                    .execute(
                        &format!(
                            "DELETE FROM {schema}.jobs WHERE tenant = $1 AND id = $2 \
                             AND attempts = $3 AND state = 'running'"
                        ),
                        &[&tenant.as_str(), &job.id, &attempt],
                    )
                    .await
                    .map_err(|e| unavailable("complete", &e))
            })
            .await?;
        if done > 0 {
            crate::metrics::job(tenant, crate::metrics::JobEvent::Completed);
        }
        Ok(done > 0)
    }

    /// The backoff before attempt `attempt + 1`: `retry_base * 2^(attempt-1)`
    /// capped at `retry_max`, with jitter (between half and all of it).
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff_between(self.settings.retry_base, self.settings.retry_max, attempt)
    }

    /// Attempt `job.attempt` of `job` failed with `error`: queue it again
    /// after the backoff, or mark it dead if that was its last attempt.
    pub async fn fail(
        &self,
        tenant: &TenantId,
        job: &Job,
        error: &str,
    ) -> Result<FailOutcome, BackendError> {
        let schema = self.tables.schema();
        let attempt = i32::try_from(job.attempt).unwrap_or(i32::MAX);
        let backoff = self.backoff(job.attempt);
        let error = truncate(error, MAX_ERROR_BYTES);
        let state: Option<String> = self
            .bounded(async {
                let client = self.client(tenant).await?;
                let row = client
                    .query_opt(
                        &format!(
                            "UPDATE {schema}.jobs SET \
                                state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
                                run_at = CASE WHEN attempts >= max_attempts THEN run_at \
                                    ELSE now() + $4::float8 * interval '1 millisecond' END, \
                                locked_until = NULL, last_error = $5 \
                             WHERE tenant = $1 AND id = $2 AND attempts = $3 AND state = 'running' \
                             RETURNING state"
                        ),
                        &[
                            &tenant.as_str(),
                            &job.id,
                            &attempt,
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
            None => FailOutcome::Lost,
            Some("dead") => {
                crate::metrics::job(tenant, crate::metrics::JobEvent::Failed);
                crate::metrics::job(tenant, crate::metrics::JobEvent::Dead);
                FailOutcome::Dead
            }
            Some(_) => {
                crate::metrics::job(tenant, crate::metrics::JobEvent::Failed);
                FailOutcome::Retrying {
                    after_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                }
            }
        })
    }

    /// Give back the claim of attempt `job.attempt` of `job` without
    /// counting it: the job did not run (the tenant was at its concurrent
    /// call limit), so it is queued again, due at once, with its attempt
    /// count as before the claim. `false` if the claim was no longer this
    /// runner's.
    pub async fn release(&self, tenant: &TenantId, job: &Job) -> Result<bool, BackendError> {
        let schema = self.tables.schema();
        let attempt = i32::try_from(job.attempt).unwrap_or(i32::MAX);
        let n = self
            .bounded(async {
                let client = self.client(tenant).await?;
                client
                    .execute(
                        &format!(
                            "UPDATE {schema}.jobs SET state = 'queued', attempts = attempts - 1, \
                                locked_until = NULL, run_at = now() \
                             WHERE tenant = $1 AND id = $2 AND attempts = $3 AND state = 'running'"
                        ),
                        &[&tenant.as_str(), &job.id, &attempt],
                    )
                    .await
                    .map_err(|e| unavailable("release", &e))
            })
            .await?;
        Ok(n > 0)
    }

    /// Extend the claim of attempt `job.attempt` to `visibility` from now.
    /// `false` if the claim was no longer this runner's.
    pub async fn extend(
        &self,
        tenant: &TenantId,
        job: &Job,
        visibility: Duration,
    ) -> Result<bool, BackendError> {
        let schema = self.tables.schema();
        let attempt = i32::try_from(job.attempt).unwrap_or(i32::MAX);
        let n = self
            .bounded(async {
                let client = self.client(tenant).await?;
                client
                    .execute(
                        &format!(
                            "UPDATE {schema}.jobs SET locked_until = now() + $4::float8 * interval '1 millisecond' \
                             WHERE tenant = $1 AND id = $2 AND attempts = $3 AND state = 'running'"
                        ),
                        &[&tenant.as_str(), &job.id, &attempt, &(millis(visibility) as f64)],
                    )
                    .await
                    .map_err(|e| unavailable("extend", &e))
            })
            .await?;
        Ok(n > 0)
    }

    /// Jobs of `tenant` in `state`, oldest first, at most `limit` (capped
    /// at [`MAX_LIST`]).
    pub async fn list(
        &self,
        tenant: &TenantId,
        state: JobState,
        limit: i64,
    ) -> Result<Vec<JobView>, BackendError> {
        let schema = self.tables.schema();
        let limit = limit.clamp(1, MAX_LIST);
        self.bounded(async {
            let client = self.client(tenant).await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT id, queue, payload, attempts, max_attempts, \
                            (extract(epoch FROM run_at) * 1000)::int8, \
                            (extract(epoch FROM locked_until) * 1000)::int8, last_error, \
                            (extract(epoch FROM created_at) * 1000)::int8 \
                         FROM {schema}.jobs WHERE tenant = $1 AND state = $2 ORDER BY id LIMIT $3"
                    ),
                    &[&tenant.as_str(), &state.as_str(), &limit],
                )
                .await
                .map_err(|e| unavailable("list", &e))?;
            Ok(rows
                .iter()
                .map(|r| {
                    let payload: String = r.get(2);
                    JobView {
                        id: r.get::<_, i64>(0).to_string(),
                        queue: r.get(1),
                        payload: serde_json::from_str(&payload)
                            .unwrap_or(serde_json::Value::String(payload)),
                        state: state.as_str(),
                        attempts: count(r.get(3)),
                        max_attempts: count(r.get(4)),
                        run_at_ms: ms(r.get(5)),
                        locked_until_ms: r.get::<_, Option<i64>>(6).map(ms),
                        last_error: r.get(7),
                        created_at_ms: ms(r.get(8)),
                    }
                })
                .collect())
        })
        .await
    }

    /// Queue dead job `id` of `tenant` again, due now, with its attempts
    /// reset. `false` if there is no such dead job.
    pub async fn retry(&self, tenant: &TenantId, id: i64) -> Result<bool, BackendError> {
        let schema = self.tables.schema();
        let n = self
            .bounded(async {
                let client = self.client(tenant).await?;
                client
                    .execute(
                        &format!(
                            "UPDATE {schema}.jobs SET state = 'queued', attempts = 0, run_at = now(), \
                             locked_until = NULL WHERE tenant = $1 AND id = $2 AND state = 'dead'"
                        ),
                        &[&tenant.as_str(), &id],
                    )
                    .await
                    .map_err(|e| unavailable("retry", &e))
            })
            .await?;
        if n > 0 {
            self.enqueued.notify_one();
        }
        Ok(n > 0)
    }

    /// Jobs of `tenant` waiting to run (queued), on `queue` or on all.
    pub async fn pending(
        &self,
        tenant: &TenantId,
        queue: Option<&str>,
    ) -> Result<u64, BackendError> {
        let schema = self.tables.schema();
        self.bounded(async {
            let client = self.client(tenant).await?;
            let n: i64 = client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {schema}.jobs WHERE tenant = $1 AND state = 'queued' \
                         AND ($2::text IS NULL OR queue = $2)"
                    ),
                    &[&tenant.as_str(), &queue],
                )
                .await
                .map_err(|e| unavailable("pending", &e))?
                .get(0);
            Ok(ms(n))
        })
        .await
    }

    /// Remove every job of `tenant` (the tenant is being deleted); how many.
    pub async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let schema = self.tables.schema();
        self.bounded(async {
            let client = self.client(tenant).await?;
            client
                .execute(
                    &format!("DELETE FROM {schema}.jobs WHERE tenant = $1"),
                    &[&tenant.as_str()],
                )
                .await
                .map_err(|e| unavailable("purge", &e))
        })
        .await
    }

    /// The host tables the queue lives in (for the scheduler).
    pub fn tables(&self) -> &Arc<HostTables> {
        &self.tables
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

    /// A queue in a host schema of its own, dropped at the end.
    struct Fixture {
        store: Arc<JobStore>,
    }

    impl Fixture {
        fn new(name: &str, settings: JobSettings) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let prefix = format!("jq{name}{}x{nanos}", std::process::id() % 100_000);
            let tables = HostTables::new(&url(), &prefix, &BTreeMap::new(), 4).unwrap();
            Self {
                store: JobStore::new(tables, settings),
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

    fn q(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn enqueue_claim_complete_and_tenants_are_apart() {
        let f = Fixture::new("a", JobSettings::default());
        let s = &f.store;
        let (a, b) = (
            TenantId::parse("acme").unwrap(),
            TenantId::parse("beta").unwrap(),
        );
        let opts = EnqueueOptions {
            request_id: Some("r1".into()),
            ..EnqueueOptions::default()
        };
        let id = s.enqueue(&a, "mail", r#"{"to":"x"}"#, &opts).await.unwrap();
        s.enqueue(&b, "mail", "1", &opts).await.unwrap();
        assert_eq!(s.pending(&a, Some("mail")).await.unwrap(), 1);
        assert_eq!(s.pending(&a, Some("other")).await.unwrap(), 0);
        let jobs = s
            .claim(&a, &q(&["mail"]), 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "only acme's job");
        let job = &jobs[0];
        assert_eq!(
            (
                job.id,
                job.queue.as_str(),
                job.payload.as_str(),
                job.attempt
            ),
            (id, "mail", r#"{"to":"x"}"#, 1)
        );
        assert_eq!(job.max_attempts, 5);
        assert_eq!(job.request_id.as_deref(), Some("r1"));
        assert!(
            s.claim(&a, &q(&["mail"]), 10, Duration::from_secs(30))
                .await
                .unwrap()
                .is_empty(),
            "hidden while claimed"
        );
        assert!(s.complete(&a, job).await.unwrap());
        assert!(!s.complete(&a, job).await.unwrap(), "gone");
        assert_eq!(s.pending(&b, None).await.unwrap(), 1);
        assert_eq!(s.purge_tenant(&b).await.unwrap(), 1);
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn bad_input_and_the_cap_are_refused() {
        let f = Fixture::new(
            "b",
            JobSettings {
                max_queued: 2,
                max_payload_bytes: 10,
                ..JobSettings::default()
            },
        );
        let s = &f.store;
        let a = TenantId::parse("acme").unwrap();
        let o = EnqueueOptions::default();
        for bad in ["", "1abc", "a b", "a.b", &"a".repeat(65)] {
            assert!(
                matches!(
                    s.enqueue(&a, bad, "1", &o).await,
                    Err(BackendError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            s.enqueue(&a, "q", "not json", &o).await,
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            s.enqueue(&a, "q", "\"0123456789\"", &o).await,
            Err(BackendError::TooLarge(_))
        ));
        let zero = EnqueueOptions {
            max_attempts: Some(0),
            ..EnqueueOptions::default()
        };
        assert!(matches!(
            s.enqueue(&a, "q", "1", &zero).await,
            Err(BackendError::Invalid(_))
        ));
        s.enqueue(&a, "q", "1", &o).await.unwrap();
        s.enqueue(&a, "q-2_x", "2", &o).await.unwrap();
        assert!(matches!(
            s.enqueue(&a, "q", "3", &o).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn failures_back_off_then_die_and_dead_jobs_can_be_retried() {
        let f = Fixture::new(
            "c",
            JobSettings {
                retry_base: Duration::from_millis(50),
                ..JobSettings::default()
            },
        );
        let s = &f.store;
        let a = TenantId::parse("acme").unwrap();
        let o = EnqueueOptions {
            max_attempts: Some(2),
            ..EnqueueOptions::default()
        };
        let id = s.enqueue(&a, "q", "{}", &o).await.unwrap();
        let vis = Duration::from_secs(30);
        let job = s.claim(&a, &q(&["q"]), 1, vis).await.unwrap().remove(0);
        assert!(matches!(
            s.fail(&a, &job, "boom").await.unwrap(),
            FailOutcome::Retrying { after_ms } if (25..=50).contains(&after_ms)
        ));
        assert!(
            s.claim(&a, &q(&["q"]), 1, vis).await.unwrap().is_empty(),
            "backing off"
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        let job = s.claim(&a, &q(&["q"]), 1, vis).await.unwrap().remove(0);
        assert_eq!(job.attempt, 2);
        assert_eq!(
            s.fail(&a, &job, "boom again").await.unwrap(),
            FailOutcome::Dead
        );
        let dead = s.list(&a, JobState::Dead, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, id.to_string());
        assert_eq!(dead[0].last_error.as_deref(), Some("boom again"));
        assert_eq!(dead[0].attempts, 2);
        assert!(s.claim(&a, &q(&["q"]), 1, vis).await.unwrap().is_empty());
        assert!(s.retry(&a, id).await.unwrap());
        assert!(!s.retry(&a, id).await.unwrap(), "no longer dead");
        let job = s.claim(&a, &q(&["q"]), 1, vis).await.unwrap().remove(0);
        assert_eq!(job.attempt, 1, "attempts reset");
        assert!(s.complete(&a, &job).await.unwrap());
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn an_expired_claim_is_taken_again_and_the_old_runner_is_fenced_out() {
        let f = Fixture::new("d", JobSettings::default());
        let s = &f.store;
        let a = TenantId::parse("acme").unwrap();
        let o = EnqueueOptions {
            max_attempts: Some(2),
            ..EnqueueOptions::default()
        };
        s.enqueue(&a, "q", "{}", &o).await.unwrap();
        let short = Duration::from_millis(100);
        let old = s.claim(&a, &q(&["q"]), 1, short).await.unwrap().remove(0);
        assert!(s.extend(&a, &old, short).await.unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
        let new = s.claim(&a, &q(&["q"]), 1, short).await.unwrap().remove(0);
        assert_eq!((new.id, new.attempt), (old.id, 2));
        assert!(!s.complete(&a, &old).await.unwrap());
        assert_eq!(s.fail(&a, &old, "late").await.unwrap(), FailOutcome::Lost);
        assert!(!s.extend(&a, &old, short).await.unwrap());
        let running = s.list(&a, JobState::Running, 10).await.unwrap();
        assert_eq!(running.len(), 1);
        // The last attempt's claim expires too: dead, not claimed a third time.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(s.claim(&a, &q(&["q"]), 1, short).await.unwrap().is_empty());
        assert_eq!(s.list(&a, JobState::Dead, 10).await.unwrap().len(), 1);
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn concurrent_claimers_never_share_a_job() {
        let f = Fixture::new("e", JobSettings::default());
        let s = &f.store;
        let a = TenantId::parse("acme").unwrap();
        for i in 0..100 {
            s.enqueue(&a, "q", &i.to_string(), &EnqueueOptions::default())
                .await
                .unwrap();
        }
        let claimers = (0..4).map(|_| {
            let s = Arc::clone(s);
            let a = a.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let jobs = s
                        .claim(&a, &q(&["q"]), 7, Duration::from_secs(30))
                        .await
                        .unwrap();
                    if jobs.is_empty() {
                        return mine;
                    }
                    for j in jobs {
                        assert!(s.complete(&a, &j).await.unwrap());
                        mine.push(j.id);
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
        assert_eq!((before, all.len()), (100, 100));
        f.drop_schema().await;
    }

    #[tokio::test]
    async fn backoff_doubles_with_jitter_and_is_capped() {
        let s = JobStore::new(
            HostTables::new(&url(), "unused", &BTreeMap::new(), 1).unwrap(),
            JobSettings {
                retry_base: Duration::from_millis(1000),
                retry_max: Duration::from_millis(5000),
                ..JobSettings::default()
            },
        );
        for _ in 0..50 {
            let b1 = s.backoff(1).as_millis();
            assert!((500..=1000).contains(&b1), "{b1}");
            let b3 = s.backoff(3).as_millis();
            assert!((2000..=4000).contains(&b3), "{b3}");
            let b9 = s.backoff(9).as_millis();
            assert!((2500..=5000).contains(&b9), "{b9}");
        }
    }
}
