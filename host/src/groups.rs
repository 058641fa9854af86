//! Broadcast groups on the wire: named groups of connections with roles,
//! fleet-wide, as the seeds' `createGroup` shows them to clients.
//!
//! A plugin creates a group with the `groups.create` import and makes the
//! calling connection a member with `groups.join` (typically from its
//! subscribe gate or an RPC). The membership is recorded in the
//! [`GroupStore`] (memory, or Redis for a fleet) at once — atomically
//! against the group's `max_members` across every host — and the host
//! then, for that connection:
//!
//! 1. subscribes it, through a second hub membership on the same outbound
//!    queue that this module owns, to `__group:{name}` (every member) and
//!    to the role's qualified hub topic `__group:{name}\x1f{role}` (see
//!    [`crate::hub`]: frames on it still name `__group:{name}`);
//! 2. sends it `members` `[{"role":…},…]` (one entry per live member);
//! 3. if it was not a member before, publishes `join` `{"role","count"}` on
//!    `__group:{name}` through the bus, so every host's members hear it.
//!
//! `groups.publish` sends a plugin's event to every member, or with a role
//! to the members of that role only. A member leaves with `groups.leave`
//! or when its connection closes (`leave` `{"role","count"}` is announced);
//! `groups.close` removes every member, sends them `close` (null) and
//! refuses later joins.
//!
//! Crashed hosts: every [`heartbeat_interval`] of the member TTL this host
//! refreshes its members' deadlines and expires every tenant's members
//! whose deadline passed — those of a host that died — announcing their
//! `leave` (each exactly once, whichever host expires it). A member the
//! store no longer has live (a lapse of heartbeats during an outage, or
//! its group closed or deleted elsewhere) is joined again with its role,
//! or, if that is refused, forgotten.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;

use tokio::task::JoinHandle;

use crate::backend::groups::{
    GroupInfo, GroupStore, Joined, MemberRef, Role, UNLIMITED_MEMBERS, heartbeat_interval,
};
use crate::backend::{BackendError, Bus};
use crate::hub::{Hub, HubConnection, Outbound, QUALIFIER};
use crate::protocol;
use crate::tenant::TenantId;

/// The reserved topic prefix group frames travel on: `__group:{name}`.
pub const GROUP_TOPIC_PREFIX: &str = "__group:";
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 200;
/// Most groups one connection may be a member of at once.
pub const MAX_GROUPS_PER_CONNECTION: usize = 64;
/// The event names the host sends on `__group:{name}`; a plugin may not
/// publish them.
pub const RESERVED_EVENTS: [&str; 4] = ["join", "leave", "members", "close"];
/// Dead members expired per store call in one sweep.
const EXPIRE_BATCH: usize = 512;

/// `__group:{name}`: every member's topic.
pub fn channel(name: &str) -> String {
    let mut c = String::with_capacity(GROUP_TOPIC_PREFIX.len() + name.len());
    c.push_str(GROUP_TOPIC_PREFIX);
    c.push_str(name);
    c
}

/// The hub topic of the members of `name` with `role` (frames on it name
/// `__group:{name}`).
fn role_channel(name: &str, role: Role) -> String {
    format!("{GROUP_TOPIC_PREFIX}{name}{QUALIFIER}{role}")
}

/// Check a group name: 1 to [`MAX_GROUP_NAME_BYTES`] bytes of printable
/// ASCII without `"` or `\` (it becomes part of a wire topic).
pub fn check_group_name(name: &str) -> Result<(), BackendError> {
    if name.is_empty() {
        return Err(BackendError::Invalid("group name must not be empty".into()));
    }
    if name.len() > MAX_GROUP_NAME_BYTES {
        return Err(BackendError::TooLarge(format!(
            "group name is {} bytes, the limit is {MAX_GROUP_NAME_BYTES}",
            name.len()
        )));
    }
    if let Some(i) = name
        .bytes()
        .position(|b| !(0x20..=0x7E).contains(&b) || b == b'"' || b == b'\\')
    {
        return Err(BackendError::Invalid(format!(
            "group name has a character at byte {i} outside printable ASCII, or a quote or backslash"
        )));
    }
    Ok(())
}

/// The data of `join` / `leave`: `{"role":…,"count":…}`.
pub fn role_count_json(role: Role, count: u64) -> String {
    format!("{{\"role\":\"{role}\",\"count\":{count}}}")
}

