//! `orders`: the durable path end to end — a table of the tenant's own
//! Postgres schema, a lock and an idempotency slot per order, and the
//! host's LISTEN/NOTIFY bridge publishing each new row. Needs a host with
//! `[postgres]` (every call fails `SERVICE_UNAVAILABLE` otherwise).
//!
//! * On first use it creates `orders (order_id text primary key, item
//!   text, qty int, created_at timestamptz default now())` and puts the
//!   host's notify trigger on it ([`notify::install_trigger`]).
//! * `orders/place` `[order_id, item, qty]`: holds the lock
//!   `order:{order_id}` and the idempotency slot `orders/place:{order_id}`,
//!   inserts the row and returns the order `{order_id, item, qty,
//!   created_at}`. Repeating the call returns the same order and inserts
//!   nothing (the slot keeps the result for a day; after that the existing
//!   row is returned). A concurrent repeat waits for the lock.
//!   `order_id` is 1-100 characters, `item` 1-200, `qty` 1-1000000
//!   (`VALIDATION` otherwise).
//! * `orders/list` `[]`: every order, oldest first.
//! * The trigger notifies every change of `orders`; the bridge publishes
//!   an insert as event `created` with the row as data on topic `orders`
//!   (updates as `updated`, deletes as `deleted`) — also for rows written
//!   by any other client of the tenant's schema. `on_notify` keeps the
//!   payloads of topic `orders` as they are and drops any other.
//! * Subscribe gate: only topic `orders`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantry_sdk::notify::Publication;
use tenantry_sdk::{
    Ctx, LiveError, Plugin, Router, ValidationIssue, export_plugin, idempotency, lock, notify, sql,
};

/// The topic new orders are published on.
pub const TOPIC: &str = "orders";
/// How long `orders/place` keeps its result for repeats.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long one placement may hold its order's lock.
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a placement waits for a concurrent one of the same order.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// KV key set once the table and trigger exist (skips the DDL afterwards).
const SCHEMA_KEY: &str = "orders:schema:v1";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS orders (\
     order_id text PRIMARY KEY, \
     item text NOT NULL, \
     qty int NOT NULL, \
     created_at timestamptz NOT NULL DEFAULT now())";

/// One order, as returned and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// The caller's id of the order.
    pub order_id: String,
    /// What was ordered.
    pub item: String,
    /// How many.
    pub qty: i64,
    /// When it was stored (RFC 3339, UTC).
    pub created_at: String,
}

/// Create the table and its trigger, once per tenant.
fn ensure_schema() -> Result<(), LiveError> {
    if tenantry_sdk::kv().get::<bool>(SCHEMA_KEY)? == Some(true) {
        return Ok(());
    }
    sql::execute(CREATE_TABLE, &[])?;
    notify::install_trigger("orders")?;
    tenantry_sdk::kv().set(SCHEMA_KEY, &true, None)?;
    Ok(())
}

fn check(args: &[(bool, &str, &str)]) -> Result<(), LiveError> {
    let issues: Vec<ValidationIssue> = args
        .iter()
        .filter(|(ok, _, _)| !ok)
        .map(|(_, path, message)| ValidationIssue::new(*path, *message))
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(LiveError::validation(issues))
    }
}

const COLUMNS: &str = "order_id, item, qty, created_at";

/// `orders/place` `[order_id, item, qty]`.
fn place(_ctx: &Ctx, (order_id, item, qty): (String, String, i64)) -> Result<Order, LiveError> {
    let chars = |s: &str| s.chars().count();
    check(&[
        (
            (1..=100).contains(&chars(&order_id)),
            "args[0]",
            "order_id must be 1-100 characters",
        ),
        (
            (1..=200).contains(&chars(&item)),
            "args[1]",
            "item must be 1-200 characters",
        ),
        (
            (1..=1_000_000).contains(&qty),
            "args[2]",
            "qty must be 1-1000000",
        ),
    ])?;
    ensure_schema()?;
    lock::with_lock(
        &format!("order:{order_id}"),
        LOCK_TTL,
        LOCK_WAIT,
        |_token| {
            idempotency::once(&format!("orders/place:{order_id}"), IDEMPOTENCY_TTL, || {
                let inserted: Vec<Order> = sql::query(
                    &format!(
                        "INSERT INTO orders (order_id, item, qty) VALUES ($1, $2, $3) \
                         ON CONFLICT (order_id) DO NOTHING RETURNING {COLUMNS}"
                    ),
                    &[(&order_id).into(), (&item).into(), qty.into()],
                )?;
                if let Some(order) = inserted.into_iter().next() {
                    return Ok(order);
                }
                // Placed before, and its slot has expired: the stored order.
                let existing: Vec<Order> = sql::query(
                    &format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1"),
                    &[(&order_id).into()],
                )?;
                existing
                    .into_iter()
                    .next()
                    .ok_or_else(|| LiveError::new("INTERNAL_ERROR", "the order vanished"))
            })
        },
    )
}

