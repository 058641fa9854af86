//! The cross-instance pub/sub bus: every host sharing one Redis (and one
//! namespace) delivers a publish to the topic's subscribers on every host,
//! once each, with the same seq everywhere, gap-free per topic, in seq order.
//!
//! **Publish** is one Lua script (EVALSHA, loaded on demand): `INCR` the
//! topic's seq key (`TenantKeys::name("seq", topic)`), `ZADD` the event to
//! the topic's replay buffer (`TenantKeys::name("replay", topic)`, a sorted
//! set scored by seq, member `<seq>\n<event>\n<data>`) and trim it to
//! [`ReplaySettings::size`], refresh both keys' TTL
//! ([`ReplaySettings::ttl`]), and `PUBLISH` to the tenant's channel
//! (`TenantKeys::fixed("bus")`) the payload `<seq>\n<topic>\n<event>\n<data>`
//! (topics and events cannot contain `\n`; the data, last, may). Redis runs
//! the script atomically, so the channel carries each topic's events in seq
//! order and the buffer ([`RedisReplay`](crate::backend::replay::RedisReplay)
//! reads it) holds exactly the events with the seqs subscribers saw: one
//! seq source. [`Bus::publish`] returns once the script has run; failures are
//! [`BackendError::Unavailable`] or, after [`COMMAND_TIMEOUT`],
//! [`BackendError::Timeout`] (then the event may or may not have been sent).
//!
//! **Durable replay** (`[replay] store = "postgres"`,
//! [`RedisBus::start_with_seqs`]): the seq and the buffer are Postgres's
//! ([`crate::backend::replay::PostgresReplay`]). A publish appends the event
//! there and, while Postgres holds the topic's row lock, sends a plain
//! `PUBLISH` of `<seq>\n<topic>\n<event>\n<data>` with that seq through the
//! same pipeline (no script, no seq key or buffer in Redis): the next event
//! of the topic, from any host, gets its seq only after this one was
//! published, so the channel still carries a topic's events in seq order.
//! With Redis unusable the event (already buffered) is delivered locally
//! with its durable seq; with Postgres unusable the publish fails.
//!
//! **Pipelining**: publishes do not each wait for their own round trip.
//! [`Bus::publish`] puts its script call on the bus's publish queue (at most
//! [`PUBLISH_QUEUE`] waiting; a publisher finding it full waits for room)
//! and one task drains it: it takes every call waiting, up to
//! [`PUBLISH_BATCH`], sends them to Redis as **one pipeline** of `EVALSHA`s
//! (one round trip), and answers each publisher with its own seq or error.
//! While a batch is in flight the next one gathers, so a burst of publishes
//! (one tick of a plugin, many connections publishing at once) costs a few
//! round trips instead of one each, and a lone publish still goes out at
//! once. Redis runs a connection's pipelined commands in order and the task
//! sends a batch only after the previous one was answered, so the order of
//! the queue is the order of the seqs: per-topic order and gap-free seqs are
//! kept. A `NOSCRIPT` answer (Redis restarted or its scripts were flushed)
//! loads the script and sends the calls that got it once more, in their
//! order (if the scripts were flushed in the middle of a batch and another
//! host reloaded them in between, a retried event can follow a later one of
//! the same batch; a seq is never lost or doubled). The [`COMMAND_TIMEOUT`]
//! of a publish counts from the call, queueing included; a call whose
//! publisher gave up before its batch left is not sent.
//! [`RedisBus::round_trips`] counts the round trips.
//!
//! **Delivery**: each host holds one dedicated pub/sub connection with
//! `PSUBSCRIBE {ns}:t:{*}:bus` (`{` and `}` are not glob characters) and a
//! task that parses every message (channel → tenant with [`keys::tenant_of`])
//! and hands it to [`Hub::deliver`] with the seq from the message. The
//! publishing host does not deliver locally on publish: it too delivers what
//! comes back on its subscription. That is deliberate. Redis orders one
//! channel's messages the same for every subscriber, so routing local
//! subscribers through Redis as well gives every host one order per topic,
//! even when two hosts publish to it at once; delivering locally first and
//! suppressing the echo would let a host show its own event before a remote
//! one with a lower seq. The price is one Redis round trip of latency for
//! local subscribers. Every host receives every publish of the namespace
//! (the hub drops those without local subscribers with one hash lookup);
//! the sharded bus ([`super::sharded_bus`]) sends each host only the topics
//! it has subscribers for.
//!
//! A malformed message (bad channel, framing, seq or JSON data — only
//! something other than a host can publish one) is logged and skipped.
//!
//! **Connection loss**: the task notices a closed subscription connection,
//! or a health-check `PING` (every [`HEALTH_CHECK_INTERVAL`]) that fails or
//! times out, and resubscribes with backoff ([`RECONNECT_BACKOFF_MIN`]
//! doubling to [`RECONNECT_BACKOFF_MAX`]), logging both. **Known gap**:
//! messages published while this host is not subscribed are not delivered
//! by it; its subscribers see a jump in the topic's seq, and the events are
//! in the replay buffer for clients that ask (`replay`, `resume`).
//!
//! **Seq lifetime**: a topic's seq key and buffer expire
//! [`ReplaySettings::ttl`] after its last publish (never without a TTL);
//! the next publish then starts again at seq 1 (a subscriber that stayed
//! subscribed through that idle time sees the seq go back).
//!
//! **Outages** (the seeds' degrade matrix): every publish goes through the
//! process's Redis [`CircuitBreaker`] (shared with the KV; each publish is
//! one call for it, also when it shared its round trip). While the breaker
//! is broken, or when a publish to Redis fails, [`Bus::publish`] delivers
//! the event **locally only**, through [`Hub::publish`] with the hub's
//! local seq, and returns `Ok`: this host's subscribers keep getting
//! events, other hosts do not see them (the degradation is logged once per
//! outage). After a publish that timed out the event may also have reached
//! Redis, so local subscribers can see it twice. **Seqs during an outage
//! are local**: they continue from the last seq this host delivered, and
//! when Redis is back its seq takes over again (a Redis that lost its data
//! restarts at 1), so clients see a gap or a reset; replay will cover it.
//!
//! When the breaker goes broken the bus sends `degraded` with
//! `{"at": <unix ms>}` on the reserved topic [`REALTIME_TOPIC`] to the local
//! subscribers of that topic, tenant by tenant (each tenant's own topic,
//! with its own seq), and `recovered` (same data) when it is healthy again.
//! When the breaker heals, a subscription waiting in its reconnect backoff
//! retries at once; until it is active again, a successful publish is also
//! delivered locally with its Redis seq (so local subscribers miss nothing;
//! in the instant the subscription comes back one may arrive twice).
//!
//! The subscriber and publish tasks stop when the [`RedisBus`] is dropped;
//! [`RedisBus::shutdown`] stops the subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, PubSub};
use redis::{Client, Msg, RedisError, RedisResult, Script};
use serde::de::IgnoredAny;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::keys::{self, TenantKeys};
use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use crate::backend::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::backend::replay::{ReplaySettings, SeqSource};
use crate::backend::{BackendError, Bus};
use crate::hub::Hub;
use crate::tenant::{TenantId, TenantScope};

/// First wait before resubscribing after the subscription was lost.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two resubscribe attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the subscription connection is checked with a `PING`.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// The reserved topic carrying the host's `degraded` / `recovered` notices.
pub const REALTIME_TOPIC: &str = crate::protocol::SYSTEM_TOPIC;
/// Most publishes waiting in one bus's publish queue; a publisher that
/// finds it full waits (within its [`COMMAND_TIMEOUT`]) for room.
pub const PUBLISH_QUEUE: usize = 4096;
/// Most publishes sent to Redis in one pipeline (one round trip).
pub const PUBLISH_BATCH: usize = 256;

