//! The Redis presence store: the [`PresenceStore`] of a fleet of host
//! processes sharing one Redis (7.0 is enough: no per-field expiry).
//!
//! # Layout (every name built by [`TenantKeys`], so all in the tenant's slot)
//!
//! With `P` = `{ns}:t:{<tenant>}:`:
//!
//! - `P presence:users:<topic>`: hash user key → data, one field per stored
//!   user of the topic;
//! - `P presence:live:<topic>`: sorted set user key → the latest deadline
//!   (ms) of the user's connections (which users are live, for `members`
//!   and the topic-empty answers);
//! - `P presence:conns:<topic>\n<user key>`: sorted set connection id →
//!   deadline (ms), the user's connections on the topic;
//! - `P presence:deadlines`: sorted set `<topic>\n<user key>\n<conn>` →
//!   deadline (ms), every connection of the tenant (what `expire` walks and
//!   `purge_tenant` empties);
//! - `P presence:owners`: hash `<topic>\n<user key>\n<conn>` → instance id.
//!
//! Topics and user keys never contain `'\n'` ([`check_name`]), so the
//! separators are unambiguous whatever else (`:`, `}`) they contain. Every
//! key vanishes when it would be empty.
//!
//! **Safety expiry**: every join and heartbeat that sets a deadline also
//! sets each key it touches to expire [`KEY_GRACE`] after that deadline, so
//! no key ever expires while it holds a live connection, and a living fleet
//! removes dead connections (announcing their leaves) long before. If every
//! host of a fleet is gone (or a tenant's hosts no longer serve it) for that
//! long, its presence data disappears by itself instead of staying in Redis
//! forever; the users it held are then never announced as gone.
//!
//! # Scripts
//!
//! `join`, `leave`, `expire` (per batch), `heartbeat` (per tenant and
//! batch), `members` and `purge_tenant` (per batch) are each one Lua script
//! (`EVALSHA`), so every step is atomic across the fleet: of two hosts
//! expiring at once, each departure is reported by the one whose script
//! removed the user's last connection. Deadlines use the Redis clock
//! (`redis.call('TIME')`), so hosts agree. Keys a script derives from a
//! deadlines entry are not declared in `KEYS`; they share the tenant's hash
//! tag, so they are in the same Redis Cluster slot as the declared keys.
//!
//! # Outages
//!
//! Every call goes through the shared [`CircuitBreaker`] (by the store's
//! [`RedisScope`]); a call is bounded by [`CALL_TIMEOUT`] (`Timeout`);
//! connection errors are `Unavailable`; while the breaker is broken every
//! call fails fast with `Unavailable("Redis circuit breaker open")`.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};

use super::{
    ConnRef, Expired, Joined, Left, Member, PresenceLimits, PresenceStore, check_heartbeat,
    check_join, check_name,
};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::backend::redis::keys::TenantKeys;
use crate::backend::redis::{RedisScope, SCRIPT_TIMEOUT};
use crate::tenant::TenantId;

/// Bound on one script call, including the reload after `NOSCRIPT`: the
/// [`SCRIPT_TIMEOUT`] every [`RedisScope::script`] call has (three
/// commands, each bounded by
/// [`COMMAND_TIMEOUT`](crate::backend::redis::COMMAND_TIMEOUT) in the
/// connection).
pub const CALL_TIMEOUT: Duration = SCRIPT_TIMEOUT;

/// Dead connections one `expire` script run removes at most.
pub const EXPIRE_BATCH: usize = 512;

/// Connections one `heartbeat` script run refreshes at most.
pub const HEARTBEAT_BATCH: usize = 256;

/// `heartbeat` script runs in flight at once (over tenants and batches).
pub const HEARTBEAT_PARALLEL: usize = 8;

/// How long a presence key outlives the latest deadline written into it
/// (see the module docs). Long enough that a fleet restarted within it
/// still expires, and announces, the users of before.
pub const KEY_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Connections one `purge_tenant` script run removes.
pub const PURGE_BATCH: usize = 256;

