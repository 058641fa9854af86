//! `tenantry:plugin/ratelimit`: token buckets of the calling tenant.

use std::time::Duration;

use crate::backend::ratelimit::RateLimitRule;
use crate::runtime::HostState;
use crate::runtime::wit::ratelimit::{Host, RateDecision, RateRule};
use crate::runtime::wit::types::HostError;

impl Host for HostState {
    async fn consume(
        &mut self,
        key: String,
        rule: RateRule,
        cost: u32,
    ) -> Result<RateDecision, HostError> {
        let rule = RateLimitRule {
            points: rule.points,
            interval: Duration::from_millis(rule.interval_ms),
            block: Duration::from_millis(rule.block_ms),
        };
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.ratelimit.consume(&s.tenant, &key, rule, cost))
            .await;
        let d = r.map_err(HostError::from)?;
        crate::metrics::ratelimit(&s.tenant, d.allowed);
        Ok(RateDecision {
            allowed: d.allowed,
            remaining: d.remaining,
            retry_after_ms: d.retry_after_ms,
            reset_ms: d.reset_ms,
        })
    }

    async fn reset(&mut self, key: String) -> Result<(), HostError> {
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.ratelimit.reset(&s.tenant, &key))
            .await;
        r.map_err(HostError::from)
    }

    async fn ban(&mut self, key: String, duration_ms: u64) -> Result<(), HostError> {
        let s = &self.scope;
        let r = self
            .cpu
            .wait(
                s.backends
                    .ratelimit
                    .ban(&s.tenant, &key, Duration::from_millis(duration_ms)),
            )
            .await;
        if r.is_ok() {
            crate::metrics::ratelimit_ban(&s.tenant);
        }
        r.map_err(HostError::from)
    }

    async fn unban(&mut self, key: String) -> Result<(), HostError> {
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.ratelimit.unban(&s.tenant, &key))
            .await;
        r.map_err(HostError::from)
    }
}
