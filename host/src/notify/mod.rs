//! The LISTEN/NOTIFY bridge (the seeds' `createNotifyBridge`): rows a
//! tenant's trigger (or the `notify` import) writes reach the tenant's
//! WebSocket subscribers, through the plugin's `on-notify` hook.
//!
//! **Nothing in a notification is trusted.** `NOTIFY` needs no privilege,
//! so any role of the database can notify any channel with any payload. A
//! tenant's trigger therefore writes the event into the tenant's own
//! outbox table and notifies the tenant's channel with an empty payload
//! ([`crate::backend::postgres::notify`]). The bridge holds one `LISTEN`
//! connection per database (the host's superuser URL; it only listens)
//! with one channel per bridged tenant; a notification on a channel — or
//! the periodic poll ([`NotifySettings::poll`], which also covers
//! notifications lost while the connection was down) — makes the bridge
//! claim that tenant's outbox rows **as the tenant** (its own role, through
//! [`TenantSql::run`]): `DELETE … WHERE id IN (SELECT … FOR UPDATE SKIP
//! LOCKED LIMIT n) RETURNING …`, so each row goes to exactly one host of
//! the fleet, and a forged `NOTIFY` only makes the host look at the
//! tenant's own outbox.
//!
//! **Which tenants are bridged:** those whose active plugin version exports
//! `notify-events` and answers `true` to `wants-notify` (asked once when
//! the version is loaded; plugins built with the SDK set
//! `Plugin::NOTIFY_EVENTS`). The set is re-read every
//! [`NotifySettings::resync`]; a tenant newly bridged is claimed at once,
//! so rows written while no version wanted them are delivered then.
//! Installing a trigger alone does not bridge a tenant: its rows wait in
//! the outbox until a version that wants them is active.
//!
//! **Each row** goes to the plugin's `on-notify(payload)`: `none` publishes
//! the payload as it is (it must be `{"topic","event","data"}`, the
//! trigger's shape), `some(list)` publishes those instead (an empty list
//! skips the row: the seeds' `parse` returning `null`); the hook may also
//! publish itself through `pubsub`. Publishing takes the tenant's normal
//! path (the pubsub import's checks: valid topic and event, `__` topics
//! refused, `max_publish_bytes`, `publishes_per_sec`) on the fleet's bus.
//! Payloads over [`NotifySettings::max_envelope_bytes`] are dropped (and
//! the row deleted); payloads over [`NotifySettings::warn_bytes`] (7500 B,
//! the seeds' warning: plain `NOTIFY` stops at about 8000 B) are delivered
//! with a warning in the log, since the outbox has no such limit.
//!
//! **Delivery is at most once.** A claimed row is deleted before it is
//! published: if the host dies in between, or the hook fails, or the bus
//! refuses (after a few retries of a rate-limited publish), the event is
//! lost and logged. Nothing is ever delivered twice. Within one tenant,
//! rows claimed by one host are delivered in outbox order; rows split
//! between two hosts claiming at once are not ordered with each other.
//!
//! **Reconnects**: a lost `LISTEN` connection is reopened after
//! [`NotifySettings::reconnect`] (doubling per failed attempt up to
//! [`MAX_RECONNECT_DELAY`]), listens again and claims every bridged
//! tenant of that database. With `auto_reconnect` off the poll alone
//! delivers after a loss.
//!
//! **Isolated tenants** (`[postgres.tenant_urls]`) live in databases of
//! their own; each such database gets its own `LISTEN` connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::backend::postgres::notify::{self as outbox, OutboxRow};
use crate::backend::postgres::{SqlErrorKind, SqlLimits, TenantSql};
use crate::catalog::postgres::{client_config, describe};
use crate::runtime::Plugin;
use crate::runtime::wit::types::HostError;
use crate::tenant::{Registry, TenantId};

