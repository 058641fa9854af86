//! Tenants: validated ids and the registry of tenants this process serves.
//!
//! The tenant of a connection is decided by the server from server-trust
//! facts only (path, subdomain, trusted header); see [`crate::server`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::signal::Signal;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use crate::quota::TenantQuota;
use crate::runtime::Plugin;

/// A validated tenant id: `[a-z0-9][a-z0-9-]{0,62}`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

/// Why a string is not a tenant id.
#[derive(Debug, thiserror::Error)]
#[error("invalid tenant id {0:?}: expected 1-63 chars of [a-z0-9-], starting with [a-z0-9]")]
pub struct InvalidTenantId(pub String);

impl TenantId {
    /// Parse and validate a tenant id.
    pub fn parse(s: &str) -> Result<Self, InvalidTenantId> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidTenantId(s.to_owned()))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TenantId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", &self.0)
    }
}

/// A set of tenants named by what it leaves out or keeps: which tenants one
/// backend serves when tenants are spread over several (a tenant with a
/// Redis of its own is served by that Redis's backends, every other tenant
/// by the shared one). Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant.
    #[default]
    All,
    /// Every tenant but these.
    AllBut(Arc<HashSet<TenantId>>),
    /// Only these tenants.
    Only(Arc<HashSet<TenantId>>),
}

impl TenantScope {
    /// Whether `tenant` is in the set.
    pub fn contains(&self, tenant: &TenantId) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::AllBut(out) => !out.contains(tenant),
            TenantScope::Only(only) => only.contains(tenant),
        }
    }
}

/// The plugin versions serving a tenant: the active one and, during a
/// canary, a second one for a share of its connections.
#[derive(Clone, Default)]
pub struct Deployment {
    /// The version serving every connection outside the canary share;
    /// `None` until a version is activated.
    pub active: Option<Arc<Plugin>>,
    /// The canary version and the percentage (1-99) of connections it serves.
    pub canary: Option<(Arc<Plugin>, u8)>,
}

/// Why the host closes every connection of a tenant (suspension, deletion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason for the client.
    pub reason: String,
}

/// A tenant this process serves: its id, plan, deployed plugin versions and
/// state. Everything but the id can change while it serves (admin API).
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// Its plan and live quota state, shared with its plugins' stores.
    pub quota: Arc<TenantQuota>,
    plan_name: RwLock<String>,
    deployment: RwLock<Deployment>,
    suspended: AtomicBool,
    /// The current eviction, if any (lowered when the tenant is resumed).
    eviction: Signal<Eviction>,
}

impl Tenant {
    /// A new, active tenant on plan `plan_name` (limits in `quota`) with no
    /// plugin yet (see [`Tenant::set_deployment`]).
    pub fn new(id: TenantId, plan_name: String, quota: Arc<TenantQuota>) -> Self {
        Self {
            id,
            quota,
            plan_name: RwLock::new(plan_name),
            deployment: RwLock::new(Deployment::default()),
            suspended: AtomicBool::new(false),
            eviction: Signal::new(),
        }
    }

    /// The name of its plan.
    pub fn plan_name(&self) -> String {
        self.plan_name.read().clone()
    }

    /// Switch to plan `name` with effective limits `plan` (from the next
    /// call, message or connection on).
    pub fn set_plan(&self, name: String, plan: crate::plan::Plan) {
        *self.plan_name.write() = name;
        self.quota.set_plan(plan);
    }

    /// The versions serving it now.
    pub fn deployment(&self) -> Deployment {
        self.deployment.read().clone()
    }

    /// Replace the serving versions. Calls that start afterwards run the
    /// new ones; calls in flight finish on the version they started on.
    pub fn set_deployment(&self, deployment: Deployment) {
        *self.deployment.write() = deployment;
    }

    /// The plugin version for a connection in canary bucket `bucket`
    /// (0-99, see [`canary_bucket`]): the canary if one runs and the bucket
    /// is within its share, else the active version.
    pub fn plugin_for(&self, bucket: u8) -> Option<Arc<Plugin>> {
        let d = self.deployment.read();
        match &d.canary {
            Some((plugin, percent)) if bucket < *percent => Some(Arc::clone(plugin)),
            _ => d.active.clone(),
        }
    }

