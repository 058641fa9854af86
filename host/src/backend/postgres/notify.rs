//! The tenant side of LISTEN/NOTIFY (see [`crate::notify`] for the bridge):
//! each tenant's outbox table `_tenantry_notify` and trigger function
//! `tenantry_notify()`, both in the tenant's own schema, created and owned
//! by the tenant's role, and the statements that write and claim the
//! outbox. Every statement here runs through [`TenantSql::run`], i.e. on a
//! connection logged in as the tenant: the host never touches a
//! tenant-owned object as a superuser (a tenant could plant a trigger
//! there that would then run with the host's rights).
//!
//! **Why an outbox.** `NOTIFY` needs no privilege: any role of the
//! database may notify any channel, with any payload. So a notification
//! carries nothing the host trusts (its payload is empty): it only makes
//! the host look at the outbox of the tenant whose channel it names, as
//! that tenant. A forged `NOTIFY` on another tenant's channel finds that
//! tenant's outbox empty, or delivers that tenant's own rows a moment
//! early. The outbox also lifts Postgres's 8000-byte payload limit.
//!
//! **The trigger payload** follows the seeds' trigger (`{table, op,
//! data}` mapped by `parse` to `{topic, event, data}`), already in the
//! published shape: `{"topic": <table name, or the trigger's first
//! argument>, "event": "created" | "updated" | "deleted", "data": <the new
//! row, the old one for a delete>}`, the events the seeds' `crud` store
//! understands.

use super::provision::quote_ident;
use super::{Outcome, SqlErrorKind, SqlFailure, SqlLimits, SqlValue, Statement, TenantSql};
use crate::tenant::TenantId;

/// The outbox table, in each tenant's schema.
pub const OUTBOX: &str = "_tenantry_notify";
/// The trigger function, in each tenant's schema.
pub const FUNCTION: &str = "tenantry_notify";
/// The name of the trigger [`install_trigger`] puts on a table (trigger
/// names are per table).
pub const TRIGGER: &str = "_tenantry_notify";
/// Longest table name (Postgres's identifier limit).
const MAX_TABLE: usize = 63;

/// One claimed outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its id (the outbox's order).
    pub id: i64,
    /// Its payload's size in bytes.
    pub bytes: u64,
    /// The payload, or `None` when it was larger than the claim's cap
    /// (the row is deleted all the same).
    pub payload: Option<String>,
}

/// The channel of `tenant`'s notifications: its schema and role name, an
/// identifier of `[a-z0-9_]` of at most 63 bytes, unique per tenant and
/// tenant prefix.
pub fn channel(sql: &TenantSql, tenant: &TenantId) -> String {
    sql.ident(tenant)
}

/// Whether `table` is a table name [`install_trigger`] accepts: a plain
/// identifier (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes, not `pg_…`),
/// taken exactly as written (so `orders`, as an unquoted
/// `CREATE TABLE orders` stores it).
pub fn valid_table(table: &str) -> bool {
    let b = table.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TABLE
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !table.to_ascii_lowercase().starts_with("pg_")
}

/// The statements creating the outbox and the trigger function of the
/// tenant whose schema and channel is `ident` (idempotent; serialised by
/// an advisory lock, so two hosts may run them at once).
fn outbox_statements(ident: &str) -> Vec<Statement> {
    let schema = quote_ident(ident);
    // `ident` is `[a-z0-9_]`: safe inside a literal.
    let function = format!(
        "CREATE OR REPLACE FUNCTION {schema}.{FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $tenantry$
BEGIN
  INSERT INTO {schema}.{OUTBOX} (channel, payload) VALUES ('{ident}', json_build_object(
    'topic', COALESCE(TG_ARGV[0], TG_TABLE_NAME),
    'event', CASE TG_OP WHEN 'INSERT' THEN 'created' WHEN 'UPDATE' THEN 'updated' ELSE 'deleted' END,
    'data', CASE TG_OP WHEN 'DELETE' THEN row_to_json(OLD) ELSE row_to_json(NEW) END
  )::text);
  PERFORM pg_notify('{ident}', '');
  RETURN NULL;
END
$tenantry$"
    );
    vec![
        Statement {
            sql: "SELECT pg_advisory_xact_lock(hashtext($1))::text AS locked".into(),
            params: vec![SqlValue::Text(format!("tenantry-notify:{ident}"))],
        },
        Statement {
            sql: format!(
                "CREATE TABLE IF NOT EXISTS {schema}.{OUTBOX} (\
                 id bigserial PRIMARY KEY, \
                 channel text NOT NULL, \
                 payload text NOT NULL, \
                 created_at timestamptz NOT NULL DEFAULT now())"
            ),
            params: vec![],
        },
        Statement {
            sql: function,
            params: vec![],
        },
    ]
}