/// Longest wait between two reconnect attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// Longest wait for the `LISTEN` connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tenants whose outboxes are claimed at once (host-wide).
const CONCURRENT_CLAIMS: usize = 16;
/// How often a rate-limited publish is tried again before it is dropped.
const PUBLISH_RETRIES: u32 = 3;
/// Longest wait before retrying a rate-limited publish.
const MAX_PUBLISH_BACKOFF: Duration = Duration::from_secs(1);
/// Most publications one `on-notify` call may return.
pub const MAX_PUBLICATIONS: usize = 1000;

/// One event a plugin's `on-notify` asks the host to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The topic.
    pub topic: String,
    /// The event name.
    pub event: String,
    /// The data, JSON.
    pub data: String,
}

/// How the bridge runs (the `[notify]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySettings {
    /// Wait before reopening a lost `LISTEN` connection (doubles per
    /// failed attempt, up to [`MAX_RECONNECT_DELAY`]). Seeds'
    /// `reconnectInterval`, 3000 ms.
    pub reconnect: Duration,
    /// Reopen a lost `LISTEN` connection (seeds' `autoReconnect`, true).
    pub auto_reconnect: bool,
    /// How often every bridged tenant's outbox is claimed anyway (covers
    /// lost notifications). Seeds' `pollInterval`, 5000 ms.
    pub poll: Duration,
    /// How often the set of bridged tenants is re-read from the registry.
    pub resync: Duration,
    /// Largest payload delivered, bytes (seeds' `maxEnvelopeBytes`, 1 MiB).
    pub max_envelope_bytes: u64,
    /// Payloads above this are logged with a warning (seeds: 7500 B).
    pub warn_bytes: u64,
    /// Rows claimed per SQL call.
    pub batch: u32,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            reconnect: Duration::from_millis(3000),
            auto_reconnect: true,
            poll: Duration::from_millis(5000),
            resync: Duration::from_secs(1),
            max_envelope_bytes: 1 << 20,
            warn_bytes: 7500,
            batch: 100,
        }
    }
}

/// The `[notify]` table of the configuration (used only with `[postgres]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyTable {
    /// Run the bridge (default true).
    pub enabled: bool,
    /// [`NotifySettings::reconnect`], ms (default 3000).
    pub reconnect_ms: u64,
    /// [`NotifySettings::auto_reconnect`] (default true).
    pub auto_reconnect: bool,
    /// [`NotifySettings::poll`], ms (default 5000).
    pub poll_ms: u64,
    /// [`NotifySettings::max_envelope_bytes`] (default 1048576).
    pub max_envelope_bytes: u64,
    /// [`NotifySettings::warn_bytes`] (default 7500).
    pub warn_bytes: u64,
    /// [`NotifySettings::batch`] (default 100).
    pub batch: u32,
}

