//! `tenantry:plugin/notify`: the calling tenant's notify outbox and
//! trigger ([`crate::backend::postgres::notify`]), as its own role. Without
//! `[postgres]` every call fails `unavailable`.

use serde::de::IgnoredAny;

use crate::backend::postgres::notify as outbox;
use crate::backend::postgres::{SqlErrorKind, SqlFailure, SqlLimits};
use crate::runtime::HostState;
use crate::runtime::wit::notify::Host;
use crate::runtime::wit::types::HostError;

/// Largest payload `send` accepts (the bridge's default
/// `max_envelope_bytes`).
pub const MAX_SEND_BYTES: usize = 1 << 20;

fn host_error(f: SqlFailure) -> HostError {
    match f.kind {
        SqlErrorKind::AccessDenied => HostError::AccessDenied,
        SqlErrorKind::Invalid => HostError::Invalid,
        SqlErrorKind::Timeout => HostError::Timeout,
        SqlErrorKind::TooLarge => HostError::TooLarge,
        SqlErrorKind::Unavailable => HostError::Unavailable,
        SqlErrorKind::Other => HostError::Other(f.message),
    }
}

impl HostState {
    /// Run `work` against the calling tenant's SQL (CPU time not charged;
    /// SQL time counted as for the `sql` import).
    async fn notify_sql<F>(
        &mut self,
        work: impl FnOnce(
            std::sync::Arc<crate::backend::postgres::TenantSql>,
            crate::tenant::TenantId,
            SqlLimits,
        ) -> F,
    ) -> Result<(), HostError>
    where
        F: Future<Output = Result<(), SqlFailure>>,
    {
        let s = &self.scope;
        let Some(sql) = s.backends.sql.clone() else {
            return Err(HostError::Unavailable);
        };
        let limits = SqlLimits::of(&s.quota.plan());
        let tenant = s.tenant.clone();
        let started = std::time::Instant::now();
        let r = self.cpu.wait(work(sql, tenant.clone(), limits)).await;
        let took = started.elapsed();
        self.scope.quota.usage.sql(took);
        crate::metrics::sql(&tenant, took, r.is_ok());
        if let Err(e) = &r {
            tracing::debug!(tenant = %tenant, sqlstate = ?e.sqlstate, error = %e, "plugin notify call failed");
        }
        r.map_err(host_error)
    }
}

impl Host for HostState {
    async fn install_trigger(&mut self, table: String) -> Result<(), HostError> {
        if !outbox::valid_table(&table) {
            return Err(HostError::Invalid);
        }
        self.notify_sql(|sql, tenant, limits| async move {
            outbox::install_trigger(&sql, &tenant, &limits, Some(&table)).await
        })
        .await
    }

    async fn send(&mut self, payload: String) -> Result<(), HostError> {
        if payload.len() > MAX_SEND_BYTES {
            return Err(HostError::TooLarge);
        }
        if serde_json::from_str::<IgnoredAny>(&payload).is_err() {
            return Err(HostError::Invalid);
        }
        self.notify_sql(|sql, tenant, limits| async move {
            outbox::send(&sql, &tenant, &limits, &payload).await
        })
        .await
    }
}
