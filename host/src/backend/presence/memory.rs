//! The in-process presence store: per-tenant maps with tokio
//! [`Instant`] deadlines, the twin of [`super::redis::RedisPresence`].
//!
//! Per tenant: topic → user key → user (data plus its connections, each
//! with its instance and deadline), and one ordered set of every
//! connection by deadline (what [`PresenceStore::expire`] walks). Bounded
//! by [`PresenceLimits`] per tenant; the number of tenants is bounded by
//! the tenant registry. A tenant's state is dropped when it holds nothing.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{
    ConnRef, Expired, Joined, Left, Member, PresenceLimits, PresenceStore, check_heartbeat,
    check_join, check_name,
};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Number of shards (a power of two); a tenant lives in one shard.
const SHARDS: usize = 16;

struct Conn {
    instance: String,
    deadline: Instant,
}

#[derive(Default)]
struct User {
    data: String,
    /// Connection id → connection; at most `max_conns_per_user` live ones.
    conns: HashMap<String, Conn>,
}

impl User {
    fn is_live(&self, now: Instant) -> bool {
        self.conns.values().any(|c| c.deadline > now)
    }
}

/// `(deadline, topic, user key, connection id)`.
type DeadlineEntry = (Instant, String, String, String);

#[derive(Default)]
struct TenantState {
    /// Topic → user key → user; at most `max_users_per_topic` users a topic.
    topics: HashMap<String, HashMap<String, User>>,
    /// Every connection of the tenant by deadline (at most
    /// `max_conns_per_tenant`).
    deadlines: BTreeSet<DeadlineEntry>,
}

impl TenantState {
    fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    fn user(&self, topic: &str, user: &str) -> Option<&User> {
        self.topics.get(topic)?.get(user)
    }

    fn user_mut(&mut self, topic: &str, user: &str) -> Option<&mut User> {
        self.topics.get_mut(topic)?.get_mut(user)
    }

