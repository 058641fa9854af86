//! The in-process group store: per-tenant maps with tokio [`Instant`]
//! deadlines, the twin of [`super::redis::RedisGroups`].
//!
//! Per tenant: group name → group (max members, meta, closed flag and its
//! members, each with role, instance and deadline), and one ordered set of
//! every member by deadline (what [`GroupStore::expire`] walks). Bounded by
//! [`GroupLimits`] per tenant; the number of tenants is bounded by the
//! tenant registry. A tenant's state is dropped when it holds no group.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{
    ExpiredMember, GroupInfo, GroupLimits, GroupStore, Joined, Left, Member, MemberRef, Role,
    check_create, check_heartbeat, check_join, check_meta, check_name, closed_group, full_group,
    no_such_group,
};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Number of shards (a power of two); a tenant lives in one shard.
const SHARDS: usize = 16;

struct MemberState {
    role: Role,
    instance: String,
    deadline: Instant,
}

struct Group {
    max_members: u32,
    meta: String,
    closed: bool,
    /// Connection id → member; at most `max_members_per_group`.
    members: HashMap<String, MemberState>,
}

impl Group {
    fn live(&self, now: Instant) -> u64 {
        self.members.values().filter(|m| m.deadline > now).count() as u64
    }

    fn info(&self, created: bool) -> GroupInfo {
        GroupInfo {
            created,
            max_members: self.max_members,
            meta: self.meta.clone(),
            closed: self.closed,
        }
    }
}

/// `(deadline, group name, connection id)`.
type DeadlineEntry = (Instant, String, String);

#[derive(Default)]
struct TenantState {
    /// Group name → group; at most `max_groups_per_tenant`.
    groups: HashMap<String, Group>,
    /// Every member of the tenant by deadline (at most
    /// `max_members_per_tenant`).
    deadlines: BTreeSet<DeadlineEntry>,
}

impl TenantState {
    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn create(
        &mut self,
        limits: &GroupLimits,
        name: &str,
        max_members: u32,
        meta: &str,
    ) -> Result<GroupInfo, BackendError> {
        if let Some(g) = self.groups.get(name) {
            return Ok(g.info(false));
        }
        if self.groups.len() + 1 > limits.max_groups_per_tenant {
            return Err(too_many_groups(limits));
        }
        let g = Group {
            max_members,
            meta: meta.to_owned(),
            closed: false,
            members: HashMap::new(),
        };
        let info = g.info(true);
        self.groups.insert(name.to_owned(), g);
        Ok(info)
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        limits: &GroupLimits,
        name: &str,
        member: &str,
        instance: &str,
        role: Role,
        now: Instant,
        deadline: Instant,
    ) -> Result<Joined, BackendError> {
        let TenantState { groups, deadlines } = self;
        let g = groups.get_mut(name).ok_or_else(|| no_such_group(name))?;
        if g.closed {
            return Err(closed_group(name));
        }
        let live = g.live(now);
        if let Some(m) = g.members.get_mut(member)
            && m.deadline > now
        {
            // A rejoin: idempotent, the deadline moves on.
            deadlines.remove(&(m.deadline, name.to_owned(), member.to_owned()));
            m.deadline = deadline;
            deadlines.insert((deadline, name.to_owned(), member.to_owned()));
            return Ok(Joined {
                new: false,
                role: m.role,
                count: live,
            });
        }
        let max = u64::from(g.max_members).min(limits.max_members_per_group as u64);
        if live + 1 > max {
            return Err(full_group(name, max));
        }
        let stored = g.members.contains_key(member);
        if !stored {
            if g.members.len() + 1 > limits.max_members_per_group {
                return Err(too_many_stored(name, limits));
            }
            if deadlines.len() + 1 > limits.max_members_per_tenant {
                return Err(too_many_in_tenant(limits));
            }
        }
        if let Some(old) = g.members.remove(member) {
            deadlines.remove(&(old.deadline, name.to_owned(), member.to_owned()));
        }
        g.members.insert(
            member.to_owned(),
            MemberState {
                role,
                instance: instance.to_owned(),
                deadline,
            },
        );
        deadlines.insert((deadline, name.to_owned(), member.to_owned()));
        Ok(Joined {
            new: true,
            role,
            count: live + 1,
        })
    }

    fn leave(&mut self, name: &str, member: &str, now: Instant) -> Left {
        let Some(g) = self.groups.get_mut(name) else {
            return Left {
                count: 0,
                role: None,
            };
        };
        let role = g.members.remove(member).map(|m| {
            self.deadlines
                .remove(&(m.deadline, name.to_owned(), member.to_owned()));
            m.role
        });
        Left {
            count: g.live(now),
            role,
        }
    }

