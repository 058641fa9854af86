//! The in-process lock: the memory twin of [`super::redis::RedisLock`].
//!
//! Fencing tokens come from one counter of the store, so they increase
//! across all keys (and so per key).
//!
//! # Bound
//!
//! At most [`MemoryLock::max_locks`] locks (default [`DEFAULT_MAX_LOCKS`])
//! are held at once across all tenants. Each operation removes up to
//! [`SWEEP_PER_OP`] expired locks; an acquire at the bound first removes
//! every expired lock and, if the store is still full, fails with
//! `QuotaExceeded` (a held lock is never evicted).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{DistributedLock, LockLease, check_key, check_lease, check_wait, poll};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Default bound on locks held at once per process.
pub const DEFAULT_MAX_LOCKS: usize = 100_000;

/// Expired locks each operation removes.
pub const SWEEP_PER_OP: usize = 32;

/// A held lock: its token and when it expires.
#[derive(Debug, Clone, Copy)]
struct Held {
    token: u64,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    tenants: HashMap<TenantId, HashMap<Box<str>, Held>>,
    /// Every lock by expiry.
    expiry: BTreeSet<(Instant, TenantId, Box<str>)>,
    /// Locks stored (expired or not).
    len: usize,
    /// The last token handed out.
    last_token: u64,
}

impl State {
    /// The lock of `key` if it is still held (an expired one is removed).
    fn live(&mut self, tenant: &TenantId, key: &str, now: Instant) -> Option<Held> {
        let held = *self.tenants.get(tenant)?.get(key)?;
        if held.expires_at <= now {
            self.remove(tenant, key);
            return None;
        }
        Some(held)
    }

    fn remove(&mut self, tenant: &TenantId, key: &str) -> Option<Held> {
        let keys = self.tenants.get_mut(tenant)?;
        let (k, held) = keys.remove_entry(key)?;
        if keys.is_empty() {
            self.tenants.remove(tenant);
        }
        self.expiry.remove(&(held.expires_at, tenant.clone(), k));
        self.len -= 1;
        Some(held)
    }

    fn insert(&mut self, tenant: &TenantId, key: &str, held: Held) {
        self.expiry
            .insert((held.expires_at, tenant.clone(), Box::from(key)));
        self.tenants
            .entry(tenant.clone())
            .or_default()
            .insert(Box::from(key), held);
        self.len += 1;
    }

    fn sweep(&mut self, now: Instant, limit: usize) {
        for _ in 0..limit {
            let Some((at, t, k)) = self.expiry.first().cloned() else {
                return;
            };
            if at > now {
                return;
            }
            self.remove(&t, &k);
        }
    }
}

/// A [`DistributedLock`] in this process's memory (see the module docs).
pub struct MemoryLock {
    state: Mutex<State>,
    max_locks: usize,
}

impl Default for MemoryLock {
    fn default() -> Self {
        Self::with_max_locks(DEFAULT_MAX_LOCKS)
    }
}

impl std::fmt::Debug for MemoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLock")
            .field("max_locks", &self.max_locks)
            .field("stored", &self.stored())
            .finish()
    }
}

impl MemoryLock {
    /// An empty store holding at most [`DEFAULT_MAX_LOCKS`] locks.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store holding at most `max_locks` locks (at least 1).
    pub fn with_max_locks(max_locks: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_locks: max_locks.max(1),
        }
    }

    /// The bound on locks held at once.
    pub fn max_locks(&self) -> usize {
        self.max_locks
    }

    /// Locks stored now, including expired ones not swept yet.
    pub fn stored(&self) -> usize {
        self.state.lock().len
    }

    /// One try to take the lock.
    fn try_acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<LockLease>, BackendError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.sweep(now, SWEEP_PER_OP);
        if state.live(tenant, key, now).is_some() {
            return Ok(None);
        }
        if state.len >= self.max_locks {
            state.sweep(now, usize::MAX);
            if state.len >= self.max_locks {
                return Err(BackendError::QuotaExceeded(format!(
                    "at most {} locks may be held at once",
                    self.max_locks
                )));
            }
        }
        state.last_token += 1;
        let token = state.last_token;
        let held = Held {
            token,
            expires_at: now + ttl,
        };
        state.insert(tenant, key, held);
        Ok(Some(LockLease { token }))
    }
}

#[async_trait]
impl DistributedLock for MemoryLock {
    async fn acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<LockLease>, BackendError> {
        check_lease(key, ttl)?;
        check_wait(wait)?;
        poll(wait, || async { self.try_acquire(tenant, key, ttl) }).await
    }

    async fn refresh(
        &self,
        tenant: &TenantId,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        check_lease(key, ttl)?;
        let now = Instant::now();
        let mut state = self.state.lock();
        state.sweep(now, SWEEP_PER_OP);
        match state.live(tenant, key, now) {
            Some(held) if held.token == token => {
                state.remove(tenant, key);
                let held = Held {
                    token,
                    expires_at: now + ttl,
                };
                state.insert(tenant, key, held);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(
        &self,
        tenant: &TenantId,
        key: &str,
        token: u64,
    ) -> Result<bool, BackendError> {
        check_key(key)?;
        let now = Instant::now();
        let mut state = self.state.lock();
        state.sweep(now, SWEEP_PER_OP);
        match state.live(tenant, key, now) {
            Some(held) if held.token == token => {
                state.remove(tenant, key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let Some(keys) = state.tenants.remove(tenant) else {
            return Ok(0);
        };
        let mut live = 0;
        for (k, held) in keys {
            state.expiry.remove(&(held.expires_at, tenant.clone(), k));
            state.len -= 1;
            if held.expires_at > now {
                live += 1;
            }
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::lock::conformance;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn memory_lock_passes_the_conformance_suite() {
        let lock = MemoryLock::new();
        conformance::suite(&lock).await;
        assert_eq!(lock.stored(), 0, "the suite cleans up");
    }

    #[tokio::test]
    async fn the_bound_refuses_new_locks_but_never_evicts_held_ones() {
        let lock = MemoryLock::with_max_locks(2);
        let t = tid("acme");
        let ttl = Duration::from_secs(60);
        let l1 = lock.acquire(&t, "a", ttl, Duration::ZERO).await.unwrap();
        lock.acquire(&t, "b", ttl, Duration::ZERO).await.unwrap();
        assert!(matches!(
            lock.acquire(&t, "c", ttl, Duration::ZERO).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        assert_eq!(lock.acquire(&t, "a", ttl, Duration::ZERO).await, Ok(None));
        assert!(lock.release(&t, "a", l1.unwrap().token).await.unwrap());
        assert!(
            lock.acquire(&t, "c", ttl, Duration::ZERO)
                .await
                .unwrap()
                .is_some()
        );
        // Expired locks make room.
        let short = Duration::from_millis(20);
        lock.purge_tenant(&t).await.unwrap();
        lock.acquire(&t, "x", short, Duration::ZERO).await.unwrap();
        lock.acquire(&t, "y", short, Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            lock.acquire(&t, "z", ttl, Duration::ZERO)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(lock.stored(), 1);
        assert_eq!(lock.purge_tenant(&t).await.unwrap(), 1);
    }
}
