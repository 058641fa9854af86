//! The in-process key-value store.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::backend::{BackendError, Kv, KvQuota};
use crate::tenant::TenantId;

/// Number of shards (a power of two); a tenant lives in one shard.
const SHARDS: usize = 16;

/// At most this many expired keys are removed per operation (amortised sweep).
const SWEEP_PER_OP: usize = 32;

/// [`MemoryKv::purge_expired`] releases a shard's lock after this many removals.
const PURGE_CHUNK: usize = 1024;

/// Size limits of a [`MemoryKv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryKvLimits {
    /// Longest key in bytes (`TooLarge` beyond). Default 1 KiB.
    pub max_key_bytes: usize,
    /// Largest value in bytes (`TooLarge` beyond). Default 1 MiB.
    pub max_value_bytes: usize,
}

impl MemoryKvLimits {
    /// `TooLarge` if `key` is longer than `max_key_bytes`.
    pub fn check_key(&self, key: &str) -> Result<(), BackendError> {
        if key.len() > self.max_key_bytes {
            return Err(BackendError::TooLarge(format!(
                "key is {} bytes, the limit is {}",
                key.len(),
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    /// `TooLarge` if a value of `len` bytes is over `max_value_bytes`.
    pub fn check_value(&self, len: usize) -> Result<(), BackendError> {
        if len > self.max_value_bytes {
            return Err(BackendError::TooLarge(format!(
                "value is {len} bytes, the limit is {}",
                self.max_value_bytes
            )));
        }
        Ok(())
    }
}

impl Default for MemoryKvLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
        }
    }
}

struct Entry {
    value: Vec<u8>,
    expires_at: Option<Instant>,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

#[derive(Default)]
struct TenantMap {
    entries: HashMap<Box<str>, Entry>,
    /// Sum of key and value lengths of `entries`.
    bytes: usize,
}

#[derive(Default)]
struct Shard {
    tenants: HashMap<TenantId, TenantMap>,
    /// Every entry with a TTL, by expiry time.
    expiry: BTreeSet<(Instant, TenantId, Box<str>)>,
}

impl Shard {
    /// Remove `key` of `tenant` and its expiry index entry; the old entry.
    fn remove(&mut self, tenant: &TenantId, key: &str) -> Option<Entry> {
        let map = self.tenants.get_mut(tenant)?;
        let (k, entry) = map.entries.remove_entry(key)?;
        map.bytes -= k.len() + entry.value.len();
        if map.entries.is_empty() {
            self.tenants.remove(tenant);
        }
        if let Some(at) = entry.expires_at {
            self.expiry.remove(&(at, tenant.clone(), k));
        }
        Some(entry)
    }

    /// The live entry at `key`, removing it first if it has expired.
    fn live(&mut self, tenant: &TenantId, key: &str, now: Instant) -> Option<&Entry> {
        let expired = self
            .tenants
            .get(tenant)
            .and_then(|m| m.entries.get(key))
            .map(|e| e.expired(now))?;
        if expired {
            self.remove(tenant, key);
            return None;
        }
        self.tenants.get(tenant).and_then(|m| m.entries.get(key))
    }

    /// Store `value` at `key`, replacing any entry; enforces the tenant quota.
    fn put(
        &mut self,
        tenant: &TenantId,
        key: &str,
        value: Vec<u8>,
        expires_at: Option<Instant>,
        quota: KvQuota,
    ) -> Result<(), BackendError> {
        let map = self.tenants.entry(tenant.clone()).or_default();
        let (old, keys_after) = match map.entries.get(key) {
            Some(e) => (key.len() + e.value.len(), map.entries.len()),
            None => (0, map.entries.len() + 1),
        };
        let new = key.len() + value.len();
        let bytes_after = map.bytes - old + new;
        let over = if bytes_after as u64 > quota.max_bytes {
            Some(format!(
                "tenant KV storage is limited to {} bytes",
                quota.max_bytes
            ))
        } else if keys_after as u64 > quota.max_keys {
            Some(format!(
                "tenant KV storage is limited to {} keys",
                quota.max_keys
            ))
        } else {
            None
        };
        if let Some(message) = over {
            if map.entries.is_empty() {
                self.tenants.remove(tenant);
            }
            return Err(BackendError::QuotaExceeded(message));
        }
        self.remove(tenant, key);
        let map = self.tenants.entry(tenant.clone()).or_default();
        map.bytes += new;
        map.entries
            .insert(Box::from(key), Entry { value, expires_at });
        if let Some(at) = expires_at {
            self.expiry.insert((at, tenant.clone(), Box::from(key)));
        }
        Ok(())
    }

    /// Remove up to `limit` expired entries; how many were removed.
    fn sweep(&mut self, now: Instant, limit: usize) -> usize {
        let mut n = 0;
        while n < limit {
            let Some((at, tenant, key)) = self.expiry.first().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.remove(&tenant, &key);
            n += 1;
        }
        n
    }
}

/// A [`Kv`] in this process's memory: per-tenant maps, TTLs expired lazily
/// on access and swept incrementally (each operation removes up to a few
/// expired keys of its shard, oldest first), so expired keys do not pile up.
pub struct MemoryKv {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    limits: MemoryKvLimits,
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self::with_limits(MemoryKvLimits::default())
    }
}

impl MemoryKv {
    /// An empty store with default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: MemoryKvLimits) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            limits,
        }
    }