    /// Whether new connections are refused.
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Relaxed)
    }

    /// Suspend or resume the tenant. Suspending does not close open
    /// connections by itself: see [`Tenant::evict`].
    pub fn set_suspended(&self, suspended: bool) {
        self.suspended.store(suspended, Ordering::Relaxed);
        if !suspended {
            self.eviction.lower();
        }
    }

    /// Close every open connection of the tenant with `code` and `reason`.
    pub fn evict(&self, code: u16, reason: impl Into<String>) {
        self.eviction.raise(Eviction {
            code,
            reason: reason.into(),
        });
    }

    /// Whether the tenant has ever been evicted while this process served
    /// it; resuming does not clear this. One atomic load (see
    /// [`Signal::ever_raised`] for why it stays set).
    pub fn has_been_evicted(&self) -> bool {
        self.eviction.ever_raised()
    }

    /// Wait until the tenant is evicted ([`Tenant::evict`]) and return the
    /// eviction; at once if it already is. Every open connection waits on
    /// this.
    pub fn evicted(&self) -> impl Future<Output = Eviction> + Send + '_ {
        self.eviction.wait()
    }
}

/// The canary bucket (0-99) of a connection: a stable hash of its id, so a
/// connection keeps its version while the canary's share is unchanged.
pub fn canary_bucket(connection_id: &str) -> u8 {
    let digest = Sha256::digest(connection_id.as_bytes());
    (u16::from_le_bytes([digest[0], digest[1]]) % 100) as u8
}

/// All tenants known to this process, by id.
#[derive(Default)]
pub struct Registry {
    tenants: RwLock<HashMap<TenantId, Arc<Tenant>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace a tenant.
    pub fn insert(&self, tenant: Tenant) -> Arc<Tenant> {
        let tenant = Arc::new(tenant);
        self.tenants
            .write()
            .insert(tenant.id.clone(), Arc::clone(&tenant));
        tenant
    }

    /// Remove a tenant; its open connections keep their `Arc` until they close.
    pub fn remove(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        self.tenants.write().remove(id)
    }

    /// Look a tenant up by id.
    pub fn get(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        self.tenants.read().get(id).cloned()
    }

    /// Look a tenant up by an unvalidated id string.
    pub fn get_str(&self, id: &str) -> Option<Arc<Tenant>> {
        TenantId::parse(id).ok().and_then(|id| self.get(&id))
    }

    /// Ids of all tenants, sorted.
    pub fn ids(&self) -> Vec<TenantId> {
        let mut ids: Vec<_> = self.tenants.read().keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_id_rules() {
        for ok in ["a", "acme", "0", "a-b-c", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "a b", &"a".repeat(64), "é"] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canary_buckets_are_stable_and_spread() {
        assert_eq!(canary_bucket("abc"), canary_bucket("abc"));
        let mut counts = [0u32; 100];
        for i in 0..100_000 {
            counts[usize::from(canary_bucket(&format!("conn-{i}")))] += 1;
        }
        // 1000 expected per bucket.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    fn tenant() -> Tenant {
        let quota = TenantQuota::new(crate::plan::Plan::built_in("starter").unwrap(), 1);
        Tenant::new(TenantId::parse("evictee").unwrap(), "starter".into(), quota)
    }

    #[tokio::test]
    async fn an_eviction_wakes_every_waiter_and_holds_until_the_tenant_is_resumed() {
        let t = Arc::new(tenant());
        assert!(!t.has_been_evicted());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let t = Arc::clone(&t);
                tokio::spawn(async move { t.evicted().await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "nothing evicted yet"
        );
        t.evict(4000, "gone");
        for w in waiters {
            let e = tokio::time::timeout(std::time::Duration::from_secs(5), w)
                .await
                .expect("every waiter is woken")
                .unwrap();
            assert_eq!((e.code, e.reason.as_str()), (4000, "gone"));
        }
        assert!(t.has_been_evicted());
        // A connection that starts waiting later sees it at once.
        assert_eq!(t.evicted().await.reason, "gone");
        t.set_suspended(false);
        assert!(t.has_been_evicted(), "stays set");
        let later = tokio::time::timeout(std::time::Duration::from_millis(50), t.evicted()).await;
        assert!(later.is_err(), "resumed: no eviction any more");
    }

    #[test]
    fn tenant_ids_round_trip_through_json_and_are_validated() {
        let id: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"acme\"");
        assert!(serde_json::from_str::<TenantId>("\"../etc\"").is_err());
    }
}
