//! Helpers shared by the host's stores on its own Postgres tables
//! ([`super::host_tables`]): the idempotency records and the durable replay
//! buffers. Every statement is bounded by [`STATEMENT_TIMEOUT`] and its
//! failure mapped onto a [`BackendError`]; [`spawn_cleanup`] runs a store's
//! periodic cleanup until the store is dropped.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{SqlErrorKind, SqlFailure, pg_failure};
use crate::backend::BackendError;

/// Longest a store's statement (connection checkout included) may take;
/// then it fails with `Timeout`.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A host-table failure as a backend error.
pub fn backend_error(f: SqlFailure) -> BackendError {
    match f.kind {
        SqlErrorKind::Timeout => BackendError::Timeout,
        SqlErrorKind::Invalid => BackendError::Invalid(f.message),
        SqlErrorKind::TooLarge => BackendError::TooLarge(f.message),
        SqlErrorKind::Unavailable => BackendError::Unavailable(f.message),
        SqlErrorKind::AccessDenied | SqlErrorKind::Other => {
            BackendError::Other(format!("Postgres: {}", f.message))
        }
    }
}

/// A Postgres error of a store's statement as a backend error.
pub fn pg_error(e: &tokio_postgres::Error) -> BackendError {
    backend_error(pg_failure(e))
}

/// `work` bounded by [`STATEMENT_TIMEOUT`] (`Timeout` past it).
pub async fn bounded<T>(
    work: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    tokio::time::timeout(STATEMENT_TIMEOUT, work)
        .await
        .unwrap_or(Err(BackendError::Timeout))
}

/// Call `cleanup` on the store every `every` (the first time after one
/// period) until the store is dropped; failures are logged as `what`.
pub fn spawn_cleanup<S, F, Fut>(store: &Arc<S>, every: Duration, what: &'static str, cleanup: F)
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64, BackendError>> + Send,
{
    let weak: Weak<S> = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else { return };
            match cleanup(store).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "{what}: expired rows removed"),
                Err(e) => tracing::warn!(error = %e, "{what}: cleanup failed"),
            }
        }
    });
}

/// Host tables of a test's own (a schema prefix nobody else uses, dropped
/// at the end) on the test Postgres.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::super::host_tables::HostTables;
    use super::super::provision::quote_ident;

    /// The test Postgres (`TENANTRY_TEST_POSTGRES_URL` or the local one).
    pub(crate) fn url() -> String {
        std::env::var("TENANTRY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
    }

    /// A test's schema prefix and the host tables made on it.
    pub(crate) struct TestTables {
        prefix: String,
    }

    impl TestTables {
        /// A fresh prefix starting with `tag` (a few lower-case letters).
        pub(crate) fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            Self {
                prefix: format!("{tag}{:x}{:x}", std::process::id() % 0xfff, nanos),
            }
        }

        /// New host tables (a new pool: another host) on the prefix.
        pub(crate) fn tables(&self) -> Arc<HostTables> {
            HostTables::new(&url(), &self.prefix, &BTreeMap::new(), 8).unwrap()
        }

        /// The quoted host schema.
        pub(crate) fn schema(&self) -> String {
            quote_ident(&format!("{}_host", self.prefix))
        }

        /// A superuser connection.
        pub(crate) async fn root(&self) -> tokio_postgres::Client {
            let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
        }

        /// Rows of `table` in the host schema.
        pub(crate) async fn count(&self, table: &str) -> i64 {
            self.root()
                .await
                .query_one(
                    &format!("SELECT count(*) FROM {}.{table}", self.schema()),
                    &[],
                )
                .await
                .unwrap()
                .get(0)
        }

        /// Drop the schema (call at the end of the test).
        pub(crate) async fn drop_schema(&self) {
            self.root()
                .await
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema()))
                .await
                .unwrap();
        }
    }
}