    /// Whether any user of `topic` is live.
    fn topic_live(&self, topic: &str, now: Instant) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|users| users.values().any(|u| u.is_live(now)))
    }

    /// Remove one connection (the user stays, even with no connections).
    fn remove_conn(&mut self, topic: &str, user: &str, conn: &str) {
        let Some(u) = self.user_mut(topic, user) else {
            return;
        };
        if let Some((id, c)) = u.conns.remove_entry(conn) {
            self.deadlines
                .remove(&(c.deadline, topic.to_owned(), user.to_owned(), id));
        }
    }

    /// Remove the dead connections of one user (the user stays).
    fn prune(&mut self, topic: &str, user: &str, now: Instant) {
        let dead: Vec<String> = match self.user(topic, user) {
            Some(u) => u
                .conns
                .iter()
                .filter(|(_, c)| c.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect(),
            None => return,
        };
        for conn in dead {
            self.remove_conn(topic, user, &conn);
        }
    }

    /// Remove a user with whatever connections it has left; the topic goes
    /// when it has no users.
    fn drop_user(&mut self, topic: &str, user: &str) -> Option<User> {
        let users = self.topics.get_mut(topic)?;
        let removed = users.remove(user)?;
        if users.is_empty() {
            self.topics.remove(topic);
        }
        for (id, c) in &removed.conns {
            self.deadlines
                .remove(&(c.deadline, topic.to_owned(), user.to_owned(), id.clone()));
        }
        Some(removed)
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        limits: &PresenceLimits,
        topic: &str,
        user: &str,
        instance: &str,
        conn: &str,
        data: &str,
        now: Instant,
        deadline: Instant,
    ) -> Result<Joined, BackendError> {
        let topic_was_empty = !self.topic_live(topic, now);
        let (live_conns, dead_conns, mine_live) = match self.user(topic, user) {
            None => (0, 0, false),
            Some(u) => {
                let live = u.conns.values().filter(|c| c.deadline > now).count();
                let mine = u.conns.get(conn).is_some_and(|c| c.deadline > now);
                (live, u.conns.len() - live, mine)
            }
        };
        if !mine_live {
            if live_conns + 1 > limits.max_conns_per_user {
                return Err(BackendError::QuotaExceeded(format!(
                    "a user may hold {} connections on a topic",
                    limits.max_conns_per_user
                )));
            }
            let users = self.topics.get(topic).map_or(0, HashMap::len);
            if self.user(topic, user).is_none() && users + 1 > limits.max_users_per_topic {
                return Err(BackendError::QuotaExceeded(format!(
                    "a topic may hold {} present users",
                    limits.max_users_per_topic
                )));
            }
            if self.deadlines.len() - dead_conns + 1 > limits.max_conns_per_tenant {
                return Err(BackendError::QuotaExceeded(format!(
                    "a tenant may hold {} presence connections",
                    limits.max_conns_per_tenant
                )));
            }
        }
        self.prune(topic, user, now);
        self.remove_conn(topic, user, conn);
        let u = self
            .topics
            .entry(topic.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_default();
        data.clone_into(&mut u.data);
        u.conns.insert(
            conn.to_owned(),
            Conn {
                instance: instance.to_owned(),
                deadline,
            },
        );
        self.deadlines
            .insert((deadline, topic.to_owned(), user.to_owned(), conn.to_owned()));
        Ok(Joined {
            first: live_conns == 0,
            topic_was_empty,
        })
    }

    fn leave(&mut self, topic: &str, user: &str, conn: &str, now: Instant) -> Left {
        let known = self
            .user(topic, user)
            .is_some_and(|u| u.conns.contains_key(conn));
        let mut left = Left {
            last: false,
            data: None,
            topic_now_empty: false,
        };
        if known {
            self.remove_conn(topic, user, conn);
            self.prune(topic, user, now);
            if self.user(topic, user).is_some_and(|u| u.conns.is_empty()) {
                left.last = true;
                left.data = self.drop_user(topic, user).map(|u| u.data);
            }
        }
        left.topic_now_empty = !self.topic_live(topic, now);
        left
    }

    /// Refresh one connection if it is live and `instance`'s.
    fn refresh(&mut self, c: &ConnRef, instance: &str, now: Instant, deadline: Instant) {
        let TenantState { topics, deadlines } = self;
        let Some(entry) = topics
            .get_mut(&c.topic)
            .and_then(|users| users.get_mut(&c.user_key))
            .and_then(|u| u.conns.get_mut(&c.conn))
        else {
            return;
        };
        if entry.deadline <= now || entry.instance != instance {
            return;
        }
        deadlines.remove(&(
            entry.deadline,
            c.topic.clone(),
            c.user_key.clone(),
            c.conn.clone(),
        ));
        entry.deadline = deadline;
        deadlines.insert((
            deadline,
            c.topic.clone(),
            c.user_key.clone(),
            c.conn.clone(),
        ));
    }

    fn expire(&mut self, limit: usize, now: Instant) -> Vec<Expired> {
        let due: Vec<DeadlineEntry> = self
            .deadlines
            .iter()
            .take_while(|(at, ..)| *at <= now)
            .take(limit)
            .cloned()
            .collect();
        let mut gone = Vec::new();
        for (_, topic, user, conn) in due {
            self.remove_conn(&topic, &user, &conn);
            if self.user(&topic, &user).is_some_and(|u| u.conns.is_empty())
                && let Some(u) = self.drop_user(&topic, &user)
            {
                gone.push((topic, user, u.data));
            }
        }
        gone.into_iter()
            .map(|(topic, user_key, data)| Expired {
                topic_now_empty: !self.topic_live(&topic, now),
                topic,
                user_key,
                data,
            })
            .collect()
    }
}

type Shard = HashMap<TenantId, TenantState>;

/// A [`PresenceStore`] in this process's memory (see the module docs).
/// Every operation holds one shard's lock briefly and never awaits.
pub struct MemoryPresence {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    limits: PresenceLimits,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        Self::with_limits(PresenceLimits::default())
    }
}

impl MemoryPresence {
    /// An empty store with the default [`PresenceLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: PresenceLimits) -> Self {
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

    /// Connections stored for `tenant`, dead ones included.
    pub fn stored_conns(&self, tenant: &TenantId) -> usize {
        self.shard(tenant)
            .lock()
            .get(tenant)
            .map_or(0, |s| s.deadlines.len())
    }
}

