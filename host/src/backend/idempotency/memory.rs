//! The in-process idempotency store: the memory twin of
//! [`super::redis::RedisIdempotency`].
//!
//! # Bound
//!
//! At most [`MemoryIdempotencyLimits::max_records`] records and
//! [`MemoryIdempotencyLimits::max_bytes`] bytes of keys plus results are
//! stored across all tenants (defaults [`DEFAULT_MAX_RECORDS`],
//! [`DEFAULT_MAX_BYTES`]). Each operation removes up to [`SWEEP_PER_OP`]
//! expired records. A write that would go over a bound first removes every
//! expired record, then evicts committed results, soonest to expire first
//! (a retry of an evicted key runs the work again). Pending records are
//! never evicted: if they alone fill the store, the write fails with
//! `QuotaExceeded` (the caller must not run the work).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{IdemAcquire, IdempotencyStore, check_key, check_result, ttl_ms};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Default bound on stored records per process.
pub const DEFAULT_MAX_RECORDS: usize = 100_000;

/// Default bound on stored key and result bytes per process: 256 MiB.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// Expired records each operation removes.
pub const SWEEP_PER_OP: usize = 32;

/// The bounds of a [`MemoryIdempotency`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryIdempotencyLimits {
    /// Records stored at once.
    pub max_records: usize,
    /// Bytes of keys plus results stored at once.
    pub max_bytes: usize,
}

impl Default for MemoryIdempotencyLimits {
    fn default() -> Self {
        Self {
            max_records: DEFAULT_MAX_RECORDS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    /// `None` while pending.
    result: Option<Arc<str>>,
    expires_at: Instant,
}

impl Record {
    fn bytes(&self, key: &str) -> usize {
        key.len() + self.result.as_ref().map_or(0, |r| r.len())
    }
}

/// An index entry: when, whose, which key.
type Due = (Instant, TenantId, Box<str>);

#[derive(Default)]
struct State {
    tenants: HashMap<TenantId, HashMap<Box<str>, Record>>,
    /// Pending records by expiry.
    pending: BTreeSet<Due>,
    /// Committed records by expiry.
    done: BTreeSet<Due>,
    /// Records stored, and bytes of their keys and results.
    records: usize,
    bytes: usize,
    /// The part of `records` and `bytes` that is committed results.
    done_records: usize,
    done_bytes: usize,
}

impl State {
    /// The record of `key` if it has not expired (an expired one is removed).
    fn live(&mut self, tenant: &TenantId, key: &str, now: Instant) -> Option<&Record> {
        let expired = self.tenants.get(tenant)?.get(key)?.expires_at <= now;
        if expired {
            self.remove(tenant, key);
            return None;
        }
        self.tenants.get(tenant)?.get(key)
    }

    fn remove(&mut self, tenant: &TenantId, key: &str) -> Option<Record> {
        let keys = self.tenants.get_mut(tenant)?;
        let (k, record) = keys.remove_entry(key)?;
        if keys.is_empty() {
            self.tenants.remove(tenant);
        }
        let bytes = record.bytes(&k);
        self.records -= 1;
        self.bytes -= bytes;
        let due = (record.expires_at, tenant.clone(), k);
        if record.result.is_some() {
            self.done_records -= 1;
            self.done_bytes -= bytes;
            self.done.remove(&due);
        } else {
            self.pending.remove(&due);
        }
        Some(record)
    }

    /// Store `record` at `key` (replacing any), making room as the module
    /// docs say; `QuotaExceeded` (and nothing changed) if there is none.
    fn put(
        &mut self,
        tenant: &TenantId,
        key: &str,
        record: Record,
        now: Instant,
        limits: MemoryIdempotencyLimits,
    ) -> Result<(), BackendError> {
        let new_bytes = record.bytes(key);
        let fits = |s: &Self| {
            let old = s.tenants.get(tenant).and_then(|m| m.get(key));
            let records = s.records + usize::from(old.is_none());
            let bytes = s.bytes - old.map_or(0, |r| r.bytes(key)) + new_bytes;
            records <= limits.max_records && bytes <= limits.max_bytes
        };
        if !fits(self) {
            self.sweep(now, usize::MAX);
            // Would evicting every other result be enough?
            let old = self.tenants.get(tenant).and_then(|m| m.get(key));
            let old_bytes = old.map_or(0, |r| r.bytes(key));
            let (other_records, other_bytes) = match old {
                Some(r) if r.result.is_some() => {
                    (self.done_records - 1, self.done_bytes - old_bytes)
                }
                _ => (self.done_records, self.done_bytes),
            };
            let least_records = self.records - other_records + usize::from(old.is_none());
            let least_bytes = self.bytes - other_bytes - old_bytes + new_bytes;
            if least_records > limits.max_records || least_bytes > limits.max_bytes {
                return Err(BackendError::QuotaExceeded(format!(
                    "the idempotency store is full ({} records, {} bytes at most)",
                    limits.max_records, limits.max_bytes
                )));
            }
            while !fits(self) {
                // Evict the committed result soonest to expire (not `key`'s).
                let victim = self
                    .done
                    .iter()
                    .find(|(_, t, k)| !(t == tenant && &**k == key))
                    .cloned();
                let Some((_, t, k)) = victim else {
                    break;
                };
                self.remove(&t, &k);
            }
        }
        self.remove(tenant, key);
        self.records += 1;
        self.bytes += new_bytes;
        let due = (record.expires_at, tenant.clone(), Box::from(key));
        if record.result.is_some() {
            self.done_records += 1;
            self.done_bytes += new_bytes;
            self.done.insert(due);
        } else {
            self.pending.insert(due);
        }
        self.tenants
            .entry(tenant.clone())
            .or_default()
            .insert(Box::from(key), record);
        Ok(())
    }

    /// Remove up to `limit` expired records.
    fn sweep(&mut self, now: Instant, limit: usize) {
        for _ in 0..limit {
            let first = |set: &BTreeSet<Due>| set.first().filter(|d| d.0 <= now).cloned();
            let Some((_, t, k)) = first(&self.pending).or_else(|| first(&self.done)) else {
                return;
            };
            self.remove(&t, &k);
        }
    }
}

/// An [`IdempotencyStore`] in this process's memory (see the module docs).
pub struct MemoryIdempotency {
    state: Mutex<State>,
    limits: MemoryIdempotencyLimits,
}

impl Default for MemoryIdempotency {
    fn default() -> Self {
        Self::with_limits(MemoryIdempotencyLimits::default())
    }
}

impl std::fmt::Debug for MemoryIdempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (records, bytes) = self.stored();
        f.debug_struct("MemoryIdempotency")
            .field("limits", &self.limits)
            .field("records", &records)
            .field("bytes", &bytes)
            .finish()
    }
}

