//! Backends routed per tenant: the "instance per tenant" tier, where some
//! tenants' data lives on a Redis server of their own
//! (`[redis.tenant_urls]`) and every other tenant shares the host's Redis.
//!
//! A host builds one complete set of Redis backends per Redis server (each
//! with its own connection, circuit breaker and bus subscription, see
//! [`crate::backend::redis::RedisBackends`]) and wraps each extension in a
//! [`Routed`], which hands every call to the backend of the call's tenant.
//! Every trait method names its tenant, so routing needs no other input and
//! a tenant's calls can never reach another Redis than its own. Calls that
//! carry several tenants at once (the presence and group heartbeats) are
//! split by route. The buses are built with the
//! [`TenantScope`](crate::tenant::TenantScope) of their route, so each
//! delivers, follows and sends `degraded` / `recovered` notices only for
//! its own tenants.
//!
//! Routing is fixed at start (from the config, the same on every host of a
//! fleet); a lookup is one hash probe per call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::cursor::{CursorEntry, CursorStore};
use super::groups::{
    ExpiredMember, GroupInfo, GroupStore, Joined as GroupJoined, Left as GroupLeft,
    Member as GroupMember, MemberRef, Role,
};
use super::idempotency::{IdemAcquire, IdempotencyStore};
use super::lock::{DistributedLock, LockLease};
use super::presence::{ConnRef, Expired, Joined, Left, Member, PresenceStore};
use super::presence_events::{Claimed, PresenceOutbox, Subject};
use super::publish_rate::{MergedRate, RateBoard, TopicRate};
use super::ratelimit::{RateDecision, RateLimitRule, RateLimiter};
use super::replay::{ReplayBuffer, ReplayPage};
use super::{BackendError, Bus, Kv, KvQuota};
use crate::tenant::TenantId;

/// One extension's backends: the shared one, and those of the tenants with
/// a Redis of their own (tenants on the same server share one backend).
/// Implements the extension's trait by routing each call.
pub struct Routed<T: ?Sized> {
    shared: Arc<T>,
    own: HashMap<TenantId, Arc<T>>,
}

impl<T: ?Sized> Routed<T> {
    /// `shared` for every tenant not in `own`, which maps each of the
    /// others to its backend.
    pub fn new(shared: Arc<T>, own: HashMap<TenantId, Arc<T>>) -> Self {
        Self { shared, own }
    }

    /// The backend serving `tenant`.
    pub fn route(&self, tenant: &TenantId) -> &Arc<T> {
        self.own.get(tenant).unwrap_or(&self.shared)
    }

    /// The items of `items` split by the backend serving their tenant
    /// (backends with no item are left out).
    fn split<'a, I: Clone>(
        &'a self,
        items: &[I],
        tenant: impl Fn(&I) -> &TenantId,
    ) -> Vec<(&'a Arc<T>, Vec<I>)> {
        let mut groups: Vec<(&'a Arc<T>, Vec<I>)> = Vec::new();
        for item in items {
            let route = self.route(tenant(item));
            match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, route)) {
                Some((_, group)) => group.push(item.clone()),
                None => groups.push((route, vec![item.clone()])),
            }
        }
        groups
    }
}

#[async_trait]
impl Bus for Routed<dyn Bus> {
    async fn publish(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
    ) -> Result<(), BackendError> {
        self.route(tenant).publish(tenant, topic, event, data).await
    }

    async fn ready(&self, tenant: &TenantId, topic: &str) {
        self.route(tenant).ready(tenant, topic).await;
    }
}

