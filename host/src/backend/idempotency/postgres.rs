//! The Postgres idempotency store: records in the host schema
//! ([`HostTables`]), shared by every host on the same database.
//!
//! # Layout
//!
//! One row per record in `{schema}.idempotency (tenant, key, state,
//! result, expires_at)`, primary key `(tenant, key)`: `state` is `pending`
//! (no result) or `done` (the result, JSON text). A row whose `expires_at`
//! has passed counts as absent; the cleanup (every [`CLEANUP_INTERVAL`],
//! on every host) deletes such rows, at most [`CLEANUP_BATCH`] per
//! statement. Times are the database's clock, so hosts agree on expiry.
//!
//! # Statements (each one round trip, autocommit)
//!
//! - acquire: `INSERT … ON CONFLICT (tenant, key) DO UPDATE … WHERE
//!   expires_at <= now RETURNING`: a new row, or an expired one taken over,
//!   is returned to exactly one of any number of concurrent callers (the
//!   others wait for its row lock and then see a live row, so their update
//!   does nothing); the same statement reads the live row otherwise. A
//!   caller racing with an insert it cannot see yet in its snapshot reads
//!   nothing and runs the statement once more.
//! - commit: an upsert setting `done`, the result and the new expiry.
//! - abort: `DELETE … WHERE state = 'pending'` (live rows only).
//!
//! Each statement is bounded by [`STATEMENT_TIMEOUT`] (then `Timeout`).
//! Tenants of the isolated tier keep their records in their own database.
//!
//! [`STATEMENT_TIMEOUT`]: crate::backend::postgres::stores::STATEMENT_TIMEOUT

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{IdemAcquire, IdempotencyStore, check_key, check_result, ttl_ms};
use crate::backend::BackendError;
use crate::backend::postgres::host_tables::HostTables;
use crate::backend::postgres::stores::{backend_error, bounded, pg_error, spawn_cleanup};
use crate::tenant::TenantId;

/// How often each host deletes expired records.
pub const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Most expired records one cleanup statement deletes.
pub const CLEANUP_BATCH: i64 = 1000;

/// Attempts of an acquire that keeps racing with inserts it cannot see.
const ACQUIRE_ATTEMPTS: usize = 5;

/// The host-table migration steps of this store (see
/// [`crate::backend::postgres::host_tables::MIGRATIONS`]).
pub const MIGRATION: &[&str] = &["CREATE TABLE {schema}.idempotency ( \
        tenant text NOT NULL, \
        key text NOT NULL, \
        state text NOT NULL CHECK (state IN ('pending', 'done')), \
        result text, \
        expires_at timestamptz NOT NULL, \
        PRIMARY KEY (tenant, key)); \
     CREATE INDEX idempotency_expires_at ON {schema}.idempotency (expires_at)"];

/// The statements, with the schema filled in.
struct Statements {
    acquire: String,
    commit: String,
    abort: String,
    purge: String,
    cleanup: String,
}

impl Statements {
    fn new(schema: &str) -> Self {
        let t = format!("{schema}.idempotency");
        Self {
            acquire: format!(
                "WITH taken AS ( \
                   INSERT INTO {t} AS r (tenant, key, state, result, expires_at) \
                   VALUES ($1, $2, 'pending', NULL, clock_timestamp() + $3::bigint * interval '1 millisecond') \
                   ON CONFLICT (tenant, key) DO UPDATE \
                     SET state = 'pending', result = NULL, expires_at = EXCLUDED.expires_at \
                     WHERE r.expires_at <= clock_timestamp() \
                   RETURNING 1) \
                 SELECT true AS acquired, NULL::text AS state, NULL::text AS result FROM taken \
                 UNION ALL \
                 SELECT false, state, result FROM {t} \
                   WHERE tenant = $1 AND key = $2 AND expires_at > clock_timestamp() \
                     AND NOT EXISTS (SELECT 1 FROM taken)"
            ),
            commit: format!(
                "INSERT INTO {t} (tenant, key, state, result, expires_at) \
                 VALUES ($1, $2, 'done', $3, clock_timestamp() + $4::bigint * interval '1 millisecond') \
                 ON CONFLICT (tenant, key) DO UPDATE \
                   SET state = 'done', result = EXCLUDED.result, expires_at = EXCLUDED.expires_at"
            ),
            abort: format!(
                "DELETE FROM {t} WHERE tenant = $1 AND key = $2 AND state = 'pending' \
                   AND expires_at > clock_timestamp()"
            ),
            purge: format!(
                "WITH gone AS (DELETE FROM {t} WHERE tenant = $1 RETURNING expires_at) \
                 SELECT count(*) FILTER (WHERE expires_at > clock_timestamp()) FROM gone"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE ctid = ANY (ARRAY( \
                   SELECT ctid FROM {t} WHERE expires_at <= clock_timestamp() LIMIT $1))"
            ),
        }
    }
}

