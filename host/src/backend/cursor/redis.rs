//! The Redis cursor store: the [`CursorStore`] of a fleet of host processes
//! sharing one Redis (7.0 is enough: no per-field expiry).
//!
//! # Layout (every name built by [`TenantKeys`], so all in the tenant's slot)
//!
//! With `P` = `{ns}:t:{<tenant>}:`:
//!
//! - `P cursor:data:<topic>`: hash entry key → data;
//! - `P cursor:live:<topic>`: sorted set entry key → deadline (ms);
//! - `P cursor:topics`: sorted set topic → the latest deadline of its
//!   entries (the tenant's topic count, and what `purge_tenant` walks).
//!
//! Each key carries a `PEXPIRE` to its latest deadline, so a topic (and
//! the index) whose entries are all dead vanishes by itself, e.g. after
//! every instance writing to it crashed. A write to a topic drops its dead
//! entries, and drops dead topics from the index.
//!
//! # Scripts
//!
//! `update`, `remove`, `snapshot` and `purge_tenant` (per batch) are each
//! one Lua script (`EVALSHA`), atomic across the fleet. Deadlines use the
//! Redis clock (`redis.call('TIME')`), so hosts agree. Keys `purge_tenant`
//! derives from the index are not declared in `KEYS`; they share the
//! tenant's hash tag, so they are in the same Redis Cluster slot.
//!
//! # Outages
//!
//! Every call goes through the shared [`CircuitBreaker`] via the store's
//! [`RedisScope`], bounded by [`SCRIPT_TIMEOUT`] (`Timeout`); connection
//! errors are `Unavailable`; while the breaker is broken every call fails
//! fast with `Unavailable("Redis circuit breaker open")` (the host skips cursor writes then, as the seeds do).
//!
//! [`TenantKeys`]: crate::backend::redis::keys::TenantKeys
//! [`SCRIPT_TIMEOUT`]: crate::backend::redis::SCRIPT_TIMEOUT

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{
    CursorEntry, CursorLimits, CursorStore, check_name, check_update, too_many_entries,
    too_many_topics,
};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::backend::redis::RedisScope;
use crate::tenant::TenantId;

/// Topics one `purge_tenant` script run removes.
pub const PURGE_BATCH: usize = 64;

/// Script runs one `purge_tenant` takes at most (while writes keep coming).
const MAX_PURGE_ROUNDS: usize = 10_000;

const DATA: &str = "cursor:data";
const LIVE: &str = "cursor:live";
const TOPICS: &str = "cursor:topics";

/// Shared by every script: the clock and small helpers.
const PRELUDE: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- An integer as a decimal string (never exponent notation).
local function int(x)
  return string.format('%.0f', x)
end

local now_s = int(now)
-- The lower bound of live deadlines (exclusive).
local live_from = '(' .. now_s

-- The highest score of a sorted set, or nil.
local function top(zset)
  local t = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if #t == 0 then return nil end
  return tonumber(t[2])
end

-- After a topic's entries changed: file it in the index under its latest
-- deadline and expire its keys then, or, with no live entry, remove it.
local function settle(data, live, topics, topic)
  local last = top(live)
  if not last or last <= now then
    redis.call('DEL', data, live)
    redis.call('ZREM', topics, topic)
    return
  end
  redis.call('ZADD', topics, int(last), topic)
  redis.call('PEXPIRE', data, int(last - now))
  redis.call('PEXPIRE', live, int(last - now))
  local index_last = top(topics)
  if index_last and index_last > now then
    redis.call('PEXPIRE', topics, int(index_last - now))
  end
end
"#;

/// KEYS data, live, topics. ARGV topic, key, data, ttl ms, max entries per
/// topic, max topics per tenant. Returns 'ok', 'entries' or 'topics'.
const UPDATE: &str = r#"
local data, live, topics = KEYS[1], KEYS[2], KEYS[3]
local topic, key = ARGV[1], ARGV[2]
redis.call('ZREMRANGEBYSCORE', topics, '-inf', now_s)
local dead = redis.call('ZRANGEBYSCORE', live, '-inf', now_s)
for _, k in ipairs(dead) do
  redis.call('HDEL', data, k)
