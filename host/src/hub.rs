//! Local subscriptions and fan-out to this process's connections.
//!
//! The hub keeps, per `(tenant, topic)`, the set of connections subscribed to
//! it and a gap-free sequence number. [`Hub::publish`] assigns the next seq,
//! builds the wire envelope **once** and hands a cheap clone of it to every
//! subscriber's bounded outbound queue with `try_send`: a full queue drops the
//! frame for that slow consumer only (counted in [`Hub::dropped`]); the hub
//! never awaits and never blocks on a connection.
//!
//! Tenants are disjoint: equal topic names of two tenants are two topics with
//! their own subscribers and their own seqs.
//!
//! A topic exists only while it has subscribers. Publishing to a topic nobody
//! listens to costs a hash lookup and consumes no seq; when the last
//! subscriber leaves, the topic (and its seq) is removed, so a topic that is
//! later subscribed again starts at seq 1. Within any period in which a
//! connection stays subscribed, the seqs it receives are consecutive unless
//! frames were dropped because its queue was full.
//!
//! [`Hub::deliver`] is the same fan-out with a seq assigned elsewhere: the
//! Redis bus ([`crate::backend::redis::bus`]) numbers each topic's events in
//! Redis, once for every host, and delivers them here in that order. The
//! remarks above on seq 1 and removed topics then apply to Redis's seq key
//! instead (see that module).
//!
//! **Topic observers**: [`Hub::observe_topics`] lets a listener (the
//! sharded Redis bus, which subscribes in Redis only to the topics this host
//! has subscribers for) learn when a `(tenant, topic)` of the tenants it
//! serves (a [`TenantScope`]) gets its first local subscriber
//! ([`TopicEvent::Occupied`]) and loses its last ([`TopicEvent::Vacated`]).
//! There is one listener per Redis a host uses (tenants with a Redis of
//! their own have their own bus). The hub offers each event with `try_send`
//! on each interested listener's bounded queue after releasing its locks, so
//! it never waits for a listener; when a queue is full the event is dropped
//! and that listener is told to resynchronise from [`Hub::topics`] instead
//! (see [`TopicEvents`]).
//!
//! **Qualified topics**: a hub topic may carry a qualifier after
//! [`QUALIFIER`] (a byte no wire topic contains): `__group:lobby\x1fadmin`
//! is its own topic with its own subscribers and seqs, but its frames name
//! the wire topic before the qualifier (`__group:lobby`). This is how a
//! group event reaches only the members of one role
//! ([`crate::groups`]).
//!
//! Locking: the topic table is split into shards, each behind a read-write
//! lock held only for a lookup or an insert/remove; each topic has its own
//! mutex, held while its seq is assigned and its subscribers are offered the
//! frame (so every subscriber sees seqs in increasing order). No lock is ever
//! held across an `.await`.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc};

use crate::outbound::TrySendError;
use crate::protocol;
use crate::tenant::{TenantId, TenantScope};

/// Number of shards of the topic table (a power of two).
const SHARDS: usize = 16;

pub use crate::outbound::Outbound;

/// Separates a hub topic from its qualifier (see the module docs); never
/// part of a wire topic.
pub const QUALIFIER: char = '\u{1f}';

/// The wire topic of hub topic `topic`: the part before any [`QUALIFIER`].
pub fn wire_topic(topic: &str) -> &str {
    topic.split_once(QUALIFIER).map_or(topic, |(wire, _)| wire)
}

/// Identifies one connection inside the hub.
pub type ConnectionId = u64;

/// What one [`Hub::publish`] or [`Hub::deliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishReport {
    /// The event's seq, `None` if the topic had no local subscribers.
    pub seq: Option<u64>,
    /// Subscribers whose queue accepted the frame.
    pub delivered: usize,
    /// Subscribers whose queue was full (the frame was dropped for them).
    pub dropped: usize,
}

/// What [`HubConnection::release_held`] did with the held events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Held events passed on to the connection.
    pub forwarded: usize,
    /// Held events the replay had already sent (seq not above `after`).
    pub duplicates: usize,
    /// More than [`MAX_HELD_EVENTS`] arrived while held: the connection
    /// missed some.
    pub overflowed: bool,
}

/// Why a subscription was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The connection already holds the maximum number of subscriptions.
    #[error("too many subscriptions on this connection (limit {0})")]
    TooMany(usize),
    /// The connection was closed with [`HubConnection::close`].
    #[error("connection closed")]
    Closed,
}

/// Most events held for one connection while its replay is being sent
/// ([`HubConnection::subscribe_held`]); later ones are dropped for it.
pub const MAX_HELD_EVENTS: usize = 1024;

/// A change in which topics have local subscribers, reported to the
/// listener of [`Hub::observe_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicEvent {
    /// The topic of the tenant got its first local subscriber.
    Occupied(TenantId, Box<str>),
    /// The topic of the tenant lost its last local subscriber.
    Vacated(TenantId, Box<str>),
}

/// The hub's side of [`Hub::observe_topics`].
struct Observer {
    scope: TenantScope,
    events: mpsc::Sender<TopicEvent>,
    lost: Arc<LostEvents>,
}

/// Set (and the listener woken) when an event did not fit the queue.
#[derive(Default)]
struct LostEvents {
    lost: AtomicBool,
    wake: Notify,
}