impl Default for NotifyTable {
    fn default() -> Self {
        let d = NotifySettings::default();
        Self {
            enabled: true,
            reconnect_ms: millis(d.reconnect),
            auto_reconnect: d.auto_reconnect,
            poll_ms: millis(d.poll),
            max_envelope_bytes: d.max_envelope_bytes,
            warn_bytes: d.warn_bytes,
            batch: d.batch,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl NotifyTable {
    /// The bridge settings.
    pub fn settings(&self) -> NotifySettings {
        NotifySettings {
            reconnect: Duration::from_millis(self.reconnect_ms),
            auto_reconnect: self.auto_reconnect,
            poll: Duration::from_millis(self.poll_ms),
            max_envelope_bytes: self.max_envelope_bytes,
            warn_bytes: self.warn_bytes,
            batch: self.batch,
            ..NotifySettings::default()
        }
    }

    /// Check the values; the message names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        const HOUR_MS: u64 = 60 * 60 * 1000;
        if !(10..=HOUR_MS).contains(&self.reconnect_ms) {
            return Err("notify.reconnect_ms must be between 10 ms and an hour".into());
        }
        if !(10..=HOUR_MS).contains(&self.poll_ms) {
            return Err("notify.poll_ms must be between 10 ms and an hour".into());
        }
        if !(1..=(64 << 20)).contains(&self.max_envelope_bytes) {
            return Err("notify.max_envelope_bytes must be between 1 and 67108864".into());
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err("notify.batch must be between 1 and 10000".into());
        }
        Ok(())
    }
}

/// A database tenants live in: `None` for `[postgres] url`, an isolated
/// tenant's id for its own.
type DbKey = Option<TenantId>;

/// What the bridge knows right now.
#[derive(Default)]
struct State {
    /// Channel → tenant, for every bridged tenant.
    channels: HashMap<String, TenantId>,
    /// Tenants being claimed, and whether they were notified again since
    /// the claim began (then it runs once more).
    draining: HashMap<TenantId, bool>,
    /// Each database's listener: the channels it should listen on.
    listeners: HashMap<DbKey, watch::Sender<BTreeSet<String>>>,
    /// Each listener's backend pid while connected (for tests and tools).
    pids: HashMap<DbKey, i32>,
}

/// The bridge. Share it as `Arc<NotifyBridge>`; see the module docs.
pub struct NotifyBridge {
    sql: Arc<TenantSql>,
    registry: Arc<Registry>,
    settings: NotifySettings,
    shared_url: String,
    isolated: BTreeMap<TenantId, String>,
    claims: Arc<Semaphore>,
    state: parking_lot::Mutex<State>,
}

impl NotifyBridge {
    /// The bridge of the tenants in `registry`, whose outboxes are reached
    /// through `sql`; `shared_url` is `[postgres] url` and `isolated` the
    /// isolated tier's URLs (both superusers', used only to `LISTEN`).
    pub fn new(
        sql: Arc<TenantSql>,
        registry: Arc<Registry>,
        shared_url: String,
        isolated: BTreeMap<TenantId, String>,
        settings: NotifySettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            sql,
            registry,
            settings,
            shared_url,
            isolated,
            claims: Arc::new(Semaphore::new(CONCURRENT_CLAIMS)),
            state: parking_lot::Mutex::new(State::default()),
        })
    }

