//! The Redis group store: the [`GroupStore`] of a fleet of host processes
//! sharing one Redis (7.0 is enough).
//!
//! # Layout (every name built by [`TenantKeys`], so all in the tenant's slot)
//!
//! With `P` = `{ns}:t:{<tenant>}:`:
//!
//! - `P group:info:<name>`: hash with fields `max` (the group's
//!   `max_members`), `meta` and `closed` (`0`/`1`); the group exists
//!   exactly while this key does;
//! - `P group:members:<name>`: hash connection id → `<role>\n<instance>`;
//! - `P group:live:<name>`: sorted set connection id → deadline (ms);
//! - `P group:deadlines`: sorted set `<name>\n<connection id>` → deadline
//!   (ms), every member of the tenant (what `expire` walks, and the
//!   tenant's member count);
//! - `P group:names`: set of the tenant's group names (the group count,
//!   and what `purge_tenant` walks).
//!
//! Names, connection ids and instance ids never contain `'\n'`
//! ([`check_name`]), so the separators are unambiguous whatever else (`:`,
//! `}`) they contain. Member keys vanish when empty.
//!
//! # Scripts
//!
//! Every operation but `meta` (one `HGET`) is one Lua script (`EVALSHA`),
//! so every step is atomic across the fleet: a join checks the closed flag
//! and the live count and adds the member in one step (`max_members` holds
//! whatever the number of hosts joining at once); of two hosts expiring at
//! once, each member is reported by the one whose script removed it.
//! Deadlines use the Redis clock (`redis.call('TIME')`), so hosts agree.
//! Keys a script derives from a prefix are not declared in `KEYS`; they
//! share the tenant's hash tag, so they are in the same Redis Cluster slot
//! as the declared keys.
//!
//! # Outages
//!
//! Every call goes through the shared [`CircuitBreaker`] via the store's
//! [`RedisScope`], bounded by [`SCRIPT_TIMEOUT`] (`Timeout`); connection
//! errors are `Unavailable`; while the breaker is broken every call fails
//! fast with `Unavailable("Redis circuit breaker open")`.
//!
//! [`SCRIPT_TIMEOUT`]: crate::backend::redis::SCRIPT_TIMEOUT

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use redis::Script;
use redis::aio::ConnectionManager;

use super::{
    ExpiredMember, GroupInfo, GroupLimits, GroupStore, Joined, Left, Member, MemberRef, Role,
    check_create, check_heartbeat, check_join, check_meta, check_name, closed_group, full_group,
    no_such_group,
};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::backend::redis::RedisScope;
use crate::backend::redis::keys::TenantKeys;
use crate::tenant::TenantId;

/// Dead members one `expire` script run removes at most.
pub const EXPIRE_BATCH: usize = 512;

/// Members one `heartbeat` script run refreshes at most.
pub const HEARTBEAT_BATCH: usize = 256;

/// `heartbeat` script runs in flight at once (over tenants and batches).
pub const HEARTBEAT_PARALLEL: usize = 8;

/// Groups one `purge_tenant` script run removes.
pub const PURGE_BATCH: usize = 8;

/// Script runs one `purge_tenant` takes at most (while groups keep being
/// created).
const MAX_PURGE_ROUNDS: usize = 10_000;

const INFO: &str = "group:info";
const MEMBERS: &str = "group:members";
const LIVE: &str = "group:live";
const DEADLINES: &str = "group:deadlines";
const NAMES: &str = "group:names";

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

-- The two parts of 'a\nb'; nil if there is no separator.
local function split(s)
  if not s then return nil end
  local i = string.find(s, '\n', 1, true)
  if not i then return nil end
  return string.sub(s, 1, i - 1), string.sub(s, i + 1)
end

local function live_count(live)
  return redis.call('ZCOUNT', live, live_from, '+inf')
end
"#;