/// The listener's side of [`Hub::observe_topics`]: the events, or word that
/// some were dropped. Events of concurrent changes to one topic may arrive
/// in either order, so a listener should act on the topic's state when it
/// handles one ([`Hub::subscriber_count`]), not on the event's kind alone.
pub struct TopicEvents {
    events: mpsc::Receiver<TopicEvent>,
    lost: Arc<LostEvents>,
}

/// What [`TopicEvents::recv`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicChanges {
    /// Events (at least one), oldest first.
    Events(Vec<TopicEvent>),
    /// Events were dropped because the queue was full: the listener must
    /// take the current state from [`Hub::topics`] (the queue may still
    /// hold older events, which it can also apply).
    Resync,
}

impl TopicEvents {
    /// Wait for the next events (at most `limit`, at least 1) or for word
    /// that some were dropped. `None` once the hub is gone.
    pub async fn recv(&mut self, limit: usize) -> Option<TopicChanges> {
        loop {
            if self.lost.lost.swap(false, Ordering::AcqRel) {
                return Some(TopicChanges::Resync);
            }
            let mut events = Vec::new();
            tokio::select! {
                biased;
                // Checked at the top of the loop (a wake whose word was
                // already taken is spurious).
                () = self.lost.wake.notified() => {}
                n = self.events.recv_many(&mut events, limit.max(1)) => {
                    return (n > 0).then_some(TopicChanges::Events(events));
                }
            }
        }
    }

    /// Forget every queued event and any lost-events word: the listener is
    /// about to take the whole state from [`Hub::topics`]; later changes
    /// arrive as events again.
    pub fn clear(&mut self) {
        self.lost.lost.store(false, Ordering::Release);
        while self.events.try_recv().is_ok() {}
    }
}

/// Where a topic's events go for one subscriber.
enum Sink {
    /// Straight to the connection's outbound queue.
    Live(crate::outbound::Sender),
    /// Held, with their seqs, until the connection's replay has been sent
    /// ([`HubConnection::release_held`]).
    Held(Box<Held>),
}

struct Held {
    queue: crate::outbound::Sender,
    events: Vec<(u64, Utf8Bytes)>,
    overflowed: bool,
}

/// One topic's subscribers and its last seq.
struct Topic {
    seq: u64,
    subscribers: HashMap<ConnectionId, Sink>,
}

type TopicMap = HashMap<TenantId, HashMap<Box<str>, Arc<Mutex<Topic>>>>;

/// Local subscriptions and fan-out for this process. Share it as `Arc<Hub>`.
pub struct Hub {
    shards: Box<[RwLock<TopicMap>]>,
    hasher: std::collections::hash_map::RandomState,
    next_connection: AtomicU64,
    dropped: AtomicU64,
    /// The listeners of [`Hub::observe_topics`].
    observers: RwLock<Vec<Observer>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: Default::default(),
            next_connection: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            observers: RwLock::new(Vec::new()),
        }
    }
}