    /// Start the bridge: re-read the bridged tenants every
    /// [`NotifySettings::resync`] and claim all of them every
    /// [`NotifySettings::poll`], until the returned task is aborted (the
    /// listeners stop when the bridge is dropped).
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let (resync, poll) = (self.settings.resync, self.settings.poll);
        tokio::spawn(async move {
            let mut resync_tick = tokio::time::interval(resync);
            resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut poll_tick = tokio::time::interval(poll);
            poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = resync_tick.tick() => {
                        let Some(me) = weak.upgrade() else { return };
                        me.sync();
                    }
                    _ = poll_tick.tick() => {
                        let Some(me) = weak.upgrade() else { return };
                        me.sync();
                        let tenants: Vec<TenantId> =
                            me.state.lock().channels.values().cloned().collect();
                        for t in tenants {
                            me.mark(&t);
                        }
                    }
                }
            }
        })
    }

    /// The channel `tenant`'s notifications use.
    pub fn channel(&self, tenant: &TenantId) -> String {
        outbox::channel(&self.sql, tenant)
    }

    /// The backend pids of the connected `LISTEN` connections (for tests
    /// and tools: `pg_terminate_backend` one to see the bridge reconnect).
    pub fn listener_pids(&self) -> Vec<i32> {
        self.state.lock().pids.values().copied().collect()
    }

    /// Whether `tenant` is bridged right now.
    pub fn is_bridged(&self, tenant: &TenantId) -> bool {
        self.state
            .lock()
            .channels
            .contains_key(&self.channel(tenant))
    }

    /// The active plugin of `tenant`, if it wants notifications.
    fn plugin(&self, tenant: &TenantId) -> Option<Arc<Plugin>> {
        self.registry
            .get(tenant)
            .and_then(|t| t.deployment().active)
            .filter(|p| p.wants_notify_events())
    }

    /// Re-read which tenants are bridged: listen on new tenants' channels
    /// (and claim their outboxes), stop listening on those of tenants no
    /// longer bridged, start or stop each database's listener.
    fn sync(self: &Arc<Self>) {
        let mut wanted: HashMap<DbKey, BTreeSet<String>> = HashMap::new();
        let mut channels = HashMap::new();
        for id in self.registry.ids() {
            if self.plugin(&id).is_none() {
                continue;
            }
            let key = self.isolated.contains_key(&id).then(|| id.clone());
            let channel = self.channel(&id);
            wanted.entry(key).or_default().insert(channel.clone());
            channels.insert(channel, id);
        }
        let mut fresh = Vec::new();
        {
            let mut state = self.state.lock();
            for (channel, id) in &channels {
                if !state.channels.contains_key(channel) {
                    fresh.push(id.clone());
                }
            }
            state.channels = channels;
            // Listeners of databases with no bridged tenant stop (their
            // sender is dropped).
            state.listeners.retain(|key, _| wanted.contains_key(key));
            state.pids.retain(|key, _| wanted.contains_key(key));
            for (key, set) in wanted {
                match state.listeners.get(&key) {
                    Some(tx) => {
                        tx.send_if_modified(|current| {
                            if *current == set {
                                false
                            } else {
                                *current = set;
                                true
                            }
                        });
                    }
                    None => {
                        let (tx, rx) = watch::channel(set);
                        state.listeners.insert(key.clone(), tx);
                        let url = match &key {
                            Some(id) => self.isolated.get(id).cloned(),
                            None => Some(self.shared_url.clone()),
                        };
                        match url.as_deref().map(client_config) {
                            Some(Ok(config)) => {
                                let listener = Listener {
                                    bridge: Arc::downgrade(self),
                                    key,
                                    config,
                                    settings: self.settings.clone(),
                                };
                                tokio::spawn(listener.run(rx));
                            }
                            Some(Err(e)) => {
                                tracing::error!(error = %e, "notify bridge: bad PostgreSQL url; polling only");
                            }
                            None => {}
                        }
                    }
                }
            }
        }
        for id in fresh {
            tracing::debug!(tenant = %id, "notify bridge: tenant bridged");
            self.mark(&id);
        }
    }

    /// A notification arrived on `channel`.
    fn notified(self: &Arc<Self>, channel: &str) {
        let tenant = self.state.lock().channels.get(channel).cloned();
        if let Some(t) = tenant {
            self.mark(&t);
        }
    }

    /// Claim `tenant`'s outbox soon: now, or once more after the claim
    /// running now (one claim per tenant at a time).
    fn mark(self: &Arc<Self>, tenant: &TenantId) {
        {
            let mut state = self.state.lock();
            if let Some(again) = state.draining.get_mut(tenant) {
                *again = true;
                return;
            }
            state.draining.insert(tenant.clone(), false);
        }
        let me = Arc::clone(self);
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let Ok(_permit) = Arc::clone(&me.claims).acquire_owned().await else {
                return;
            };
            loop {
                me.drain(&tenant).await;
                let mut state = me.state.lock();
                match state.draining.get_mut(&tenant) {
                    Some(again) if *again => *again = false,
                    _ => {
                        state.draining.remove(&tenant);
                        return;
                    }
                }
            }
        });
    }

    /// Claim and deliver `tenant`'s outbox rows until it is empty (or a
    /// claim fails: the next notification or poll tries again).
    pub async fn drain(&self, tenant: &TenantId) {
        let mut limit = self.settings.batch.max(1);
        loop {
            let Some(plugin) = self.plugin(tenant) else {
                return;
            };
            let limits = SqlLimits::of(&plugin.scope().quota.plan());
            let claimed = outbox::claim(
                &self.sql,
                tenant,
                &limits,
                limit,
                self.settings.max_envelope_bytes,
            )
            .await;
            let rows = match claimed {
                Ok(rows) => rows,
                // The batch does not fit one SQL result: smaller batches,
                // and a row too large even alone is dropped unread.
                Err(f) if f.kind == SqlErrorKind::TooLarge => {
                    if limit > 1 {
                        limit = (limit / 2).max(1);
                        continue;
                    }
                    let channel = self.channel(tenant);
                    match outbox::discard_oldest(&self.sql, tenant, &limits).await {
                        Ok(Some(bytes)) => {
                            crate::metrics::notify_received(tenant, &channel);
                            crate::metrics::notify_parse_error(tenant, &channel);
                            tracing::warn!(%tenant, bytes, "notify: an outbox row too large for one SQL result was dropped (sql_max_result_bytes)");
                            continue;
                        }
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(%tenant, error = %e, "notify: outbox row not dropped");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(%tenant, sqlstate = ?e.sqlstate, error = %e, "notify: outbox not claimed; retried on the next notification or poll");
                    return;
                }
            };
            let full = rows.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
            for row in rows {
                self.deliver(&plugin, row).await;
            }
            if !full {
                return;
            }
        }
    }

    /// Deliver one claimed row (see the module docs); failures are logged
    /// and counted, never retried.
    async fn deliver(&self, plugin: &Plugin, row: OutboxRow) {
        let tenant = &plugin.tenant;
        let channel = self.channel(tenant);
        crate::metrics::notify_received(tenant, &channel);
        let Some(payload) = row.payload else {
            crate::metrics::notify_parse_error(tenant, &channel);
            tracing::warn!(%tenant, id = row.id, bytes = row.bytes, max = self.settings.max_envelope_bytes, "notify: payload over max_envelope_bytes dropped");
            return;
        };
        if row.bytes > self.settings.warn_bytes {
            tracing::warn!(%tenant, id = row.id, bytes = row.bytes, "notify: payload over {} bytes (plain NOTIFY stops near 8000; the outbox carries it); consider sending the row id and loading the row", self.settings.warn_bytes);
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&payload).is_err() {
            crate::metrics::notify_parse_error(tenant, &channel);
            tracing::warn!(%tenant, id = row.id, "notify: payload is not JSON; dropped");
            return;
        }
        let publications = match plugin.on_notify(&payload).await {
            Ok(Some(list)) => list,
            Ok(None) => match envelope(&payload) {
                Some(p) => vec![p],
                None => {
                    crate::metrics::notify_parse_error(tenant, &channel);
                    tracing::warn!(%tenant, id = row.id, "notify: payload is not {{topic, event, data}} and on-notify returned none; dropped");
                    return;
                }
            },
            Err(e) => {
                tracing::warn!(%tenant, id = row.id, error = %e, "notify: on-notify failed; the row is dropped");
                return;
            }
        };
        for p in publications {
            self.publish(plugin, &p).await;
        }
    }

    /// Publish `p` as the tenant's plugin would (retrying a rate-limited
    /// publish a few times).
    async fn publish(&self, plugin: &Plugin, p: &Publication) {
        let tenant = &plugin.tenant;
        let mut attempt = 0;
        loop {
            match crate::imports::publish_as(plugin.scope(), &p.topic, &p.event, &p.data).await {
                Ok(()) => return,
                Err(HostError::RateLimited(ms)) if attempt < PUBLISH_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(ms).min(MAX_PUBLISH_BACKOFF)).await;
                }
                Err(e) => {
                    tracing::warn!(%tenant, topic = %p.topic, event = %p.event, error = ?e, "notify: publish refused; the event is dropped");
                    return;
                }
            }
        }
    }
}

