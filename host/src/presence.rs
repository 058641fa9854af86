//! Presence on the wire: which users are on a topic, fleet-wide, as the
//! seeds' `createPresence` shows it to clients.
//!
//! A plugin makes a connection present on a topic with the `presence.join`
//! import (typically from its subscribe gate, the seeds' `presence.hooks`);
//! the host then, for that connection:
//!
//! 1. records it in the [`PresenceStore`] (memory, or Redis for a fleet)
//!    under the user's key — its user id, or its connection id when
//!    anonymous — so three tabs of one user are one member;
//! 2. subscribes the connection to `__presence:{topic}` (a reserved topic
//!    no client may subscribe to itself);
//! 3. if the user was not present before, publishes
//!    `presence_diff` `{"joins":{key:data},"leaves":{}}` there through the
//!    bus, so every host's members of the topic hear it;
//! 4. sends the connection `presence_state` `{key:data,…}` (everyone
//!    present, itself included).
//!
//! The connection leaves when it unsubscribes from the topic, when the
//! plugin calls `presence.leave`, or when it closes; `presence_diff`
//! `{"joins":{},"leaves":{key:data}}` goes out only when the user's last
//! connection anywhere in the fleet has left.
//!
//! Crashed hosts: every [`PresenceSettings::heartbeat`] this host refreshes
//! the deadlines of its connections (each lives [`PresenceSettings::ttl`]
//! without one) and expires every tenant's connections whose deadline
//! passed — those of a host that died without saying goodbye — publishing
//! their users' leaves (each exactly once, whichever host expires it).
//!
//! Diffs are coalesced per topic over [`COALESCE`]: the joins and leaves
//! of that window go out as one `presence_diff` (a user who joined and left
//! within it is only in `leaves`; clients apply `leaves` before `joins`, so
//! one who left and came back ends up present). Without this a burst of
//! joins to a topic with N members would cost N frames per join. A
//! `presence_diff` carries a `seq` like any event, which clients may ignore.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::presence::{ConnRef, Member, PresenceStore};
use crate::backend::{BackendError, Bus};
use crate::hub::Hub;
use crate::presence_events::PresenceEvents;
use crate::tenant::TenantId;

/// The reserved topic prefix presence frames travel on: `__presence:{topic}`.
pub const PRESENCE_TOPIC_PREFIX: &str = "__presence:";
/// Connections expired per store call in one sweep.
const EXPIRE_BATCH: usize = 512;
/// How long joins and leaves of one topic are gathered into one diff.
pub const COALESCE: Duration = Duration::from_millis(20);

/// How presence keeps crashed hosts' users from lingering (the `[presence]`
/// table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceSettings {
    /// How often this host refreshes its connections and sweeps expired
    /// ones (the seeds' `heartbeat`, 30 s).
    pub heartbeat: Duration,
    /// How long a connection stays present without a heartbeat (the seeds'
    /// `ttl`, 90 s).
    pub ttl: Duration,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self {
            heartbeat: crate::backend::presence::DEFAULT_HEARTBEAT,
            ttl: crate::backend::presence::DEFAULT_TTL,
        }
    }
}

/// `__presence:{topic}`.
pub fn channel(topic: &str) -> String {
    let mut c = String::with_capacity(PRESENCE_TOPIC_PREFIX.len() + topic.len());
    c.push_str(PRESENCE_TOPIC_PREFIX);
    c.push_str(topic);
    c
}

/// `{key: data, …}` as JSON text (each data is already JSON).
pub fn members_json<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let map: BTreeMap<&str, &RawValue> = members
        .into_iter()
        .filter_map(|(k, d)| {
            // Stored data came from a plugin through a JSON check; skip
            // anything else rather than break the frame.
            serde_json::from_str::<&RawValue>(d)
                .ok()
                .map(|raw| (k, raw))
        })
        .collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned())
}

/// The joins and leaves of one topic waiting for their diff.
#[derive(Default)]
struct PendingDiff {
    joins: BTreeMap<String, String>,
    leaves: BTreeMap<String, String>,
}