impl Hub {
    /// A new, empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn shard(&self, tenant: &TenantId, topic: &str) -> &RwLock<TopicMap> {
        let h = self.hasher.hash_one((tenant.as_str(), topic));
        &self.shards[(h as usize) & (SHARDS - 1)]
    }

    fn lookup(&self, tenant: &TenantId, topic: &str) -> Option<Arc<Mutex<Topic>>> {
        self.shard(tenant, topic)
            .read()
            .get(tenant)
            .and_then(|topics| topics.get(topic))
            .cloned()
    }

    /// Register a connection of `tenant` whose writer drains `queue`. The
    /// returned handle subscribes and unsubscribes it; dropping the handle
    /// (or calling [`HubConnection::close`]) removes all its subscriptions.
    /// `max_subscriptions` bounds how many topics it may hold at once.
    pub fn connect(
        self: &Arc<Self>,
        tenant: TenantId,
        queue: crate::outbound::Sender,
        max_subscriptions: usize,
    ) -> HubConnection {
        HubConnection {
            hub: Arc::clone(self),
            id: self.next_connection.fetch_add(1, Ordering::Relaxed),
            tenant,
            queue,
            max_subscriptions,
            topics: Mutex::new(Some(HashSet::new())),
        }
    }

    /// Publish `event` with JSON `data_json` on `topic` of `tenant` to every
    /// local subscriber, assigning the topic's next seq (the memory bus).
    /// The topic, event and data must already be valid (see
    /// [`protocol::validate_topic`]). Never blocks: a subscriber whose queue
    /// is full misses this frame.
    pub fn publish(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data_json: &str,
    ) -> PublishReport {
        self.fan_out(tenant, topic, event, data_json, None)
    }

    /// Deliver to every local subscriber an event whose `seq` was assigned
    /// elsewhere (the Redis bus: one seq per topic across all hosts). The
    /// seq is used as given and recorded as the topic's last; the caller
    /// delivers a topic's events in seq order. Otherwise as [`Hub::publish`]:
    /// `seq` in the report is `None` if the topic has no local subscribers.
    pub fn deliver(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data_json: &str,
        seq: u64,
    ) -> PublishReport {
        self.fan_out(tenant, topic, event, data_json, Some(seq))
    }

    /// Offer one event to the topic's subscribers, under the topic's lock,
    /// with `seq` or (if `None`) the topic's next seq.
    fn fan_out(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data_json: &str,
        seq: Option<u64>,
    ) -> PublishReport {
        let Some(entry) = self.lookup(tenant, topic) else {
            return PublishReport::default();
        };
        let mut t = entry.lock();
        if t.subscribers.is_empty() {
            // Removed from the table by a concurrent last unsubscribe.
            return PublishReport::default();
        }
        t.seq = seq.unwrap_or(t.seq + 1);
        let seq = t.seq;
        let frame = Utf8Bytes::from(protocol::envelope(
            wire_topic(topic),
            event,
            data_json,
            Some(seq),
        ));
        let mut report = PublishReport {
            seq: Some(seq),
            delivered: 0,
            dropped: 0,
        };
        for sink in t.subscribers.values_mut() {
            match sink {
                Sink::Live(queue) => match queue.try_send(Outbound::Text(frame.clone())) {
                    Ok(()) => report.delivered += 1,
                    Err(TrySendError::Full(_)) => report.dropped += 1,
                    // The connection is going away; its cleanup removes it.
                    Err(TrySendError::Closed(_)) => {}
                },
                Sink::Held(held) => {
                    if held.events.len() < MAX_HELD_EVENTS {
                        held.events.push((seq, frame.clone()));
                        report.delivered += 1;
                    } else {
                        held.overflowed = true;
                        report.dropped += 1;
                    }
                }
            }
        }
        drop(t);
        if report.dropped > 0 {
            self.dropped
                .fetch_add(report.dropped as u64, Ordering::Relaxed);
        }
        report
    }

    /// Send `event` with JSON `data_json` to this process's live
    /// subscribers of `topic` of `tenant` **without a seq** (the seeds'
    /// `send`: a notice about the topic, not one of its events; it takes no
    /// seq and is not numbered). Subscribers whose events are held (a
    /// catch-up in progress) do not get it. Returns how many queues took it.
    pub fn send(&self, tenant: &TenantId, topic: &str, event: &str, data_json: &str) -> usize {
        let Some(entry) = self.lookup(tenant, topic) else {
            return 0;
        };
        let t = entry.lock();
        let frame = Utf8Bytes::from(protocol::envelope(
            wire_topic(topic),
            event,
            data_json,
            None,
        ));
        let mut delivered = 0;
        let mut dropped = 0;
        for sink in t.subscribers.values() {
            if let Sink::Live(queue) = sink {
                match queue.try_send(Outbound::Text(frame.clone())) {
                    Ok(()) => delivered += 1,
                    Err(TrySendError::Full(_)) => dropped += 1,
                    Err(TrySendError::Closed(_)) => {}
                }
            }
        }
        drop(t);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        delivered
    }

    /// Total frames dropped because a subscriber's queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Number of local subscribers of `topic` in `tenant`.
    pub fn subscriber_count(&self, tenant: &TenantId, topic: &str) -> usize {
        self.lookup(tenant, topic)
            .map(|t| t.lock().subscribers.len())
            .unwrap_or(0)
    }

    /// The tenants with at least one local subscriber of `topic` (each
    /// once), e.g. to send a host notice on a reserved topic to every
    /// tenant separately.
    pub fn tenants_subscribed_to(&self, topic: &str) -> Vec<TenantId> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .filter(|(_, topics)| topics.contains_key(topic))
                    .map(|(tenant, _)| tenant.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of topics with at least one subscriber, over all tenants.
    pub fn topic_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().values().map(HashMap::len).sum::<usize>())
            .sum()
    }

    /// Report the topic changes of the tenants in `scope` to a new listener
    /// from now on, through a queue of `capacity` events (at least 1): see
    /// [`TopicEvent`] and [`TopicEvents`]. The listener learns only
    /// changes, so it takes the current state from [`Hub::topics`] after
    /// this call. A hub may have several listeners (each for its own
    /// tenants); one whose [`TopicEvents`] is dropped is forgotten.
    pub fn observe_topics(&self, capacity: usize, scope: TenantScope) -> TopicEvents {
        let (events, rx) = mpsc::channel(capacity.max(1));
        let lost = Arc::new(LostEvents::default());
        let mut observers = self.observers.write();
        observers.retain(|o| !o.events.is_closed());
        observers.push(Observer {
            scope,
            events,
            lost: Arc::clone(&lost),
        });
        TopicEvents { events: rx, lost }
    }

    /// Per tenant, how many client subscriptions its connections hold here
    /// (memberships of the host's own `__` channels not counted). Walks
    /// every topic: for scrapes, not for the hot path.
    pub fn subscriptions_by_tenant(&self) -> HashMap<TenantId, u64> {
        let mut counts: HashMap<TenantId, u64> = HashMap::new();
        for shard in self.shards.iter() {
            for (tenant, topics) in shard.read().iter() {
                let n: usize = topics
                    .iter()
                    .filter(|(topic, _)| !topic.starts_with("__"))
                    .map(|(_, t)| t.lock().subscribers.len())
                    .sum();
                if n > 0 {
                    *counts.entry(tenant.clone()).or_default() += n as u64;
                }
            }
        }
        counts
    }

    /// Every `(tenant, topic)` with at least one local subscriber now.
    pub fn topics(&self) -> Vec<(TenantId, Box<str>)> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .flat_map(|(tenant, topics)| {
                        topics.keys().map(|topic| (tenant.clone(), topic.clone()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Offer `event` to each listener of its tenant without waiting: a full
    /// queue drops it and tells that listener to resynchronise.
    fn report(&self, event: TopicEvent) {
        let observers = self.observers.read();
        let tenant = match &event {
            TopicEvent::Occupied(t, _) | TopicEvent::Vacated(t, _) => t,
        };
        for observer in observers.iter().filter(|o| o.scope.contains(tenant)) {
            if let Err(mpsc::error::TrySendError::Full(_)) = observer.events.try_send(event.clone())
            {
                observer.lost.lost.store(true, Ordering::Release);
                observer.lost.wake.notify_one();
            }
        }
    }

    /// Add `id` to the subscribers of `topic` with `sink`; `false` if it
    /// already was one.
    fn add(&self, tenant: &TenantId, topic: &str, id: ConnectionId, sink: Sink) -> bool {
        let (added, occupied) = {
            let mut shard = self.shard(tenant, topic).write();
            let topics = shard.entry(tenant.clone()).or_default();
            let (entry, occupied) = match topics.get(topic) {
                Some(e) => (Arc::clone(e), false),
                None => {
                    let e = Arc::new(Mutex::new(Topic {
                        seq: 0,
                        subscribers: HashMap::new(),
                    }));
                    topics.insert(Box::from(topic), Arc::clone(&e));
                    (e, true)
                }
            };
            let mut t = entry.lock();
            (t.subscribers.insert(id, sink).is_none(), occupied)
        };
        if occupied {
            self.report(TopicEvent::Occupied(tenant.clone(), Box::from(topic)));
        }
        added
    }

    /// Turn `id`'s held subscription of `topic` live: forward the held
    /// events with a seq above `after` to its queue (dropping them for it if
    /// the queue is full), under the topic's lock so no live event
    /// overtakes them. `None` if `id` holds no held subscription there.
    fn release(
        &self,
        tenant: &TenantId,
        topic: &str,
        id: ConnectionId,
        after: u64,
    ) -> Option<Released> {
        let entry = self.lookup(tenant, topic)?;
        let mut t = entry.lock();
        let sink = t.subscribers.get_mut(&id)?;
        let queue = match sink {
            Sink::Held(held) => held.queue.clone(),
            Sink::Live(_) => return None,
        };
        let Sink::Held(held) = std::mem::replace(sink, Sink::Live(queue.clone())) else {
            return None;
        };
        let mut released = Released {
            forwarded: 0,
            duplicates: 0,
            overflowed: held.overflowed,
        };
        let mut dropped = 0u64;
        for (seq, frame) in held.events {
            if seq <= after {
                released.duplicates += 1;
            } else if queue.try_send(Outbound::Text(frame)).is_ok() {
                released.forwarded += 1;
            } else {
                dropped += 1;
            }
        }
        drop(t);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        Some(released)
    }

    /// Remove `id` from the subscribers of `topic`, dropping an emptied topic.
    fn remove(&self, tenant: &TenantId, topic: &str, id: ConnectionId) -> bool {
        let (removed, empty) = {
            let mut shard = self.shard(tenant, topic).write();
            let Some(topics) = shard.get_mut(tenant) else {
                return false;
            };
            let Some(entry) = topics.get(topic) else {
                return false;
            };
            let (removed, empty) = {
                let mut t = entry.lock();
                let removed = t.subscribers.remove(&id).is_some();
                (removed, t.subscribers.is_empty())
            };
            if empty {
                topics.remove(topic);
                if topics.is_empty() {
                    shard.remove(tenant);
                }
            }
            (removed, empty)
        };
        if empty {
            self.report(TopicEvent::Vacated(tenant.clone(), Box::from(topic)));
        }
        removed
    }
}

/// One connection's membership in the hub. Created by [`Hub::connect`];
/// removes all its subscriptions when closed or dropped.
pub struct HubConnection {
    hub: Arc<Hub>,
    id: ConnectionId,
    tenant: TenantId,
    queue: crate::outbound::Sender,
    max_subscriptions: usize,
    /// `None` once closed.
    topics: Mutex<Option<HashSet<Box<str>>>>,
}

impl HubConnection {
    /// The hub-assigned id of this connection.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The tenant this connection belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The connection's outbound queue, to send it frames directly or to
    /// give it a second membership ([`Hub::connect`] with this queue) that
    /// a host service subscribes on its behalf (broadcast groups).
    pub fn outbound(&self) -> crate::outbound::Sender {
        self.queue.clone()
    }

    /// Subscribe to `topic` of this connection's tenant. `Ok(false)` if it
    /// was already subscribed. The caller has validated and authorised it.
    pub fn subscribe(&self, topic: &str) -> Result<bool, SubscribeError> {
        let mut guard = self.topics.lock();
        let topics = guard.as_mut().ok_or(SubscribeError::Closed)?;
        if topics.contains(topic) {
            return Ok(false);
        }
        if topics.len() >= self.max_subscriptions {
            return Err(SubscribeError::TooMany(self.max_subscriptions));
        }
        topics.insert(Box::from(topic));
        // Lock order is always connection topics → shard → topic.
        self.hub
            .add(&self.tenant, topic, self.id, Sink::Live(self.queue.clone()));
        Ok(true)
    }

    /// Subscribe to `topic` with its events **held** (at most
    /// [`MAX_HELD_EVENTS`]) instead of queued, while the caller sends the
    /// connection a replay of what it missed; then
    /// [`release_held`](Self::release_held) forwards the held events the
    /// replay did not cover and makes the subscription live. This is how a
    /// client catches up without a gap or a duplicate between the replay
    /// and the live events. `Ok(false)` (nothing held) if it was already
    /// subscribed.
    pub fn subscribe_held(&self, topic: &str) -> Result<bool, SubscribeError> {
        let mut guard = self.topics.lock();
        let topics = guard.as_mut().ok_or(SubscribeError::Closed)?;
        if topics.contains(topic) {
            return Ok(false);
        }
        if topics.len() >= self.max_subscriptions {
            return Err(SubscribeError::TooMany(self.max_subscriptions));
        }
        topics.insert(Box::from(topic));
        let held = Held {
            queue: self.queue.clone(),
            events: Vec::new(),
            overflowed: false,
        };
        self.hub
            .add(&self.tenant, topic, self.id, Sink::Held(Box::new(held)));
        Ok(true)
    }

    /// Make a [`subscribe_held`](Self::subscribe_held) subscription live,
    /// forwarding the held events with a seq above `after` (the last seq
    /// the replay sent). `None` if `topic` is not held (never was, already
    /// released, or unsubscribed meanwhile).
    pub fn release_held(&self, topic: &str, after: u64) -> Option<Released> {
        // Holding the connection's topic set keeps a concurrent unsubscribe
        // out (same lock order as subscribe).
        let guard = self.topics.lock();
        if !guard.as_ref().is_some_and(|t| t.contains(topic)) {
            return None;
        }
        self.hub.release(&self.tenant, topic, self.id, after)
    }

    /// Unsubscribe from `topic`; `false` if it was not subscribed.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        let mut guard = self.topics.lock();
        let Some(topics) = guard.as_mut() else {
            return false;
        };
        if !topics.remove(topic) {
            return false;
        }
        self.hub.remove(&self.tenant, topic, self.id);
        true
    }

    /// Whether the connection is subscribed to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .as_ref()
            .is_some_and(|t| t.contains(topic))
    }

    /// Number of topics this connection is subscribed to.
    pub fn subscription_count(&self) -> usize {
        self.topics.lock().as_ref().map_or(0, HashSet::len)
    }

    /// Remove every subscription; later subscribes fail with
    /// [`SubscribeError::Closed`]. Idempotent.
    pub fn close(&self) {
        let topics = self.topics.lock().take();
        for topic in topics.into_iter().flatten() {
            self.hub.remove(&self.tenant, &topic, self.id);
        }
    }
}

impl Drop for HubConnection {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn text(o: Outbound) -> String {
        match o {
            Outbound::Text(t) => t.as_str().to_owned(),
        }
    }

    fn seq_of(frame: &str) -> u64 {
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        v["seq"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn publish_reaches_subscribers_with_gap_free_seq() {
        let hub = Hub::new();
        let (tx, mut rx) = crate::outbound::queue(16);
        let conn = hub.connect(tid("acme"), tx, 100);
        assert_eq!(conn.subscribe("room:1"), Ok(true));
        assert_eq!(conn.subscribe("room:1"), Ok(false));
        for i in 1..=3u64 {
            let r = hub.publish(&tid("acme"), "room:1", "message", &format!("{{\"n\":{i}}}"));
            assert_eq!(r.seq, Some(i));
            assert_eq!(r.delivered, 1);
        }
        for i in 1..=3u64 {
            let f = text(rx.recv().await.unwrap());
            let v: serde_json::Value = serde_json::from_str(&f).unwrap();
            assert_eq!(v["topic"], "room:1");
            assert_eq!(v["event"], "message");
            assert_eq!(v["data"]["n"], i);
            assert_eq!(v["seq"], i);
        }
    }

    #[tokio::test]
    async fn a_qualified_topic_has_its_own_subscribers_under_the_wire_name() {
        let hub = Hub::new();
        let (tx, mut rx) = crate::outbound::queue(16);
        let (other_tx, mut other_rx) = crate::outbound::queue(16);
        let admin = hub.connect(tid("acme"), tx, 100);
        let member = hub.connect(tid("acme"), other_tx, 100);
        let qualified = format!("__group:g{QUALIFIER}admin");
        assert_eq!(wire_topic(&qualified), "__group:g");
        assert_eq!(wire_topic("plain"), "plain");
        admin.subscribe(&qualified).unwrap();
        member.subscribe("__group:g").unwrap();
        let r = hub.publish(&tid("acme"), &qualified, "secret", "1");
        assert_eq!(r.delivered, 1, "only the qualified topic's subscriber");
        let v: serde_json::Value = serde_json::from_str(&text(rx.recv().await.unwrap())).unwrap();
        assert_eq!(v["topic"], "__group:g");
        assert_eq!(v["event"], "secret");
        assert!(other_rx.try_recv().is_err());
        // A second membership on the same queue is its own subscriber.
        let sibling = hub.connect(tid("acme"), admin.outbound(), 100);
        sibling.subscribe("__group:g").unwrap();
        hub.publish(&tid("acme"), "__group:g", "all", "2");
        assert!(rx.recv().await.is_some());
        assert!(other_rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn send_reaches_live_subscribers_without_a_seq() {
        let hub = Hub::new();
        let (tx, mut rx) = crate::outbound::queue(16);
        let conn = hub.connect(tid("acme"), tx, 100);
        conn.subscribe("t").unwrap();
        assert_eq!(hub.send(&tid("acme"), "t", "heartbeat", "[]"), 1);
        assert_eq!(hub.send(&tid("acme"), "other", "heartbeat", "[]"), 0);
        assert_eq!(
            text(rx.recv().await.unwrap()),
            r#"{"topic":"t","event":"heartbeat","data":[]}"#
        );
        // Not numbered: the next publish is still seq 1.
        assert_eq!(hub.publish(&tid("acme"), "t", "e", "1").seq, Some(1));
    }

    #[tokio::test]
    async fn tenants_are_disjoint_for_equal_topics() {
        let hub = Hub::new();
        let (atx, mut arx) = crate::outbound::queue(16);
        let (btx, mut brx) = crate::outbound::queue(16);
        let a = hub.connect(tid("acme"), atx, 100);
        let b = hub.connect(tid("beta"), btx, 100);
        a.subscribe("chat").unwrap();
        b.subscribe("chat").unwrap();
        hub.publish(&tid("acme"), "chat", "x", "1");
        hub.publish(&tid("acme"), "chat", "x", "2");
        let r = hub.publish(&tid("beta"), "chat", "x", "3");
        assert_eq!(r.seq, Some(1), "beta has its own seq");
        assert_eq!(seq_of(&text(arx.recv().await.unwrap())), 1);
        assert_eq!(seq_of(&text(arx.recv().await.unwrap())), 2);
        assert!(arx.try_recv().is_err(), "acme got nothing from beta");
        let f = text(brx.recv().await.unwrap());
        assert!(f.contains("\"data\":3"), "{f}");
        assert!(brx.try_recv().is_err(), "beta got nothing from acme");
        assert_eq!(hub.publish(&tid("gamma"), "chat", "x", "1").seq, None);
    }

    #[tokio::test]
    async fn slow_consumer_drops_without_blocking_others() {
        let hub = Hub::new();
        let (slow_tx, mut slow_rx) = crate::outbound::queue(2);
        let (fast_tx, mut fast_rx) = crate::outbound::queue(100);
        let slow = hub.connect(tid("acme"), slow_tx, 10);
        let fast = hub.connect(tid("acme"), fast_tx, 10);
        slow.subscribe("t").unwrap();
        fast.subscribe("t").unwrap();
        for _ in 0..10 {
            hub.publish(&tid("acme"), "t", "e", "null");
        }
        assert_eq!(hub.dropped(), 8);
        let fast_seqs: Vec<u64> = (0..10)
            .map(|_| seq_of(&text(fast_rx.try_recv().unwrap())))
            .collect();
        assert_eq!(fast_seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(seq_of(&text(slow_rx.try_recv().unwrap())), 1);
        assert_eq!(seq_of(&text(slow_rx.try_recv().unwrap())), 2);
        assert!(slow_rx.try_recv().is_err());
        // Once it catches up it receives new frames again.
        let r = hub.publish(&tid("acme"), "t", "e", "null");
        assert_eq!((r.delivered, r.dropped), (2, 0));
        assert_eq!(seq_of(&text(slow_rx.try_recv().unwrap())), 11);
    }

    #[tokio::test]
    async fn unsubscribe_and_disconnect_clean_up() {
        let hub = Hub::new();
        let (tx, mut rx) = crate::outbound::queue(16);
        let conn = hub.connect(tid("acme"), tx.clone(), 10);
        let other = hub.connect(tid("acme"), tx, 10);
        conn.subscribe("a").unwrap();
        conn.subscribe("b").unwrap();
        other.subscribe("b").unwrap();
        assert_eq!(hub.topic_count(), 2);
        assert!(conn.unsubscribe("a"));
        assert!(!conn.unsubscribe("a"));
        assert_eq!(hub.topic_count(), 1, "empty topic removed");
        assert_eq!(hub.publish(&tid("acme"), "a", "e", "1").seq, None);
        drop(conn);
        assert_eq!(hub.subscriber_count(&tid("acme"), "b"), 1);
        other.close();
        assert_eq!(other.subscribe("b"), Err(SubscribeError::Closed));
        assert_eq!(hub.topic_count(), 0);
        assert_eq!(hub.publish(&tid("acme"), "b", "e", "1").seq, None);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn tenants_subscribed_to_lists_each_tenant_once() {
        let hub = Hub::new();
        let (tx, _rx) = crate::outbound::queue(16);
        let a1 = hub.connect(tid("acme"), tx.clone(), 10);
        let a2 = hub.connect(tid("acme"), tx.clone(), 10);
        let b = hub.connect(tid("beta"), tx.clone(), 10);
        let g = hub.connect(tid("gamma"), tx, 10);
        for c in [&a1, &a2, &b] {
            c.subscribe("__realtime").unwrap();
        }
        g.subscribe("other").unwrap();
        let mut tenants = hub.tenants_subscribed_to("__realtime");
        tenants.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(tenants, vec![tid("acme"), tid("beta")]);
        b.close();
        assert_eq!(hub.tenants_subscribed_to("__realtime"), vec![tid("acme")]);
        assert!(hub.tenants_subscribed_to("none").is_empty());
    }

    #[test]
    fn subscription_limit() {
        let hub = Hub::new();
        let (tx, _rx) = crate::outbound::queue(1);
        let conn = hub.connect(tid("acme"), tx, 2);
        conn.subscribe("a").unwrap();
        conn.subscribe("b").unwrap();
        assert_eq!(conn.subscribe("c"), Err(SubscribeError::TooMany(2)));
        assert_eq!(conn.subscribe("a"), Ok(false));
        assert_eq!(conn.subscription_count(), 2);
    }

    #[test]
    fn resubscribed_topic_restarts_seq() {
        let hub = Hub::new();
        let (tx, _rx) = crate::outbound::queue(16);
        let conn = hub.connect(tid("acme"), tx, 10);
        conn.subscribe("t").unwrap();
        hub.publish(&tid("acme"), "t", "e", "1");
        conn.unsubscribe("t");
        conn.subscribe("t").unwrap();
        assert_eq!(hub.publish(&tid("acme"), "t", "e", "1").seq, Some(1));
    }

    #[tokio::test]
    async fn deliver_uses_the_given_seq() {
        let hub = Hub::new();
        let (tx, mut rx) = crate::outbound::queue(16);
        let conn = hub.connect(tid("acme"), tx, 10);
        assert_eq!(hub.deliver(&tid("acme"), "t", "e", "1", 7).seq, None);
        conn.subscribe("t").unwrap();
        let r = hub.deliver(&tid("acme"), "t", "e", "{}", 41);
        assert_eq!((r.seq, r.delivered, r.dropped), (Some(41), 1, 0));
        assert_eq!(
            text(rx.recv().await.unwrap()),
            r#"{"topic":"t","event":"e","data":{},"seq":41}"#
        );
        assert_eq!(hub.deliver(&tid("beta"), "t", "e", "1", 42).seq, None);
        // A local publish continues from the last delivered seq.
        assert_eq!(hub.publish(&tid("acme"), "t", "e", "1").seq, Some(42));
        assert_eq!(seq_of(&text(rx.recv().await.unwrap())), 42);
    }

    /// Concurrent publishers on one topic: every subscriber still sees
    /// strictly increasing, gap-free seqs.
    #[test]
    fn concurrent_publishers_keep_order() {
        let hub = Hub::new();
        let (tx, mut rx) = crate::outbound::queue(10_000);
        let conn = hub.connect(tid("acme"), tx, 10);
        conn.subscribe("t").unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        hub.publish(&tid("acme"), "t", "e", "null");
                    }
                });
            }
        });
        let seqs: Vec<u64> = (0..4000)
            .map(|_| seq_of(&text(rx.try_recv().unwrap())))
            .collect();
        assert_eq!(seqs, (1..=4000).collect::<Vec<_>>());
    }

    /// Fan-out cost: 1,000 subscribers × 200 publishes must take well under
    /// one second of one core (the target is 200 k deliveries/s on one core,
    /// including the socket writes, which are not measured here).
    #[test]
    fn fanout_1000_subscribers_cost() {
        let hub = Hub::new();
        let mut conns = Vec::new();
        let mut rxs = Vec::new();
        for _ in 0..1000 {
            let (tx, rx) = crate::outbound::queue(1024);
            let c = hub.connect(tid("acme"), tx, 10);
            c.subscribe("bench").unwrap();
            conns.push(c);
            rxs.push(rx);
        }
        let data = r#"{"id":"abc","user":"bob","text":"hello world"}"#;
        let start = std::time::Instant::now();
        for _ in 0..200 {
            let r = hub.publish(&tid("acme"), "bench", "message", data);
            assert_eq!(r.delivered, 1000);
        }
        let publish = start.elapsed();
        let start = std::time::Instant::now();
        let mut n = 0;
        for rx in &mut rxs {
            while rx.try_recv().is_ok() {
                n += 1;
            }
        }
        let drain = start.elapsed();
        assert_eq!(n, 200_000);
        eprintln!(
            "hub fan-out: 200k deliveries: publish {publish:?} ({:.0} ns/delivery), drain {drain:?}",
            publish.as_nanos() as f64 / 200_000.0
        );
        // Generous bound so debug builds on a loaded CI machine pass; the
        // release number is reported by the bench.
        assert!(publish < std::time::Duration::from_secs(1), "{publish:?}");
    }

    #[tokio::test]
    async fn held_events_follow_the_replay_without_gap_or_duplicate() {
        let hub = Hub::new();
        let t = tid("acme");
        let (tx, mut rx) = crate::outbound::queue(64);
        let conn = hub.connect(t.clone(), tx.clone(), 10);
        assert_eq!(conn.subscribe_held("room"), Ok(true));
        assert_eq!(conn.subscribe_held("room"), Ok(false), "already subscribed");
        for seq in 1..=4 {
            hub.deliver(&t, "room", "m", "1", seq);
        }
        assert!(rx.try_recv().is_err(), "held, not queued");
        // The replay the caller sent covered up to seq 2.
        tx.send(Outbound::Text("replay".into())).await.unwrap();
        let r = conn.release_held("room", 2).unwrap();
        assert_eq!(
            r,
            Released {
                forwarded: 2,
                duplicates: 2,
                overflowed: false
            }
        );
        hub.deliver(&t, "room", "m", "1", 5);
        assert_eq!(text(rx.recv().await.unwrap()), "replay");
        let seqs: Vec<u64> = (0..3)
            .map(|_| seq_of(&text(rx.try_recv().unwrap())))
            .collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(conn.release_held("room", 0), None, "already live");
        assert_eq!(conn.release_held("other", 0), None, "not subscribed");
    }

    #[tokio::test]
    async fn holding_is_bounded() {
        let hub = Hub::new();
        let t = tid("acme");
        let (tx, mut rx) = crate::outbound::queue(2 * MAX_HELD_EVENTS);
        let conn = hub.connect(t.clone(), tx, 10);
        conn.subscribe_held("room").unwrap();
        for seq in 1..=(MAX_HELD_EVENTS as u64 + 10) {
            hub.deliver(&t, "room", "m", "1", seq);
        }
        let r = conn.release_held("room", 0).unwrap();
        assert!(r.overflowed);
        assert_eq!(r.forwarded, MAX_HELD_EVENTS);
        assert_eq!(seq_of(&text(rx.recv().await.unwrap())), 1);
        // Unsubscribing a held topic drops what was held.
        conn.subscribe_held("other").unwrap();
        hub.deliver(&t, "other", "m", "1", 1);
        assert!(conn.unsubscribe("other"));
        assert_eq!(conn.release_held("other", 0), None);
    }

    async fn assert_nothing_queued(events: &mut TopicEvents) {
        let next =
            tokio::time::timeout(std::time::Duration::from_millis(20), events.recv(10)).await;
        assert!(next.is_err(), "{next:?}");
    }

    #[tokio::test]
    async fn observer_hears_first_and_last_subscriber_only() {
        let hub = Hub::new();
        let (tx, _rx) = crate::outbound::queue(16);
        let a = hub.connect(tid("acme"), tx.clone(), 10);
        let b = hub.connect(tid("acme"), tx.clone(), 10);
        a.subscribe("before").unwrap();
        let mut events = hub.observe_topics(16, TenantScope::All);
        assert_eq!(hub.topics(), vec![(tid("acme"), Box::from("before"))]);
        a.subscribe("t").unwrap();
        b.subscribe("t").unwrap();
        b.subscribe_held("u").unwrap();
        let beta = hub.connect(tid("beta"), tx, 10);
        beta.subscribe("t").unwrap();
        a.unsubscribe("t");
        drop(b);
        let occupied = |t: &str, topic: &str| TopicEvent::Occupied(tid(t), Box::from(topic));
        let vacated = |t: &str, topic: &str| TopicEvent::Vacated(tid(t), Box::from(topic));
        let got = match events.recv(100).await {
            Some(TopicChanges::Events(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            got[..3],
            [
                occupied("acme", "t"),
                occupied("acme", "u"),
                occupied("beta", "t")
            ]
        );
        // `b` closes its topics in any order.
        let mut rest = got[3..].to_vec();
        rest.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(rest, [vacated("acme", "t"), vacated("acme", "u")]);
        assert_nothing_queued(&mut events).await;
        let mut topics = hub.topics();
        topics.sort();
        assert_eq!(
            topics,
            vec![
                (tid("acme"), Box::from("before")),
                (tid("beta"), Box::from("t"))
            ]
        );
    }

    #[tokio::test]
    async fn observer_queue_overflow_asks_for_a_resync() {
        let hub = Hub::new();
        let (tx, _rx) = crate::outbound::queue(16);
        let conn = hub.connect(tid("acme"), tx, 10);
        let mut events = hub.observe_topics(2, TenantScope::All);
        for topic in ["a", "b", "c"] {
            conn.subscribe(topic).unwrap();
        }
        // The third did not fit: the listener is told before anything else.
        assert_eq!(events.recv(10).await, Some(TopicChanges::Resync));
        events.clear();
        assert_nothing_queued(&mut events).await;
        conn.unsubscribe("a");
        assert_eq!(
            events.recv(10).await,
            Some(TopicChanges::Events(vec![TopicEvent::Vacated(
                tid("acme"),
                Box::from("a")
            )]))
        );
        // A wake whose word was taken does not end a wait early.
        assert_nothing_queued(&mut events).await;
    }

    #[tokio::test]
    async fn each_observer_hears_only_the_tenants_it_serves() {
        let hub = Hub::new();
        let (tx, _rx) = crate::outbound::queue(16);
        let own: Arc<HashSet<TenantId>> = Arc::new([tid("beta")].into_iter().collect());
        let mut shared = hub.observe_topics(8, TenantScope::AllBut(Arc::clone(&own)));
        let mut dedicated = hub.observe_topics(8, TenantScope::Only(own));
        let gone = hub.observe_topics(8, TenantScope::All);
        drop(gone);
        let acme = hub.connect(tid("acme"), tx.clone(), 10);
        let beta = hub.connect(tid("beta"), tx, 10);
        acme.subscribe("t").unwrap();
        beta.subscribe("t").unwrap();
        let occupied = |t: &str| TopicEvent::Occupied(tid(t), Box::from("t"));
        assert_eq!(
            shared.recv(10).await,
            Some(TopicChanges::Events(vec![occupied("acme")]))
        );
        assert_eq!(
            dedicated.recv(10).await,
            Some(TopicChanges::Events(vec![occupied("beta")]))
        );
        assert_nothing_queued(&mut shared).await;
        assert_nothing_queued(&mut dedicated).await;
        // A dropped listener is forgotten at the next registration.
        let _again = hub.observe_topics(8, TenantScope::All);
        assert_eq!(hub.observers.read().len(), 3);
    }
}
