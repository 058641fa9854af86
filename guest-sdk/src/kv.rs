//! The tenant's key-value store.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::host;

/// Handle to the tenant's key-value store (get one with [`crate::Ctx::kv`] or
/// [`crate::kv()`]).
///
/// Keys are the tenant's own: another tenant's `counter` is a different key.
/// Typed values are stored as JSON text; an integer stored with [`Kv::set`]
/// is decimal text, so [`Kv::incr`] works on it and [`Kv::get`] reads
/// counters made by `incr`.
///
/// ```no_run
/// use std::time::Duration;
/// # fn demo() -> Result<(), tenantry_sdk::Error> {
/// let kv = tenantry_sdk::kv();
/// kv.set("motd", "hello", Some(Duration::from_secs(60)))?;
/// let motd: Option<String> = kv.get("motd")?;
/// let visits = kv.incr("visits", 1)?;
/// kv.delete("motd")?;
/// # let _ = (motd, visits); Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Kv {
    _private: (),
}

/// Milliseconds of a TTL, saturating (a TTL of centuries is "forever").
fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Kv {
    /// A handle to the store.
    pub fn new() -> Self {
        Self { _private: () }
    }

    /// The value at `key` decoded from JSON, or `None` if absent or expired.
    /// A value that is not JSON of type `T` is [`Error::Decode`].
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match host::kv_get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Decode(e.to_string())),
        }
    }

    /// Store `value` as JSON at `key`, replacing any value. With `ttl` the
    /// key expires after that long.
    pub fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string()))?;
        host::kv_set(key, &bytes, ttl_ms(ttl))
    }

    /// The raw bytes at `key`, or `None` if absent or expired.
    pub fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        host::kv_get(key)
    }

    /// Store raw bytes at `key`, replacing any value; with `ttl` it expires.
    pub fn set_bytes(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        host::kv_set(key, value, ttl_ms(ttl))
    }

    /// Remove `key`; `true` if it existed.
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        host::kv_delete(key)
    }

    /// Add `delta` to the integer at `key` (absent counts as 0) and return
    /// the new value, atomically, like Redis `INCRBY`. Keeps an existing TTL.
    /// [`Error::Invalid`] if the value is not a decimal integer.
    pub fn incr(&self, key: &str, delta: i64) -> Result<i64, Error> {
        host::kv_incr(key, delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Item {
        name: String,
        n: u32,
    }

    #[test]
    fn typed_round_trip_and_delete() {
        testing::reset();
        let kv = Kv::new();
        assert_eq!(kv.get::<Item>("a").unwrap(), None);
        let item = Item {
            name: "x".into(),
            n: 3,
        };
        kv.set("a", &item, None).unwrap();
        assert_eq!(kv.get::<Item>("a").unwrap(), Some(item));
        assert_eq!(
            kv.get_bytes("a").unwrap().unwrap(),
            br#"{"name":"x","n":3}"#
        );
        assert!(matches!(kv.get::<u32>("a"), Err(Error::Decode(_))));
        assert!(kv.delete("a").unwrap());
        assert!(!kv.delete("a").unwrap());
    }

    #[test]
    fn incr_reads_as_typed_integer_and_rejects_text() {
        testing::reset();
        let kv = Kv::new();
        assert_eq!(kv.incr("n", 2).unwrap(), 2);
        assert_eq!(kv.incr("n", -5).unwrap(), -3);
        assert_eq!(kv.get::<i64>("n").unwrap(), Some(-3));
        kv.set("n", &10, None).unwrap();
        assert_eq!(kv.incr("n", 1).unwrap(), 11);
        kv.set("s", "text", None).unwrap();
        assert_eq!(kv.incr("s", 1), Err(Error::Invalid));
        kv.set_bytes("b", b"not json", None).unwrap();
        assert!(matches!(kv.get::<String>("b"), Err(Error::Decode(_))));
    }

    #[test]
    fn ttl_expires_and_incr_keeps_it() {
        testing::reset();
        let kv = Kv::new();
        kv.set("t", &1, Some(Duration::from_millis(20))).unwrap();
        assert_eq!(kv.incr("t", 1).unwrap(), 2);
        assert_eq!(kv.get::<i64>("t").unwrap(), Some(2));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(kv.get::<i64>("t").unwrap(), None);
        assert_eq!(kv.set("t", &1, Some(Duration::ZERO)), Err(Error::Invalid));
    }

    #[test]
    fn stand_in_mirrors_host_limits() {
        testing::reset();
        let kv = Kv::new();
        assert_eq!(kv.get_bytes(""), Err(Error::Invalid));
        assert_eq!(kv.get_bytes(&"k".repeat(1025)), Err(Error::TooLarge));
        assert_eq!(
            kv.set_bytes("big", &vec![0; (1 << 20) + 1], None),
            Err(Error::TooLarge)
        );
        assert_eq!(crate::publish("__rpc", "x", &1), Err(Error::AccessDenied));
        assert_eq!(crate::publish("", "x", &1), Err(Error::Invalid));
        assert_eq!(crate::publish("a\"b", "x", &1), Err(Error::Invalid));
        assert_eq!(crate::publish("ok", "", &1), Err(Error::Invalid));
        assert_eq!(crate::publish("ok", "ev", &1), Ok(()));
        assert_eq!(testing::take_published().len(), 1);
        crate::log::warn("careful");
        assert_eq!(
            testing::take_logs(),
            vec![(crate::log::Level::Warn, "careful".to_owned())]
        );
    }
}
