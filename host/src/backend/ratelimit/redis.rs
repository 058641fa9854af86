//! The Redis rate limiter: buckets shared by every host process on the same
//! Redis and namespace, so a limit holds across the fleet.
//!
//! # Layout
//!
//! One hash per stored key, `{ns}:t:{<tenant>}:rl:<key>` (built by
//! [`TenantKeys`]), with fields `lvl` (units in the bucket at `ts`), `ts`
//! (Redis server time in ms), `pt` and `iv` (the rule's points and interval
//! in ms that `lvl` was computed with) and `bu` (ban end in ms, only while
//! banned). A ban of a key with a full bucket has only `bu`. The hash
//! carries a `PEXPIRE` to the moment its bucket is full again and any ban
//! over, so idle keys vanish by themselves; a full, unbanned bucket is
//! deleted instead of stored.
//!
//! # Scripts
//!
//! `consume`, `ban` and `unban` are one Lua script each (`EVALSHA`): one
//! atomic round trip per call, so parallel consumes from any number of
//! hosts never take more tokens than the bucket holds. The scripts read the
//! time with `redis.call('TIME')`, never a host clock, so hosts agree. The
//! arithmetic is exactly [`super::memory`]'s (integers below 2^53).
//!
//! # Outages
//!
//! Every command goes through the shared [`CircuitBreaker`]: while it is
//! open, or Redis does not answer, `consume` returns `Err` (`Unavailable`
//! or `Timeout`) and the caller fails closed (refuses).
//!
//! Redis calls go through the [`RedisScope`] every Redis store holds.
//!
//! [`TenantKeys`]: crate::backend::redis::keys::TenantKeys

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{Consume, NEVER, RateDecision, RateLimitRule, RateLimiter, check_ban, check_key};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::backend::redis::RedisScope;
use crate::tenant::TenantId;

/// The kind (key segment) of rate limit buckets.
const KIND: &str = "rl";

/// Shared by the scripts: the clock and the bucket arithmetic of
/// [`super::memory::level_at`] and [`super::memory::full_in`].
const PRELUDE: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- An integer as a decimal string (never exponent notation).
local function int(x)
  return string.format('%.0f', x)
end

-- The level at `now` of a bucket stored as (lvl, ts, siv) under `points`
-- per `iv` ms; nil lvl is a full bucket.
local function level_at(lvl, ts, siv, points, iv)
  local cap = points * iv
  if not lvl then
    return cap
  end
  if siv and siv ~= iv and siv ~= 0 then
    lvl = math.floor(lvl / siv * iv)
  end
  local elapsed = now - ts
  if elapsed < 0 then
    elapsed = 0
  end
  if elapsed > iv then
    elapsed = iv
  end
  return math.min(math.min(lvl, cap) + elapsed * points, cap)
end

local function full_in(lvl, points, iv)
  local missing = points * iv - lvl
  if missing <= 0 then
    return 0
  end
  return math.ceil(missing / points)
end
"#;

/// KEYS[1] the bucket. ARGV points, interval ms, block ms, cost.
/// Returns {allowed 0/1, remaining, retry after ms (-1: never), reset ms}.
const CONSUME: &str = r#"
local key = KEYS[1]
local points, iv = tonumber(ARGV[1]), tonumber(ARGV[2])
local block, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', key, 'lvl', 'ts', 'pt', 'iv', 'bu')
local banned_until = tonumber(s[5]) or 0
if banned_until > now then
  return {0, 0, banned_until - now, banned_until - now}
end
local lvl = level_at(tonumber(s[1]), tonumber(s[2]), tonumber(s[4]), points, iv)
local allowed, remaining, retry, reset = 0, 0, 0, 0
banned_until = 0
local need = cost * iv
if cost > points then
  remaining, retry, reset = math.floor(lvl / iv), -1, full_in(lvl, points, iv)
elseif lvl >= need then
  lvl = lvl - need
  allowed, remaining, reset = 1, math.floor(lvl / iv), full_in(lvl, points, iv)
elseif block > 0 then
  banned_until = now + block
  retry, reset = block, block
else
  remaining = math.floor(lvl / iv)
  retry, reset = math.ceil((need - lvl) / points), full_in(lvl, points, iv)
end
local keep = full_in(lvl, points, iv)
if banned_until - now > keep then
  keep = banned_until - now
end
if keep <= 0 then
  redis.call('DEL', key)
