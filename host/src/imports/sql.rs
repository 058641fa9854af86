//! `tenantry:plugin/sql`: SQL on the calling tenant's own schema, as its
//! own role, under its plan's SQL limits ([`crate::backend::postgres`]).
//! Without `[postgres]` every call fails `unavailable`.

use crate::backend::postgres::{Outcome, SqlErrorKind, SqlFailure, SqlLimits, SqlValue, Statement};
use crate::runtime::HostState;
use crate::runtime::wit::sql::{self as wit, Host};
use crate::runtime::wit::types::HostError;

impl From<wit::SqlValue> for SqlValue {
    fn from(v: wit::SqlValue) -> Self {
        match v {
            wit::SqlValue::Null => SqlValue::Null,
            wit::SqlValue::Boolean(b) => SqlValue::Boolean(b),
            wit::SqlValue::Int(i) => SqlValue::Int(i),
            wit::SqlValue::Float(f) => SqlValue::Float(f),
            wit::SqlValue::Text(s) => SqlValue::Text(s),
            wit::SqlValue::Bytes(b) => SqlValue::Bytes(b),
            wit::SqlValue::Json(s) => SqlValue::Json(s),
        }
    }
}

impl From<SqlFailure> for wit::SqlError {
    fn from(f: SqlFailure) -> Self {
        let kind = match f.kind {
            SqlErrorKind::AccessDenied => HostError::AccessDenied,
            SqlErrorKind::Invalid => HostError::Invalid,
            SqlErrorKind::Timeout => HostError::Timeout,
            SqlErrorKind::TooLarge => HostError::TooLarge,
            SqlErrorKind::Unavailable => HostError::Unavailable,
            SqlErrorKind::Other => HostError::Other(f.message.clone()),
        };
        wit::SqlError {
            kind,
            sqlstate: f.sqlstate,
            message: f.message,
            statement: f.statement,
        }
    }
}

impl HostState {
    /// Run `statements` for the calling tenant (CPU time not charged).
    async fn sql_run(
        &mut self,
        statements: Vec<Statement>,
        atomic: bool,
    ) -> Result<Vec<Outcome>, wit::SqlError> {
        let s = &self.scope;
        let Some(sql) = s.backends.sql.clone() else {
            return Err(SqlFailure::unavailable("SQL is not configured on this host").into());
        };
        let limits = SqlLimits::of(&s.quota.plan());
        let tenant = s.tenant.clone();
        let started = std::time::Instant::now();
        let r = self
            .cpu
            .wait(sql.run(&tenant, &limits, statements, atomic))
            .await;
        let took = started.elapsed();
        s.quota.usage.sql(took);
        crate::metrics::sql(&tenant, took, r.is_ok());
        if let Err(e) = &r {
            tracing::debug!(tenant = %tenant, sqlstate = ?e.sqlstate, error = %e, "plugin SQL failed");
        }
        r.map_err(wit::SqlError::from)
    }
}

fn statement(sql: String, params: Vec<wit::SqlValue>) -> Statement {
    Statement {
        sql,
        params: params.into_iter().map(SqlValue::from).collect(),
    }
}

impl Host for HostState {
    async fn query(
        &mut self,
        sql: String,
        params: Vec<wit::SqlValue>,
    ) -> Result<String, wit::SqlError> {
        let out = self.sql_run(vec![statement(sql, params)], false).await?;
        Ok(out
            .into_iter()
            .next()
            .map_or_else(|| "[]".to_owned(), |o| o.rows))
    }

    async fn execute(
        &mut self,
        sql: String,
        params: Vec<wit::SqlValue>,
    ) -> Result<u64, wit::SqlError> {
        let out = self.sql_run(vec![statement(sql, params)], false).await?;
        Ok(out.into_iter().next().map_or(0, |o| o.affected))
    }

    async fn transaction(
        &mut self,
        statements: Vec<wit::SqlStatement>,
    ) -> Result<Vec<wit::SqlOutcome>, wit::SqlError> {
        let statements = statements
            .into_iter()
            .map(|s| statement(s.statement, s.params))
            .collect();
        let out = self.sql_run(statements, true).await?;
        Ok(out
            .into_iter()
            .map(|o| wit::SqlOutcome {
                rows: o.rows,
                affected: o.affected,
            })
            .collect())
    }
}
