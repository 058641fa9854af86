//! Token-bucket rate limits shared by every host of the fleet (the seeds'
//! `createRateLimit`: `points`, `interval`, `blockDuration`, `keyBy`).
//!
//! A bucket holds `points` tokens and refills them evenly over `interval`;
//! each [`RateLimit::consume`] takes some. With [`RateLimit::block`] a
//! refused consume bans the key for that long. The key is yours to choose
//! — it is what you limit by (the seeds' `keyBy`): a user id, a connection
//! id, an IP from the connect request — and is scoped to your tenant. Use
//! one rule per key: the bucket is the key's, whatever rule consumes it.
//!
//! When the backend is down the limiter cannot decide, and
//! [`RateLimit::check`] refuses (fails closed) with `SERVICE_UNAVAILABLE`.
//!
//! ```no_run
//! use std::time::Duration;
//! use tenantry_sdk::{Ctx, LiveError, ratelimit::RateLimit};
//!
//! fn send(ctx: &Ctx, (text,): (String,)) -> Result<(), LiveError> {
//!     // 5 messages per 10 s per user; a user who goes over waits a minute.
//!     let limit = RateLimit::new(5, Duration::from_secs(10)).block(Duration::from_secs(60));
//!     limit.check(&format!("send:{}", ctx.user_id().unwrap_or(ctx.connection_id())))?;
//!     ctx.publish("room:lobby", "message", &text)?;
//!     Ok(())
//! }
//! ```

use std::time::Duration;

use crate::error::{Error, LiveError};
use crate::host;

/// A rate-limit rule: `points` tokens per `interval`, optionally banning
/// keys that go over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens in a full bucket.
    pub points: u32,
    /// Time to refill an empty bucket.
    pub interval: Duration,
    /// Ban after a refused consume (zero: none). The seeds' `blockDuration`.
    pub block: Duration,
}

/// The outcome of a consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the tokens were taken.
    pub allowed: bool,
    /// Tokens left.
    pub remaining: u32,
    /// When a refused consume may succeed (zero when allowed).
    pub retry_after: Duration,
    /// When the bucket is full again, or the ban ends.
    pub reset: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RateLimit {
    /// `points` tokens per `interval`, no ban.
    pub fn new(points: u32, interval: Duration) -> Self {
        Self {
            points,
            interval,
            block: Duration::ZERO,
        }
    }

    /// Ban a key for `duration` when a consume is refused.
    pub fn block(mut self, duration: Duration) -> Self {
        self.block = duration;
        self
    }

    /// Take one token from the bucket of `key`.
    pub fn consume(&self, key: &str) -> Result<Decision, Error> {
        self.consume_cost(key, 1)
    }

    /// Take `cost` tokens from the bucket of `key`. A cost above `points`
    /// is always refused.
    pub fn consume_cost(&self, key: &str, cost: u32) -> Result<Decision, Error> {
        let d = host::ratelimit_consume(
            key,
            self.points,
            millis(self.interval),
            millis(self.block),
            cost,
        )?;
        Ok(Decision {
            allowed: d.0,
            remaining: d.1,
            retry_after: Duration::from_millis(d.2),
            reset: Duration::from_millis(d.3),
        })
    }

    /// Take one token or refuse the call: `RATE_LIMITED` with `retryAfter`
    /// when over the limit, `SERVICE_UNAVAILABLE` when the limiter cannot
    /// decide (fails closed).
    pub fn check(&self, key: &str) -> Result<(), LiveError> {
        let d = self.consume(key)?;
        if d.allowed {
            Ok(())
        } else {
            Err(LiveError::rate_limited(millis(d.retry_after)))
        }
    }

    /// Forget the bucket and any ban of `key`.
    pub fn reset(key: &str) -> Result<(), Error> {
        host::ratelimit_reset(key)
    }

    /// Refuse every consume of `key` for `duration`.
    pub fn ban(key: &str, duration: Duration) -> Result<(), Error> {
        host::ratelimit_ban(key, millis(duration))
    }

    /// Lift a ban of `key`.
    pub fn unban(key: &str) -> Result<(), Error> {
        host::ratelimit_unban(key)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_counts_and_bans() {
        crate::testing::reset();
        let limit = RateLimit::new(2, Duration::from_secs(60)).block(Duration::from_secs(30));
        assert!(limit.check("k").is_ok());
        assert!(limit.check("k").is_ok());
        let refused = limit.check("k").unwrap_err();
        assert_eq!(refused.code, "RATE_LIMITED");
        assert!(refused.retry_after_ms.unwrap() > 0);
        assert!(limit.check("other").is_ok(), "keys are separate");
        RateLimit::reset("k").unwrap();
        assert!(limit.check("k").is_ok());
        RateLimit::ban("other", Duration::from_secs(5)).unwrap();
        assert!(!limit.consume("other").unwrap().allowed);
        RateLimit::unban("other").unwrap();
        assert!(limit.consume("other").unwrap().allowed);
        assert!(
            !limit.consume_cost("big", 3).unwrap().allowed,
            "cost above points"
        );
    }
}
