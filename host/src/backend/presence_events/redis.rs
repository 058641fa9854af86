//! The presence-event outbox in Redis, shared by a fleet.
//!
//! # Layout (every name built by [`TenantKeys`], so all in the tenant's slot)
//!
//! - `P pev:due`: sorted set subject → due time (ms, Redis clock);
//! - `P pev:ver`: hash subject → mark version;
//! - `P pev:state`: hash subject → `1` for subjects whose delivered state
//!   is `true` (online / occupied), `1?` / `0?` for a begun, unsettled one.
//!
//! Subjects are [`Subject::encode`]d. Every operation is one Lua script,
//! so marks, claims and settles of several hosts never interleave; due
//! times use `redis.call('TIME')`, so hosts agree. Every call goes through
//! the shared [`CircuitBreaker`] (`Unavailable` while it is open), made
//! through the outbox's [`RedisScope`].
//!
//! [`TenantKeys`]: crate::backend::redis::keys::TenantKeys

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{
    Claimed, OutboxLimits, PresenceOutbox, Subject, check_duration, check_subject, too_many,
};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::backend::redis::{RedisScope, SCRIPT_TIMEOUT};
use crate::tenant::TenantId;

const DUE: &str = "pev:due";
const VERSIONS: &str = "pev:ver";
const STATES: &str = "pev:state";

/// The clock, shared by every script.
const PRELUDE: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function int(x)
  return string.format('%.0f', x)
end
"#;

/// KEYS due, versions. ARGV delay ms, max subjects, subjects...
/// Returns 1, or 0 (nothing marked) over the bound.
const MARK: &str = r#"
local at = int(now + tonumber(ARGV[1]))
local new = 0
for i = 3, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    new = new + 1
  end
end
if redis.call('ZCARD', KEYS[1]) + new > tonumber(ARGV[2]) then
  return 0
end
for i = 3, #ARGV do
  redis.call('HINCRBY', KEYS[2], ARGV[i], 1)
  redis.call('ZADD', KEYS[1], 'LT', at, ARGV[i])
end
return 1
"#;

/// KEYS due, versions, states. ARGV limit, lease ms. Returns subject,
/// version, state (`0`, `1`, `0?`, `1?`) for each claimed subject.
const CLAIM: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now), 'LIMIT', 0, tonumber(ARGV[1]))
local until_ = int(now + tonumber(ARGV[2]))
local out = {}
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', until_, m)
  table.insert(out, m)
  table.insert(out, redis.call('HGET', KEYS[2], m) or '0')
  table.insert(out, redis.call('HGET', KEYS[3], m) or '0')
end
return out
"#;

/// KEYS due, versions, states. ARGV subject, version, state (0/1).
const SETTLE: &str = r#"
local m = ARGV[1]
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[3], m, '1')
else
  redis.call('HDEL', KEYS[3], m)
end
if redis.call('HGET', KEYS[2], m) == ARGV[2] then
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
end
return 1
"#;

/// KEYS due. ARGV subject, delay ms.
const RETRY: &str = r#"
redis.call('ZADD', KEYS[1], 'XX', 'LT', int(now + tonumber(ARGV[2])), ARGV[1])
return 1
"#;

/// KEYS due, versions, states. Returns how many subjects and states went.
const PURGE: &str = r#"
local n = redis.call('ZCARD', KEYS[1]) + redis.call('HLEN', KEYS[3])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return n
"#;

struct Scripts {
    mark: Script,
    claim: Script,
    settle: Script,
    retry: Script,
    purge: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    Scripts {
        mark: script(MARK),
        claim: script(CLAIM),
        settle: script(SETTLE),
        retry: script(RETRY),
        purge: script(PURGE),
    }
});

/// A [`PresenceOutbox`] in Redis (see the module docs).
#[derive(Clone, Debug)]
pub struct RedisPresenceOutbox {
    scope: RedisScope,
    limits: OutboxLimits,
}

impl RedisPresenceOutbox {
    /// An outbox on `conn` under `namespace`, every command through
    /// `breaker` (the one shared by the backends on the same Redis).
    pub fn new(conn: ConnectionManager, namespace: String, breaker: Arc<CircuitBreaker>) -> Self {
        Self::with_limits(conn, namespace, breaker, OutboxLimits::default())
    }

    /// As [`RedisPresenceOutbox::new`], with `limits`.
    pub fn with_limits(
        conn: ConnectionManager,
        namespace: String,
        breaker: Arc<CircuitBreaker>,
        limits: OutboxLimits,
    ) -> Self {
        Self {
            scope: RedisScope::new(conn, namespace, breaker),
            limits,
        }
    }

    /// The due, versions and states keys of `tenant`.
    fn keys(&self, tenant: &TenantId) -> [String; 3] {
        let k = self.scope.keys(tenant);
        [k.fixed(DUE), k.fixed(VERSIONS), k.fixed(STATES)]
    }
}

/// A script reply that is not what the script returns.
fn bad_reply(what: &str, reply: &impl std::fmt::Debug) -> BackendError {
    BackendError::Other(format!("{what}: unexpected Redis script reply {reply:?}"))
}