end
redis.call('ZREMRANGEBYSCORE', live, '-inf', now_s)
if not redis.call('ZSCORE', live, key) then
  local refusal = nil
  if redis.call('ZCARD', live) + 1 > tonumber(ARGV[5]) then
    refusal = 'entries'
  elseif not redis.call('ZSCORE', topics, topic)
      and redis.call('ZCARD', topics) + 1 > tonumber(ARGV[6]) then
    refusal = 'topics'
  end
  if refusal then
    settle(data, live, topics, topic)
    return refusal
  end
end
redis.call('HSET', data, key, ARGV[3])
redis.call('ZADD', live, int(now + tonumber(ARGV[4])), key)
settle(data, live, topics, topic)
return 'ok'
"#;

/// KEYS data, live, topics. ARGV topic, key. Returns 1 if the entry was
/// live, else 0.
const REMOVE: &str = r#"
local data, live, topics = KEYS[1], KEYS[2], KEYS[3]
local at = redis.call('ZSCORE', live, ARGV[2])
if not at then
  return 0
end
redis.call('HDEL', data, ARGV[2])
redis.call('ZREM', live, ARGV[2])
settle(data, live, topics, ARGV[1])
if tonumber(at) > now then
  return 1
end
return 0
"#;

/// KEYS data, live. ARGV max entries. Returns key, data, key, data, ... of
/// the live entries (unordered).
const SNAPSHOT: &str = r#"
local data, live = KEYS[1], KEYS[2]
local ks = redis.call('ZRANGEBYSCORE', live, live_from, '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, k in ipairs(ks) do
  local v = redis.call('HGET', data, k)
  if v then
    table.insert(out, k)
    table.insert(out, v)
  end
end
return out
"#;

/// KEYS topics. ARGV data prefix, live prefix, batch. Returns {live
/// entries removed, topics left}.
const PURGE: &str = r#"
local topics = KEYS[1]
local data_p, live_p = ARGV[1], ARGV[2]
local page = redis.call('ZRANGE', topics, 0, tonumber(ARGV[3]) - 1)
local removed = 0
for _, topic in ipairs(page) do
  local live = live_p .. topic
  removed = removed + redis.call('ZCOUNT', live, live_from, '+inf')
  redis.call('DEL', data_p .. topic, live)
  redis.call('ZREM', topics, topic)
end
return {removed, redis.call('ZCARD', topics)}
"#;

/// The scripts, hashed once per process.
struct Scripts {
    update: Script,
    remove: Script,
    snapshot: Script,
    purge: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    Scripts {
        update: script(UPDATE),
        remove: script(REMOVE),
        snapshot: script(SNAPSHOT),
        purge: script(PURGE),
    }
});

/// A [`CursorStore`] in Redis, shared by every host process on the same
/// Redis and namespace (see the module docs for the layout and scripts).
#[derive(Clone, Debug)]
pub struct RedisCursors {
    scope: RedisScope,
    limits: CursorLimits,
}

impl RedisCursors {
    /// A store on `conn` under `namespace` (`[a-z0-9_-]`, checked by the
    /// config), calling through `breaker` (shared with the other backends
    /// on the same Redis), with the default [`CursorLimits`].
    pub fn new(conn: ConnectionManager, namespace: String, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            scope: RedisScope::new(conn, namespace, breaker),
            limits: CursorLimits::default(),
        }
    }

    /// The same store with other limits (every host of a fleet should use
    /// the same).
    pub fn with_limits(mut self, limits: CursorLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The data hash, live set and topic index of `topic`.
    fn topic_keys(&self, tenant: &TenantId, topic: &str) -> [String; 3] {
        let keys = self.scope.keys(tenant);
        [
            keys.name(DATA, topic),
            keys.name(LIVE, topic),
            keys.fixed(TOPICS),
        ]
    }
}