impl MemoryIdempotency {
    /// An empty store with the default bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given bounds.
    pub fn with_limits(limits: MemoryIdempotencyLimits) -> Self {
        Self {
            state: Mutex::new(State::default()),
            limits,
        }
    }

    /// Records and bytes stored now, including expired ones not swept yet.
    pub fn stored(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.records, state.bytes)
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotency {
    async fn acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        pending_ttl: Duration,
    ) -> Result<IdemAcquire, BackendError> {
        check_key(key)?;
        ttl_ms("pending ttl", pending_ttl)?;
        let now = Instant::now();
        let result = {
            let mut state = self.state.lock();
            state.sweep(now, SWEEP_PER_OP);
            match state.live(tenant, key, now) {
                Some(Record {
                    result: Some(result),
                    ..
                }) => Arc::clone(result),
                Some(_) => return Ok(IdemAcquire::Pending),
                None => {
                    let pending = Record {
                        result: None,
                        expires_at: now + pending_ttl,
                    };
                    state.put(tenant, key, pending, now, self.limits)?;
                    return Ok(IdemAcquire::Acquired);
                }
            }
        };
        // Copied outside the lock.
        Ok(IdemAcquire::Done(result.to_string()))
    }

    async fn commit(
        &self,
        tenant: &TenantId,
        key: &str,
        result: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        check_key(key)?;
        check_result(result)?;
        ttl_ms("result ttl", ttl)?;
        let result: Arc<str> = Arc::from(result);
        let now = Instant::now();
        let mut state = self.state.lock();
        state.sweep(now, SWEEP_PER_OP);
        let done = Record {
            result: Some(result),
            expires_at: now + ttl,
        };
        state.put(tenant, key, done, now, self.limits)
    }