/// `orders/list` `[]`.
fn list(_ctx: &Ctx, (): ()) -> Result<Vec<Order>, LiveError> {
    ensure_schema()?;
    Ok(sql::query(
        &format!("SELECT {COLUMNS} FROM orders ORDER BY created_at, order_id"),
        &[],
    )?)
}

/// The orders plugin.
pub struct Orders;

impl Plugin for Orders {
    fn router() -> Router {
        Router::new()
            .live("orders/place", place)
            .live("orders/list", list)
    }

    fn authorize_subscribe(_ctx: &Ctx, topic: &str) -> Result<(), LiveError> {
        if topic == TOPIC {
            Ok(())
        } else {
            Err(LiveError::forbidden(format!(
                "Subscribing to {topic} is not allowed"
            )))
        }
    }

    const NOTIFY_EVENTS: bool = true;

    fn on_notify(
        payload: &tenantry_sdk::serde_json::Value,
    ) -> Result<Option<Vec<Publication>>, LiveError> {
        if payload.get("topic").and_then(|t| t.as_str()) == Some(TOPIC) {
            // As it is: {"topic":"orders","event":"created","data":row}.
            Ok(None)
        } else {
            Ok(Some(Vec::new()))
        }
    }
}

export_plugin!(Orders);

#[cfg(test)]
mod tests {
    use super::*;
    use tenantry_sdk::serde_json::{self, json};
    use tenantry_sdk::sql::{Outcome, SqlValue};
    use tenantry_sdk::testing;

    fn order_row(id: &str) -> serde_json::Value {
        json!([{"order_id": id, "item": "tea", "qty": 2, "created_at": "2026-01-01T00:00:00Z"}])
    }

    #[test]
    fn place_inserts_once_and_repeats_return_the_same_order() {
        testing::reset();
        testing::set_sql(|statement: &str, params: &[SqlValue]| {
            let rows = if statement.starts_with("INSERT") {
                match &params[0] {
                    SqlValue::Text(id) => order_row(id),
                    _ => json!([]),
                }
            } else {
                json!([])
            };
            Ok(Outcome { rows, affected: 0 })
        });
        let ctx = testing::ctx(None);
        let router = Orders::router();
        let first = router
            .call(&ctx, "orders/place", r#"["o1","tea",2]"#)
            .unwrap();
        let again = router
            .call(&ctx, "orders/place", r#"["o1","tea",2]"#)
            .unwrap();
        assert_eq!(first, again);
        let inserts = testing::take_sql()
            .into_iter()
            .filter(|(s, _)| s.starts_with("INSERT"))
            .count();
        assert_eq!(inserts, 1, "the repeat runs no SQL insert");
        assert_eq!(testing::notify_triggers(), vec!["orders".to_owned()]);
        let bad = router
            .call(&ctx, "orders/place", r#"["","tea",0]"#)
            .unwrap_err();
        assert_eq!(bad.code, "VALIDATION");
        assert_eq!(bad.issues.map(|i| i.len()), Some(2));
    }

    #[test]
    fn only_orders_payloads_are_published() {
        let as_is = Orders::on_notify(&json!({"topic": "orders", "event": "created", "data": {}}));
        assert_eq!(as_is.unwrap(), None);
        let other = Orders::on_notify(&json!({"topic": "x", "event": "created", "data": {}}));
        assert_eq!(other.unwrap(), Some(vec![]));
        assert!(Orders::authorize_subscribe(&testing::ctx(None), "orders").is_ok());
        assert!(Orders::authorize_subscribe(&testing::ctx(None), "other").is_err());
    }
}
