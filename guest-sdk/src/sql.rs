//! SQL on the tenant's own PostgreSQL schema (hosts with `[postgres]`).
//!
//! Statements run as the tenant's own database role, whose search path is
//! the tenant's schema: `CREATE TABLE notes (...)` creates it there, and
//! nothing of another tenant can be named. Values always travel as bind
//! parameters (`$1`, `$2`, ...), never inside the SQL text. Each call is
//! its own unit: [`transaction`] runs several statements atomically within
//! one call, and nothing (an open `BEGIN`, a `SET`) outlives a call. The
//! plan bounds each call's run time, rows, result bytes and statement size.
//!
//! Rows come back as JSON objects keyed by column name and are decoded
//! into any `Deserialize` type: integers and floats as numbers, `numeric`
//! as a string (exact), `json`/`jsonb` as the document, timestamps as RFC
//! 3339 strings, `bytea` as `\x…` hex text, `NULL` as `null`. Cast other
//! types in the SQL (`interval_col::text`).
//!
//! ```no_run
//! use serde::Deserialize;
//! use tenantry_sdk::{LiveError, sql};
//!
//! #[derive(Deserialize)]
//! struct Note {
//!     id: i64,
//!     body: String,
//! }
//!
//! fn notes(author: &str) -> Result<Vec<Note>, LiveError> {
//!     sql::execute(
//!         "CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, author text, body text)",
//!         &[],
//!     )?;
//!     sql::execute(
//!         "INSERT INTO notes (author, body) VALUES ($1, $2)",
//!         &[author.into(), "hello".into()],
//!     )?;
//!     Ok(sql::query("SELECT id, body FROM notes WHERE author = $1 ORDER BY id", &[author.into()])?)
//! }
//! ```
//!
//! In native unit tests there is no database: set what the stand-in
//! answers with [`crate::testing::set_sql`] and read what ran with
//! [`crate::testing::take_sql`]. Without a handler, every call fails
//! `unavailable`, as on a host without `[postgres]`.

use serde::de::DeserializeOwned;

use crate::error::{Error, LiveError};

/// One bind parameter. Make them with `.into()` from Rust values:
/// `bool`, integers up to `i64` (and `u32`), `f32`/`f64`, `&str`/`String`,
/// `Vec<u8>`/`&[u8]` (bytes), [`serde_json::Value`] (JSON), and `Option`
/// of any of these (`None` is `NULL`).
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double-precision float.
    Float(f64),
    /// Text.
    Text(String),
    /// Bytes (`bytea`).
    Bytes(Vec<u8>),
    /// A JSON document as text (for `json` / `jsonb` columns).
    Json(String),
}

macro_rules! from_int {
    ($($t:ty),*) => { $(
        impl From<$t> for SqlValue {
            fn from(v: $t) -> Self {
                SqlValue::Int(i64::from(v))
            }
        }
    )* };
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<bool> for SqlValue {
    fn from(v: bool) -> Self {
        SqlValue::Bool(v)
    }
}

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Float(v)
    }
}

