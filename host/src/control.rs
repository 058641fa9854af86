//! The control plane: every change to tenants and their plugin versions —
//! create, re-plan, suspend, resume, delete, deploy keys, upload, activate,
//! canary, rollback — made durable in the [catalog](crate::catalog) first
//! and then applied to the live [registry](crate::tenant::Registry), so what
//! this process serves always matches a record the catalog holds.
//!
//! Changes to one tenant are serialised (a per-tenant async lock); a slow
//! compile of an upload runs before the lock is taken.
//!
//! Activation loads the new version *before* the record is written, so a
//! version that cannot be loaded is never made active; the live switch is
//! one pointer swap (calls in flight finish on the version they started on).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::Backends;
use crate::catalog::{
    Canary, CatalogChange, CatalogError, CatalogStore, KeyRecord, TenantRecord, VersionRecord,
    sha256_hex,
};
use crate::plan::{Plan, PlanOverrides};
use crate::quota::TenantQuota;
use crate::runtime::{Plugin, PluginRejection, Runtime};
use crate::server::ws::CLOSE_POLICY;
use crate::tenant::{Deployment, Registry, Tenant, TenantId};

/// Plugin versions one tenant may keep (delete old ones to upload more).
pub const MAX_VERSIONS_PER_TENANT: usize = 100;
/// Deploy keys one tenant may have.
pub const MAX_KEYS_PER_TENANT: usize = 20;
/// Activations remembered for rollback.
const MAX_HISTORY: usize = 50;
/// Compile budget of the plugins named in the configuration file.
const CONFIG_COMPILE_BUDGET: Duration = Duration::from_secs(600);
/// Times a change is re-applied after another host changed the same tenant.
pub const CONFLICT_RETRIES: u32 = 5;

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Largest plugin upload, bytes.
    pub max_upload_bytes: usize,
    /// Compile budget of one upload.
    pub compile_timeout: Duration,
    /// Worker threads one tenant's long calls may hold (see `cpu_workers_per_tenant`).
    pub cpu_slots: usize,
    /// The largest `memory_limit_mb` the runtime's instance slots allow, bytes.
    pub max_memory_bytes: usize,
}

/// Who asks for a change (recorded as a version's `uploaded_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The operator token.
    Operator,
    /// The configuration file, at start.
    Config,
    /// A tenant's deploy key, by key id.
    Key(String),
}

impl Actor {
    fn label(&self) -> String {
        match self {
            Actor::Operator => "operator".into(),
            Actor::Config => "config".into(),
            Actor::Key(id) => format!("key:{id}"),
        }
    }
}

/// Why a control-plane operation failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such tenant, version or key.
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A request value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The upload is over the size cap.
    #[error("the plugin is {size} bytes; uploads are limited to {limit} bytes")]
    TooLarge {
        /// Size of the upload.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The upload is not a plugin this host runs.
    #[error(transparent)]
    Plugin(#[from] PluginRejection),
    /// The catalog store failed.
    #[error(transparent)]
    Store(#[from] CatalogError),
    /// A stored version could not be loaded.
    #[error("cannot load version {version}: {message}")]
    Load {
        /// The version.
        version: String,
        /// Why.
        message: String,
    },
    /// A backend failed while removing a tenant's data.
    #[error("{0}")]
    Backend(String),
    /// The tenant already has an upload being checked and compiled.
    #[error("tenant {0} already has an upload being compiled; retry when it is done")]
    Busy(TenantId),
}

/// At most one upload per tenant is compiled at a time, so a tenant's deploy
/// key cannot keep the host's compile slots (and cores) to itself.
#[derive(Default)]
struct CompilesInFlight {
    tenants: parking_lot::Mutex<std::collections::HashSet<TenantId>>,
}

/// Held while a tenant's upload compiles.
struct CompileTurn<'a> {
    set: &'a CompilesInFlight,
    tenant: TenantId,
}

impl CompilesInFlight {
    fn try_begin(&self, tenant: &TenantId) -> Option<CompileTurn<'_>> {
        self.tenants
            .lock()
            .insert(tenant.clone())
            .then(|| CompileTurn {
                set: self,
                tenant: tenant.clone(),
            })
    }
}