/// The publish script, ending in `$publish` (`PUBLISH` or `SPUBLISH`) to
/// the channel. `KEYS[1]` the topic's seq key, `KEYS[2]` its replay
/// buffer, `KEYS[3]` the tenant's replay index (sorted set topic → last
/// publish ms), `KEYS[4]` its buffer sizes (hash topic → bytes), `KEYS[5]`
/// its total buffered bytes; `ARGV[1]` the channel, `ARGV[2]` the keys'
/// TTL in ms (0: none), `ARGV[3]` the topic, `ARGV[4]` the buffer size (0:
/// keep nothing), `ARGV[5]` `<event>\n<data>`, `ARGV[6]` the most topics a
/// tenant may buffer, `ARGV[7]` the most bytes (0: no bound), `ARGV[8]` /
/// `ARGV[9]` the prefixes of seq keys and buffers (+ topic). Other topics'
/// keys are derived, not declared: they share the tenant's hash tag, so
/// they are in the same Redis Cluster slot.
///
/// The per-tenant bounds are those of the memory buffers: over the topic
/// bound the least recently published topic is forgotten (seq and buffer),
/// over the byte bound the oldest events of the least recently published
/// topics go (the topic being published last). An event costs its member's
/// length plus [`REPLAY_EVENT_OVERHEAD`]. Topics idle past the TTL (their
/// keys expired by themselves) leave the index at the next publish.
/// `%d` keeps large seqs out of Lua's float notation.
macro_rules! publish_script {
    ($publish:literal) => {
        concat!(
            r"
local seq = redis.call('INCR', KEYS[1])
local ttl = tonumber(ARGV[2])
local size = tonumber(ARGV[4])
local id = string.format('%d', seq)
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if size > 0 then
  local buf, index, sizes, total = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local topic = ARGV[3]
  local max_topics, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
  local seq_p, buf_p = ARGV[8], ARGV[9]
  local overhead = 48
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  local function count(t, delta)
    if delta ~= 0 then
      if redis.call('HINCRBY', sizes, t, delta) <= 0 then
        redis.call('HDEL', sizes, t)
      end
      redis.call('INCRBY', total, delta)
    end
  end
  local function forget(t)
    local b = tonumber(redis.call('HGET', sizes, t) or '0')
    redis.call('HDEL', sizes, t)
    if b ~= 0 then
      redis.call('DECRBY', total, b)
    end
    redis.call('ZREM', index, t)
  end
  if ttl > 0 then
    local idle = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. string.format('%d', now - ttl), 'LIMIT', 0, 64)
    for _, t in ipairs(idle) do
      forget(t)
    end
  end
  redis.call('ZADD', index, now, topic)
  local member = id .. '\n' .. ARGV[5]
  redis.call('ZADD', buf, seq, member)
  count(topic, #member + overhead)
  local over = redis.call('ZCARD', buf) - size
  if over > 0 then
    local freed = 0
    for _, m in ipairs(redis.call('ZRANGE', buf, 0, over - 1)) do
      freed = freed + #m + overhead
    end
    redis.call('ZREMRANGEBYRANK', buf, 0, over - 1)
    count(topic, -freed)
  end
  if max_topics > 0 then
    local excess = redis.call('ZCARD', index) - max_topics
    if excess > 0 then
      for _, t in ipairs(redis.call('ZRANGE', index, 0, excess)) do
        if excess <= 0 then
          break
        end
        if t ~= topic then
          forget(t)
          redis.call('DEL', seq_p .. t, buf_p .. t)
          excess = excess - 1
        end
      end
    end
  end
  if max_bytes > 0 and tonumber(redis.call('GET', total) or '0') > max_bytes then
    local victims = {}
    for _, t in ipairs(redis.call('ZRANGE', index, 0, 255)) do
      if t ~= topic then
        table.insert(victims, t)
      end
    end
    table.insert(victims, topic)
    local i, pops = 1, 0
    while victims[i] and pops < 1024 and tonumber(redis.call('GET', total) or '0') > max_bytes do
      local popped = redis.call('ZPOPMIN', buf_p .. victims[i])
      if #popped == 0 then
        i = i + 1
      else
        pops = pops + 1
        count(victims[i], -(#popped[1] + overhead))
      end
    end
  end
  if ttl > 0 then
    redis.call('PEXPIRE', buf, ttl)
    redis.call('PEXPIRE', index, ttl)
    redis.call('PEXPIRE', sizes, ttl)
    redis.call('PEXPIRE', total, ttl)
  end
end
redis.call('",
            $publish,
            r"', ARGV[1], id .. '\n' .. ARGV[3] .. '\n' .. ARGV[5])
return seq
"
        )
    };
}

/// Bytes a buffered event costs in Redis beyond its member
/// (`<seq>\n<event>\n<data>`) for the per-tenant byte bound (the
/// publish script's `overhead`).
pub const REPLAY_EVENT_OVERHEAD: usize = 48;

/// The bus's publish script (see `publish_script!`): `PUBLISH` to the
/// tenant's bus channel.
const PUBLISH_SCRIPT: &str = publish_script!("PUBLISH");
/// The sharded bus's publish script: the same steps, `SPUBLISH` to the
/// topic's shard channel.
pub(crate) const SPUBLISH_SCRIPT: &str = publish_script!("SPUBLISH");

/// The Redis pub/sub bus of one host. Create it with [`RedisBus::start`].
pub struct RedisBus {
    namespace: String,
    pipeline: PublishPipeline,
    hub: Arc<Hub>,
    breaker: Arc<CircuitBreaker>,
    fallback: LocalFallback,
    /// Whether the subscription is active (set by the subscriber task).
    subscribed: Arc<AtomicBool>,
    /// The durable buffers numbering the events, if any (else the script).
    seqs: Option<Arc<dyn SeqSource>>,
    task: JoinHandle<()>,
    notices: JoinHandle<()>,
}

impl RedisBus {
    /// Subscribe to the bus of `namespace` on the Redis at `url` (one
    /// dedicated pub/sub connection) and start delivering its messages into
    /// `hub`; publish through `conn`. Returns once the subscription is
    /// active: `Unavailable` if Redis cannot be reached or the URL is
    /// invalid, `Invalid` if `namespace` is not `[a-z0-9_-]+`. The bus has
    /// its own default breaker; see [`RedisBus::start_with_breaker`].
    pub async fn start(
        conn: ConnectionManager,
        url: &str,
        namespace: String,
        hub: Arc<Hub>,
    ) -> Result<Arc<RedisBus>, BackendError> {
        let breaker = Arc::new(CircuitBreaker::new("redis", BreakerConfig::default()));
        Self::start_with_breaker(conn, url, namespace, hub, breaker).await
    }

    /// As [`RedisBus::start`], with publishes going through `breaker`
    /// (shared with the other backends on the same Redis), whose
    /// transitions become `degraded` / `recovered` notices on
    /// [`REALTIME_TOPIC`].
    pub async fn start_with_breaker(
        conn: ConnectionManager,
        url: &str,
        namespace: String,
        hub: Arc<Hub>,
        breaker: Arc<CircuitBreaker>,
    ) -> Result<Arc<RedisBus>, BackendError> {
        Self::start_configured(
            conn,
            url,
            namespace,
            hub,
            breaker,
            ReplaySettings::default(),
            TenantScope::All,
        )
        .await
    }

    /// As [`RedisBus::start_with_breaker`], buffering events for replay as
    /// `replay` says (its `size` and `ttl`; the memory-only bounds do not
    /// apply), for the tenants of `scope` only: their events are delivered
    /// from this Redis and they get this breaker's notices (a host using
    /// several Redis servers has a bus on each, see
    /// [`crate::backend::routed`]).
    pub async fn start_configured(
        conn: ConnectionManager,
        url: &str,
        namespace: String,
        hub: Arc<Hub>,
        breaker: Arc<CircuitBreaker>,
        replay: ReplaySettings,
        scope: TenantScope,
    ) -> Result<Arc<RedisBus>, BackendError> {
        Self::start_with_seqs(conn, url, namespace, hub, breaker, replay, scope, None).await
    }

    /// As [`RedisBus::start_configured`]; with `seqs` (the durable replay
    /// buffers) every replayable event is first appended there and then
    /// `PUBLISH`ed with the seq it got, under the buffer's per-topic lock
    /// (one seq source; the script's seq keys and Redis buffers are not
    /// used). A publish then fails with the buffer's error when it cannot
    /// be appended; with Redis down the appended event is delivered
    /// locally with its durable seq.
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
    ) -> Result<Arc<RedisBus>, BackendError> {
        check_namespace(&namespace)?;
        let client = Client::open(url)
            .map_err(|e| BackendError::Unavailable(format!("invalid Redis URL: {e}")))?;
        let subscribed = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            client,
            pattern: channel_pattern(&namespace),
            namespace: namespace.clone(),
            hub: Arc::clone(&hub),
            breaker: breaker.subscribe(),
            subscribed: Arc::clone(&subscribed),
            scope: scope.clone(),
        };
        let pubsub = subscriber.subscribe().await.map_err(|e| {
            BackendError::Unavailable(format!("cannot subscribe to the Redis bus: {e}"))
        })?;
        tracing::info!(namespace, "Redis bus subscribed");
        subscribed.store(true, Ordering::Release);
        let task = tokio::spawn(subscriber.run(pubsub));
        let fallback = LocalFallback::new(namespace.clone(), Arc::clone(&hub), scope);
        let notices = fallback.spawn_notices(&breaker);
        Ok(Arc::new(RedisBus {
            pipeline: PublishPipeline::start(conn, Script::new(PUBLISH_SCRIPT), "PUBLISH", replay),
            namespace,
            hub,
            breaker,
            fallback,
            subscribed,
            seqs,
            task,
            notices,
        }))
    }

    /// The breaker every publish goes through.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Redis round trips the publishes took so far (pipelines sent, each
    /// carrying up to [`PUBLISH_BATCH`] publishes, plus script loads).
    pub fn round_trips(&self) -> u64 {
        self.pipeline.round_trips()
    }

    /// Stop the subscriber task (this host then receives nothing more);
    /// idempotent. Dropping the bus does the same.
    pub fn shutdown(&self) {
        self.task.abort();
        self.notices.abort();
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.task.abort();
        self.notices.abort();
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
    ) -> Result<(), BackendError> {
        let keys = TenantKeys::new(&self.namespace, tenant);
        let call = PublishCall::new(&keys, keys.fixed("bus"), topic, event, data)?;
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
                        Box::pin(self.relay(call, tenant, topic, event, data, seq));
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
        let started = std::time::Instant::now();
        let result = self.pipeline.call(call).await;
        crate::metrics::backend_command(self.breaker.name(), started.elapsed());
        self.breaker.record(&result);
        match result {
            Ok(seq) => {
                crate::metrics::bus_relayed(tenant);
                if !self.subscribed.load(Ordering::Acquire) {
                    // Our subscription is still coming back: local
                    // subscribers get it now, with the Redis seq.
                    self.hub.deliver(tenant, topic, event, data, seq);
                }
                Ok(())
            }
            Err(e) => self.fallback.publish(tenant, topic, event, data, &e),
        }
    }
}

impl RedisBus {
    /// `PUBLISH` an event a durable buffer numbered `seq` (`call` is its
    /// publish); with Redis unusable, deliver it locally with that seq.
    async fn relay(
        &self,
        mut call: PublishCall,
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
        let started = std::time::Instant::now();
        let result = self.pipeline.call(call).await;
        crate::metrics::backend_command(self.breaker.name(), started.elapsed());
        self.breaker.record(&result);
        match result {
            Ok(_) => {
                crate::metrics::bus_relayed(tenant);
                if !self.subscribed.load(Ordering::Acquire) {
                    self.hub.deliver(tenant, topic, event, data, seq);
                }
            }
            Err(e) => self.fallback.deliver(tenant, topic, event, data, seq, &e),
        }
    }
}

/// `Invalid` unless `namespace` is `[a-z0-9_-]+` (no glob characters, no
/// `:`), as both buses require.
pub(crate) fn check_namespace(namespace: &str) -> Result<(), BackendError> {
    let valid = !namespace.is_empty()
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(BackendError::Invalid(format!(
            "Redis namespace {namespace:?}: expected [a-z0-9_-]+"
        )))
    }
}