    /// Refresh one member if it is live and `instance`'s; `false` if not.
    fn refresh(&mut self, r: &MemberRef, instance: &str, now: Instant, deadline: Instant) -> bool {
        let TenantState { groups, deadlines } = self;
        let Some(m) = groups
            .get_mut(&r.group)
            .and_then(|g| g.members.get_mut(&r.member))
        else {
            return false;
        };
        if m.deadline <= now || m.instance != instance {
            return false;
        }
        deadlines.remove(&(m.deadline, r.group.clone(), r.member.clone()));
        m.deadline = deadline;
        deadlines.insert((deadline, r.group.clone(), r.member.clone()));
        true
    }

    fn expire(&mut self, limit: usize, now: Instant) -> Vec<ExpiredMember> {
        let due: Vec<DeadlineEntry> = self
            .deadlines
            .iter()
            .take_while(|(at, ..)| *at <= now)
            .take(limit)
            .cloned()
            .collect();
        let mut gone = Vec::with_capacity(due.len());
        for entry in due {
            self.deadlines.remove(&entry);
            let (_, group, member) = entry;
            if let Some(m) = self
                .groups
                .get_mut(&group)
                .and_then(|g| g.members.remove(&member))
            {
                gone.push((group, member, m.role));
            }
        }
        gone.into_iter()
            .map(|(group, member, role)| ExpiredMember {
                count: self.groups.get(&group).map_or(0, |g| g.live(now)),
                group,
                member,
                role,
            })
            .collect()
    }

    /// Remove every member of group `g` named `name` from the deadlines;
    /// returns them sorted by id.
    fn drain(deadlines: &mut BTreeSet<DeadlineEntry>, name: &str, g: &mut Group) -> Vec<Member> {
        let mut out: Vec<Member> = g
            .members
            .drain()
            .map(|(id, m)| {
                deadlines.remove(&(m.deadline, name.to_owned(), id.clone()));
                Member {
                    id,
                    role: m.role,
                    instance: m.instance,
                }
            })
            .collect();
        out.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn close(&mut self, name: &str) -> Result<Vec<Member>, BackendError> {
        let TenantState { groups, deadlines } = self;
        let g = groups.get_mut(name).ok_or_else(|| no_such_group(name))?;
        if g.closed {
            return Ok(Vec::new());
        }
        g.closed = true;
        Ok(Self::drain(deadlines, name, g))
    }

    fn delete(&mut self, name: &str) -> bool {
        let Some(mut g) = self.groups.remove(name) else {
            return false;
        };
        Self::drain(&mut self.deadlines, name, &mut g);
        true
    }
}

fn too_many_groups(limits: &GroupLimits) -> BackendError {
    BackendError::QuotaExceeded(format!(
        "a tenant may hold {} groups",
        limits.max_groups_per_tenant
    ))
}

fn too_many_stored(name: &str, limits: &GroupLimits) -> BackendError {
    BackendError::QuotaExceeded(format!(
        "group {name:?} holds {} members not yet expired",
        limits.max_members_per_group
    ))
}

fn too_many_in_tenant(limits: &GroupLimits) -> BackendError {
    BackendError::QuotaExceeded(format!(
        "a tenant may hold {} group members",
        limits.max_members_per_tenant
    ))
}

type Shard = HashMap<TenantId, TenantState>;

/// A [`GroupStore`] in this process's memory (see the module docs). Every
/// operation holds one shard's lock briefly and never awaits.
pub struct MemoryGroups {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    limits: GroupLimits,
}

impl Default for MemoryGroups {
    fn default() -> Self {
        Self::with_limits(GroupLimits::default())
    }
}

impl MemoryGroups {
    /// An empty store with the default [`GroupLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: GroupLimits) -> Self {
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

    /// Run `f` on group `name` of `tenant`, if it exists.
    fn with_group<T>(
        &self,
        tenant: &TenantId,
        name: &str,
        f: impl FnOnce(&Group) -> T,
    ) -> Option<T> {
        let shard = self.shard(tenant).lock();
        shard.get(tenant).and_then(|s| s.groups.get(name)).map(f)
    }