fn deadline(now: Instant, ttl_ms: u64) -> Result<Instant, BackendError> {
    now.checked_add(Duration::from_millis(ttl_ms))
        .ok_or_else(|| BackendError::Invalid("ttl is too large".into()))
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn join(
        &self,
        tenant: &TenantId,
        topic: &str,
        user_key: &str,
        instance: &str,
        conn: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<Joined, BackendError> {
        let ttl_ms = check_join(topic, user_key, instance, conn, data, ttl)?;
        let now = Instant::now();
        let at = deadline(now, ttl_ms)?;
        self.with_tenant(tenant, |s| {
            s.join(&self.limits, topic, user_key, instance, conn, data, now, at)
        })
    }

    async fn leave(
        &self,
        tenant: &TenantId,
        topic: &str,
        user_key: &str,
        conn: &str,
    ) -> Result<Left, BackendError> {
        check_name("topic", topic)?;
        check_name("user key", user_key)?;
        check_name("connection id", conn)?;
        let now = Instant::now();
        Ok(self.with_tenant(tenant, |s| s.leave(topic, user_key, conn, now)))
    }

    async fn members(&self, tenant: &TenantId, topic: &str) -> Result<Vec<Member>, BackendError> {
        check_name("topic", topic)?;
        let now = Instant::now();
        let shard = self.shard(tenant).lock();
        let Some(users) = shard.get(tenant).and_then(|s| s.topics.get(topic)) else {
            return Ok(Vec::new());
        };
        let mut members: Vec<Member> = users
            .iter()
            .filter(|(_, u)| u.is_live(now))
            .map(|(key, u)| Member {
                key: key.clone(),
                data: u.data.clone(),
            })
            .collect();
        drop(shard);
        members.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        members.truncate(self.limits.max_users_per_topic);
        Ok(members)
    }

    async fn heartbeat(
        &self,
        instance: &str,
        conns: &[ConnRef],
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let ttl_ms = check_heartbeat(instance, conns, ttl)?;
        let now = Instant::now();
        let at = deadline(now, ttl_ms)?;
        for c in conns {
            let mut shard = self.shard(&c.tenant).lock();
            if let Some(state) = shard.get_mut(&c.tenant) {
                state.refresh(c, instance, now, at);
            }
        }
        Ok(())
    }

    async fn expire(&self, tenant: &TenantId, limit: usize) -> Result<Vec<Expired>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let mut shard = self.shard(tenant).lock();
        let Some(state) = shard.get_mut(tenant) else {
            return Ok(Vec::new());
        };
        let gone = state.expire(limit, now);
        if state.is_empty() {
            shard.remove(tenant);
        }
        Ok(gone)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let removed = self.shard(tenant).lock().remove(tenant);
        // Freed outside the lock.
        Ok(removed.map_or(0, |s| s.deadlines.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::presence::conformance;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn memory_presence_passes_the_conformance_suite() {
        let store = MemoryPresence::new();
        conformance::suite(&store).await;
        // The suite purges what it used: nothing is left behind.
        for shard in store.shards.iter() {
            assert!(shard.lock().is_empty());
        }
    }

    #[tokio::test]
    async fn memory_presence_passes_the_limits_suite() {
        let store = MemoryPresence::with_limits(conformance::SUITE_LIMITS);
        conformance::limits_suite(&store).await;
    }

    #[tokio::test]
    async fn leaving_frees_everything() {
        let store = MemoryPresence::new();
        let t = tid("acme");
        let ttl = Duration::from_secs(60);
        for i in 0..50 {
            let user = format!("u{}", i % 10);
            store
                .join(
                    &t,
                    &format!("room-{}", i % 5),
                    &user,
                    "i",
                    &format!("c{i}"),
                    "{}",
                    ttl,
                )
                .await
                .unwrap();
        }
        assert_eq!(store.stored_conns(&t), 50);
        for i in 0..50 {
            let user = format!("u{}", i % 10);
            store
                .leave(&t, &format!("room-{}", i % 5), &user, &format!("c{i}"))
                .await
                .unwrap();
        }
        assert_eq!(store.stored_conns(&t), 0);
        assert!(
            store.shard(&t).lock().get(&t).is_none(),
            "tenant state dropped"
        );
    }
}