impl Drop for CompileTurn<'_> {
    fn drop(&mut self) {
        self.set.tenants.lock().remove(&self.tenant);
    }
}

/// A newly created deploy key: its record and the secret, shown once.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The stored record (id, hash, creation time).
    pub record: KeyRecord,
    /// The key itself (`tdk_…`); only its hash is kept.
    pub secret: String,
}

/// The result of an upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The version (new, or the existing one with the same bytes).
    pub version: VersionRecord,
    /// Whether the bytes were new to this tenant.
    pub created: bool,
    /// The tenant's record after the upload.
    pub tenant: TenantRecord,
}

/// The control plane of one process. Cheap to share behind an `Arc`.
pub struct Control {
    catalog: Arc<dyn CatalogStore>,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    /// The backends whose tenant data a delete purges.
    backends: Backends,
    plans: BTreeMap<String, Plan>,
    default_plan: String,
    settings: ControlSettings,
    locks: parking_lot::Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
    /// SHA-256 of every deploy key → (tenant, key id).
    keys: parking_lot::RwLock<HashMap<String, (TenantId, String)>>,
    /// The record revision each live tenant was last brought up to date with.
    applied: parking_lot::Mutex<HashMap<TenantId, u64>>,
    /// Tenants with an upload compiling.
    compiling: CompilesInFlight,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn not_found(id: &TenantId) -> ControlError {
    ControlError::NotFound(format!("tenant {:?} does not exist", id.as_str()))
}

impl Control {
    /// A control plane over `catalog`, serving into `registry`. Call
    /// [`Control::load`] to bring the catalog's tenants live.
    pub fn new(
        catalog: Arc<dyn CatalogStore>,
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        backends: Backends,
        plans: BTreeMap<String, Plan>,
        default_plan: String,
        settings: ControlSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            catalog,
            runtime,
            registry,
            backends,
            plans,
            default_plan,
            settings,
            locks: parking_lot::Mutex::new(HashMap::new()),
            keys: parking_lot::RwLock::new(HashMap::new()),
            applied: parking_lot::Mutex::new(HashMap::new()),
            compiling: CompilesInFlight::default(),
        })
    }

    /// The control plane's settings.
    pub fn settings(&self) -> &ControlSettings {
        &self.settings
    }

    /// Bring every tenant of the catalog live. A tenant whose record is
    /// corrupt is skipped and one whose active version cannot be loaded is
    /// served without a plugin; both are logged, neither stops the others.
    /// Returns how many tenants are live.
    pub async fn load(&self) -> Result<usize, ControlError> {
        self.refresh_all().await?;
        Ok(self.registry.ids().len())
    }

    /// Create `id` from the configuration unless the catalog knows it:
    /// with its plan, limits and suspension, and `wasm` uploaded and
    /// activated. `false` if it already existed (the catalog wins).
    pub async fn seed(
        &self,
        id: &TenantId,
        plan: &str,
        limits: &PlanOverrides,
        suspended: bool,
        wasm: &[u8],
    ) -> Result<bool, ControlError> {
        if let Some(rec) = self.catalog.get(id).await? {
            if rec.versions.is_empty() && rec.active.is_none() {
                // An earlier start created it but could not deploy its
                // plugin (e.g. a bad path, fixed since): finish the seed.
                self.upload(id, wasm, &Actor::Config, true).await?;
                tracing::info!(tenant = %id, "configured tenant had no plugin; deployed the configured one");
                return Ok(true);
            }
            tracing::debug!(tenant = %id, "configured tenant already in the registry; keeping the registry's");
            return Ok(false);
        }
        let seeded = async {
            self.create_tenant(id.clone(), Some(plan.to_owned()), limits.clone(), false)
                .await?;
            self.upload(id, wasm, &Actor::Config, true).await?;
            if suspended {
                self.suspend(id, None).await?;
            }
            Ok(())
        };
        match seeded.await {
            Ok(()) => Ok(true),
            // Another host of the fleet seeded it at the same moment.
            Err(ControlError::Conflict(e)) => {
                tracing::info!(tenant = %id, reason = %e, "configured tenant seeded by another host");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn lock(&self, id: &TenantId) -> tokio::sync::OwnedMutexGuard<()> {
        let m = Arc::clone(self.locks.lock().entry(id.clone()).or_default());
        m.lock_owned().await
    }

    async fn record(&self, id: &TenantId) -> Result<TenantRecord, ControlError> {
        self.catalog.get(id).await?.ok_or_else(|| not_found(id))
    }

    /// The effective plan of `plan` + `limits`, checked.
    fn effective_plan(&self, plan: &str, limits: &PlanOverrides) -> Result<Plan, ControlError> {
        let base = self.plans.get(plan).ok_or_else(|| {
            ControlError::Invalid(format!(
                "plan {plan:?} is not a plan (known: {})",
                self.plans.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if limits.base.is_some() {
            return Err(ControlError::Invalid(
                "`base` belongs to plans, not to a tenant's limits".into(),
            ));
        }
        let plan = base.with(limits);
        plan.validate()
            .map_err(|e| ControlError::Invalid(format!("limits.{e}")))?;
        if plan.memory_limit_bytes() > self.settings.max_memory_bytes {
            return Err(ControlError::Invalid(format!(
                "limits.memory_limit_mb {} is over this host's instance size of {} MiB \
                 (the largest memory_limit_mb of its configured plans)",
                plan.memory_limit_mb,
                self.settings.max_memory_bytes >> 20
            )));
        }
        Ok(plan)
    }

    /// The plan `rec` runs on here: its own, or the default plan (logged)
    /// when its plan or limits are not valid on this host (e.g. the plan was
    /// removed from the configuration).
    fn plan_for(&self, rec: &TenantRecord) -> Result<(String, Plan), ControlError> {
        match self.effective_plan(&rec.plan, &rec.limits) {
            Ok(plan) => Ok((rec.plan.clone(), plan)),
            Err(e) => {
                tracing::warn!(tenant = %rec.id, plan = %rec.plan, error = %e,
                    "the tenant's plan or limits are not valid on this host; using the default plan");
                let plan = self
                    .plans
                    .get(&self.default_plan)
                    .cloned()
                    .ok_or_else(|| ControlError::Invalid("no default plan".into()))?;
                Ok((self.default_plan.clone(), plan))
            }
        }
    }

    /// The live tenant of `rec`, created or updated to match it.
    async fn go_live(&self, rec: &TenantRecord) -> Result<Arc<Tenant>, ControlError> {
        let (plan_name, plan) = self.plan_for(rec)?;
        let tenant = match self.registry.get(&rec.id) {
            Some(t) => {
                t.set_plan(plan_name, plan);
                t
            }
            None => {
                self.provision_sql(&rec.id, &plan).await;
                self.registry.insert(Tenant::new(
                    rec.id.clone(),
                    plan_name,
                    TenantQuota::new(plan, self.settings.cpu_slots),
                ))
            }
        };
        tenant.set_suspended(rec.suspended);
        let deployment = self.prepare(&tenant, rec).await?;
        tenant.set_deployment(deployment);
        self.applied.lock().insert(rec.id.clone(), rec.revision);
        Ok(tenant)
    }

    /// Create the SQL role and schema of a tenant coming live in this
    /// process (new, loaded at start, or first seen from another host),
    /// when the host has `[postgres]`. A failure is logged, not fatal: the
    /// tenant's first SQL call provisions again.
    async fn provision_sql(&self, id: &TenantId, plan: &Plan) {
        if let Some(sql) = &self.backends.sql {
            let limits = crate::backend::postgres::SqlLimits::of(plan);
            if let Err(e) = sql.provision(id, &limits).await {
                tracing::error!(tenant = %id, error = %e, "could not provision the tenant's SQL schema and role");
            }
        }
    }

    /// The deployment `rec` describes, reusing plugins already loaded.
    async fn prepare(
        &self,
        tenant: &Tenant,
        rec: &TenantRecord,
    ) -> Result<Deployment, ControlError> {
        let current = tenant.deployment();
        let loaded = |v: &str| -> Option<Arc<Plugin>> {
            current
                .active
                .iter()
                .chain(current.canary.iter().map(|(p, _)| p))
                .find(|p| p.version == v)
                .cloned()
        };
        let mut deployment = Deployment::default();
        if let Some(v) = &rec.active {
            deployment.active = Some(match loaded(v) {
                Some(p) => p,
                None => self.load_version(tenant, rec, v).await?,
            });
        }
        if let Some(c) = &rec.canary {
            let p = match loaded(&c.version) {
                Some(p) => p,
                None => self.load_version(tenant, rec, &c.version).await?,
            };
            deployment.canary = Some((p, c.percent));
        }
        Ok(deployment)
    }

    async fn load_version(
        &self,
        tenant: &Tenant,
        rec: &TenantRecord,
        version: &str,
    ) -> Result<Arc<Plugin>, ControlError> {
        let load_err = |message: String| ControlError::Load {
            version: version.to_owned(),
            message,
        };
        let v = rec
            .version(version)
            .ok_or_else(|| load_err("no such version in the record".into()))?;
        let bytes = self
            .catalog
            .get_blob(&rec.id, &v.sha256)
            .await?
            .ok_or_else(|| load_err("its bytes are missing from the store".into()))?;
        self.runtime
            .load_plugin(rec.id.clone(), Arc::clone(&tenant.quota), &bytes)
            .await
            .map_err(|e| load_err(e.to_string()))
    }

    /// Write `rec` (revision + 1) and make the live tenant match it. `rec`
    /// is a record read from the catalog, or a new one (revision 0, `new`):
    /// if another host changed or created it since, nothing is written and
    /// the answer is `Conflict`.
    async fn commit(&self, mut rec: TenantRecord, new: bool) -> Result<TenantRecord, ControlError> {
        let read = (!new).then_some(rec.revision);
        rec.revision += 1;
        let tenant = self.registry.get(&rec.id);
        // Load new versions before anything is written.
        let deployment = match &tenant {
            Some(t) => Some(self.prepare(t, &rec).await?),
            None => None,
        };
        self.catalog
            .replace(&rec, read)
            .await
            .map_err(|e| match e {
                CatalogError::Conflict { .. } => {
                    ControlError::Conflict(format!("{e}; read it again and retry"))
                }
                e => ControlError::Store(e),
            })?;
        self.index_keys(&rec);
        match (tenant, deployment) {
            (Some(t), Some(d)) => {
                let (plan_name, plan) = self.plan_for(&rec)?;
                t.set_plan(plan_name, plan);
                t.set_suspended(rec.suspended);
                t.set_deployment(d);
                self.applied.lock().insert(rec.id.clone(), rec.revision);
            }
            _ => {
                self.go_live(&rec).await?;
            }
        }
        Ok(rec)
    }

    /// Every tenant's record, sorted by id.
    pub async fn list(&self) -> Result<Vec<TenantRecord>, ControlError> {
        Ok(self.catalog.list().await?.0)
    }

    /// One tenant's record.
    pub async fn get(&self, id: &TenantId) -> Result<TenantRecord, ControlError> {
        self.record(id).await
    }

    /// Create tenant `id` on `plan` (default: the host's default plan) with
    /// `limits`; it has no plugin until a version is activated.
    pub async fn create_tenant(
        &self,
        id: TenantId,
        plan: Option<String>,
        limits: PlanOverrides,
        suspended: bool,
    ) -> Result<TenantRecord, ControlError> {
        let plan = plan.unwrap_or_else(|| self.default_plan.clone());
        self.effective_plan(&plan, &limits)?;
        let _guard = self.lock(&id).await;
        if self.catalog.get(&id).await?.is_some() {
            return Err(ControlError::Conflict(format!(
                "tenant {:?} already exists",
                id.as_str()
            )));
        }
        let mut rec = TenantRecord::new(id.clone(), plan, now_ms());
        rec.limits = limits;
        rec.suspended = suspended;
        let rec = self.commit(rec, true).await?;
        tracing::info!(tenant = %id, plan = %rec.plan, "tenant created");
        Ok(rec)
    }

    /// Read `id`'s record, apply `change` and commit it, under the
    /// tenant's lock. If another host changed the record in between (a
    /// shared catalog), `change` is applied again to the newer record, up to
    /// [`CONFLICT_RETRIES`] times, before the answer is `Conflict`.
    async fn modify<T>(
        &self,
        id: &TenantId,
        mut change: impl FnMut(&mut TenantRecord) -> Result<T, ControlError>,
    ) -> Result<(TenantRecord, T), ControlError> {
        let _guard = self.lock(id).await;
        let mut attempt = 0;
        loop {
            let mut rec = self.record(id).await?;
            let out = change(&mut rec)?;
            match self.commit(rec, false).await {
                Err(ControlError::Conflict(e)) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(tenant = %id, attempt, reason = %e, "concurrent change; retrying");
                }
                Err(e) => return Err(e),
                Ok(rec) => return Ok((rec, out)),
            }
        }
    }

    /// Change the plan and/or replace the limit overrides of `id`.
    pub async fn update_tenant(
        &self,
        id: &TenantId,
        plan: Option<String>,
        limits: Option<PlanOverrides>,
    ) -> Result<TenantRecord, ControlError> {
        let (rec, ()) = self
            .modify(id, |rec| {
                if let Some(plan) = &plan {
                    rec.plan = plan.clone();
                }
                if let Some(limits) = &limits {
                    rec.limits = limits.clone();
                }
                self.effective_plan(&rec.plan, &rec.limits).map(drop)
            })
            .await?;
        tracing::info!(tenant = %id, plan = %rec.plan, "tenant plan updated");
        Ok(rec)
    }

    /// Refuse new connections of `id` and close its open ones with 1008
    /// and `reason` (default `tenant suspended`).
    pub async fn suspend(
        &self,
        id: &TenantId,
        reason: Option<String>,
    ) -> Result<TenantRecord, ControlError> {
        let reason = reason
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "tenant suspended".to_owned());
        if reason.len() > 120 {
            return Err(ControlError::Invalid(
                "the suspension reason is limited to 120 bytes (it is a WebSocket close reason)"
                    .into(),
            ));
        }
        let (rec, ()) = self
            .modify(id, |rec| {
                rec.suspended = true;
                rec.suspend_reason = Some(reason.clone());
                Ok(())
            })
            .await?;
        if let Some(t) = self.registry.get(id) {
            t.evict(CLOSE_POLICY, reason);
        }
        tracing::info!(tenant = %id, "tenant suspended");
        Ok(rec)
    }

    /// The tenants this host serves now (live state: connections, plans, usage).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The backends (for reads the admin API serves, e.g. publish rates).
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Let connections of `id` in again.
    pub async fn resume(&self, id: &TenantId) -> Result<TenantRecord, ControlError> {
        let (rec, ()) = self
            .modify(id, |rec| {
                rec.suspended = false;
                rec.suspend_reason = None;
                Ok(())
            })
            .await?;
        tracing::info!(tenant = %id, "tenant resumed");
        Ok(rec)
    }

    /// Delete `id`: its record and plugins, its open connections (closed
    /// with 1008 `tenant deleted`) and its data in every backend.
    pub async fn delete_tenant(&self, id: &TenantId) -> Result<(), ControlError> {
        let _guard = self.lock(id).await;
        if !self.catalog.delete(id).await? {
            return Err(not_found(id));
        }
        self.forget(id);
        let purged = self.backends.purge_tenant(id).await.map_err(|(what, e)| {
            ControlError::Backend(format!(
                "tenant {id} is deleted but its {what} could not be removed: {e}"
            ))
        })?;
        tracing::info!(tenant = %id, ?purged, "tenant deleted");
        Ok(())
    }

    /// Make the key index hold exactly `rec`'s keys for its tenant.
    fn index_keys(&self, rec: &TenantRecord) {
        let mut keys = self.keys.write();
        keys.retain(|_, (t, _)| *t != rec.id);
        for k in &rec.keys {
            keys.insert(k.sha256.clone(), (rec.id.clone(), k.id.clone()));
        }
    }

    /// Drop a deleted tenant from this process: its keys, and its live
    /// tenant (open connections closed with 1008 `tenant deleted`).
    fn forget(&self, id: &TenantId) {
        self.keys.write().retain(|_, (t, _)| t != id);
        self.applied.lock().remove(id);
        if let Some(sql) = &self.backends.sql {
            sql.forget(id);
        }
        if let Some(t) = self.registry.remove(id) {
            t.set_suspended(true);
            t.evict(CLOSE_POLICY, "tenant deleted");
        }
    }

    /// Follow the changes other processes make to a shared catalog
    /// (Postgres): each changed tenant is re-read and applied live within
    /// moments of the commit. `None` when the catalog is private to this
    /// process. The task ends when the store's change stream does.
    pub fn follow_changes(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let mut changes = self.catalog.changes()?;
        let this = Arc::clone(self);
        Some(tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let result = match &change {
                    CatalogChange::Tenant(id) => this.refresh(id).await,
                    CatalogChange::All => this.refresh_all().await,
                };
                if let Err(e) = result {
                    tracing::error!(?change, error = %e, "could not apply a registry change");
                }
            }
        }))
    }

    /// Bring the live tenant `id` up to date with its record (created,
    /// changed, suspended or deleted by another process).
    pub async fn refresh(&self, id: &TenantId) -> Result<(), ControlError> {
        let _guard = self.lock(id).await;
        let Some(rec) = self.catalog.get(id).await? else {
            if self.registry.get(id).is_some() {
                tracing::info!(tenant = %id, "tenant deleted by another host");
            }
            self.forget(id);
            return Ok(());
        };
        if self.applied.lock().get(id) == Some(&rec.revision) {
            return Ok(());
        }
        let was_suspended = self.registry.get(id).is_some_and(|t| t.is_suspended());
        self.index_keys(&rec);
        let tenant = self.go_live(&rec).await?;
        if rec.suspended && !was_suspended {
            tenant.evict(
                CLOSE_POLICY,
                rec.suspend_reason.as_deref().unwrap_or("tenant suspended"),
            );
        }
        tracing::info!(tenant = %id, revision = rec.revision, active = rec.active.as_deref(), "applied a registry change");
        Ok(())
    }

    /// Re-read every tenant (after changes may have been missed).
    pub async fn refresh_all(&self) -> Result<(), ControlError> {
        let (records, broken) = self.catalog.list().await?;
        for (id, e) in broken {
            tracing::error!(tenant = %id, error = %e, "skipping a tenant whose record cannot be read");
        }
        let known: std::collections::HashSet<TenantId> =
            records.iter().map(|r| r.id.clone()).collect();
        for id in self.registry.ids() {
            if !known.contains(&id) {
                self.refresh(&id).await?;
            }
        }
        for rec in records {
            if let Err(e) = self.refresh(&rec.id).await {
                tracing::error!(tenant = %rec.id, error = %e, "could not apply a registry change");
            }
        }
        Ok(())
    }

    /// The tenant and key id of deploy key `secret`, if it is one.
    pub fn authenticate_key(&self, secret: &str) -> Option<(TenantId, String)> {
        self.keys
            .read()
            .get(&sha256_hex(secret.as_bytes()))
            .cloned()
    }

    /// Create a deploy key for `id`.
    pub async fn create_key(&self, id: &TenantId) -> Result<NewKey, ControlError> {
        let random = || uuid::Uuid::new_v4().simple().to_string();
        let secret = format!("tdk_{}{}", random(), random());
        let record = KeyRecord {
            id: format!("k_{}", &random()[..12]),
            sha256: sha256_hex(secret.as_bytes()),
            created_at_ms: now_ms(),
        };
        self.modify(id, |rec| {
            if rec.keys.len() >= MAX_KEYS_PER_TENANT {
                return Err(ControlError::Conflict(format!(
                    "tenant {id} already has {MAX_KEYS_PER_TENANT} deploy keys; delete one first"
                )));
            }
            rec.keys.push(record.clone());
            Ok(())
        })
        .await?;
        tracing::info!(tenant = %id, key = %record.id, "deploy key created");
        Ok(NewKey { record, secret })
    }

    /// Revoke deploy key `key_id` of `id`.
    pub async fn delete_key(&self, id: &TenantId, key_id: &str) -> Result<(), ControlError> {
        self.modify(id, |rec| {
            let Some(pos) = rec.keys.iter().position(|k| k.id == key_id) else {
                return Err(ControlError::NotFound(format!(
                    "tenant {id} has no deploy key {key_id:?}"
                )));
            };
            rec.keys.remove(pos);
            Ok(())
        })
        .await?;
        tracing::info!(tenant = %id, key = %key_id, "deploy key deleted");
        Ok(())
    }

    /// Validate and store a plugin upload for `id`; with `activate`, make
    /// it the active version. Uploading bytes the tenant already has
    /// returns that version.
    pub async fn upload(
        &self,
        id: &TenantId,
        wasm: &[u8],
        actor: &Actor,
        activate: bool,
    ) -> Result<Uploaded, ControlError> {
        if wasm.len() > self.settings.max_upload_bytes {
            return Err(ControlError::TooLarge {
                size: wasm.len(),
                limit: self.settings.max_upload_bytes,
            });
        }
        // Unknown tenants are refused before any compile work.
        let before = self.record(id).await?;
        let _turn = self
            .compiling
            .try_begin(id)
            .ok_or_else(|| ControlError::Busy(id.clone()))?;
        // The operator's own configured plugins are not held to the upload
        // compile budget.
        let budget = match actor {
            Actor::Config => CONFIG_COMPILE_BUDGET,
            _ => self.settings.compile_timeout,
        };
        let info = self.runtime.check_plugin(wasm, budget).await?;
        let version_id = info.sha256[..12].to_owned();
        // The bytes are durable before any record names them.
        if before.version(&version_id).is_none() {
            self.catalog.put_blob(id, &info.sha256, wasm).await?;
        }
        let new_version = VersionRecord {
            version: version_id.clone(),
            sha256: info.sha256.clone(),
            size: wasm.len() as u64,
            uploaded_at_ms: now_ms(),
            uploaded_by: actor.label(),
            world: info.world.clone(),
        };
        let (tenant, (version, created)) = self
            .modify(id, |rec| {
                let created = rec.version(&version_id).is_none();
                if created {
                    if rec.versions.len() >= MAX_VERSIONS_PER_TENANT {
                        return Err(ControlError::Conflict(format!(
                            "tenant {id} already has {MAX_VERSIONS_PER_TENANT} plugin versions; delete old ones first"
                        )));
                    }
                    rec.versions.push(new_version.clone());
                }
                if activate {
                    set_active(rec, &version_id);
                }
                let version = rec.version(&version_id).cloned().unwrap_or_else(|| new_version.clone());
                Ok((version, created))
            })
            .await?;
        tracing::info!(tenant = %id, version = %version_id, created, activate, by = %actor.label(), "plugin uploaded");
        Ok(Uploaded {
            version,
            created,
            tenant,
        })
    }

    /// Make `version` the active version of `id` or, with `canary_percent`,
    /// its canary for that share of new connections.
    pub async fn activate(
        &self,
        id: &TenantId,
        version: &str,
        canary_percent: Option<u8>,
    ) -> Result<TenantRecord, ControlError> {
        if let Some(p) = canary_percent
            && !(1..=99).contains(&p)
        {
            return Err(ControlError::Invalid(format!(
                "canary_percent must be between 1 and 99, not {p}"
            )));
        }
        let (rec, ()) = self
            .modify(id, |rec| {
                if rec.version(version).is_none() {
                    return Err(ControlError::NotFound(format!(
                        "tenant {id} has no plugin version {version:?}"
                    )));
                }
                match canary_percent {
                    Some(_) if rec.active.is_none() => Err(ControlError::Conflict(format!(
                        "tenant {id} has no active version to run a canary beside; activate one first"
                    ))),
                    Some(_) if rec.active.as_deref() == Some(version) => Err(
                        ControlError::Conflict(format!("version {version} is already active")),
                    ),
                    Some(percent) => {
                        rec.canary = Some(Canary {
                            version: version.to_owned(),
                            percent,
                        });
                        Ok(())
                    }
                    None => {
                        set_active(rec, version);
                        Ok(())
                    }
                }
            })
            .await?;
        tracing::info!(tenant = %id, version, canary_percent, "plugin version activated");
        Ok(rec)
    }

    /// End a running canary; otherwise re-activate the version active
    /// before the current one.
    pub async fn rollback(&self, id: &TenantId) -> Result<TenantRecord, ControlError> {
        let (rec, ()) = self
            .modify(id, |rec| {
                if rec.canary.take().is_some() {
                    return Ok(());
                }
                loop {
                    let Some(prev) = rec.history.pop() else {
                        return Err(ControlError::Conflict(format!(
                            "tenant {id} has no earlier version to roll back to"
                        )));
                    };
                    if rec.version(&prev).is_some() && rec.active.as_deref() != Some(prev.as_str())
                    {
                        rec.active = Some(prev);
                        return Ok(());
                    }
                }
            })
            .await?;
        tracing::info!(tenant = %id, active = rec.active.as_deref(), "rolled back");
        Ok(rec)
    }

    /// Delete an inactive, non-canary version of `id`.
    pub async fn delete_version(&self, id: &TenantId, version: &str) -> Result<(), ControlError> {
        let (_, removed) = self
            .modify(id, |rec| {
                let Some(pos) = rec.versions.iter().position(|v| v.version == version) else {
                    return Err(ControlError::NotFound(format!(
                        "tenant {id} has no plugin version {version:?}"
                    )));
                };
                if rec.active.as_deref() == Some(version)
                    || rec.canary.as_ref().is_some_and(|c| c.version == version)
                {
                    return Err(ControlError::Conflict(format!(
                        "version {version} is serving; activate another version first"
                    )));
                }
                rec.history.retain(|v| v != version);
                Ok(rec.versions.remove(pos))
            })
            .await?;
        if let Err(e) = self.catalog.delete_blob(id, &removed.sha256).await {
            tracing::warn!(tenant = %id, version, error = %e, "version deleted but its bytes could not be removed");
        }
        tracing::info!(tenant = %id, version, "plugin version deleted");
        Ok(())
    }
}

/// Make `version` active in `rec`, remembering the previous one for
/// rollback; ends any canary.
fn set_active(rec: &mut TenantRecord, version: &str) {
    if rec.active.as_deref() != Some(version) {
        if let Some(prev) = rec.active.take() {
            rec.history.push(prev);
            if rec.history.len() > MAX_HISTORY {
                rec.history.remove(0);
            }
        }
        rec.active = Some(version.to_owned());
    }
    rec.canary = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_compile_per_tenant_at_a_time() {
        let set = CompilesInFlight::default();
        let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
        let turn = set.try_begin(&a).unwrap();
        assert!(set.try_begin(&a).is_none(), "a second upload of a waits");
        assert!(set.try_begin(&b).is_some(), "other tenants are not held up");
        drop(turn);
        assert!(set.try_begin(&a).is_some(), "free again once done");
    }
}
