//! The in-process cursor store: per-tenant maps with tokio [`Instant`]
//! deadlines, the twin of [`super::redis::RedisCursors`].
//!
//! Per tenant: topic → entries (key → data and deadline, plus the entries
//! ordered by deadline), and an index of topics by their latest deadline
//! (when the whole topic is dead). A write to a topic drops its dead
//! entries; a write of the tenant drops its dead topics. Bounded by
//! [`CursorLimits`] per tenant; the number of tenants is bounded by the
//! tenant registry. A tenant's state is dropped when it holds no topic.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{
    CursorEntry, CursorLimits, CursorStore, check_name, check_update, too_many_entries,
    too_many_topics,
};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Number of shards (a power of two); a tenant lives in one shard.
const SHARDS: usize = 16;

#[derive(Default)]
struct Topic {
    /// Key → (data, deadline); at most `max_entries_per_topic` live ones
    /// (dead ones until the next write to the topic).
    entries: HashMap<String, (String, Instant)>,
    /// `(deadline, key)` of every entry.
    by_deadline: BTreeSet<(Instant, String)>,
}

impl Topic {
    /// The latest deadline of an entry (when the topic is dead).
    fn latest(&self) -> Option<Instant> {
        self.by_deadline.last().map(|(at, _)| *at)
    }

    /// Drop the dead entries.
    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.by_deadline.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.by_deadline.pop_first() {
                self.entries.remove(&key);
            }
        }
    }

    fn live(&self, now: Instant) -> usize {
        self.entries.values().filter(|(_, at)| *at > now).count()
    }
}

#[derive(Default)]
struct TenantState {
    /// Topic → entries; at most `max_topics_per_tenant` live ones.
    topics: HashMap<String, Topic>,
    /// `(latest deadline, topic)` of every topic.
    index: BTreeSet<(Instant, String)>,
}

impl TenantState {
    fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Drop the topics whose every entry is dead.
    fn drop_dead_topics(&mut self, now: Instant) {
        while let Some((at, _)) = self.index.first() {
            if *at > now {
                break;
            }
            if let Some((_, topic)) = self.index.pop_first() {
                self.topics.remove(&topic);
            }
        }
    }

    /// Re-file `topic` in the index after its entries changed (`old` is its
    /// latest deadline before); a topic with no live entry goes.
    fn reindex(&mut self, name: &str, old: Option<Instant>, now: Instant) {
        if let Some(old) = old {
            self.index.remove(&(old, name.to_owned()));
        }
        match self.topics.get(name).and_then(Topic::latest) {
            Some(latest) if latest > now => {
                self.index.insert((latest, name.to_owned()));
            }
            _ => {
                self.topics.remove(name);
            }
        }
    }

    fn update(
        &mut self,
        limits: &CursorLimits,
        topic: &str,
        key: &str,
        data: &str,
        now: Instant,
        deadline: Instant,
    ) -> Result<(), BackendError> {
        self.drop_dead_topics(now);
        let known_topic = self.topics.contains_key(topic);
        let t = self.topics.entry(topic.to_owned()).or_default();
        let old = t.latest();
        t.prune(now);
        if !t.entries.contains_key(key) {
            let refusal = if t.entries.len() + 1 > limits.max_entries_per_topic {
                Some(too_many_entries(limits))
            } else if !known_topic && self.index.len() + 1 > limits.max_topics_per_tenant {
                Some(too_many_topics(limits))
            } else {
                None
            };
            if let Some(e) = refusal {
                self.reindex(topic, old, now);
                return Err(e);
            }
        }
        let t = self.topics.entry(topic.to_owned()).or_default();
        if let Some((_, at)) = t.entries.remove(key) {
            t.by_deadline.remove(&(at, key.to_owned()));
        }
        t.entries
            .insert(key.to_owned(), (data.to_owned(), deadline));
        t.by_deadline.insert((deadline, key.to_owned()));
        self.reindex(topic, old, now);
        Ok(())
    }

    fn remove(&mut self, topic: &str, key: &str, now: Instant) -> bool {
        self.drop_dead_topics(now);
        let Some(t) = self.topics.get_mut(topic) else {
            return false;
        };
        let old = t.latest();
        let Some((_, at)) = t.entries.remove(key) else {
            return false;
        };
        t.by_deadline.remove(&(at, key.to_owned()));
        self.reindex(topic, old, now);
        at > now
    }
}

type Shard = HashMap<TenantId, TenantState>;