#[async_trait]
impl CursorStore for RedisCursors {
    async fn update(
        &self,
        tenant: &TenantId,
        topic: &str,
        key: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let ttl_ms = check_update(topic, key, data, ttl)?;
        let [data_key, live, topics] = self.topic_keys(tenant, topic);
        let mut inv = SCRIPTS.update.prepare_invoke();
        inv.key(data_key)
            .key(live)
            .key(topics)
            .arg(topic)
            .arg(key)
            .arg(data)
            .arg(ttl_ms)
            .arg(self.limits.max_entries_per_topic)
            .arg(self.limits.max_topics_per_tenant);
        let reply: String = self.scope.script("cursor update", &inv).await?;
        match reply.as_str() {
            "ok" => Ok(()),
            "entries" => Err(too_many_entries(&self.limits)),
            "topics" => Err(too_many_topics(&self.limits)),
            _ => Err(BackendError::Other(format!(
                "cursor update: unexpected Redis script reply {reply:?}"
            ))),
        }
    }

    async fn remove(
        &self,
        tenant: &TenantId,
        topic: &str,
        key: &str,
    ) -> Result<bool, BackendError> {
        check_name("topic", topic)?;
        check_name("cursor key", key)?;
        let [data, live, topics] = self.topic_keys(tenant, topic);
        let mut inv = SCRIPTS.remove.prepare_invoke();
        inv.key(data).key(live).key(topics).arg(topic).arg(key);
        let was_live: u64 = self.scope.script("cursor remove", &inv).await?;
        Ok(was_live == 1)
    }