#[async_trait]
impl Kv for Routed<dyn Kv> {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.route(tenant).get(tenant, key).await
    }

    async fn set(
        &self,
        tenant: &TenantId,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        quota: KvQuota,
    ) -> Result<(), BackendError> {
        self.route(tenant).set(tenant, key, value, ttl, quota).await
    }

    async fn delete(&self, tenant: &TenantId, key: &str) -> Result<bool, BackendError> {
        self.route(tenant).delete(tenant, key).await
    }

    async fn incr(
        &self,
        tenant: &TenantId,
        key: &str,
        delta: i64,
        quota: KvQuota,
    ) -> Result<i64, BackendError> {
        self.route(tenant).incr(tenant, key, delta, quota).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }

    async fn stored(&self, tenant: &TenantId) -> Result<(u64, u64), BackendError> {
        self.route(tenant).stored(tenant).await
    }
}

#[async_trait]
impl ReplayBuffer for Routed<dyn ReplayBuffer> {
    async fn seq(&self, tenant: &TenantId, topic: &str) -> Result<u64, BackendError> {
        self.route(tenant).seq(tenant, topic).await
    }

    async fn since(
        &self,
        tenant: &TenantId,
        topic: &str,
        since: u64,
    ) -> Result<ReplayPage, BackendError> {
        self.route(tenant).since(tenant, topic, since).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }
}

#[async_trait]
impl RateLimiter for Routed<dyn RateLimiter> {
    async fn consume(
        &self,
        tenant: &TenantId,
        key: &str,
        rule: RateLimitRule,
        cost: u32,
    ) -> Result<RateDecision, BackendError> {
        self.route(tenant).consume(tenant, key, rule, cost).await
    }

    async fn reset(&self, tenant: &TenantId, key: &str) -> Result<(), BackendError> {
        self.route(tenant).reset(tenant, key).await
    }

    async fn ban(
        &self,
        tenant: &TenantId,
        key: &str,
        duration: Duration,
    ) -> Result<(), BackendError> {
        self.route(tenant).ban(tenant, key, duration).await
    }

    async fn unban(&self, tenant: &TenantId, key: &str) -> Result<(), BackendError> {
        self.route(tenant).unban(tenant, key).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }
}

#[async_trait]
impl DistributedLock for Routed<dyn DistributedLock> {
    async fn acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<LockLease>, BackendError> {
        self.route(tenant).acquire(tenant, key, ttl, wait).await
    }

    async fn refresh(
        &self,
        tenant: &TenantId,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.route(tenant).refresh(tenant, key, token, ttl).await
    }

    async fn release(
        &self,
        tenant: &TenantId,
        key: &str,
        token: u64,
    ) -> Result<bool, BackendError> {
        self.route(tenant).release(tenant, key, token).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }
}

#[async_trait]
impl IdempotencyStore for Routed<dyn IdempotencyStore> {
    async fn acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        pending_ttl: Duration,
    ) -> Result<IdemAcquire, BackendError> {
        self.route(tenant).acquire(tenant, key, pending_ttl).await
    }

    async fn commit(
        &self,
        tenant: &TenantId,
        key: &str,
        result: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        self.route(tenant).commit(tenant, key, result, ttl).await
    }

    async fn abort(&self, tenant: &TenantId, key: &str) -> Result<bool, BackendError> {
        self.route(tenant).abort(tenant, key).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }
}

#[async_trait]
impl PresenceStore for Routed<dyn PresenceStore> {
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
        self.route(tenant)
            .join(tenant, topic, user_key, instance, conn, data, ttl)
            .await
    }

    async fn leave(
        &self,
        tenant: &TenantId,
        topic: &str,
        user_key: &str,
        conn: &str,
    ) -> Result<Left, BackendError> {
        self.route(tenant)
            .leave(tenant, topic, user_key, conn)
            .await
    }

    async fn members(&self, tenant: &TenantId, topic: &str) -> Result<Vec<Member>, BackendError> {
        self.route(tenant).members(tenant, topic).await
    }

    /// Each route's connections go to its store; every route is tried, and
    /// the first failure (if any) is returned.
    async fn heartbeat(
        &self,
        instance: &str,
        conns: &[ConnRef],
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let mut result = Ok(());
        for (store, conns) in self.split(conns, |c| &c.tenant) {
            let beat = store.heartbeat(instance, &conns, ttl).await;
            if result.is_ok() {
                result = beat;
            }
        }
        result
    }

    async fn expire(&self, tenant: &TenantId, limit: usize) -> Result<Vec<Expired>, BackendError> {
        self.route(tenant).expire(tenant, limit).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }
}