impl PendingDiff {
    fn json(&self) -> String {
        let pairs = |m: &BTreeMap<String, String>| {
            members_json(m.iter().map(|(k, d)| (k.as_str(), d.as_str())))
        };
        format!(
            "{{\"joins\":{},\"leaves\":{}}}",
            pairs(&self.joins),
            pairs(&self.leaves)
        )
    }
}

/// A join or a leave to announce.
enum Change<'a> {
    Join(&'a str, &'a str),
    Leave(&'a str, &'a str),
}

/// One connection's presence on this host.
struct Tracked {
    tenant: TenantId,
    user_key: String,
    /// Topic → the data it joined with (kept to rejoin after an outage).
    topics: HashMap<String, String>,
}

/// This host's presence: the store, the bus the diffs go out on, and the
/// connections it holds present. Share it as `Arc<Presence>`.
pub struct Presence {
    store: Arc<dyn PresenceStore>,
    bus: Arc<dyn Bus>,
    /// This host's hub, for the `heartbeat` frames (sent to its own
    /// subscribers only).
    hub: Arc<Hub>,
    instance: String,
    settings: PresenceSettings,
    tracked: Mutex<HashMap<String, Tracked>>,
    /// Diffs being gathered, per tenant and topic (see [`COALESCE`]).
    pending: Mutex<HashMap<(TenantId, String), PendingDiff>>,
    /// This presence itself, for the flush tasks.
    me: std::sync::Weak<Presence>,
    /// When the last heartbeat (or rejoin) succeeded.
    last_beat: Mutex<Instant>,
    /// Where users coming and going are reported for plugins'
    /// `on-presence` hook, once set.
    events: std::sync::OnceLock<Arc<PresenceEvents>>,
}