/// The data of `members`: `[{"role":…},…]`.
pub fn members_json(roles: impl IntoIterator<Item = Role>) -> String {
    let list: Vec<String> = roles
        .into_iter()
        .map(|role| format!("{{\"role\":\"{role}\"}}"))
        .collect();
    format!("[{}]", list.join(","))
}

/// One connection's memberships on this host.
struct Local {
    tenant: TenantId,
    /// The second hub membership (on the connection's own queue) the
    /// group topics are subscribed on.
    hub: HubConnection,
    /// Group → the member's role.
    groups: HashMap<String, Role>,
}

/// This host's broadcast groups: the store, the hub and bus the frames go
/// through, and the memberships of this host's connections. Share it as
/// `Arc<Groups>`.
pub struct Groups {
    store: Arc<dyn GroupStore>,
    hub: Arc<Hub>,
    bus: Arc<dyn Bus>,
    instance: String,
    ttl: Duration,
    local: Mutex<HashMap<String, Local>>,
}

impl Groups {
    /// Groups kept in `store`, delivered through `hub` and `bus`, whose
    /// members live `member_ttl` without a heartbeat (the seeds'
    /// `memberTtl`), for this host (a fresh instance id).
    pub fn new(
        store: Arc<dyn GroupStore>,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        member_ttl: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            hub,
            bus,
            instance: uuid::Uuid::new_v4().to_string(),
            ttl: member_ttl,
            local: Mutex::new(HashMap::new()),
        })
    }

    /// The store (for purging a tenant).
    pub fn store(&self) -> &Arc<dyn GroupStore> {
        &self.store
    }

    /// This host's instance id in the store.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The groups connection `conn` is a member of through this host,
    /// sorted.
    pub fn groups_of(&self, conn: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .local
            .lock()
            .get(conn)
            .map(|l| l.groups.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Create group `name` of `tenant` (`max_members` `None`: no limit of
    /// its own) with JSON `meta`, or return the existing one unchanged.
    pub async fn create(
        &self,
        tenant: &TenantId,
        name: &str,
        max_members: Option<u32>,
        meta: &str,
    ) -> Result<GroupInfo, BackendError> {
        check_group_name(name)?;
        self.store
            .create_or_get(tenant, name, max_members.unwrap_or(UNLIMITED_MEMBERS), meta)
            .await
    }

    /// Make connection `conn` of `tenant`, whose frames go to `outbound`, a
    /// member of `name` with `role` (see the module docs). `QuotaExceeded`
    /// when the group is full or the connection is in
    /// [`MAX_GROUPS_PER_CONNECTION`] groups, `AccessDenied` when the group
    /// is closed or the connection is gone, `Invalid` when there is no
    /// such group.
    pub async fn join(
        &self,
        tenant: &TenantId,
        conn: &str,
        outbound: &crate::outbound::Sender,
        name: &str,
        role: Role,
    ) -> Result<Joined, BackendError> {
        check_group_name(name)?;
        if let Some(l) = self.local.lock().get(conn)
            && !l.groups.contains_key(name)
            && l.groups.len() >= MAX_GROUPS_PER_CONNECTION
        {
            return Err(BackendError::QuotaExceeded(format!(
                "a connection may be in at most {MAX_GROUPS_PER_CONNECTION} groups"
            )));
        }
        let joined = self
            .store
            .join(tenant, name, conn, &self.instance, role, self.ttl)
            .await?;
        if !self.attach(tenant, conn, outbound, name, joined.role) {
            // The connection closed meanwhile (its `leave_all` has run).
            if let Err(e) = self.store.leave(tenant, name, conn).await {
                tracing::warn!(%tenant, group = name, error = %e, "group leave failed; it will expire");
            }
            return Err(BackendError::AccessDenied(
                "the connection is closed".into(),
            ));
        }
        let all = channel(name);
        self.bus.ready(tenant, &all).await;
        self.bus
            .ready(tenant, &role_channel(name, joined.role))
            .await;
        match self.store.members(tenant, name).await {
            Ok(members) => {
                let data = members_json(members.iter().map(|m| m.role));
                let frame = protocol::envelope(&all, "members", &data, None);
                // A full queue drops it, like any frame to a slow consumer.
                let _ = outbound.try_send(Outbound::Text(Utf8Bytes::from(frame)));
            }
            Err(e) => {
                tracing::warn!(%tenant, group = name, error = %e, "group members not sent");
            }
        }
        if joined.new {
            self.announce(tenant, name, "join", joined.role, joined.count)
                .await;
        }
        Ok(joined)
    }

    /// Subscribe `conn`'s group membership to `name`'s topics; `false` if
    /// the connection's queue is closed.
    fn attach(
        &self,
        tenant: &TenantId,
        conn: &str,
        outbound: &crate::outbound::Sender,
        name: &str,
        role: Role,
    ) -> bool {
        if outbound.is_closed() {
            return false;
        }
        let mut local = self.local.lock();
        let l = local.entry(conn.to_owned()).or_insert_with(|| Local {
            tenant: tenant.clone(),
            // Two topics per group; the per-connection bound is checked
            // before joining.
            hub: self.hub.connect(
                tenant.clone(),
                outbound.clone(),
                2 * MAX_GROUPS_PER_CONNECTION + 2,
            ),
            groups: HashMap::new(),
        });
        if let Some(old) = l.groups.insert(name.to_owned(), role)
            && old != role
        {
            l.hub.unsubscribe(&role_channel(name, old));
        }
        for topic in [channel(name), role_channel(name, role)] {
            if let Err(e) = l.hub.subscribe(&topic) {
                tracing::warn!(%tenant, group = name, error = %e, "group subscription failed");
            }
        }
        true
    }

    /// Unsubscribe `conn` from `name`'s topics; its queue and role if it
    /// was attached.
    fn detach(&self, conn: &str, name: &str) -> Option<(crate::outbound::Sender, Role)> {
        let mut local = self.local.lock();
        let l = local.get_mut(conn)?;
        let role = l.groups.remove(name)?;
        l.hub.unsubscribe(&channel(name));
        l.hub.unsubscribe(&role_channel(name, role));
        let queue = l.hub.outbound();
        if l.groups.is_empty() {
            local.remove(conn);
        }
        Some((queue, role))
    }

    /// Make connection `conn` of `tenant` leave `name`; `false` if it was
    /// not a member.
    pub async fn leave(
        &self,
        tenant: &TenantId,
        conn: &str,
        name: &str,
    ) -> Result<bool, BackendError> {
        check_group_name(name)?;
        // Detached first, so no heartbeat joins it again meanwhile; if the
        // store fails, the member expires.
        self.detach(conn, name);
        let left = self.store.leave(tenant, name, conn).await?;
        match left.role {
            Some(role) => {
                self.announce(tenant, name, "leave", role, left.count).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Make `conn` leave every group (it closed). Failures are logged; the
    /// store's expiry removes what could not be.
    pub async fn leave_all(&self, conn: &str) {
        let Some(l) = self.local.lock().remove(conn) else {
            return;
        };
        l.hub.close();
        for name in l.groups.keys() {
            match self.store.leave(&l.tenant, name, conn).await {
                Ok(left) => {
                    if let Some(role) = left.role {
                        self.announce(&l.tenant, name, "leave", role, left.count)
                            .await;
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %l.tenant, group = name, error = %e, "group leave failed; it will expire");
                }
            }
        }
    }

    /// Send `event` with JSON `data` to the members of `name` (with
    /// `role`, only to those of that role) on every host. `Invalid` for
    /// the host's own event names ([`RESERVED_EVENTS`]).
    pub async fn publish(
        &self,
        tenant: &TenantId,
        name: &str,
        event: &str,
        data: &str,
        role: Option<Role>,
    ) -> Result<(), BackendError> {
        check_group_name(name)?;
        if RESERVED_EVENTS.contains(&event) {
            return Err(BackendError::Invalid(format!(
                "the group event {event:?} is the host's"
            )));
        }
        let topic = match role {
            Some(role) => role_channel(name, role),
            None => channel(name),
        };
        self.bus.publish(tenant, &topic, event, data).await
    }

    /// Close `name`: every member is removed and sent `close`, later joins
    /// are refused. Returns how many members it had.
    pub async fn close(&self, tenant: &TenantId, name: &str) -> Result<usize, BackendError> {
        check_group_name(name)?;
        let removed = self.store.close(tenant, name).await?;
        let all = channel(name);
        let frame = Utf8Bytes::from(protocol::envelope(&all, "close", "null", None));
        for m in removed.iter().filter(|m| m.instance == self.instance) {
            // This host's members are told directly and detached before the
            // fleet-wide `close` goes out, so they get it once.
            if let Some((queue, _)) = self.detach(&m.id, name) {
                let _ = queue.try_send(Outbound::Text(frame.clone()));
            }
        }
        if !removed.is_empty()
            && let Err(e) = self.bus.publish(tenant, &all, "close", "null").await
        {
            tracing::warn!(%tenant, group = name, error = %e, "group close not announced");
        }
        Ok(removed.len())
    }

    /// Publish `event` (`join` or `leave`) `{"role","count"}` on
    /// `__group:{name}` (logged, not returned, on failure: the membership
    /// is in the store either way).
    async fn announce(&self, tenant: &TenantId, name: &str, event: &str, role: Role, count: u64) {
        if let Err(e) = self
            .bus
            .publish(tenant, &channel(name), event, &role_count_json(role, count))
            .await
        {
            tracing::warn!(%tenant, group = name, event, error = %e, "group event not published");
        }
    }

    /// One heartbeat: forget connections whose queue closed without a
    /// `leave_all`, refresh this host's members (joining again those the
    /// store lost, forgetting those it refuses), then expire every
    /// tenant's dead members, announcing their `leave`.
    pub async fn maintain(&self, tenants: &[TenantId]) {
        let gone: Vec<String> = self
            .local
            .lock()
            .iter()
            .filter(|(_, l)| l.hub.outbound().is_closed())
            .map(|(conn, _)| conn.clone())
            .collect();
        for conn in gone {
            self.leave_all(&conn).await;
        }
        let held: Vec<(MemberRef, Role)> = self
            .local
            .lock()
            .iter()
            .flat_map(|(conn, l)| {
                l.groups.iter().map(move |(name, role)| {
                    let r = MemberRef {
                        tenant: l.tenant.clone(),
                        group: name.clone(),
                        member: conn.clone(),
                    };
                    (r, *role)
                })
            })
            .collect();
        if !held.is_empty() {
            let refs: Vec<MemberRef> = held.iter().map(|(r, _)| r.clone()).collect();
            match self.store.heartbeat(&self.instance, &refs, self.ttl).await {
                Ok(lost) => {
                    let roles: HashMap<&MemberRef, Role> =
                        held.iter().map(|(r, role)| (r, *role)).collect();
                    for r in &lost {
                        if let Some(role) = roles.get(r) {
                            self.rejoin(r, *role).await;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "group heartbeat failed"),
            }
        }
        for tenant in tenants {
            loop {
                let expired = match self.store.expire(tenant, EXPIRE_BATCH).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(%tenant, error = %e, "group expiry failed");
                        break;
                    }
                };
                for e in &expired {
                    self.announce(tenant, &e.group, "leave", e.role, e.count)
                        .await;
                }
                if expired.len() < EXPIRE_BATCH {
                    break;
                }
            }
        }
    }

    /// Join a member the store lost again with its role, or forget it if
    /// the store refuses (closed, deleted, full meanwhile).
    async fn rejoin(&self, r: &MemberRef, role: Role) {
        let attached = self
            .local
            .lock()
            .get(&r.member)
            .is_some_and(|l| l.groups.get(&r.group) == Some(&role));
        if !attached {
            // Left meanwhile.
            return;
        }
        match self
            .store
            .join(
                &r.tenant,
                &r.group,
                &r.member,
                &self.instance,
                role,
                self.ttl,
            )
            .await
        {
            Ok(joined) => {
                if joined.new {
                    self.announce(&r.tenant, &r.group, "join", joined.role, joined.count)
                        .await;
                }
            }
            Err(BackendError::Unavailable(_) | BackendError::Timeout) => {}
            Err(e) => {
                tracing::debug!(tenant = %r.tenant, group = r.group, error = %e, "group member dropped");
                self.detach(&r.member, &r.group);
            }
        }
    }

    /// Run [`Groups::maintain`] every heartbeat over the tenants `tenants`
    /// lists, until the returned task is aborted.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        tenants: impl Fn() -> Vec<TenantId> + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        let groups = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat_interval(groups.ttl));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                groups.maintain(&tenants()).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::groups::DEFAULT_MEMBER_TTL;
    use crate::backend::groups::memory::MemoryGroups;
    use crate::backend::memory::MemoryBus;
    use serde_json::{Value, json};

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn frame(o: Outbound) -> Value {
        let Outbound::Text(t) = o;
        serde_json::from_str(t.as_str()).unwrap()
    }

    /// The frames queued so far, as `(event, data)` (all on `topic`).
    fn drain(rx: &mut crate::outbound::Receiver, topic: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            let f = frame(o);
            assert_eq!(f["topic"], topic);
            out.push((f["event"].as_str().unwrap().to_owned(), f["data"].clone()));
        }
        out
    }

    /// A host: its groups on `store`, its own hub and memory bus.
    fn host(store: Arc<MemoryGroups>, ttl: Duration) -> (Arc<Groups>, Arc<Hub>) {
        let hub = Hub::new();
        let bus = Arc::new(MemoryBus::new(Arc::clone(&hub)));
        (Groups::new(store, Arc::clone(&hub), bus, ttl), hub)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn members_hear_joins_leaves_and_role_filtered_events() {
        let (g, _hub) = host(Arc::new(MemoryGroups::new()), DEFAULT_MEMBER_TTL);
        let t = tid("acme");
        let info = g
            .create(&t, "lobby", Some(2), r#"{"game":"chess"}"#)
            .await
            .unwrap();
        assert!(info.created);
        let (atx, mut arx) = crate::outbound::queue(64);
        let (btx, mut brx) = crate::outbound::queue(64);
        let (ctx, _crx) = crate::outbound::queue(64);

        let j = g.join(&t, "a", &atx, "lobby", Role::Admin).await.unwrap();
        assert_eq!((j.new, j.role, j.count), (true, Role::Admin, 1));
        settle().await;
        assert_eq!(
            drain(&mut arx, "__group:lobby"),
            [
                ("members".into(), json!([{"role": "admin"}])),
                ("join".into(), json!({"role": "admin", "count": 1})),
            ]
        );
        g.join(&t, "b", &btx, "lobby", Role::Viewer).await.unwrap();
        settle().await;
        assert_eq!(
            drain(&mut arx, "__group:lobby"),
            [("join".into(), json!({"role": "viewer", "count": 2}))]
        );
        assert_eq!(
            drain(&mut brx, "__group:lobby"),
            [
                (
                    "members".into(),
                    json!([{"role": "admin"}, {"role": "viewer"}])
                ),
                ("join".into(), json!({"role": "viewer", "count": 2})),
            ]
        );
        // Full: refused, nothing announced.
        let full = g.join(&t, "c", &ctx, "lobby", Role::Member).await;
        assert!(
            matches!(full, Err(BackendError::QuotaExceeded(_))),
            "{full:?}"
        );

        g.publish(&t, "lobby", "move", r#"{"to":"e4"}"#, None)
            .await
            .unwrap();
        g.publish(&t, "lobby", "secret", "1", Some(Role::Admin))
            .await
            .unwrap();
        settle().await;
        assert_eq!(
            drain(&mut arx, "__group:lobby"),
            [
                ("move".into(), json!({"to": "e4"})),
                ("secret".into(), json!(1)),
            ]
        );
        assert_eq!(
            drain(&mut brx, "__group:lobby"),
            [("move".into(), json!({"to": "e4"}))],
            "the viewer does not get the admins' event"
        );
        for reserved in RESERVED_EVENTS {
            assert!(matches!(
                g.publish(&t, "lobby", reserved, "null", None).await,
                Err(BackendError::Invalid(_))
            ));
        }

        assert!(g.leave(&t, "b", "lobby").await.unwrap());
        assert!(!g.leave(&t, "b", "lobby").await.unwrap(), "already left");
        settle().await;
        assert_eq!(
            drain(&mut arx, "__group:lobby"),
            [("leave".into(), json!({"role": "viewer", "count": 1}))]
        );
        g.publish(&t, "lobby", "move", "2", None).await.unwrap();
        settle().await;
        assert!(drain(&mut brx, "__group:lobby").is_empty(), "b left");
        assert_eq!(g.groups_of("a"), ["lobby"]);
        assert!(g.groups_of("b").is_empty());

        // A closing connection leaves every group.
        g.join(&t, "c", &ctx, "lobby", Role::Member).await.unwrap();
        settle().await;
        drain(&mut arx, "__group:lobby");
        g.leave_all("c").await;
        settle().await;
        assert_eq!(
            drain(&mut arx, "__group:lobby"),
            [("leave".into(), json!({"role": "member", "count": 1}))]
        );
    }

    #[tokio::test]
    async fn close_tells_every_member_once_and_refuses_joins() {
        let store = Arc::new(MemoryGroups::new());
        let (a, _ha) = host(Arc::clone(&store), DEFAULT_MEMBER_TTL);
        let (b, _hb) = host(Arc::clone(&store), DEFAULT_MEMBER_TTL);
        let t = tid("acme");
        a.create(&t, "room", None, "{}").await.unwrap();
        let (atx, mut arx) = crate::outbound::queue(64);
        let (btx, mut brx) = crate::outbound::queue(64);
        a.join(&t, "a1", &atx, "room", Role::Member).await.unwrap();
        b.join(&t, "b1", &btx, "room", Role::Member).await.unwrap();
        settle().await;
        drain(&mut arx, "__group:room");
        drain(&mut brx, "__group:room");

        assert_eq!(a.close(&t, "room").await, Ok(2));
        settle().await;
        assert_eq!(
            drain(&mut arx, "__group:room"),
            [("close".into(), Value::Null)]
        );
        assert!(a.groups_of("a1").is_empty());
        let again = a.join(&t, "a1", &atx, "room", Role::Member).await;
        assert!(
            matches!(again, Err(BackendError::AccessDenied(_))),
            "{again:?}"
        );
        // Host b (its own memory bus: the close did not reach it) finds its
        // member gone at its next heartbeat and forgets it.
        assert_eq!(b.groups_of("b1"), ["room"]);
        b.maintain(&[]).await;
        assert!(b.groups_of("b1").is_empty());
        b.publish(&t, "room", "late", "1", None).await.unwrap();
        settle().await;
        assert!(drain(&mut brx, "__group:room").is_empty());
    }

    #[tokio::test]
    async fn a_crashed_hosts_members_expire_and_a_lapsed_member_rejoins() {
        let store = Arc::new(MemoryGroups::new());
        let ttl = Duration::from_millis(300);
        let (crashed, _hc) = host(Arc::clone(&store), ttl);
        let (alive, _ha) = host(Arc::clone(&store), ttl);
        let t = tid("acme");
        alive.create(&t, "g", None, "{}").await.unwrap();
        let (ctx, _crx) = crate::outbound::queue(64);
        let (atx, mut arx) = crate::outbound::queue(64);
        crashed
            .join(&t, "c1", &ctx, "g", Role::Admin)
            .await
            .unwrap();
        alive.join(&t, "a1", &atx, "g", Role::Member).await.unwrap();
        for _ in 0..5 {
            tokio::time::sleep(ttl / 3).await;
            alive.maintain(std::slice::from_ref(&t)).await;
        }
        settle().await;
        let events = drain(&mut arx, "__group:g");
        assert!(
            events.contains(&("leave".into(), json!({"role": "admin", "count": 1}))),
            "{events:?}"
        );
        assert_eq!(store.count(&t, "g").await, Ok(1));

        // `alive` stops beating for longer than the TTL (an outage): its
        // member dies, and the next heartbeat joins it again.
        tokio::time::sleep(ttl + ttl / 2).await;
        assert_eq!(store.count(&t, "g").await, Ok(0));
        alive.maintain(&[]).await;
        assert_eq!(store.count(&t, "g").await, Ok(1));
        assert_eq!(alive.groups_of("a1"), ["g"]);
    }

    #[tokio::test]
    async fn names_and_per_connection_bounds_are_checked() {
        let (g, _hub) = host(Arc::new(MemoryGroups::new()), DEFAULT_MEMBER_TTL);
        let t = tid("acme");
        for bad in ["", "a\"b", "a\\b", "é", "a\u{1f}b"] {
            assert!(
                matches!(
                    g.create(&t, bad, None, "{}").await,
                    Err(BackendError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            g.create(&t, &"x".repeat(MAX_GROUP_NAME_BYTES + 1), None, "{}")
                .await,
            Err(BackendError::TooLarge(_))
        ));
        let (tx, _rx) = crate::outbound::queue(4096);
        for i in 0..MAX_GROUPS_PER_CONNECTION {
            let name = format!("g{i}");
            g.create(&t, &name, None, "{}").await.unwrap();
            g.join(&t, "c", &tx, &name, Role::Member).await.unwrap();
        }
        g.create(&t, "one-more", None, "{}").await.unwrap();
        assert!(matches!(
            g.join(&t, "c", &tx, "one-more", Role::Member).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        // Joining a group it is in again is fine.
        let j = g.join(&t, "c", &tx, "g0", Role::Admin).await.unwrap();
        assert_eq!(
            (j.new, j.role),
            (false, Role::Member),
            "the first role is kept"
        );
        // A connection whose queue closed is refused and not stored.
        let (gone_tx, gone_rx) = crate::outbound::queue(4);
        drop(gone_rx);
        assert!(matches!(
            g.join(&t, "gone", &gone_tx, "g0", Role::Member).await,
            Err(BackendError::AccessDenied(_))
        ));
        assert_eq!(g.store().count(&t, "g0").await, Ok(1));
    }
}
