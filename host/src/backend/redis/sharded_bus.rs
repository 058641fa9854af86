//! The sharded Redis bus (the seeds' `createShardedBus`): like the bus of
//! [`super::bus`], but **one channel per topic**, and each host subscribes
//! only to the channels of topics it has local subscribers for, so a host
//! receives only what it delivers (the plain bus sends every host every
//! publish of the namespace). On a Redis Cluster the channels spread over
//! the shards with the tenant's hash slot.
//!
//! **Channels**: `TenantKeys::name("sbus", topic)`, i.e.
//! `{ns}:t:{<tenant>}:sbus:<topic>`, in the tenant's slot like its seq key
//! and replay buffer (the same keys as the plain bus, so
//! [`RedisReplay`](crate::backend::replay::RedisReplay) reads them the same
//! way; a deployment uses one bus or the other, not both at once).
//!
//! **Publish**: the plain bus's script and publish pipeline (one EVALSHA
//! doing `INCR` + `ZADD` + trim + `SPUBLISH`, many per round trip; see
//! [`super::bus`]), with the payload `<seq>\n<topic>\n<event>\n<data>` sent
//! with `SPUBLISH` to the topic's channel. Same guarantees: one seq source,
//! per-topic order, gap-free seqs, [`Bus::publish`] returns once the event
//! is in Redis, `Timeout` / `Unavailable` as there. With durable replay
//! buffers ([`RedisShardedBus::start_with_seqs`]) the seq comes from
//! Postgres and the event is sent with a plain `SPUBLISH`, as the plain
//! bus does (see "Durable replay" in [`super::bus`]).
//!
//! **Following**: the hub tells the bus when a `(tenant, topic)` gets its
//! first local subscriber and loses its last ([`Hub::observe_topics`], a
//! queue of [`TOPIC_EVENTS`]; the hub's subscriber count is the refcount).
//! One task holds a dedicated RESP3 connection and sends `SSUBSCRIBE` /
//! `SUNSUBSCRIBE` for the changes, several per pipeline (at most
//! [`FOLLOW_BATCH`] commands per round trip). It looks at the hub's
//! current count when it handles a change, so a topic that flaps
//! (subscribed, left, subscribed) while a round trip is in flight costs
//! nothing extra, and a queue overflow makes it compare the whole set
//! instead. Messages arrive as RESP3 push messages and are handed to
//! [`Hub::deliver`] right in the connection's reader, in order, with the
//! seq from the message (no further queue).
//!
//! Why RESP3 on a multiplexed connection: redis-rs 1.8's async
//! [`redis::aio::PubSub`] has no `ssubscribe` (its sharded support is
//! cluster-only), but a RESP3 connection takes any command, so `SSUBSCRIBE`
//! is an ordinary command whose reply is the confirmation, messages come to
//! the connection's push sender, and `PING` still works for health checks.
//!
//! **The follow window**: a topic's channel is subscribed one round trip
//! after its first local subscriber arrived; events published on other
//! hosts in between do not reach this host (its subscribers see the topic
//! from a later seq; the replay buffer has them). A publish on **this**
//! host to a topic with local subscribers whose subscription is still on
//! its way waits for it (at most [`FOLLOW_WAIT`]), so a client that
//! subscribes and then publishes gets its own event, once.
//!
//! **Connection loss** (closed connection, failed health-check `PING`
//! every [`HEALTH_CHECK_INTERVAL`], failed (un)subscribe): the task
//! reconnects with the plain bus's backoff ([`RECONNECT_BACKOFF_MIN`]
//! doubling to [`RECONNECT_BACKOFF_MAX`], cut short when the breaker
//! heals) and subscribes the current set again, logging both. Meanwhile a
//! successful publish is delivered locally with its Redis seq, and events
//! other hosts publish are lost to this host (as with the plain bus).
//!
//! **Outages**: as the plain bus: publishes go through the shared
//! [`CircuitBreaker`]; while it is broken or a publish fails, the event is
//! delivered to local subscribers only with the hub's local seq, and the
//! breaker's transitions become `degraded` / `recovered` notices on
//! [`REALTIME_TOPIC`](super::bus::REALTIME_TOPIC).
//!
//! **`__realtime`** (the host's own notices, which each hub delivers
//! locally) is never followed; a publish to it through this bus reaches
//! this host's subscribers only. The host's other reserved channels
//! (`__presence:…`, `__cursor:…`, which only the host publishes to) are
//! followed like any topic, so presence and cursors span the fleet.
//!
//! The tasks stop when the [`RedisShardedBus`] is dropped.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, RedisError, Script, Value,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::bus::{
    Backoff, Channel, HEALTH_CHECK_INTERVAL, LocalFallback, PublishCall, PublishPipeline,
    SPUBLISH_SCRIPT, check_namespace, deliver, timed_out,
};
#[cfg(doc)]
use super::bus::{RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_MIN};
use super::keys::TenantKeys;
use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use crate::backend::breaker::{BreakerState, CircuitBreaker};
use crate::backend::replay::{ReplaySettings, SeqSource};
use crate::backend::{BackendError, Bus};
use crate::hub::{Hub, TopicChanges, TopicEvent, TopicEvents};
use crate::tenant::{TenantId, TenantScope};

