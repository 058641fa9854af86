//! The admin API's documents as the client reads them, and their readable
//! text form: key/value blocks for one item, tables for lists.
//!
//! Decoding is lenient: unknown fields are ignored and every field but the
//! identifiers has a default, so a newer host still gets readable output.

use serde::Deserialize;

/// A tenant (`GET /admin/tenants/{id}` and most tenant-changing answers).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tenant {
    /// The tenant id.
    pub id: String,
    /// Its plan.
    #[serde(default)]
    pub plan: String,
    /// Its own limit overrides on top of the plan.
    #[serde(default)]
    pub limits: serde_json::Map<String, serde_json::Value>,
    /// Whether it is suspended.
    #[serde(default)]
    pub suspended: bool,
    /// Why it is suspended.
    #[serde(default)]
    pub suspend_reason: Option<String>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
    /// The active plugin version.
    #[serde(default)]
    pub active_version: Option<String>,
    /// The running canary.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// How many plugin versions it has.
    #[serde(default)]
    pub versions: Option<u64>,
}

/// A running canary: a version and the share of new connections it gets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Canary {
    /// The canary version.
    pub version: String,
    /// Percent of new connections.
    pub percent: u32,
}

/// `GET /admin/tenants`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TenantList {
    /// Every tenant.
    pub tenants: Vec<Tenant>,
}

/// An uploaded plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PluginVersion {
    /// First 12 hex digits of the SHA-256.
    pub version: String,
    /// The SHA-256 of the `.wasm`.
    #[serde(default)]
    pub sha256: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// When it was uploaded (RFC 3339).
    #[serde(default)]
    pub uploaded_at: Option<String>,
    /// `operator`, `config` or `key:<key id>`.
    #[serde(default)]
    pub uploaded_by: Option<String>,
    /// The WIT world it targets.
    #[serde(default)]
    pub world: Option<String>,
    /// Whether it is the active version.
    #[serde(default)]
    pub active: bool,
    /// Whether it is the running canary.
    #[serde(default)]
    pub canary: bool,
}

/// The `canary` of a version list: the tenant's canary object, or just its
/// version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CanaryRef {
    /// `{"version", "percent"}`.
    Full(Canary),
    /// `"77aa01c3e9f2"`.
    Version(String),
}

impl CanaryRef {
    /// The canary version.
    pub fn version(&self) -> &str {
        match self {
            CanaryRef::Full(c) => &c.version,
            CanaryRef::Version(v) => v,
        }
    }

    /// Its share of new connections, when the answer says.
    pub fn percent(&self) -> Option<u32> {
        match self {
            CanaryRef::Full(c) => Some(c.percent),
            CanaryRef::Version(_) => None,
        }
    }
}

/// `GET /admin/tenants/{id}/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VersionList {
    /// The active version.
    #[serde(default)]
    pub active: Option<String>,
    /// The running canary.
    #[serde(default)]
    pub canary: Option<CanaryRef>,
    /// Every uploaded version.
    #[serde(default)]
    pub versions: Vec<PluginVersion>,
}

/// `{"deleted": ID}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Deleted {
    /// What was deleted.
    pub deleted: String,
}

/// `POST /admin/tenants/{id}/keys`: the new deploy key (the only time it is shown).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedKey {
    /// The key id.
    pub id: String,
    /// The secret key.
    pub key: String,
    /// Its tenant.
    #[serde(default)]
    pub tenant: String,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// The one-line warning printed with a new key.
pub const KEY_SHOWN_ONCE: &str = "This key is shown only once: store it now.";

/// `n` bytes, readable: `512 B`, `178.9 KiB`, `3.4 MiB`.
pub fn human_bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    // Precision loss is irrelevant at one decimal.
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    if n < KIB {
        format!("{n} B")
    } else if n < MIB {
        format!("{:.1} KiB", f / KIB as f64)
    } else {
        format!("{:.1} MiB", f / MIB as f64)
    }
}

/// `key: value` lines with the values aligned.
fn key_values(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (key, value) in rows {
        let label = format!("{key}:");
        out.push_str(&format!("{label:<w$} {value}\n", w = width));
    }
    out
}

/// A table: a header row and aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_none(v: Option<&str>) -> String {
    v.unwrap_or("none").to_owned()
}

fn status(t: &Tenant) -> String {
    match (&t.suspended, &t.suspend_reason) {
        (false, _) => "enabled".to_owned(),
        (true, Some(reason)) => format!("suspended ({reason})"),
        (true, None) => "suspended".to_owned(),
    }
}