/// The tenant's replay index: sorted set topic → last publish (ms).
pub(crate) const REPLAY_INDEX: &str = "replay-index";
/// The tenant's buffer sizes: hash topic → bytes.
pub(crate) const REPLAY_SIZES: &str = "replay-sizes";
/// The tenant's buffered bytes in all.
pub(crate) const REPLAY_TOTAL: &str = "replay-total";

/// One publish script call: its keys and arguments (see
/// `publish_script!`), built by [`PublishCall::new`].
pub(crate) struct PublishCall {
    seq_key: String,
    replay_key: String,
    /// The tenant's replay index, buffer sizes and total bytes.
    replay_index: String,
    replay_sizes: String,
    replay_total: String,
    seq_prefix: String,
    replay_prefix: String,
    channel: String,
    topic: String,
    /// `<event>\n<data>`; with `seq`, the whole message
    /// `<seq>\n<topic>\n<event>\n<data>`.
    payload: String,
    /// The seq a durable buffer assigned ([`PublishCall::assign`]): the
    /// call is then a plain `PUBLISH` of the message, no script.
    seq: Option<u64>,
}

impl PublishCall {
    /// The call publishing `event` with `data` on `topic` of the tenant of
    /// `keys` to `channel` (one of that tenant's names). `Invalid` if the
    /// topic or event contains a newline (the payload's separator).
    pub(crate) fn new(
        keys: &TenantKeys,
        channel: String,
        topic: &str,
        event: &str,
        data: &str,
    ) -> Result<Self, BackendError> {
        if topic.contains('\n') || event.contains('\n') {
            return Err(BackendError::Invalid(
                "topic and event cannot contain a newline".into(),
            ));
        }
        let mut payload = String::with_capacity(event.len() + data.len() + 1);
        payload.push_str(event);
        payload.push('\n');
        payload.push_str(data);
        Ok(Self {
            seq_key: keys.name("seq", topic),
            replay_key: keys.name("replay", topic),
            replay_index: keys.fixed(REPLAY_INDEX),
            replay_sizes: keys.fixed(REPLAY_SIZES),
            replay_total: keys.fixed(REPLAY_TOTAL),
            seq_prefix: keys.name("seq", ""),
            replay_prefix: keys.name("replay", ""),
            channel,
            topic: topic.to_owned(),
            payload,
            seq: None,
        })
    }

    /// Make this call publish the event with `seq` (assigned and buffered
    /// by a durable replay buffer) instead of running the publish script.
    pub(crate) fn assign(&mut self, seq: u64) {
        self.payload = format!("{seq}\n{}\n{}", self.topic, self.payload);
        self.seq = Some(seq);
    }
}

/// A publish waiting in the queue, and where its answer goes.
struct Pending {
    call: PublishCall,
    reply: oneshot::Sender<Result<u64, BackendError>>,
}

/// The publish queue of one bus and the task that sends it to Redis in
/// pipelines (see the module docs). The task stops when this is dropped.
pub(crate) struct PublishPipeline {
    queue: mpsc::Sender<Pending>,
    round_trips: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl PublishPipeline {
    /// Start the task sending `script` calls through `conn`, with the
    /// buffer size and TTL of `replay`; calls with an assigned seq are sent
    /// as `publish` (`PUBLISH` or `SPUBLISH`, the script's own).
    pub(crate) fn start(
        conn: ConnectionManager,
        script: Script,
        publish: &'static str,
        replay: ReplaySettings,
    ) -> Self {
        let (queue, rx) = mpsc::channel(PUBLISH_QUEUE);
        let round_trips = Arc::new(AtomicU64::new(0));
        let sender = BatchSender {
            conn,
            script,
            publish,
            ttl_ms: replay.ttl.map_or(0, |t| {
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
            size: replay.size,
            max_topics: replay.max_topics_per_tenant,
            max_bytes: replay.max_bytes_per_tenant,
            round_trips: Arc::clone(&round_trips),
        };
        let task = tokio::spawn(sender.run(rx));
        Self {
            queue,
            round_trips,
            task,
        }
    }

    /// Run `call` in the next pipeline; its seq once Redis ran it.
    /// `Timeout` after [`COMMAND_TIMEOUT`] (queueing included),
    /// `Unavailable` if Redis failed it.
    pub(crate) async fn call(&self, call: PublishCall) -> Result<u64, BackendError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || BackendError::Unavailable("Redis publish pipeline stopped".into());
        let wait = async {
            self.queue
                .send(Pending { call, reply })
                .await
                .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        };
        tokio::time::timeout(COMMAND_TIMEOUT, wait)
            .await
            .unwrap_or(Err(BackendError::Timeout))
    }

    /// Round trips sent so far.
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }
}

impl Drop for PublishPipeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pipeline task's side: sends batches and answers their publishers.
struct BatchSender {
    conn: ConnectionManager,
    script: Script,
    /// `PUBLISH` or `SPUBLISH`, for calls with an assigned seq.
    publish: &'static str,
    ttl_ms: u64,
    size: usize,
    max_topics: usize,
    max_bytes: usize,
    round_trips: Arc<AtomicU64>,
}

impl BatchSender {
    /// Send every batch the queue yields, one round trip at a time.
    async fn run(self, mut queue: mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            // A publisher that gave up (timed out) has delivered locally:
            // sending its event now would show it twice.
            batch.retain(|p| !p.reply.is_closed());
            if !batch.is_empty() {
                self.send(&mut batch).await;
            }
            batch.clear();
        }
    }

