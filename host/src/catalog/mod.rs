//! The catalog: the durable record of every tenant the host serves — its
//! plan and limit overrides, suspension, deploy keys (hashed), uploaded
//! plugin versions (their bytes by content hash) and which version is active.
//!
//! The admin API ([`crate::admin`]) and the start-up seeding change it through
//! [`crate::control`]; the live registry ([`crate::tenant::Registry`]) is
//! built from it. Stores implement [`CatalogStore`] and pass the one
//! behavioural suite in `conformance` (test builds): [`memory::MemoryCatalog`] (no data
//! directory: lost on restart) and [`disk::DiskCatalog`] (`--data-dir`).
//!
//! Crash safety is the stores' contract: [`CatalogStore::put_blob`] is
//! durable before it returns, and [`CatalogStore::put`] replaces a tenant's
//! record atomically, so a record never names bytes that are not stored and a
//! killed host restarts with either the old or the new record.

pub mod disk;
pub mod memory;
pub mod postgres;

#[cfg(test)]
pub(crate) mod conformance;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plan::PlanOverrides;
use crate::tenant::TenantId;

/// One tenant as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// The tenant's id (also the record's key).
    pub id: TenantId,
    /// Name of its plan.
    pub plan: String,
    /// Its own overrides on top of the plan (`base` is never set).
    #[serde(default)]
    pub limits: PlanOverrides,
    /// Whether connections are refused.
    #[serde(default)]
    pub suspended: bool,
    /// The reason given when it was suspended.
    #[serde(default)]
    pub suspend_reason: Option<String>,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Every uploaded plugin version, oldest first.
    #[serde(default)]
    pub versions: Vec<VersionRecord>,
    /// The active version's id, if any.
    #[serde(default)]
    pub active: Option<String>,
    /// Versions active before the current one, oldest first (rollback pops).
    #[serde(default)]
    pub history: Vec<String>,
    /// A version serving a share of new connections, if a canary runs.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// Deploy keys (hashes only).
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    /// Incremented by every change; lets other hosts notice a newer record.
    #[serde(default)]
    pub revision: u64,
}

impl TenantRecord {
    /// A new tenant with no plugin, no keys and no overrides.
    pub fn new(id: TenantId, plan: String, created_at_ms: u64) -> Self {
        Self {
            id,
            plan,
            limits: PlanOverrides::default(),
            suspended: false,
            suspend_reason: None,
            created_at_ms,
            versions: Vec::new(),
            active: None,
            history: Vec::new(),
            canary: None,
            keys: Vec::new(),
            revision: 0,
        }
    }

    /// The version with id `version`.
    pub fn version(&self, version: &str) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }
}

/// One uploaded plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Version id: the first 12 hex digits of `sha256`.
    pub version: String,
    /// SHA-256 of the `.wasm`, hex (the blob's key).
    pub sha256: String,
    /// Size of the `.wasm` in bytes.
    pub size: u64,
    /// When it was uploaded, milliseconds since the Unix epoch.
    pub uploaded_at_ms: u64,
    /// Who uploaded it: `operator`, `config` or `key:<key id>`.
    pub uploaded_by: String,
    /// The WIT world it targets, e.g. `tenantry:plugin/plugin@0.1.0`.
    pub world: String,
}

/// A canary: `percent` of new connections run `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The canary version's id.
    pub version: String,
    /// Share of new connections routed to it, 1-99.
    pub percent: u8,
}

/// A deploy key: its id and the SHA-256 of the secret key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public key id (`k_` + 12 hex digits), shown in listings and `uploaded_by`.
    pub id: String,
    /// SHA-256 of the whole key, hex.
    pub sha256: String,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// Why a catalog operation failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Reading or writing the store failed.
    #[error("catalog store {op} failed: {message}")]
    Io {
        /// What was being done, e.g. `write tenants/acme/tenant.json`.
        op: String,
        /// The underlying error.
        message: String,
    },
    /// A stored record could not be decoded.
    #[error("catalog record {what} is corrupt: {message}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoding error.
        message: String,
    },
    /// [`CatalogStore::replace`] found another revision than the one read:
    /// someone else changed the tenant in between.
    #[error("tenant {id} was changed by someone else at the same time")]
    Conflict {
        /// The tenant.
        id: String,
    },
}

