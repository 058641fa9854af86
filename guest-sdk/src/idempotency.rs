//! Run-once guards (the seeds' idempotency store), shared by every host of
//! the fleet: the first caller of a key runs the operation and its result
//! is kept; a retry with the same key gets that result instead of running
//! it again, and a concurrent one gets `CONFLICT`.
//!
//! ```no_run
//! use std::time::Duration;
//! use tenantry_sdk::{LiveError, idempotency};
//!
//! fn charge(payment_id: &str, cents: u64) -> Result<String, LiveError> {
//!     idempotency::once(&format!("charge:{payment_id}"), Duration::from_secs(24 * 3600), || {
//!         // ... charge the card once ...
//!         Ok(format!("receipt for {cents}"))
//!     })
//! }
//! ```

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, LiveError};
use crate::host;

/// How long a claim lasts while the operation runs (it is released sooner
/// by commit or abort; this covers a plugin that stopped mid-way).
pub const PENDING_TTL: Duration = Duration::from_secs(60);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What [`acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The key is yours: run the operation, then [`commit`] or [`abort`].
    Acquired,
    /// Another caller is running it now.
    Pending,
    /// It already ran; its committed result (JSON text).
    Done(String),
}

/// Claim `key` for `pending_ttl`.
pub fn acquire(key: &str, pending_ttl: Duration) -> Result<State, Error> {
    host::idempotency_acquire(key, millis(pending_ttl))
}

/// Store the result of `key`'s operation (JSON text) for `ttl`.
pub fn commit(key: &str, result_json: &str, ttl: Duration) -> Result<(), Error> {
    host::idempotency_commit(key, result_json, millis(ttl))
}

/// Give `key` up so a retry may run the operation.
pub fn abort(key: &str) -> Result<(), Error> {
    host::idempotency_abort(key)
}

/// Run `f` once per `key` and keep its result for `ttl`: a later call with
/// the same key returns the kept result without running `f`; a call while
/// another runs is `CONFLICT`. If `f` fails, nothing is kept and a retry
/// runs it again.
pub fn once<T: Serialize + DeserializeOwned>(
    key: &str,
    ttl: Duration,
    f: impl FnOnce() -> Result<T, LiveError>,
) -> Result<T, LiveError> {
    match acquire(key, PENDING_TTL)? {
        State::Done(json) => {
            serde_json::from_str(&json).map_err(|e| LiveError::from(Error::Decode(e.to_string())))
        }
        State::Pending => Err(LiveError::conflict("This operation is already in progress")),
        State::Acquired => match f() {
            Ok(value) => {
                let json = serde_json::to_string(&value)
                    .map_err(|e| LiveError::from(Error::Encode(e.to_string())))?;
                commit(key, &json, ttl)?;
                Ok(value)
            }
            Err(e) => {
                let _ = abort(key);
                Err(e)
            }
        },
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_runs_once() {
        crate::testing::reset();
        let ttl = Duration::from_secs(60);
        let mut runs = 0;
        let a: u32 = once("k", ttl, || {
            runs += 1;
            Ok(7)
        })
        .unwrap();
        let b: u32 = once("k", ttl, || {
            runs += 1;
            Ok(8)
        })
        .unwrap();
        assert_eq!((a, b, runs), (7, 7, 1));
        let failed: Result<u32, _> = once("f", ttl, || Err(LiveError::forbidden("no")));
        assert!(failed.is_err());
        assert_eq!(
            once("f", ttl, || Ok(1u32)).unwrap(),
            1,
            "a failure is not kept"
        );
        assert_eq!(acquire("p", ttl).unwrap(), State::Acquired);
        assert_eq!(acquire("p", ttl).unwrap(), State::Pending);
        let conflict: Result<u32, _> = once("p", ttl, || Ok(1));
        assert_eq!(conflict.unwrap_err().code, "CONFLICT");
        abort("p").unwrap();
        assert_eq!(acquire("p", ttl).unwrap(), State::Acquired);
    }
}
