//! The one place Redis keys and channels are built. Every name starts with
//! `{namespace}:t:{<tenant>}:`; the tenant id (`[a-z0-9-]`, validated by
//! [`TenantId`]) is a Redis Cluster hash tag, so all of a tenant's keys live
//! in one slot (Lua scripts may touch several) and no suffix, whatever the
//! plugin or client put in it, can move a name out of its tenant.

use crate::tenant::TenantId;

/// Default namespace: the first segment of every key.
pub const DEFAULT_NAMESPACE: &str = "tenantry";

/// Builds the Redis names of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeys {
    prefix: String,
}

impl TenantKeys {
    /// The names of `tenant` under `namespace` (`[a-z0-9_-]`, checked by the config).
    pub fn new(namespace: &str, tenant: &TenantId) -> Self {
        Self {
            prefix: format!("{namespace}:t:{{{tenant}}}:"),
        }
    }

    /// `{namespace}:t:{<tenant>}:`, the prefix of every name of the tenant.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The name of `kind` (a host-chosen constant such as `kv`) and `rest`
    /// (anything, e.g. a plugin's key): `{prefix}{kind}:{rest}`.
    pub fn name(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}:{rest}", self.prefix)
    }

    /// A host-owned name with no caller part, e.g. `meta` or `bus`.
    pub fn fixed(&self, kind: &str) -> String {
        format!("{}{kind}", self.prefix)
    }
}

/// The tenant a name built by [`TenantKeys`] under `namespace` belongs to
/// (e.g. for a channel received by a pattern subscription).
pub fn tenant_of(namespace: &str, name: &str) -> Option<TenantId> {
    let rest = name.strip_prefix(namespace)?.strip_prefix(":t:{")?;
    let (tenant, _) = rest.split_once('}')?;
    TenantId::parse(tenant).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn names_carry_the_tenant_as_a_hash_tag() {
        let k = TenantKeys::new("tenantry", &t("acme"));
        assert_eq!(k.prefix(), "tenantry:t:{acme}:");
        assert_eq!(k.name("kv", "user:1"), "tenantry:t:{acme}:kv:user:1");
        assert_eq!(k.fixed("bus"), "tenantry:t:{acme}:bus");
        // Whatever follows, the tenant part is fixed.
        let evil = k.name("kv", "}:t:{other}:kv:x");
        assert!(evil.starts_with("tenantry:t:{acme}:kv:"));
        assert_eq!(tenant_of("tenantry", &evil), Some(t("acme")));
    }

    #[test]
    fn tenant_of_parses_only_well_formed_names() {
        assert_eq!(tenant_of("ns", "ns:t:{a-1}:bus"), Some(t("a-1")));
        for bad in [
            "ns:t:{A}:bus",
            "other:t:{a}:bus",
            "ns:t:a:bus",
            "ns:t:{}:x",
            "ns:t:{a",
        ] {
            assert_eq!(tenant_of("ns", bad), None, "{bad}");
        }
    }
}