/// An [`IdempotencyStore`] on Postgres (see the module docs).
pub struct PostgresIdempotency {
    tables: Arc<HostTables>,
    sql: Statements,
}

impl PostgresIdempotency {
    /// A store in `tables`' host schema, and its cleanup task (every
    /// [`CLEANUP_INTERVAL`], until the store is dropped). Must run inside a
    /// tokio runtime.
    pub fn new(tables: Arc<HostTables>) -> Arc<Self> {
        let store = Arc::new(Self {
            sql: Statements::new(&tables.schema()),
            tables,
        });
        spawn_cleanup(
            &store,
            CLEANUP_INTERVAL,
            "idempotency records",
            |s: Arc<Self>| async move { s.cleanup().await },
        );
        store
    }

    /// Delete the expired records of every database; how many went.
    pub async fn cleanup(&self) -> Result<u64, BackendError> {
        let mut removed = 0;
        for db in self.tables.databases() {
            loop {
                let n = bounded(async {
                    let client = self
                        .tables
                        .database_client(db.as_ref())
                        .await
                        .map_err(backend_error)?;
                    client
                        .execute(&self.sql.cleanup, &[&CLEANUP_BATCH])
                        .await
                        .map_err(|e| pg_error(&e))
                })
                .await?;
                removed += n;
                if n < CLEANUP_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(removed)
    }

    async fn client(&self, tenant: &TenantId) -> Result<deadpool_postgres::Object, BackendError> {
        self.tables.client(tenant).await.map_err(backend_error)
    }
}

/// `ttl_ms` as the `bigint` parameter of a statement.
fn ms_param(what: &str, ttl: Duration) -> Result<i64, BackendError> {
    Ok(i64::try_from(ttl_ms(what, ttl)?).unwrap_or(i64::MAX))
}

#[async_trait]
impl IdempotencyStore for PostgresIdempotency {
    async fn acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        pending_ttl: Duration,
    ) -> Result<IdemAcquire, BackendError> {
        check_key(key)?;
        let ms = ms_param("pending ttl", pending_ttl)?;
        bounded(async {
            let client = self.client(tenant).await?;
            for _ in 0..ACQUIRE_ATTEMPTS {
                let rows = client
                    .query(&self.sql.acquire, &[&tenant.as_str(), &key, &ms])
                    .await
                    .map_err(|e| pg_error(&e))?;
                let Some(row) = rows.first() else {
                    // A record inserted after our snapshot began: look again.
                    continue;
                };
                let acquired: bool = row.try_get(0).map_err(|e| pg_error(&e))?;
                if acquired {
                    return Ok(IdemAcquire::Acquired);
                }
                let state: Option<String> = row.try_get(1).map_err(|e| pg_error(&e))?;
                let result: Option<String> = row.try_get(2).map_err(|e| pg_error(&e))?;
                return match (state.as_deref(), result) {
                    (Some("pending"), _) => Ok(IdemAcquire::Pending),
                    (Some("done"), Some(result)) => Ok(IdemAcquire::Done(result)),
                    _ => Err(BackendError::Other(
                        "idempotency acquire: unexpected record in Postgres".into(),
                    )),
                };
            }
            Err(BackendError::Unavailable(
                "idempotency acquire kept racing with other writers".into(),
            ))
        })
        .await
    }

    async fn commit(
        &self,
        tenant: &TenantId,
        key: &str,
        result: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        check_key(key)?;
        check_result(result)?;
        let ms = ms_param("result ttl", ttl)?;
        bounded(async {
            let client = self.client(tenant).await?;
            client
                .execute(&self.sql.commit, &[&tenant.as_str(), &key, &result, &ms])
                .await
                .map_err(|e| pg_error(&e))?;
            Ok(())
        })
        .await
    }

    async fn abort(&self, tenant: &TenantId, key: &str) -> Result<bool, BackendError> {
        check_key(key)?;
        bounded(async {
            let client = self.client(tenant).await?;
            let n = client
                .execute(&self.sql.abort, &[&tenant.as_str(), &key])
                .await
                .map_err(|e| pg_error(&e))?;
            Ok(n == 1)
        })
        .await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        bounded(async {
            let client = self.client(tenant).await?;
            let row = client
                .query_one(&self.sql.purge, &[&tenant.as_str()])
                .await
                .map_err(|e| pg_error(&e))?;
            let live: i64 = row.try_get(0).map_err(|e| pg_error(&e))?;
            Ok(u64::try_from(live).unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::idempotency::conformance;
    use crate::backend::postgres::stores::test_support::TestTables;

    const LONG: Duration = Duration::from_secs(60);

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn postgres_idempotency_passes_the_conformance_suite() {
        let db = TestTables::new("idc");
        let s = PostgresIdempotency::new(db.tables());
        conformance::suite(&*s).await;
        assert_eq!(db.count("idempotency").await, 0, "purges left nothing");
        db.drop_schema().await;
    }

    /// Two stores with pools of their own are two hosts: one `Acquired`
    /// among 20 concurrent acquires, and everybody sees the result.
    #[tokio::test]
    async fn exactly_one_acquire_across_hosts() {
        let db = TestTables::new("idh");
        let (a, b) = (
            PostgresIdempotency::new(db.tables()),
            PostgresIdempotency::new(db.tables()),
        );
        conformance::concurrent_acquires(&[&*a, &*b]).await;
        // The same race on a key whose record just expired.
        let t = tid("idem-expired-race");
        assert_eq!(
            a.acquire(&t, "k", Duration::from_millis(50)).await,
            Ok(IdemAcquire::Acquired)
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        let answers = futures_util::future::join_all(
            (0..20).map(|i| if i % 2 == 0 { &a } else { &b }.acquire(&t, "k", LONG)),
        )
        .await;
        let acquired = answers
            .iter()
            .filter(|r| **r == Ok(IdemAcquire::Acquired))
            .count();
        let pending = answers
            .iter()
            .filter(|r| **r == Ok(IdemAcquire::Pending))
            .count();
        assert_eq!((acquired, pending), (1, 19), "{answers:?}");
        assert_eq!(a.purge_tenant(&t).await, Ok(1));
        db.drop_schema().await;
    }

    /// Records live in the host schema, keyed by tenant, with the result
    /// and the database's expiry; the cleanup deletes expired rows only.
    #[tokio::test]
    async fn rows_in_the_host_schema_and_cleanup() {
        let db = TestTables::new("idr");
        let s = PostgresIdempotency::new(db.tables());
        let t = tid("acme");
        let odd = "'; DROP TABLE x; --\u{1F600}";
        assert_eq!(s.acquire(&t, odd, LONG).await, Ok(IdemAcquire::Acquired));
        s.commit(&t, "done", "{\"a\":1}", Duration::from_secs(10))
            .await
            .unwrap();
        s.commit(&t, "old", "1", Duration::from_millis(1))
            .await
            .unwrap();
        let client = db.root().await;
        let rows = client
            .query(
                &format!(
                    "SELECT tenant, key, state, result, \
                       extract(epoch FROM expires_at - now())::float8 \
                     FROM {}.idempotency ORDER BY key",
                    db.schema()
                ),
                &[],
            )
            .await
            .unwrap();
        let seen: Vec<(String, String, String, Option<String>)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(
            seen,
            [
                ("acme".into(), odd.into(), "pending".into(), None),
                (
                    "acme".into(),
                    "done".into(),
                    "done".into(),
                    Some("{\"a\":1}".into())
                ),
                ("acme".into(), "old".into(), "done".into(), Some("1".into())),
            ]
        );
        let ttl: f64 = rows[1].get(4);
        assert!((9.0..=10.5).contains(&ttl), "{ttl}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.cleanup().await, Ok(1), "only the expired row");
        assert_eq!(db.count("idempotency").await, 2);
        // A NUL cannot be stored in Postgres text: refused, nothing stored.
        assert!(matches!(
            s.commit(&t, "nul", "\"a\u{0}b\"", LONG).await,
            Err(BackendError::Invalid(_))
        ));
        assert_eq!(s.purge_tenant(&t).await, Ok(2));
        db.drop_schema().await;
    }

    /// Postgres down: calls fail with `Unavailable` (bounded), not a panic.
    #[tokio::test]
    async fn an_unreachable_database_is_unavailable() {
        let tables = HostTables::new(
            "postgres://root@127.0.0.1:1/test",
            "idu",
            &BTreeMap::new(),
            1,
        )
        .unwrap();
        let s = PostgresIdempotency::new(tables);
        assert!(matches!(
            s.acquire(&tid("acme"), "k", LONG).await,
            Err(BackendError::Unavailable(_))
        ));
    }
}
