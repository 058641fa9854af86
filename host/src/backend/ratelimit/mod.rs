//! Rate limiting (the seeds' `createRateLimit`: `points`, `interval`,
//! `blockDuration`; the caller picks the key, e.g. per user or connection).
//!
//! # The bucket
//!
//! A token bucket per `(tenant, key)` holding up to `points` tokens. It
//! starts full and refills continuously at `points` tokens per `interval`
//! (so an empty bucket is full again one `interval` later). A consume of
//! `cost` tokens is allowed if the bucket holds at least `cost` tokens and
//! takes them; a refused consume takes nothing. When a consume is refused
//! and the rule's `block` is not zero, the key is banned for `block`: every
//! consume is refused until the ban ends. A consume whose cost exceeds the
//! rule's `points` can never succeed: it is refused with
//! `retry_after_ms` [`NEVER`], takes nothing and bans nothing.
//!
//! The arithmetic is exact integer arithmetic shared by both twins: one
//! token is `interval_ms` units, the bucket holds up to
//! `points × interval_ms` units (at most [`MAX_CAPACITY`], so the Redis
//! script's doubles stay exact) and gains `points` units per millisecond.
//! A bucket that is full and not banned is not stored at all, so idle keys
//! cost nothing.
//!
//! Keys are the caller's (at most [`MAX_KEY_BYTES`], not empty); tenants
//! never share a bucket.
//!
//! Implementations: [`memory::MemoryRateLimiter`] (one process) and
//! [`redis::RedisRateLimiter`] (a fleet sharing one Redis; fails closed
//! with `Unavailable` while Redis is unreachable). Both pass
//! `conformance::suite` (test builds).

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Longest key in bytes (`TooLarge` beyond).
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest `points × interval` in milliseconds (`Invalid` beyond): keeps
/// every bucket value exact in the Redis script's doubles (2^53).
pub const MAX_CAPACITY: u64 = 1 << 53;

/// Longest block or ban in milliseconds (`Invalid` beyond), about 142 years.
pub const MAX_BAN_MS: u64 = 1 << 52;

/// The `retry_after_ms` of a consume that can never be allowed (its cost
/// exceeds the rule's points).
pub const NEVER: u64 = u64::MAX;

/// How much a key may consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitRule {
    /// Tokens the bucket holds when full (at least 1).
    pub points: u32,
    /// Time in which an empty bucket refills completely (at least 1 ms;
    /// rounded up to whole milliseconds).
    pub interval: Duration,
    /// Ban applied when a consume is refused; `Duration::ZERO` = no ban.
    pub block: Duration,
}

/// The outcome of a consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the tokens were taken.
    pub allowed: bool,
    /// Whole tokens left after this consume (0 while banned).
    pub remaining: u32,
    /// When refused: milliseconds until the same consume could be allowed
    /// (the ban's end while banned; [`NEVER`] if the cost exceeds the
    /// points). 0 when allowed.
    pub retry_after_ms: u64,
    /// Milliseconds until the bucket is full again, or, while banned,
    /// until the ban ends.
    pub reset_ms: u64,
}

/// Per-tenant token-bucket rate limits (see the module docs).
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Take `cost` (at least 1) tokens from the bucket of `key` under
    /// `rule`. A refusal is `Ok` with `allowed: false`; `Err` means the
    /// limiter could not decide (the caller fails closed), or an invalid
    /// argument.
    async fn consume(
        &self,
        tenant: &TenantId,
        key: &str,
        rule: RateLimitRule,
        cost: u32,
    ) -> Result<RateDecision, BackendError>;

    /// Forget the bucket and any ban of `key`: it is full again.
    async fn reset(&self, tenant: &TenantId, key: &str) -> Result<(), BackendError>;

    /// Ban `key` for `duration` (more than zero) from now, replacing any
    /// current ban; the bucket itself is kept.
    async fn ban(
        &self,
        tenant: &TenantId,
        key: &str,
        duration: Duration,
    ) -> Result<(), BackendError>;

    /// End any ban of `key`; the bucket itself is kept.
    async fn unban(&self, tenant: &TenantId, key: &str) -> Result<(), BackendError>;

    /// Remove every bucket and ban of `tenant` (the tenant is being
    /// deleted); returns how many keys were removed. Other tenants are
    /// untouched.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
}

