//! Tenancy at the door: which tenant a new connection belongs to, decided
//! from server-trust facts only, once, before the upgrade completes.
//!
//! Order: the path `/t/{tenant}/ws`; else the subdomain of the `Host` header
//! under `base_domain` (`{tenant}.{base_domain}`); else the `X-Tenant-ID`
//! header, only when the operator set `trust_tenant_header`; else the
//! configured default tenant. A source that is present but names an invalid
//! tenant is an error: it never falls through to a later source.

use crate::config::Config;
use crate::tenant::TenantId;

/// Name of the trusted-proxy tenant header (lower-case, as `http` stores it).
pub const TENANT_HEADER: &str = "x-tenant-id";

/// The settings tenant resolution depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenancySettings {
    /// Subdomain tenancy: `{tenant}.{base_domain}` (lower-case, no port).
    pub base_domain: Option<String>,
    /// Whether [`TENANT_HEADER`] is honoured.
    pub trust_tenant_header: bool,
    /// Tenant for connections that name none.
    pub default_tenant: Option<TenantId>,
}

impl TenancySettings {
    /// The tenancy settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            base_domain: config.base_domain.clone(),
            trust_tenant_header: config.trust_tenant_header,
            default_tenant: config.default_tenant.clone(),
        }
    }
}

/// Why no tenant could be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenancyError {
    /// Nothing names a tenant and there is no default tenant.
    #[error("no tenant")]
    NoTenant,
    /// The path, subdomain or header names something that is not a valid tenant id.
    #[error("unknown tenant")]
    Invalid(String),
}

/// Decide the tenant of a connection. `path_tenant` is the `{tenant}` of a
/// `/t/{tenant}/ws` route (already percent-decoded), `host` the `Host` header
/// (or URI authority), `tenant_header` the value of [`TENANT_HEADER`].
pub fn resolve_tenant(
    path_tenant: Option<&str>,
    host: Option<&str>,
    tenant_header: Option<&str>,
    settings: &TenancySettings,
) -> Result<TenantId, TenancyError> {
    let parse = |s: &str| TenantId::parse(s).map_err(|_| TenancyError::Invalid(s.to_owned()));
    if let Some(t) = path_tenant {
        return parse(t);
    }
    if let (Some(base), Some(host)) = (settings.base_domain.as_deref(), host)
        && let Some(label) = subdomain(host, base)
    {
        return parse(&label);
    }
    if settings.trust_tenant_header
        && let Some(h) = tenant_header.map(str::trim).filter(|h| !h.is_empty())
    {
        return parse(h);
    }
    settings
        .default_tenant
        .clone()
        .ok_or(TenancyError::NoTenant)
}

/// The part of `host` before `.{base}`, lower-cased: `Some("acme")` for
/// `acme.example.com:8080` under `example.com`; `Some("a.b")` for a deeper
/// name (an invalid tenant id); `None` when `host` is not under `base` or is
/// `base` itself.
fn subdomain(host: &str, base: &str) -> Option<String> {
    if host.starts_with('[') {
        return None; // IPv6 literal
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let prefix = name.strip_suffix(base)?.strip_suffix('.')?;
    (!prefix.is_empty()).then(|| prefix.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base: Option<&str>, trust: bool, default: Option<&str>) -> TenancySettings {
        TenancySettings {
            base_domain: base.map(str::to_owned),
            trust_tenant_header: trust,
            default_tenant: default.map(|d| TenantId::parse(d).unwrap()),
        }
    }

    fn ok(r: Result<TenantId, TenancyError>) -> String {
        r.unwrap().as_str().to_owned()
    }

    #[test]
    fn path_wins_over_everything() {
        let s = settings(Some("example.com"), true, Some("demo"));
        let r = resolve_tenant(Some("acme"), Some("beta.example.com"), Some("gamma"), &s);
        assert_eq!(ok(r), "acme");
        let r = resolve_tenant(Some("Bad_Id"), Some("beta.example.com"), None, &s);
        assert_eq!(
            r,
            Err(TenancyError::Invalid("Bad_Id".into())),
            "no fall-through"
        );
    }

    #[test]
    fn subdomain_under_base_domain() {
        let s = settings(Some("example.com"), false, Some("demo"));
        for host in [
            "acme.example.com",
            "ACME.Example.com:8080",
            "acme.example.com.",
        ] {
            assert_eq!(
                ok(resolve_tenant(None, Some(host), None, &s)),
                "acme",
                "{host}"
            );
        }
        // Not a tenant subdomain: fall through to the default.
        for host in [
            "example.com",
            "example.com:80",
            "notexample.com",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "acme.other.org",
        ] {
            assert_eq!(
                ok(resolve_tenant(None, Some(host), None, &s)),
                "demo",
                "{host}"
            );
        }
        // Under the base domain but not a valid tenant: refused.
        for host in ["a.b.example.com", "a_b.example.com", "-x.example.com"] {
            assert!(
                matches!(
                    resolve_tenant(None, Some(host), None, &s),
                    Err(TenancyError::Invalid(_))
                ),
                "{host}"
            );
        }
        // Without base_domain the Host header means nothing.
        let s = settings(None, false, None);
        assert_eq!(
            resolve_tenant(None, Some("acme.example.com"), None, &s),
            Err(TenancyError::NoTenant)
        );
    }

    #[test]
    fn header_only_when_trusted() {
        let untrusted = settings(None, false, Some("demo"));
        assert_eq!(
            ok(resolve_tenant(None, None, Some("acme"), &untrusted)),
            "demo"
        );
        let trusted = settings(None, true, Some("demo"));
        assert_eq!(
            ok(resolve_tenant(None, None, Some("acme"), &trusted)),
            "acme"
        );
        assert_eq!(ok(resolve_tenant(None, None, Some(" "), &trusted)), "demo");
        assert!(matches!(
            resolve_tenant(None, None, Some("ACME"), &trusted),
            Err(TenancyError::Invalid(_))
        ));
        // The subdomain comes before the header.
        let both = settings(Some("example.com"), true, None);
        assert_eq!(
            ok(resolve_tenant(
                None,
                Some("beta.example.com"),
                Some("acme"),
                &both
            )),
            "beta"
        );
        assert_eq!(
            ok(resolve_tenant(
                None,
                Some("example.com"),
                Some("acme"),
                &both
            )),
            "acme"
        );
    }

    #[test]
    fn default_or_nothing() {
        assert_eq!(
            ok(resolve_tenant(
                None,
                None,
                None,
                &settings(None, false, Some("demo"))
            )),
            "demo"
        );
        assert_eq!(
            resolve_tenant(None, Some("localhost"), None, &settings(None, true, None)),
            Err(TenancyError::NoTenant)
        );
    }
}
