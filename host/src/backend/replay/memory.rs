//! The in-process replay buffers, and the seq source of the memory bus.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{ReplayBuffer, ReplayEvent, ReplayPage, ReplaySettings, page};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Shards of the tenant table (a power of two).
const SHARDS: usize = 16;

/// Bytes an event costs beyond its event name and data (seq, bookkeeping).
const EVENT_OVERHEAD: usize = 48;
/// Bytes a topic costs beyond its name and events.
const TOPIC_OVERHEAD: usize = 96;

struct Topic {
    seq: u64,
    events: VecDeque<ReplayEvent>,
    /// Bytes of `events` (names, data, overhead).
    bytes: usize,
    last_publish: Instant,
}

#[derive(Default)]
struct TenantBuffers {
    topics: HashMap<Box<str>, Topic>,
    /// Bytes of every topic's events plus per-topic overhead.
    bytes: usize,
}

fn event_bytes(e: &ReplayEvent) -> usize {
    e.event.len() + e.data.len() + EVENT_OVERHEAD
}

impl TenantBuffers {
    /// The live topic, forgetting it first if its TTL passed.
    fn live(&mut self, topic: &str, ttl: Option<std::time::Duration>) -> Option<&mut Topic> {
        let expired = match (self.topics.get(topic), ttl) {
            (Some(t), Some(ttl)) => t.last_publish.elapsed() >= ttl,
            _ => false,
        };
        if expired {
            self.remove(topic);
        }
        self.topics.get_mut(topic)
    }

    fn remove(&mut self, topic: &str) {
        if let Some(t) = self.topics.remove(topic) {
            self.bytes -= t.bytes + topic.len() + TOPIC_OVERHEAD;
        }
    }

    /// The least recently published topic other than `keep`.
    fn coldest(&self, keep: &str) -> Option<Box<str>> {
        self.topics
            .iter()
            .filter(|(name, _)| &***name != keep)
            .min_by_key(|(_, t)| t.last_publish)
            .map(|(name, _)| name.clone())
    }

    /// Bring the tenant within its byte and topic budgets, sparing `keep`
    /// (the topic just written) as long as another can give way.
    fn enforce(&mut self, settings: &ReplaySettings, keep: &str) {
        while self.topics.len() > settings.max_topics_per_tenant.max(1) {
            match self.coldest(keep) {
                Some(name) => self.remove(&name),
                None => break,
            }
        }
        while self.bytes > settings.max_bytes_per_tenant {
            // Drop events of the coldest topic with any, then of `keep`.
            let victim = self
                .topics
                .iter()
                .filter(|(name, t)| &***name != keep && !t.events.is_empty())
                .min_by_key(|(_, t)| t.last_publish)
                .map(|(name, _)| name.clone())
                .or_else(|| Some(Box::from(keep)));
            let Some(name) = victim else { break };
            let Some(t) = self.topics.get_mut(&*name) else {
                break;
            };
            let Some(old) = t.events.pop_front() else {
                break;
            };
            let b = event_bytes(&old);
            t.bytes -= b;
            self.bytes -= b;
        }
    }
}