    async fn abort(&self, tenant: &TenantId, key: &str) -> Result<bool, BackendError> {
        check_key(key)?;
        let now = Instant::now();
        let mut state = self.state.lock();
        state.sweep(now, SWEEP_PER_OP);
        let pending = state
            .live(tenant, key, now)
            .is_some_and(|r| r.result.is_none());
        if pending {
            state.remove(tenant, key);
        }
        Ok(pending)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let keys: Vec<Box<str>> = match state.tenants.get(tenant) {
            Some(keys) => keys.keys().cloned().collect(),
            None => return Ok(0),
        };
        let mut live = 0;
        for key in keys {
            if state
                .remove(tenant, &key)
                .is_some_and(|r| r.expires_at > now)
            {
                live += 1;
            }
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::idempotency::conformance;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn memory_idempotency_passes_the_conformance_suite() {
        let store = MemoryIdempotency::new();
        conformance::suite(&store).await;
        assert_eq!(store.stored(), (0, 0), "the suite cleans up");
    }

    #[tokio::test]
    async fn full_stores_evict_results_never_pending_records() {
        let store = MemoryIdempotency::with_limits(MemoryIdempotencyLimits {
            max_records: 3,
            max_bytes: 100,
        });
        let t = tid("acme");
        for k in ["p1", "p2"] {
            assert_eq!(store.acquire(&t, k, LONG).await, Ok(IdemAcquire::Acquired));
        }
        store.commit(&t, "d1", "1", LONG).await.unwrap();
        assert_eq!(store.stored(), (3, 7));
        // A new record evicts the result d1, not a pending record.
        assert_eq!(
            store.acquire(&t, "p3", LONG).await,
            Ok(IdemAcquire::Acquired)
        );
        assert_eq!(
            store.acquire(&t, "d1", LONG).await.ok(),
            None,
            "full of pending"
        );
        for k in ["p1", "p2", "p3"] {
            assert_eq!(
                store.acquire(&t, k, LONG).await,
                Ok(IdemAcquire::Pending),
                "{k}"
            );
        }
        // Committing a pending record replaces it: no room needed.
        store.commit(&t, "p1", "r", LONG).await.unwrap();
        assert_eq!(store.stored(), (3, 7));
        // Bytes: a result that cannot fit even after evicting every other
        // result is refused and changes nothing.
        let big = "x".repeat(99);
        assert!(matches!(
            store.commit(&t, "p2", &big, LONG).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        assert_eq!(store.stored(), (3, 7));
        assert_eq!(
            store.acquire(&t, "p1", LONG).await,
            Ok(IdemAcquire::Done("r".into()))
        );
        assert_eq!(
            store.acquire(&t, "p2", LONG).await,
            Ok(IdemAcquire::Pending)
        );
        // p3 (2 bytes) + p2 (2 + 96) = 100: fits once p1's result is evicted.
        let fits = "x".repeat(96);
        store.commit(&t, "p2", &fits, LONG).await.unwrap();
        assert_eq!(store.stored(), (2, 100));
        assert_eq!(
            store.acquire(&t, "p2", LONG).await,
            Ok(IdemAcquire::Done(fits))
        );
        // The new pending p1 needs room: p2's result goes.
        assert_eq!(
            store.acquire(&t, "p1", LONG).await,
            Ok(IdemAcquire::Acquired),
            "evicted"
        );
        assert_eq!(store.stored(), (2, 4));
        // Expired records make room first.
        assert_eq!(store.purge_tenant(&t).await.unwrap(), 2);
        let short = Duration::from_millis(20);
        for k in ["e1", "e2", "e3"] {
            store.acquire(&t, k, short).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            store.acquire(&t, "n", LONG).await,
            Ok(IdemAcquire::Acquired)
        );
        assert_eq!(store.stored(), (1, 1));
        assert_eq!(store.purge_tenant(&t).await.unwrap(), 1);
    }
}