/// A change another process (or this one) made to the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogChange {
    /// This tenant's record changed or was deleted.
    Tenant(TenantId),
    /// Changes may have been missed (e.g. after a reconnect): re-read everything.
    All,
}

/// Where the catalog is kept. Every method is atomic on its own; callers
/// serialise changes to one tenant (see [`crate::control`]).
#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Every tenant record, sorted by id. A corrupt record is skipped and
    /// reported in the second list (with its id and why), so one bad file
    /// never hides the other tenants.
    async fn list(&self) -> Result<(Vec<TenantRecord>, Vec<(String, CatalogError)>), CatalogError>;
    /// The record of `id`, if any.
    async fn get(&self, id: &TenantId) -> Result<Option<TenantRecord>, CatalogError>;
    /// Create or replace the record of `record.id`, atomically.
    async fn put(&self, record: &TenantRecord) -> Result<(), CatalogError>;
    /// Like [`CatalogStore::put`], but only if the stored record is still
    /// the one the caller read: its revision is `read_revision` (`None`: no
    /// record is stored). Otherwise nothing is written and the answer is
    /// [`CatalogError::Conflict`]. This is how hosts sharing a store avoid
    /// overwriting each other's changes.
    async fn replace(
        &self,
        record: &TenantRecord,
        read_revision: Option<u64>,
    ) -> Result<(), CatalogError>;
    /// Remove the tenant: its record and every blob. `false` if it did not exist.
    async fn delete(&self, id: &TenantId) -> Result<bool, CatalogError>;
    /// Store a plugin's bytes under their SHA-256 (hex) for `id`. Durable
    /// before it returns; storing the same bytes again is a no-op.
    async fn put_blob(&self, id: &TenantId, sha256: &str, bytes: &[u8])
    -> Result<(), CatalogError>;
    /// The bytes stored under `sha256` for `id`, if any. The store checks
    /// them against the hash: corrupt bytes are an error, never returned.
    async fn get_blob(&self, id: &TenantId, sha256: &str) -> Result<Option<Vec<u8>>, CatalogError>;
    /// Remove the bytes stored under `sha256` for `id` (absent: no-op).
    async fn delete_blob(&self, id: &TenantId, sha256: &str) -> Result<(), CatalogError>;
    /// Changes made through any handle on the same store, as they commit. `None`: the store is
    /// private to this process (memory, disk). Each call returns a new receiver.
    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<CatalogChange>> {
        None
    }
    /// Whether the store answers now (`/readyz`): a name for the check and
    /// `Err` with the reason if not. `None`: nothing remote to check.
    async fn health(&self) -> Option<(&'static str, Result<(), CatalogError>)> {
        None
    }
}

/// Refuse a blob name that is not a SHA-256 in hex (64 lowercase hex
/// digits). Stores check every name with it before using it, in particular
/// before building a path from it.
pub(crate) fn check_sha256(id: &TenantId, sha256: &str) -> Result<(), CatalogError> {
    let ok = sha256.len() == 64
        && sha256
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Io {
            op: format!("use blob name {sha256:?} of tenant {id}"),
            message: "not a SHA-256: expected 64 lowercase hex digits".to_owned(),
        })
    }
}

/// The SHA-256 of `bytes`, lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Check that `bytes` hash to `sha256`; `source` says where they came from
/// (`upload`, a file path) for the error. Blocking on large inputs: call it
/// from `spawn_blocking`.
pub(crate) fn check_blob_bytes(
    id: &TenantId,
    sha256: &str,
    bytes: &[u8],
    source: &str,
) -> Result<(), CatalogError> {
    let actual = sha256_hex(bytes);
    if actual == sha256 {
        Ok(())
    } else {
        Err(CatalogError::Corrupt {
            what: format!("blob {sha256} of tenant {id} ({source})"),
            message: format!("its {} bytes hash to {actual}", bytes.len()),
        })
    }
}