/// KEYS info, names. ARGV name, max, meta, max groups.
/// Returns {'ok', created, max, meta, closed} or {'groups'}.
const CREATE: &str = r#"
local info, names = KEYS[1], KEYS[2]
local created = '0'
if redis.call('EXISTS', info) == 0 then
  if redis.call('SCARD', names) + 1 > tonumber(ARGV[4]) then
    return {'groups'}
  end
  redis.call('HSET', info, 'max', ARGV[2], 'meta', ARGV[3], 'closed', '0')
  redis.call('SADD', names, ARGV[1])
  created = '1'
end
local g = redis.call('HMGET', info, 'max', 'meta', 'closed')
return {'ok', created, g[1], g[2], g[3]}
"#;

/// KEYS info. ARGV meta. Returns 1, or 0 if there is no such group.
const SET_META: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'meta', ARGV[1])
return 1
"#;

/// KEYS info, members, live, deadlines. ARGV name, id, instance, role,
/// ttl ms, max members per group, max members per tenant.
/// Returns {'ok', new, role, count}, {'full', max} or {refusal}.
const JOIN: &str = r#"
local info, members, live, deadlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, id = ARGV[1], ARGV[2]
local g = redis.call('HMGET', info, 'max', 'closed')
if not g[1] then
  return {'missing'}
end
if g[2] == '1' then
  return {'closed'}
end
local at = int(now + tonumber(ARGV[5]))
local m = name .. '\n' .. id
local count = live_count(live)
local mine = redis.call('ZSCORE', live, id)
if mine and tonumber(mine) > now then
  redis.call('ZADD', live, at, id)
  redis.call('ZADD', deadlines, at, m)
  local role = split(redis.call('HGET', members, id)) or ''
  return {'ok', '0', role, int(count)}
end
local per_group = tonumber(ARGV[6])
local max = math.min(tonumber(g[1]), per_group)
if count + 1 > max then
  return {'full', int(max)}
end
if not mine then
  if redis.call('ZCARD', live) + 1 > per_group then
    return {'stored'}
  end
  if redis.call('ZCARD', deadlines) + 1 > tonumber(ARGV[7]) then
    return {'tenant'}
  end
end
redis.call('ZADD', live, at, id)
redis.call('ZADD', deadlines, at, m)
redis.call('HSET', members, id, ARGV[4] .. '\n' .. ARGV[3])
return {'ok', '1', ARGV[4], int(count + 1)}
"#;

/// KEYS members, live, deadlines. ARGV name, id.
/// Returns {count, '<role>\n<instance>' or nil}.
const LEAVE: &str = r#"
local members, live, deadlines = KEYS[1], KEYS[2], KEYS[3]
local v = redis.call('HGET', members, ARGV[2])
if v then
  redis.call('HDEL', members, ARGV[2])
  redis.call('ZREM', live, ARGV[2])
  redis.call('ZREM', deadlines, ARGV[1] .. '\n' .. ARGV[2])
end
return {live_count(live), v}
"#;

/// KEYS members, live. ARGV limit. Returns id, value, id, value, ... of
/// the live members (unordered).
const MEMBERS_OF: &str = r#"
local members, live = KEYS[1], KEYS[2]
local ids = redis.call('ZRANGEBYSCORE', live, live_from, '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('HGET', members, id)
  if v then
    table.insert(out, id)
    table.insert(out, v)
  end
end
return out
"#;

/// KEYS live. Returns the live count.
const COUNT: &str = r#"
return live_count(KEYS[1])
"#;

/// KEYS deadlines. ARGV instance, ttl ms, members prefix, live prefix,
/// then name, id of each member. Returns the 0-based indexes of the members
/// not refreshed.
const HEARTBEAT: &str = r#"
local deadlines = KEYS[1]
local instance = ARGV[1]
local at = int(now + tonumber(ARGV[2]))
local members_p, live_p = ARGV[3], ARGV[4]
local lost = {}
for i = 5, #ARGV - 1, 2 do
  local name, id = ARGV[i], ARGV[i + 1]
  local m = name .. '\n' .. id
  local current = redis.call('ZSCORE', deadlines, m)
  local refreshed = false
  if current and tonumber(current) > now then
    local _, owner = split(redis.call('HGET', members_p .. name, id))
    if owner == instance then
      redis.call('ZADD', deadlines, at, m)
      redis.call('ZADD', live_p .. name, at, id)
      refreshed = true
    end
  end
  if not refreshed then
    table.insert(lost, (i - 5) / 2)
  end
end
return lost
"#;

/// KEYS deadlines. ARGV members prefix, live prefix, limit. Returns
/// {removed, then name, id, role, count for every member removed}.
const EXPIRE: &str = r#"
local deadlines = KEYS[1]
local members_p, live_p = ARGV[1], ARGV[2]
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now_s, 'LIMIT', 0, tonumber(ARGV[3]))
local gone = {}
for _, m in ipairs(due) do
  redis.call('ZREM', deadlines, m)
  local name, id = split(m)
  if name then
    local members = members_p .. name
    local v = redis.call('HGET', members, id)
    redis.call('HDEL', members, id)
    redis.call('ZREM', live_p .. name, id)
    local role = split(v)
    if role then
      table.insert(gone, {name, id, role})
    end
  end
