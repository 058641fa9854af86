//! Distributed locks with fencing tokens, shared by every host of the fleet.
//!
//! [`with_lock`] is the usual form: take the lock, run the closure, release.
//! Each acquisition gets a **fencing token** that only grows for a key:
//! pass it to whatever the lock protects (store it with the write, refuse
//! writes with a lower token), because a lock can expire under a slow
//! holder. Locks outlive the call that took them until released or expired.
//!
//! ```no_run
//! use std::time::Duration;
//! use tenantry_sdk::{LiveError, lock};
//!
//! fn settle(order: &str) -> Result<u64, LiveError> {
//!     lock::with_lock(&format!("order:{order}"), Duration::from_secs(5), Duration::from_secs(1), |token| {
//!         // ... work on the order, writing `token` alongside ...
//!         Ok(token)
//!     })
//! }
//! ```

use std::time::Duration;

use crate::error::{Error, LiveError, codes};
use crate::host;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A held lock (from [`acquire`]). Release it with [`Lock::release`];
/// dropping it releases it too (ignoring failures).
#[derive(Debug)]
pub struct Lock {
    key: String,
    token: u64,
    released: bool,
}

impl Lock {
    /// The fencing token of this acquisition.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Extend the lock to `ttl` from now; `false` if it was lost (expired,
    /// or taken by another holder).
    pub fn refresh(&self, ttl: Duration) -> Result<bool, Error> {
        host::lock_refresh(&self.key, self.token, millis(ttl))
    }

    /// Release the lock; `false` if it had already been lost.
    pub fn release(mut self) -> Result<bool, Error> {
        self.released = true;
        host::lock_release(&self.key, self.token)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.released {
            let _ = host::lock_release(&self.key, self.token);
        }
    }
}

/// Take the lock `key` for `ttl`, waiting up to `wait` for it; `None` if it
/// was not free in time.
pub fn acquire(key: &str, ttl: Duration, wait: Duration) -> Result<Option<Lock>, Error> {
    Ok(
        host::lock_acquire(key, millis(ttl), millis(wait))?.map(|token| Lock {
            key: key.to_owned(),
            token,
            released: false,
        }),
    )
}

/// Release the lock `key` held with `token` (for a lock kept across calls,
/// e.g. with [`Lock::token`] stored and [`std::mem::forget`] on the
/// [`Lock`]); `false` if it was no longer held with that token.
pub fn release(key: &str, token: u64) -> Result<bool, Error> {
    host::lock_release(key, token)
}

/// Extend the lock `key` held with `token` to `ttl` from now; `false` if it
/// was lost.
pub fn refresh(key: &str, token: u64, ttl: Duration) -> Result<bool, Error> {
    host::lock_refresh(key, token, millis(ttl))
}

/// Run `f` holding the lock `key` (for at most `ttl`, waiting up to `wait`
/// to get it), then release it. `LOCK_TIMEOUT` if the lock was not free in
/// time. `f` gets the fencing token.
pub fn with_lock<T>(
    key: &str,
    ttl: Duration,
    wait: Duration,
    f: impl FnOnce(u64) -> Result<T, LiveError>,
) -> Result<T, LiveError> {
    let Some(lock) = acquire(key, ttl, wait)? else {
        return Err(LiveError::new(
            codes::LOCK_TIMEOUT,
            "The resource is busy; try again",
        ));
    };
    let result = f(lock.token());
    if !lock.release()? {
        crate::log::warn(&format!(
            "lock {key:?} expired before it was released; raise its ttl"
        ));
    }
    result
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_excludes_and_fences() {
        crate::testing::reset();
        let ttl = Duration::from_secs(5);
        let first = acquire("k", ttl, Duration::ZERO).unwrap().unwrap();
        assert!(acquire("k", ttl, Duration::ZERO).unwrap().is_none(), "held");
        let t1 = first.token();
        assert!(first.refresh(ttl).unwrap());
        assert!(first.release().unwrap());
        let t2 = with_lock("k", ttl, Duration::ZERO, Ok).unwrap();
        assert!(t2 > t1, "tokens grow");
        let _held = acquire("k", ttl, Duration::ZERO).unwrap().unwrap();
        let busy = with_lock("k", ttl, Duration::ZERO, Ok).unwrap_err();
        assert_eq!(busy.code, "LOCK_TIMEOUT");
    }
}