impl Presence {
    /// Presence kept in `store`, announced through `bus`, with `heartbeat`
    /// frames to the subscribers in `hub`, for this host (a fresh instance
    /// id).
    pub fn new(
        store: Arc<dyn PresenceStore>,
        bus: Arc<dyn Bus>,
        hub: Arc<Hub>,
        settings: PresenceSettings,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            store,
            bus,
            hub,
            instance: uuid::Uuid::new_v4().to_string(),
            settings,
            tracked: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            me: me.clone(),
            last_beat: Mutex::new(Instant::now()),
            events: std::sync::OnceLock::new(),
        })
    }

    /// Report users coming and going to `events` (plugins' `on-presence`
    /// hook) from now on. Set once; later calls are ignored.
    pub fn set_events(&self, events: Arc<PresenceEvents>) {
        let _ = self.events.set(events);
    }

    /// Tell the presence events that `user` came or went on `topic`.
    async fn report(&self, tenant: &TenantId, topic: &str, user: &str) {
        if let Some(events) = self.events.get() {
            events.changed(tenant, topic, user).await;
        }
    }

    /// This host's instance id in the store.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether connection `conn` is present on `topic` through this host.
    pub fn is_joined(&self, conn: &str, topic: &str) -> bool {
        self.tracked
            .lock()
            .get(conn)
            .is_some_and(|t| t.topics.contains_key(topic))
    }

    /// Make `conn` (of user `user_key`) present on `topic` with `data`;
    /// returns everyone present (for `presence_state`). A join of a topic
    /// the connection is already on with other data updates the user's
    /// data and announces it as a join of the same key (clients replace the
    /// entry); with the same data it announces nothing.
    pub async fn join(
        &self,
        tenant: &TenantId,
        conn: &str,
        user_key: &str,
        topic: &str,
        data: &str,
    ) -> Result<Vec<Member>, BackendError> {
        let joined = self
            .store
            .join(
                tenant,
                topic,
                user_key,
                &self.instance,
                conn,
                data,
                self.settings.ttl,
            )
            .await?;
        let previous = self
            .tracked
            .lock()
            .entry(conn.to_owned())
            .or_insert_with(|| Tracked {
                tenant: tenant.clone(),
                user_key: user_key.to_owned(),
                topics: HashMap::new(),
            })
            .topics
            .insert(topic.to_owned(), data.to_owned());
        let updated = previous.is_some_and(|p| p != data);
        if joined.first || updated {
            self.announce(tenant, topic, Change::Join(user_key, data));
        }
        if joined.first {
            self.report(tenant, topic, user_key).await;
        }
        self.store.members(tenant, topic).await
    }

    /// Make `conn` leave `topic`; `false` if it was not present there.
    pub async fn leave(&self, conn: &str, topic: &str) -> Result<bool, BackendError> {
        let (tenant, user_key) = {
            let mut tracked = self.tracked.lock();
            let Some(t) = tracked.get_mut(conn) else {
                return Ok(false);
            };
            if t.topics.remove(topic).is_none() {
                return Ok(false);
            }
            let found = (t.tenant.clone(), t.user_key.clone());
            if t.topics.is_empty() {
                tracked.remove(conn);
            }
            found
        };
        let left = self.store.leave(&tenant, topic, &user_key, conn).await?;
        if let (true, Some(data)) = (left.last, left.data.as_deref()) {
            self.announce(&tenant, topic, Change::Leave(&user_key, data));
            self.report(&tenant, topic, &user_key).await;
        }
        Ok(true)
    }

    /// Make `conn` leave every topic (it closed). Failures are logged; the
    /// store's expiry removes what could not be.
    pub async fn leave_all(&self, conn: &str) {
        let topics: Vec<String> = self
            .tracked
            .lock()
            .get(conn)
            .map(|t| t.topics.keys().cloned().collect())
            .unwrap_or_default();
        for topic in topics {
            if let Err(e) = self.leave(conn, &topic).await {
                tracing::warn!(topic, error = %e, "presence leave failed; it will expire");
            }
        }
    }

    /// Add a change to `topic`'s next diff, scheduling its publication in
    /// [`COALESCE`] if it is the first.
    fn announce(&self, tenant: &TenantId, topic: &str, change: Change<'_>) {
        crate::metrics::presence_change(tenant, topic, matches!(change, Change::Join(..)));
        let first = {
            let mut pending = self.pending.lock();
            let key = (tenant.clone(), topic.to_owned());
            let first = !pending.contains_key(&key);
            let diff = pending.entry(key).or_default();
            match change {
                Change::Join(user, data) => {
                    diff.joins.insert(user.to_owned(), data.to_owned());
                }
                Change::Leave(user, data) => {
                    // Joined and left within the window: only the leave.
                    diff.joins.remove(user);
                    diff.leaves.insert(user.to_owned(), data.to_owned());
                }
            }
            first
        };
        if first && let Some(me) = self.me.upgrade() {
            let (tenant, topic) = (tenant.clone(), topic.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(COALESCE).await;
                me.flush(&tenant, &topic).await;
            });
        }
    }

    /// Join every held connection again (after a lapse of heartbeats),
    /// announcing the users whose presence had expired meanwhile.
    async fn rejoin(&self, held: &[(ConnRef, String)]) -> Result<(), BackendError> {
        for (c, data) in held {
            let joined = self
                .store
                .join(
                    &c.tenant,
                    &c.topic,
                    &c.user_key,
                    &self.instance,
                    &c.conn,
                    data,
                    self.settings.ttl,
                )
                .await?;
            if joined.first {
                self.announce(&c.tenant, &c.topic, Change::Join(&c.user_key, data));
                self.report(&c.tenant, &c.topic, &c.user_key).await;
            }
        }
        if !held.is_empty() {
            tracing::info!(
                connections = held.len(),
                "presence rejoined after a heartbeat lapse"
            );
        }
        Ok(())
    }

    /// Publish `topic`'s gathered diff on `__presence:{topic}` (logged, not
    /// returned, on failure: the state is in the store either way).
    async fn flush(&self, tenant: &TenantId, topic: &str) {
        let Some(diff) = self
            .pending
            .lock()
            .remove(&(tenant.clone(), topic.to_owned()))
        else {
            return;
        };
        if let Err(e) = self
            .bus
            .publish(tenant, &channel(topic), "presence_diff", &diff.json())
            .await
        {
            tracing::warn!(%tenant, topic, error = %e, "presence diff not published");
        }
    }

    /// One heartbeat: refresh this host's connections, then expire every
    /// tenant's dead ones (announcing their users' leaves). If no heartbeat
    /// succeeded for a whole TTL (Redis was down, or this host stalled),
    /// other hosts may have expired this host's connections: they are
    /// joined again instead (announced as joins where they had gone).
    pub async fn maintain(&self, tenants: &[TenantId]) {
        let held: Vec<(ConnRef, String)> = self
            .tracked
            .lock()
            .iter()
            .flat_map(|(conn, t)| {
                t.topics.iter().map(move |(topic, data)| {
                    let conn_ref = ConnRef {
                        tenant: t.tenant.clone(),
                        topic: topic.clone(),
                        user_key: t.user_key.clone(),
                        conn: conn.clone(),
                    };
                    (conn_ref, data.clone())
                })
            })
            .collect();
        let stale = self.last_beat.lock().elapsed() >= self.settings.ttl;
        let beat = if stale {
            self.rejoin(&held).await
        } else if held.is_empty() {
            Ok(())
        } else {
            let conns: Vec<ConnRef> = held.into_iter().map(|(c, _)| c).collect();
            self.store
                .heartbeat(&self.instance, &conns, self.settings.ttl)
                .await
        };
        match beat {
            Ok(()) => {
                *self.last_beat.lock() = Instant::now();
                crate::metrics::presence_heartbeat();
            }
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
        for tenant in tenants {
            loop {
                let expired = match self.store.expire(tenant, EXPIRE_BATCH).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(%tenant, error = %e, "presence expiry failed");
                        break;
                    }
                };
                if !expired.is_empty() {
                    crate::metrics::presence_stale_cleaned(tenant, expired.len() as u64);
                }
                for e in &expired {
                    self.announce(tenant, &e.topic, Change::Leave(&e.user_key, &e.data));
                    self.report(tenant, &e.topic, &e.user_key).await;
                }
                if expired.len() < EXPIRE_BATCH {
                    break;
                }
            }
        }
        self.send_heartbeats().await;
    }

    /// Send this host's subscribers of every topic it holds presence on
    /// `heartbeat` `[key, …]`: everyone present now (the seeds' frame,
    /// which lets clients drop entries whose leave they missed). One store
    /// read per topic; sent without a seq, to local subscribers only.
    async fn send_heartbeats(&self) {
        let mut topics: Vec<(TenantId, String)> = self
            .tracked
            .lock()
            .values()
            .flat_map(|t| {
                t.topics
                    .keys()
                    .map(|topic| (t.tenant.clone(), topic.clone()))
            })
            .collect();
        topics.sort();
        topics.dedup();
        for (tenant, topic) in topics {
            match self.store.members(&tenant, &topic).await {
                Ok(members) => {
                    let keys: Vec<&str> = members.iter().map(|m| m.key.as_str()).collect();
                    let json = serde_json::to_string(&keys).unwrap_or_else(|_| "[]".to_owned());
                    self.hub.send(&tenant, &channel(&topic), "heartbeat", &json);
                }
                Err(e) => {
                    tracing::debug!(%tenant, topic, error = %e, "presence heartbeat frame skipped");
                }
            }
        }
    }

    /// Run [`Presence::maintain`] every heartbeat over the tenants `tenants`
    /// lists, until the returned task is aborted.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        tenants: impl Fn() -> Vec<TenantId> + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        let presence = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(presence.settings.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                presence.maintain(&tenants()).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBus;
    use crate::backend::presence::memory::MemoryPresence;
    use crate::hub::Outbound;
    use serde_json::{Value, json};

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn frame(o: Outbound) -> Value {
        let Outbound::Text(t) = o;
        serde_json::from_str(t.as_str()).unwrap()
    }

    struct Host {
        presence: Arc<Presence>,
        hub: Arc<Hub>,
    }

    fn host(store: Arc<MemoryPresence>, ttl: Duration) -> Host {
        let hub = Hub::new();
        let bus = Arc::new(MemoryBus::new(Arc::clone(&hub)));
        let presence = Presence::new(
            store,
            bus,
            Arc::clone(&hub),
            PresenceSettings {
                heartbeat: ttl / 3,
                ttl,
            },
        );
        Host { presence, hub }
    }

    #[tokio::test]
    async fn tabs_of_one_user_are_one_member_and_leave_once() {
        let h = host(Arc::new(MemoryPresence::new()), Duration::from_secs(90));
        let t = tid("acme");
        let (tx, mut rx) = crate::outbound::queue(16);
        let watcher = h.hub.connect(t.clone(), tx, 10);
        watcher.subscribe(&channel("room:1")).unwrap();

        let state = h
            .presence
            .join(&t, "c1", "ann", "room:1", r#"{"name":"Ann"}"#)
            .await
            .unwrap();
        assert_eq!(state.len(), 1);
        let d = frame(rx.recv().await.unwrap());
        assert_eq!(d["event"], "presence_diff");
        assert_eq!(
            d["data"],
            json!({"joins":{"ann":{"name":"Ann"}},"leaves":{}})
        );
        // Second tab: no diff.
        h.presence
            .join(&t, "c2", "ann", "room:1", r#"{"name":"Ann"}"#)
            .await
            .unwrap();
        assert!(h.presence.is_joined("c2", "room:1"));
        assert!(h.presence.leave("c1", "room:1").await.unwrap());
        assert!(
            !h.presence.leave("c1", "room:1").await.unwrap(),
            "already left"
        );
        assert!(rx.try_recv().is_err(), "one tab left: nobody hears it");
        h.presence.leave_all("c2").await;
        let d = frame(rx.recv().await.unwrap());
        assert_eq!(
            d["data"],
            json!({"joins":{},"leaves":{"ann":{"name":"Ann"}}})
        );
    }

    #[tokio::test]
    async fn a_crashed_hosts_users_leave_after_the_ttl() {
        let store = Arc::new(MemoryPresence::new());
        let ttl = Duration::from_millis(300);
        let crashed = host(Arc::clone(&store), ttl);
        let alive = host(store, ttl);
        let t = tid("acme");
        let (tx, mut rx) = crate::outbound::queue(64);
        let watcher = alive.hub.connect(t.clone(), tx, 10);
        watcher.subscribe(&channel("room:1")).unwrap();
        crashed
            .presence
            .join(&t, "c1", "ann", "room:1", "1")
            .await
            .unwrap();
        alive
            .presence
            .join(&t, "c2", "bob", "room:1", "2")
            .await
            .unwrap();
        // (The memory bus is per host: only `alive`'s own join reached the watcher.)
        let joined = frame(rx.recv().await.unwrap());
        assert_eq!(joined["data"]["joins"], json!({"bob": 2}));
        // `crashed` stops heartbeating; `alive` keeps its own connection alive.
        for _ in 0..5 {
            tokio::time::sleep(ttl / 3).await;
            alive.presence.maintain(std::slice::from_ref(&t)).await;
        }
        tokio::time::sleep(COALESCE * 2).await;
        let mut diffs = Vec::new();
        let mut heartbeats = Vec::new();
        while let Ok(o) = rx.try_recv() {
            let f = frame(o);
            match f["event"].as_str() {
                Some("heartbeat") => {
                    assert!(f.get("seq").is_none(), "heartbeats are not numbered");
                    heartbeats.push(f["data"].clone());
                }
                _ => diffs.push(f["data"].clone()),
            }
        }
        assert_eq!(
            diffs,
            [json!({"joins":{},"leaves":{"ann":1}})],
            "reported once; bob stays"
        );
        // Each heartbeat lists who is present: both until ann expired.
        assert_eq!(heartbeats.len(), 5);
        assert_eq!(heartbeats.last(), Some(&json!(["bob"])));
        assert!(heartbeats.contains(&json!(["ann", "bob"])));
        let members = alive
            .presence
            .join(&t, "c2", "bob", "room:1", "2")
            .await
            .unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].key, "bob");
    }

    #[tokio::test]
    async fn joining_again_with_other_data_announces_the_update() {
        let h = host(Arc::new(MemoryPresence::new()), Duration::from_secs(90));
        let t = tid("acme");
        let (tx, mut rx) = crate::outbound::queue(16);
        let watcher = h.hub.connect(t.clone(), tx, 10);
        watcher.subscribe(&channel("room:1")).unwrap();
        h.presence
            .join(&t, "c1", "ann", "room:1", r#"{"s":"idle"}"#)
            .await
            .unwrap();
        assert_eq!(
            frame(rx.recv().await.unwrap())["data"]["joins"],
            json!({"ann": {"s": "idle"}})
        );
        h.presence
            .join(&t, "c1", "ann", "room:1", r#"{"s":"idle"}"#)
            .await
            .unwrap();
        tokio::time::sleep(COALESCE * 3).await;
        assert!(rx.try_recv().is_err(), "same data: nothing to say");
        let members = h
            .presence
            .join(&t, "c1", "ann", "room:1", r#"{"s":"typing"}"#)
            .await
            .unwrap();
        assert_eq!(members[0].data, r#"{"s":"typing"}"#);
        let d = frame(rx.recv().await.unwrap());
        assert_eq!(
            d["data"],
            json!({"joins": {"ann": {"s": "typing"}}, "leaves": {}})
        );
    }

    #[tokio::test]
    async fn changes_within_the_window_go_out_as_one_diff() {
        let h = host(Arc::new(MemoryPresence::new()), Duration::from_secs(90));
        let t = tid("acme");
        let (tx, mut rx) = crate::outbound::queue(16);
        let watcher = h.hub.connect(t.clone(), tx, 10);
        watcher.subscribe(&channel("room:1")).unwrap();
        for (conn, user) in [("c1", "ann"), ("c2", "bob"), ("c3", "cid")] {
            h.presence
                .join(&t, conn, user, "room:1", "1")
                .await
                .unwrap();
        }
        h.presence.leave("c3", "room:1").await.unwrap();
        let d = frame(rx.recv().await.unwrap());
        assert_eq!(
            d["data"],
            json!({"joins":{"ann":1,"bob":1},"leaves":{"cid":1}}),
            "cid joined and left within the window: only its leave"
        );
        tokio::time::sleep(COALESCE * 3).await;
        assert!(rx.try_recv().is_err(), "one diff");
    }

    #[tokio::test]
    async fn a_host_whose_heartbeats_lapsed_rejoins_its_users() {
        let store = Arc::new(MemoryPresence::new());
        let ttl = Duration::from_millis(300);
        let stalled = host(Arc::clone(&store), ttl);
        let other = host(store, ttl);
        let t = tid("acme");
        let (tx, mut rx) = crate::outbound::queue(16);
        let watcher = stalled.hub.connect(t.clone(), tx, 10);
        watcher.subscribe(&channel("room:1")).unwrap();
        stalled
            .presence
            .join(&t, "c1", "ann", "room:1", "1")
            .await
            .unwrap();
        assert_eq!(
            frame(rx.recv().await.unwrap())["data"]["joins"],
            json!({"ann": 1})
        );
        // No heartbeat for longer than the TTL: another host expires ann.
        tokio::time::sleep(ttl + ttl / 2).await;
        other.presence.maintain(std::slice::from_ref(&t)).await;
        assert!(
            other
                .presence
                .join(&t, "c9", "zed", "room:1", "0")
                .await
                .unwrap()
                .iter()
                .all(|m| m.key != "ann")
        );
        // The stalled host notices the lapse and joins ann again.
        stalled.presence.maintain(&[]).await;
        let back = loop {
            let f = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("the rejoin is announced")
                .unwrap();
            let f = frame(f);
            // (The heartbeat frame of this maintenance comes first.)
            if f["event"] != "heartbeat" {
                break f;
            }
            assert_eq!(f["data"], json!(["ann", "zed"]));
        };
        assert_eq!(back["data"]["joins"], json!({"ann": 1}), "{back}");
        let members = other
            .presence
            .join(&t, "c9", "zed", "room:1", "0")
            .await
            .unwrap();
        assert!(members.iter().any(|m| m.key == "ann"));
    }

    #[test]
    fn members_json_keeps_data_verbatim() {
        assert_eq!(
            members_json([("b", "{\"x\":1}"), ("a", "null")]),
            r#"{"a":null,"b":{"x":1}}"#
        );
        assert_eq!(members_json([("bad", "{not json")]), "{}");
    }
}