#[async_trait]
impl PresenceOutbox for Routed<dyn PresenceOutbox> {
    async fn mark(
        &self,
        tenant: &TenantId,
        subjects: &[Subject],
        delay: Duration,
    ) -> Result<(), BackendError> {
        self.route(tenant).mark(tenant, subjects, delay).await
    }

    async fn claim(
        &self,
        tenant: &TenantId,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, BackendError> {
        self.route(tenant).claim(tenant, limit, lease).await
    }

    async fn begin(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        state: bool,
    ) -> Result<(), BackendError> {
        self.route(tenant).begin(tenant, claimed, state).await
    }

    async fn settle(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        state: bool,
    ) -> Result<(), BackendError> {
        self.route(tenant).settle(tenant, claimed, state).await
    }

    async fn retry(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        delay: Duration,
    ) -> Result<(), BackendError> {
        self.route(tenant).retry(tenant, claimed, delay).await
    }

    async fn pending(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).pending(tenant).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }
}

#[async_trait]
impl RateBoard for Routed<dyn RateBoard> {
    async fn report(
        &self,
        tenant: &TenantId,
        instance: &str,
        slice: &[TopicRate],
    ) -> Result<(), BackendError> {
        self.route(tenant).report(tenant, instance, slice).await
    }

    async fn merged(&self, tenant: &TenantId) -> Result<Vec<MergedRate>, BackendError> {
        self.route(tenant).merged(tenant).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }
}

#[async_trait]
impl GroupStore for Routed<dyn GroupStore> {
    async fn create_or_get(
        &self,
        tenant: &TenantId,
        name: &str,
        max_members: u32,
        meta: &str,
    ) -> Result<GroupInfo, BackendError> {
        self.route(tenant)
            .create_or_get(tenant, name, max_members, meta)
            .await
    }

    async fn meta(&self, tenant: &TenantId, name: &str) -> Result<Option<String>, BackendError> {
        self.route(tenant).meta(tenant, name).await
    }

    async fn set_meta(
        &self,
        tenant: &TenantId,
        name: &str,
        meta: &str,
    ) -> Result<(), BackendError> {
        self.route(tenant).set_meta(tenant, name, meta).await
    }

