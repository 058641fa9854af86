//! The host's own tables on PostgreSQL (job queue, scheduler, tasks,
//! durable replay, idempotency): one schema `{prefix}_host` in every
//! database tenants live in, owned by the host and closed to every tenant
//! role.
//!
//! **Why not in the tenant's schema.** The host connects as a superuser
//! (it creates roles). A table in a schema the tenant role owns could be
//! dropped and re-created by the tenant with a trigger of its own, and that
//! trigger would then run with the host's rights the next time the host
//! wrote to it. So host-owned rows live in the host schema, keyed by the
//! tenant id in their first column, and tenant code never reaches them
//! except through host imports. Deleting a tenant deletes its rows there
//! (each store's `purge_tenant`) and drops its own schema.
//!
//! **Versioned migrations**, per component: [`MIGRATIONS`] lists each
//! component's steps in order; [`HostTables::client`] applies the missing
//! ones once per database and host process, under an advisory lock (safe
//! when a whole fleet starts at once), recording them in
//! `{schema}.migrations (component, version)`. A step is SQL in which
//! `{schema}` stands for the quoted schema name. Steps are never edited
//! once released: a change is a new step.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::sync::OnceCell;

use super::provision::quote_ident;
use super::{SqlFailure, admin_failure, pool_failure};
use crate::catalog::postgres::{build_pool, client_config};
use crate::tenant::TenantId;

/// The migrations of every host component: `(component, steps)`, steps in
/// order (version = index + 1). Append a component or a step; never edit a
/// released one.
pub const MIGRATIONS: &[(&str, &[&str])] = &[
    ("jobs", super::jobs::JOBS_MIGRATIONS),
    ("schedules", super::schedules::SCHEDULES_MIGRATIONS),
    (
        "idempotency",
        crate::backend::idempotency::postgres::MIGRATION,
    ),
    ("tasks", super::tasks::TASKS_MIGRATIONS),
    ("replay", crate::backend::replay::postgres::MIGRATION),
];

/// Longest wait for a connection of the host pool.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on applying the migrations of one database.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);

/// One database's host pool and whether its migrations ran.
struct HostDatabase {
    pool: Pool,
    migrated: OnceCell<()>,
}

/// Connections to the host schema of every tenant database (see the module
/// docs).
pub struct HostTables {
    schema: String,
    shared: HostDatabase,
    isolated: HashMap<TenantId, HostDatabase>,
}

impl HostTables {
    /// The host tables of the database at `url` (where tenants live by
    /// default) and of the isolated tenants' own databases, with at most
    /// `max_connections` connections per database; the schema is
    /// `{prefix}_host`. Connects lazily. Must run inside a tokio runtime.
    pub fn new(
        url: &str,
        prefix: &str,
        tenant_urls: &BTreeMap<TenantId, String>,
        max_connections: usize,
    ) -> Result<Arc<Self>, SqlFailure> {
        let database = |url: &str| -> Result<HostDatabase, SqlFailure> {
            let config = client_config(url)
                .map_err(|e| SqlFailure::unavailable(format!("bad PostgreSQL url: {e}")))?;
            let pool = build_pool(config, max_connections.max(1), CHECKOUT_TIMEOUT)
                .map_err(SqlFailure::unavailable)?;
            Ok(HostDatabase {
                pool,
                migrated: OnceCell::new(),
            })
        };
        let isolated = tenant_urls
            .iter()
            .map(|(id, url)| Ok((id.clone(), database(url)?)))
            .collect::<Result<_, SqlFailure>>()?;
        Ok(Arc::new(Self {
            schema: format!("{prefix}_host"),
            shared: database(url)?,
            isolated,
        }))
    }

    /// The host schema's name, quoted for use in SQL (e.g. `"tenantry_host"`).
    pub fn schema(&self) -> String {
        quote_ident(&self.schema)
    }

