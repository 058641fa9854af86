//! The Redis key-value store: the [`Kv`] of a fleet of host processes
//! sharing one Redis.
//!
//! # Layout (every name built by [`TenantKeys`], so all in the tenant's slot)
//!
//! - `{ns}:t:{<tenant>}:kv:<key>`: the value of `<key>` (a plain string,
//!   with a real `PXAT` expiry when the key has a TTL, so Redis frees it and
//!   `GET` never returns an expired value);
//! - `{ns}:t:{<tenant>}:kvsizes`: hash `<key>` → key plus value bytes: the
//!   accounting, and the list of every key of the tenant (purge walks it);
//! - `{ns}:t:{<tenant>}:kvexpiry`: sorted set `<key>` → expiry time in ms
//!   (Redis server clock);
//! - `{ns}:t:{<tenant>}:kvbytes`: the sum of the sizes in `kvsizes`.
//!
//! The three bookkeeping keys vanish when the tenant has no keys left.
//!
//! # Scripts
//!
//! `set`, `incr`, `delete` and `purge_tenant` are each one Lua script
//! (`EVALSHA`, loaded on `NOSCRIPT`), so the quota check and the write are
//! one atomic step across every host. Each script reads the time with
//! `redis.call('TIME')` (never the host clock, so hosts agree) and first
//! sweeps up to [`SWEEP_BATCH`] entries whose expiry has passed (deleting
//! the value, subtracting its size). Redis expires values silently; the
//! sweep keeps the accounting from drifting. Before refusing a write for
//! quota while expired entries remain, a script sweeps a further
//! [`SWEEP_BATCH_ON_REFUSAL`]; if even that is not enough it answers
//! `retry` and the call runs the script again, so a quota check never
//! counts an expired key and no script run is unbounded. The entry of the
//! key being written is always checked against the clock itself.
//!
//! Swept value keys are not declared in `KEYS` (they are found in the
//! sorted set); they share the tenant's hash tag, so they are in the same
//! Redis Cluster slot as the declared keys.
//!
//! # Outages
//!
//! Every Redis command goes through a [`CircuitBreaker`] (one per Redis,
//! shared with the bus; see [`RedisKv::with_breaker`]): timeouts and
//! connection errors count as failures, any answer (also a quota or
//! invalid-argument refusal) as a success. While the breaker is broken,
//! every operation fails fast with
//! `BackendError::Unavailable("Redis circuit breaker open")`, which plugins
//! see as `SERVICE_UNAVAILABLE`, without touching Redis.
//!
//! Redis should run with `maxmemory-policy noeviction`: a value evicted
//! under memory pressure stays accounted (and listed for purge) until the
//! key is next written, deleted or incremented, which reconcile it.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};

use crate::backend::breaker::{BreakerConfig, CircuitBreaker, OPEN_MESSAGE};
use crate::backend::memory::MemoryKvLimits;
use crate::backend::redis::RedisScope;
use crate::backend::redis::keys::TenantKeys;
use crate::backend::{BackendError, Kv, KvQuota};
use crate::tenant::TenantId;

/// Expired entries each write script removes before its own work.
pub const SWEEP_BATCH: u32 = 64;

/// Further expired entries a write script removes before refusing for quota.
pub const SWEEP_BATCH_ON_REFUSAL: u32 = 1024;

/// Entries `purge_tenant` removes per script run.
pub const PURGE_BATCH: u32 = 256;

/// Longest TTL in ms: keeps `now + ttl` exact in Lua's doubles (< 2^53).
const MAX_TTL_MS: u128 = 1 << 52;

/// Script runs one write may take when each answers `retry` (each run
/// removes at least [`SWEEP_BATCH_ON_REFUSAL`] expired entries).
const MAX_WRITE_ROUNDS: usize = 1000;

/// Full passes over the tenant's keys `purge_tenant` makes while writes
/// keep adding keys behind its cursor.
const MAX_PURGE_PASSES: usize = 16;

/// Shared by every script. KEYS[1] sizes hash, KEYS[2] expiry zset,
/// KEYS[3] byte total, KEYS[4] the value key of the operation (not purge).
/// ARGV[1] value key prefix, ARGV[2] sweep batch (purge: HSCAN count),
/// ARGV[3] further sweep before a refusal; ARGV[4..] per script.
const PRELUDE: &str = r#"
local sizes, expiry, total = KEYS[1], KEYS[2], KEYS[3]
local prefix = ARGV[1]
local sweep_batch, refusal_batch = tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- An integer as a decimal string (never exponent notation).
local function int(x)
  return string.format('%.0f', x)
end

-- Forget `field`: its value and bookkeeping. 1 if a value was deleted.
local function drop(field)
  local size = redis.call('HGET', sizes, field)
  if size then
    redis.call('HDEL', sizes, field)
    if redis.call('HLEN', sizes) == 0 then
      redis.call('DEL', total)
    else
      redis.call('DECRBY', total, size)
    end
  end
  redis.call('ZREM', expiry, field)
  return redis.call('DEL', prefix .. field)
end

-- Drop up to n entries whose expiry has passed; true if more may remain.
local function sweep(n)
  local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', int(now), 'LIMIT', 0, n)
  for _, field in ipairs(due) do
    drop(field)
  end
  return #due == n