/// Capacity of the hub's topic-event queue (past it the bus compares the
/// whole set of topics instead of single changes).
pub const TOPIC_EVENTS: usize = 4096;
/// Most `SSUBSCRIBE` / `SUNSUBSCRIBE` commands sent in one pipeline.
pub const FOLLOW_BATCH: usize = 256;
/// Longest a publish waits for its topic's subscription on this host (see
/// the module docs); after it, the event is delivered locally.
pub const FOLLOW_WAIT: Duration = Duration::from_secs(1);

/// The sharded Redis bus of one host. Create it with
/// [`RedisShardedBus::start`].
pub struct RedisShardedBus {
    namespace: String,
    pipeline: PublishPipeline,
    hub: Arc<Hub>,
    breaker: Arc<CircuitBreaker>,
    fallback: LocalFallback,
    follows: Arc<Follows>,
    /// The durable buffers numbering the events, if any (else the script).
    seqs: Option<Arc<dyn SeqSource>>,
    task: JoinHandle<()>,
    notices: JoinHandle<()>,
}

impl RedisShardedBus {
    /// Connect a dedicated RESP3 connection to the Redis at `url`,
    /// subscribe to the channels of the topics `hub` has subscribers for
    /// and follow its changes, delivering into `hub`; publish through
    /// `conn` and `breaker` (shared with the other backends on this Redis),
    /// buffering for replay as `replay` says (its `size` and `ttl`).
    /// Returns once subscribed: `Unavailable` if Redis cannot be reached or
    /// the URL is invalid, `Invalid` if `namespace` is not `[a-z0-9_-]+`.
    /// The bus serves the tenants of `scope` (all but those with a Redis of
    /// their own, or only those: see [`crate::backend::routed`]): it
    /// follows their topics through a hub topic observer
    /// ([`Hub::observe_topics`]) and sends them its breaker's notices.
    pub async fn start(
        conn: ConnectionManager,
        url: &str,
        namespace: String,
        hub: Arc<Hub>,
        breaker: Arc<CircuitBreaker>,
        replay: ReplaySettings,
        scope: TenantScope,
    ) -> Result<Arc<RedisShardedBus>, BackendError> {
        Self::start_with_seqs(conn, url, namespace, hub, breaker, replay, scope, None).await
    }

    /// As [`RedisShardedBus::start`]; with `seqs` (the durable replay
    /// buffers) every replayable event is appended there first and then
    /// `SPUBLISH`ed with the seq it got (as
    /// [`RedisBus::start_with_seqs`](super::bus::RedisBus::start_with_seqs)).
    #[allow(clippy::too_many_arguments)]
    pub async fn start_with_seqs(
        conn: ConnectionManager,
        url: &str,
        namespace: String,
        hub: Arc<Hub>,
        breaker: Arc<CircuitBreaker>,
        replay: ReplaySettings,
        scope: TenantScope,
        seqs: Option<Arc<dyn SeqSource>>,
    ) -> Result<Arc<RedisShardedBus>, BackendError> {
        check_namespace(&namespace)?;
        let client = resp3_client(url)?;
        let follows = Arc::new(Follows::default());
        let mut follower = Follower {
            client,
            namespace: namespace.clone(),
            hub: Arc::clone(&hub),
            events: hub.observe_topics(TOPIC_EVENTS, scope.clone()),
            follows: Arc::clone(&follows),
            breaker: breaker.subscribe(),
            scope: scope.clone(),
        };
        let link = follower.connect().await.map_err(|e| {
            BackendError::Unavailable(format!("cannot subscribe to the Redis sharded bus: {e}"))
        })?;
        tracing::info!(namespace, "Redis sharded bus subscribed");
        let task = tokio::spawn(follower.run(link));
        let fallback = LocalFallback::new(namespace.clone(), Arc::clone(&hub), scope);
        let notices = fallback.spawn_notices(&breaker);
        Ok(Arc::new(RedisShardedBus {
            pipeline: PublishPipeline::start(
                conn,
                Script::new(SPUBLISH_SCRIPT),
                "SPUBLISH",
                replay,
            ),
            namespace,
            hub,
            breaker,
            fallback,
            follows,
            seqs,
            task,
            notices,
        }))
    }

    /// The breaker every publish goes through.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Redis round trips the publishes took so far (see
    /// [`RedisBus::round_trips`](super::bus::RedisBus::round_trips)).
    pub fn round_trips(&self) -> u64 {
        self.pipeline.round_trips()
    }

    /// Whether this host is subscribed (confirmed by Redis) to the channel
    /// of `topic` of `tenant`, i.e. receives what other hosts publish there.
    pub fn is_following(&self, tenant: &TenantId, topic: &str) -> bool {
        let channel = Channel::Sharded.name(&TenantKeys::new(&self.namespace, tenant), topic);
        self.follows.connected.load(Ordering::Acquire)
            && self.follows.active.lock().contains(&channel)
    }
}

impl Drop for RedisShardedBus {
    fn drop(&mut self) {
        self.task.abort();
        self.notices.abort();
    }
}

