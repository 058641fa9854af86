//! Broadcast groups: named groups of connections with roles, per tenant,
//! across the fleet (the seeds' `createGroup`: `maxMembers`, `meta`,
//! roles `member`/`admin`/`viewer`, `close`, `memberTtl`).
//!
//! # Model
//!
//! Per tenant, a set of **groups** by name. A group is created by
//! [`GroupStore::create_or_get`] with its `max_members` (the seeds'
//! `maxMembers`) and initial JSON `meta` (the seeds' `meta`); every host of
//! the fleet calls it when the group is defined, and only the first call
//! creates. A group is **open** until [`GroupStore::close`] dissolves it;
//! a closed group stays (refusing joins, on every host) until
//! [`GroupStore::delete`] or [`GroupStore::purge_tenant`] removes it.
//!
//! A **member** is a connection: a globally unique connection id the caller
//! chooses (host instance id plus local id), held by one host **instance**,
//! with a [`Role`]. Every member has a deadline (`now + ttl`; the seeds'
//! `memberTtl` is 120 s, [`DEFAULT_MEMBER_TTL`]). The instance that holds
//! it moves the deadline on with [`GroupStore::heartbeat`]. A member whose
//! deadline has passed is **dead**: not counted, not listed, refusing no
//! join for capacity, but still stored until [`GroupStore::expire`] removes
//! it and reports it (an instance that crashed never sends `leave`). Each
//! departure is reported exactly once: by `leave`, `expire` or `close`
//! (`delete` and `purge_tenant` report nothing).
//!
//! The host wires connections, the `__group:{name}` topic and its frames
//! (`join {role,count}`, `leave {role,count}`, `members`, `close`); a
//! role-filtered publish reads [`GroupStore::members`].
//!
//! # Names and sizes
//!
//! Group names, connection ids and instance ids are strings of 1 to
//! [`MAX_NAME_BYTES`] bytes without `'\n'` (the stores use it as a
//! separator). Meta is JSON text (not parsed here) of at most
//! [`MAX_META_BYTES`]. TTLs are 1 ms to [`MAX_TTL`].
//!
//! # Bounds
//!
//! [`GroupLimits`]: groups stored per tenant (closed ones included),
//! members stored per group (dead ones included until expired; also the
//! most [`GroupStore::members`] returns and an upper bound on every
//! group's `max_members`), members stored per tenant.
//!
//! Implementations: [`memory::MemoryGroups`] (one process) and
//! [`redis::RedisGroups`] (a fleet sharing one Redis); both pass
//! `conformance::suite` (test builds).

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Longest group name, connection id or instance id, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Largest group meta (JSON text), in bytes.
pub const MAX_META_BYTES: usize = 16 * 1024;

/// Longest TTL a member may be given (and refreshed with).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The seeds' `memberTtl`: a member that is not refreshed for this long is
/// dead (120 s).
pub const DEFAULT_MEMBER_TTL: Duration = Duration::from_secs(120);

/// The seeds' `maxMembers` default (`Infinity`): no limit of the group's
/// own (the store's [`GroupLimits::max_members_per_group`] still applies).
pub const UNLIMITED_MEMBERS: u32 = u32::MAX;

/// How often the seeds refresh members with a TTL of `ttl`: a third of it
/// for TTLs under 15 s, else every 5 s.
pub fn heartbeat_interval(ttl: Duration) -> Duration {
    if ttl < Duration::from_secs(15) {
        ttl / 3
    } else {
        Duration::from_secs(5)
    }
}

/// What a [`GroupStore`] holds at most; over a bound the call fails with
/// `QuotaExceeded` and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Groups stored per tenant, closed ones included. Default 10 000.
    pub max_groups_per_tenant: usize,
    /// Members stored per group (live or dead, until expired); also the
    /// most [`GroupStore::members`] returns. A group's `max_members` above
    /// it is effectively this. Default 10 000.
    pub max_members_per_group: usize,
    /// Members stored per tenant over all groups (live or dead, until
    /// expired). Default 100 000.
    pub max_members_per_tenant: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            max_groups_per_tenant: 10_000,
            max_members_per_group: 10_000,
            max_members_per_tenant: 100_000,
        }
    }
}