/// A [`CursorStore`] in this process's memory (see the module docs). Every
/// operation holds one shard's lock briefly and never awaits.
pub struct MemoryCursors {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    limits: CursorLimits,
}

impl Default for MemoryCursors {
    fn default() -> Self {
        Self::with_limits(CursorLimits::default())
    }
}

impl MemoryCursors {
    /// An empty store with the default [`CursorLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: CursorLimits) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
            limits,
        }
    }

    fn shard(&self, tenant: &TenantId) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(tenant.as_str());
        &self.shards[(h as usize) & (SHARDS - 1)]
    }

    /// Run `f` on the state of `tenant` (created if absent, dropped again
    /// if it is then empty).
    fn with_tenant<T>(&self, tenant: &TenantId, f: impl FnOnce(&mut TenantState) -> T) -> T {
        let mut shard = self.shard(tenant).lock();
        let state = shard.entry(tenant.clone()).or_default();
        let out = f(state);
        if state.is_empty() {
            shard.remove(tenant);
        }
        out
    }

    /// Entries stored for `tenant`, dead ones not yet dropped included.
    pub fn stored_entries(&self, tenant: &TenantId) -> usize {
        self.shard(tenant)
            .lock()
            .get(tenant)
            .map_or(0, |s| s.topics.values().map(|t| t.entries.len()).sum())
    }
}

#[async_trait]
impl CursorStore for MemoryCursors {
    async fn update(
        &self,
        tenant: &TenantId,
        topic: &str,
        key: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let ttl_ms = check_update(topic, key, data, ttl)?;
        let now = Instant::now();
        let deadline = now
            .checked_add(Duration::from_millis(ttl_ms))
            .ok_or_else(|| BackendError::Invalid("ttl is too large".into()))?;
        self.with_tenant(tenant, |s| {
            s.update(&self.limits, topic, key, data, now, deadline)
        })
    }

    async fn remove(
        &self,
        tenant: &TenantId,
        topic: &str,
        key: &str,
    ) -> Result<bool, BackendError> {
        check_name("topic", topic)?;
        check_name("cursor key", key)?;
        let now = Instant::now();
        Ok(self.with_tenant(tenant, |s| s.remove(topic, key, now)))
    }

    async fn snapshot(
        &self,
        tenant: &TenantId,
        topic: &str,
    ) -> Result<Vec<CursorEntry>, BackendError> {
        check_name("topic", topic)?;
        let now = Instant::now();
        let shard = self.shard(tenant).lock();
        let Some(t) = shard.get(tenant).and_then(|s| s.topics.get(topic)) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<CursorEntry> = t
            .entries
            .iter()
            .filter(|(_, (_, at))| *at > now)
            .map(|(key, (data, _))| CursorEntry {
                key: key.clone(),
                data: data.clone(),
            })
            .collect();
        drop(shard);
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out.truncate(self.limits.max_entries_per_topic);
        Ok(out)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let now = Instant::now();
        let removed = self.shard(tenant).lock().remove(tenant);
        // Counted and freed outside the lock.
        Ok(removed.map_or(0, |s| s.topics.values().map(|t| t.live(now) as u64).sum()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cursor::conformance;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn memory_cursors_pass_the_conformance_suite() {
        let store = MemoryCursors::new();
        conformance::suite(&store).await;
        // The suite purges what it used: nothing is left behind.
        for shard in store.shards.iter() {
            assert!(shard.lock().is_empty());
        }
    }

    #[tokio::test]
    async fn memory_cursors_pass_the_limits_suite() {
        let store = MemoryCursors::with_limits(conformance::SUITE_LIMITS);
        conformance::limits_suite(&store).await;
    }

    /// Dead entries and topics are dropped by later writes, so an idle
    /// tenant's state does not grow.
    #[tokio::test(start_paused = true)]
    async fn dead_state_is_dropped_by_writes() {
        let store = MemoryCursors::new();
        let t = tid("acme");
        let short = Duration::from_secs(1);
        for i in 0..20 {
            store
                .update(&t, &format!("t{}", i % 4), &format!("k{i}"), "{}", short)
                .await
                .unwrap();
        }
        assert_eq!(store.stored_entries(&t), 20);
        tokio::time::advance(Duration::from_secs(2)).await;
        store.update(&t, "t0", "fresh", "{}", short).await.unwrap();
        assert_eq!(store.stored_entries(&t), 1, "dead topics and entries went");
        assert!(store.remove(&t, "t0", "fresh").await.unwrap());
        assert!(
            store.shard(&t).lock().get(&t).is_none(),
            "tenant state dropped"
        );
    }
}