    async fn snapshot(
        &self,
        tenant: &TenantId,
        topic: &str,
    ) -> Result<Vec<CursorEntry>, BackendError> {
        check_name("topic", topic)?;
        let [data, live, _] = self.topic_keys(tenant, topic);
        let mut inv = SCRIPTS.snapshot.prepare_invoke();
        inv.key(data)
            .key(live)
            .arg(self.limits.max_entries_per_topic);
        let reply: Vec<String> = self.scope.script("cursor snapshot", &inv).await?;
        if !reply.len().is_multiple_of(2) {
            return Err(BackendError::Other(format!(
                "cursor snapshot: unexpected Redis script reply of {} fields",
                reply.len()
            )));
        }
        let mut out = Vec::with_capacity(reply.len() / 2);
        let mut fields = reply.into_iter();
        while let (Some(key), Some(data)) = (fields.next(), fields.next()) {
            out.push(CursorEntry { key, data });
        }
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let keys = self.scope.keys(tenant);
        let mut total = 0;
        for _ in 0..MAX_PURGE_ROUNDS {
            let mut inv = SCRIPTS.purge.prepare_invoke();
            inv.key(keys.fixed(TOPICS))
                .arg(keys.name(DATA, ""))
                .arg(keys.name(LIVE, ""))
                .arg(PURGE_BATCH);
            let (removed, left): (u64, u64) = self.scope.script("cursor purge", &inv).await?;
            total += removed;
            if left == 0 {
                return Ok(total);
            }
        }
        Err(BackendError::Unavailable(format!(
            "cursor purge: tenant {tenant} still has cursors after \
             {MAX_PURGE_ROUNDS} rounds (are they still being written?)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::backend::breaker::OPEN_MESSAGE;
    use crate::backend::cursor::conformance;
    use crate::backend::redis::SCRIPT_TIMEOUT;
    use crate::backend::redis::test_support::{
        Namespace, breaker, tid, tripping_breaker, unreachable_conn,
    };

    async fn store(ns: &Namespace) -> RedisCursors {
        RedisCursors::new(ns.conn().await, ns.name(), breaker())
    }

    const LONG: Duration = Duration::from_secs(60);

    async fn pttl(ns: &Namespace, key: &str) -> i64 {
        let mut conn = ns.conn().await;
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn redis_cursors_pass_the_conformance_suite() {
        let ns = Namespace::new();
        conformance::suite(&store(&ns).await).await;
        assert_eq!(ns.keys(), Vec::<String>::new(), "the suite left keys");
    }

    #[tokio::test]
    async fn redis_cursors_pass_the_limits_suite() {
        let ns = Namespace::new();
        let s = store(&ns).await.with_limits(conformance::SUITE_LIMITS);
        conformance::limits_suite(&s).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Two stores with their own connections: two hosts of a fleet.
    #[tokio::test]
    async fn two_redis_stores_are_two_hosts() {
        let ns = Namespace::new();
        let (a, b) = (store(&ns).await, store(&ns).await);
        conformance::two_hosts(&a, &b).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Every key is one of the documented names under the tenant's prefix,
    /// whatever the topic and key contain; keys expire with their latest
    /// entry and vanish when emptied.
    #[tokio::test]
    async fn keys_stay_inside_the_tenant_prefix_and_expire() {
        let ns = Namespace::new();
        let s = store(&ns).await;
        let t = tid("acme");
        let topic = "}:t:{other}:cursor:data:x";
        s.update(&t, topic, "}{:t:{other}", "{}", Duration::from_secs(10))
            .await
            .unwrap();
        s.update(&t, topic, "k", "{}", Duration::from_secs(20))
            .await
            .unwrap();
        let prefix = format!("{}:t:{{acme}}:", ns.name());
        let mut expected = vec![
            format!("{prefix}cursor:data:{topic}"),
            format!("{prefix}cursor:live:{topic}"),
            format!("{prefix}cursor:topics"),
        ];
        expected.sort();
        assert_eq!(ns.keys(), expected);
        assert!(
            ns.keys()
                .iter()
                .all(|k| crate::backend::redis::keys::tenant_of(&ns.name(), k) == Some(t.clone()))
        );
        // Every key lives until the latest deadline (20 s), not longer.
        for key in &expected {
            let ttl = pttl(&ns, key).await;
            assert!((19_000..=20_000).contains(&ttl), "{key}: {ttl}");
        }
        // Removing the latest entry shortens the topic's life.
        assert!(s.remove(&t, topic, "k").await.unwrap());
        let ttl = pttl(&ns, &expected[0]).await;
        assert!((9_000..=10_000).contains(&ttl), "{ttl}");
        assert!(s.remove(&t, topic, "}{:t:{other}").await.unwrap());
        assert_eq!(ns.keys(), Vec::<String>::new(), "keys vanish when empty");
    }

    /// A topic whose every writer crashed vanishes from Redis by itself.
    #[tokio::test]
    async fn dead_topics_vanish_by_themselves() {
        let ns = Namespace::new();
        let s = store(&ns).await;
        let t = tid("acme");
        for k in ["a", "b", "c"] {
            s.update(&t, "canvas", k, "{}", Duration::from_millis(100))
                .await
                .unwrap();
        }
        assert_eq!(ns.keys().len(), 3);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
        assert_eq!(s.purge_tenant(&t).await, Ok(0));
    }

    /// An open breaker fails every call fast, without touching Redis.
    #[tokio::test]
    async fn open_breaker_fails_fast() {
        let ns = Namespace::new();
        let shared = tripping_breaker();
        let s = RedisCursors::new(ns.conn().await, ns.name(), Arc::clone(&shared));
        let t = tid("acme");
        s.update(&t, "canvas", "k", "1", LONG).await.unwrap();
        shared.failure();
        let open = BackendError::Unavailable(OPEN_MESSAGE.into());
        let started = Instant::now();
        assert_eq!(
            s.update(&t, "canvas", "k", "2", LONG).await,
            Err(open.clone())
        );
        assert_eq!(s.remove(&t, "canvas", "k").await, Err(open.clone()));
        assert_eq!(s.snapshot(&t, "canvas").await, Err(open.clone()));
        assert_eq!(s.purge_tenant(&t).await, Err(open));
        assert!(started.elapsed() < Duration::from_millis(50));
        // Nothing reached Redis: the first write is still there.
        shared.reset();
        assert_eq!(
            s.snapshot(&t, "canvas").await,
            Ok(vec![CursorEntry {
                key: "k".into(),
                data: "1".into()
            }])
        );
        assert_eq!(s.purge_tenant(&t).await, Ok(1));
    }

    /// A Redis that does not answer is an error, not a hang.
    #[tokio::test]
    async fn unreachable_redis_is_an_error() {
        let lazy = unreachable_conn().await;
        let s = RedisCursors::new(lazy, "tenantry-test-unreachable".into(), breaker());
        let started = Instant::now();
        let err = s
            .update(&tid("acme"), "canvas", "k", "{}", LONG)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::Unavailable(_) | BackendError::Timeout),
            "{err:?}"
        );
        assert!(started.elapsed() < SCRIPT_TIMEOUT + Duration::from_secs(1));
    }
}