/// Script runs one `purge_tenant` takes at most (while joins keep coming).
const MAX_PURGE_ROUNDS: usize = 10_000;

const USERS: &str = "presence:users";
const LIVE: &str = "presence:live";
const CONNS: &str = "presence:conns";
const DEADLINES: &str = "presence:deadlines";
const OWNERS: &str = "presence:owners";

/// Shared by every script: the clock and the bookkeeping helpers.
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

local function entry(topic, user, conn)
  return topic .. '\n' .. user .. '\n' .. conn
end

-- topic, user, conn of a deadlines entry; nil if malformed.
local function split(m)
  local a = string.find(m, '\n', 1, true)
  if not a then return nil end
  local b = string.find(m, '\n', a + 1, true)
  if not b then return nil end
  return string.sub(m, 1, a - 1), string.sub(m, a + 1, b - 1), string.sub(m, b + 1)
end

-- Remove one connection from its user's set and the tenant's indexes.
local function remove_conn(deadlines, owners, conns, topic, user, conn)
  local m = entry(topic, user, conn)
  redis.call('ZREM', conns, conn)
  redis.call('ZREM', deadlines, m)
  redis.call('HDEL', owners, m)
end

-- Remove the dead connections of one user.
local function prune(deadlines, owners, conns, topic, user)
  local dead = redis.call('ZRANGEBYSCORE', conns, '-inf', now_s)
  for _, c in ipairs(dead) do
    remove_conn(deadlines, owners, conns, topic, user, c)
  end
end

-- After a user's connections changed: its live score becomes its latest
-- deadline, or, with no connection left, the user goes (data too).
local function settle(users, live, conns, user)
  local top = redis.call('ZRANGE', conns, -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('HDEL', users, user)
    redis.call('ZREM', live, user)
    return
  end
  redis.call('ZADD', live, top[2], user)
end

local function topic_live(live)
  return redis.call('ZCOUNT', live, live_from, '+inf') > 0
end

local function flag(b)
  if b then return '1' end
  return '0'
end

-- The keys given expire `keep` ms from now (the safety expiry); keys that
-- do not exist are left alone.
local function keep_keys(keep, ...)
  for _, k in ipairs({...}) do
    redis.call('PEXPIRE', k, keep)
  end
end
"#;

/// KEYS users, live, conns, deadlines, owners. ARGV topic, user, instance,
/// conn, data, ttl ms, max users per topic, max conns per user, max conns
/// per tenant, safety expiry ms. Returns {'ok', first, topic_was_empty} or
/// {refusal}.
const JOIN: &str = r#"
local users, live, conns, deadlines, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local topic, user, instance, conn, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl = tonumber(ARGV[6])
local live_conns = redis.call('ZCOUNT', conns, live_from, '+inf')
local dead_conns = redis.call('ZCOUNT', conns, '-inf', now_s)
local mine = redis.call('ZSCORE', conns, conn)
local is_new = not (mine and tonumber(mine) > now)
local was_empty = not topic_live(live)
if is_new then
  if live_conns + 1 > tonumber(ARGV[8]) then
    return {'user_conns'}
  end
  if redis.call('HEXISTS', users, user) == 0 and redis.call('HLEN', users) + 1 > tonumber(ARGV[7]) then
    return {'users'}
  end
  if redis.call('ZCARD', deadlines) - dead_conns + 1 > tonumber(ARGV[9]) then
    return {'tenant'}
  end
end
prune(deadlines, owners, conns, topic, user)
local at = int(now + ttl)
local m = entry(topic, user, conn)
redis.call('ZADD', conns, at, conn)
redis.call('ZADD', deadlines, at, m)
redis.call('HSET', owners, m, instance)
redis.call('HSET', users, user, data)
settle(users, live, conns, user)
keep_keys(ARGV[10], users, live, conns, deadlines, owners)
return {'ok', flag(live_conns == 0), flag(was_empty)}
"#;

/// KEYS users, live, conns, deadlines, owners. ARGV topic, user, conn.
/// Returns {last, topic_now_empty, data or nil}.
const LEAVE: &str = r#"
local users, live, conns, deadlines, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local topic, user, conn = ARGV[1], ARGV[2], ARGV[3]
local last, data = false, false
if redis.call('ZSCORE', conns, conn) then
  remove_conn(deadlines, owners, conns, topic, user, conn)
  prune(deadlines, owners, conns, topic, user)
  if redis.call('ZCARD', conns) == 0 then
    last = true
    data = redis.call('HGET', users, user)
  end
  settle(users, live, conns, user)
end
return {flag(last), flag(not topic_live(live)), data}
"#;

/// KEYS deadlines, owners. ARGV users prefix, live prefix, conns prefix,
/// limit. Returns {removed, then topic, user, data, topic_now_empty for
/// every user that left}.
const EXPIRE: &str = r#"
local deadlines, owners = KEYS[1], KEYS[2]
local users_p, live_p, conns_p = ARGV[1], ARGV[2], ARGV[3]
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now_s, 'LIMIT', 0, tonumber(ARGV[4]))
local gone = {}
for _, m in ipairs(due) do
  local topic, user, conn = split(m)
  if topic then
    local conns = conns_p .. topic .. '\n' .. user
    remove_conn(deadlines, owners, conns, topic, user, conn)
    local users = users_p .. topic
    local data = false
    if redis.call('ZCARD', conns) == 0 then
      data = redis.call('HGET', users, user)
      table.insert(gone, {topic, user, data or 'null'})
    end
    settle(users, live_p .. topic, conns, user)
  else
    redis.call('ZREM', deadlines, m)
    redis.call('HDEL', owners, m)
  end