#[async_trait]
impl Bus for RedisShardedBus {
    async fn ready(&self, tenant: &TenantId, topic: &str) {
        let keys = TenantKeys::new(&self.namespace, tenant);
        let channel = Channel::Sharded.name(&keys, topic);
        // Returns once the channel is followed (or cannot be soon).
        let _ = self
            .follows
            .local_delivery_needed(&self.hub, tenant, topic, &channel)
            .await;
    }

    async fn publish(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
    ) -> Result<(), BackendError> {
        let keys = TenantKeys::new(&self.namespace, tenant);
        let channel = Channel::Sharded.name(&keys, topic);
        let call = PublishCall::new(&keys, channel.clone(), topic, event, data)?;
        if let Some(seqs) = &self.seqs
            && !topic.starts_with("__")
        {
            seqs.append_then(
                tenant,
                topic,
                event,
                data,
                Box::new(move |seq| {
                    let relay: BoxFuture<'_, ()> =
                        Box::pin(self.relay(call, channel, tenant, topic, event, data, seq));
                    relay
                }),
            )
            .await?;
            return Ok(());
        }
        if let Err(open) = self.breaker.guard() {
            return self
                .fallback
                .publish(tenant, topic, event, data, &open.into());
        }
        let local = self
            .follows
            .local_delivery_needed(&self.hub, tenant, topic, &channel)
            .await;
        let started = std::time::Instant::now();
        let result = self.pipeline.call(call).await;
        crate::metrics::backend_command(self.breaker.name(), started.elapsed());
        self.breaker.record(&result);
        match result {
            Ok(seq) => {
                crate::metrics::bus_relayed(tenant);
                if local {
                    // Our subscription of the channel is not active: local
                    // subscribers get it now, with the Redis seq.
                    self.hub.deliver(tenant, topic, event, data, seq);
                }
                Ok(())
            }
            Err(e) => self.fallback.publish(tenant, topic, event, data, &e),
        }
    }
}

impl RedisShardedBus {
    /// `SPUBLISH` an event a durable buffer numbered `seq` (`call` is its
    /// publish on `channel`); with Redis unusable, deliver it locally with
    /// that seq.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        mut call: PublishCall,
        channel: String,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
        seq: u64,
    ) {
        call.assign(seq);
        if let Err(open) = self.breaker.guard() {
            return self
                .fallback
                .deliver(tenant, topic, event, data, seq, &open.into());
        }
        let local = self
            .follows
            .local_delivery_needed(&self.hub, tenant, topic, &channel)
            .await;
        let started = std::time::Instant::now();
        let result = self.pipeline.call(call).await;
        crate::metrics::backend_command(self.breaker.name(), started.elapsed());
        self.breaker.record(&result);
        match result {
            Ok(_) => {
                crate::metrics::bus_relayed(tenant);
                if local {
                    self.hub.deliver(tenant, topic, event, data, seq);
                }
            }
            Err(e) => self.fallback.deliver(tenant, topic, event, data, seq, &e),
        }
    }
}

/// A client for `url` speaking RESP3 (push messages on a normal connection).
fn resp3_client(url: &str) -> Result<Client, BackendError> {
    let invalid = |e: RedisError| BackendError::Unavailable(format!("invalid Redis URL: {e}"));
    let info = Client::open(url)
        .map_err(invalid)?
        .get_connection_info()
        .clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(settings)).map_err(invalid)
}

/// What the follower task shares with publishers.
#[derive(Default)]
struct Follows {
    /// Whether the shard-subscription connection is up.
    connected: AtomicBool,
    /// The channels subscribed (and confirmed) on the current connection:
    /// at most one per `(tenant, topic)` with local subscribers.
    active: Mutex<HashSet<String>>,
    /// Woken whenever `connected` or `active` changes.
    changed: Notify,
}

impl Follows {
    /// The connection is gone, and every subscription with it.
    fn disconnected(&self) {
        self.connected.store(false, Ordering::Release);
        self.active.lock().clear();
        self.changed.notify_waiters();
    }

    /// Whether an event published now on `channel` (`topic` of `tenant`)
    /// must be delivered to this host's subscribers by the publisher: the
    /// topic has local subscribers and its channel's subscription is not
    /// active. Waits up to [`FOLLOW_WAIT`] for a subscription on its way.
    async fn local_delivery_needed(
        &self,
        hub: &Hub,
        tenant: &TenantId,
        topic: &str,
        channel: &str,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + FOLLOW_WAIT;
        loop {
            // Registered before looking, so no change is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if is_reserved(topic) || !self.connected.load(Ordering::Acquire) {
                return true;
            }
            if hub.subscriber_count(tenant, topic) == 0 || self.active.lock().contains(channel) {
                return false;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return true;
            }
        }
    }
}

/// One shard-subscription connection and the signal of its loss.
struct Link {
    conn: MultiplexedConnection,
    lost: Arc<Notify>,
}

/// The task keeping this host's shard subscriptions equal to the hub's
/// topics, and its state.
struct Follower {
    client: Client,
    namespace: String,
    hub: Arc<Hub>,
    events: TopicEvents,
    follows: Arc<Follows>,
    /// The breaker's state: healing cuts a reconnect backoff short.
    breaker: watch::Receiver<BreakerState>,
    /// The tenants whose topics this bus follows.
    scope: TenantScope,
}