impl From<f32> for SqlValue {
    fn from(v: f32) -> Self {
        SqlValue::Float(f64::from(v))
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<&String> for SqlValue {
    fn from(v: &String) -> Self {
        SqlValue::Text(v.clone())
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        SqlValue::Bytes(v)
    }
}

impl From<&[u8]> for SqlValue {
    fn from(v: &[u8]) -> Self {
        SqlValue::Bytes(v.to_vec())
    }
}

impl From<serde_json::Value> for SqlValue {
    fn from(v: serde_json::Value) -> Self {
        SqlValue::Json(v.to_string())
    }
}

impl From<&serde_json::Value> for SqlValue {
    fn from(v: &serde_json::Value) -> Self {
        SqlValue::Json(v.to_string())
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// One statement of a [`transaction`].
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL text (one statement, parameters as `$1`, `$2`, ...).
    pub sql: String,
    /// Its parameters.
    pub params: Vec<SqlValue>,
}

impl Statement {
    /// `sql` with `params`.
    pub fn new(sql: impl Into<String>, params: &[SqlValue]) -> Self {
        Self {
            sql: sql.into(),
            params: params.to_vec(),
        }
    }
}

/// What one statement of a [`transaction`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Its rows: a JSON array of objects (empty for none).
    pub rows: serde_json::Value,
    /// The rows it affected (or returned).
    pub affected: u64,
}

impl Outcome {
    /// The rows decoded as `T`s.
    pub fn rows_as<T: DeserializeOwned>(&self) -> Result<Vec<T>, SqlError> {
        serde_json::from_value(self.rows.clone()).map_err(decode_error)
    }
}

/// A failed SQL call: its class (the host error, e.g.
/// [`Error::AccessDenied`] for SQLSTATE 42501, [`Error::Timeout`],
/// [`Error::TooLarge`]), Postgres's SQLSTATE and message, and for a
/// transaction the index of the failing statement.
///
/// `?` turns it into a [`LiveError`] with the class's standard code and a
/// generic message: Postgres's message is for the plugin (and its logs),
/// not shown to clients unless the plugin does so itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    /// The class of failure.
    pub kind: Error,
    /// The five-character SQLSTATE, when Postgres reported the error.
    pub sqlstate: Option<String>,
    /// Postgres's own message (e.g. `permission denied for schema …`), or the host's.
    pub message: String,
    /// In a transaction, the 0-based index of the statement that failed.
    pub statement: Option<u32>,
}

impl From<SqlError> for LiveError {
    fn from(e: SqlError) -> Self {
        LiveError::from(e.kind)
    }
}

fn decode_error(e: serde_json::Error) -> SqlError {
    SqlError {
        kind: Error::Decode(e.to_string()),
        sqlstate: None,
        message: format!("the rows do not fit the requested type: {e}"),
        statement: None,
    }
}

fn rows_of(text: &str) -> Result<serde_json::Value, SqlError> {
    serde_json::from_str(text).map_err(decode_error)
}

/// Run `statement` with `params`; its rows decoded as `T`s (use
/// [`serde_json::Value`] for untyped rows).
pub fn query<T: DeserializeOwned>(
    statement: &str,
    params: &[SqlValue],
) -> Result<Vec<T>, SqlError> {
    let rows = imp::query(statement, params)?;
    serde_json::from_str(&rows).map_err(decode_error)
}

/// Run `statement` with `params`; the number of rows it affected.
pub fn execute(statement: &str, params: &[SqlValue]) -> Result<u64, SqlError> {
    imp::execute(statement, params)
}

/// Run `statements` in order in one transaction: all commit, or on the
/// first failure none does (the error names the statement).
pub fn transaction(statements: &[Statement]) -> Result<Vec<Outcome>, SqlError> {
    imp::transaction(statements)?
        .into_iter()
        .map(|(rows, affected)| {
            Ok(Outcome {
                rows: rows_of(&rows)?,
                affected,
            })
        })
        .collect()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{SqlError, SqlValue, Statement};
    use crate::bindings::tenantry::plugin::sql as wit;
    use crate::bindings::tenantry::plugin::types::HostError;
    use crate::error::Error;

    fn value(v: &SqlValue) -> wit::SqlValue {
        match v {
            SqlValue::Null => wit::SqlValue::Null,
            SqlValue::Bool(b) => wit::SqlValue::Boolean(*b),
            SqlValue::Int(i) => wit::SqlValue::Int(*i),
            SqlValue::Float(f) => wit::SqlValue::Float(*f),
            SqlValue::Text(s) => wit::SqlValue::Text(s.clone()),
            SqlValue::Bytes(b) => wit::SqlValue::Bytes(b.clone()),
            SqlValue::Json(s) => wit::SqlValue::Json(s.clone()),
        }
    }

    fn params(p: &[SqlValue]) -> Vec<wit::SqlValue> {
        p.iter().map(value).collect()
    }

    fn convert(e: wit::SqlError) -> SqlError {
        let kind = match e.kind {
            HostError::AccessDenied => Error::AccessDenied,
            HostError::QuotaExceeded => Error::QuotaExceeded,
            HostError::Timeout => Error::Timeout,
            HostError::Unavailable => Error::Unavailable,
            HostError::TooLarge => Error::TooLarge,
            HostError::Invalid => Error::Invalid,
            HostError::RateLimited(retry_after_ms) => Error::RateLimited { retry_after_ms },
            HostError::Other(message) => Error::Other(message),
        };
        SqlError {
            kind,
            sqlstate: e.sqlstate,
            message: e.message,
            statement: e.statement,
        }
    }

    pub fn query(statement: &str, p: &[SqlValue]) -> Result<String, SqlError> {
        wit::query(statement, &params(p)).map_err(convert)
    }

    pub fn execute(statement: &str, p: &[SqlValue]) -> Result<u64, SqlError> {
        wit::execute(statement, &params(p)).map_err(convert)
    }

    pub fn transaction(statements: &[Statement]) -> Result<Vec<(String, u64)>, SqlError> {
        let statements: Vec<wit::SqlStatement> = statements
            .iter()
            .map(|s| wit::SqlStatement {
                statement: s.sql.clone(),
                params: params(&s.params),
            })
            .collect();
        Ok(wit::transaction(&statements)
            .map_err(convert)?
            .into_iter()
            .map(|o| (o.rows, o.affected))
            .collect())
    }
}

/// The native stand-in: a handler set by the test answers each statement.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use std::cell::RefCell;