    /// Members stored for `tenant`, dead ones included.
    pub fn stored_members(&self, tenant: &TenantId) -> usize {
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
impl GroupStore for MemoryGroups {
    async fn create_or_get(
        &self,
        tenant: &TenantId,
        name: &str,
        max_members: u32,
        meta: &str,
    ) -> Result<GroupInfo, BackendError> {
        check_create(name, max_members, meta)?;
        self.with_tenant(tenant, |s| s.create(&self.limits, name, max_members, meta))
    }

    async fn meta(&self, tenant: &TenantId, name: &str) -> Result<Option<String>, BackendError> {
        check_name("group name", name)?;
        Ok(self.with_group(tenant, name, |g| g.meta.clone()))
    }

    async fn set_meta(
        &self,
        tenant: &TenantId,
        name: &str,
        meta: &str,
    ) -> Result<(), BackendError> {
        check_name("group name", name)?;
        check_meta(meta)?;
        let mut shard = self.shard(tenant).lock();
        let g = shard
            .get_mut(tenant)
            .and_then(|s| s.groups.get_mut(name))
            .ok_or_else(|| no_such_group(name))?;
        meta.clone_into(&mut g.meta);
        Ok(())
    }

    async fn join(
        &self,
        tenant: &TenantId,
        name: &str,
        member: &str,
        instance: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<Joined, BackendError> {
        let ttl_ms = check_join(name, member, instance, ttl)?;
        let now = Instant::now();
        let at = deadline(now, ttl_ms)?;
        self.with_tenant(tenant, |s| {
            s.join(&self.limits, name, member, instance, role, now, at)
        })
    }

    async fn leave(
        &self,
        tenant: &TenantId,
        name: &str,
        member: &str,
    ) -> Result<Left, BackendError> {
        check_name("group name", name)?;
        check_name("connection id", member)?;
        let now = Instant::now();
        Ok(self.with_tenant(tenant, |s| s.leave(name, member, now)))
    }

    async fn members(&self, tenant: &TenantId, name: &str) -> Result<Vec<Member>, BackendError> {
        check_name("group name", name)?;
        let now = Instant::now();
        let mut members = self
            .with_group(tenant, name, |g| {
                g.members
                    .iter()
                    .filter(|(_, m)| m.deadline > now)
                    .map(|(id, m)| Member {
                        id: id.clone(),
                        role: m.role,
                        instance: m.instance.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        members.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        members.truncate(self.limits.max_members_per_group);
        Ok(members)
    }

    async fn count(&self, tenant: &TenantId, name: &str) -> Result<u64, BackendError> {
        check_name("group name", name)?;
        let now = Instant::now();
        Ok(self.with_group(tenant, name, |g| g.live(now)).unwrap_or(0))
    }

    async fn heartbeat(
        &self,
        instance: &str,
        members: &[MemberRef],
        ttl: Duration,
    ) -> Result<Vec<MemberRef>, BackendError> {
        let ttl_ms = check_heartbeat(instance, members, ttl)?;
        let now = Instant::now();
        let at = deadline(now, ttl_ms)?;
        let mut lost = Vec::new();
        for r in members {
            let mut shard = self.shard(&r.tenant).lock();
            let refreshed = shard
                .get_mut(&r.tenant)
                .is_some_and(|state| state.refresh(r, instance, now, at));
            if !refreshed {
                lost.push(r.clone());
            }
        }
        Ok(lost)
    }

    async fn expire(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<ExpiredMember>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let mut shard = self.shard(tenant).lock();
        let Some(state) = shard.get_mut(tenant) else {
            return Ok(Vec::new());
        };
        Ok(state.expire(limit, now))
    }

    async fn close(&self, tenant: &TenantId, name: &str) -> Result<Vec<Member>, BackendError> {
        check_name("group name", name)?;
        self.with_tenant(tenant, |s| s.close(name))
    }

    async fn delete(&self, tenant: &TenantId, name: &str) -> Result<bool, BackendError> {
        check_name("group name", name)?;
        Ok(self.with_tenant(tenant, |s| s.delete(name)))
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let removed = self.shard(tenant).lock().remove(tenant);
        // Freed outside the lock.
        Ok(removed.map_or(0, |s| s.groups.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::groups::conformance;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn memory_groups_pass_the_conformance_suite() {
        let store = MemoryGroups::new();
        conformance::suite(&store).await;
        // The suite purges what it used: nothing is left behind.
        for shard in store.shards.iter() {
            assert!(shard.lock().is_empty());
        }
    }

    #[tokio::test]
    async fn memory_groups_pass_the_limits_suite() {
        let store = MemoryGroups::with_limits(conformance::SUITE_LIMITS);
        conformance::limits_suite(&store).await;
    }

    #[tokio::test]
    async fn leaving_and_deleting_free_everything() {
        let store = MemoryGroups::new();
        let t = tid("acme");
        let ttl = Duration::from_secs(60);
        for g in 0..5 {
            store
                .create_or_get(&t, &format!("g{g}"), 100, "{}")
                .await
                .unwrap();
        }
        for i in 0..50 {
            store
                .join(
                    &t,
                    &format!("g{}", i % 5),
                    &format!("c{i}"),
                    "i",
                    Role::Member,
                    ttl,
                )
                .await
                .unwrap();
        }
        assert_eq!(store.stored_members(&t), 50);
        for i in 0..25 {
            store
                .leave(&t, &format!("g{}", i % 5), &format!("c{i}"))
                .await
                .unwrap();
        }
        assert_eq!(store.stored_members(&t), 25);
        for g in 0..5 {
            assert!(store.delete(&t, &format!("g{g}")).await.unwrap());
        }
        assert_eq!(store.stored_members(&t), 0);
        assert!(
            store.shard(&t).lock().get(&t).is_none(),
            "tenant state dropped"
        );
    }
}
