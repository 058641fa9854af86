//! Database changes to subscribers: the host's LISTEN/NOTIFY bridge (the
//! seeds' `createNotifyBridge`), on hosts with `[postgres]`.
//!
//! [`install_trigger`] puts the host's trigger on one of the tenant's
//! tables: every insert, update and delete then becomes a notification
//! `{"topic": <table>, "event": "created" | "updated" | "deleted",
//! "data": <row>}` — also for changes made outside the plugin (any client
//! of the tenant's schema). [`send`] adds one of the plugin's own. The
//! host hands each to [`crate::Plugin::on_notify`] (set
//! [`crate::Plugin::NOTIFY_EVENTS`] to `true`), whose default publishes it
//! as it is: `created` on topic `orders` for a new row of `orders`.
//! Delivery is at most once, by one host of the fleet, after the change
//! committed.
//!
//! ```no_run
//! use tenantry_sdk::{LiveError, notify, sql};
//!
//! fn setup() -> Result<(), LiveError> {
//!     sql::execute("CREATE TABLE IF NOT EXISTS orders (order_id text PRIMARY KEY, qty int)", &[])?;
//!     notify::install_trigger("orders")?;
//!     Ok(())
//! }
//! ```
//!
//! In native unit tests the stand-in records the tables given to
//! [`install_trigger`] and the payloads sent ([`crate::testing::notify_triggers`],
//! [`crate::testing::take_notify_sent`]).

use serde::Serialize;

use crate::error::Error;

/// One event to publish, returned by [`crate::Plugin::on_notify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The topic.
    pub topic: String,
    /// The event name.
    pub event: String,
    /// The data.
    pub data: serde_json::Value,
}

impl Publication {
    /// `event` with `data` on `topic`.
    pub fn new(
        topic: impl Into<String>,
        event: impl Into<String>,
        data: impl Serialize,
    ) -> Result<Self, Error> {
        Ok(Self {
            topic: topic.into(),
            event: event.into(),
            data: serde_json::to_value(data).map_err(|e| Error::Encode(e.to_string()))?,
        })
    }
}

/// Put the host's notify trigger on `table` of the tenant's schema (a
/// plain name as stored: `orders`), creating the outbox and the trigger
/// function first if needed. Idempotent; `invalid` for a bad name or a
/// missing table, `unavailable` without `[postgres]`.
pub fn install_trigger(table: &str) -> Result<(), Error> {
    imp::install_trigger(table)
}

/// Notify `{"topic", "event", "data"}` (at most 1 MiB) through the outbox,
/// in its own transaction.
pub fn send(topic: &str, event: &str, data: &impl Serialize) -> Result<(), Error> {
    let data = serde_json::to_value(data).map_err(|e| Error::Encode(e.to_string()))?;
    let payload = serde_json::json!({ "topic": topic, "event": event, "data": data });
    imp::send(&payload.to_string())
}

/// Notify any JSON `payload` (for an [`crate::Plugin::on_notify`] that
/// maps it itself).
pub fn send_json(payload: &serde_json::Value) -> Result<(), Error> {
    imp::send(&payload.to_string())
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::tenantry::plugin::notify as wit;
    use crate::bindings::tenantry::plugin::types::HostError;
    use crate::error::Error;

    fn convert(e: HostError) -> Error {
        match e {
            HostError::AccessDenied => Error::AccessDenied,
            HostError::QuotaExceeded => Error::QuotaExceeded,
            HostError::Timeout => Error::Timeout,
            HostError::Unavailable => Error::Unavailable,
            HostError::TooLarge => Error::TooLarge,
            HostError::Invalid => Error::Invalid,
            HostError::RateLimited(retry_after_ms) => Error::RateLimited { retry_after_ms },
            HostError::Other(message) => Error::Other(message),
        }
    }

    pub fn install_trigger(table: &str) -> Result<(), Error> {
        wit::install_trigger(table).map_err(convert)
    }

    pub fn send(payload: &str) -> Result<(), Error> {
        wit::send(payload).map_err(convert)
    }
}

/// The native stand-in: records what the plugin asked for.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use std::cell::RefCell;

    use crate::error::Error;

    #[derive(Default)]
    pub struct StandIn {
        pub triggers: Vec<String>,
        pub sent: Vec<serde_json::Value>,
    }

    thread_local! {
        pub static NOTIFY: RefCell<StandIn> = RefCell::new(StandIn::default());
    }

    pub fn install_trigger(table: &str) -> Result<(), Error> {
        let b = table.as_bytes();
        let valid = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !valid {
            return Err(Error::Invalid);
        }
        NOTIFY.with_borrow_mut(|s| {
            if !s.triggers.iter().any(|t| t == table) {
                s.triggers.push(table.to_owned());
            }
        });
        Ok(())
    }

    pub fn send(payload: &str) -> Result<(), Error> {
        if payload.len() > 1 << 20 {
            return Err(Error::TooLarge);
        }
        let v = serde_json::from_str(payload).map_err(|_| Error::Invalid)?;
        NOTIFY.with_borrow_mut(|s| s.sent.push(v));
        Ok(())
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing;
    use serde_json::json;

    #[test]
    fn the_stand_in_records_triggers_and_sends() {
        testing::reset();
        install_trigger("orders").unwrap();
        install_trigger("orders").unwrap();
        assert_eq!(install_trigger("a-b"), Err(Error::Invalid));
        assert_eq!(testing::notify_triggers(), vec!["orders".to_owned()]);
        send("orders", "created", &json!({"id": 1})).unwrap();
        assert_eq!(
            testing::take_notify_sent(),
            vec![json!({"topic": "orders", "event": "created", "data": {"id": 1}})]
        );
        assert!(testing::take_notify_sent().is_empty());
    }
}