    async fn join(
        &self,
        tenant: &TenantId,
        name: &str,
        member: &str,
        instance: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<GroupJoined, BackendError> {
        self.route(tenant)
            .join(tenant, name, member, instance, role, ttl)
            .await
    }

    async fn leave(
        &self,
        tenant: &TenantId,
        name: &str,
        member: &str,
    ) -> Result<GroupLeft, BackendError> {
        self.route(tenant).leave(tenant, name, member).await
    }

    async fn members(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Vec<GroupMember>, BackendError> {
        self.route(tenant).members(tenant, name).await
    }

    async fn count(&self, tenant: &TenantId, name: &str) -> Result<u64, BackendError> {
        self.route(tenant).count(tenant, name).await
    }

    /// Each route's members go to its store; the members not refreshed by
    /// any of them, or the first failure.
    async fn heartbeat(
        &self,
        instance: &str,
        members: &[MemberRef],
        ttl: Duration,
    ) -> Result<Vec<MemberRef>, BackendError> {
        let mut missing = Vec::new();
        let mut failure = None;
        for (store, members) in self.split(members, |m| &m.tenant) {
            match store.heartbeat(instance, &members, ttl).await {
                Ok(lost) => missing.extend(lost),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(missing),
        }
    }

    async fn expire(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<ExpiredMember>, BackendError> {
        self.route(tenant).expire(tenant, limit).await
    }

    async fn close(&self, tenant: &TenantId, name: &str) -> Result<Vec<GroupMember>, BackendError> {
        self.route(tenant).close(tenant, name).await
    }

    async fn delete(&self, tenant: &TenantId, name: &str) -> Result<bool, BackendError> {
        self.route(tenant).delete(tenant, name).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }
}

#[async_trait]
impl CursorStore for Routed<dyn CursorStore> {
    async fn update(
        &self,
        tenant: &TenantId,
        topic: &str,
        key: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        self.route(tenant)
            .update(tenant, topic, key, data, ttl)
            .await
    }

    async fn remove(
        &self,
        tenant: &TenantId,
        topic: &str,
        key: &str,
    ) -> Result<bool, BackendError> {
        self.route(tenant).remove(tenant, topic, key).await
    }

    async fn snapshot(
        &self,
        tenant: &TenantId,
        topic: &str,
    ) -> Result<Vec<CursorEntry>, BackendError> {
        self.route(tenant).snapshot(tenant, topic).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        self.route(tenant).purge_tenant(tenant).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryKv;
    use crate::backend::presence::memory::MemoryPresence;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn own<T: ?Sized>(tenants: &[&str], backend: &Arc<T>) -> HashMap<TenantId, Arc<T>> {
        tenants
            .iter()
            .map(|t| (tid(t), Arc::clone(backend)))
            .collect()
    }

    /// Each tenant's data lands in its own route's store only.
    #[tokio::test]
    async fn calls_reach_the_tenants_own_backend() {
        let shared = Arc::new(MemoryKv::new());
        let own = Arc::new(MemoryKv::new());
        let kv = Routed::<dyn Kv>::new(
            shared.clone(),
            super::tests::own(&["acme", "beta"], &(own.clone() as Arc<dyn Kv>)),
        );
        let q = KvQuota::UNLIMITED;
        for t in ["acme", "beta", "gamma"] {
            kv.set(&tid(t), "k", t.as_bytes().to_vec(), None, q)
                .await
                .unwrap();
        }
        for (t, in_own) in [("acme", true), ("beta", true), ("gamma", false)] {
            let (has, lacks): (&dyn Kv, &dyn Kv) = if in_own {
                (&*own, &*shared)
            } else {
                (&*shared, &*own)
            };
            assert_eq!(has.get(&tid(t), "k").await.unwrap(), Some(t.into()));
            assert_eq!(lacks.get(&tid(t), "k").await.unwrap(), None);
            assert_eq!(kv.get(&tid(t), "k").await.unwrap(), Some(t.into()));
        }
    }

    /// A heartbeat carrying tenants of both routes refreshes each in its
    /// own store: nobody expires afterwards.
    #[tokio::test]
    async fn heartbeats_are_split_by_route() {
        let shared: Arc<dyn PresenceStore> = Arc::new(MemoryPresence::new());
        let own: Arc<dyn PresenceStore> = Arc::new(MemoryPresence::new());
        let presence = Routed::<dyn PresenceStore>::new(shared, super::tests::own(&["acme"], &own));
        let ttl = Duration::from_millis(60);
        let mut conns = Vec::new();
        for t in ["acme", "gamma"] {
            presence
                .join(&tid(t), "room", "ann", "h1", "c1", "{}", ttl)
                .await
                .unwrap();
            conns.push(ConnRef {
                tenant: tid(t),
                topic: "room".into(),
                user_key: "ann".into(),
                conn: "c1".into(),
            });
        }
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            presence
                .heartbeat("h1", &conns, Duration::from_secs(10))
                .await
                .unwrap();
        }
        for t in ["acme", "gamma"] {
            assert!(presence.expire(&tid(t), 10).await.unwrap().is_empty());
            assert_eq!(presence.members(&tid(t), "room").await.unwrap().len(), 1);
        }
    }
}