fn limits(t: &Tenant) -> String {
    if t.limits.is_empty() {
        return "plan defaults".to_owned();
    }
    t.limits
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One tenant as key/value lines.
pub fn tenant(t: &Tenant) -> String {
    let canary = t.canary.as_ref().map_or_else(
        || "none".to_owned(),
        |c| format!("{} ({}% of new connections)", c.version, c.percent),
    );
    key_values(&[
        ("id", t.id.clone()),
        ("plan", t.plan.clone()),
        ("status", status(t)),
        ("active version", or_none(t.active_version.as_deref())),
        ("canary", canary),
        ("versions", t.versions.unwrap_or(0).to_string()),
        ("limits", limits(t)),
        ("created", or_none(t.created_at.as_deref())),
    ])
}

/// Tenants as a table.
pub fn tenant_table(tenants: &[Tenant]) -> String {
    if tenants.is_empty() {
        return "no tenants\n".to_owned();
    }
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.plan.clone(),
                if t.suspended { "suspended" } else { "enabled" }.to_owned(),
                t.active_version.clone().unwrap_or_else(|| "-".to_owned()),
                t.canary.as_ref().map_or_else(
                    || "-".to_owned(),
                    |c| format!("{} {}%", c.version, c.percent),
                ),
                t.versions.unwrap_or(0).to_string(),
                t.created_at.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "PLAN", "STATUS", "ACTIVE", "CANARY", "VERSIONS", "CREATED",
        ],
        &rows,
    )
}

/// The state of a version: `active`, `canary 10%`, or empty.
fn version_state(v: &PluginVersion, canary_percent: Option<u32>) -> String {
    match (v.active, v.canary, canary_percent) {
        (true, _, _) => "active".to_owned(),
        (false, true, Some(p)) => format!("canary {p}%"),
        (false, true, None) => "canary".to_owned(),
        (false, false, _) => String::new(),
    }
}

/// A tenant's versions as a table.
pub fn versions(list: &VersionList) -> String {
    if list.versions.is_empty() {
        return "no versions uploaded\n".to_owned();
    }
    let canary_percent = list.canary.as_ref().and_then(CanaryRef::percent);
    let rows: Vec<Vec<String>> = list
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.clone(),
                version_state(v, canary_percent),
                human_bytes(v.size),
                v.uploaded_at.clone().unwrap_or_default(),
                v.uploaded_by.clone().unwrap_or_default(),
                v.world.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["VERSION", "STATE", "SIZE", "UPLOADED", "BY", "WORLD"],
        &rows,
    )
}

/// One version as key/value lines; `canary_percent` completes the
/// `active` line of a canary.
pub fn version(v: &PluginVersion, canary_percent: Option<u32>) -> String {
    let active = match (v.active, v.canary, canary_percent) {
        (true, _, _) => "yes".to_owned(),
        (false, true, Some(p)) => format!("no (canary for {p}% of new connections)"),
        (false, true, None) => "no (canary)".to_owned(),
        (false, false, _) => "no".to_owned(),
    };
    key_values(&[
        ("version", v.version.clone()),
        (
            "size",
            format!("{} bytes ({})", v.size, human_bytes(v.size)),
        ),
        ("sha256", v.sha256.clone()),
        ("world", or_none(v.world.as_deref())),
        ("uploaded", or_none(v.uploaded_at.as_deref())),
        ("uploaded by", or_none(v.uploaded_by.as_deref())),
        ("active", active),
    ])
}

