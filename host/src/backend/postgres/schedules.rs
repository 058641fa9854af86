//! Recurring jobs on PostgreSQL (table `schedules` of the host schema, see
//! [`super::host_tables`]): a plugin registers a schedule (an id of its
//! own, a [`Cron`] expression, a queue and a payload) through the
//! `schedule` import; every host's scheduler loop ([`crate::jobs`]) fires
//! the due ones.
//!
//! **Exactly once per occurrence across the fleet.** Firing is one
//! transaction: claim the tenant's due rows `FOR UPDATE SKIP LOCKED` (a
//! second host skips them), enqueue one job per row keyed by `(tenant,
//! schedule id, occurrence)` (the unique index `jobs_occurrence` refuses
//! a second), and move `next_at` to the next occurrence after now. Either
//! all of it commits or none does. An occurrence missed while no host ran
//! fires once, late; the ones after it that are also past are skipped.
//!
//! Ids are scoped to the tenant (two tenants may both own `daily_report`):
//! the key is `(tenant, id)`.

use std::sync::Arc;
use std::time::Duration;

use super::jobs::{JobStore, valid_queue};
use crate::backend::BackendError;
use crate::catalog::postgres::describe;
use crate::cron::Cron;
use crate::tenant::TenantId;

/// The `schedules` component's migrations.
pub const SCHEDULES_MIGRATIONS: &[&str] = &[SCHEDULES_V1];

const SCHEDULES_V1: &str = "\
CREATE TABLE {schema}.schedules (
    tenant text NOT NULL,
    id text NOT NULL,
    cron text NOT NULL,
    queue text NOT NULL,
    payload text NOT NULL,
    next_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
CREATE INDEX schedules_due ON {schema}.schedules (tenant, next_at);";

/// Most schedules one tenant may hold.
pub const MAX_SCHEDULES: i64 = 100;
/// Longest schedule id.
pub const MAX_SCHEDULE_ID: usize = 128;
/// Most due schedules of one tenant fired per transaction.
const FIRE_BATCH: i64 = 100;
/// Bound on one database operation of the scheduler.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// One schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Schedule {
    /// The tenant's own id for it.
    pub id: String,
    /// Its cron expression (normalised spacing).
    pub cron: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// Their payload (JSON text).
    pub payload: String,
    /// The next occurrence, ms since the Unix epoch.
    pub next_at_ms: u64,
}

/// The schedules (see the module docs). Share it as `Arc<ScheduleStore>`.
pub struct ScheduleStore {
    jobs: Arc<JobStore>,
}

fn unavailable(what: &str, e: &tokio_postgres::Error) -> BackendError {
    BackendError::Unavailable(format!("scheduler {what}: {}", describe(e)))
}