end

-- The accounted size of the live entry `field`, or nil (an expired entry
-- the sweep has not reached yet is dropped here).
local function live_size(field)
  local at = redis.call('ZSCORE', expiry, field)
  if at and tonumber(at) <= now then
    drop(field)
    return nil
  end
  local size = redis.call('HGET', sizes, field)
  if size then
    return tonumber(size)
  end
  return nil
end

-- 'bytes' or 'keys' if storing `new` bytes in place of `old` (nil: a new
-- key) goes over the quota, else nil.
local function over(old, new, max_keys, max_bytes)
  local keys = redis.call('HLEN', sizes)
  if not old then
    keys = keys + 1
  end
  local bytes = tonumber(redis.call('GET', total) or '0') - (old or 0) + new
  if bytes > max_bytes then
    return 'bytes'
  end
  if keys > max_keys then
    return 'keys'
  end
  return nil
end

-- As `over`, but sweeps more first if expired entries may remain; 'retry'
-- if still over and more may remain.
local function admit(old, new, max_keys, max_bytes, more)
  local refused = over(old, new, max_keys, max_bytes)
  if refused and more then
    more = sweep(refusal_batch)
    refused = over(old, new, max_keys, max_bytes)
    if refused and more then
      return 'retry'
    end
  end
  return refused
end
"#;

/// ARGV[4] key, ARGV[5] value, ARGV[6] ttl ms (0: none), ARGV[7] max keys,
/// ARGV[8] max bytes. Returns {'ok'} or {'bytes' | 'keys' | 'retry'}.
const SET: &str = r#"
local more = sweep(sweep_batch)
local field, value, ttl = ARGV[4], ARGV[5], tonumber(ARGV[6])
local old = live_size(field)
local new = #field + #value
local refused = admit(old, new, tonumber(ARGV[7]), tonumber(ARGV[8]), more)
if refused then
  return {refused}
end
if ttl > 0 then
  local at = int(now + ttl)
  redis.call('SET', KEYS[4], value, 'PXAT', at)
  redis.call('ZADD', expiry, at, field)
else
  redis.call('SET', KEYS[4], value)
  redis.call('ZREM', expiry, field)
end
redis.call('HSET', sizes, field, int(new))
redis.call('INCRBY', total, int(new - (old or 0)))
return {'ok'}
"#;

/// ARGV[4] key, ARGV[5] delta, ARGV[6] max keys, ARGV[7] max bytes.
/// Returns {'ok', new value}, {'invalid', Redis error} or a refusal as SET.
/// INCRBY itself does the i64 arithmetic (Lua numbers are doubles); a
/// refused result is rolled back inside the script, so nobody sees it.
const INCR: &str = r#"
local more = sweep(sweep_batch)
local field = ARGV[4]
local old = live_size(field)
local before = redis.call('GET', KEYS[4])
if old and not before then
  drop(field)
  old = nil
end
if before and not old then
  redis.call('DEL', KEYS[4])
  before = false
end
local result = redis.pcall('INCRBY', KEYS[4], ARGV[5])
if type(result) == 'table' and result.err then
  return {'invalid', result.err}
end
local after = redis.call('GET', KEYS[4])
local new = #field + #after
local refused = admit(old, new, tonumber(ARGV[6]), tonumber(ARGV[7]), more)
if refused then
  if before then
    redis.call('SET', KEYS[4], before, 'KEEPTTL')
  else
    redis.call('DEL', KEYS[4])
  end
  return {refused}
end
redis.call('HSET', sizes, field, int(new))
redis.call('INCRBY', total, int(new - (old or 0)))
return {'ok', after}
"#;

/// ARGV[4] key. Returns 1 if a live value was deleted, else 0.
const DELETE: &str = r#"
sweep(sweep_batch)
if live_size(ARGV[4]) then
  drop(ARGV[4])
  return 1
end
return redis.call('DEL', KEYS[4])
"#;

/// ARGV[4] HSCAN cursor. Returns {next cursor, values deleted, entries left};
/// the last run (no entries left) deletes the bookkeeping keys.
const PURGE: &str = r#"
local page = redis.call('HSCAN', sizes, ARGV[4], 'COUNT', sweep_batch)
local entries = page[2]
local removed = 0
for i = 1, #entries, 2 do
  removed = removed + drop(entries[i])
end
local left = redis.call('HLEN', sizes)
if left == 0 then
  redis.call('DEL', expiry, total)
end
return {page[1], removed, left}
"#;

/// The four scripts, hashed once per process.
struct Scripts {
    set: Script,
    incr: Script,
    delete: Script,
    purge: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    Scripts {
        set: script(SET),
        incr: script(INCR),
        delete: script(DELETE),
        purge: script(PURGE),
    }
});

/// The Redis names of one tenant's KV data.
struct Names {
    keys: TenantKeys,
    sizes: String,
    expiry: String,
    total: String,
    value_prefix: String,
}

impl Names {
    fn new(keys: TenantKeys) -> Self {
        Self {
            sizes: keys.fixed("kvsizes"),
            expiry: keys.fixed("kvexpiry"),
            total: keys.fixed("kvbytes"),
            value_prefix: keys.name("kv", ""),
            keys,
        }
    }