#[async_trait]
impl PresenceOutbox for RedisPresenceOutbox {
    async fn mark(
        &self,
        tenant: &TenantId,
        subjects: &[Subject],
        delay: Duration,
    ) -> Result<(), BackendError> {
        for s in subjects {
            check_subject(s)?;
        }
        let ms = check_duration("delay", delay)?;
        if subjects.is_empty() {
            return Ok(());
        }
        let [due, versions, _] = self.keys(tenant);
        let mut inv = SCRIPTS.mark.prepare_invoke();
        inv.key(due)
            .key(versions)
            .arg(ms)
            .arg(self.limits.max_subjects_per_tenant);
        for s in subjects {
            inv.arg(s.encode());
        }
        let done: i64 = self.scope.script("presence events mark", &inv).await?;
        if done == 1 {
            Ok(())
        } else {
            Err(too_many(self.limits.max_subjects_per_tenant))
        }
    }

    async fn claim(
        &self,
        tenant: &TenantId,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, BackendError> {
        let ms = check_duration("lease", lease)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let [due, versions, states] = self.keys(tenant);
        let mut inv = SCRIPTS.claim.prepare_invoke();
        inv.key(due).key(versions).key(states).arg(limit).arg(ms);
        let what = "presence events claim";
        let reply: Vec<String> = self.scope.script(what, &inv).await?;
        if !reply.len().is_multiple_of(3) {
            return Err(bad_reply(what, &reply));
        }
        reply
            .chunks_exact(3)
            .map(|c| {
                let subject = Subject::decode(&c[0]).ok_or_else(|| bad_reply(what, &c[0]))?;
                let version = c[1].parse().map_err(|_| bad_reply(what, &c[1]))?;
                let (delivered, uncertain) = match c[2].as_str() {
                    "0" => (false, false),
                    "1" => (true, false),
                    "0?" => (false, true),
                    "1?" => (true, true),
                    other => return Err(bad_reply(what, &other)),
                };
                Ok(Claimed {
                    subject,
                    version,
                    delivered,
                    uncertain,
                })
            })
            .collect()
    }

    async fn settle(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        state: bool,
    ) -> Result<(), BackendError> {
        check_subject(&claimed.subject)?;
        let [due, versions, states] = self.keys(tenant);
        let mut inv = SCRIPTS.settle.prepare_invoke();
        inv.key(due)
            .key(versions)
            .key(states)
            .arg(claimed.subject.encode())
            .arg(claimed.version)
            .arg(u8::from(state));
        let _: i64 = self.scope.script("presence events settle", &inv).await?;
        Ok(())
    }

    async fn begin(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        state: bool,
    ) -> Result<(), BackendError> {
        check_subject(&claimed.subject)?;
        let [_, _, states] = self.keys(tenant);
        let mut cmd = redis::cmd("HSET");
        cmd.arg(states)
            .arg(claimed.subject.encode())
            .arg(if state { "1?" } else { "0?" });
        // Plain commands here are bounded like script calls, as they always were.
        let _: i64 = self
            .scope
            .cmd_within("presence events begin", SCRIPT_TIMEOUT, &cmd)
            .await?;
        Ok(())
    }

    async fn retry(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        delay: Duration,
    ) -> Result<(), BackendError> {
        check_subject(&claimed.subject)?;
        let ms = check_duration("delay", delay)?;
        let [due, _, _] = self.keys(tenant);
        let mut inv = SCRIPTS.retry.prepare_invoke();
        inv.key(due).arg(claimed.subject.encode()).arg(ms);
        let _: i64 = self.scope.script("presence events retry", &inv).await?;
        Ok(())
    }

    async fn pending(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let [due, _, _] = self.keys(tenant);
        let mut cmd = redis::cmd("ZCARD");
        cmd.arg(due);
        self.scope
            .cmd_within("presence events pending", SCRIPT_TIMEOUT, &cmd)
            .await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let [due, versions, states] = self.keys(tenant);
        let mut inv = SCRIPTS.purge.prepare_invoke();
        inv.key(due).key(versions).key(states);
        self.scope.script("presence events purge", &inv).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::presence_events::conformance;
    use crate::backend::redis::keys::TenantKeys;
    use crate::backend::redis::test_support::{Namespace, breaker, tid};

    #[tokio::test]
    async fn redis_outbox_passes_the_conformance_suite_as_two_hosts() {
        let ns = Namespace::new();
        let a = RedisPresenceOutbox::new(ns.conn().await, ns.name(), breaker());
        let b = RedisPresenceOutbox::new(ns.conn().await, ns.name(), breaker());
        conformance::suite(&a, &b).await;
    }

    #[tokio::test]
    async fn keys_stay_in_the_tenant_prefix_and_the_bound_holds() {
        let ns = Namespace::new();
        let o = RedisPresenceOutbox::with_limits(
            ns.conn().await,
            ns.name(),
            breaker(),
            OutboxLimits {
                max_subjects_per_tenant: 2,
            },
        );
        let t = tid("acme");
        let topic = |n: u32| Subject::Topic {
            topic: format!("t{n}"),
        };
        let d = Duration::from_secs(60);
        o.mark(&t, &[topic(1), topic(2)], d).await.unwrap();
        assert!(matches!(
            o.mark(&t, &[topic(3)], d).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        let prefix = TenantKeys::new(&ns.name(), &t).prefix().to_owned();
        let keys = ns.keys();
        assert!(!keys.is_empty());
        assert!(keys.iter().all(|k| k.starts_with(&prefix)), "{keys:?}");
        assert_eq!(o.purge_tenant(&t).await, Ok(2));
    }
}