end
local out = {int(#due)}
for _, g in ipairs(gone) do
  table.insert(out, g[1])
  table.insert(out, g[2])
  table.insert(out, g[3])
  table.insert(out, flag(not topic_live(live_p .. g[1])))
end
return out
"#;

/// KEYS deadlines, owners. ARGV instance, ttl ms, live prefix, conns
/// prefix, users prefix, safety expiry ms, then topic, user, conn of each
/// connection. Returns how many were refreshed.
const HEARTBEAT: &str = r#"
local deadlines, owners = KEYS[1], KEYS[2]
local instance = ARGV[1]
local at = int(now + tonumber(ARGV[2]))
local live_p, conns_p, users_p, keep = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local refreshed = 0
for i = 7, #ARGV - 2, 3 do
  local topic, user, conn = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local m = entry(topic, user, conn)
  local current = redis.call('ZSCORE', deadlines, m)
  if current and tonumber(current) > now and redis.call('HGET', owners, m) == instance then
    local conns = conns_p .. topic .. '\n' .. user
    redis.call('ZADD', deadlines, at, m)
    redis.call('ZADD', conns, at, conn)
    local top = redis.call('ZRANGE', conns, -1, -1, 'WITHSCORES')
    redis.call('ZADD', live_p .. topic, top[2], user)
    keep_keys(keep, conns, live_p .. topic, users_p .. topic)
    refreshed = refreshed + 1
  end
end
if refreshed > 0 then
  keep_keys(keep, deadlines, owners)
end
return refreshed
"#;

/// KEYS users, live. ARGV max members. Returns user, data, user, data, ...
/// of the live users (unordered).
const MEMBERS: &str = r#"
local users, live = KEYS[1], KEYS[2]
local keys = redis.call('ZRANGEBYSCORE', live, live_from, '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, user in ipairs(keys) do
  local data = redis.call('HGET', users, user)
  if data then
    table.insert(out, user)
    table.insert(out, data)
  end
end
return out
"#;

/// KEYS deadlines, owners. ARGV users prefix, live prefix, conns prefix,
/// batch. Returns {removed, left}.
const PURGE: &str = r#"
local deadlines, owners = KEYS[1], KEYS[2]
local users_p, live_p, conns_p = ARGV[1], ARGV[2], ARGV[3]
local page = redis.call('ZRANGE', deadlines, 0, tonumber(ARGV[4]) - 1)
for _, m in ipairs(page) do
  local topic, user, conn = split(m)
  if topic then
    local conns = conns_p .. topic .. '\n' .. user
    remove_conn(deadlines, owners, conns, topic, user, conn)
    settle(users_p .. topic, live_p .. topic, conns, user)
  else
    redis.call('ZREM', deadlines, m)
    redis.call('HDEL', owners, m)
  end
end
local left = redis.call('ZCARD', deadlines)
if left == 0 then
  redis.call('DEL', owners)
end
return {#page, left}
"#;

/// The scripts, hashed once per process.
struct Scripts {
    join: Script,
    leave: Script,
    expire: Script,
    heartbeat: Script,
    members: Script,
    purge: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    Scripts {
        join: script(JOIN),
        leave: script(LEAVE),
        expire: script(EXPIRE),
        heartbeat: script(HEARTBEAT),
        members: script(MEMBERS),
        purge: script(PURGE),
    }
});

/// The Redis names of one tenant's presence data.
struct Names {
    keys: TenantKeys,
    deadlines: String,
    owners: String,
}

impl Names {
    fn new(keys: TenantKeys) -> Self {
        Self {
            deadlines: keys.fixed(DEADLINES),
            owners: keys.fixed(OWNERS),
            keys,
        }
    }

    fn users(&self, topic: &str) -> String {
        self.keys.name(USERS, topic)
    }

    fn live(&self, topic: &str) -> String {
        self.keys.name(LIVE, topic)
    }

    fn conns(&self, topic: &str, user: &str) -> String {
        self.keys.name(CONNS, &format!("{topic}\n{user}"))
    }

    /// The prefix a script appends `<topic>` (users, live) or
    /// `<topic>\n<user>` (conns) to; the same names as the methods above.
    fn prefix(&self, kind: &str) -> String {
        self.keys.name(kind, "")
    }

    /// KEYS users, live, conns, deadlines, owners of one user.
    fn user_keys(&self, inv: &mut ScriptInvocation<'_>, topic: &str, user: &str) {
        inv.key(self.users(topic))
            .key(self.live(topic))
            .key(self.conns(topic, user))
            .key(&self.deadlines)
            .key(&self.owners);
    }
}

/// A [`PresenceStore`] in Redis, shared by every host process on the same
/// Redis and namespace (see the module docs for the layout and scripts).
#[derive(Clone, Debug)]
pub struct RedisPresence {
    scope: RedisScope,
    limits: PresenceLimits,
}

impl RedisPresence {
    /// A store on `conn` under `namespace` (`[a-z0-9_-]`, checked by the
    /// config), calling through `breaker` (shared with the other backends
    /// on the same Redis), with the default [`PresenceLimits`].
    pub fn new(conn: ConnectionManager, namespace: String, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            scope: RedisScope::new(conn, namespace, breaker),
            limits: PresenceLimits::default(),
        }
    }

    /// The same store with other limits (every host of a fleet should use
    /// the same).
    pub fn with_limits(mut self, limits: PresenceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// One heartbeat script run: `conns` (at most [`HEARTBEAT_BATCH`]) of
    /// one tenant.
    async fn beat(
        &self,
        instance: &str,
        tenant: &TenantId,
        conns: &[&ConnRef],
        ttl_ms: u64,
    ) -> Result<(), BackendError> {
        let names = Names::new(self.scope.keys(tenant));
        let mut inv = SCRIPTS.heartbeat.prepare_invoke();
        inv.key(&names.deadlines)
            .key(&names.owners)
            .arg(instance)
            .arg(ttl_ms)
            .arg(names.prefix(LIVE))
            .arg(names.prefix(CONNS))
            .arg(names.prefix(USERS))
            .arg(keep_ms(ttl_ms));
        for c in conns {
            inv.arg(&c.topic).arg(&c.user_key).arg(&c.conn);
        }
        let _refreshed: u64 = self.scope.script("presence heartbeat", &inv).await?;
        Ok(())
    }
}

/// The safety expiry of keys given a deadline `ttl_ms` from now.
fn keep_ms(ttl_ms: u64) -> u64 {
    let grace = u64::try_from(KEY_GRACE.as_millis()).unwrap_or(u64::MAX);
    ttl_ms.saturating_add(grace)
}

/// A script reply that is not what the script returns.
fn bad_reply(what: &str, reply: &impl std::fmt::Debug) -> BackendError {
    BackendError::Other(format!("{what}: unexpected Redis script reply {reply:?}"))
}

fn flag(what: &str, s: &str) -> Result<bool, BackendError> {
    match s {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(bad_reply(what, &s)),
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn join(
        &self,
        tenant: &TenantId,
        topic: &str,
        user_key: &str,
        instance: &str,
        conn: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<Joined, BackendError> {
        let ttl_ms = check_join(topic, user_key, instance, conn, data, ttl)?;
        let names = Names::new(self.scope.keys(tenant));
        let mut inv = SCRIPTS.join.prepare_invoke();
        names.user_keys(&mut inv, topic, user_key);
        inv.arg(topic)
            .arg(user_key)
            .arg(instance)
            .arg(conn)
            .arg(data)
            .arg(ttl_ms)
            .arg(self.limits.max_users_per_topic)
            .arg(self.limits.max_conns_per_user)
            .arg(self.limits.max_conns_per_tenant)
            .arg(keep_ms(ttl_ms));
        let reply: Vec<String> = self.scope.script("presence join", &inv).await?;
        match reply.as_slice() {
            [ok, first, empty] if ok == "ok" => Ok(Joined {
                first: flag("presence join", first)?,
                topic_was_empty: flag("presence join", empty)?,
            }),
            [refusal] if refusal == "user_conns" => Err(BackendError::QuotaExceeded(format!(
                "a user may hold {} connections on a topic",
                self.limits.max_conns_per_user
            ))),
            [refusal] if refusal == "users" => Err(BackendError::QuotaExceeded(format!(
                "a topic may hold {} present users",
                self.limits.max_users_per_topic
            ))),
            [refusal] if refusal == "tenant" => Err(BackendError::QuotaExceeded(format!(
                "a tenant may hold {} presence connections",
                self.limits.max_conns_per_tenant
            ))),
            _ => Err(bad_reply("presence join", &reply)),
        }
    }

    async fn leave(
        &self,
        tenant: &TenantId,
        topic: &str,
        user_key: &str,
        conn: &str,
    ) -> Result<Left, BackendError> {
        check_name("topic", topic)?;
        check_name("user key", user_key)?;
        check_name("connection id", conn)?;
        let names = Names::new(self.scope.keys(tenant));
        let mut inv = SCRIPTS.leave.prepare_invoke();
        names.user_keys(&mut inv, topic, user_key);
        inv.arg(topic).arg(user_key).arg(conn);
        let (last, empty, data): (String, String, Option<String>) =
            self.scope.script("presence leave", &inv).await?;
        let last = flag("presence leave", &last)?;
        if last != data.is_some() {
            return Err(bad_reply("presence leave", &(last, data)));
        }
        Ok(Left {
            last,
            data,
            topic_now_empty: flag("presence leave", &empty)?,
        })
    }

    async fn members(&self, tenant: &TenantId, topic: &str) -> Result<Vec<Member>, BackendError> {
        check_name("topic", topic)?;
        let names = Names::new(self.scope.keys(tenant));
        let mut inv = SCRIPTS.members.prepare_invoke();
        inv.key(names.users(topic))
            .key(names.live(topic))
            .arg(self.limits.max_users_per_topic);
        let reply: Vec<String> = self.scope.script("presence members", &inv).await?;
        if !reply.len().is_multiple_of(2) {
            return Err(bad_reply("presence members", &reply.len()));
        }
        let mut members: Vec<Member> = Vec::with_capacity(reply.len() / 2);
        let mut fields = reply.into_iter();
        while let (Some(key), Some(data)) = (fields.next(), fields.next()) {
            members.push(Member { key, data });
        }
        members.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(members)
    }

    async fn heartbeat(
        &self,
        instance: &str,
        conns: &[ConnRef],
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let ttl_ms = check_heartbeat(instance, conns, ttl)?;
        let mut by_tenant: BTreeMap<&TenantId, Vec<&ConnRef>> = BTreeMap::new();
        for c in conns {
            by_tenant.entry(&c.tenant).or_default().push(c);
        }
        let mut jobs: Vec<(&TenantId, &[&ConnRef])> = Vec::new();
        for (tenant, conns) in &by_tenant {
            for chunk in conns.chunks(HEARTBEAT_BATCH) {
                jobs.push((tenant, chunk));
            }
        }
        futures_util::stream::iter(jobs.into_iter().map(Ok))
            .try_for_each_concurrent(HEARTBEAT_PARALLEL, |(tenant, chunk)| {
                self.beat(instance, tenant, chunk, ttl_ms)
            })
            .await
    }

    async fn expire(&self, tenant: &TenantId, limit: usize) -> Result<Vec<Expired>, BackendError> {
        let names = Names::new(self.scope.keys(tenant));
        let mut gone = Vec::new();
        let mut remaining = limit;
        while remaining > 0 {
            let batch = remaining.min(EXPIRE_BATCH);
            let mut inv = SCRIPTS.expire.prepare_invoke();
            inv.key(&names.deadlines)
                .key(&names.owners)
                .arg(names.prefix(USERS))
                .arg(names.prefix(LIVE))
                .arg(names.prefix(CONNS))
                .arg(batch);
            let reply: Vec<String> = self.scope.script("presence expire", &inv).await?;
            let Some((removed, rest)) = reply.split_first() else {
                return Err(bad_reply("presence expire", &reply));
            };
            let removed: usize = removed
                .parse()
                .map_err(|_| bad_reply("presence expire", &reply))?;
            if !rest.len().is_multiple_of(4) || removed > batch {
                return Err(bad_reply("presence expire", &reply));
            }
            for g in rest.chunks_exact(4) {
                gone.push(Expired {
                    topic: g[0].clone(),
                    user_key: g[1].clone(),
                    data: g[2].clone(),
                    topic_now_empty: flag("presence expire", &g[3])?,
                });
            }
            if removed < batch {
                break;
            }
            remaining -= batch;
        }
        Ok(gone)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let names = Names::new(self.scope.keys(tenant));
        let mut total = 0;
        for _ in 0..MAX_PURGE_ROUNDS {
            let mut inv = SCRIPTS.purge.prepare_invoke();
            inv.key(&names.deadlines)
                .key(&names.owners)
                .arg(names.prefix(USERS))
                .arg(names.prefix(LIVE))
                .arg(names.prefix(CONNS))
                .arg(PURGE_BATCH);
            let (removed, left): (u64, u64) = self.scope.script("presence purge", &inv).await?;
            total += removed;
            if left == 0 {
                return Ok(total);
            }
        }
        Err(BackendError::Unavailable(format!(
            "presence purge: tenant {tenant} still has connections after \
             {MAX_PURGE_ROUNDS} rounds (is it still joining?)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use futures_util::future::join_all;

    use super::*;
    use crate::backend::breaker::OPEN_MESSAGE;
    use crate::backend::presence::conformance;
    use crate::backend::redis::test_support::{
        Namespace, breaker, tid, tripping_breaker, unreachable_conn,
    };

    async fn store(ns: &Namespace) -> RedisPresence {
        RedisPresence::new(ns.conn().await, ns.name(), breaker())
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn redis_presence_passes_the_conformance_suite() {
        let ns = Namespace::new();
        conformance::suite(&store(&ns).await).await;
        assert_eq!(ns.keys(), Vec::<String>::new(), "the suite left keys");
    }

    /// Every presence key carries the safety expiry: past the deadline of
    /// the connections it holds, at most [`KEY_GRACE`] after it; a
    /// heartbeat moves it on.
    #[tokio::test]
    async fn presence_keys_expire_by_themselves_after_the_grace() {
        let ns = Namespace::new();
        let s = store(&ns).await;
        let t = tid("acme");
        s.join(&t, "hall", "ann", "h1", "c1", "{}", LONG)
            .await
            .unwrap();
        let mut conn = ns.conn().await;
        let grace = u64::try_from(KEY_GRACE.as_millis()).unwrap();
        let long = u64::try_from(LONG.as_millis()).unwrap();
        let after_join = key_ttls(&ns, &mut conn).await;
        assert_eq!(after_join.len(), 5, "{after_join:?}");
        for (key, ttl) in &after_join {
            let ttl = u64::try_from(*ttl).unwrap_or(0);
            assert!(ttl > long && ttl <= long + grace, "{key}: {ttl}");
        }
        // A heartbeat with a longer deadline pushes every key further.
        let refs = [ConnRef {
            tenant: t.clone(),
            topic: "hall".into(),
            user_key: "ann".into(),
            conn: "c1".into(),
        }];
        s.heartbeat("h1", &refs, LONG * 10).await.unwrap();
        for (key, ttl) in key_ttls(&ns, &mut conn).await {
            let ttl = u64::try_from(ttl).unwrap_or(0);
            assert!(ttl > long * 10, "{key}: {ttl}");
        }
        s.purge_tenant(&t).await.unwrap();
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Every key of `ns` with its `PTTL`.
    async fn key_ttls(ns: &Namespace, conn: &mut ConnectionManager) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for key in ns.keys() {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(conn)
                .await
                .unwrap();
            out.push((key, ttl));
        }
        out
    }

    /// Two stores with their own connections: two hosts of a fleet.
    #[tokio::test]
    async fn two_redis_presences_are_two_hosts() {
        let ns = Namespace::new();
        let (a, b) = (store(&ns).await, store(&ns).await);
        conformance::two_hosts(&a, &b).await;

        // 100 joins spread over both hosts at once lose nothing.
        let t = tid("acme");
        let users: Vec<String> = (0..100).map(|i| format!("user-{i:03}")).collect();
        let joins = join_all(users.iter().enumerate().map(|(i, u)| {
            let (s, instance) = if i % 2 == 0 { (&a, "a") } else { (&b, "b") };
            let t = &t;
            async move {
                s.join(
                    t,
                    "hall",
                    u,
                    instance,
                    &format!("{instance}:{u}"),
                    "{}",
                    LONG,
                )
                .await
                .unwrap()
            }
        }))
        .await;
        assert_eq!(joins.iter().filter(|j| j.topic_was_empty).count(), 1);
        let keys: Vec<String> = b
            .members(&t, "hall")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, users);
        assert_eq!(a.purge_tenant(&t).await.unwrap(), 100);
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn redis_presence_passes_the_limits_suite() {
        let ns = Namespace::new();
        let s = store(&ns).await.with_limits(conformance::SUITE_LIMITS);
        conformance::limits_suite(&s).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Every key is one of the documented names under the tenant's
    /// prefix, whatever the topic and user key contain, and every key
    /// vanishes with the last connection.
    #[tokio::test]
    async fn keys_stay_inside_the_tenant_prefix() {
        let ns = Namespace::new();
        let s = store(&ns).await;
        let t = tid("acme");
        let topic = "}:t:{other}:presence:users:x";
        let user = "}{:t:{other}";
        s.join(&t, topic, user, "i", "c1", "{}", LONG)
            .await
            .unwrap();
        s.join(&t, "plain", "bob", "i", "c2", "{}", LONG)
            .await
            .unwrap();
        let prefix = format!("{}:t:{{acme}}:", ns.name());
        let mut expected = vec![
            format!("{prefix}presence:users:{topic}"),
            format!("{prefix}presence:live:{topic}"),
            format!("{prefix}presence:conns:{topic}\n{user}"),
            format!("{prefix}presence:users:plain"),
            format!("{prefix}presence:live:plain"),
            format!("{prefix}presence:conns:plain\nbob"),
            format!("{prefix}presence:deadlines"),
            format!("{prefix}presence:owners"),
        ];
        expected.sort();
        assert_eq!(ns.keys(), expected);
        assert!(
            ns.keys()
                .iter()
                .all(|k| crate::backend::redis::keys::tenant_of(&ns.name(), k) == Some(t.clone()))
        );
        assert!(s.leave(&t, topic, user, "c1").await.unwrap().last);
        assert!(s.leave(&t, "plain", "bob", "c2").await.unwrap().last);
        assert_eq!(ns.keys(), Vec::<String>::new(), "keys vanish when empty");
    }

    /// A dead connection is removed by `expire` even when its topic's and
    /// user's keys were built from names with separators.
    #[tokio::test]
    async fn expire_parses_entries_with_separators() {
        let ns = Namespace::new();
        let s = store(&ns).await;
        let t = tid("acme");
        let ttl = Duration::from_millis(50);
        s.join(&t, "a:b", "c:d", "i", "e\rf:g", "\"x\"", ttl)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let gone = s.expire(&t, 10).await.unwrap();
        assert_eq!(
            gone,
            vec![Expired {
                topic: "a:b".into(),
                user_key: "c:d".into(),
                data: "\"x\"".into(),
                topic_now_empty: true,
            }]
        );
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// An open breaker fails every call fast, without touching Redis.
    #[tokio::test]
    async fn open_breaker_fails_fast() {
        let ns = Namespace::new();
        let shared = tripping_breaker();
        let s = RedisPresence::new(ns.conn().await, ns.name(), Arc::clone(&shared));
        let t = tid("acme");
        s.join(&t, "room", "u", "i", "c", "{}", LONG).await.unwrap();
        shared.failure();
        let open = BackendError::Unavailable(OPEN_MESSAGE.into());
        let started = Instant::now();
        assert_eq!(
            s.join(&t, "room", "v", "i", "c2", "{}", LONG).await,
            Err(open.clone())
        );
        assert_eq!(s.leave(&t, "room", "u", "c").await, Err(open.clone()));
        assert_eq!(s.members(&t, "room").await, Err(open.clone()));
        let refs = [ConnRef {
            tenant: t.clone(),
            topic: "room".into(),
            user_key: "u".into(),
            conn: "c".into(),
        }];
        assert_eq!(s.heartbeat("i", &refs, LONG).await, Err(open.clone()));
        assert_eq!(s.expire(&t, 10).await, Err(open.clone()));
        assert_eq!(s.purge_tenant(&t).await, Err(open));
        assert!(started.elapsed() < Duration::from_millis(50));
        // Nothing reached Redis: the one join is still all there is.
        shared.reset();
        let members = s.members(&t, "room").await.unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(s.purge_tenant(&t).await, Ok(1));
    }

    /// A Redis that does not answer is an error, not a hang.
    #[tokio::test]
    async fn unreachable_redis_is_an_error() {
        let lazy = unreachable_conn().await;
        let s = RedisPresence::new(lazy, "tenantry-test-unreachable".into(), breaker());
        let started = Instant::now();
        let err = s
            .join(&tid("acme"), "room", "u", "i", "c", "{}", LONG)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::Unavailable(_) | BackendError::Timeout),
            "{err:?}"
        );
        assert!(started.elapsed() < CALL_TIMEOUT + Duration::from_secs(1));
    }
}