    /// Send `batch` as one pipeline (plus, after `NOSCRIPT`, a script load
    /// and one more pipeline for the calls that got it) and answer each.
    async fn send(&self, batch: &mut Vec<Pending>) {
        crate::metrics::relay_batch(batch.len());
        let results = match self.round_trip(batch).await {
            Ok(results) => results,
            Err(e) => return answer_all(batch.drain(..), &e),
        };
        let mut missing_script = Vec::new();
        for (pending, result) in batch.drain(..).zip(results) {
            match result {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    missing_script.push(pending);
                }
                result => {
                    // A plain publish answers its receivers; the seq is ours.
                    let result = match pending.call.seq {
                        Some(seq) => result.map(|_| seq),
                        None => result,
                    };
                    let _ = pending.reply.send(result.map_err(|e| publish_error(&e)));
                }
            }
        }
        if missing_script.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let loaded = tokio::time::timeout(COMMAND_TIMEOUT, self.script.load_async(&mut conn)).await;
        match loaded {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return answer_all(missing_script.into_iter(), &publish_error(&e)),
            Err(_) => return answer_all(missing_script.into_iter(), &BackendError::Timeout),
        }
        let results = match self.round_trip(&missing_script).await {
            Ok(results) => results,
            Err(e) => return answer_all(missing_script.into_iter(), &e),
        };
        for (pending, result) in missing_script.into_iter().zip(results) {
            let _ = pending.reply.send(result.map_err(|e| publish_error(&e)));
        }
    }

    /// One pipeline of `EVALSHA`s, one per call of `batch`; the result of
    /// each (as many as calls), or the error of the whole round trip.
    async fn round_trip(&self, batch: &[Pending]) -> Result<Vec<RedisResult<u64>>, BackendError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for Pending { call, .. } in batch {
            if call.seq.is_some() {
                pipe.cmd(self.publish).arg(&call.channel).arg(&call.payload);
                continue;
            }
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(5)
                .arg(&call.seq_key)
                .arg(&call.replay_key)
                .arg(&call.replay_index)
                .arg(&call.replay_sizes)
                .arg(&call.replay_total)
                .arg(&call.channel)
                .arg(self.ttl_ms)
                .arg(&call.topic)
                // The host's reserved `__` channels (presence, cursors) are
                // not replayable: numbered, not buffered.
                .arg(if call.topic.starts_with("__") {
                    0
                } else {
                    self.size
                })
                .arg(&call.payload)
                .arg(self.max_topics)
                .arg(self.max_bytes)
                .arg(&call.seq_prefix)
                .arg(&call.replay_prefix);
        }
        let mut conn = self.conn.clone();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let results: Vec<RedisResult<u64>> =
            match tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(&mut conn)).await {
                Ok(Ok(results)) => results,
                Ok(Err(e)) => return Err(publish_error(&e)),
                Err(_) => return Err(BackendError::Timeout),
            };
        if results.len() != batch.len() {
            return Err(BackendError::Unavailable(format!(
                "Redis answered {} of {} pipelined publishes",
                results.len(),
                batch.len()
            )));
        }
        Ok(results)
    }
}

/// Answer every publisher of `batch` with `error`.
fn answer_all(batch: impl Iterator<Item = Pending>, error: &BackendError) {
    for pending in batch {
        let _ = pending.reply.send(Err(error.clone()));
    }
}

/// The backend error for a failed publish script.
fn publish_error(e: &RedisError) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout
    } else {
        BackendError::Unavailable(format!("Redis bus publish failed: {e}"))
    }
}

/// Local-only publishing while Redis cannot be used, and the `degraded` /
/// `recovered` notices (shared by both buses).
pub(crate) struct LocalFallback {
    namespace: String,
    hub: Arc<Hub>,
    /// The tenants whose `__realtime` subscribers hear this bus's notices.
    scope: TenantScope,
    /// Whether this outage's local-only publishing was logged.
    degradation_logged: Arc<AtomicBool>,
}

impl LocalFallback {
    /// Fallback publishing into `hub` for the bus of `namespace` serving
    /// the tenants of `scope`.
    pub(crate) fn new(namespace: String, hub: Arc<Hub>, scope: TenantScope) -> Self {
        Self {
            namespace,
            hub,
            scope,
            degradation_logged: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Deliver to this host's subscribers only, with the hub's local seq
    /// (Redis is down or the breaker is open); logs once per outage.
    pub(crate) fn publish(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
        why: &BackendError,
    ) -> Result<(), BackendError> {
        if !self.degradation_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                namespace = self.namespace,
                reason = %why,
                "Redis bus degraded: publishing to local subscribers only, with local seqs"
            );
        }
        self.hub.publish(tenant, topic, event, data);
        Ok(())
    }

    /// Deliver to this host's subscribers only an event a durable buffer
    /// numbered `seq` (Redis is down or the breaker is open); logs once per
    /// outage.
    pub(crate) fn deliver(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
        seq: u64,
        why: &BackendError,
    ) {
        if !self.degradation_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                namespace = self.namespace,
                reason = %why,
                "Redis bus degraded: publishing to local subscribers only (durable seqs)"
            );
        }
        self.hub.deliver(tenant, topic, event, data, seq);
    }

    /// Start the task turning `breaker`'s transitions into notices (it
    /// ends with the breaker, or when aborted).
    pub(crate) fn spawn_notices(&self, breaker: &CircuitBreaker) -> JoinHandle<()> {
        tokio::spawn(send_notices(
            breaker.subscribe(),
            Arc::clone(&self.hub),
            self.scope.clone(),
            Arc::clone(&self.degradation_logged),
        ))
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Send `event` with `{"at": <unix ms>}` on [`REALTIME_TOPIC`] to the local
/// subscribers of each tenant of `scope` separately.
fn notify_tenants(hub: &Hub, scope: &TenantScope, event: &str) {
    let data = format!("{{\"at\":{}}}", unix_ms());
    let tenants = hub.tenants_subscribed_to(REALTIME_TOPIC);
    for tenant in tenants.into_iter().filter(|t| scope.contains(t)) {
        hub.publish(&tenant, REALTIME_TOPIC, event, &data);
    }
}

/// Turn breaker transitions into `degraded` (on going broken) and
/// `recovered` (on healthy again after a `degraded`) notices.
async fn send_notices(
    mut states: watch::Receiver<BreakerState>,
    hub: Arc<Hub>,
    scope: TenantScope,
    degradation_logged: Arc<AtomicBool>,
) {
    let mut degraded = false;
    loop {
        let state = *states.borrow_and_update();
        match state {
            BreakerState::Broken if !degraded => {
                degraded = true;
                notify_tenants(&hub, &scope, "degraded");
            }
            BreakerState::Healthy if degraded => {
                degraded = false;
                degradation_logged.store(false, Ordering::Relaxed);
                tracing::info!("Redis bus recovered: publishing through Redis again");
                notify_tenants(&hub, &scope, "recovered");
            }
            _ => {}
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// `{namespace}:t:{*}:bus`: matches [`TenantKeys::fixed`]`("bus")` of every
/// tenant (the namespace has no glob characters).
fn channel_pattern(namespace: &str) -> String {
    format!("{namespace}:t:{{*}}:bus")
}

/// The reconnect backoff of a subscription: [`RECONNECT_BACKOFF_MIN`]
/// doubling to [`RECONNECT_BACKOFF_MAX`], cut short when the breaker
/// becomes healthy (Redis is back).
pub(crate) struct Backoff {
    delay: Duration,
}

impl Backoff {
    /// A backoff starting at [`RECONNECT_BACKOFF_MIN`]; marks `breaker`'s
    /// current state as seen (only a later heal cuts a wait short).
    pub(crate) fn new(breaker: &mut watch::Receiver<BreakerState>) -> Self {
        breaker.borrow_and_update();
        Self {
            delay: RECONNECT_BACKOFF_MIN,
        }
    }

    /// Wait before the next attempt.
    pub(crate) async fn wait(&mut self, breaker: &mut watch::Receiver<BreakerState>) {
        tokio::select! {
            () = tokio::time::sleep(self.delay) => {}
            () = healed(breaker) => self.delay = RECONNECT_BACKOFF_MIN,
        }
    }

    /// An attempt failed: the next wait is twice as long (up to the
    /// maximum); returns it.
    pub(crate) fn failed(&mut self) -> Duration {
        self.delay = (self.delay * 2).min(RECONNECT_BACKOFF_MAX);
        self.delay
    }
}

/// Returns when the breaker next becomes healthy (never if it is gone).
async fn healed(breaker: &mut watch::Receiver<BreakerState>) {
    loop {
        if breaker.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if *breaker.borrow_and_update() == BreakerState::Healthy {
            return;
        }
    }
}

/// The receiving side: the pub/sub connection and the hub it feeds.
struct Subscriber {
    client: Client,
    namespace: String,
    pattern: String,
    hub: Arc<Hub>,
    /// The breaker's state: healing cuts a reconnect backoff short.
    breaker: watch::Receiver<BreakerState>,
    /// Whether the subscription is active (read by publish).
    subscribed: Arc<AtomicBool>,
    /// The tenants this bus serves: messages of others are skipped.
    scope: TenantScope,
}

impl Subscriber {
    /// A new pub/sub connection subscribed to the namespace's bus channels.
    async fn subscribe(&self) -> Result<PubSub, RedisError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.psubscribe(&self.pattern).await?;
            Ok(pubsub)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(timed_out("subscribing timed out")))
    }

    /// Deliver messages forever, resubscribing whenever the connection is lost.
    async fn run(mut self, mut pubsub: PubSub) {
        loop {
            let reason = self.pump(pubsub).await;
            self.subscribed.store(false, Ordering::Release);
            tracing::warn!(
                namespace = self.namespace,
                reason,
                "Redis bus subscription lost; resubscribing (events other hosts publish \
                 meanwhile are lost to this host)"
            );
            pubsub = self.resubscribe().await;
        }
    }

    /// Deliver the messages of one connection until it fails; returns why.
    async fn pump(&self, pubsub: PubSub) -> String {
        let (mut sink, mut stream) = pubsub.split();
        let start = tokio::time::Instant::now() + HEALTH_CHECK_INTERVAL;
        let mut health = tokio::time::interval_at(start, HEALTH_CHECK_INTERVAL);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.handle(&msg),
                    None => return "connection closed".into(),
                },
                _ = health.tick() => {
                    match tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return format!("health-check PING failed: {e}"),
                        Err(_) => return "health-check PING timed out".into(),
                    }
                }
            }
        }
    }

    /// Subscribe again, retrying with [`Backoff`] until it works.
    async fn resubscribe(&mut self) -> PubSub {
        let mut backoff = Backoff::new(&mut self.breaker);
        let mut attempts = 0u32;
        loop {
            backoff.wait(&mut self.breaker).await;
            attempts += 1;
            match self.subscribe().await {
                Ok(pubsub) => {
                    self.subscribed.store(true, Ordering::Release);
                    tracing::info!(
                        namespace = self.namespace,
                        attempts,
                        "Redis bus resubscribed"
                    );
                    return pubsub;
                }
                Err(e) => {
                    let retry_in = backoff.failed();
                    tracing::warn!(
                        namespace = self.namespace,
                        attempts,
                        error = %e,
                        retry_in_ms = retry_in.as_millis() as u64,
                        "Redis bus resubscribe failed"
                    );
                }
            }
        }
    }

    /// Deliver one message, or log and skip it if it is malformed.
    fn handle(&self, msg: &Msg) {
        let channel = msg.get_channel_name();
        deliver(
            &self.hub,
            &self.namespace,
            &self.scope,
            Channel::Bus,
            channel,
            msg.get_payload_bytes(),
        );
    }
}