end
local out = {int(#due)}
for _, g in ipairs(gone) do
  table.insert(out, g[1])
  table.insert(out, g[2])
  table.insert(out, g[3])
  table.insert(out, int(live_count(live_p .. g[1])))
end
return out
"#;

/// KEYS info, members, live, deadlines. ARGV name. Returns {'missing'} or
/// {'ok', then id, '<role>\n<instance>' of every member removed}.
const CLOSE: &str = r#"
local info, members, live, deadlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local closed = redis.call('HGET', info, 'closed')
if not closed then
  return {'missing'}
end
local out = {'ok'}
if closed == '1' then
  return out
end
redis.call('HSET', info, 'closed', '1')
local all = redis.call('HGETALL', members)
for i = 1, #all, 2 do
  redis.call('ZREM', deadlines, ARGV[1] .. '\n' .. all[i])
  table.insert(out, all[i])
  table.insert(out, all[i + 1])
end
redis.call('DEL', members, live)
return out
"#;

/// Removes one group's keys and deadlines entries (not its name).
const DROP_GROUP: &str = r#"
local function drop_group(info, members, live, deadlines, name)
  local ids = redis.call('HKEYS', members)
  for _, id in ipairs(ids) do
    redis.call('ZREM', deadlines, name .. '\n' .. id)
  end
  return redis.call('DEL', info, members, live)
end
"#;

/// KEYS info, members, live, deadlines, names. ARGV name. Returns 1 if
/// the group existed, else 0.
const DELETE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
drop_group(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
return 1
"#;

/// KEYS names, deadlines. ARGV info prefix, members prefix, live prefix,
/// batch. Returns {removed, left}.
const PURGE: &str = r#"
local names, deadlines = KEYS[1], KEYS[2]
local info_p, members_p, live_p = ARGV[1], ARGV[2], ARGV[3]
local page = redis.call('SPOP', names, tonumber(ARGV[4]))
for _, name in ipairs(page) do
  drop_group(info_p .. name, members_p .. name, live_p .. name, deadlines, name)
end
local left = redis.call('SCARD', names)
if left == 0 then
  redis.call('DEL', deadlines)
end
return {#page, left}
"#;

/// The scripts, hashed once per process.
struct Scripts {
    create: Script,
    set_meta: Script,
    join: Script,
    leave: Script,
    members: Script,
    count: Script,
    heartbeat: Script,
    expire: Script,
    close: Script,
    delete: Script,
    purge: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::new(&format!("{PRELUDE}{DROP_GROUP}{body}"));
    Scripts {
        create: script(CREATE),
        set_meta: script(SET_META),
        join: script(JOIN),
        leave: script(LEAVE),
        members: script(MEMBERS_OF),
        count: script(COUNT),
        heartbeat: script(HEARTBEAT),
        expire: script(EXPIRE),
        close: script(CLOSE),
        delete: script(DELETE),
        purge: script(PURGE),
    }
});

/// The Redis names of one tenant's groups.
struct Names {
    keys: TenantKeys,
    deadlines: String,
    names: String,
}

impl Names {
    fn new(keys: TenantKeys) -> Self {
        Self {
            deadlines: keys.fixed(DEADLINES),
            names: keys.fixed(NAMES),
            keys,
        }
    }

    fn info(&self, name: &str) -> String {
        self.keys.name(INFO, name)
    }

    fn members(&self, name: &str) -> String {
        self.keys.name(MEMBERS, name)
    }

    fn live(&self, name: &str) -> String {
        self.keys.name(LIVE, name)
    }

    /// The prefix a script appends a group name to; the same names as the
    /// methods above.
    fn prefix(&self, kind: &str) -> String {
        self.keys.name(kind, "")
    }
}

/// A [`GroupStore`] in Redis, shared by every host process on the same
/// Redis and namespace (see the module docs for the layout and scripts).
#[derive(Clone, Debug)]
pub struct RedisGroups {
    scope: RedisScope,
    limits: GroupLimits,
}

impl RedisGroups {
    /// A store on `conn` under `namespace` (`[a-z0-9_-]`, checked by the
    /// config), calling through `breaker` (shared with the other backends
    /// on the same Redis), with the default [`GroupLimits`].
    pub fn new(conn: ConnectionManager, namespace: String, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            scope: RedisScope::new(conn, namespace, breaker),
            limits: GroupLimits::default(),
        }
    }

    /// The same store with other limits (every host of a fleet should use
    /// the same).
    pub fn with_limits(mut self, limits: GroupLimits) -> Self {
        self.limits = limits;
        self
    }

    fn names(&self, tenant: &TenantId) -> Names {
        Names::new(self.scope.keys(tenant))
    }

    /// One heartbeat script run: `members` (at most [`HEARTBEAT_BATCH`])
    /// of one tenant.
    async fn beat(
        &self,
        instance: &str,
        tenant: &TenantId,
        members: &[&MemberRef],
        ttl_ms: u64,
    ) -> Result<Vec<MemberRef>, BackendError> {
        let names = self.names(tenant);
        let mut inv = SCRIPTS.heartbeat.prepare_invoke();
        inv.key(&names.deadlines)
            .arg(instance)
            .arg(ttl_ms)
            .arg(names.prefix(MEMBERS))
            .arg(names.prefix(LIVE));
        for m in members {
            inv.arg(&m.group).arg(&m.member);
        }
        let what = "group heartbeat";
        let lost: Vec<usize> = self.scope.script(what, &inv).await?;
        lost.into_iter()
            .map(|i| {
                members
                    .get(i)
                    .map(|m| (*m).clone())
                    .ok_or_else(|| bad_reply(what, &i))
            })
            .collect()
    }
}

/// A script reply that is not what the script returns.
fn bad_reply(what: &str, reply: &impl std::fmt::Debug) -> BackendError {
    BackendError::Other(format!("{what}: unexpected Redis script reply {reply:?}"))
}

fn number(what: &str, s: &str) -> Result<u64, BackendError> {
    s.parse().map_err(|_| bad_reply(what, &s))
}

fn role(what: &str, s: &str) -> Result<Role, BackendError> {
    Role::parse(s).map_err(|_| bad_reply(what, &s))
}

/// A stored `<role>\n<instance>` as a member.
fn member(what: &str, id: String, value: &str) -> Result<Member, BackendError> {
    let Some((r, instance)) = value.split_once('\n') else {
        return Err(bad_reply(what, &value));
    };
    Ok(Member {
        id,
        role: role(what, r)?,
        instance: instance.to_owned(),
    })
}

/// `id, value, id, value, ...` as members sorted by id.
fn member_pairs(what: &str, reply: Vec<String>) -> Result<Vec<Member>, BackendError> {
    if !reply.len().is_multiple_of(2) {
        return Err(bad_reply(what, &reply.len()));
    }
    let mut out = Vec::with_capacity(reply.len() / 2);
    let mut fields = reply.into_iter();
    while let (Some(id), Some(value)) = (fields.next(), fields.next()) {
        out.push(member(what, id, &value)?);
    }
    out.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[async_trait]
impl GroupStore for RedisGroups {
    async fn create_or_get(
        &self,
        tenant: &TenantId,
        name: &str,
        max_members: u32,
        meta: &str,
    ) -> Result<GroupInfo, BackendError> {
        check_create(name, max_members, meta)?;
        let names = self.names(tenant);
        let mut inv = SCRIPTS.create.prepare_invoke();
        inv.key(names.info(name))
            .key(&names.names)
            .arg(name)
            .arg(max_members)
            .arg(meta)
            .arg(self.limits.max_groups_per_tenant);
        let what = "group create";
        let reply: Vec<String> = self.scope.script(what, &inv).await?;
        match reply.as_slice() {
            [ok, created, max, meta, closed] if ok == "ok" => Ok(GroupInfo {
                created: created == "1",
                max_members: max.parse().map_err(|_| bad_reply(what, &reply))?,
                meta: meta.clone(),
                closed: closed == "1",
            }),
            [refusal] if refusal == "groups" => Err(BackendError::QuotaExceeded(format!(
                "a tenant may hold {} groups",
                self.limits.max_groups_per_tenant
            ))),
            _ => Err(bad_reply(what, &reply)),
        }
    }

    async fn meta(&self, tenant: &TenantId, name: &str) -> Result<Option<String>, BackendError> {
        check_name("group name", name)?;
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.names(tenant).info(name)).arg("meta");
        self.scope.cmd("group meta", &cmd).await
    }

    async fn set_meta(
        &self,
        tenant: &TenantId,
        name: &str,
        meta: &str,
    ) -> Result<(), BackendError> {
        check_name("group name", name)?;
        check_meta(meta)?;
        let mut inv = SCRIPTS.set_meta.prepare_invoke();
        inv.key(self.names(tenant).info(name)).arg(meta);
        let found: u64 = self.scope.script("group set_meta", &inv).await?;
        if found == 0 {
            return Err(no_such_group(name));
        }
        Ok(())
    }

    async fn join(
        &self,
        tenant: &TenantId,
        name: &str,
        member: &str,
        instance: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<Joined, BackendError> {
        let ttl_ms = check_join(name, member, instance, ttl)?;
        let names = self.names(tenant);
        let mut inv = SCRIPTS.join.prepare_invoke();
        inv.key(names.info(name))
            .key(names.members(name))
            .key(names.live(name))
            .key(&names.deadlines)
            .arg(name)
            .arg(member)
            .arg(instance)
            .arg(role.as_str())
            .arg(ttl_ms)
            .arg(self.limits.max_members_per_group)
            .arg(self.limits.max_members_per_tenant);
        let what = "group join";
        let reply: Vec<String> = self.scope.script(what, &inv).await?;
        match reply.as_slice() {
            [ok, new, r, count] if ok == "ok" => Ok(Joined {
                new: new == "1",
                role: self::role(what, r)?,
                count: number(what, count)?,
            }),
            [full, max] if full == "full" => Err(full_group(name, number(what, max)?)),
            [refusal] if refusal == "missing" => Err(no_such_group(name)),
            [refusal] if refusal == "closed" => Err(closed_group(name)),
            [refusal] if refusal == "stored" => Err(BackendError::QuotaExceeded(format!(
                "group {name:?} holds {} members not yet expired",
                self.limits.max_members_per_group
            ))),
            [refusal] if refusal == "tenant" => Err(BackendError::QuotaExceeded(format!(
                "a tenant may hold {} group members",
                self.limits.max_members_per_tenant
            ))),
            _ => Err(bad_reply(what, &reply)),
        }
    }

    async fn leave(
        &self,
        tenant: &TenantId,
        name: &str,
        member: &str,
    ) -> Result<Left, BackendError> {
        check_name("group name", name)?;
        check_name("connection id", member)?;
        let names = self.names(tenant);
        let mut inv = SCRIPTS.leave.prepare_invoke();
        inv.key(names.members(name))
            .key(names.live(name))
            .key(&names.deadlines)
            .arg(name)
            .arg(member);
        let what = "group leave";
        let (count, value): (u64, Option<String>) = self.scope.script(what, &inv).await?;
        let role = match value {
            Some(v) => Some(self::member(what, member.to_owned(), &v)?.role),
            None => None,
        };
        Ok(Left { count, role })
    }

    async fn members(&self, tenant: &TenantId, name: &str) -> Result<Vec<Member>, BackendError> {
        check_name("group name", name)?;
        let names = self.names(tenant);
        let mut inv = SCRIPTS.members.prepare_invoke();
        inv.key(names.members(name))
            .key(names.live(name))
            .arg(self.limits.max_members_per_group);
        let reply: Vec<String> = self.scope.script("group members", &inv).await?;
        member_pairs("group members", reply)
    }

    async fn count(&self, tenant: &TenantId, name: &str) -> Result<u64, BackendError> {
        check_name("group name", name)?;
        let mut inv = SCRIPTS.count.prepare_invoke();
        inv.key(self.names(tenant).live(name));
        self.scope.script("group count", &inv).await
    }

    async fn heartbeat(
        &self,
        instance: &str,
        members: &[MemberRef],
        ttl: Duration,
    ) -> Result<Vec<MemberRef>, BackendError> {
        let ttl_ms = check_heartbeat(instance, members, ttl)?;
        let mut by_tenant: BTreeMap<&TenantId, Vec<&MemberRef>> = BTreeMap::new();
        for m in members {
            by_tenant.entry(&m.tenant).or_default().push(m);
        }
        let mut beats = Vec::new();
        for (tenant, refs) in &by_tenant {
            for chunk in refs.chunks(HEARTBEAT_BATCH) {
                beats.push(self.beat(instance, tenant, chunk, ttl_ms));
            }
        }
        let lost: Vec<Vec<MemberRef>> = futures_util::stream::iter(beats)
            .buffered(HEARTBEAT_PARALLEL)
            .try_collect()
            .await?;
        Ok(lost.into_iter().flatten().collect())
    }

    async fn expire(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<ExpiredMember>, BackendError> {
        let names = self.names(tenant);
        let what = "group expire";
        let mut gone = Vec::new();
        let mut remaining = limit;
        while remaining > 0 {
            let batch = remaining.min(EXPIRE_BATCH);
            let mut inv = SCRIPTS.expire.prepare_invoke();
            inv.key(&names.deadlines)
                .arg(names.prefix(MEMBERS))
                .arg(names.prefix(LIVE))
                .arg(batch);
            let reply: Vec<String> = self.scope.script(what, &inv).await?;
            let Some((removed, rest)) = reply.split_first() else {
                return Err(bad_reply(what, &reply));
            };
            let removed = number(what, removed)?;
            if !rest.len().is_multiple_of(4) || removed > batch as u64 {
                return Err(bad_reply(what, &reply));
            }
            for g in rest.chunks_exact(4) {
                gone.push(ExpiredMember {
                    group: g[0].clone(),
                    member: g[1].clone(),
                    role: role(what, &g[2])?,
                    count: number(what, &g[3])?,
                });
            }
            if removed < batch as u64 {
                break;
            }
            remaining -= batch;
        }
        Ok(gone)
    }

    async fn close(&self, tenant: &TenantId, name: &str) -> Result<Vec<Member>, BackendError> {
        check_name("group name", name)?;
        let names = self.names(tenant);
        let mut inv = SCRIPTS.close.prepare_invoke();
        inv.key(names.info(name))
            .key(names.members(name))
            .key(names.live(name))
            .key(&names.deadlines)
            .arg(name);
        let what = "group close";
        let reply: Vec<String> = self.scope.script(what, &inv).await?;
        match reply.split_first() {
            Some((ok, _)) if ok == "ok" => member_pairs(what, reply[1..].to_vec()),
            Some((missing, [])) if missing == "missing" => Err(no_such_group(name)),
            _ => Err(bad_reply(what, &reply)),
        }
    }

    async fn delete(&self, tenant: &TenantId, name: &str) -> Result<bool, BackendError> {
        check_name("group name", name)?;
        let names = self.names(tenant);
        let mut inv = SCRIPTS.delete.prepare_invoke();
        inv.key(names.info(name))
            .key(names.members(name))
            .key(names.live(name))
            .key(&names.deadlines)
            .key(&names.names)
            .arg(name);
        let existed: u64 = self.scope.script("group delete", &inv).await?;
        Ok(existed == 1)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let names = self.names(tenant);
        let mut total = 0;
        for _ in 0..MAX_PURGE_ROUNDS {
            let mut inv = SCRIPTS.purge.prepare_invoke();
            inv.key(&names.names)
                .key(&names.deadlines)
                .arg(names.prefix(INFO))
                .arg(names.prefix(MEMBERS))
                .arg(names.prefix(LIVE))
                .arg(PURGE_BATCH);
            let (removed, left): (u64, u64) = self.scope.script("group purge", &inv).await?;
            total += removed;
            if left == 0 {
                return Ok(total);
            }
        }
        Err(BackendError::Unavailable(format!(
            "group purge: tenant {tenant} still has groups after \
             {MAX_PURGE_ROUNDS} rounds (are they still being created?)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use futures_util::future::join_all;

    use super::*;
    use crate::backend::breaker::OPEN_MESSAGE;
    use crate::backend::groups::conformance;
    use crate::backend::redis::SCRIPT_TIMEOUT;
    use crate::backend::redis::test_support::{
        Namespace, breaker, tid, tripping_breaker, unreachable_conn,
    };

    async fn store(ns: &Namespace) -> RedisGroups {
        RedisGroups::new(ns.conn().await, ns.name(), breaker())
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn redis_groups_pass_the_conformance_suite() {
        let ns = Namespace::new();
        conformance::suite(&store(&ns).await).await;
        assert_eq!(ns.keys(), Vec::<String>::new(), "the suite left keys");
    }

    #[tokio::test]
    async fn redis_groups_pass_the_limits_suite() {
        let ns = Namespace::new();
        let s = store(&ns).await.with_limits(conformance::SUITE_LIMITS);
        conformance::limits_suite(&s).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Two stores with their own connections: two hosts of a fleet.
    /// `max_members` holds across them, and many groups created and joined
    /// at once from both lose nothing.
    #[tokio::test]
    async fn two_redis_stores_are_two_hosts() {
        let ns = Namespace::new();
        let (a, b) = (store(&ns).await, store(&ns).await);
        conformance::two_hosts(&a, &b).await;

        let t = tid("acme");
        let created = join_all((0..40).map(|i| {
            let s = if i % 2 == 0 { &a } else { &b };
            let t = &t;
            async move {
                s.create_or_get(t, &format!("g{}", i % 4), 3, "{}")
                    .await
                    .unwrap()
            }
        }))
        .await;
        assert_eq!(created.iter().filter(|g| g.created).count(), 4);
        let joins = join_all((0..40).map(|i| {
            let s = if i % 2 == 0 { &a } else { &b };
            let t = &t;
            async move {
                s.join(
                    t,
                    &format!("g{}", i % 4),
                    &format!("c{i}"),
                    "h",
                    Role::Member,
                    LONG,
                )
                .await
            }
        }))
        .await;
        assert_eq!(
            joins.iter().filter(|j| j.is_ok()).count(),
            12,
            "3 per group"
        );
        for g in 0..4 {
            assert_eq!(a.count(&t, &format!("g{g}")).await.unwrap(), 3);
        }
        assert_eq!(b.purge_tenant(&t).await.unwrap(), 4);
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Every key is one of the documented names under the tenant's
    /// prefix, whatever the names contain; member keys vanish when empty.
    #[tokio::test]
    async fn keys_stay_inside_the_tenant_prefix() {
        let ns = Namespace::new();
        let s = store(&ns).await;
        let t = tid("acme");
        let name = "}:t:{other}:group:info:x";
        let conn = "}{:t:{other}";
        s.create_or_get(&t, name, 5, "{}").await.unwrap();
        s.join(&t, name, conn, "i", Role::Admin, LONG)
            .await
            .unwrap();
        let prefix = format!("{}:t:{{acme}}:", ns.name());
        let mut expected = vec![
            format!("{prefix}group:info:{name}"),
            format!("{prefix}group:members:{name}"),
            format!("{prefix}group:live:{name}"),
            format!("{prefix}group:deadlines"),
            format!("{prefix}group:names"),
        ];
        expected.sort();
        assert_eq!(ns.keys(), expected);
        assert!(
            ns.keys()
                .iter()
                .all(|k| crate::backend::redis::keys::tenant_of(&ns.name(), k) == Some(t.clone()))
        );
        assert_eq!(
            s.leave(&t, name, conn).await.unwrap().role,
            Some(Role::Admin)
        );
        let mut left = vec![
            format!("{prefix}group:info:{name}"),
            format!("{prefix}group:names"),
        ];
        left.sort();
        assert_eq!(ns.keys(), left, "member keys vanish when empty");
        assert!(s.delete(&t, name).await.unwrap());
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// A member written by another version or by hand with an unknown role
    /// is an error, not a wrong answer.
    #[tokio::test]
    async fn a_corrupt_member_is_an_error() {
        let ns = Namespace::new();
        let s = store(&ns).await;
        let t = tid("acme");
        s.create_or_get(&t, "g", 5, "{}").await.unwrap();
        s.join(&t, "g", "c", "i", Role::Member, LONG).await.unwrap();
        let key = s.names(&t).members("g");
        let mut conn = ns.conn().await;
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg("c")
            .arg("owner\ni")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(matches!(
            s.members(&t, "g").await,
            Err(BackendError::Other(_))
        ));
        assert_eq!(s.purge_tenant(&t).await, Ok(1));
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// An open breaker fails every call fast, without touching Redis.
    #[tokio::test]
    async fn open_breaker_fails_fast() {
        let ns = Namespace::new();
        let shared = tripping_breaker();
        let s = RedisGroups::new(ns.conn().await, ns.name(), Arc::clone(&shared));
        let t = tid("acme");
        s.create_or_get(&t, "g", 5, "{}").await.unwrap();
        s.join(&t, "g", "c", "i", Role::Member, LONG).await.unwrap();
        shared.failure();
        let open = BackendError::Unavailable(OPEN_MESSAGE.into());
        let started = Instant::now();
        assert_eq!(s.create_or_get(&t, "h", 5, "{}").await, Err(open.clone()));
        assert_eq!(
            s.join(&t, "g", "d", "i", Role::Member, LONG).await,
            Err(open.clone())
        );
        assert_eq!(s.leave(&t, "g", "c").await, Err(open.clone()));
        assert_eq!(s.members(&t, "g").await, Err(open.clone()));
        assert_eq!(s.count(&t, "g").await, Err(open.clone()));
        assert_eq!(s.meta(&t, "g").await, Err(open.clone()));
        assert_eq!(s.set_meta(&t, "g", "1").await, Err(open.clone()));
        let refs = [MemberRef {
            tenant: t.clone(),
            group: "g".into(),
            member: "c".into(),
        }];
        assert_eq!(s.heartbeat("i", &refs, LONG).await, Err(open.clone()));
        assert_eq!(s.expire(&t, 10).await, Err(open.clone()));
        assert_eq!(s.close(&t, "g").await, Err(open.clone()));
        assert_eq!(s.delete(&t, "g").await, Err(open.clone()));
        assert_eq!(s.purge_tenant(&t).await, Err(open));
        assert!(started.elapsed() < Duration::from_millis(50));
        // Nothing reached Redis: the one member is still all there is.
        shared.reset();
        assert_eq!(s.count(&t, "g").await, Ok(1));
        assert_eq!(s.meta(&t, "g").await, Ok(Some("{}".into())));
        assert_eq!(s.purge_tenant(&t).await, Ok(1));
    }

    /// A Redis that does not answer is an error, not a hang.
    #[tokio::test]
    async fn unreachable_redis_is_an_error() {
        let lazy = unreachable_conn().await;
        let s = RedisGroups::new(lazy, "tenantry-test-unreachable".into(), breaker());
        let started = Instant::now();
        let err = s
            .join(&tid("acme"), "g", "c", "i", Role::Member, LONG)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::Unavailable(_) | BackendError::Timeout),
            "{err:?}"
        );
        assert!(started.elapsed() < SCRIPT_TIMEOUT + Duration::from_secs(1));
    }
}
