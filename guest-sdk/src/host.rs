//! The host imports, behind plain functions.
//!
//! On `wasm32` these call the WIT imports of the Tenantry host. On any other
//! target (unit tests of the SDK and of plugins, run natively) they use a
//! small in-memory stand-in, one per thread, that behaves like the embedded
//! default backends; see [`crate::testing`].

use crate::error::Error;
use crate::log::Level;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Error, Level};
    use crate::bindings::tenantry::plugin::{kv, log, pubsub, types::HostError};

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

    pub fn publish(topic: &str, event: &str, data: &str) -> Result<(), Error> {
        pubsub::publish(topic, event, data).map_err(convert)
    }

    pub fn kv_get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        kv::get(key).map_err(convert)
    }

    pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), Error> {
        kv::set(key, value, ttl_ms).map_err(convert)
    }

    pub fn kv_delete(key: &str) -> Result<bool, Error> {
        kv::delete(key).map_err(convert)
    }

    pub fn kv_incr(key: &str, delta: i64) -> Result<i64, Error> {
        kv::incr(key, delta).map_err(convert)
    }

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log(level, message);
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use super::{Error, Level};
    use crate::testing::Published;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    // The host's default limits, mirrored so native tests fail the same way.
    const MAX_VALUE_BYTES: usize = 1 << 20;
    const MAX_PUBLISH_BYTES: usize = 1 << 20;
    const MAX_KEY_BYTES: usize = 1024;
    const MAX_TOPIC_BYTES: usize = 256;
    const MAX_EVENT_BYTES: usize = 256;

    /// Stored values with their expiry.
    type Store = BTreeMap<String, (Vec<u8>, Option<Instant>)>;

    /// One thread's stand-in host state.
    #[derive(Default)]
    pub struct State {
        pub kv: Store,
        pub published: Vec<Published>,
        pub logs: Vec<(Level, String)>,
    }

    thread_local! {
        pub static STATE: RefCell<State> = RefCell::new(State::default());
    }

    /// The wire topic rules (the `__` prefix is checked by the caller).
    fn valid_topic(topic: &str) -> bool {
        !topic.is_empty()
            && topic.len() <= MAX_TOPIC_BYTES
            && topic
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    }

    /// 1-256 bytes, no quote, backslash or control character.
    fn valid_event(event: &str) -> bool {
        !event.is_empty()
            && event.len() <= MAX_EVENT_BYTES
            && !event
                .bytes()
                .any(|b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\')
    }

    fn check_key(key: &str) -> Result<(), Error> {
        if key.is_empty() {
            Err(Error::Invalid)
        } else if key.len() > MAX_KEY_BYTES {
            Err(Error::TooLarge)
        } else {
            Ok(())
        }
    }

    /// The value at `key`, dropping it first if it has expired.
    fn live_value(kv: &mut Store, key: &str) -> Option<Vec<u8>> {
        let expired = matches!(kv.get(key), Some((_, Some(at))) if *at <= Instant::now());
        if expired {
            kv.remove(key);
        }
        kv.get(key).map(|(v, _)| v.clone())
    }

    pub fn publish(topic: &str, event: &str, data: &str) -> Result<(), Error> {
        if topic.starts_with("__") {
            return Err(Error::AccessDenied);
        }
        if !valid_topic(topic) || !valid_event(event) {
            return Err(Error::Invalid);
        }
        if data.len() > MAX_PUBLISH_BYTES {
            return Err(Error::TooLarge);
        }
        let data: serde_json::Value = serde_json::from_str(data).map_err(|_| Error::Invalid)?;
        STATE.with_borrow_mut(|s| {
            s.published.push(Published {
                topic: topic.to_owned(),
                event: event.to_owned(),
                data,
            })
        });
        Ok(())
    }

    pub fn kv_get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        check_key(key)?;
        Ok(STATE.with_borrow_mut(|s| live_value(&mut s.kv, key)))
    }

    pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), Error> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(Error::TooLarge);
        }
        if ttl_ms == Some(0) {
            return Err(Error::Invalid);
        }
        let expires = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        STATE.with_borrow_mut(|s| s.kv.insert(key.to_owned(), (value.to_vec(), expires)));
        Ok(())
    }

    pub fn kv_delete(key: &str) -> Result<bool, Error> {
        check_key(key)?;
        Ok(STATE.with_borrow_mut(|s| {
            let existed = live_value(&mut s.kv, key).is_some();
            s.kv.remove(key);
            existed
        }))
    }

    pub fn kv_incr(key: &str, delta: i64) -> Result<i64, Error> {
        check_key(key)?;
        STATE.with_borrow_mut(|s| {
            let current = match live_value(&mut s.kv, key) {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|t| t.trim().parse::<i64>().ok())
                    .ok_or(Error::Invalid)?,
            };
            let next = current.checked_add(delta).ok_or(Error::Invalid)?;
            let expires = s.kv.get(key).and_then(|(_, at)| *at);
            s.kv.insert(key.to_owned(), (next.to_string().into_bytes(), expires));
            Ok(next)
        })
    }

    pub fn log(level: Level, message: &str) {
        STATE.with_borrow_mut(|s| s.logs.push((level, message.to_owned())));
    }
}

/// Publish raw JSON text `data` as `event` on `topic`.
pub(crate) fn publish(topic: &str, event: &str, data: &str) -> Result<(), Error> {
    imp::publish(topic, event, data)
}

/// The raw bytes at `key`.
pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    imp::kv_get(key)
}

/// Store raw bytes at `key`.
pub(crate) fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), Error> {
    imp::kv_set(key, value, ttl_ms)
}

/// Remove `key`.
pub(crate) fn kv_delete(key: &str) -> Result<bool, Error> {
    imp::kv_delete(key)
}

/// Add `delta` to the integer at `key`.
pub(crate) fn kv_incr(key: &str, delta: i64) -> Result<i64, Error> {
    imp::kv_incr(key, delta)
}

/// Write a log entry.
pub(crate) fn log(level: Level, message: &str) {
    imp::log(level, message)
}