    use super::{Outcome, SqlError, SqlValue, Statement};
    use crate::error::Error;

    /// What answers one statement in native tests.
    pub type Handler = Box<dyn FnMut(&str, &[SqlValue]) -> Result<Outcome, SqlError>>;

    #[derive(Default)]
    pub struct StandIn {
        pub handler: Option<Handler>,
        pub ran: Vec<(String, Vec<SqlValue>)>,
    }

    thread_local! {
        pub static SQL: RefCell<StandIn> = RefCell::new(StandIn::default());
    }

    fn one(statement: &str, params: &[SqlValue]) -> Result<Outcome, SqlError> {
        SQL.with_borrow_mut(|s| {
            s.ran.push((statement.to_owned(), params.to_vec()));
            match &mut s.handler {
                Some(h) => h(statement, params),
                None => Err(SqlError {
                    kind: Error::Unavailable,
                    sqlstate: None,
                    message: "SQL is not configured on this host".into(),
                    statement: None,
                }),
            }
        })
    }

    pub fn query(statement: &str, params: &[SqlValue]) -> Result<String, SqlError> {
        Ok(one(statement, params)?.rows.to_string())
    }

    pub fn execute(statement: &str, params: &[SqlValue]) -> Result<u64, SqlError> {
        Ok(one(statement, params)?.affected)
    }

    pub fn transaction(statements: &[Statement]) -> Result<Vec<(String, u64)>, SqlError> {
        statements
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let o = one(&s.sql, &s.params).map_err(|mut e| {
                    e.statement = u32::try_from(i).ok();
                    e
                })?;
                Ok((o.rows.to_string(), o.affected))
            })
            .collect()
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing;
    use serde_json::json;

    #[test]
    fn values_convert_from_rust_types() {
        assert_eq!(SqlValue::from(5u32), SqlValue::Int(5));
        assert_eq!(SqlValue::from("a"), SqlValue::Text("a".into()));
        assert_eq!(SqlValue::from(None::<i64>), SqlValue::Null);
        assert_eq!(SqlValue::from(Some(1.5)), SqlValue::Float(1.5));
        assert_eq!(
            SqlValue::from(json!({"a": 1})),
            SqlValue::Json(r#"{"a":1}"#.into())
        );
        assert_eq!(SqlValue::from(&b"\x00"[..]), SqlValue::Bytes(vec![0]));
    }

    #[test]
    fn the_stand_in_answers_with_the_handler_and_records_statements() {
        testing::reset();
        let e = execute("SELECT 1", &[]).unwrap_err();
        assert_eq!(
            e.kind,
            Error::Unavailable,
            "no handler: as a host without SQL"
        );
        testing::set_sql(|sql, params| {
            if sql.starts_with("SELECT") {
                Ok(Outcome {
                    rows: json!([{"id": 1, "body": params[0]
                        .clone()
                        .eq(&SqlValue::Text("x".into()))
                        .then_some("x")}]),
                    affected: 1,
                })
            } else {
                Err(SqlError {
                    kind: Error::AccessDenied,
                    sqlstate: Some("42501".into()),
                    message: "permission denied".into(),
                    statement: None,
                })
            }
        });
        #[derive(serde::Deserialize)]
        struct Row {
            id: i64,
            body: String,
        }
        let rows: Vec<Row> = query("SELECT id, body FROM t WHERE b = $1", &["x".into()]).unwrap();
        assert_eq!((rows[0].id, rows[0].body.as_str()), (1, "x"));
        let e = transaction(&[
            Statement::new("SELECT 1", &["x".into()]),
            Statement::new("DROP TABLE t", &[]),
        ])
        .unwrap_err();
        assert_eq!(
            (e.kind.clone(), e.statement),
            (Error::AccessDenied, Some(1))
        );
        assert_eq!(LiveError::from(e).code, "FORBIDDEN");
        let ran = testing::take_sql();
        assert_eq!(ran.len(), 4);
        assert_eq!(ran[3].0, "DROP TABLE t");
    }
}