impl Follower {
    /// A new connection, subscribed to the channels of every topic the hub
    /// has subscribers for now.
    async fn connect(&mut self) -> Result<Link, RedisError> {
        let lost = Arc::new(Notify::new());
        let on_push = {
            let (hub, namespace, lost) = (
                Arc::clone(&self.hub),
                self.namespace.clone(),
                Arc::clone(&lost),
            );
            move |push: PushInfo| -> Result<(), Infallible> {
                handle_push(&hub, &namespace, &lost, push);
                Ok(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_push_sender(on_push);
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("connecting timed out")))?;
        let mut link = Link { conn, lost };
        // Whatever was subscribed went with the previous connection; the
        // hub's current topics are the whole truth from here on.
        self.follows.disconnected();
        self.events.clear();
        self.resync(&mut link).await?;
        self.follows.connected.store(true, Ordering::Release);
        self.follows.changed.notify_waiters();
        Ok(link)
    }

    /// Follow the hub's changes forever, reconnecting whenever the
    /// connection is lost. Ends when the hub is gone.
    async fn run(mut self, mut link: Link) {
        loop {
            let Some(reason) = self.pump(&mut link).await else {
                tracing::warn!(
                    namespace = self.namespace,
                    "Redis sharded bus: the hub is gone; not following"
                );
                self.follows.disconnected();
                return;
            };
            self.follows.disconnected();
            tracing::warn!(
                namespace = self.namespace,
                reason,
                "Redis sharded bus connection lost; resubscribing (events other hosts \
                 publish meanwhile are lost to this host)"
            );
            link = self.reconnect().await;
        }
    }

    /// Apply topic changes on `link` until it fails (returns why) or the
    /// hub's observer is gone (`None`).
    async fn pump(&mut self, link: &mut Link) -> Option<String> {
        let start = tokio::time::Instant::now() + HEALTH_CHECK_INTERVAL;
        let mut health = tokio::time::interval_at(start, HEALTH_CHECK_INTERVAL);
        loop {
            let step = tokio::select! {
                changes = self.events.recv(FOLLOW_BATCH) => Step::Changes(changes),
                () = link.lost.notified() => Step::Lost,
                _ = health.tick() => Step::Health,
            };
            let result = match step {
                Step::Changes(None) => return None,
                Step::Changes(Some(TopicChanges::Events(events))) => self.apply(link, events).await,
                Step::Changes(Some(TopicChanges::Resync)) => self.resync(link).await,
                Step::Lost => return Some("connection closed".into()),
                Step::Health => {
                    let ping = redis::cmd("PING");
                    match tokio::time::timeout(
                        COMMAND_TIMEOUT,
                        ping.query_async::<Value>(&mut link.conn),
                    )
                    .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => return Some(format!("health-check PING failed: {e}")),
                        Err(_) => return Some("health-check PING timed out".into()),
                    }
                }
            };
            if let Err(e) = result {
                return Some(format!("(un)subscribing failed: {e}"));
            }
        }
    }

    /// Connect again, retrying with [`Backoff`] until it works.
    async fn reconnect(&mut self) -> Link {
        let mut backoff = Backoff::new(&mut self.breaker);
        let mut attempts = 0u32;
        loop {
            backoff.wait(&mut self.breaker).await;
            attempts += 1;
            match self.connect().await {
                Ok(link) => {
                    tracing::info!(
                        namespace = self.namespace,
                        attempts,
                        channels = self.follows.active.lock().len(),
                        "Redis sharded bus resubscribed"
                    );
                    return link;
                }
                Err(e) => {
                    let retry_in = backoff.failed();
                    tracing::warn!(
                        namespace = self.namespace,
                        attempts,
                        error = %e,
                        retry_in_ms = retry_in.as_millis() as u64,
                        "Redis sharded bus resubscribe failed"
                    );
                }
            }
        }
    }

    /// The channel of `topic` of `tenant`.
    fn channel(&self, tenant: &TenantId, topic: &str) -> String {
        Channel::Sharded.name(&TenantKeys::new(&self.namespace, tenant), topic)
    }

    /// Follow or drop the topics of `events`, as the hub has them now.
    async fn apply(&mut self, link: &mut Link, events: Vec<TopicEvent>) -> Result<(), RedisError> {
        let mut wanted = HashMap::new();
        for event in events {
            let (TopicEvent::Occupied(tenant, topic) | TopicEvent::Vacated(tenant, topic)) = event;
            if is_reserved(&topic) {
                continue;
            }
            let follow = self.hub.subscriber_count(&tenant, &topic) > 0;
            wanted.insert(self.channel(&tenant, &topic), follow);
        }
        self.follow(link, wanted).await
    }

    /// Make the subscriptions equal to the hub's topics.
    async fn resync(&mut self, link: &mut Link) -> Result<(), RedisError> {
        let mut wanted: HashMap<String, bool> = self
            .hub
            .topics()
            .iter()
            .filter(|(tenant, topic)| self.scope.contains(tenant) && !is_reserved(topic))
            .map(|(tenant, topic)| (self.channel(tenant, topic), true))
            .collect();
        for channel in self.follows.active.lock().iter() {
            wanted.entry(channel.clone()).or_insert(false);
        }
        self.follow(link, wanted).await
    }