    /// A connection to the database `tenant` lives in, with every migration
    /// of [`MIGRATIONS`] applied there. Statements name tables
    /// schema-qualified (`{schema}.jobs`) and filter by tenant.
    pub async fn client(&self, tenant: &TenantId) -> Result<Object, SqlFailure> {
        let db = self.isolated.get(tenant).unwrap_or(&self.shared);
        db.migrated
            .get_or_try_init(|| async {
                tokio::time::timeout(MIGRATE_TIMEOUT, self.migrate(&db.pool))
                    .await
                    .map_err(|_| SqlFailure::unavailable("host table migrations timed out"))?
            })
            .await?;
        db.pool.get().await.map_err(|e| pool_failure(&e))
    }

    /// A connection to one database of [`HostTables::databases`] (`None`:
    /// the shared one), migrated as by [`HostTables::client`], for sweeps
    /// over every database.
    pub async fn database_client(&self, db: Option<&TenantId>) -> Result<Object, SqlFailure> {
        match db {
            Some(tenant) => self.client(tenant).await,
            None => {
                let db = &self.shared;
                db.migrated
                    .get_or_try_init(|| async {
                        tokio::time::timeout(MIGRATE_TIMEOUT, self.migrate(&db.pool))
                            .await
                            .map_err(|_| {
                                SqlFailure::unavailable("host table migrations timed out")
                            })?
                    })
                    .await?;
                db.pool.get().await.map_err(|e| pool_failure(&e))
            }
        }
    }

    /// Every database of these host tables, with the tenants of its own
    /// (`None`: the shared database), for jobs that sweep all of them.
    pub fn databases(&self) -> Vec<Option<TenantId>> {
        std::iter::once(None)
            .chain(self.isolated.keys().cloned().map(Some))
            .collect()
    }

    /// Apply the missing steps of [`MIGRATIONS`] on `pool`'s database.
    async fn migrate(&self, pool: &Pool) -> Result<(), SqlFailure> {
        let schema = self.schema();
        let mut client = pool.get().await.map_err(|e| pool_failure(&e))?;
        let tx = client.transaction().await.map_err(admin_failure)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('tenantry-host-migrate:' || $1))",
            &[&self.schema],
        )
        .await
        .map_err(admin_failure)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             REVOKE ALL ON SCHEMA {schema} FROM PUBLIC; \
             CREATE TABLE IF NOT EXISTS {schema}.migrations ( \
                 component text NOT NULL, \
                 version integer NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (component, version))"
        ))
        .await
        .map_err(admin_failure)?;
        for (component, steps) in MIGRATIONS {
            let done: i32 = tx
                .query_one(
                    &format!(
                        "SELECT COALESCE(max(version), 0) FROM {schema}.migrations WHERE component = $1"
                    ),
                    &[component],
                )
                .await
                .map_err(admin_failure)?
                .get(0);
            for (index, step) in steps.iter().enumerate() {
                let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
                if version <= done {
                    continue;
                }
                tx.batch_execute(&step.replace("{schema}", &schema))
                    .await
                    .map_err(|e| {
                        let mut f = admin_failure(e);
                        f.message = format!("migration {component} v{version}: {}", f.message);
                        f
                    })?;
                tx.execute(
                    &format!(
                        "INSERT INTO {schema}.migrations (component, version) VALUES ($1, $2)"
                    ),
                    &[component, &version],
                )
                .await
                .map_err(admin_failure)?;
                tracing::info!(component, version, schema = %self.schema, "host table migration applied");
            }
        }
        tx.commit().await.map_err(admin_failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> String {
        std::env::var("TENANTRY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
    }

    /// The migrations table exists after the first client and the schema
    /// is closed to other roles; a second host migrating the same database
    /// at once is fine.
    #[tokio::test]
    async fn migrates_once_and_concurrently() {
        let prefix = format!("htm{}", std::process::id() % 100_000);
        let a = HostTables::new(&url(), &prefix, &BTreeMap::new(), 2).unwrap();
        let b = HostTables::new(&url(), &prefix, &BTreeMap::new(), 2).unwrap();
        let t = TenantId::parse("acme").unwrap();
        let (ca, cb) = tokio::join!(a.client(&t), b.client(&t));
        let client = ca.unwrap();
        drop(cb.unwrap());
        let public: bool = client
            .query_one(
                "SELECT has_schema_privilege('public', $1, 'USAGE')",
                &[&format!("{prefix}_host")],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!public, "the host schema is closed to PUBLIC");
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", a.schema()))
            .await
            .unwrap();
    }
}