    fn value(&self, key: &str) -> String {
        self.keys.name("kv", key)
    }
}

/// A [`Kv`] in Redis, shared by every host process on the same Redis and
/// namespace: quotas hold across the fleet (see the module docs for the
/// layout and scripts). Refuses the same oversized keys and values as
/// [`crate::backend::memory::MemoryKv`] with the same [`MemoryKvLimits`].
///
/// Script calls are bounded by
/// [`SCRIPT_TIMEOUT`](crate::backend::redis::SCRIPT_TIMEOUT) (the reload
/// after `NOSCRIPT` included), plain commands by
/// [`COMMAND_TIMEOUT`](crate::backend::redis::COMMAND_TIMEOUT); both go
/// through the store's [`RedisScope`].
#[derive(Clone, Debug)]
pub struct RedisKv {
    scope: RedisScope,
    limits: MemoryKvLimits,
    sweep_batch: u32,
    sweep_batch_on_refusal: u32,
}

impl RedisKv {
    /// A store on `conn` under `namespace` (`[a-z0-9_-]`, checked by the
    /// config), with the default [`MemoryKvLimits`].
    pub fn new(conn: ConnectionManager, namespace: String) -> Self {
        Self::with_limits(conn, namespace, MemoryKvLimits::default())
    }

    /// A store with the given key and value size limits.
    pub fn with_limits(conn: ConnectionManager, namespace: String, limits: MemoryKvLimits) -> Self {
        let breaker = Arc::new(CircuitBreaker::new("redis", BreakerConfig::default()));
        Self {
            scope: RedisScope::new(conn, namespace, breaker),
            limits,
            sweep_batch: SWEEP_BATCH,
            sweep_batch_on_refusal: SWEEP_BATCH_ON_REFUSAL,
        }
    }

    /// Use `breaker` (shared with the other backends on the same Redis)
    /// instead of the store's own default one.
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.scope = self.scope.with_breaker(breaker);
        self
    }

    /// The breaker every command of this store goes through.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        self.scope.breaker()
    }

    /// The Redis names of `tenant`'s KV data.
    fn names(&self, tenant: &TenantId) -> Names {
        Names::new(self.scope.keys(tenant))
    }

    /// Keys and bytes (keys plus values) accounted to `tenant`, including
    /// expired keys the scripts have not swept yet.
    pub async fn stored(&self, tenant: &TenantId) -> Result<(u64, u64), BackendError> {
        let names = self.names(tenant);
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN")
            .arg(&names.sizes)
            .cmd("GET")
            .arg(&names.total);
        let (keys, bytes): (u64, Option<u64>) = self.scope.pipe("reading KV usage", &pipe).await?;
        Ok((keys, bytes.unwrap_or(0)))
    }

    fn check_key(&self, key: &str) -> Result<(), BackendError> {
        self.limits.check_key(key)
    }

    /// An invocation of `script` with the shared KEYS and ARGV filled in.
    fn invocation<'a>(
        &self,
        script: &'a Script,
        names: &Names,
        value_key: Option<&str>,
        sweep_batch: u32,
    ) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(&names.sizes).key(&names.expiry).key(&names.total);
        if let Some(value_key) = value_key {
            inv.key(value_key);
        }
        inv.arg(&names.value_prefix)
            .arg(sweep_batch.max(1))
            .arg(self.sweep_batch_on_refusal.max(1));
        inv
    }

    /// Run `inv` until it answers something other than `retry` (bounded).
    async fn write(
        &self,
        what: &'static str,
        inv: &ScriptInvocation<'_>,
        quota: KvQuota,
    ) -> Result<Vec<String>, BackendError> {
        for _ in 0..MAX_WRITE_ROUNDS {
            let reply: Vec<String> = self.scope.script(what, inv).await?;
            match reply.first().map(String::as_str) {
                Some("retry") => continue,
                Some("bytes") => {
                    return Err(BackendError::QuotaExceeded(format!(
                        "tenant KV storage is limited to {} bytes",
                        quota.max_bytes
                    )));
                }
                Some("keys") => {
                    return Err(BackendError::QuotaExceeded(format!(
                        "tenant KV storage is limited to {} keys",
                        quota.max_keys
                    )));
                }
                Some(_) => return Ok(reply),
                None => {
                    return Err(BackendError::Other(format!(
                        "{what}: empty reply from the Redis script"
                    )));
                }
            }
        }
        Err(BackendError::Unavailable(format!(
            "{what}: expired keys are still being swept; retry later"
        )))
    }
}

/// A TTL as whole milliseconds for the scripts, rounded up.
fn ttl_ms(ttl: Duration) -> Result<u64, BackendError> {
    if ttl.is_zero() {
        return Err(BackendError::Invalid("ttl must be positive".into()));
    }
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    if ms > MAX_TTL_MS {
        return Err(BackendError::Invalid("ttl is too large".into()));
    }
    // Fits: MAX_TTL_MS < u64::MAX.
    Ok(ms as u64)
}

/// A decoded script reply that was not what the script returns.
fn bad_reply(what: &str, reply: &[String]) -> BackendError {
    BackendError::Other(format!("{what}: unexpected Redis script reply {reply:?}"))
}