/// `Invalid` if `key` is empty, `TooLarge` if longer than [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), BackendError> {
    if key.is_empty() {
        return Err(BackendError::Invalid("rate limit key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(BackendError::TooLarge(format!(
            "rate limit key is {} bytes, the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// A checked consume in whole milliseconds, as both twins compute with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Consume {
    /// Tokens of a full bucket (≥ 1).
    pub points: u64,
    /// Refill interval in ms (≥ 1); also the units per token.
    pub interval_ms: u64,
    /// Ban on refusal in ms (0 = none).
    pub block_ms: u64,
    /// Tokens to take (≥ 1).
    pub cost: u64,
}

impl Consume {
    /// Check `key`, `rule` and `cost`.
    pub fn check(key: &str, rule: RateLimitRule, cost: u32) -> Result<Self, BackendError> {
        check_key(key)?;
        if rule.points == 0 {
            return Err(BackendError::Invalid(
                "rate limit points must be at least 1".into(),
            ));
        }
        if cost == 0 {
            return Err(BackendError::Invalid(
                "rate limit cost must be at least 1".into(),
            ));
        }
        if rule.interval.is_zero() {
            return Err(BackendError::Invalid(
                "rate limit interval must be positive".into(),
            ));
        }
        let points = u64::from(rule.points);
        let interval_ms = whole_ms(rule.interval);
        if interval_ms
            .checked_mul(points)
            .is_none_or(|cap| cap > MAX_CAPACITY)
        {
            return Err(BackendError::Invalid(format!(
                "rate limit points × interval in ms must be at most {MAX_CAPACITY}"
            )));
        }
        let block_ms = whole_ms(rule.block);
        if block_ms > MAX_BAN_MS {
            return Err(BackendError::Invalid("rate limit block is too long".into()));
        }
        Ok(Self {
            points,
            interval_ms,
            block_ms,
            cost: u64::from(cost),
        })
    }
}

/// Check `key` and a ban `duration`; the duration in whole ms.
pub(crate) fn check_ban(key: &str, duration: Duration) -> Result<u64, BackendError> {
    check_key(key)?;
    if duration.is_zero() {
        return Err(BackendError::Invalid(
            "ban duration must be positive".into(),
        ));
    }
    let ms = whole_ms(duration);
    if ms > MAX_BAN_MS {
        return Err(BackendError::Invalid("ban duration is too long".into()));
    }
    Ok(ms)
}

/// `d` in milliseconds, rounded up (saturating).
fn whole_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(points: u32, interval_ms: u64) -> RateLimitRule {
        RateLimitRule {
            points,
            interval: Duration::from_millis(interval_ms),
            block: Duration::ZERO,
        }
    }

    #[test]
    fn checks_keys_and_rules() {
        assert!(matches!(check_key(""), Err(BackendError::Invalid(_))));
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(matches!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(BackendError::TooLarge(_))
        ));
        let ok = Consume::check("k", rule(5, 1000), 2).unwrap();
        assert_eq!(
            ok,
            Consume {
                points: 5,
                interval_ms: 1000,
                block_ms: 0,
                cost: 2
            }
        );
        // Sub-millisecond parts round up.
        let r = RateLimitRule {
            interval: Duration::from_micros(1500),
            block: Duration::from_nanos(1),
            ..rule(1, 1)
        };
        let c = Consume::check("k", r, 1).unwrap();
        assert_eq!((c.interval_ms, c.block_ms), (2, 1));
        for (r, cost) in [
            (rule(0, 1000), 1),
            (rule(1, 1000), 0),
            (rule(1, 0), 1),
            (rule(u32::MAX, 1 << 22), 1),
        ] {
            assert!(
                matches!(Consume::check("k", r, cost), Err(BackendError::Invalid(_))),
                "{r:?} {cost}"
            );
        }
        assert!(Consume::check("k", rule(u32::MAX, 1 << 21), 1).is_ok());
        assert!(matches!(
            check_ban("k", Duration::ZERO),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            check_ban("k", Duration::MAX),
            Err(BackendError::Invalid(_))
        ));
        assert_eq!(check_ban("k", Duration::from_millis(7)), Ok(7));
    }
}