/// A timed-out Redis operation as a [`RedisError`].
pub(crate) fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Hand the message `payload` received on `channel` (of kind `kind`) to
/// `hub` if its tenant is in `scope` (a tenant whose events go through
/// another Redis is never delivered from this one), or log and skip it if
/// it is malformed.
pub(crate) fn deliver(
    hub: &Hub,
    namespace: &str,
    scope: &TenantScope,
    kind: Channel,
    channel: &str,
    payload: &[u8],
) {
    match parse_message(namespace, kind, channel, payload) {
        Ok(m) if scope.contains(&m.tenant) => {
            crate::metrics::bus_received(&m.tenant);
            hub.deliver(&m.tenant, m.topic, m.event, m.data, m.seq);
        }
        Ok(m) => {
            tracing::warn!(
                channel,
                tenant = %m.tenant,
                "skipping a Redis bus message of a tenant served by another Redis"
            );
        }
        Err(e) => {
            tracing::warn!(channel, error = %e, "skipping malformed Redis bus message");
        }
    }
}

/// Which channel a message is expected on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// The tenant's bus channel, `TenantKeys::fixed("bus")`.
    Bus,
    /// The topic's shard channel, `TenantKeys::name("sbus", topic)`.
    Sharded,
}

impl Channel {
    /// The name of this kind of channel for `topic` of the tenant of `keys`.
    pub(crate) fn name(self, keys: &TenantKeys, topic: &str) -> String {
        match self {
            Channel::Bus => keys.fixed("bus"),
            Channel::Sharded => keys.name("sbus", topic),
        }
    }
}

/// One parsed bus message.
#[derive(Debug, PartialEq, Eq)]
struct BusMessage<'a> {
    tenant: TenantId,
    seq: u64,
    topic: &'a str,
    event: &'a str,
    data: &'a str,
}

/// Why a bus message was skipped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum MalformedMessage {
    /// The channel is not the tenant's bus channel (or the topic's shard
    /// channel).
    #[error("not a tenant bus channel")]
    Channel,
    /// The payload is not UTF-8.
    #[error("payload is not UTF-8")]
    NotUtf8,
    /// The payload is not `<seq>\n<topic>\n<event>\n<data>`.
    #[error("payload is not <seq>\\n<topic>\\n<event>\\n<data>")]
    Framing,
    /// The seq is not a positive integer.
    #[error("seq {0:?} is not a positive integer")]
    Seq(String),
    /// The data is not one JSON value.
    #[error("data is not one JSON value")]
    Data,
}

/// Parse a message received on `channel` (of kind `kind`) under `namespace`.
fn parse_message<'a>(
    namespace: &str,
    kind: Channel,
    channel: &str,
    payload: &'a [u8],
) -> Result<BusMessage<'a>, MalformedMessage> {
    let tenant = keys::tenant_of(namespace, channel).ok_or(MalformedMessage::Channel)?;
    let payload = std::str::from_utf8(payload).map_err(|_| MalformedMessage::NotUtf8)?;
    let mut parts = payload.splitn(4, '\n');
    let (Some(seq), Some(topic), Some(event), Some(data)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MalformedMessage::Framing);
    };
    if topic.is_empty() || event.is_empty() {
        return Err(MalformedMessage::Framing);
    }
    // The channel must be exactly the one this tenant's (and, sharded,
    // this topic's) events are published on.
    if kind.name(&TenantKeys::new(namespace, &tenant), topic) != channel {
        return Err(MalformedMessage::Channel);
    }
    let seq = seq
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| MalformedMessage::Seq(seq.chars().take(32).collect()))?;
    // The data is spliced verbatim into the envelope sent to clients.
    if serde_json::from_str::<IgnoredAny>(data).is_err() {
        return Err(MalformedMessage::Data);
    }
    Ok(BusMessage {
        tenant,
        seq,
        topic,
        event,
        data,
    })
}

/// Test helpers and the two-host behaviour both Redis buses must show
/// (run by this module's tests and by the sharded bus's).
#[cfg(test)]
pub(crate) mod suite {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use redis::AsyncCommands;
    use redis::aio::ConnectionManager;

    use crate::backend::Bus;
    use crate::hub::{Hub, HubConnection, Outbound};
    use crate::tenant::TenantId;

    /// The test Redis.
    pub(crate) const URL: &str = "redis://127.0.0.1:6379";