#[async_trait]
impl Kv for RedisKv {
    async fn stored(&self, tenant: &TenantId) -> Result<(u64, u64), BackendError> {
        RedisKv::stored(self, tenant).await
    }

    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.check_key(key)?;
        let value_key = self.names(tenant).value(key);
        let mut cmd = redis::cmd("GET");
        cmd.arg(value_key);
        let first = self.scope.cmd("KV get", &cmd).await;
        match first {
            // The first command after Redis came back meets the connection
            // that died with it (the manager then reconnects): a read is
            // safe to try once more.
            Err(BackendError::Unavailable(ref why)) if why != OPEN_MESSAGE => {
                self.scope.cmd("KV get", &cmd).await
            }
            other => other,
        }
    }

    async fn set(
        &self,
        tenant: &TenantId,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        quota: KvQuota,
    ) -> Result<(), BackendError> {
        self.check_key(key)?;
        self.limits.check_value(value.len())?;
        let ttl = ttl.map(ttl_ms).transpose()?.unwrap_or(0);
        let names = self.names(tenant);
        let value_key = names.value(key);
        let mut inv = self.invocation(&SCRIPTS.set, &names, Some(&value_key), self.sweep_batch);
        inv.arg(key)
            .arg(value.as_slice())
            .arg(ttl)
            .arg(quota.max_keys)
            .arg(quota.max_bytes);
        let reply = self.write("KV set", &inv, quota).await?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            _ => Err(bad_reply("KV set", &reply)),
        }
    }

    async fn delete(&self, tenant: &TenantId, key: &str) -> Result<bool, BackendError> {
        self.check_key(key)?;
        let names = self.names(tenant);
        let value_key = names.value(key);
        let mut inv = self.invocation(&SCRIPTS.delete, &names, Some(&value_key), self.sweep_batch);
        inv.arg(key);
        let deleted: u64 = self.scope.script("KV delete", &inv).await?;
        Ok(deleted > 0)
    }

    async fn incr(
        &self,
        tenant: &TenantId,
        key: &str,
        delta: i64,
        quota: KvQuota,
    ) -> Result<i64, BackendError> {
        self.check_key(key)?;
        let names = self.names(tenant);
        let value_key = names.value(key);
        let mut inv = self.invocation(&SCRIPTS.incr, &names, Some(&value_key), self.sweep_batch);
        inv.arg(key)
            .arg(delta)
            .arg(quota.max_keys)
            .arg(quota.max_bytes);
        let reply = self.write("KV incr", &inv, quota).await?;
        match reply.as_slice() {
            [status, value] if status == "ok" => {
                value.parse().map_err(|_| bad_reply("KV incr", &reply))
            }
            [status, message] if status == "invalid" => Err(BackendError::Invalid(
                message.strip_prefix("ERR ").unwrap_or(message).to_owned(),
            )),
            _ => Err(bad_reply("KV incr", &reply)),
        }
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let names = self.names(tenant);
        let mut removed = 0;
        let mut passes = 0;
        let mut cursor = String::from("0");
        loop {
            let mut inv = self.invocation(&SCRIPTS.purge, &names, None, PURGE_BATCH);
            inv.arg(&cursor);
            let (next, deleted, left): (String, u64, u64) =
                self.scope.script("KV purge", &inv).await?;
            removed += deleted;
            if left == 0 {
                return Ok(removed);
            }
            if next == "0" {
                passes += 1;
                if passes >= MAX_PURGE_PASSES {
                    return Err(BackendError::Unavailable(format!(
                        "KV purge: tenant {tenant} still has {left} keys after {passes} passes \
                         (is it still writing?)"
                    )));
                }
            }
            cursor = next;
        }
    }
}