    fn shard(&self, tenant: &TenantId) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(tenant.as_str());
        &self.shards[(h as usize) & (SHARDS - 1)]
    }

    /// Remove every expired key now; returns how many were removed. Normal
    /// operations already sweep incrementally; this catches shards nobody
    /// touches. Locks one shard at a time, briefly.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let mut total = 0;
        for shard in self.shards.iter() {
            loop {
                let n = shard.lock().sweep(now, PURGE_CHUNK);
                total += n;
                if n < PURGE_CHUNK {
                    break;
                }
            }
        }
        total
    }

    /// Spawn a task on the current tokio runtime that calls
    /// [`MemoryKv::purge_expired`] every `every`; it ends when the store is
    /// dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(kv) = weak.upgrade() else { return };
                kv.purge_expired();
            }
        })
    }

    /// Number of keys stored for `tenant`, including expired keys not yet swept.
    pub fn stored_keys(&self, tenant: &TenantId) -> usize {
        self.shard(tenant)
            .lock()
            .tenants
            .get(tenant)
            .map_or(0, |m| m.entries.len())
    }

    /// Bytes (keys plus values) stored for `tenant`.
    pub fn stored_bytes(&self, tenant: &TenantId) -> usize {
        self.shard(tenant)
            .lock()
            .tenants
            .get(tenant)
            .map_or(0, |m| m.bytes)
    }

    fn check_key(&self, key: &str) -> Result<(), BackendError> {
        self.limits.check_key(key)
    }
}