/// The role of a member (the seeds' roles; `member` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Role {
    /// An ordinary member.
    #[default]
    Member,
    /// An administrator.
    Admin,
    /// A read-only member.
    Viewer,
}

impl Role {
    /// The seeds' name of the role: `member`, `admin` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    /// The role named `s` (exactly as [`Role::as_str`] spells it);
    /// `Invalid` otherwise.
    pub fn parse(s: &str) -> Result<Role, BackendError> {
        match s {
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            _ => Err(BackendError::Invalid(format!(
                "invalid group role {s:?} (member, admin or viewer)"
            ))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group as stored, from [`GroupStore::create_or_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// This call created the group (else it existed, and the arguments
    /// were ignored).
    pub created: bool,
    /// The group's `max_members` (from its creation).
    pub max_members: u32,
    /// The group's current meta.
    pub meta: String,
    /// The group is closed: every join is refused.
    pub closed: bool,
}

/// The outcome of [`GroupStore::join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The connection was not a live member before: broadcast a join.
    /// `false` for a rejoin of a live member (idempotent).
    pub new: bool,
    /// The member's role: the one given, or for a rejoin the one it
    /// already had.
    pub role: Role,
    /// Live members of the group after the join.
    pub count: u64,
}

/// The outcome of [`GroupStore::leave`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Live members of the group after the leave.
    pub count: u64,
    /// The role of the member that left; `None` if the connection was not
    /// a member (nothing to broadcast).
    pub role: Option<Role>,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The connection id.
    pub id: String,
    /// Its role.
    pub role: Role,
    /// The host instance holding the connection.
    pub instance: String,
}

/// One member to refresh with [`GroupStore::heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberRef {
    /// The tenant of the group.
    pub tenant: TenantId,
    /// The group name.
    pub group: String,
    /// The connection id.
    pub member: String,
}

/// A member removed by [`GroupStore::expire`] because its deadline passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredMember {
    /// The group it left.
    pub group: String,
    /// The connection id.
    pub member: String,
    /// Its role.
    pub role: Role,
    /// Live members of the group after the expiry.
    pub count: u64,
}

/// Per-tenant broadcast groups (see the module docs for the model). Every
/// method but [`GroupStore::heartbeat`] takes the tenant first.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Create group `name` with `max_members` (at least 1;
    /// [`UNLIMITED_MEMBERS`] for the seeds' `Infinity`) and JSON `meta`,
    /// or return the existing group unchanged (open or closed).
    /// `QuotaExceeded` over [`GroupLimits::max_groups_per_tenant`].
    async fn create_or_get(
        &self,
        tenant: &TenantId,
        name: &str,
        max_members: u32,
        meta: &str,
    ) -> Result<GroupInfo, BackendError>;

    /// The meta of group `name`; `None` if there is no such group.
    async fn meta(&self, tenant: &TenantId, name: &str) -> Result<Option<String>, BackendError>;

    /// Replace the meta of group `name` (open or closed); `Invalid` if
    /// there is no such group.
    async fn set_meta(&self, tenant: &TenantId, name: &str, meta: &str)
    -> Result<(), BackendError>;

