//! The connection state machine, independent of the frame format: one
//! [`Session`] per accepted connection holds its tenant, its user (decided
//! once by `authenticate`), its subscriptions and its in-flight call budget.
//! Codecs (the svelte-adapter-uws endpoint in [`super::ws`], later a
//! Centrifugo endpoint) decode frames, call these methods and encode the
//! results.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::Instrument;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::Bus;
use crate::backend::idempotency::{IdemAcquire, IdempotencyStore};
use crate::backend::presence::Member;
use crate::backend::replay::{ReplayBuffer, ReplayPage};
use crate::cursors::{self, Cursors};
use crate::groups::Groups;
use crate::hub::{HubConnection, Released, SubscribeError};
use crate::presence::{self, Presence};
use crate::protocol;
use crate::runtime::Plugin;
use crate::runtime::{CallContext, CallError, Effect, LiveError, User};
use crate::tenant::{Tenant, canary_bucket};

/// Process-wide counter behind [`CallContext::request_id`].
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// A refused subscription; `reason` is the code sent to the client
/// (`INVALID_TOPIC`, `FORBIDDEN`, `RATE_LIMITED`, or the plugin's own code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subscription denied: {reason}")]
pub struct Denied {
    /// The denial code.
    pub reason: String,
}

impl Denied {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// How long the result of an RPC sent with an `idempotencyKey` is kept
/// (the seeds' idempotency `ttl`, 48 h).
pub const RPC_IDEMPOTENCY_TTL: Duration = Duration::from_secs(48 * 60 * 60);
/// How long an RPC sent with an `idempotencyKey` holds its key while it
/// runs (the seeds' `acquireTtl`).
pub const RPC_IDEMPOTENCY_PENDING_TTL: Duration = Duration::from_secs(60);

/// The host services every session of the process uses beyond its own
/// tenant and plugin. Share it as `Arc<Services>`.
pub struct Services {
    /// Replay buffers (`replay`, `resume`).
    pub replay: Arc<dyn ReplayBuffer>,
    /// Presence.
    pub presence: Arc<Presence>,
    /// Broadcast groups (a closing connection leaves them).
    pub groups: Arc<Groups>,
    /// Idempotency records (RPCs sent with an `idempotencyKey`).
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Live cursors.
    pub cursors: Arc<Cursors>,
    /// The bus (to wait until a new subscription receives the fleet's events).
    pub bus: Arc<dyn Bus>,
    /// What `/readyz` checks.
    pub readiness: crate::health::Readiness,
}

/// Who is present on a topic the connection just joined: send it as
/// `presence_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceSnapshot {
    /// The topic joined.
    pub topic: String,
    /// Everyone present, the connection's user included.
    pub members: Vec<Member>,
}

/// What [`Session::catch_up`] found for one topic of a `resume`.
#[derive(Debug)]
pub enum CatchUp {
    /// The connection was already subscribed: nothing to replay.
    AlreadyLive,
    /// Subscribed with live events held: send `page`, then call
    /// [`Session::finish_catch_up`].
    Replay(ReplayPage),
    /// The buffer could not be read (backend down): subscribed live, with a
    /// possible gap.
    Unavailable,
}

/// The denial for a subscription the hub refused.
fn denied(e: SubscribeError) -> Denied {
    match e {
        SubscribeError::TooMany(_) => Denied::new("RATE_LIMITED"),
        SubscribeError::Closed => Denied::new("CONNECTION_CLOSED"),
    }
}

/// Permission to run calls; the slots return to the session when dropped.
pub struct CallPermit {
    _permit: OwnedSemaphorePermit,
}

/// One accepted, authenticated connection.
pub struct Session {
    id: String,
    tenant: Arc<Tenant>,
    user: Option<User>,
    hub: HubConnection,
    services: Arc<Services>,
    inflight: Arc<Semaphore>,
    caps: Mutex<Vec<String>>,
    /// Which canary bucket (0-99) this connection is in.
    bucket: u8,
}

impl Session {
    /// A session `id` of `tenant` for `user`, subscribed through `hub`,
    /// using `services`, allowing `max_inflight_calls` concurrent plugin
    /// calls.
    pub fn new(
        id: String,
        tenant: Arc<Tenant>,
        user: Option<User>,
        hub: HubConnection,
        services: Arc<Services>,
        max_inflight_calls: usize,
    ) -> Self {
        Self {
            bucket: canary_bucket(&id),
            id,
            tenant,
            user,
            hub,
            services,
            inflight: Arc::new(Semaphore::new(max_inflight_calls)),
            caps: Mutex::new(Vec::new()),
        }
    }