    /// `SSUBSCRIBE` the channels mapped to `true` and `SUNSUBSCRIBE` those
    /// mapped to `false`, skipping those already so, [`FOLLOW_BATCH`]
    /// commands per round trip; `active` follows each confirmed batch.
    async fn follow(
        &mut self,
        link: &mut Link,
        wanted: HashMap<String, bool>,
    ) -> Result<(), RedisError> {
        let changes: Vec<(String, bool)> = {
            let active = self.follows.active.lock();
            wanted
                .into_iter()
                .filter(|(channel, follow)| active.contains(channel) != *follow)
                .collect()
        };
        for chunk in changes.chunks(FOLLOW_BATCH) {
            let mut pipe = redis::pipe();
            for (channel, follow) in chunk {
                // One channel per command: one confirmation, one reply.
                pipe.cmd(if *follow {
                    "SSUBSCRIBE"
                } else {
                    "SUNSUBSCRIBE"
                })
                .arg(channel);
            }
            tokio::time::timeout(COMMAND_TIMEOUT, pipe.exec_async(&mut link.conn))
                .await
                .unwrap_or_else(|_| Err(timed_out("(un)subscribing timed out")))?;
            let mut active = self.follows.active.lock();
            for (channel, follow) in chunk {
                if *follow {
                    active.insert(channel.clone());
                } else {
                    active.remove(channel);
                }
            }
            drop(active);
            self.follows.changed.notify_waiters();
        }
        Ok(())
    }
}

/// Whether `topic` is never followed: the host's own notices on
/// `__realtime` are local to each host. (The host's other `__` channels,
/// presence diffs and cursors, are fleet-wide like any topic.)
fn is_reserved(topic: &str) -> bool {
    topic == crate::protocol::SYSTEM_TOPIC
}

/// What woke the follower.
enum Step {
    Changes(Option<TopicChanges>),
    Lost,
    Health,
}