/// Only the tests make scripts sweep in small batches.
#[cfg(test)]
impl RedisKv {
    fn with_sweep_batches(mut self, per_call: u32, on_refusal: u32) -> Self {
        self.sweep_batch = per_call;
        self.sweep_batch_on_refusal = on_refusal;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use redis::aio::ConnectionManagerConfig;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    use super::*;
    use crate::backend::memory::conformance;
    use crate::backend::redis::test_support::{Namespace, redis_url};
    use crate::backend::redis::{COMMAND_TIMEOUT, SCRIPT_TIMEOUT};

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    async fn raw_get(conn: &mut ConnectionManager, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
    }

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_nanos(1)), Ok(1));
        assert_eq!(ttl_ms(Duration::from_millis(100)), Ok(100));
        assert_eq!(ttl_ms(Duration::from_micros(100_001)), Ok(101));
        assert_eq!(ttl_ms(Duration::from_millis(1 << 52)), Ok(1 << 52));
        for bad in [
            Duration::ZERO,
            Duration::from_millis((1 << 52) + 1),
            Duration::MAX,
        ] {
            assert!(
                matches!(ttl_ms(bad), Err(BackendError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn redis_kv_passes_the_conformance_suite() {
        let ns = Namespace::new();
        let kv = ns.kv().await;
        conformance::kv_conformance(&kv).await;
        // The suite cleans up after itself; the accounting went with it.
        for t in ["conformance-a", "conformance-b"] {
            assert_eq!(kv.purge_tenant(&tid(t)).await.unwrap(), 0, "{t}");
        }
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn size_limits_match_the_memory_store() {
        let ns = Namespace::new();
        let kv = RedisKv::with_limits(
            ns.conn().await,
            ns.0.clone(),
            MemoryKvLimits {
                max_key_bytes: 8,
                max_value_bytes: 16,
            },
        );
        let t = tid("acme");
        let q = KvQuota::UNLIMITED;
        for result in [
            kv.set(&t, "123456789", vec![], None, q).await,
            kv.set(&t, "k", vec![0; 17], None, q).await,
        ] {
            assert!(
                matches!(result, Err(BackendError::TooLarge(_))),
                "{result:?}"
            );
        }
        assert!(matches!(
            kv.get(&t, "123456789").await,
            Err(BackendError::TooLarge(_))
        ));
        kv.set(&t, "12345678", vec![0; 16], None, q).await.unwrap();
        assert!(matches!(
            kv.set(
                &t,
                "k",
                b"x".to_vec(),
                Some(Duration::from_secs(u64::MAX)),
                q
            )
            .await,
            Err(BackendError::Invalid(_))
        ));
        assert_eq!(kv.purge_tenant(&t).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn accounting_tracks_sets_replacements_and_deletes() {
        let ns = Namespace::new();
        let kv = ns.kv().await;
        let t = tid("acme");
        let q = KvQuota::UNLIMITED;
        kv.set(&t, "a", vec![0; 10], None, q).await.unwrap();
        kv.set(&t, "bb", vec![0; 5], Some(Duration::from_secs(60)), q)
            .await
            .unwrap();
        assert_eq!(kv.stored(&t).await.unwrap(), (2, 11 + 7));
        kv.set(&t, "a", vec![0; 3], None, q).await.unwrap();
        assert_eq!(kv.stored(&t).await.unwrap(), (2, 4 + 7));
        assert_eq!(kv.incr(&t, "n", 100, q).await.unwrap(), 100);
        assert_eq!(kv.stored(&t).await.unwrap(), (3, 4 + 7 + 4));
        assert_eq!(kv.incr(&t, "n", -99, q).await.unwrap(), 1);
        assert_eq!(kv.stored(&t).await.unwrap(), (3, 4 + 7 + 2));
        assert!(kv.delete(&t, "bb").await.unwrap());
        assert!(kv.delete(&t, "a").await.unwrap());
        assert!(kv.delete(&t, "n").await.unwrap());
        assert_eq!(kv.stored(&t).await.unwrap(), (0, 0));
        // The bookkeeping keys went with the last key.
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn ttl_expiry_frees_quota() {
        let ns = Namespace::new();
        let kv = ns.kv().await;
        let t = tid("acme");
        let q = KvQuota {
            max_keys: 2,
            max_bytes: 1000,
        };
        let ttl = Some(Duration::from_millis(100));
        kv.set(&t, "a", b"1".to_vec(), ttl, q).await.unwrap();
        kv.set(&t, "b", b"1".to_vec(), ttl, q).await.unwrap();
        assert!(matches!(
            kv.set(&t, "c", b"1".to_vec(), None, q).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        assert!(matches!(
            kv.incr(&t, "c", 1, q).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Redis already hides the values; the accounting has not moved yet.
        assert_eq!(kv.get(&t, "a").await.unwrap(), None);
        assert_eq!(kv.stored(&t).await.unwrap(), (2, 4));
        kv.set(&t, "c", b"1".to_vec(), None, q).await.unwrap();
        assert_eq!(kv.incr(&t, "d", 1, q).await.unwrap(), 1);
        assert_eq!(kv.stored(&t).await.unwrap(), (2, 4));
        let prefix = TenantKeys::new(&ns.0, &t);
        assert_eq!(
            ns.keys(),
            vec![
                prefix.name("kv", "c"),
                prefix.name("kv", "d"),
                prefix.fixed("kvbytes"),
                prefix.fixed("kvsizes"),
            ]
        );
        assert_eq!(kv.purge_tenant(&t).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn many_expired_keys_are_swept_before_a_refusal() {
        let ns = Namespace::new();
        // Tiny batches: the write needs several `retry` rounds.
        let kv = ns.kv().await.with_sweep_batches(2, 3);
        let t = tid("acme");
        let q = KvQuota {
            max_keys: 40,
            max_bytes: 10_000,
        };
        for i in 0..40 {
            kv.set(
                &t,
                &format!("k{i}"),
                b"v".to_vec(),
                Some(Duration::from_millis(50)),
                q,
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let one = KvQuota {
            max_keys: 1,
            max_bytes: 10_000,
        };
        kv.set(&t, "fresh", b"v".to_vec(), None, one).await.unwrap();
        assert_eq!(kv.stored(&t).await.unwrap(), (1, 6));
        assert_eq!(kv.purge_tenant(&t).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn two_hosts_share_one_quota_under_concurrency() {
        let ns = Namespace::new();
        let hosts = [Arc::new(ns.kv().await), Arc::new(ns.kv().await)];
        let t = tid("acme");
        let q = KvQuota {
            max_keys: 10,
            max_bytes: 1 << 20,
        };
        let mut tasks = Vec::new();
        for i in 0..50 {
            let kv = hosts[i % 2].clone();
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                kv.set(&t, &format!("k{i:02}"), vec![1; 100], None, q).await
            }));
        }
        let mut stored = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => stored += 1,
                Err(BackendError::QuotaExceeded(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(stored, 10);
        assert_eq!(hosts[1].stored(&t).await.unwrap(), (10, 10 * 103));
        let values = ns
            .keys()
            .into_iter()
            .filter(|k| k.contains("}:kv:"))
            .count();
        assert_eq!(values, 10);
        assert!(matches!(
            hosts[0].set(&t, "k99", vec![], None, q).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        assert_eq!(hosts[0].purge_tenant(&t).await.unwrap(), 10);
    }

    #[tokio::test]
    async fn concurrent_incrs_from_two_hosts_add_up() {
        let ns = Namespace::new();
        let hosts = [Arc::new(ns.kv().await), Arc::new(ns.kv().await)];
        let t = tid("acme");
        let mut tasks = Vec::new();
        for i in 0..100 {
            let kv = hosts[i % 2].clone();
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                kv.incr(&t, "ctr", 3, KvQuota::UNLIMITED).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            hosts[0].get(&t, "ctr").await.unwrap(),
            Some(b"300".to_vec())
        );
        assert_eq!(hosts[1].stored(&t).await.unwrap(), (1, 6));
        assert_eq!(hosts[1].purge_tenant(&t).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn equal_keys_of_two_tenants_are_distinct_redis_keys() {
        let ns = Namespace::new();
        let kv = ns.kv().await;
        let (a, b) = (tid("acme"), tid("beta"));
        let q = KvQuota::UNLIMITED;
        kv.set(&a, "same", b"from a".to_vec(), None, q)
            .await
            .unwrap();
        kv.set(&b, "same", b"from b".to_vec(), None, q)
            .await
            .unwrap();
        // A key trying to climb out of its tenant stays inside it.
        kv.set(&a, "}:kv:same", b"evil".to_vec(), None, q)
            .await
            .unwrap();
        let mut raw = ns.conn().await;
        let a_key = format!("{}:t:{{acme}}:kv:same", ns.0);
        let b_key = format!("{}:t:{{beta}}:kv:same", ns.0);
        assert_eq!(raw_get(&mut raw, &a_key).await, Some(b"from a".to_vec()));
        assert_eq!(raw_get(&mut raw, &b_key).await, Some(b"from b".to_vec()));
        assert_eq!(kv.get(&b, "same").await.unwrap(), Some(b"from b".to_vec()));
        let keys = ns.keys();
        assert!(
            keys.iter()
                .all(|k| k.starts_with(&format!("{}:t:{{", ns.0)))
        );
        assert_eq!(keys.iter().filter(|k| k.contains("{acme}")).count(), 4);
        assert_eq!(keys.iter().filter(|k| k.contains("{beta}")).count(), 3);
        // Purging one tenant leaves the other whole.
        assert_eq!(kv.purge_tenant(&a).await.unwrap(), 2);
        assert_eq!(raw_get(&mut raw, &a_key).await, None);
        assert_eq!(raw_get(&mut raw, &b_key).await, Some(b"from b".to_vec()));
        assert_eq!(kv.purge_tenant(&b).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn purge_walks_large_tenants_in_batches() {
        let ns = Namespace::new();
        let kv = ns.kv().await;
        let t = tid("acme");
        let other = tid("other");
        let q = KvQuota::UNLIMITED;
        // Past the listpack encoding: HSCAN pages through a real hash table.
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let kv = kv.clone();
            let t = t.clone();
            let ttl = (i % 3 == 0).then_some(Duration::from_secs(60));
            tasks.push(tokio::spawn(async move {
                kv.set(&t, &format!("key-{i}"), vec![7; 20], ttl, q).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        kv.set(&other, "key-1", b"stays".to_vec(), None, q)
            .await
            .unwrap();
        assert_eq!(kv.stored(&t).await.unwrap().0, 1000);
        assert_eq!(kv.purge_tenant(&t).await.unwrap(), 1000);
        assert_eq!(kv.stored(&t).await.unwrap(), (0, 0));
        assert!(ns.keys().iter().all(|k| k.contains("{other}")));
        assert_eq!(
            kv.get(&other, "key-1").await.unwrap(),
            Some(b"stays".to_vec())
        );
        assert_eq!(kv.purge_tenant(&other).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn unreachable_redis_is_an_error_not_a_hang() {
        // Nothing listens: connecting fails fast.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", closed.local_addr().unwrap());
        drop(closed);
        let started = Instant::now();
        assert!(matches!(
            crate::backend::redis::connect(&url).await,
            Err(BackendError::Unavailable(_))
        ));
        // (The manager retries a refused connection until CONNECT_TIMEOUT.)
        let bound = crate::backend::redis::CONNECT_TIMEOUT + Duration::from_secs(1);
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        let started = Instant::now();
        // A store whose connection was never made answers with an error.
        let client = redis::Client::open(url.as_str()).unwrap();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1);
        let lazy = ConnectionManager::new_lazy_with_config(client, config).unwrap();
        let kv = RedisKv::new(lazy, "tenantry-test-unreachable".into());
        let t = tid("acme");
        let err = kv.get(&t, "k").await.unwrap_err();
        assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
        let err = kv
            .set(&t, "k", b"v".to_vec(), None, KvQuota::UNLIMITED)
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    /// How the test proxy treats its connections.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Forward,
        /// Keep connections open, pass nothing (a stuck Redis).
        Stall,
        /// Close every connection and refuse new ones (Redis is gone).
        Down,
    }

    /// Wait until the proxy's mode satisfies `want`.
    async fn until(rx: &mut watch::Receiver<Mode>, want: fn(Mode) -> bool) {
        let _ = rx.wait_for(|m| want(*m)).await;
    }

    /// A TCP proxy to the test Redis; `mode` switches it.
    async fn proxy() -> (String, watch::Sender<Mode>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let upstream = redis_url()
            .strip_prefix("redis://")
            .unwrap()
            .trim_end_matches('/')
            .to_owned();
        let (mode, watch) = watch::channel(Mode::Forward);
        tokio::spawn(async move {
            loop {
                let mut rx = watch.clone();
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = until(&mut rx, |m| m == Mode::Down) => return,
                };
                let Ok((mut client, _)) = accepted else {
                    return;
                };
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let forward = *rx.borrow() == Mode::Forward;
                    if forward && let Ok(mut server) = TcpStream::connect(upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                            () = until(&mut rx, |m| m != Mode::Forward) => {}
                        }
                    }
                    until(&mut rx, |m| m == Mode::Down).await;
                    let _ = client.shutdown().await;
                });
            }
        });
        (url, mode)
    }

    #[tokio::test]
    async fn a_stuck_or_lost_redis_is_an_error_not_a_hang() {
        let ns = Namespace::new();
        let (url, mode) = proxy().await;
        let conn = crate::backend::redis::connect(&url).await.unwrap();
        let kv = RedisKv::new(conn, ns.0.clone());
        let t = tid("acme");
        let q = KvQuota::UNLIMITED;
        kv.set(&t, "k", b"v".to_vec(), None, q).await.unwrap();

        mode.send(Mode::Stall).unwrap();
        let started = Instant::now();
        let err = kv.get(&t, "k").await.unwrap_err();
        assert_eq!(err, BackendError::Timeout);
        let err = kv.set(&t, "k", b"w".to_vec(), None, q).await.unwrap_err();
        assert!(
            matches!(err, BackendError::Timeout | BackendError::Unavailable(_)),
            "{err:?}"
        );
        assert!(
            started.elapsed() < SCRIPT_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );

        mode.send(Mode::Down).unwrap();
        // The first call sees the connection drop; later ones wait for the
        // manager's reconnection, at most as long as a call may take.
        for _ in 0..3 {
            let started = Instant::now();
            let err = kv.get(&t, "k").await.unwrap_err();
            assert!(
                matches!(err, BackendError::Timeout | BackendError::Unavailable(_)),
                "{err:?}"
            );
            assert!(
                started.elapsed() < COMMAND_TIMEOUT + Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
        }

        // Redis itself still has the value the stuck write did not replace.
        let direct = ns.kv().await;
        assert_eq!(direct.get(&t, "k").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(direct.purge_tenant(&t).await.unwrap(), 1);
    }

    /// Redis goes away (a private redis-server, killed): after the
    /// threshold every call fails fast with the breaker's `Unavailable`;
    /// Redis restarted: the prober heals the breaker after the reset
    /// timeout and calls work again. Prints the measured times.
    #[tokio::test]
    async fn outage_fails_fast_then_recovers() {
        use crate::backend::breaker::test_redis::OwnRedis;
        use crate::backend::breaker::{self, BreakerConfig, CircuitBreaker, OPEN_MESSAGE};

        let mut redis = OwnRedis::start().await;
        let conn = crate::backend::redis::connect(&redis.url()).await.unwrap();
        let config = BreakerConfig {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(1),
        };
        let shared = Arc::new(CircuitBreaker::new("redis", config));
        let _prober = breaker::spawn_redis_prober(&shared, conn.clone());
        let kv = RedisKv::new(conn, "outage".into()).with_breaker(Arc::clone(&shared));
        let t = tid("acme");
        let q = KvQuota {
            max_keys: 1,
            max_bytes: 1 << 20,
        };
        kv.set(&t, "k", b"v".to_vec(), None, q).await.unwrap();
        // A refusal is an answer: it does not count.
        for _ in 0..6 {
            let err = kv.set(&t, "k2", b"v".to_vec(), None, q).await.unwrap_err();
            assert!(matches!(err, BackendError::QuotaExceeded(_)), "{err:?}");
        }
        assert!(shared.is_healthy());

        redis.kill().await;
        let killed = Instant::now();
        let mut before_open = Vec::new();
        let mut open = Vec::new();
        for i in 0..10 {
            let started = Instant::now();
            // (A failed `get` is tried twice: incr counts one failure a call.)
            let err = if i < 5 {
                kv.incr(&t, "n", 1, q).await.unwrap_err()
            } else {
                kv.get(&t, "k").await.unwrap_err()
            };
            let took = started.elapsed();
            assert!(took < COMMAND_TIMEOUT + Duration::from_secs(1), "{took:?}");
            if err == BackendError::Unavailable(OPEN_MESSAGE.into()) {
                open.push(took);
            } else {
                assert!(
                    matches!(err, BackendError::Timeout | BackendError::Unavailable(_)),
                    "{err:?}"
                );
                before_open.push(took);
            }
        }
        assert_eq!(before_open.len(), 5, "broken after exactly the threshold");
        assert_eq!(open.len(), 5);
        assert!(
            open.iter().all(|d| *d < Duration::from_millis(5)),
            "{open:?}"
        );
        eprintln!(
            "redis kv outage: failing calls before the breaker opened took {before_open:?}; then fail-fast calls took {open:?}; breaker open {:?} after the kill",
            killed.elapsed()
        );

        redis.restart().await;
        let restarted = Instant::now();
        let mut calls = 0;
        loop {
            calls += 1;
            match kv.get(&t, "k").await {
                // A fresh Redis: the value is gone.
                Ok(v) => {
                    assert_eq!(v, None);
                    break;
                }
                Err(e) => assert!(
                    matches!(e, BackendError::Timeout | BackendError::Unavailable(_)),
                    "{e:?}"
                ),
            }
            assert!(restarted.elapsed() < Duration::from_secs(10), "no recovery");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "redis kv outage: KV answered again {:?} after Redis was back ({calls} calls; reset timeout {:?})",
            restarted.elapsed(),
            config.reset_timeout
        );
        assert!(shared.is_healthy());
        kv.set(&t, "k", b"w".to_vec(), None, q).await.unwrap();
        assert_eq!(kv.get(&t, "k").await.unwrap(), Some(b"w".to_vec()));
    }

    /// Redis `calls` and `usec` per command since the server started.
    async fn command_calls(
        conn: &mut ConnectionManager,
    ) -> std::collections::HashMap<String, (u64, u64)> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .unwrap();
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let mut fields = stats.split(',').filter_map(|f| f.split_once('='));
                let calls = fields.next()?.1.parse().ok()?;
                let usec = fields.next()?.1.parse().ok()?;
                Some((name.to_owned(), (calls, usec)))
            })
            .collect()
    }

    /// Not a check: prints the latency of each operation and the Redis
    /// commands it costs (INFO commandstats deltas, so run it on a quiet
    /// Redis), then the throughput of concurrent sets. Run with
    /// `cargo test -p tenantry --lib redis::kv::tests::measure -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn measure() {
        const N: usize = 2000;
        let ns = Namespace::new();
        let kv = Arc::new(ns.kv().await);
        let mut raw = ns.conn().await;
        let t = tid("acme");
        let q = KvQuota {
            max_keys: 1_000_000,
            max_bytes: 1 << 30,
        };
        let ttl = Some(Duration::from_secs(60));
        for op in ["set", "set+ttl", "get", "incr", "delete"] {
            let before = command_calls(&mut raw).await;
            let started = Instant::now();
            for i in 0..N {
                let key = format!("key-{i}");
                match op {
                    "set" => kv.set(&t, &key, vec![1; 100], None, q).await.map(drop),
                    "set+ttl" => kv.set(&t, &key, vec![1; 100], ttl, q).await.map(drop),
                    "get" => kv.get(&t, &key).await.map(drop),
                    "incr" => kv.incr(&t, &format!("n-{i}"), 1, q).await.map(drop),
                    _ => kv.delete(&t, &key).await.map(drop),
                }
                .unwrap();
            }
            let elapsed = started.elapsed();
            let after = command_calls(&mut raw).await;
            let mut per_op: Vec<String> = after
                .iter()
                .filter_map(|(name, (calls, _))| {
                    let delta = calls - before.get(name).map_or(0, |c| c.0);
                    (delta > 0 && name != "info")
                        .then(|| format!("{name} {:.2}", delta as f64 / N as f64))
                })
                .collect();
            per_op.sort();
            let server_us = |name: &str| {
                let (calls, usec) = after.get(name).copied().unwrap_or_default();
                let (calls0, usec0) = before.get(name).copied().unwrap_or_default();
                (usec - usec0) as f64 / (calls - calls0).max(1) as f64
            };
            eprintln!(
                "{op:8} {:6.1} us/op, in Redis {:.1} us; commands per op: {}",
                elapsed.as_secs_f64() * 1e6 / N as f64,
                server_us(if op == "get" { "get" } else { "evalsha" }),
                per_op.join(", ")
            );
        }
        for tasks in [1usize, 16, 64] {
            let started = Instant::now();
            let mut handles = Vec::new();
            for task in 0..tasks {
                let kv = kv.clone();
                let t = t.clone();
                handles.push(tokio::spawn(async move {
                    for i in 0..N / tasks {
                        kv.set(&t, &format!("c-{task}-{i}"), vec![1; 100], None, q)
                            .await
                            .unwrap();
                    }
                }));
            }
            for handle in handles {
                handle.await.unwrap();
            }
            let done = (N / tasks) * tasks;
            eprintln!(
                "{tasks:2} concurrent callers: {:.0} sets/s",
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
        kv.purge_tenant(&t).await.unwrap();
    }
}