/// Parse a value the way Redis `INCRBY` does: optional `-`, no `+`, no
/// leading zeros, no spaces, fits in an `i64`.
fn parse_redis_int(value: &[u8]) -> Option<i64> {
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == value.len(), // "0" yes, "-0" no
        [first, rest @ ..] => (b'1'..=b'9').contains(first) && rest.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[async_trait]
impl Kv for MemoryKv {
    async fn stored(&self, tenant: &TenantId) -> Result<(u64, u64), BackendError> {
        let shard = self.shard(tenant).lock();
        Ok(shard
            .tenants
            .get(tenant)
            .map_or((0, 0), |m| (m.entries.len() as u64, m.bytes as u64)))
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let removed = {
            let mut shard = self.shard(tenant).lock();
            let removed = shard.tenants.remove(tenant);
            if removed.is_some() {
                shard.expiry.retain(|(_, t, _)| t != tenant);
            }
            removed
        };
        // Values are freed outside the lock.
        Ok(removed.map_or(0, |m| m.entries.len() as u64))
    }

    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(tenant).lock();
        shard.sweep(now, SWEEP_PER_OP);
        Ok(shard.live(tenant, key, now).map(|e| e.value.clone()))
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
        let now = Instant::now();
        let expires_at = match ttl {
            None => None,
            Some(ttl) if ttl.is_zero() => {
                return Err(BackendError::Invalid("ttl must be positive".into()));
            }
            Some(ttl) => Some(
                now.checked_add(ttl)
                    .ok_or_else(|| BackendError::Invalid("ttl is too large".into()))?,
            ),
        };
        let mut shard = self.shard(tenant).lock();
        shard.sweep(now, SWEEP_PER_OP);
        shard.put(tenant, key, value, expires_at, quota)
    }

    async fn delete(&self, tenant: &TenantId, key: &str) -> Result<bool, BackendError> {
        self.check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(tenant).lock();
        shard.sweep(now, SWEEP_PER_OP);
        Ok(shard
            .remove(tenant, key)
            .is_some_and(|entry| !entry.expired(now)))
    }

    async fn incr(
        &self,
        tenant: &TenantId,
        key: &str,
        delta: i64,
        quota: KvQuota,
    ) -> Result<i64, BackendError> {
        self.check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(tenant).lock();
        shard.sweep(now, SWEEP_PER_OP);
        let (current, expires_at) = match shard.live(tenant, key, now) {
            None => (0, None),
            Some(entry) => {
                let n = parse_redis_int(&entry.value).ok_or_else(|| {
                    BackendError::Invalid("value is not an integer or out of range".into())
                })?;
                (n, entry.expires_at)
            }
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| BackendError::Invalid("increment or decrement would overflow".into()))?;
        shard.put(
            tenant,
            key,
            next.to_string().into_bytes(),
            expires_at,
            quota,
        )?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::conformance;

    const Q: KvQuota = KvQuota::UNLIMITED;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn memory_kv_passes_the_conformance_suite() {
        conformance::kv_conformance(&MemoryKv::new()).await;
    }

    #[test]
    fn redis_integer_syntax() {
        for (s, v) in [
            ("0", 0),
            ("7", 7),
            ("-12", -12),
            ("9223372036854775807", i64::MAX),
        ] {
            assert_eq!(parse_redis_int(s.as_bytes()), Some(v), "{s}");
        }
        for s in [
            "",
            "-",
            "+1",
            "01",
            "-0",
            " 1",
            "1 ",
            "1.0",
            "abc",
            "9223372036854775808",
            "١",
        ] {
            assert_eq!(parse_redis_int(s.as_bytes()), None, "{s:?}");
        }
        assert_eq!(parse_redis_int(b"-9223372036854775808"), Some(i64::MIN));
    }

    #[tokio::test]
    async fn expired_keys_do_not_accumulate() {
        let kv = MemoryKv::new();
        let t = tid("acme");
        for i in 0..500 {
            kv.set(
                &t,
                &format!("k{i}"),
                b"v".to_vec(),
                Some(Duration::from_millis(20)),
                Q,
            )
            .await
            .unwrap();
        }
        assert_eq!(kv.stored_keys(&t), 500);
        tokio::time::sleep(Duration::from_millis(40)).await;
        // Ordinary traffic on other keys sweeps the expired ones away.
        for _ in 0..20 {
            kv.get(&t, "other").await.unwrap();
        }
        assert_eq!(kv.stored_keys(&t), 0);
        assert_eq!(kv.stored_bytes(&t), 0);
    }

    #[tokio::test]
    async fn purge_expired_removes_everything_due() {
        let kv = MemoryKv::new();
        let t = tid("acme");
        kv.set(&t, "a", b"1".to_vec(), Some(Duration::from_millis(10)), Q)
            .await
            .unwrap();
        kv.set(&t, "b", b"1".to_vec(), None, Q).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(kv.purge_expired(), 1);
        assert_eq!(kv.stored_keys(&t), 1);
    }

    #[tokio::test]
    async fn sweeper_removes_expired_keys_of_idle_tenants() {
        let kv = Arc::new(MemoryKv::new());
        let t = tid("acme");
        for i in 0..3000 {
            kv.set(
                &t,
                &format!("k{i}"),
                b"v".to_vec(),
                Some(Duration::from_millis(10)),
                Q,
            )
            .await
            .unwrap();
        }
        let sweeper = kv.spawn_sweeper(Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(kv.stored_keys(&t), 0);
        drop(kv);
        tokio::time::timeout(Duration::from_secs(1), sweeper)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn limits() {
        let kv = MemoryKv::with_limits(MemoryKvLimits {
            max_key_bytes: 8,
            max_value_bytes: 16,
        });
        let q = KvQuota {
            max_keys: 3,
            max_bytes: 40,
        };
        let t = tid("acme");
        assert!(matches!(
            kv.set(&t, "123456789", vec![], None, q).await,
            Err(BackendError::TooLarge(_))
        ));
        assert!(matches!(
            kv.get(&t, "123456789").await,
            Err(BackendError::TooLarge(_))
        ));
        assert!(matches!(
            kv.set(&t, "k", vec![0; 17], None, q).await,
            Err(BackendError::TooLarge(_))
        ));
        kv.set(&t, "a", vec![0; 16], None, q).await.unwrap(); // 17 bytes
        kv.set(&t, "b", vec![0; 16], None, q).await.unwrap(); // 34 bytes
        assert!(matches!(
            kv.set(&t, "c", vec![0; 16], None, q).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        // Replacing a value counts the difference only.
        kv.set(&t, "a", vec![1; 16], None, q).await.unwrap();
        assert_eq!(kv.stored_bytes(&t), 34);
        // Another tenant has its own quota.
        kv.set(&tid("beta"), "c", vec![0; 16], None, q)
            .await
            .unwrap();
        assert!(kv.delete(&t, "a").await.unwrap());
        kv.set(&t, "c", vec![0; 16], None, q).await.unwrap();
        assert_eq!(kv.stored_bytes(&t), 34);
    }
}