/// Handle one push message of the shard connection: deliver a message,
/// note a lost connection, ignore the rest (confirmations).
fn handle_push(hub: &Hub, namespace: &str, lost: &Notify, push: PushInfo) {
    match push.kind {
        PushKind::SMessage => match push.data.as_slice() {
            [Value::BulkString(channel), Value::BulkString(payload)] => {
                match std::str::from_utf8(channel) {
                    Ok(channel) => deliver(
                        hub,
                        namespace,
                        &TenantScope::All,
                        Channel::Sharded,
                        channel,
                        payload,
                    ),
                    Err(_) => tracing::warn!("skipping Redis shard message on a non-UTF-8 channel"),
                }
            }
            _ => tracing::warn!("skipping malformed Redis shard message"),
        },
        PushKind::Disconnection => lost.notify_one(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::backend::breaker::BreakerConfig;
    use crate::backend::redis::bus::suite::{
        self, Peer, URL, assert_quiet, cleanup, recv, subscriber, tid, unique_namespace,
    };
    use crate::backend::redis::connect;

    /// One host: a hub and its sharded bus.
    struct Host {
        hub: Arc<Hub>,
        bus: Arc<RedisShardedBus>,
    }

    /// A host following through `url`, publishing through `conn`.
    async fn host_at(conn: &ConnectionManager, url: &str, ns: &str) -> Host {
        let hub = Hub::new();
        let breaker = Arc::new(CircuitBreaker::new("redis", BreakerConfig::default()));
        let bus = RedisShardedBus::start(
            conn.clone(),
            url,
            ns.to_owned(),
            Arc::clone(&hub),
            breaker,
            ReplaySettings::default(),
            TenantScope::All,
        )
        .await
        .unwrap();
        Host { hub, bus }
    }

    async fn host(conn: &ConnectionManager, ns: &str) -> Host {
        host_at(conn, URL, ns).await
    }

    /// The suite's view of a host.
    fn peer(host: &Host) -> Peer {
        let (following, round_trips) = (Arc::clone(&host.bus), Arc::clone(&host.bus));
        Peer::new(
            Arc::clone(&host.hub),
            Arc::clone(&host.bus) as Arc<dyn Bus>,
            Box::new(move |tenant, topic| following.is_following(tenant, topic)),
            Box::new(move || round_trips.round_trips()),
        )
    }

    /// How many connections are subscribed to `channel`, per Redis.
    async fn shard_subscribers(conn: &mut ConnectionManager, channel: &str) -> u64 {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel)
            .query_async(conn)
            .await
            .unwrap();
        n
    }

    /// Wait until `channel` has `want` subscribers (fails after 5 s).
    async fn await_shard_subscribers(conn: &mut ConnectionManager, channel: &str, want: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = shard_subscribers(conn, channel).await;
            if n == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{channel}: {n} subscribers, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn channel(ns: &str, tenant: &str, topic: &str) -> String {
        TenantKeys::new(ns, &tid(tenant)).name("sbus", topic)
    }

    #[tokio::test]
    async fn two_hosts_deliver_once_each_with_one_order() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let (a, b) = (host(&conn, &ns).await, host(&conn, &ns).await);
        suite::two_hosts_deliver_once_each_with_one_order(&peer(&a), &peer(&b)).await;
        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    #[tokio::test]
    async fn tenants_never_cross() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let (a, b) = (host(&conn, &ns).await, host(&conn, &ns).await);
        suite::tenants_never_cross(&peer(&a), &peer(&b)).await;
        // The suite's subscribers are gone: so are the subscriptions.
        for tenant in ["acme", "beta"] {
            await_shard_subscribers(&mut conn, &channel(&ns, tenant, "chat"), 0).await;
        }
        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    #[tokio::test]
    async fn concurrent_publishes_share_round_trips() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let (a, b) = (host(&conn, &ns).await, host(&conn, &ns).await);
        suite::concurrent_publishes_share_round_trips(&peer(&a), &peer(&b)).await;
        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    /// A host is subscribed to a topic's channel exactly while it has local
    /// subscribers of it; others' publishes reach only those hosts.
    #[tokio::test]
    async fn follows_only_topics_with_local_subscribers() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let (a, b) = (host(&conn, &ns).await, host(&conn, &ns).await);
        let room = channel(&ns, "acme", "room");
        let acme = tid("acme");
        assert_eq!(shard_subscribers(&mut conn, &room).await, 0);

        // Two subscribers on B: one subscription of B.
        let (b1, mut rb1) = peer(&b).subscribe("acme", "room").await;
        let (b2, mut rb2) = peer(&b).subscribe("acme", "room").await;
        assert_eq!(shard_subscribers(&mut conn, &room).await, 1);
        assert!(!a.bus.is_following(&acme, "room"));
        a.bus.publish(&acme, "room", "e", "1").await.unwrap();
        for rx in [&mut rb1, &mut rb2] {
            let v = recv(rx).await;
            assert_eq!((v["data"].as_u64(), v["seq"].as_u64()), (Some(1), Some(1)));
            assert_quiet(rx).await;
        }

        // A subscribes too: two hosts on the channel.
        let (a1, mut ra1) = peer(&a).subscribe("acme", "room").await;
        assert_eq!(shard_subscribers(&mut conn, &room).await, 2);
        // One of B's two leaves: B stays subscribed.
        drop(b1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shard_subscribers(&mut conn, &room).await, 2);
        b.bus.publish(&acme, "room", "e", "2").await.unwrap();
        for rx in [&mut ra1, &mut rb2] {
            assert_eq!(recv(rx).await["seq"], 2);
        }
        // The last on B leaves: B unsubscribes; A still gets B's publishes.
        drop(b2);
        await_shard_subscribers(&mut conn, &room, 1).await;
        assert!(!b.bus.is_following(&acme, "room"));
        b.bus.publish(&acme, "room", "e", "3").await.unwrap();
        assert_eq!(recv(&mut ra1).await["seq"], 3);
        assert_quiet(&mut ra1).await;
        drop(a1);
        await_shard_subscribers(&mut conn, &room, 0).await;

        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    /// The publisher's view of a subscription on its way: it waits for it
    /// (then the subscription delivers), delivers itself when the
    /// connection is down or the subscription does not come in time, and
    /// does neither for a topic without local subscribers.
    #[tokio::test(start_paused = true)]
    async fn publish_waits_for_a_pending_subscription() {
        let hub = Hub::new();
        let follows = Arc::new(Follows::default());
        let acme = tid("acme");
        let needed = |topic: &'static str| {
            let (hub, follows, acme) = (Arc::clone(&hub), Arc::clone(&follows), acme.clone());
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let needed = follows
                    .local_delivery_needed(&hub, &acme, topic, &format!("ch:{topic}"))
                    .await;
                (needed, started.elapsed())
            })
        };
        // Not connected: at once, local.
        assert_eq!(needed("room").await.unwrap(), (true, Duration::ZERO));
        follows.connected.store(true, Ordering::Release);
        // No local subscriber: nothing to wait for.
        assert_eq!(needed("room").await.unwrap(), (false, Duration::ZERO));
        let (_s, _rx) = subscriber(&hub, "acme", "room");
        // The subscription arrives after 300 ms: the publisher waits for it.
        let waiting = needed("room");
        tokio::time::sleep(Duration::from_millis(300)).await;
        follows.active.lock().insert("ch:room".into());
        follows.changed.notify_waiters();
        assert_eq!(waiting.await.unwrap(), (false, Duration::from_millis(300)));
        // Already active: at once.
        assert_eq!(needed("room").await.unwrap(), (false, Duration::ZERO));
        // Never arrives: local, after FOLLOW_WAIT.
        let (_s2, _rx2) = subscriber(&hub, "acme", "other");
        assert_eq!(needed("other").await.unwrap(), (true, FOLLOW_WAIT));
        // A reserved topic is never followed: local, at once.
        let (_s3, _rx3) = subscriber(&hub, "acme", "__realtime");
        assert_eq!(needed("__realtime").await.unwrap(), (true, Duration::ZERO));
        // The connection is lost while waiting: local, at once.
        let waiting = needed("other");
        tokio::time::sleep(Duration::from_millis(10)).await;
        follows.disconnected();
        assert_eq!(waiting.await.unwrap(), (true, Duration::from_millis(10)));
    }

    /// A client that subscribes and at once publishes on the same host gets
    /// its own event, once, although the subscription in Redis follows the
    /// local one a round trip later.
    #[tokio::test]
    async fn publish_right_after_subscribe_reaches_the_local_subscriber() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let a = host(&conn, &ns).await;
        let acme = tid("acme");
        for i in 0..20u64 {
            let topic = format!("t{i}");
            let (_s, mut rx) = subscriber(&a.hub, "acme", &topic);
            a.bus.publish(&acme, &topic, "e", "1").await.unwrap();
            let v = recv(&mut rx).await;
            assert_eq!(
                (v["topic"].as_str(), v["seq"].as_u64()),
                (Some(topic.as_str()), Some(1))
            );
            a.bus.publish(&acme, &topic, "e", "2").await.unwrap();
            assert_eq!(recv(&mut rx).await["seq"], 2);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(rx.try_recv().is_err(), "{topic}: delivered twice");
        }
        drop(a);
        cleanup(&mut conn, &ns).await;
    }

    /// `ready` returns once another host's publish reaches the new local
    /// subscriber (what the session waits for before acking a subscribe).
    #[tokio::test]
    async fn ready_returns_once_the_topic_is_followed() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let a = host(&conn, &ns).await;
        let b = host(&conn, &ns).await;
        let acme = tid("acme");
        for i in 0..20u64 {
            let topic = format!("r{i}");
            let (_s, mut rx) = subscriber(&b.hub, "acme", &topic);
            b.bus.ready(&acme, &topic).await;
            assert!(b.bus.is_following(&acme, &topic), "{topic}");
            a.bus.publish(&acme, &topic, "e", "1").await.unwrap();
            assert_eq!(recv(&mut rx).await["seq"], 1, "{topic}");
        }
        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    /// Every key and channel the sharded bus uses is inside the tenant's
    /// prefix.
    #[tokio::test]
    async fn keys_and_channels_stay_inside_the_tenant_prefix() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let a = host(&conn, &ns).await;
        let (_s, mut rx) = peer(&a).subscribe("acme", "x}:t:{beta}:sbus:y").await;
        for (tenant, topic) in [
            ("acme", "room"),
            ("acme", "x}:t:{beta}:sbus:y"),
            ("beta", "room"),
        ] {
            a.bus.publish(&tid(tenant), topic, "e", "1").await.unwrap();
        }
        assert_eq!(recv(&mut rx).await["seq"], 1);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{ns}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .arg(format!("{ns}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let evil = "x}:t:{beta}:sbus:y";
        assert_eq!(channels, [channel(&ns, "acme", evil)]);
        let (acme, beta) = (
            TenantKeys::new(&ns, &tid("acme")),
            TenantKeys::new(&ns, &tid("beta")),
        );
        let mut want = vec![
            acme.name("seq", "room"),
            acme.name("replay", "room"),
            acme.name("seq", evil),
            acme.name("replay", evil),
            beta.name("seq", "room"),
            beta.name("replay", "room"),
        ];
        for keys in [&acme, &beta] {
            for index in [
                super::super::bus::REPLAY_INDEX,
                super::super::bus::REPLAY_SIZES,
                super::super::bus::REPLAY_TOTAL,
            ] {
                want.push(keys.fixed(index));
            }
        }
        want.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, want);
        for name in keys.iter().chain(&channels) {
            let tenant = crate::backend::redis::keys::tenant_of(&ns, name).unwrap();
            assert!(
                name.starts_with(TenantKeys::new(&ns, &tenant).prefix()),
                "{name}"
            );
        }
        assert_eq!(
            crate::backend::redis::keys::tenant_of(&ns, &channels[0]),
            Some(tid("acme"))
        );
        drop(a);
        cleanup(&mut conn, &ns).await;
    }

    /// Messages on a channel that are not a host's publish there are
    /// skipped; the next real one is delivered.
    #[tokio::test]
    async fn malformed_messages_are_skipped() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let a = host(&conn, &ns).await;
        let (_s, mut rx) = peer(&a).subscribe("acme", "room").await;
        let room = channel(&ns, "acme", "room");
        let bad: [&[u8]; 5] = [
            b"garbage",
            b"1\nroom\ne\n{broken",
            b"0\nroom\ne\n{}",
            // Another topic's event on this topic's channel.
            b"2\nother\ne\n{}",
            b"3\nroom\n\xff\n{}",
        ];
        for payload in bad {
            let _: u64 = redis::cmd("SPUBLISH")
                .arg(&room)
                .arg(payload)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        a.bus
            .publish(&tid("acme"), "room", "e", r#"{"ok":true}"#)
            .await
            .unwrap();
        let v = recv(&mut rx).await;
        assert_eq!(
            (v["data"]["ok"].as_bool(), v["seq"].as_u64()),
            (Some(true), Some(1))
        );
        assert_quiet(&mut rx).await;
        drop(a);
        cleanup(&mut conn, &ns).await;
    }

    /// The shard connection is killed (its own user, so nothing else is):
    /// the bus reconnects and subscribes the current set again, including
    /// topics subscribed meanwhile; until then its own publishes still
    /// reach its subscribers.
    #[tokio::test]
    async fn resubscribes_after_the_connection_is_killed() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let user = format!("{ns}-user");
        let acl = |args: &[&str]| {
            let mut cmd = redis::cmd("ACL");
            cmd.arg("SETUSER").arg(&user).arg(args);
            cmd
        };
        let _: () = acl(&["on", ">secret", "~*", "&*", "+@all"])
            .query_async(&mut conn)
            .await
            .unwrap();
        let user_url = format!("redis://{user}:secret@127.0.0.1:6379");
        let a = host_at(&conn, &user_url, &ns).await;
        let b = host(&conn, &ns).await;
        let acme = tid("acme");
        let (_s1, mut room) = peer(&a).subscribe("acme", "room").await;

        let _: () = acl(&["off"]).query_async(&mut conn).await.unwrap();
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&user)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(killed, 1, "exactly the shard connection");
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.bus.is_following(&acme, "room") {
            assert!(Instant::now() < deadline, "loss not noticed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            shard_subscribers(&mut conn, &channel(&ns, "acme", "room")).await,
            0
        );
        // Subscribed while disconnected.
        let (_s2, mut later) = subscriber(&a.hub, "acme", "later");
        // A's own publish reaches A's subscriber (locally, Redis seq).
        a.bus.publish(&acme, "room", "e", "1").await.unwrap();
        assert_eq!(recv(&mut room).await["seq"], 1);
        let _: () = acl(&["on"]).query_async(&mut conn).await.unwrap();

        for topic in ["room", "later"] {
            await_shard_subscribers(&mut conn, &channel(&ns, "acme", topic), 1).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !a.bus.is_following(&acme, topic) {
                assert!(Instant::now() < deadline, "{topic} not followed again");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        b.bus.publish(&acme, "room", "e", "2").await.unwrap();
        b.bus.publish(&acme, "later", "e", "1").await.unwrap();
        assert_eq!(recv(&mut room).await["seq"], 2);
        assert_eq!(recv(&mut later).await["seq"], 1);
        assert_quiet(&mut room).await;
        assert_quiet(&mut later).await;

        drop((a, b));
        let _: u64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut conn)
            .await
            .unwrap();
        cleanup(&mut conn, &ns).await;
    }

    /// With the breaker open a publish fails fast and reaches this host's
    /// subscribers with the local seq, not other hosts'; the `degraded`
    /// notice goes out; once healthy, publishes go through Redis again.
    #[tokio::test]
    async fn open_breaker_delivers_locally() {
        let ns = unique_namespace();
        let mut conn = connect(URL).await.unwrap();
        let config = BreakerConfig {
            failure_threshold: 1,
            reset_timeout: Duration::from_secs(60),
        };
        let breaker = Arc::new(CircuitBreaker::new("redis", config));
        let hub = Hub::new();
        let a = Host {
            bus: RedisShardedBus::start(
                conn.clone(),
                URL,
                ns.clone(),
                Arc::clone(&hub),
                Arc::clone(&breaker),
                ReplaySettings::default(),
                TenantScope::All,
            )
            .await
            .unwrap(),
            hub,
        };
        let b = host(&conn, &ns).await;
        let acme = tid("acme");
        let (_sa, mut ra) = peer(&a).subscribe("acme", "room").await;
        let (_sb, mut rb) = peer(&b).subscribe("acme", "room").await;
        let (_n, mut notices) = subscriber(&a.hub, "acme", super::super::bus::REALTIME_TOPIC);
        a.bus.publish(&acme, "room", "e", "1").await.unwrap();
        assert_eq!(recv(&mut ra).await["seq"], 1);
        assert_eq!(recv(&mut rb).await["seq"], 1);

        // Reserved topics are not followed.
        let realtime = channel(&ns, "acme", super::super::bus::REALTIME_TOPIC);
        assert_eq!(shard_subscribers(&mut conn, &realtime).await, 0);
        breaker.failure();
        assert_eq!(recv(&mut notices).await["event"], "degraded");
        let started = Instant::now();
        a.bus.publish(&acme, "room", "e", "2").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        let v = recv(&mut ra).await;
        assert_eq!((v["data"].as_u64(), v["seq"].as_u64()), (Some(2), Some(2)));
        assert_quiet(&mut rb).await;
        assert_eq!(a.bus.round_trips(), 1, "nothing sent while open");

        breaker.reset();
        assert_eq!(recv(&mut notices).await["event"], "recovered");
        a.bus.publish(&acme, "room", "e", "3").await.unwrap();
        // Redis's seq takes over again (it did not see the local one).
        for rx in [&mut ra, &mut rb] {
            let v = recv(rx).await;
            assert_eq!((v["data"].as_u64(), v["seq"].as_u64()), (Some(3), Some(2)));
        }

        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    #[tokio::test]
    async fn start_refuses_bad_settings() {
        let conn = connect(URL).await.unwrap();
        let start = |url: &'static str, ns: &'static str| {
            RedisShardedBus::start(
                conn.clone(),
                url,
                ns.to_owned(),
                Hub::new(),
                Arc::new(CircuitBreaker::new("redis", BreakerConfig::default())),
                ReplaySettings::default(),
                TenantScope::All,
            )
        };
        for ns in ["", "a:b", "A", "a*"] {
            assert!(
                matches!(start(URL, ns).await, Err(BackendError::Invalid(_))),
                "{ns}"
            );
        }
        let r = start("redis://127.0.0.1:1", "ns").await;
        assert!(matches!(r, Err(BackendError::Unavailable(_))));
    }
}