    /// Add connection `member` of `instance` with `role` to group `name`,
    /// with a deadline `ttl` from now. Atomic across the fleet: the group
    /// never holds more live members than its `max_members` (nor than
    /// [`GroupLimits::max_members_per_group`]); a join over it is
    /// `QuotaExceeded` and changes nothing. A closed group is
    /// `AccessDenied`, an unknown one `Invalid`. Joining again with a live
    /// member is idempotent (`new == false`, its role kept) and moves its
    /// deadline; a dead member that joins again is new.
    async fn join(
        &self,
        tenant: &TenantId,
        name: &str,
        member: &str,
        instance: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<Joined, BackendError>;

    /// Remove connection `member` from group `name` (also when dead but not
    /// yet expired). An unknown member or group changes nothing
    /// (`role == None`).
    async fn leave(
        &self,
        tenant: &TenantId,
        name: &str,
        member: &str,
    ) -> Result<Left, BackendError>;

    /// The live members of group `name`, sorted by connection id; at most
    /// [`GroupLimits::max_members_per_group`]. Empty for an unknown or
    /// closed group.
    async fn members(&self, tenant: &TenantId, name: &str) -> Result<Vec<Member>, BackendError>;

    /// How many live members group `name` has (0 for an unknown group).
    async fn count(&self, tenant: &TenantId, name: &str) -> Result<u64, BackendError>;

    /// Move the deadline of every listed member that is live and belongs
    /// to `instance` to `ttl` from now. Returns the listed members that
    /// were **not** refreshed — dead, gone (left, expired, closed, deleted)
    /// or another instance's — in the order given: the host joins them
    /// again or forgets them (a dead one stays dead: `expire` reports it).
    /// Each [`MemberRef`] carries its tenant.
    async fn heartbeat(
        &self,
        instance: &str,
        members: &[MemberRef],
        ttl: Duration,
    ) -> Result<Vec<MemberRef>, BackendError>;

    /// Remove up to `limit` dead members of `tenant` (oldest deadline
    /// first) and report them. Atomic: when several hosts expire at once,
    /// each member is reported by exactly one of them.
    async fn expire(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<ExpiredMember>, BackendError>;

    /// Close group `name`: mark it closed (every later join is
    /// `AccessDenied`, on every host) and remove all its members, live and
    /// dead; returns them sorted by id (the host unsubscribes its own and
    /// broadcasts `close`). Closing a closed group returns nothing;
    /// `Invalid` if there is no such group.
    async fn close(&self, tenant: &TenantId, name: &str) -> Result<Vec<Member>, BackendError>;

    /// Remove group `name` with its members and closed mark (it may then
    /// be created afresh); `true` if it existed. Members are not reported:
    /// close the group first to notify them.
    async fn delete(&self, tenant: &TenantId, name: &str) -> Result<bool, BackendError>;

    /// Remove every group of `tenant` (the tenant is being deleted);
    /// returns how many groups were removed. Reports no departures.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
}

/// Check a group name, connection id or instance id (`what` names it in
/// the error): empty or containing `'\n'` is `Invalid`, longer than
/// [`MAX_NAME_BYTES`] is `TooLarge`.
pub fn check_name(what: &str, name: &str) -> Result<(), BackendError> {
    if name.is_empty() {
        return Err(BackendError::Invalid(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(BackendError::TooLarge(format!(
            "{what} is {} bytes, the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.contains('\n') {
        return Err(BackendError::Invalid(format!(
            "{what} must not contain a newline"
        )));
    }
    Ok(())
}

/// Check group meta: longer than [`MAX_META_BYTES`] is `TooLarge`.
pub fn check_meta(meta: &str) -> Result<(), BackendError> {
    if meta.len() > MAX_META_BYTES {
        return Err(BackendError::TooLarge(format!(
            "group meta is {} bytes, the limit is {MAX_META_BYTES}",
            meta.len()
        )));
    }
    Ok(())
}

/// Check a TTL: zero or over [`MAX_TTL`] is `Invalid`. Returns it in whole
/// milliseconds, rounded up (the Redis store's resolution).
pub fn check_ttl(ttl: Duration) -> Result<u64, BackendError> {
    if ttl.is_zero() {
        return Err(BackendError::Invalid("ttl must be positive".into()));
    }
    if ttl > MAX_TTL {
        return Err(BackendError::Invalid(format!(
            "ttl is over the limit of {} s",
            MAX_TTL.as_secs()
        )));
    }
    // At most MAX_TTL in ms: fits in u64.
    Ok(ttl.as_nanos().div_ceil(1_000_000) as u64)
}

/// Check the arguments of [`GroupStore::create_or_get`].
pub fn check_create(name: &str, max_members: u32, meta: &str) -> Result<(), BackendError> {
    check_name("group name", name)?;
    if max_members == 0 {
        return Err(BackendError::Invalid(
            "max_members must be at least 1".into(),
        ));
    }
    check_meta(meta)
}

/// Check the arguments of [`GroupStore::join`]; the TTL in ms.
pub fn check_join(
    name: &str,
    member: &str,
    instance: &str,
    ttl: Duration,
) -> Result<u64, BackendError> {
    check_name("group name", name)?;
    check_name("connection id", member)?;
    check_name("instance id", instance)?;
    check_ttl(ttl)
}

/// Check the arguments of [`GroupStore::heartbeat`]; the TTL in ms.
pub fn check_heartbeat(
    instance: &str,
    members: &[MemberRef],
    ttl: Duration,
) -> Result<u64, BackendError> {
    check_name("instance id", instance)?;
    for m in members {
        check_name("group name", &m.group)?;
        check_name("connection id", &m.member)?;
    }
    check_ttl(ttl)
}

/// The refusal of a join to a full group (`max` is the effective bound).
pub(crate) fn full_group(name: &str, max: u64) -> BackendError {
    BackendError::QuotaExceeded(format!("group {name:?} is full ({max} members)"))
}

/// The refusal of a join to a closed group.
pub(crate) fn closed_group(name: &str) -> BackendError {
    BackendError::AccessDenied(format!("group {name:?} is closed"))
}

/// The error for a group that does not exist.
pub(crate) fn no_such_group(name: &str) -> BackendError {
    BackendError::Invalid(format!("no such group {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("group name", "lobby:1").is_ok());
        assert!(check_name("group name", &"x".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(matches!(
            check_name("group name", ""),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            check_name("group name", &"x".repeat(MAX_NAME_BYTES + 1)),
            Err(BackendError::TooLarge(_))
        ));
        assert!(matches!(
            check_name("connection id", "a\nb"),
            Err(BackendError::Invalid(_))
        ));
        assert!(check_meta(&"x".repeat(MAX_META_BYTES)).is_ok());
        assert!(matches!(
            check_meta(&"x".repeat(MAX_META_BYTES + 1)),
            Err(BackendError::TooLarge(_))
        ));
        assert!(matches!(
            check_create("g", 0, "{}"),
            Err(BackendError::Invalid(_))
        ));
        assert!(check_create("g", UNLIMITED_MEMBERS, "{}").is_ok());
    }

    #[test]
    fn ttls_round_up_to_milliseconds() {
        assert_eq!(check_ttl(Duration::from_nanos(1)), Ok(1));
        assert_eq!(check_ttl(Duration::from_micros(1500)), Ok(2));
        assert_eq!(check_ttl(MAX_TTL), Ok(86_400_000));
        for bad in [Duration::ZERO, MAX_TTL + Duration::from_nanos(1)] {
            assert!(matches!(check_ttl(bad), Err(BackendError::Invalid(_))));
        }
    }

    #[test]
    fn roles_round_trip() {
        for role in [Role::Member, Role::Admin, Role::Viewer] {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        assert_eq!(Role::default(), Role::Member);
        for bad in ["", "Admin", "owner", "member\n"] {
            assert!(matches!(Role::parse(bad), Err(BackendError::Invalid(_))));
        }
    }

    #[test]
    fn heartbeat_follows_the_seeds() {
        assert_eq!(
            heartbeat_interval(DEFAULT_MEMBER_TTL),
            Duration::from_secs(5)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(9)),
            Duration::from_secs(3)
        );
    }
}