else
  redis.call('HSET', key, 'lvl', int(lvl), 'ts', int(now), 'pt', int(points), 'iv', int(iv))
  if banned_until > 0 then
    redis.call('HSET', key, 'bu', int(banned_until))
  else
    redis.call('HDEL', key, 'bu')
  end
  redis.call('PEXPIRE', key, int(keep))
end
return {allowed, remaining, retry, reset}
"#;

/// KEYS[1] the bucket. ARGV ban ms. The bucket is kept; the key lives at
/// least until the ban ends.
const BAN: &str = r#"
local key, ms = KEYS[1], tonumber(ARGV[1])
redis.call('HSET', key, 'bu', int(now + ms))
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('PEXPIRE', key, int(ms))
end
return 1
"#;

/// KEYS[1] the bucket. Ends the ban; a key left full is deleted, else its
/// expiry is set to when its bucket is full again.
const UNBAN: &str = r#"
local key = KEYS[1]
local s = redis.call('HMGET', key, 'lvl', 'ts', 'pt', 'iv')
redis.call('HDEL', key, 'bu')
local lvl = tonumber(s[1])
if not lvl then
  redis.call('DEL', key)
  return 0
end
local points, iv = tonumber(s[3]), tonumber(s[4])
local keep = full_in(level_at(lvl, tonumber(s[2]), iv, points, iv), points, iv)
if keep <= 0 then
  redis.call('DEL', key)
else
  redis.call('PEXPIRE', key, int(keep))
end
return 1
"#;

/// The scripts, hashed once per process.
struct Scripts {
    consume: Script,
    ban: Script,
    unban: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    Scripts {
        consume: script(CONSUME),
        ban: script(BAN),
        unban: script(UNBAN),
    }
});

/// A [`RateLimiter`] in Redis (see the module docs).
#[derive(Clone, Debug)]
pub struct RedisRateLimiter {
    scope: RedisScope,
}