/// A new deploy key, ending with the shown-once warning.
pub fn created_key(k: &CreatedKey) -> String {
    let mut out = key_values(&[
        ("key id", k.id.clone()),
        ("tenant", k.tenant.clone()),
        ("created", or_none(k.created_at.as_deref())),
        ("key", k.key.clone()),
    ]);
    out.push_str(KEY_SHOWN_ONCE);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> Tenant {
        serde_json::from_str(
            r#"{
              "id": "acme",
              "plan": "starter",
              "limits": {"max_connections": 500},
              "suspended": false,
              "suspend_reason": null,
              "created_at": "2026-11-23T17:00:00Z",
              "active_version": "3f2a9c1b0d4e",
              "canary": {"version": "77aa01c3e9f2", "percent": 10},
              "versions": 2
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn tenant_key_values() {
        assert_eq!(
            tenant(&acme()),
            "\
id:             acme
plan:           starter
status:         enabled
active version: 3f2a9c1b0d4e
canary:         77aa01c3e9f2 (10% of new connections)
versions:       2
limits:         max_connections=500
created:        2026-11-23T17:00:00Z
"
        );
        let t: Tenant = serde_json::from_str(
            r#"{"id":"new","plan":"free","limits":{},"suspended":true,"suspend_reason":"billing",
               "created_at":"2026-11-23T17:00:00Z","active_version":null,"canary":null,"versions":0,
               "some_future_field":1}"#,
        )
        .unwrap();
        let text = tenant(&t);
        assert!(
            text.contains("status:         suspended (billing)\n"),
            "{text}"
        );
        assert!(text.contains("active version: none\n"), "{text}");
        assert!(text.contains("canary:         none\n"), "{text}");
        assert!(text.contains("limits:         plan defaults\n"), "{text}");
    }

    #[test]
    fn tenant_list_table() {
        let mut other = acme();
        other.id = "b".into();
        other.suspended = true;
        other.canary = None;
        other.active_version = None;
        assert_eq!(
            tenant_table(&[acme(), other]),
            "\
ID    PLAN     STATUS     ACTIVE        CANARY            VERSIONS  CREATED
acme  starter  enabled    3f2a9c1b0d4e  77aa01c3e9f2 10%  2         2026-11-23T17:00:00Z
b     starter  suspended  -             -                 2         2026-11-23T17:00:00Z
"
        );
        assert_eq!(tenant_table(&[]), "no tenants\n");
    }

    #[test]
    fn version_list_table() {
        let list: VersionList = serde_json::from_str(
            r#"{"active":"3f2a9c1b0d4e","canary":{"version":"77aa01c3e9f2","percent":10},"versions":[
              {"version":"3f2a9c1b0d4e","sha256":"3f2a9c1b0d4e00","size":183204,"uploaded_at":"2026-11-23T17:02:11Z",
               "uploaded_by":"operator","world":"tenantry:plugin/plugin@0.1.0","active":true,"canary":false},
              {"version":"77aa01c3e9f2","sha256":"77aa01c3e9f200","size":900,"uploaded_at":"2026-11-24T08:00:00Z",
               "uploaded_by":"key:k_1","world":"tenantry:plugin/plugin@0.1.0","active":false,"canary":true},
              {"version":"0000aaaa1111","sha256":"0000aaaa111100","size":2097152,"uploaded_at":"2026-11-20T08:00:00Z",
               "uploaded_by":"config","world":"tenantry:plugin/plugin@0.1.0","active":false,"canary":false}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            versions(&list),
            "\
VERSION       STATE       SIZE       UPLOADED              BY        WORLD
3f2a9c1b0d4e  active      178.9 KiB  2026-11-23T17:02:11Z  operator  tenantry:plugin/plugin@0.1.0
77aa01c3e9f2  canary 10%  900 B      2026-11-24T08:00:00Z  key:k_1   tenantry:plugin/plugin@0.1.0
0000aaaa1111              2.0 MiB    2026-11-20T08:00:00Z  config    tenantry:plugin/plugin@0.1.0
"
        );
        // A canary given as a bare version string.
        let list: VersionList =
            serde_json::from_str(r#"{"active":null,"canary":"77aa01c3e9f2","versions":[]}"#)
                .unwrap();
        assert_eq!(
            list.canary.as_ref().map(CanaryRef::version),
            Some("77aa01c3e9f2")
        );
        assert_eq!(versions(&list), "no versions uploaded\n");
    }

    #[test]
    fn one_version_and_a_key() {
        let v = PluginVersion {
            version: "77aa01c3e9f2".into(),
            sha256: "77aa01c3e9f2ff".into(),
            size: 2048,
            uploaded_at: None,
            uploaded_by: Some("operator".into()),
            world: Some("tenantry:plugin/plugin@0.1.0".into()),
            active: false,
            canary: true,
        };
        let text = version(&v, Some(25));
        assert!(
            text.starts_with("version:     77aa01c3e9f2\nsize:        2048 bytes (2.0 KiB)\n"),
            "{text}"
        );
        assert!(
            text.ends_with("active:      no (canary for 25% of new connections)\n"),
            "{text}"
        );

        let k = CreatedKey {
            id: "k_1".into(),
            key: "tk_secret".into(),
            tenant: "acme".into(),
            created_at: Some("2026-11-23T17:00:00Z".into()),
        };
        assert_eq!(
            created_key(&k),
            "\
key id:  k_1
tenant:  acme
created: 2026-11-23T17:00:00Z
key:     tk_secret
This key is shown only once: store it now.
"
        );
    }

    #[test]
    fn an_api_error() {
        let e = crate::admin_client::AdminClientError::from(crate::admin_client::ApiError {
            status: 422,
            code: "INVALID_PLUGIN".into(),
            message: "the component does not export tenantry:plugin/handler".into(),
            request_id: Some("5b0c".into()),
            reason: Some("wrong_world".into()),
            details: vec![
                "export tenantry:plugin/handler@0.1.0 is missing".into(),
                "it exports tenantry:plugin/handler@0.2.0".into(),
            ],
        });
        assert_eq!(
            e.to_string(),
            "\
the component does not export tenantry:plugin/handler [INVALID_PLUGIN, HTTP 422, request id 5b0c]
  reason: wrong_world
  - export tenantry:plugin/handler@0.1.0 is missing
  - it exports tenantry:plugin/handler@0.2.0"
        );
        assert_eq!(crate::admin_client::exit_code(&e), 1);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(183_204), "178.9 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
