//! Idempotency records (the seeds' `createIdempotencyStore`: acquire, then
//! commit a result or abort).
//!
//! # Semantics
//!
//! A record per `(tenant, key)` is absent, **pending** (someone is doing
//! the work; for at most `pending_ttl`) or **done** (the work's result,
//! kept for `ttl`). [`IdempotencyStore::acquire`] on an absent key makes it
//! pending and answers [`IdemAcquire::Acquired`]: the caller does the work
//! and then commits the result or aborts. Every other acquire answers
//! [`IdemAcquire::Pending`] while the work runs and
//! [`IdemAcquire::Done`] with the result once committed. Exactly one of any
//! number of concurrent acquires, on any host, gets `Acquired`.
//!
//! - [`IdempotencyStore::commit`] stores the result for `ttl`, replacing
//!   whatever the key holds (also after the pending record expired: the
//!   work was done, so its result is recorded).
//! - [`IdempotencyStore::abort`] frees a pending key so a retry can run; it
//!   never removes a committed result.
//! - A pending record whose worker died expires after `pending_ttl`; then
//!   the next acquire gets `Acquired` again.
//!
//! Keys are the caller's (at most [`MAX_KEY_BYTES`], not empty), results
//! at most [`MAX_RESULT_BYTES`] (`TooLarge` beyond), TTLs more than zero
//! and at most [`MAX_TTL`]. Tenants never share a record.
//!
//! Implementations: [`memory::MemoryIdempotency`] (one process),
//! [`redis::RedisIdempotency`] (a fleet sharing one Redis) and
//! [`postgres::PostgresIdempotency`] (a fleet sharing one Postgres, in the
//! host schema). All pass `conformance::suite` (test builds).

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod postgres;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Longest key in bytes (`TooLarge` beyond).
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest result in bytes (`TooLarge` beyond): 1 MiB.
pub const MAX_RESULT_BYTES: usize = 1 << 20;

/// Longest pending or result TTL (`Invalid` beyond): 30 days.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The answer of [`IdempotencyStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemAcquire {
    /// The key was free and is now pending for the caller: do the work,
    /// then commit or abort.
    Acquired,
    /// Someone else is doing the work (the seeds' `CONFLICT`).
    Pending,
    /// The work was done; its stored result (JSON).
    Done(String),
}

/// Per-tenant idempotency records (see the module docs).
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Make `key` pending for `pending_ttl` if it is free (`Acquired`), or
    /// report that it is pending or done.
    async fn acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        pending_ttl: Duration,
    ) -> Result<IdemAcquire, BackendError>;

    /// Store `result` (JSON, at most [`MAX_RESULT_BYTES`]) as the outcome
    /// of `key` for `ttl`, replacing whatever `key` holds.
    async fn commit(
        &self,
        tenant: &TenantId,
        key: &str,
        result: &str,
        ttl: Duration,
    ) -> Result<(), BackendError>;

    /// Free `key` if it is pending (the work failed; a retry may run).
    /// `true` if a pending record was removed; a result is never removed.
    async fn abort(&self, tenant: &TenantId, key: &str) -> Result<bool, BackendError>;

    /// Remove every record of `tenant` (the tenant is being deleted);
    /// returns how many were removed. Other tenants are untouched.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
}

/// `Invalid` if `key` is empty, `TooLarge` if longer than [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), BackendError> {
    if key.is_empty() {
        return Err(BackendError::Invalid("idempotency key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(BackendError::TooLarge(format!(
            "idempotency key is {} bytes, the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// `TooLarge` if `result` is longer than [`MAX_RESULT_BYTES`].
pub fn check_result(result: &str) -> Result<(), BackendError> {
    if result.len() > MAX_RESULT_BYTES {
        return Err(BackendError::TooLarge(format!(
            "idempotency result is {} bytes, the limit is {MAX_RESULT_BYTES}",
            result.len()
        )));
    }
    Ok(())
}

/// `ttl` in whole ms (rounded up); `Invalid` if zero or over [`MAX_TTL`].
pub(crate) fn ttl_ms(what: &str, ttl: Duration) -> Result<u64, BackendError> {
    if ttl.is_zero() {
        return Err(BackendError::Invalid(format!("{what} must be positive")));
    }
    if ttl > MAX_TTL {
        return Err(BackendError::Invalid(format!(
            "{what} must be at most {} s",
            MAX_TTL.as_secs()
        )));
    }
    // At most 30 days of ms: fits.
    Ok(u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        assert!(matches!(check_key(""), Err(BackendError::Invalid(_))));
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(matches!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(BackendError::TooLarge(_))
        ));
        assert!(check_result(&"x".repeat(MAX_RESULT_BYTES)).is_ok());
        assert!(matches!(
            check_result(&"x".repeat(MAX_RESULT_BYTES + 1)),
            Err(BackendError::TooLarge(_))
        ));
        assert_eq!(ttl_ms("ttl", Duration::from_micros(1)), Ok(1));
        assert_eq!(ttl_ms("ttl", MAX_TTL), Ok(30 * 24 * 60 * 60 * 1000));
        for bad in [Duration::ZERO, MAX_TTL + Duration::from_millis(1)] {
            assert!(matches!(ttl_ms("ttl", bad), Err(BackendError::Invalid(_))));
        }
    }
}