/// The publication of a payload published as is: a JSON object with a
/// string `topic` and `event` and any `data` (absent: `null`).
fn envelope(payload: &str) -> Option<Publication> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        topic: String,
        event: String,
        #[serde(borrow, default)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let e: Envelope<'_> = serde_json::from_str(payload).ok()?;
    Some(Publication {
        topic: e.topic,
        event: e.event,
        data: e
            .data
            .map_or_else(|| "null".to_owned(), |d| d.get().to_owned()),
    })
}

/// One database's `LISTEN` connection.
struct Listener {
    bridge: Weak<NotifyBridge>,
    key: DbKey,
    config: tokio_postgres::Config,
    settings: NotifySettings,
}

/// Why a listening session ended.
enum Ended {
    /// The bridge no longer needs this listener.
    Stopped,
    /// The connection failed.
    Lost(String),
}

impl Listener {
    /// Listen until the bridge drops this database, reconnecting after a
    /// loss (with backoff) unless `auto_reconnect` is off.
    async fn run(mut self, mut desired: watch::Receiver<BTreeSet<String>>) {
        self.config.application_name("tenantry-notify");
        let mut delay = self.settings.reconnect;
        loop {
            let reason = match self.listen_once(&mut desired, &mut delay).await {
                Ended::Stopped => return,
                Ended::Lost(reason) => reason,
            };
            if let Some(b) = self.bridge.upgrade() {
                b.state.lock().pids.remove(&self.key);
            }
            if !self.settings.auto_reconnect {
                tracing::warn!(%reason, "notify bridge lost its LISTEN connection; auto_reconnect is off, polling only");
                return;
            }
            tracing::warn!(%reason, retry_in_ms = millis(delay), "notify bridge lost its LISTEN connection");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                r = desired.changed() => if r.is_err() { return },
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY.max(self.settings.reconnect));
            crate::metrics::notify_reconnect();
        }
    }

    /// Connect, listen on the desired channels (following changes) and
    /// hand notifications to the bridge until the connection fails or the
    /// bridge stops this listener. Resets `delay` once listening.
    async fn listen_once(
        &self,
        desired: &mut watch::Receiver<BTreeSet<String>>,
        delay: &mut Duration,
    ) -> Ended {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(NoTls)).await;
        let (client, mut connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Ended::Lost(format!("connect: {}", describe(&e))),
            Err(_) => return Ended::Lost("connect: timed out".into()),
        };
        let mut messages = Box::pin(futures_util::stream::poll_fn(move |cx| {
            connection.poll_message(cx)
        }));
        let pid = match self
            .drive(
                client.query_one("SELECT pg_backend_pid()", &[]),
                &mut messages,
            )
            .await
        {
            Ok(Ok(row)) => row.try_get::<_, i32>(0).ok(),
            Ok(Err(e)) => return Ended::Lost(describe(&e)),
            Err(ended) => return ended,
        };
        let mut listening: BTreeSet<String> = BTreeSet::new();
        let mut first = true;
        loop {
            let want = desired.borrow_and_update().clone();
            let mut sql = String::new();
            for c in want.difference(&listening) {
                sql.push_str(&format!("LISTEN \"{c}\";"));
            }
            for c in listening.difference(&want) {
                sql.push_str(&format!("UNLISTEN \"{c}\";"));
            }
            if !sql.is_empty() {
                match self.drive(client.batch_execute(&sql), &mut messages).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Lost(format!("LISTEN: {}", describe(&e))),
                    Err(ended) => return ended,
                }
            }
            let Some(bridge) = self.bridge.upgrade() else {
                return Ended::Stopped;
            };
            if first {
                first = false;
                *delay = self.settings.reconnect;
                if let Some(pid) = pid {
                    bridge.state.lock().pids.insert(self.key.clone(), pid);
                }
                tracing::debug!(channels = want.len(), "notify bridge listening");
                // Whatever was written while not listening.
                for c in &want {
                    bridge.notified(c);
                }
            }
            drop(bridge);
            listening = want;
            tokio::select! {
                changed = desired.changed() => if changed.is_err() {
                    return Ended::Stopped;
                },
                message = messages.next() => if let Err(ended) = self.handle(message) {
                    return ended;
                },
            }
        }
    }

    /// Run `work` on the client while driving the connection (handling
    /// notifications that arrive meanwhile).
    async fn drive<T>(
        &self,
        work: impl Future<Output = T>,
        messages: &mut (impl Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Unpin),
    ) -> Result<T, Ended> {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                message = messages.next() => self.handle(message)?,
            }
        }
    }

    /// One message of the connection: a notification goes to the bridge.
    fn handle(
        &self,
        message: Option<Result<AsyncMessage, tokio_postgres::Error>>,
    ) -> Result<(), Ended> {
        match message {
            Some(Ok(AsyncMessage::Notification(n))) => {
                let Some(bridge) = self.bridge.upgrade() else {
                    return Err(Ended::Stopped);
                };
                bridge.notified(n.channel());
                Ok(())
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(Ended::Lost(format!("connection failed: {}", describe(&e)))),
            None => Err(Ended::Lost("the server closed the connection".into())),
        }
    }
}

#[cfg(test)]
mod tests;
