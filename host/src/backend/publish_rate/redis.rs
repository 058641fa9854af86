//! The fleet's publish-rate reports in Redis: `{ns}:t:{<tenant>}:rates`, a
//! hash of host instance → `<server ms>\n<JSON slice>`, expiring
//! [`STALE_AFTER`] after the last report. Reads drop reports older than
//! that by the Redis clock, so hosts' clocks need not agree.

use std::sync::Arc;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{MergedRate, RateBoard, STALE_AFTER, TopicRate, merge};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::backend::redis::{RedisScope, SCRIPT_TIMEOUT};
use crate::tenant::TenantId;

/// `KEYS[1]` the hash; `ARGV[1]` instance, `ARGV[2]` JSON slice or `''`
/// (remove), `ARGV[3]` expiry ms.
const REPORT_SCRIPT: &str = r"
if ARGV[2] == '' then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now) .. '\n' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// `KEYS[1]` the hash. Returns the Redis time in ms and the hash's values.
const READ_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {string.format('%d', now), redis.call('HVALS', KEYS[1])}
";

/// Publish-rate reports shared by a fleet (see the module docs).
pub struct RedisRateBoard {
    scope: RedisScope,
    report: Script,
    read: Script,
}

impl RedisRateBoard {
    /// Reports under `namespace` on `conn`, through `breaker`.
    pub fn new(conn: ConnectionManager, namespace: String, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            scope: RedisScope::new(conn, namespace, breaker),
            report: Script::new(REPORT_SCRIPT),
            read: Script::new(READ_SCRIPT),
        }
    }

    fn key(&self, tenant: &TenantId) -> String {
        self.scope.keys(tenant).fixed("rates")
    }
}

#[async_trait]
impl RateBoard for RedisRateBoard {
    async fn report(
        &self,
        tenant: &TenantId,
        instance: &str,
        slice: &[TopicRate],
    ) -> Result<(), BackendError> {
        let json = if slice.is_empty() {
            String::new()
        } else {
            serde_json::to_string(slice).map_err(|e| BackendError::Other(e.to_string()))?
        };
        let mut inv = self.report.prepare_invoke();
        inv.key(self.key(tenant))
            .arg(instance)
            .arg(json)
            .arg(u64::try_from(STALE_AFTER.as_millis()).unwrap_or(u64::MAX));
        let _: i64 = self.scope.script("publish rates report", &inv).await?;
        Ok(())
    }

    async fn merged(&self, tenant: &TenantId) -> Result<Vec<MergedRate>, BackendError> {
        let mut inv = self.read.prepare_invoke();
        inv.key(self.key(tenant));
        let (now, values): (String, Vec<String>) =
            self.scope.script("publish rates read", &inv).await?;
        let now: u64 = now.parse().unwrap_or(0);
        let stale = u64::try_from(STALE_AFTER.as_millis()).unwrap_or(u64::MAX);
        let slices: Vec<Vec<TopicRate>> = values
            .iter()
            .filter_map(|v| {
                let (at, json) = v.split_once('\n')?;
                let at: u64 = at.parse().ok()?;
                if now.saturating_sub(at) >= stale {
                    return None;
                }
                serde_json::from_str(json).ok()
            })
            .collect();
        Ok(merge(slices.iter().map(Vec::as_slice)))
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let mut del = redis::cmd("DEL");
        del.arg(self.key(tenant));
        // Bounded like a script call, as it always was.
        self.scope
            .cmd_within("publish rates purge", SCRIPT_TIMEOUT, &del)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::redis::test_support::{Namespace, breaker};

    #[tokio::test]
    async fn redis_board_passes_the_conformance_suite_across_two_hosts() {
        let ns = Namespace::new();
        let board = RedisRateBoard::new(ns.conn().await, ns.name(), breaker());
        super::super::conformance(&board).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }
}
