//! Tenants: validated ids and the registry of tenants this process serves.
//!
//! The tenant of a connection is decided by the server from server-trust
//! facts only (path, subdomain, trusted header); see [`crate::server`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

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

/// A tenant this process serves: its id, plan, deployed plugin and state.
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// The name of its plan (its effective limits are in `quota`).
    pub plan_name: String,
    /// Its plan and live quota state, shared with its plugin's store.
    pub quota: Arc<TenantQuota>,
    /// The plugin version currently serving this tenant.
    pub plugin: Arc<Plugin>,
    suspended: AtomicBool,
}

impl Tenant {
    /// A new, active tenant on plan `plan_name` (limits in `quota`) running
    /// `plugin` (loaded with the same `quota`).
    pub fn new(
        id: TenantId,
        plan_name: String,
        quota: Arc<TenantQuota>,
        plugin: Arc<Plugin>,
    ) -> Self {
        Self {
            id,
            plan_name,
            quota,
            plugin,
            suspended: AtomicBool::new(false),
        }
    }

    /// Whether new connections are refused.
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Relaxed)
    }

    /// Suspend or resume the tenant.
    pub fn set_suspended(&self, suspended: bool) {
        self.suspended.store(suspended, Ordering::Relaxed);
    }
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
    pub fn insert(&self, tenant: Tenant) {
        self.tenants
            .write()
            .insert(tenant.id.clone(), Arc::new(tenant));
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
}