/// Create `tenant`'s outbox and trigger function if missing, and (with a
/// `table`) put the trigger on that table of its schema:
/// `AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW EXECUTE FUNCTION
/// tenantry_notify()`. Runs as the tenant, in one transaction.
pub async fn install_trigger(
    sql: &TenantSql,
    tenant: &TenantId,
    limits: &SqlLimits,
    table: Option<&str>,
) -> Result<(), SqlFailure> {
    let ident = sql.ident(tenant);
    let mut statements = outbox_statements(&ident);
    if let Some(table) = table {
        if !valid_table(table) {
            return Err(SqlFailure {
                kind: SqlErrorKind::Invalid,
                sqlstate: None,
                message: format!(
                    "{table:?} is not a table name ([A-Za-z_][A-Za-z0-9_]*, ≤ 63 bytes)"
                ),
                statement: None,
            });
        }
        let schema = quote_ident(&ident);
        statements.push(Statement {
            sql: format!(
                "CREATE OR REPLACE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {schema}.{} \
                 FOR EACH ROW EXECUTE FUNCTION {schema}.{FUNCTION}()",
                quote_ident(table)
            ),
            params: vec![],
        });
    }
    sql.run(tenant, limits, statements, true).await.map(|_| ())
}

/// Add `payload` to `tenant`'s outbox and notify its channel (creating
/// the outbox first if it is missing). Runs as the tenant.
pub async fn send(
    sql: &TenantSql,
    tenant: &TenantId,
    limits: &SqlLimits,
    payload: &str,
) -> Result<(), SqlFailure> {
    let ident = sql.ident(tenant);
    let statements = || {
        vec![
            Statement {
                sql: format!(
                    "INSERT INTO {}.{OUTBOX} (channel, payload) VALUES ($1, $2)",
                    quote_ident(&ident)
                ),
                params: vec![
                    SqlValue::Text(ident.clone()),
                    SqlValue::Text(payload.to_owned()),
                ],
            },
            Statement {
                sql: "SELECT pg_notify($1, '')::text AS notified".into(),
                params: vec![SqlValue::Text(ident.clone())],
            },
        ]
    };
    match sql.run(tenant, limits, statements(), true).await {
        // 42P01: undefined table (or the schema's outbox was dropped).
        Err(f) if f.sqlstate.as_deref() == Some("42P01") => {
            install_trigger(sql, tenant, limits, None).await?;
            sql.run(tenant, limits, statements(), true)
                .await
                .map(|_| ())
        }
        r => r.map(|_| ()),
    }
}

/// Claim (delete and return) up to `limit` of `tenant`'s oldest outbox
/// rows, skipping rows another host is claiming right now (`FOR UPDATE
/// SKIP LOCKED`: each row goes to exactly one host). Payloads over
/// `max_bytes` come back as `None`. Runs as the tenant. No outbox yet: no
/// rows.
pub async fn claim(
    sql: &TenantSql,
    tenant: &TenantId,
    limits: &SqlLimits,
    limit: u32,
    max_bytes: u64,
) -> Result<Vec<OutboxRow>, SqlFailure> {
    let table = format!("{}.{OUTBOX}", quote_ident(&sql.ident(tenant)));
    let statement = Statement {
        sql: format!(
            "DELETE FROM {table} WHERE id IN (\
             SELECT id FROM {table} ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $1::int8) \
             RETURNING id, octet_length(payload)::int8 AS bytes, \
             CASE WHEN octet_length(payload) <= $2::int8 THEN payload END AS payload"
        ),
        params: vec![
            SqlValue::Int(i64::from(limit)),
            SqlValue::Int(i64::try_from(max_bytes).unwrap_or(i64::MAX)),
        ],
    };
    let outcomes = match sql.run(tenant, limits, vec![statement], false).await {
        Err(f) if f.sqlstate.as_deref() == Some("42P01") => return Ok(Vec::new()),
        r => r?,
    };
    let mut rows = rows_of(outcomes)?;
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// Delete `tenant`'s oldest outbox row without reading its payload (one
/// that is too large for even a one-row claim); its size, if there was one.
pub async fn discard_oldest(
    sql: &TenantSql,
    tenant: &TenantId,
    limits: &SqlLimits,
) -> Result<Option<u64>, SqlFailure> {
    let table = format!("{}.{OUTBOX}", quote_ident(&sql.ident(tenant)));
    let statement = Statement {
        sql: format!(
            "DELETE FROM {table} WHERE id IN (\
             SELECT id FROM {table} ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) \
             RETURNING id, octet_length(payload)::int8 AS bytes, NULL::text AS payload"
        ),
        params: vec![],
    };
    let rows = rows_of(sql.run(tenant, limits, vec![statement], false).await?)?;
    Ok(rows.first().map(|r| r.bytes))
}

/// The rows of a claim's outcome.
fn rows_of(outcomes: Vec<Outcome>) -> Result<Vec<OutboxRow>, SqlFailure> {
    #[derive(serde::Deserialize)]
    struct Row {
        id: i64,
        bytes: Option<i64>,
        payload: Option<String>,
    }
    let Some(outcome) = outcomes.into_iter().next() else {
        return Ok(Vec::new());
    };
    let rows: Vec<Row> = serde_json::from_str(&outcome.rows).map_err(|e| SqlFailure {
        kind: SqlErrorKind::Invalid,
        sqlstate: None,
        message: format!("the outbox rows have an unexpected shape: {e}"),
        statement: None,
    })?;
    Ok(rows
        .into_iter()
        .map(|r| OutboxRow {
            id: r.id,
            bytes: u64::try_from(r.bytes.unwrap_or(0)).unwrap_or(0),
            payload: r.payload,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for ok in ["orders", "Orders", "_x", "a1_b2"] {
            assert!(valid_table(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a.b",
            "a\"b",
            "pg_class",
            "PG_x",
            &"x".repeat(64),
        ] {
            assert!(!valid_table(bad), "{bad}");
        }
    }
}