/// Whether `id` is a valid schedule id: 1-128 bytes of ASCII letters,
/// digits, `_`, `-`, `.` and `:`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SCHEDULE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl ScheduleStore {
    /// The schedules next to the job queue `jobs` (same host tables).
    pub fn new(jobs: Arc<JobStore>) -> Arc<Self> {
        Arc::new(Self { jobs })
    }

    async fn client(&self, tenant: &TenantId) -> Result<deadpool_postgres::Object, BackendError> {
        self.jobs
            .tables()
            .client(tenant)
            .await
            .map_err(|e| BackendError::Unavailable(format!("scheduler: {}", e.message)))
    }

    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        tokio::time::timeout(OP_TIMEOUT, work)
            .await
            .map_err(|_| BackendError::Timeout)?
    }

    /// Create or replace schedule `id` of `tenant`: from the next
    /// occurrence of `cron` on, a job on `queue` with `payload`. `Invalid`
    /// for a bad id, expression (or one that never fires), queue or
    /// payload; `TooLarge` for a payload over the queue's limit;
    /// `QuotaExceeded` past [`MAX_SCHEDULES`]. Returns the next occurrence
    /// (ms since the epoch).
    pub async fn set(
        &self,
        tenant: &TenantId,
        id: &str,
        cron: &str,
        queue: &str,
        payload: &str,
    ) -> Result<u64, BackendError> {
        if !valid_id(id) {
            return Err(BackendError::Invalid(format!(
                "schedule id {id:?} must be 1-{MAX_SCHEDULE_ID} bytes of letters, digits, _ - . :"
            )));
        }
        let parsed = Cron::parse(cron).map_err(|e| BackendError::Invalid(e.to_string()))?;
        let next = parsed.next_after(now_secs()).ok_or_else(|| {
            BackendError::Invalid(format!("cron expression {cron:?} never fires"))
        })?;
        if !valid_queue(queue) {
            return Err(BackendError::Invalid(format!(
                "queue name {queue:?} must match ^[a-zA-Z][a-zA-Z0-9_-]{{0,63}}$"
            )));
        }
        let max = self.jobs.settings().max_payload_bytes;
        if payload.len() > max {
            return Err(BackendError::TooLarge(format!(
                "payload is {} bytes, at most {max} allowed",
                payload.len()
            )));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(payload)
            .map_err(|e| BackendError::Invalid(format!("payload is not JSON: {e}")))?;
        let schema = self.jobs.tables().schema();
        let source = parsed.to_string();
        let stored = self
            .bounded(async {
                let client = self.client(tenant).await?;
                client
                    .execute(
                        &format!(
                            "INSERT INTO {schema}.schedules AS s (tenant, id, cron, queue, payload, next_at) \
                             SELECT $1, $2, $3, $4, $5, to_timestamp($6::int8) \
                             WHERE EXISTS (SELECT 1 FROM {schema}.schedules WHERE tenant = $1 AND id = $2) \
                                OR (SELECT count(*) FROM {schema}.schedules WHERE tenant = $1) < $7 \
                             ON CONFLICT (tenant, id) DO UPDATE SET cron = EXCLUDED.cron, \
                                queue = EXCLUDED.queue, payload = EXCLUDED.payload, next_at = EXCLUDED.next_at"
                        ),
                        &[
                            &tenant.as_str(),
                            &id,
                            &source,
                            &queue,
                            &payload,
                            &next,
                            &MAX_SCHEDULES,
                        ],
                    )
                    .await
                    .map_err(|e| unavailable("set", &e))
            })
            .await?;
        if stored == 0 {
            return Err(BackendError::QuotaExceeded(format!(
                "the tenant already has {MAX_SCHEDULES} schedules"
            )));
        }
        Ok(u64::try_from(next).unwrap_or(0).saturating_mul(1000))
    }

    /// Remove schedule `id` of `tenant`; `true` if it existed.
    pub async fn remove(&self, tenant: &TenantId, id: &str) -> Result<bool, BackendError> {
        let schema = self.jobs.tables().schema();
        let n = self
            .bounded(async {
                let client = self.client(tenant).await?;
                client
                    .execute(
                        &format!("DELETE FROM {schema}.schedules WHERE tenant = $1 AND id = $2"),
                        &[&tenant.as_str(), &id],
                    )
                    .await
                    .map_err(|e| unavailable("remove", &e))
            })
            .await?;
        Ok(n > 0)
    }

    /// The schedules of `tenant`, by id.
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<Schedule>, BackendError> {
        let schema = self.jobs.tables().schema();
        self.bounded(async {
            let client = self.client(tenant).await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT id, cron, queue, payload, (extract(epoch FROM next_at) * 1000)::int8 \
                         FROM {schema}.schedules WHERE tenant = $1 ORDER BY id"
                    ),
                    &[&tenant.as_str()],
                )
                .await
                .map_err(|e| unavailable("list", &e))?;
            Ok(rows
                .iter()
                .map(|r| Schedule {
                    id: r.get(0),
                    cron: r.get(1),
                    queue: r.get(2),
                    payload: r.get(3),
                    next_at_ms: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                })
                .collect())
        })
        .await
    }

    /// Fire the due schedules of `tenant` once (see the module docs); how
    /// many jobs were enqueued.
    pub async fn fire_due(&self, tenant: &TenantId) -> Result<usize, BackendError> {
        let schema = self.jobs.tables().schema();
        self.bounded(async {
            let mut client = self.client(tenant).await?;
            let tx = client
                .transaction()
                .await
                .map_err(|e| unavailable("fire", &e))?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT id, cron, queue, payload, extract(epoch FROM next_at)::int8 \
                         FROM {schema}.schedules WHERE tenant = $1 AND next_at <= now() \
                         ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED"
                    ),
                    &[&tenant.as_str(), &FIRE_BATCH],
                )
                .await
                .map_err(|e| unavailable("fire", &e))?;
            if rows.is_empty() {
                return Ok(0);
            }
            let now = now_secs();
            let mut fired = 0;
            for r in &rows {
                let id: String = r.get(0);
                let cron: String = r.get(1);
                let queue: String = r.get(2);
                let payload: String = r.get(3);
                let occurrence: i64 = r.get(4);
                if self
                    .jobs
                    .enqueue_occurrence(&tx, tenant, &id, occurrence, &queue, &payload)
                    .await?
                {
                    fired += 1;
                }
                // Stored expressions parsed when set; one that no longer
                // parses or fires is pushed far out rather than retried.
                let next = Cron::parse(&cron)
                    .ok()
                    .and_then(|c| c.next_after(now.max(occurrence)))
                    .unwrap_or(i64::from(i32::MAX));
                tx.execute(
                    &format!(
                        "UPDATE {schema}.schedules SET next_at = to_timestamp($3::int8) \
                         WHERE tenant = $1 AND id = $2"
                    ),
                    &[&tenant.as_str(), &id, &next],
                )
                .await
                .map_err(|e| unavailable("fire", &e))?;
            }
            tx.commit().await.map_err(|e| unavailable("fire", &e))?;
            Ok(fired)
        })
        .await
    }

    /// Remove every schedule of `tenant`; how many.
    pub async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let schema = self.jobs.tables().schema();
        self.bounded(async {
            let client = self.client(tenant).await?;
            client
                .execute(
                    &format!("DELETE FROM {schema}.schedules WHERE tenant = $1"),
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
    use crate::backend::postgres::host_tables::HostTables;
    use crate::backend::postgres::jobs::{JobSettings, JobState};

    fn url() -> String {
        std::env::var("TENANTRY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
    }

    #[tokio::test]
    async fn schedules_fire_once_per_occurrence_and_ids_are_per_tenant() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let prefix = format!("sch{}x{nanos}", std::process::id() % 100_000);
        // Two hosts' stores on one database.
        let stores: Vec<_> = (0..2)
            .map(|_| {
                let tables = HostTables::new(&url(), &prefix, &BTreeMap::new(), 4).unwrap();
                ScheduleStore::new(JobStore::new(tables, JobSettings::default()))
            })
            .collect();
        let (a, b) = (
            TenantId::parse("acme").unwrap(),
            TenantId::parse("beta").unwrap(),
        );
        let s = &stores[0];
        assert!(matches!(
            s.set(&a, "bad id", "* * * * *", "q", "1").await,
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            s.set(&a, "x", "61 * * * *", "q", "1").await,
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            s.set(&a, "x", "0 0 30 2 *", "q", "1").await,
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            s.set(&a, "x", "* * * * *", "q", "nope").await,
            Err(BackendError::Invalid(_))
        ));
        s.set(&a, "daily_report", "* * * * * *", "reports", r#"{"t":"a"}"#)
            .await
            .unwrap();
        s.set(&b, "daily_report", "* * * * * *", "reports", r#"{"t":"b"}"#)
            .await
            .unwrap();
        let listed = s.list(&a).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].payload, r#"{"t":"a"}"#);

        // Both "hosts" fire as fast as they can for ~2.5 s.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
        let mut fired = 0;
        while tokio::time::Instant::now() < deadline {
            for st in &stores {
                fired += st.fire_due(&a).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let queued = stores[0]
            .jobs
            .list(&a, JobState::Queued, 100)
            .await
            .unwrap();
        assert_eq!(queued.len(), fired);
        assert!((2..=3).contains(&fired), "fired {fired} in 2.5 s");
        assert!(queued.iter().all(|j| j.queue == "reports"));
        // beta's schedule is its own: not fired by acme's sweeps.
        assert_eq!(stores[0].jobs.pending(&b, None).await.unwrap(), 0);
        assert!(s.remove(&a, "daily_report").await.unwrap());
        assert!(!s.remove(&a, "daily_report").await.unwrap());
        assert_eq!(s.list(&b).await.unwrap().len(), 1);
        assert_eq!(s.purge_tenant(&b).await.unwrap(), 1);
        let c = s.jobs.tables().client(&a).await.unwrap();
        c.batch_execute(&format!("DROP SCHEMA {} CASCADE", s.jobs.tables().schema()))
            .await
            .unwrap();
    }
}