    /// The session id (sent to the client in `welcome`; the plugin's connection id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The tenant, fixed for the life of the connection.
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }

    /// The user decided by `authenticate` (`None`: anonymous).
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    /// Record the client's capabilities (from `hello`).
    pub fn set_caps(&self, caps: Vec<String>) {
        *self.caps.lock() = caps;
    }

    /// Whether the client announced capability `cap`.
    pub fn has_cap(&self, cap: &str) -> bool {
        self.caps.lock().iter().any(|c| c == cap)
    }

    /// The plugin version this connection's next call runs (the tenant's
    /// active version, or its canary for connections in the canary share).
    pub fn plugin(&self) -> Result<Arc<Plugin>, CallError> {
        self.tenant
            .plugin_for(self.bucket)
            .ok_or_else(|| CallError::Host("the tenant has no active plugin version".into()))
    }

    /// A fresh call context for one plugin call.
    pub fn call_context(&self) -> CallContext {
        CallContext {
            user: self.user.clone(),
            connection_id: self.id.clone(),
            request_id: NEXT_REQUEST.fetch_add(1, Ordering::Relaxed).to_string(),
            outbound: Some(self.hub.outbound()),
        }
    }

    /// Subscribe to `topic`: the wire topic rules, then the plugin's gate
    /// (which fails closed: any error other than a live error denies with
    /// `FORBIDDEN`), then the per-connection subscription limit; then what
    /// the gate asked for (presence joins, whose snapshots are returned).
    /// Subscribing to a topic already held succeeds without asking the gate
    /// again.
    pub async fn subscribe(&self, topic: &str) -> Result<Vec<PresenceSnapshot>, Denied> {
        if topic == protocol::SYSTEM_TOPIC {
            // The host's own notices (`degraded` / `recovered`): open to
            // every connection, never published by plugins.
            return self
                .hub
                .subscribe(topic)
                .map(|_| Vec::new())
                .map_err(denied);
        }
        if self.hub.is_subscribed(topic) {
            return Ok(Vec::new());
        }
        let effects = self.authorize(topic).await?;
        if self.hub.subscribe(topic).map_err(denied)? {
            self.services.bus.ready(&self.tenant.id, topic).await;
        }
        Ok(self.apply(effects).await)
    }

    /// May this connection read `topic` (subscribe or replay)? The wire
    /// topic rules, then the plugin's gate, which fails closed. Returns
    /// what the gate asked for, to apply once subscribed.
    async fn authorize(&self, topic: &str) -> Result<Vec<Effect>, Denied> {
        if protocol::validate_topic(topic).is_err() {
            return Err(Denied::new("INVALID_TOPIC"));
        }
        let gate = match self.plugin() {
            Ok(plugin) => plugin.authorize_subscribe(self.call_context(), topic).await,
            Err(e) => Err(e),
        };
        match gate {
            Ok(effects) => Ok(effects),
            Err(CallError::Live(e)) => Err(Denied::new(e.code)),
            Err(CallError::Overloaded) => Err(Denied::new("OVERLOADED")),
            Err(CallError::FaultBudget(_)) => Err(Denied::new("RATE_LIMITED")),
            Err(e) => {
                tracing::warn!(topic, error = %e, "subscribe gate failed; denying");
                Err(Denied::new("FORBIDDEN"))
            }
        }
    }

    /// The key presence knows this connection's user by: its user id, or
    /// the connection id when anonymous.
    pub fn user_key(&self) -> &str {
        self.user
            .as_ref()
            .map_or(self.id.as_str(), |u| u.id.as_str())
    }

    /// Apply what a hook asked for on this connection, in order; returns
    /// the presence snapshots of the topics joined, to send as
    /// `presence_state` before calling [`Session::release_presence`]. A
    /// failed step is logged and skipped (the hook already succeeded).
    pub async fn apply(&self, effects: Vec<Effect>) -> Vec<PresenceSnapshot> {
        let mut snapshots = Vec::new();
        for effect in effects {
            match effect {
                Effect::PresenceJoin { topic, data } => {
                    // Held until the caller has sent the snapshot
                    // ([`Session::release_presence`]): `presence_state`
                    // comes before any diff, the user's own join included.
                    let channel = presence::channel(&topic);
                    match self.hub.subscribe_held(&channel) {
                        Ok(true) => self.services.bus.ready(&self.tenant.id, &channel).await,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::info!(topic, error = %e, "presence join skipped");
                            continue;
                        }
                    }
                    let tenant = &self.tenant.id;
                    match self
                        .services
                        .presence
                        .join(tenant, &self.id, self.user_key(), &topic, &data)
                        .await
                    {
                        Ok(members) => snapshots.push(PresenceSnapshot { topic, members }),
                        Err(e) => {
                            tracing::warn!(topic, error = %e, "presence join failed");
                            self.hub.unsubscribe(&channel);
                        }
                    }
                }
                Effect::PresenceLeave { topic } => self.leave_presence(&topic).await,
            }
        }
        snapshots
    }

    /// Let the `presence_diff`s of the topics in `snapshots` through, now
    /// that their `presence_state` has been queued.
    pub fn release_presence(&self, snapshots: &[PresenceSnapshot]) {
        for s in snapshots {
            self.hub.release_held(&presence::channel(&s.topic), 0);
        }
    }

    /// Leave `topic`'s presence if the connection is on it.
    async fn leave_presence(&self, topic: &str) {
        if !self.services.presence.is_joined(&self.id, topic) {
            return;
        }
        self.hub.unsubscribe(&presence::channel(topic));
        if let Err(e) = self.services.presence.leave(&self.id, topic).await {
            tracing::warn!(topic, error = %e, "presence leave failed; it will expire");
        }
    }

    /// The buffered events of `topic` after `since` (the `replay` frame):
    /// the same gate as [`Session::subscribe`] (not asked again for a topic
    /// the connection holds); `SERVICE_UNAVAILABLE` if the buffer cannot be
    /// read.
    pub async fn replay(&self, topic: &str, since: u64) -> Result<ReplayPage, Denied> {
        if !self.hub.is_subscribed(topic) {
            // A replay does not subscribe: what the gate asked for is not applied.
            self.authorize(topic).await?;
        }
        self.read_replay(topic, since).await
    }

    async fn read_replay(&self, topic: &str, since: u64) -> Result<ReplayPage, Denied> {
        let page = self
            .services
            .replay
            .since(&self.tenant.id, topic, since)
            .await
            .map_err(|e| {
                tracing::warn!(topic, error = %e, "replay buffer unavailable");
                Denied::new("SERVICE_UNAVAILABLE")
            })?;
        crate::metrics::replayed(
            &self.tenant.id,
            topic,
            page.events.len() as u64,
            page.truncated,
        );
        Ok(page)
    }

    /// One topic of a `resume`: check it like [`Session::subscribe`],
    /// subscribe with live events held, and read what the client missed
    /// since `since`. After sending the page, call
    /// [`Session::finish_catch_up`] so the held events follow it without a
    /// gap or a duplicate, then [`Session::apply`] the returned effects
    /// (what the gate asked for).
    pub async fn catch_up(
        &self,
        topic: &str,
        since: u64,
    ) -> Result<(CatchUp, Vec<Effect>), Denied> {
        if self.hub.is_subscribed(topic) {
            return Ok((CatchUp::AlreadyLive, Vec::new()));
        }
        let effects = self.authorize(topic).await?;
        if !self.hub.subscribe_held(topic).map_err(denied)? {
            return Ok((CatchUp::AlreadyLive, Vec::new()));
        }
        // Events from now on are held; the replay read after this covers
        // everything before.
        self.services.bus.ready(&self.tenant.id, topic).await;
        match self.read_replay(topic, since).await {
            Ok(page) => Ok((CatchUp::Replay(page), effects)),
            Err(_) => {
                self.hub.release_held(topic, since);
                Ok((CatchUp::Unavailable, effects))
            }
        }
    }

    /// Make a [`CatchUp::Replay`] subscription live: the held events with a
    /// seq above `after` (the last seq sent) follow the replay.
    pub fn finish_catch_up(&self, topic: &str, after: u64) -> Option<Released> {
        let released = self.hub.release_held(topic, after);
        if released.is_some_and(|r| r.overflowed) {
            tracing::info!(
                topic,
                "catch-up outran the held-event bound; the client missed events"
            );
        }
        released
    }

    /// Unsubscribe from `topic` (leaving its presence and removing its
    /// cursor, if any); `false` if it was not subscribed.
    pub async fn unsubscribe(&self, topic: &str) -> bool {
        let was = self.hub.unsubscribe(topic);
        self.leave_presence(topic).await;
        self.hub.unsubscribe(&cursors::channel(topic));
        self.services.cursors.remove(&self.id, topic).await;
        was
    }

    /// The connection's cursor on `topic` moved to `data` (JSON). Ignored
    /// unless the connection is subscribed to `topic` (its gate decided who
    /// may be there). `false` if ignored.
    pub async fn move_cursor(&self, topic: &str, data: &str) -> bool {
        if topic.starts_with("__") || !self.hub.is_subscribed(topic) {
            return false;
        }
        let user = self.user.as_ref().map(|u| u.id.as_str());
        self.services
            .cursors
            .update(&self.tenant.id, &self.id, user, topic, data)
            .await;
        true
    }

    /// Attach to `topic`'s cursors: subscribe to `__cursor:{topic}` and
    /// return every live cursor (JSON array). `None` unless subscribed to
    /// `topic`, or when the cursors cannot be read.
    pub async fn attach_cursors(&self, topic: &str) -> Option<String> {
        if topic.starts_with("__") || !self.hub.is_subscribed(topic) {
            return None;
        }
        self.hub.subscribe(&cursors::channel(topic)).ok()?;
        match self.services.cursors.snapshot(&self.tenant.id, topic).await {
            Ok(json) => Some(json),
            Err(e) => {
                tracing::warn!(topic, error = %e, "cursor snapshot unavailable");
                None
            }
        }
    }

    /// Number of topics held.
    pub fn subscription_count(&self) -> usize {
        self.hub.subscription_count()
    }

    /// Reserve `n` concurrent call slots, or `None` if fewer are free
    /// (the client is answered `OVERLOADED`).
    pub fn try_reserve_calls(&self, n: u32) -> Option<CallPermit> {
        Arc::clone(&self.inflight)
            .try_acquire_many_owned(n)
            .ok()
            .map(|p| CallPermit { _permit: p })
    }

    /// Run the RPC `path` with JSON array `args_json` in the tenant's
    /// plugin (see `Session::call_once`); with an `idempotency_key` (the
    /// client's `idempotencyKey`), at most once per key and user.
    pub async fn call(
        &self,
        path: &str,
        args_json: &str,
        idempotency_key: Option<&str>,
    ) -> Result<(String, Vec<PresenceSnapshot>), CallError> {
        let Some(client_key) = idempotency_key else {
            return self.call_once(path, args_json).await;
        };
        // Scoped by path and user (a key never returns another user's
        // result); length-prefixed so no two (user, key) pairs collide, and
        // under `__`, which plugins cannot use.
        let user = self.user_key();
        let key = format!("__rpc:{path}:{}:{user}:{client_key}", user.len());
        let tenant = &self.tenant.id;
        let store = &self.services.idempotency;
        let unavailable = |e: crate::backend::BackendError| {
            tracing::warn!(path, error = %e, "idempotency store unavailable; call refused");
            CallError::Live(LiveError::new("SERVICE_UNAVAILABLE", "Service unavailable"))
        };
        match store
            .acquire(tenant, &key, RPC_IDEMPOTENCY_PENDING_TTL)
            .await
            .map_err(unavailable)?
        {
            IdemAcquire::Done(json) => Ok((json, Vec::new())),
            IdemAcquire::Pending => Err(CallError::Live(LiveError::new(
                "CONFLICT",
                "A call with this idempotency key is in progress",
            ))),
            IdemAcquire::Acquired => {
                let result = self.call_once(path, args_json).await;
                let kept = match &result {
                    Ok((json, _)) => store.commit(tenant, &key, json, RPC_IDEMPOTENCY_TTL).await,
                    Err(_) => store.abort(tenant, &key).await.map(drop),
                };
                if let Err(e) = kept {
                    tracing::warn!(path, error = %e, "idempotency record not updated");
                }
                result
            }
        }
    }

    /// Run the RPC `path` with JSON array `args_json` in the tenant's plugin,
    /// then apply what it asked for on this connection (presence joins,
    /// whose snapshots are returned with the result). Failures that are not
    /// live errors are logged here with their real message (the client
    /// only sees a generic one).
    async fn call_once(
        &self,
        path: &str,
        args_json: &str,
    ) -> Result<(String, Vec<PresenceSnapshot>), CallError> {
        let ctx = self.call_context();
        let request_id = ctx.request_id.clone();
        let span = tracing::info_span!("call", path, request_id = %request_id);
        let result = match self.plugin() {
            Ok(plugin) => {
                plugin
                    .call_with_effects(ctx, path, args_json)
                    .instrument(span)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            match e {
                CallError::Live(_) => {}
                CallError::Overloaded => {
                    tracing::debug!(
                        path,
                        request_id,
                        "call refused: tenant at max_concurrent_calls"
                    );
                }
                CallError::FaultBudget(_) => {
                    tracing::debug!(path, request_id, error = %e, "call refused: fault budget spent");
                }
                CallError::Timeout
                | CallError::ResourceExhausted(_)
                | CallError::PayloadTooLarge(_) => {
                    tracing::info!(path, request_id, error = %e, "plugin call stopped");
                }
                CallError::Trap(_) | CallError::Host(_) => {
                    tracing::warn!(path, request_id, error = %e, "plugin call failed");
                }
            }
        }
        let (json, effects) = result?;
        Ok((json, self.apply(effects).await))
    }

    /// Drop every subscription; later subscribes are denied. Idempotent.
    /// Call [`Session::leave_all_presence`] too when the connection ends.
    pub fn close(&self) {
        self.hub.close();
    }

    /// Leave every topic's presence and every broadcast group, and remove
    /// every cursor (the connection ended).
    pub async fn leave_all_presence(&self) {
        self.services.presence.leave_all(&self.id).await;
        self.services.groups.leave_all(&self.id).await;
        self.services.cursors.remove_all(&self.id).await;
    }
}