impl RedisRateLimiter {
    /// A limiter on `conn` under `namespace` (`[a-z0-9_-]`, checked by the
    /// config), every command through `breaker` (the one shared by the
    /// backends on the same Redis).
    pub fn new(conn: ConnectionManager, namespace: String, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            scope: RedisScope::new(conn, namespace, breaker),
        }
    }

    /// The breaker every command of this limiter goes through.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        self.scope.breaker()
    }

    fn bucket(&self, tenant: &TenantId, key: &str) -> String {
        self.scope.keys(tenant).name(KIND, key)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn consume(
        &self,
        tenant: &TenantId,
        key: &str,
        rule: RateLimitRule,
        cost: u32,
    ) -> Result<RateDecision, BackendError> {
        let c = Consume::check(key, rule, cost)?;
        let mut inv = SCRIPTS.consume.prepare_invoke();
        inv.key(self.bucket(tenant, key))
            .arg(c.points)
            .arg(c.interval_ms)
            .arg(c.block_ms)
            .arg(c.cost);
        let reply: Vec<i64> = self.scope.script("rate limit consume", &inv).await?;
        let bad = || BackendError::Other(format!("rate limit consume: unexpected reply {reply:?}"));
        let &[allowed, remaining, retry, reset] = reply.as_slice() else {
            return Err(bad());
        };
        let ms = |v: i64| u64::try_from(v).map_err(|_| bad());
        Ok(RateDecision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).map_err(|_| bad())?,
            retry_after_ms: if retry == -1 { NEVER } else { ms(retry)? },
            reset_ms: ms(reset)?,
        })
    }

    async fn reset(&self, tenant: &TenantId, key: &str) -> Result<(), BackendError> {
        check_key(key)?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.bucket(tenant, key));
        let _: u64 = self.scope.cmd("rate limit reset", &cmd).await?;
        Ok(())
    }

    async fn ban(
        &self,
        tenant: &TenantId,
        key: &str,
        duration: Duration,
    ) -> Result<(), BackendError> {
        let ms = check_ban(key, duration)?;
        let mut inv = SCRIPTS.ban.prepare_invoke();
        inv.key(self.bucket(tenant, key)).arg(ms);
        let _: i64 = self.scope.script("rate limit ban", &inv).await?;
        Ok(())
    }

    async fn unban(&self, tenant: &TenantId, key: &str) -> Result<(), BackendError> {
        check_key(key)?;
        let mut inv = SCRIPTS.unban.prepare_invoke();
        inv.key(self.bucket(tenant, key));
        let _: i64 = self.scope.script("rate limit unban", &inv).await?;
        Ok(())
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let prefix = self.scope.keys(tenant).name(KIND, "");
        self.scope
            .delete_matching("rate limit purge", &prefix)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::backend::breaker::OPEN_MESSAGE;
    use crate::backend::ratelimit::conformance;
    use crate::backend::redis::test_support::{Namespace, breaker, tid, tripping_breaker};

    async fn limiter(ns: &Namespace) -> RedisRateLimiter {
        RedisRateLimiter::new(ns.conn().await, ns.name(), breaker())
    }

    fn rule(points: u32, interval: Duration, block: Duration) -> RateLimitRule {
        RateLimitRule {
            points,
            interval,
            block,
        }
    }

    #[tokio::test]
    async fn redis_rate_limiter_passes_the_conformance_suite() {
        let ns = Namespace::new();
        let rl = limiter(&ns).await;
        conformance::suite(&rl).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Two limiters on two connections are two hosts: 20 parallel consumes
    /// against 5 points allow exactly 5, whichever host they went through.
    #[tokio::test]
    async fn a_limit_holds_across_hosts() {
        let ns = Namespace::new();
        let (a, b) = (limiter(&ns).await, limiter(&ns).await);
        conformance::parallel_consumes(&[&a, &b]).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn keys_stay_in_the_tenant_prefix_and_expire() {
        let ns = Namespace::new();
        let rl = limiter(&ns).await;
        let t = tid("acme");
        let r = rule(2, Duration::from_secs(10), Duration::ZERO);
        let evil = "}:t:{other}:rl:x";
        rl.consume(&t, evil, r, 1).await.unwrap();
        rl.consume(&t, "plain", r, 1).await.unwrap();
        let prefix = format!("{}:t:{{acme}}:rl:", ns.name());
        let keys = ns.keys();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.iter().all(|k| k.starts_with(&prefix)), "{keys:?}");
        // Idle buckets vanish once full again: PEXPIRE to the refill
        // horizon (one token of 2 per 10 s: 5 s).
        let mut conn = ns.conn().await;
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}plain"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((4_000..=5_000).contains(&ttl), "{ttl}");
        // A full bucket is not stored at all.
        rl.reset(&t, "plain").await.unwrap();
        let d = rl.consume(&t, "full", r, 3).await.unwrap();
        assert_eq!(d.retry_after_ms, NEVER);
        assert_eq!(ns.keys().len(), 1);
        assert_eq!(rl.purge_tenant(&t).await.unwrap(), 1);
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Buckets written with one rule and read with another, and a bucket
    /// whose hash was tampered with, still give sane answers.
    #[tokio::test]
    async fn changed_rules_keep_the_tokens() {
        let ns = Namespace::new();
        let rl = limiter(&ns).await;
        let t = tid("acme");
        let minute = Duration::from_secs(60);
        for _ in 0..3 {
            rl.consume(&t, "k", rule(5, minute, Duration::ZERO), 1)
                .await
                .unwrap();
        }
        // 2 tokens left; the same tokens under an hourly interval.
        let d = rl
            .consume(&t, "k", rule(5, minute * 60, Duration::ZERO), 1)
            .await
            .unwrap();
        assert_eq!((d.allowed, d.remaining), (true, 1));
        // Fewer points: capped at the new size.
        let d = rl
            .consume(&t, "k", rule(1, minute * 60, Duration::ZERO), 1)
            .await
            .unwrap();
        assert_eq!((d.allowed, d.remaining), (true, 0));
        rl.purge_tenant(&t).await.unwrap();
    }

    #[tokio::test]
    async fn an_open_breaker_fails_closed_without_calling_redis() {
        let ns = Namespace::new();
        let shared = tripping_breaker();
        let rl = RedisRateLimiter::new(ns.conn().await, ns.name(), Arc::clone(&shared));
        let t = tid("acme");
        let r = rule(5, Duration::from_secs(60), Duration::ZERO);
        assert!(rl.consume(&t, "k", r, 1).await.unwrap().allowed);
        shared.failure();
        let started = Instant::now();
        for _ in 0..3 {
            let err = rl.consume(&t, "k", r, 1).await.unwrap_err();
            assert_eq!(err, BackendError::Unavailable(OPEN_MESSAGE.into()));
        }
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        shared.reset();
        // Nothing reached Redis while open: 4 of 5 tokens left.
        let d = rl.consume(&t, "k", r, 1).await.unwrap();
        assert_eq!(d.remaining, 3);
        rl.purge_tenant(&t).await.unwrap();
    }
}
