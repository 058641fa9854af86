//! Distributed locks with fencing tokens (the seeds' `createDistributedLock`
//! / `withLock`, here as explicit acquire / refresh / release).
//!
//! # Semantics
//!
//! A lock is held per `(tenant, key)` by at most one lease at a time, for a
//! `ttl` after its acquisition or last refresh; then it is free again
//! whether or not it was released. Every acquisition gets a fencing token
//! greater than any token handed out before for the same `(tenant, key)`,
//! on any host: a resource that remembers the highest token it has seen can
//! refuse writes from a holder whose lease already expired.
//!
//! [`DistributedLock::acquire`] tries until it gets the lock or `wait` has
//! passed (polling with a jittered backoff from [`POLL_START`] to
//! [`POLL_MAX`]; `wait` zero tries once) and then answers `Ok(None)`: the
//! seeds' `LOCK_TIMEOUT`, an outcome, not an error. Refresh and release
//! act only if the lock is still held by the given token (compare-and-set),
//! so a holder whose lease expired, and whose lock someone else took, can
//! neither extend nor release the new holder's lock.
//!
//! Keys are the caller's (at most [`MAX_KEY_BYTES`], not empty); tenants
//! never share a lock.
//!
//! Implementations: [`memory::MemoryLock`] (one process) and
//! [`redis::RedisLock`] (a fleet sharing one Redis). Both pass
//! `conformance::suite` (test builds).

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Longest key in bytes (`TooLarge` beyond).
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest lease (`Invalid` beyond); refresh to hold a lock longer.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest `wait` of one acquire (`Invalid` beyond), so no call hangs
/// for long.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// First pause between two tries of a waiting acquire.
pub const POLL_START: Duration = Duration::from_millis(5);

/// Longest pause between two tries (the seeds' retry delay); each pause
/// is jittered by ±25 % so waiting hosts do not retry in lockstep.
pub const POLL_MAX: Duration = Duration::from_millis(50);

/// A held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockLease {
    /// The fencing token: strictly increasing per `(tenant, key)` across
    /// hosts. Pass it to refresh and release, and to the resource the lock
    /// guards.
    pub token: u64,
}

/// Per-tenant locks with fencing tokens (see the module docs).
#[async_trait]
pub trait DistributedLock: Send + Sync + 'static {
    /// Take the lock of `key` for `ttl` (more than zero, at most
    /// [`MAX_TTL`]), trying until `wait` (at most [`MAX_WAIT`]) has passed.
    /// `Ok(None)` if it stayed taken (LOCK_TIMEOUT).
    async fn acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<LockLease>, BackendError>;

    /// Extend the lock of `key` held by `token` to `ttl` from now. `false`
    /// if it is no longer held by `token` (expired, or taken by another).
    async fn refresh(
        &self,
        tenant: &TenantId,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, BackendError>;

    /// Free the lock of `key` if it is held by `token`; `false` if it was
    /// not (expired, or held by another token), and nothing changed.
    async fn release(&self, tenant: &TenantId, key: &str, token: u64)
    -> Result<bool, BackendError>;

    /// Remove every lock of `tenant` (the tenant is being deleted); returns
    /// how many held locks were removed. Other tenants are untouched.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
}

/// `Invalid` if `key` is empty, `TooLarge` if longer than [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), BackendError> {
    if key.is_empty() {
        return Err(BackendError::Invalid("lock key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(BackendError::TooLarge(format!(
            "lock key is {} bytes, the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Check `key` and a lease `ttl`; the ttl in whole ms (rounded up).
pub(crate) fn check_lease(key: &str, ttl: Duration) -> Result<u64, BackendError> {
    check_key(key)?;
    if ttl.is_zero() {
        return Err(BackendError::Invalid("lock ttl must be positive".into()));
    }
    if ttl > MAX_TTL {
        return Err(BackendError::Invalid(format!(
            "lock ttl must be at most {} s",
            MAX_TTL.as_secs()
        )));
    }
    // At most a day of ms: fits.
    Ok(u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
}

/// Check an acquire's `wait`.
pub(crate) fn check_wait(wait: Duration) -> Result<(), BackendError> {
    if wait > MAX_WAIT {
        return Err(BackendError::Invalid(format!(
            "lock wait must be at most {} s",
            MAX_WAIT.as_secs()
        )));
    }
    Ok(())
}

/// Run `try_once` until it gives a lease or `wait` has passed (one last
/// try at the deadline); pauses as the module docs say. Errors end it.
pub(crate) async fn poll<F, Fut>(
    wait: Duration,
    mut try_once: F,
) -> Result<Option<LockLease>, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<LockLease>, BackendError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = POLL_START;
    loop {
        if let Some(lease) = try_once().await? {
            return Ok(Some(lease));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(jitter(pause).min(deadline - now)).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// `d` times a random factor in [0.75, 1.25).
fn jitter(d: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // 0..1000 → factor 750..1250 per mille.
    let per_mille = 750 + (random % 500) as u32;
    d * per_mille / 1000
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn checks() {
        assert!(matches!(check_key(""), Err(BackendError::Invalid(_))));
        assert!(matches!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(BackendError::TooLarge(_))
        ));
        assert_eq!(check_lease("k", Duration::from_micros(1500)), Ok(2));
        assert_eq!(check_lease("k", MAX_TTL), Ok(86_400_000));
        for bad in [Duration::ZERO, MAX_TTL + Duration::from_millis(1)] {
            assert!(matches!(
                check_lease("k", bad),
                Err(BackendError::Invalid(_))
            ));
        }
        assert!(check_wait(MAX_WAIT).is_ok());
        assert!(check_wait(MAX_WAIT + Duration::from_millis(1)).is_err());
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(75) && j < Duration::from_millis(125));
        }
    }

    #[tokio::test]
    async fn poll_tries_until_the_deadline() {
        let tries = AtomicU32::new(0);
        let once = || async {
            tries.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        };
        // Zero wait: exactly one try.
        assert_eq!(poll(Duration::ZERO, once).await, Ok(None));
        assert_eq!(tries.swap(0, Ordering::Relaxed), 1);
        let started = std::time::Instant::now();
        assert_eq!(poll(Duration::from_millis(200), once).await, Ok(None));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
        // 5, 10, 20, 40, 50, 50, ... ms (±25 %), plus the try at the deadline.
        let n = tries.swap(0, Ordering::Relaxed);
        assert!((5..=10).contains(&n), "{n} tries");
        // A lease or an error ends it at once.
        let lease = LockLease { token: 7 };
        assert_eq!(
            poll(MAX_WAIT, || async { Ok(Some(lease)) }).await,
            Ok(Some(lease))
        );
        assert_eq!(
            poll(MAX_WAIT, || async { Err(BackendError::Timeout) }).await,
            Err(BackendError::Timeout)
        );
    }
}