/// Replay buffers in this process's memory (see the module docs of
/// [`super`]); the [`MemoryBus`](crate::backend::memory::MemoryBus)
/// appends to them. Bounded per tenant by
/// [`ReplaySettings::max_bytes_per_tenant`] and
/// [`ReplaySettings::max_topics_per_tenant`]; an idle topic is forgotten
/// when next touched after its TTL.
pub struct MemoryReplay {
    settings: ReplaySettings,
    shards: Box<[Mutex<HashMap<TenantId, TenantBuffers>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl MemoryReplay {
    /// Empty buffers keeping what `settings` allows.
    pub fn new(settings: ReplaySettings) -> Self {
        Self {
            settings,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ReplaySettings {
        &self.settings
    }

    fn shard(&self, tenant: &TenantId) -> &Mutex<HashMap<TenantId, TenantBuffers>> {
        let h = self.hasher.hash_one(tenant.as_str());
        &self.shards[(h as usize) & (SHARDS - 1)]
    }

    /// Assign `topic`'s next seq to the event, buffer it and, still holding
    /// the topic's lock, call `deliver` with the seq (so deliveries happen in
    /// seq order). `deliver` must not block. Returns the seq.
    pub fn append_then(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
        deliver: impl FnOnce(u64),
    ) -> u64 {
        let mut shard = self.shard(tenant).lock();
        let buffers = shard.entry(tenant.clone()).or_default();
        let ttl = self.settings.ttl;
        let now = Instant::now();
        if buffers.live(topic, ttl).is_none() {
            buffers.topics.insert(
                Box::from(topic),
                Topic {
                    seq: 0,
                    events: VecDeque::new(),
                    bytes: 0,
                    last_publish: now,
                },
            );
            buffers.bytes += topic.len() + TOPIC_OVERHEAD;
        }
        let size = self.settings.size;
        let Some(t) = buffers.topics.get_mut(topic) else {
            // Just inserted; unreachable, but never panic.
            return 0;
        };
        t.seq += 1;
        t.last_publish = now;
        let seq = t.seq;
        let mut added = 0usize;
        let mut removed = 0usize;
        if size > 0 {
            let e = ReplayEvent {
                seq,
                event: event.to_owned(),
                data: data.to_owned(),
            };
            added = event_bytes(&e);
            t.events.push_back(e);
            while t.events.len() > size {
                if let Some(old) = t.events.pop_front() {
                    removed += event_bytes(&old);
                }
            }
            t.bytes = t.bytes + added - removed;
        }
        buffers.bytes = buffers.bytes + added - removed;
        buffers.enforce(&self.settings, topic);
        deliver(seq);
        seq
    }
}

#[async_trait]
impl ReplayBuffer for MemoryReplay {
    async fn seq(&self, tenant: &TenantId, topic: &str) -> Result<u64, BackendError> {
        let mut shard = self.shard(tenant).lock();
        Ok(shard
            .get_mut(tenant)
            .and_then(|b| b.live(topic, self.settings.ttl))
            .map_or(0, |t| t.seq))
    }

    async fn since(
        &self,
        tenant: &TenantId,
        topic: &str,
        since: u64,
    ) -> Result<ReplayPage, BackendError> {
        let mut shard = self.shard(tenant).lock();
        let Some(t) = shard
            .get_mut(tenant)
            .and_then(|b| b.live(topic, self.settings.ttl))
        else {
            return Ok(page(since, 0, None, Vec::new()));
        };
        let start = if since > t.seq {
            0
        } else {
            t.events.partition_point(|e| e.seq <= since)
        };
        let events = t.events.range(start..).cloned().collect();
        let oldest = t.events.front().map(|e| e.seq);
        Ok(page(since, t.seq, oldest, events))
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let removed = self.shard(tenant).lock().remove(tenant);
        Ok(removed.map_or(0, |b| b.topics.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn memory_replay_passes_the_conformance_suite() {
        let replay = std::sync::Arc::new(MemoryReplay::new(ReplaySettings {
            size: super::super::conformance::SIZE,
            ..ReplaySettings::default()
        }));
        let bus = crate::backend::memory::MemoryBus::with_replay(
            crate::hub::Hub::new(),
            std::sync::Arc::clone(&replay),
        );
        super::super::conformance::suite(&bus, &*replay).await;
    }

    #[tokio::test]
    async fn memory_replay_passes_the_bounds_suite() {
        let replay = std::sync::Arc::new(MemoryReplay::new(super::super::conformance::BOUNDS));
        let bus = crate::backend::memory::MemoryBus::with_replay(
            crate::hub::Hub::new(),
            std::sync::Arc::clone(&replay),
        );
        super::super::conformance::bounds(&bus, &*replay).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_topic_is_forgotten_after_its_ttl() {
        let replay = MemoryReplay::new(ReplaySettings {
            size: 10,
            ttl: Some(std::time::Duration::from_secs(60)),
            ..ReplaySettings::default()
        });
        let a = tid("ttl-a");
        replay.append_then(&a, "t", "e", "1", |_| {});
        replay.append_then(&a, "t", "e", "2", |_| {});
        tokio::time::advance(std::time::Duration::from_secs(59)).await;
        assert_eq!(replay.seq(&a, "t").await.unwrap(), 2);
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        let p = replay.since(&a, "t", 2).await.unwrap();
        assert_eq!(p.seq, 0);
        assert!(p.truncated, "the client is ahead of a restarted seq");
        assert_eq!(
            replay.append_then(&a, "t", "e", "3", |_| {}),
            1,
            "starts again at 1"
        );
    }
}