    pub(crate) fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    /// A namespace no other test (or test run) uses.
    pub(crate) fn unique_namespace() -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "tenantry-test-bus-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Delete every key under `ns` (the seq keys and buffers), then check
    /// none is left.
    pub(crate) async fn cleanup(conn: &mut ConnectionManager, ns: &str) {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{ns}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: () = conn.del(keys).await.unwrap();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let left: (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(100_000)
            .query_async(conn)
            .await
            .unwrap();
        assert!(left.1.is_empty(), "keys left behind: {:?}", left.1);
    }

    /// A subscriber on `hub` to `topic` of `tenant`.
    pub(crate) fn subscriber(
        hub: &Arc<Hub>,
        tenant: &str,
        topic: &str,
    ) -> (HubConnection, crate::outbound::Receiver) {
        let (tx, rx) = crate::outbound::queue(10_000);
        let conn = hub.connect(tid(tenant), tx, 10);
        conn.subscribe(topic).unwrap();
        (conn, rx)
    }

    /// The next frame as JSON (fails after 5 s).
    pub(crate) async fn recv(rx: &mut crate::outbound::Receiver) -> serde_json::Value {
        let frame = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no frame within 5 s")
            .expect("queue closed");
        let Outbound::Text(text) = frame;
        serde_json::from_str(text.as_str()).unwrap()
    }

    /// Nothing more arrives within a short while.
    pub(crate) async fn assert_quiet(rx: &mut crate::outbound::Receiver) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_err(), "unexpected extra frame");
    }

    /// Whether a host's bus delivers a topic to it yet.
    pub(crate) type Following = Box<dyn Fn(&TenantId, &str) -> bool + Send + Sync>;
    /// A host's publish round trips so far.
    pub(crate) type RoundTrips = Box<dyn Fn() -> u64 + Send + Sync>;

    /// One host of the two-host suite: a hub and its bus.
    pub(crate) struct Peer {
        pub(crate) hub: Arc<Hub>,
        pub(crate) bus: Arc<dyn Bus>,
        following: Following,
        round_trips: RoundTrips,
    }

    impl Peer {
        /// A host whose bus delivers `(tenant, topic)` once `following`
        /// says so.
        pub(crate) fn new(
            hub: Arc<Hub>,
            bus: Arc<dyn Bus>,
            following: Following,
            round_trips: RoundTrips,
        ) -> Self {
            Self {
                hub,
                bus,
                following,
                round_trips,
            }
        }

        /// A subscriber to `topic` of `tenant` on this host, returned once
        /// the bus delivers the topic here.
        pub(crate) async fn subscribe(
            &self,
            tenant: &str,
            topic: &str,
        ) -> (HubConnection, crate::outbound::Receiver) {
            let sub = subscriber(&self.hub, tenant, topic);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !(self.following)(&tid(tenant), topic) {
                assert!(Instant::now() < deadline, "{tenant}/{topic} not followed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sub
        }
    }

    /// A publish on one host reaches the subscribers of both, once each,
    /// with one seq; alternating and concurrent publishers give one
    /// gap-free order, the same on both hosts.
    pub(crate) async fn two_hosts_deliver_once_each_with_one_order(a: &Peer, b: &Peer) {
        let acme = tid("acme");
        let (_sa, mut ra) = a.subscribe("acme", "room").await;
        let (_sb, mut rb) = b.subscribe("acme", "room").await;

        // One publish on A: once on A, once on B, same seq.
        a.bus
            .publish(&acme, "room", "message", r#"{"n":0}"#)
            .await
            .unwrap();
        for rx in [&mut ra, &mut rb] {
            let v = recv(rx).await;
            assert_eq!(v["topic"], "room");
            assert_eq!(v["event"], "message");
            assert_eq!(v["data"]["n"], 0);
            assert_eq!(v["seq"], 1);
            assert_quiet(rx).await;
        }

        // 100 publishes alternating between A and B.
        for i in 1..=100u64 {
            let bus = if i % 2 == 0 { &a.bus } else { &b.bus };
            bus.publish(&acme, "room", "e", &format!("{{\"n\":{i}}}"))
                .await
                .unwrap();
        }
        // Then both hosts publishing at once, 50 each.
        let concurrent = |bus: Arc<dyn Bus>, tag: &'static str| {
            let acme = acme.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    bus.publish(&acme, "room", "e", &format!("{{\"{tag}\":{i}}}"))
                        .await
                        .unwrap();
                }
            })
        };
        let (ja, jb) = (
            concurrent(Arc::clone(&a.bus), "a"),
            concurrent(Arc::clone(&b.bus), "b"),
        );
        ja.await.unwrap();
        jb.await.unwrap();

        let mut seen = Vec::new();
        for rx in [&mut ra, &mut rb] {
            let mut frames = Vec::new();
            for _ in 0..200 {
                frames.push(recv(rx).await);
            }
            assert_quiet(rx).await;
            let seqs: Vec<u64> = frames.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
            assert_eq!(seqs, (2..=201).collect::<Vec<_>>(), "gap-free, in order");
            for (i, v) in frames.iter().take(100).enumerate() {
                assert_eq!(v["data"]["n"], i as u64 + 1, "publish order kept");
            }
            seen.push(frames);
        }
        assert_eq!(seen[0], seen[1], "both hosts saw one order");
    }

    /// Equal topic names of two tenants are two topics, with their own seqs.
    pub(crate) async fn tenants_never_cross(a: &Peer, b: &Peer) {
        let (_s1, mut acme_a) = a.subscribe("acme", "chat").await;
        let (_s2, mut beta_a) = a.subscribe("beta", "chat").await;
        let (_s3, mut beta_b) = b.subscribe("beta", "chat").await;

        b.bus
            .publish(&tid("acme"), "chat", "e", r#""for acme""#)
            .await
            .unwrap();
        a.bus
            .publish(&tid("beta"), "chat", "e", r#""for beta""#)
            .await
            .unwrap();
        let v = recv(&mut acme_a).await;
        assert_eq!(
            (v["data"].as_str(), v["seq"].as_u64()),
            (Some("for acme"), Some(1))
        );
        for rx in [&mut beta_a, &mut beta_b] {
            let v = recv(rx).await;
            // beta has its own seq.
            assert_eq!(
                (v["data"].as_str(), v["seq"].as_u64()),
                (Some("for beta"), Some(1))
            );
        }
        for rx in [&mut acme_a, &mut beta_a, &mut beta_b] {
            assert_quiet(rx).await;
        }
    }

    /// `N` publishes started at once on A (on two topics) share round
    /// trips, and every subscriber still gets each topic gap-free, in the
    /// order the seqs were given, once.
    pub(crate) async fn concurrent_publishes_share_round_trips(a: &Peer, b: &Peer) {
        const N: u64 = 300;
        let acme = tid("acme");
        let (_s1, mut one_a) = a.subscribe("acme", "one").await;
        let (_s2, mut one_b) = b.subscribe("acme", "one").await;
        let (_s3, mut two_b) = b.subscribe("acme", "two").await;
        // Warm up (loads the script) before counting.
        a.bus.publish(&acme, "one", "e", "0").await.unwrap();
        for rx in [&mut one_a, &mut one_b] {
            assert_eq!(recv(rx).await["seq"], 1);
        }

        let before = (a.round_trips)();
        let started = Instant::now();
        let publishes: Vec<_> = (1..=N)
            .map(|i| {
                let (bus, acme) = (Arc::clone(&a.bus), acme.clone());
                let topic = if i % 3 == 0 { "two" } else { "one" };
                tokio::spawn(async move { bus.publish(&acme, topic, "e", &i.to_string()).await })
            })
            .collect();
        for p in publishes {
            p.await.unwrap().unwrap();
        }
        let took = started.elapsed();
        let round_trips = (a.round_trips)() - before;
        eprintln!("{N} concurrent publishes: {round_trips} round trips, {took:?}");
        assert!(
            round_trips < N / 4,
            "{round_trips} round trips for {N} publishes"
        );

        let two = N / 3;
        let one = N - two;
        for (rx, count, first) in [
            (&mut one_a, one, 2),
            (&mut one_b, one, 2),
            (&mut two_b, two, 1),
        ] {
            let mut seqs = Vec::new();
            for _ in 0..count {
                seqs.push(recv(rx).await["seq"].as_u64().unwrap());
            }
            assert_eq!(seqs, (first..first + count).collect::<Vec<_>>());
            assert_quiet(rx).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::suite::{
        self, Peer, URL, assert_quiet, cleanup, recv, subscriber, tid, unique_namespace,
    };
    use super::*;
    use crate::hub::Outbound;
    use redis::AsyncCommands;
    use std::time::Instant;

    /// One host: a hub and its bus.
    struct Host {
        hub: Arc<Hub>,
        bus: Arc<RedisBus>,
    }

    async fn host(conn: &ConnectionManager, url: &str, ns: &str) -> Host {
        let hub = Hub::new();
        let bus = RedisBus::start(conn.clone(), url, ns.to_owned(), Arc::clone(&hub))
            .await
            .unwrap();
        Host { hub, bus }
    }

    #[test]
    fn channel_pattern_matches_the_key_scheme() {
        let ns = "tenantry";
        let channel = TenantKeys::new(ns, &tid("acme")).fixed("bus");
        assert_eq!(channel_pattern(ns).replace('*', "acme"), channel);
    }

    #[test]
    fn parses_well_formed_messages_only() {
        let ns = "ns";
        let ch = "ns:t:{acme}:bus";
        assert_eq!(
            parse_message(
                ns,
                Channel::Bus,
                ch,
                b"7\nroom:1\nmessage\n{\"a\":\"x\\ny\"}\n"
            ),
            Ok(BusMessage {
                tenant: tid("acme"),
                seq: 7,
                topic: "room:1",
                event: "message",
                data: "{\"a\":\"x\\ny\"}\n",
            })
        );
        let bad: &[(&str, &[u8], MalformedMessage)] = &[
            (
                "ns:t:{acme}:kv:x}:bus",
                b"1\nt\ne\n1",
                MalformedMessage::Channel,
            ),
            (
                "other:t:{acme}:bus",
                b"1\nt\ne\n1",
                MalformedMessage::Channel,
            ),
            ("ns:t:{Acme}:bus", b"1\nt\ne\n1", MalformedMessage::Channel),
            (ch, b"1\nt\n\xff\n1", MalformedMessage::NotUtf8),
            (ch, b"garbage", MalformedMessage::Framing),
            (ch, b"1\nt\ne", MalformedMessage::Framing),
            (ch, b"1\n\ne\n1", MalformedMessage::Framing),
            (ch, b"x\nt\ne\n1", MalformedMessage::Seq("x".into())),
            (ch, b"0\nt\ne\n1", MalformedMessage::Seq("0".into())),
            (ch, b"-1\nt\ne\n1", MalformedMessage::Seq("-1".into())),
            (ch, b"1\nt\ne\n{\"a\":", MalformedMessage::Data),
            (ch, b"1\nt\ne\n1 2", MalformedMessage::Data),
        ];
        for (channel, payload, want) in bad {
            assert_eq!(
                parse_message(ns, Channel::Bus, channel, payload).as_ref(),
                Err(want),
                "{channel} {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn parses_shard_messages_on_their_topics_channel_only() {
        let ns = "ns";
        let ch = "ns:t:{acme}:sbus:room:1";
        assert_eq!(
            parse_message(ns, Channel::Sharded, ch, b"7\nroom:1\nmessage\n{}"),
            Ok(BusMessage {
                tenant: tid("acme"),
                seq: 7,
                topic: "room:1",
                event: "message",
                data: "{}",
            })
        );
        for (channel, payload) in [
            // Another topic's channel, the tenant's bus channel.
            ("ns:t:{acme}:sbus:room:2", "7\nroom:1\ne\n{}"),
            ("ns:t:{acme}:bus", "7\nroom:1\ne\n{}"),
            ("ns:t:{acme}:sbus:room:1x", "7\nroom:1\ne\n{}"),
        ] {
            assert_eq!(
                parse_message(ns, Channel::Sharded, channel, payload.as_bytes()),
                Err(MalformedMessage::Channel),
                "{channel}"
            );
        }
        assert_eq!(
            parse_message(ns, Channel::Bus, ch, b"7\nroom:1\ne\n{}"),
            Err(MalformedMessage::Channel)
        );
        // The scripts differ only in the publish command.
        assert_eq!(
            PUBLISH_SCRIPT.replace("'PUBLISH'", "'SPUBLISH'"),
            SPUBLISH_SCRIPT
        );
        // The script counts events as the constant says.
        assert!(PUBLISH_SCRIPT.contains(&format!("local overhead = {REPLAY_EVENT_OVERHEAD}\n")));
    }

    #[test]
    fn publish_errors_map_to_backend_errors() {
        let timeout = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "t"));
        assert_eq!(publish_error(&timeout), BackendError::Timeout);
        let reset = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "r",
        ));
        assert!(matches!(
            publish_error(&reset),
            BackendError::Unavailable(_)
        ));
    }

    /// The health check's `PING` is answered on a subscribed connection
    /// while messages keep flowing.
    #[tokio::test]
    async fn health_check_ping_works_while_subscribed() {
        let ns = unique_namespace();
        let mut conn = super::super::connect(URL).await.unwrap();
        let subscriber = Subscriber {
            client: Client::open(URL).unwrap(),
            namespace: ns.clone(),
            pattern: channel_pattern(&ns),
            hub: Hub::new(),
            breaker: watch::channel(BreakerState::Healthy).1,
            subscribed: Arc::new(AtomicBool::new(false)),
            scope: TenantScope::All,
        };
        let (mut sink, mut stream) = subscriber.subscribe().await.unwrap().split();
        let channel = TenantKeys::new(&ns, &tid("acme")).fixed("bus");
        let _: u64 = conn.publish(&channel, "1\nt\ne\n1").await.unwrap();
        let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
        assert!(matches!(pong, Ok(Ok(_))), "{pong:?}");
        let msg = tokio::time::timeout(COMMAND_TIMEOUT, stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.get_channel_name(), channel);
    }

    #[tokio::test]
    async fn start_refuses_bad_settings() {
        let conn = super::super::connect(URL).await.unwrap();
        let hub = Hub::new();
        for ns in ["", "a:b", "A", "a*"] {
            let r = RedisBus::start(conn.clone(), URL, ns.into(), Arc::clone(&hub)).await;
            assert!(matches!(r, Err(BackendError::Invalid(_))), "{ns}");
        }
        let r = RedisBus::start(conn.clone(), "redis://127.0.0.1:1", "ns".into(), hub).await;
        assert!(matches!(r, Err(BackendError::Unavailable(_))));
    }

    /// The suite's view of a host of this bus.
    fn peer(host: &Host) -> Peer {
        Peer::new(
            Arc::clone(&host.hub),
            Arc::clone(&host.bus) as Arc<dyn Bus>,
            // The pattern subscription delivers every topic from the start.
            Box::new(|_, _| true),
            {
                let bus = Arc::clone(&host.bus);
                Box::new(move || bus.round_trips())
            },
        )
    }

    #[tokio::test]
    async fn two_hosts_deliver_once_each_with_one_order() {
        let ns = unique_namespace();
        let mut conn = super::super::connect(URL).await.unwrap();
        let a = host(&conn, URL, &ns).await;
        let b = host(&conn, URL, &ns).await;
        suite::two_hosts_deliver_once_each_with_one_order(&peer(&a), &peer(&b)).await;
        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    #[tokio::test]
    async fn tenants_never_cross() {
        let ns = unique_namespace();
        let mut conn = super::super::connect(URL).await.unwrap();
        let a = host(&conn, URL, &ns).await;
        let b = host(&conn, URL, &ns).await;
        suite::tenants_never_cross(&peer(&a), &peer(&b)).await;
        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    #[tokio::test]
    async fn concurrent_publishes_share_round_trips() {
        let ns = unique_namespace();
        let mut conn = super::super::connect(URL).await.unwrap();
        let a = host(&conn, URL, &ns).await;
        let b = host(&conn, URL, &ns).await;
        suite::concurrent_publishes_share_round_trips(&peer(&a), &peer(&b)).await;
        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    #[tokio::test]
    async fn malformed_messages_are_skipped() {
        let ns = unique_namespace();
        let mut conn = super::super::connect(URL).await.unwrap();
        let a = host(&conn, URL, &ns).await;
        let (_s, mut rx) = subscriber(&a.hub, "acme", "room");
        let keys = TenantKeys::new(&ns, &tid("acme"));
        let channel = keys.fixed("bus");
        let bad: [(&str, &[u8]); 6] = [
            (&channel, b"garbage"),
            (&channel, b"x\nroom\ne\n{}"),
            (&channel, b"0\nroom\ne\n{}"),
            (&channel, b"3\nroom\ne\n{broken"),
            (&channel, b"4\nroom\n\xff\xfe\n{}"),
            // A well-formed payload on a channel that only looks like a bus.
            (&format!("{}kv:x}}:bus", keys.prefix()), b"5\nroom\ne\n{}"),
        ];
        for (channel, payload) in bad {
            let _: u64 = conn.publish(channel, payload).await.unwrap();
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

    /// The subscription connection is killed (scoped to a user created for
    /// this test); the bus resubscribes and later publishes arrive again.
    #[tokio::test]
    async fn resubscribes_after_the_connection_is_killed() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let ns = unique_namespace();
        let mut conn = super::super::connect(URL).await.unwrap();
        let user = format!("{ns}-user");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(">secret")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async(&mut conn)
            .await
            .unwrap();
        let user_url = format!("redis://{user}:secret@127.0.0.1:6379");
        let a = host(&conn, &user_url, &ns).await;
        let (_s, mut rx) = subscriber(&a.hub, "acme", "room");
        let acme = tid("acme");
        a.bus.publish(&acme, "room", "e", "1").await.unwrap();
        assert_eq!(recv(&mut rx).await["seq"], 1);

        // While the user is disabled, resubscribing fails (and backs off).
        let acl = |on: &'static str| {
            let mut cmd = redis::cmd("ACL");
            cmd.arg("SETUSER").arg(&user).arg(on);
            cmd
        };
        let _: () = acl("off").query_async(&mut conn).await.unwrap();
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&user)
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(killed, 1, "exactly the bus's subscription connection");
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A's own publish still reaches A's subscriber (delivered locally
        // with its Redis seq while the subscription is down)...
        a.bus
            .publish(&acme, "room", "e", r#""local""#)
            .await
            .unwrap();
        let v = recv(&mut rx).await;
        assert_eq!(
            (v["seq"].as_u64(), v["data"].as_str()),
            (Some(2), Some("local"))
        );
        // ...but another host's does not.
        let b = host(&conn, URL, &ns).await;
        b.bus
            .publish(&acme, "room", "e", r#""lost""#)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "not subscribed while disabled");
        let _: () = acl("on").query_async(&mut conn).await.unwrap();

        // Publishes before the resubscribe are lost to this host; keep
        // publishing on B until one arrives.
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = loop {
            assert!(Instant::now() < deadline, "no delivery after the kill");
            b.bus.publish(&acme, "room", "e", "2").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Ok(Outbound::Text(t)) = rx.try_recv() {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                break v["seq"].as_u64().unwrap();
            }
        };
        assert!(first >= 4, "seq 3 was published while unsubscribed");
        // Drain what arrived meanwhile, then the bus is back to normal.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut last = first;
        while let Ok(Outbound::Text(t)) = rx.try_recv() {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            let seq = v["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1);
            last = seq;
        }
        a.bus.publish(&acme, "room", "e", "3").await.unwrap();
        assert_eq!(recv(&mut rx).await["seq"], last + 1);
        assert_quiet(&mut rx).await;

        drop((a, b));
        let _: u64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut conn)
            .await
            .unwrap();
        cleanup(&mut conn, &ns).await;
    }

    #[tokio::test]
    async fn shutdown_stops_delivery() {
        let ns = unique_namespace();
        let mut conn = super::super::connect(URL).await.unwrap();
        let a = host(&conn, URL, &ns).await;
        let b = host(&conn, URL, &ns).await;
        let (_sa, mut ra) = subscriber(&a.hub, "acme", "t");
        let (_sb, mut rb) = subscriber(&b.hub, "acme", "t");
        b.bus.shutdown();
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.bus.publish(&tid("acme"), "t", "e", "1").await.unwrap();
        assert_eq!(recv(&mut ra).await["seq"], 1);
        assert_quiet(&mut rb).await;
        // B can still publish; only its subscription is gone.
        b.bus.publish(&tid("acme"), "t", "e", "2").await.unwrap();
        assert_eq!(recv(&mut ra).await["seq"], 2);
        assert_quiet(&mut rb).await;

        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }

    /// Redis goes away (a private redis-server, killed): publishes on A
    /// still reach A's subscribers (local seqs), A's breaker opens and each
    /// tenant's `__realtime` subscribers on A get `degraded`; Redis
    /// restarted: `recovered`, and a publish on A reaches B again.
    #[tokio::test]
    async fn outage_delivers_locally_then_recovers() {
        use crate::backend::breaker::test_redis::OwnRedis;
        use crate::backend::breaker::{self, BreakerConfig};

        let mut redis = OwnRedis::start().await;
        let url = redis.url();
        let ns = unique_namespace();
        let config = BreakerConfig {
            failure_threshold: 3,
            reset_timeout: Duration::from_secs(1),
        };
        let start = |hub: Arc<Hub>| {
            let url = url.clone();
            let ns = ns.clone();
            async move {
                let conn = super::super::connect(&url).await.unwrap();
                let shared = Arc::new(CircuitBreaker::new("redis", config));
                let prober = breaker::spawn_redis_prober(&shared, conn.clone());
                let bus = RedisBus::start_with_breaker(conn, &url, ns, hub, shared)
                    .await
                    .unwrap();
                (bus, prober)
            }
        };
        let (hub_a, hub_b) = (Hub::new(), Hub::new());
        let (a, _pa) = start(Arc::clone(&hub_a)).await;
        let (b, _pb) = start(Arc::clone(&hub_b)).await;
        let acme = tid("acme");
        let (_sa, mut ra) = subscriber(&hub_a, "acme", "room");
        let (_sb, mut rb) = subscriber(&hub_b, "acme", "room");
        let (_na, mut notices_acme) = subscriber(&hub_a, "acme", REALTIME_TOPIC);
        let (_nb, mut notices_beta) = subscriber(&hub_a, "beta", REALTIME_TOPIC);
        a.publish(&acme, "room", "e", "0").await.unwrap();
        assert_eq!(recv(&mut ra).await["seq"], 1);
        assert_eq!(recv(&mut rb).await["seq"], 1);

        redis.kill().await;
        let killed = Instant::now();
        let mut took = Vec::new();
        for i in 1..=6u64 {
            let started = Instant::now();
            a.publish(&acme, "room", "e", &i.to_string()).await.unwrap();
            took.push(started.elapsed());
            let v = recv(&mut ra).await;
            assert_eq!(
                (v["data"].as_u64(), v["seq"].as_u64()),
                (Some(i), Some(i + 1))
            );
        }
        assert!(took.iter().all(|d| *d < COMMAND_TIMEOUT), "{took:?}");
        assert!(!a.breaker().is_healthy());
        for rx in [&mut notices_acme, &mut notices_beta] {
            let v = recv(rx).await;
            assert_eq!(
                (v["topic"].as_str(), v["event"].as_str()),
                (Some(REALTIME_TOPIC), Some("degraded"))
            );
            assert!(v["data"]["at"].as_u64().unwrap() > 1_600_000_000_000, "{v}");
            assert_eq!(v["seq"], 1, "each tenant its own topic");
            assert_quiet(rx).await;
        }
        assert!(rb.try_recv().is_err(), "B sees nothing during the outage");
        eprintln!(
            "redis bus outage: local-only publishes took {took:?}; breaker open {:?} after the kill",
            killed.elapsed()
        );

        redis.restart().await;
        let restarted = Instant::now();
        for rx in [&mut notices_acme, &mut notices_beta] {
            let v = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("no `recovered` within 10 s")
                .unwrap();
            let Outbound::Text(text) = v;
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            assert_eq!(v["event"], "recovered");
        }
        let recovered = restarted.elapsed();
        // Keep publishing on A until B gets one through Redis again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 100u64;
        let got = loop {
            assert!(Instant::now() < deadline, "B got nothing within 10 s");
            n += 1;
            a.publish(&acme, "room", "e", &n.to_string()).await.unwrap();
            assert_eq!(
                recv(&mut ra).await["data"],
                n,
                "A keeps getting every publish"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(Outbound::Text(t)) = rb.try_recv() {
                break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
            }
        };
        eprintln!(
            "redis bus outage: `recovered` {recovered:?} and cross-host delivery {:?} after \
             Redis was back (reset timeout {:?})",
            restarted.elapsed(),
            config.reset_timeout
        );
        // The restarted Redis has no seq: it starts over (a visible reset).
        assert!(got["seq"].as_u64().unwrap() <= n, "{got}");
        // Both hosts back to one stream.
        a.publish(&acme, "room", "e", "\"last\"").await.unwrap();
        let (va, vb) = (recv(&mut ra).await, recv(&mut rb).await);
        assert_eq!(
            (va["data"].as_str(), vb["data"].as_str()),
            (Some("last"), Some("last"))
        );
        assert_eq!(va["seq"], vb["seq"]);
        assert_quiet(&mut ra).await;
        assert_quiet(&mut rb).await;
        drop((a, b));
    }

    /// Redis forgets its scripts (`SCRIPT FLUSH`, as after a restart): the
    /// batch that meets `NOSCRIPT` loads the script and is sent again, and
    /// no publish fails, is lost or is doubled.
    #[tokio::test]
    async fn noscript_loads_the_script_and_resends() {
        use crate::backend::breaker::test_redis::OwnRedis;

        let redis = OwnRedis::start().await;
        let url = redis.url();
        let ns = unique_namespace();
        let mut conn = super::super::connect(&url).await.unwrap();
        let a = host(&conn, &url, &ns).await;
        let (_s, mut rx) = subscriber(&a.hub, "acme", "room");
        let acme = tid("acme");
        a.bus.publish(&acme, "room", "e", "0").await.unwrap();
        assert_eq!(recv(&mut rx).await["seq"], 1);

        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        let before = a.bus.round_trips();
        let publishes: Vec<_> = (1..=50u64)
            .map(|i| {
                let (bus, acme) = (Arc::clone(&a.bus), acme.clone());
                tokio::spawn(async move { bus.publish(&acme, "room", "e", &i.to_string()).await })
            })
            .collect();
        for p in publishes {
            p.await.unwrap().unwrap();
        }
        // The batch, the script load, the batch again.
        assert!(a.bus.round_trips() - before >= 3);
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let evalsha = stats
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .unwrap();
        assert!(!evalsha.contains("failed_calls=0"), "{evalsha}");
        let mut seqs = Vec::new();
        for _ in 0..50 {
            seqs.push(recv(&mut rx).await["seq"].as_u64().unwrap());
        }
        assert_eq!(seqs, (2..=51).collect::<Vec<_>>());
        assert_quiet(&mut rx).await;
        assert!(a.bus.breaker().is_healthy());
        drop(a);
    }

    /// Publish -> delivery latency on this machine, to a subscriber on the
    /// publishing host and one on another host (sequential publishes).
    #[tokio::test]
    async fn publish_to_delivery_latency() {
        let ns = unique_namespace();
        let mut conn = super::super::connect(URL).await.unwrap();
        let a = host(&conn, URL, &ns).await;
        let b = host(&conn, URL, &ns).await;
        let (_sa, mut ra) = subscriber(&a.hub, "acme", "t");
        let (_sb, mut rb) = subscriber(&b.hub, "acme", "t");
        let acme = tid("acme");
        const N: usize = 300;
        let (mut publish, mut local, mut remote) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..N {
            let start = Instant::now();
            a.bus
                .publish(&acme, "t", "e", &i.to_string())
                .await
                .unwrap();
            publish.push(start.elapsed());
            recv(&mut ra).await;
            local.push(start.elapsed());
            recv(&mut rb).await;
            remote.push(start.elapsed());
        }
        let stats = |v: &mut Vec<Duration>| {
            v.sort();
            (v[v.len() / 2], v[v.len() * 99 / 100])
        };
        let (p50, p99) = stats(&mut publish);
        let (l50, l99) = stats(&mut local);
        let (r50, r99) = stats(&mut remote);
        eprintln!(
            "redis bus, {N} publishes: publish returns p50 {p50:?} p99 {p99:?}; \
             delivered on the publishing host p50 {l50:?} p99 {l99:?}; \
             on the other host p50 {r50:?} p99 {r99:?}"
        );
        // Generous bound for a loaded CI machine running debug builds.
        assert!(r50 < Duration::from_millis(50), "{r50:?}");

        drop((a, b));
        cleanup(&mut conn, &ns).await;
    }
}
