//! The WASM runtime: one wasmtime [`Engine`](wasmtime::Engine) per process,
//! an on-disk cache of compiled components, one `InstancePre` per deployed
//! plugin version, and a fresh sandboxed `Store` per call with a CPU deadline
//! (epoch ticks), a memory cap summed over all memories and tables, and the
//! tenant's scope in the store data.
//!
//! A trap, a deadline or a limit only ends the call that caused it: the store
//! and its instance are dropped and the next call gets a fresh one.

mod bindings;
mod cache;
mod engine;
mod limiter;
mod stdio;
mod store;
mod tasks;
pub mod types;
mod validate;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Instance, InstancePre, Linker};
use wasmtime::{Engine, PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};

use bindings::optional::exports::tenantry::plugin::job_events as wit_job_events;
use bindings::optional::exports::tenantry::plugin::notify_events as wit_notify_events;
use bindings::optional::exports::tenantry::plugin::presence_events as wit_presence_events;
use bindings::optional::exports::tenantry::plugin::task_events as wit_task_events;
pub(crate) use bindings::tenantry::plugin as wit;
pub use store::{HostState, Scope};
pub use types::{
    CallContext, CallError, CallerConnection, ConnectRequest, Effect, LiveError,
    MAX_EFFECTS_PER_CALL, PresenceChange, PresenceEvent, User, ValidationIssue,
};
pub use validate::{PluginInfo, PluginRejection};
use wit_job_events::GuestIndices as JobHookIndices;
use wit_notify_events::GuestIndices as NotifyHookIndices;
use wit_presence_events::GuestIndices as PresenceHookIndices;
use wit_task_events::GuestIndices as TaskHookIndices;

use crate::backend::Backends;
use crate::metrics::{self, RefusalKind, TrapKind};
use crate::plan::Plan;
use crate::quota::{Refusal, TenantQuota};
use crate::tenant::TenantId;

/// Process-wide settings of the runtime. Per-call limits (CPU deadline,
/// memory, fuel, result size, instance reuse) come from the calling
/// tenant's plan ([`crate::plan::Plan`]) at each call.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Wall-clock bound on one call including host-import waits (`TIMEOUT`).
    pub call_wall_timeout: Duration,
    /// The largest memory any plan may give one instance, in bytes: the size
    /// of a pool slot. A plan asking for more gets this much.
    pub max_memory: usize,
    /// Plugin instances alive at once in this process (the pool size).
    pub max_instances: u32,
    /// Guest stack one call may use, in bytes (deeper: `RESOURCE_EXHAUSTED`).
    pub max_wasm_stack: usize,
    /// Linear memory a pool slot keeps mapped (reset in place) after a call,
    /// in bytes; the rest is given back to the OS.
    pub memory_keep_resident: usize,
    /// Whether fuel is metered (needed by plans with `fuel_per_call` > 0;
    /// costs some speed for every call).
    pub fuel: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            call_wall_timeout: Duration::from_secs(5),
            max_memory: 64 << 20,
            max_instances: 1000,
            max_wasm_stack: 512 << 10,
            memory_keep_resident: 1 << 20,
            fuel: false,
        }
    }
}

/// How often a plugin drops warm instances idle past their plan's `instance_idle_ms`.
const IDLE_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why the runtime could not start or load a plugin.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine or linker could not be built.
    #[error("cannot start the wasm engine: {0}")]
    Engine(String),
    /// The bytes are not a valid Tenantry plugin component.
    #[error("invalid plugin: {0}")]
    InvalidPlugin(String),
}

/// The process-wide runtime. Cheap to share behind an `Arc`.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<cache::ComponentCache>,
    config: RuntimeConfig,
    backends: Backends,
    /// Calls in flight (the epoch ticker runs faster while any is).
    active_calls: Arc<AtomicUsize>,
    /// Compiles allowed at once (half the cores, at least one), so uploads
    /// cannot take every core from the calls being served.
    compile_slots: Arc<Semaphore>,
}

/// A component ready to link, and whether it came from the disk cache.
struct Compiled {
    component: Component,
    /// SHA-256 of the `.wasm`, lower-case hex.
    hash: String,
    from_cache: bool,
}

/// Counts a call in [`Runtime::active_calls`] while alive.
struct ActiveCall<'a>(&'a AtomicUsize);

impl<'a> ActiveCall<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for ActiveCall<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Build the engine and linker and start the epoch ticker.
    pub fn new(config: RuntimeConfig, backends: Backends) -> Result<Arc<Runtime>, RuntimeError> {
        let engine =
            engine::build_engine(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let active_calls = Arc::new(AtomicUsize::new(0));
        engine::start_epoch_ticker(&engine, Arc::clone(&active_calls))
            .map_err(|e| RuntimeError::Engine(format!("epoch ticker thread: {e}")))?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("linking WASI: {e:#}")))?;
        bindings::PluginCore::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("linking host imports: {e:#}")))?;
        let cache = config
            .cache_dir
            .clone()
            .map(|dir| cache::ComponentCache::new(dir, &engine));
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            config,
            backends,
            active_calls,
            compile_slots: Arc::new(Semaphore::new(compile_slots())),
        }))
    }

    /// Compile (or load from the disk cache) `wasm` and prepare it to serve
    /// `tenant`, whose plan and quota state is `quota`. Compilation runs on a
    /// blocking thread, within the runtime's compile slots.
    pub async fn load_plugin(
        self: &Arc<Self>,
        tenant: TenantId,
        quota: Arc<TenantQuota>,
        wasm: &[u8],
    ) -> Result<Arc<Plugin>, RuntimeError> {
        let compiled = self
            .compile(Arc::from(wasm), None)
            .await
            .map_err(|e| RuntimeError::InvalidPlugin(e.to_string()))?;
        let version = compiled.hash[..12].to_owned();
        let pre = self
            .linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| RuntimeError::InvalidPlugin(format!("{e:#}")))?;
        let indices = bindings::PluginCoreIndices::new(&pre)
            .map_err(|e| RuntimeError::InvalidPlugin(format!("{e:#}")))?;
        // Absent in plugins built before the hook existed (or not with the SDK).
        let notify_hook = NotifyHookIndices::new(&pre).ok();
        let presence_hook = PresenceHookIndices::new(&pre).ok();
        let job_hook = JobHookIndices::new(&pre).ok();
        let task_hook = TaskHookIndices::new(&pre).ok();
        self.store_compiled(&compiled).await;
        tracing::info!(%tenant, plugin_version = %version, "plugin loaded");
        let plugin = Arc::new(Plugin {
            scope: Arc::new(Scope {
                tenant: tenant.clone(),
                plugin_version: version.clone(),
                backends: self.backends.clone(),
                quota,
                task_names: parking_lot::RwLock::new(Vec::new()),
            }),
            tenant,
            version,
            pre,
            indices,
            presence_hook,
            wants_presence: AtomicBool::new(false),
            job_hook,
            job_queues: parking_lot::Mutex::new(Vec::new()),
            task_hook,
            notify_hook,
            wants_notify: AtomicBool::new(false),
            idle: parking_lot::Mutex::new(Vec::new()),
            runtime: Arc::clone(self),
        });
        plugin.probe_presence_hook().await;
        plugin.probe_notify_hook().await;
        plugin.probe_job_hook().await;
        plugin.probe_task_hook().await;
        tokio::spawn(sweep_idle(Arc::downgrade(&plugin)));
        Ok(plugin)
    }

    /// Check that `wasm` is a plugin this host runs, before it is stored
    /// or deployed: the steps of [`PluginRejection`] in order, compiling
    /// for at most `compile_timeout` (time spent waiting for a compile slot
    /// is not counted). On success the compiled component is in the disk
    /// cache, so [`Runtime::load_plugin`] of the same bytes does not compile
    /// again.
    pub async fn check_plugin(
        self: &Arc<Self>,
        wasm: &[u8],
        compile_timeout: Duration,
    ) -> Result<PluginInfo, PluginRejection> {
        validate::check_header(wasm)?;
        let compiled = self.compile(Arc::from(wasm), Some(compile_timeout)).await?;
        let ty = compiled.component.component_type();
        validate::check_exports(&self.engine, &ty)?;
        validate::check_imports(&self.engine, &ty)?;
        let pre = self
            .linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| PluginRejection::compile_failed(format!("{e:#}")))?;
        validate::check_handler_types(&self.engine, &pre)?;
        bindings::PluginCorePre::new(pre).map_err(|e| PluginRejection::WrongWorld {
            details: vec![format!(
                "export {} does not match the host's: {e:#}",
                validate::HANDLER
            )],
        })?;
        self.store_compiled(&compiled).await;
        Ok(PluginInfo {
            world: validate::WORLD.to_owned(),
            sha256: compiled.hash,
        })
    }

    /// The compiled component for `wasm`: from the disk cache, else compiled
    /// on a blocking thread holding one of the compile slots. With a
    /// `timeout`, a compile running longer is abandoned: its thread runs to
    /// the end (holding its slot, so abandoned compiles still count against
    /// the limit) and its result is dropped. Not stored in the cache: see
    /// [`Runtime::store_compiled`], once the component proved usable.
    async fn compile(
        self: &Arc<Self>,
        wasm: Arc<[u8]>,
        timeout: Option<Duration>,
    ) -> Result<Compiled, PluginRejection> {
        let this = Arc::clone(self);
        let bytes = Arc::clone(&wasm);
        // Hashing a large upload and reading the cache are blocking work too.
        let (hash, cached) = tokio::task::spawn_blocking(move || {
            let hash = hex::encode(Sha256::digest(&bytes));
            let cached = this
                .cache
                .as_ref()
                .and_then(|c| c.load(&this.engine, &hash));
            (hash, cached)
        })
        .await
        .map_err(|e| PluginRejection::compile_failed(format!("cache task failed: {e}")))?;
        if let Some(component) = cached {
            return Ok(Compiled {
                component,
                hash,
                from_cache: true,
            });
        }
        let slot = Arc::clone(&self.compile_slots)
            .acquire_owned()
            .await
            .map_err(|e| PluginRejection::compile_failed(format!("compile slots: {e}")))?;
        let engine = self.engine.clone();
        let task = tokio::task::spawn_blocking(move || {
            let component = Component::new(&engine, &wasm[..]);
            drop(slot);
            component
        });
        let joined = match timeout {
            Some(limit) => tokio::time::timeout(limit, task).await.map_err(|_| {
                PluginRejection::CompileTimeout {
                    after_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                }
            })?,
            None => task.await,
        };
        let component = joined
            .map_err(|e| PluginRejection::compile_failed(format!("compiler task failed: {e}")))?
            .map_err(|e| PluginRejection::compile_failed(format!("{e:#}")))?;
        Ok(Compiled {
            component,
            hash,
            from_cache: false,
        })
    }

    /// Write a freshly compiled component to the disk cache (on a blocking
    /// thread). Failures are logged by the cache, never fatal.
    async fn store_compiled(self: &Arc<Self>, compiled: &Compiled) {
        if compiled.from_cache || self.cache.is_none() {
            return;
        }
        let this = Arc::clone(self);
        let hash = compiled.hash.clone();
        let component = compiled.component.clone();
        let stored = tokio::task::spawn_blocking(move || {
            if let Some(cache) = &this.cache {
                cache.store(&hash, &component);
            }
        })
        .await;
        if let Err(e) = stored {
            tracing::warn!(error = %e, "component cache task failed");
        }
    }
}

/// How many compiles may run at once: half the cores, at least one.
fn compile_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// A compiled, deployed plugin version serving one tenant.
pub struct Plugin {
    /// The tenant this plugin serves; every import it makes is scoped to it.
    pub tenant: TenantId,
    /// Version id: the first 12 hex digits of the `.wasm`'s SHA-256.
    pub version: String,
    scope: Arc<Scope>,
    pre: InstancePre<HostState>,
    indices: bindings::PluginCoreIndices,
    /// The optional `presence-events` export, if the plugin has it.
    presence_hook: Option<PresenceHookIndices>,
    /// The plugin accepted presence events when probed at load.
    /// The optional `notify-events` export, if the plugin has it.
    notify_hook: Option<NotifyHookIndices>,
    /// The plugin's `wants-notify` answered `true` at load.
    wants_notify: AtomicBool,
    wants_presence: AtomicBool,
    /// The optional `job-events` export, if the plugin has it.
    job_hook: Option<JobHookIndices>,
    /// The queues the plugin runs jobs of (its `accepts-jobs` at load).
    job_queues: parking_lot::Mutex<Vec<String>>,
    /// The optional `task-events` export, if the plugin has it (its
    /// `accepts-tasks` answer is in the scope, see [`Scope::task_names`]).
    task_hook: Option<TaskHookIndices>,
    /// Warm instances ready for another call (only with `max_reuse` > 1).
    idle: parking_lot::Mutex<Vec<Warm>>,
    runtime: Arc<Runtime>,
}

/// One instantiated plugin: its typed `plugin-core` exports and the raw
/// instance (for the optional exports).
struct Sandbox {
    core: bindings::PluginCore,
    raw: Instance,
}

/// An instance kept for reuse, with the calls it has served.
struct Warm {
    store: Store<HostState>,
    instance: Sandbox,
    uses: u64,
    idle_since: Instant,
}

/// Drop warm instances idle past their plan's `instance_idle_ms`, until the
/// plugin is dropped.
async fn sweep_idle(plugin: Weak<Plugin>) {
    loop {
        tokio::time::sleep(IDLE_SWEEP_EVERY).await;
        let Some(plugin) = plugin.upgrade() else {
            return;
        };
        let idle = plugin.scope.quota.plan().instance_idle();
        // Dropped outside the lock.
        let stale: Vec<Warm> = {
            let mut warm = plugin.idle.lock();
            let (stale, keep) = warm.drain(..).partition(|w| w.idle_since.elapsed() >= idle);
            *warm = keep;
            stale
        };
        drop(stale);
    }
}

impl Plugin {
    /// Run the plugin's `authenticate` hook for a new connection.
    pub async fn authenticate(&self, req: ConnectRequest) -> Result<Option<User>, CallError> {
        let req = wit::types::ConnectRequest {
            headers: req.headers,
            cookies: req.cookies,
            query: req.query,
            remote_address: req.remote_address,
            path: req.path,
        };
        let (r, _) = self
            .run(None, async |inst, store| {
                inst.core
                    .tenantry_plugin_handler()
                    .call_authenticate(store, &req)
                    .await
            })
            .await?;
        match r {
            Ok(user) => user.map(user_from_wit).transpose(),
            Err(e) => Err(CallError::Live(live_error_from_wit(e))),
        }
    }

    /// Run one RPC: `path` is `module/fn`, `args_json` a JSON array. Returns
    /// the result as JSON text (validated). Any [`Effect`]s the call asked
    /// for are dropped; see [`Plugin::call_with_effects`].
    pub async fn call(
        &self,
        ctx: CallContext,
        path: &str,
        args_json: &str,
    ) -> Result<String, CallError> {
        self.call_with_effects(ctx, path, args_json)
            .await
            .map(|(json, _)| json)
    }

    /// [`Plugin::call`], also returning the [`Effect`]s on its connection the
    /// call asked for (to apply now that it succeeded).
    pub async fn call_with_effects(
        &self,
        ctx: CallContext,
        path: &str,
        args_json: &str,
    ) -> Result<(String, Vec<Effect>), CallError> {
        let (ctx, conn) = ctx_to_wit(ctx);
        let args = args_json.to_owned();
        let (r, effects) = self
            .run(Some(conn), async |inst, store| {
                inst.core
                    .tenantry_plugin_handler()
                    .call_call(store, &ctx, path, &args)
                    .await
            })
            .await?;
        match r {
            Ok(json) => {
                let max = self.scope.quota.plan().max_result_bytes;
                if u64::try_from(json.len()).unwrap_or(u64::MAX) > max {
                    let e = CallError::PayloadTooLarge(format!(
                        "result is {} bytes, the plan allows {max}",
                        json.len()
                    ));
                    metrics::trap(&self.tenant, TrapKind::ResultTooLarge);
                    tracing::warn!(tenant = %self.tenant, plugin_version = %self.version, path, error = %e, "plugin call failed");
                    return Err(self.fault(e));
                }
                check_json(&json, "call result").map_err(|e| self.fault(e))?;
                Ok((json, effects))
            }
            Err(e) => Err(CallError::Live(live_error_from_wit(e))),
        }
    }

    /// Ask the plugin's gate whether this connection may subscribe to
    /// `topic`. When it may, returns the [`Effect`]s the gate asked for (to
    /// apply once the subscription is made).
    pub async fn authorize_subscribe(
        &self,
        ctx: CallContext,
        topic: &str,
    ) -> Result<Vec<Effect>, CallError> {
        let (ctx, conn) = ctx_to_wit(ctx);
        let (r, effects) = self
            .run(Some(conn), async |inst, store| {
                inst.core
                    .tenantry_plugin_handler()
                    .call_authorize_subscribe(store, &ctx, topic)
                    .await
            })
            .await?;
        r.map(|()| effects)
            .map_err(|e| CallError::Live(live_error_from_wit(e)))
    }

    /// Whether the plugin receives presence events: it exports
    /// `presence-events` and answered `true` to the probe at load.
    pub fn wants_presence_events(&self) -> bool {
        self.wants_presence.load(Ordering::Relaxed)
    }

    /// Ask the plugin (with an empty batch) whether it wants presence
    /// events; remembered for [`Plugin::wants_presence_events`].
    async fn probe_presence_hook(&self) {
        if self.presence_hook.is_none() {
            return;
        }
        let probed = self.on_presence(&[]).await;
        // The probe's instance is not kept warm: the first real call of a
        // version starts the same whether or not it has the hook.
        self.idle.lock().clear();
        match probed {
            Ok(wants) => self.wants_presence.store(wants, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, plugin_version = %self.version, error = %e, "presence-events probe failed; no presence events for this version");
            }
        }
    }

    /// Deliver a batch of presence events to the plugin's `on-presence`
    /// (`Ok(false)`: it declines them). `Host` error if the plugin does not
    /// export the hook.
    pub async fn on_presence(&self, events: &[PresenceEvent]) -> Result<bool, CallError> {
        let Some(indices) = &self.presence_hook else {
            return Err(CallError::Host(
                "the plugin does not export presence-events".into(),
            ));
        };
        let events: Vec<wit_presence_events::PresenceEvent> =
            events.iter().map(presence_event_to_wit).collect();
        let (r, _) = self
            .run(None, async |inst, store| {
                let hook = indices.load(&mut *store, &inst.raw)?;
                hook.call_on_presence(&mut *store, &events).await
            })
            .await?;
        r.map_err(|e| CallError::Live(live_error_from_wit(e)))
    }

    /// The queues whose jobs the plugin runs: what its `accepts-jobs`
    /// answered at load (valid queue names only; empty without the hook).
    pub fn job_queues(&self) -> Vec<String> {
        self.job_queues.lock().clone()
    }

    /// Ask the plugin which queues it runs; remembered for
    /// [`Plugin::job_queues`].
    async fn probe_job_hook(&self) {
        let Some(indices) = &self.job_hook else {
            return;
        };
        let probed = self
            .run(None, async |inst, store| {
                let hook = indices.load(&mut *store, &inst.raw)?;
                hook.call_accepts_jobs(&mut *store).await
            })
            .await;
        self.idle.lock().clear();
        match probed {
            Ok((queues, _)) => {
                let (valid, invalid): (Vec<String>, Vec<String>) = queues
                    .into_iter()
                    .take(crate::backend::postgres::jobs::MAX_ACCEPTED_QUEUES)
                    .partition(|q| crate::backend::postgres::jobs::valid_queue(q));
                if !invalid.is_empty() {
                    tracing::warn!(tenant = %self.tenant, plugin_version = %self.version, ?invalid, "accepts-jobs named invalid queues; ignored");
                }
                *self.job_queues.lock() = valid;
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, plugin_version = %self.version, error = %e, "accepts-jobs probe failed; no jobs for this version");
            }
        }
    }

    /// Run one job through the plugin's `on-job`, under the same limits as
    /// an RPC. `Host` error if the plugin does not export the hook.
    pub async fn on_job(&self, job: &crate::backend::postgres::jobs::Job) -> Result<(), CallError> {
        let Some(indices) = &self.job_hook else {
            return Err(CallError::Host(
                "the plugin does not export job-events".into(),
            ));
        };
        let record = wit_job_events::Job {
            id: job.id.to_string(),
            queue: job.queue.clone(),
            payload: job.payload.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            enqueued_at_ms: job.enqueued_at_ms,
        };
        let (r, _) = self
            .run(None, async |inst, store| {
                let hook = indices.load(&mut *store, &inst.raw)?;
                hook.call_on_job(&mut *store, &record).await
            })
            .await?;
        r.map_err(|e| CallError::Live(live_error_from_wit(e)))
    }

    /// The tenant scope this plugin's imports act in (for host code acting
    /// for the plugin, such as the notify bridge's publishes).
    pub fn scope(&self) -> &Arc<Scope> {
        &self.scope
    }

    /// Whether the tenant's notifications go to this plugin: it exports
    /// `notify-events` and its `wants-notify` answered `true` at load.
    pub fn wants_notify_events(&self) -> bool {
        self.wants_notify.load(Ordering::Relaxed)
    }

    /// Ask the plugin's `wants-notify`; remembered for
    /// [`Plugin::wants_notify_events`].
    async fn probe_notify_hook(&self) {
        let Some(indices) = &self.notify_hook else {
            return;
        };
        let probed = self
            .run(None, async |inst, store| {
                let hook = indices.load(&mut *store, &inst.raw)?;
                hook.call_wants_notify(&mut *store).await
            })
            .await;
        // Not kept warm, as for the presence probe.
        self.idle.lock().clear();
        match probed {
            Ok((wants, _)) => self.wants_notify.store(wants, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, plugin_version = %self.version, error = %e, "notify-events probe failed; no notifications for this version");
            }
        }
    }

    /// Hand one notification payload (JSON) to the plugin's `on-notify`:
    /// `None` to publish it as it is, or the publications to make instead.
    /// `Host` error if the plugin does not export the hook; `Trap` if it
    /// returns more than [`crate::notify::MAX_PUBLICATIONS`] publications or
    /// one whose data is not JSON.
    pub async fn on_notify(
        &self,
        payload: &str,
    ) -> Result<Option<Vec<crate::notify::Publication>>, CallError> {
        let Some(indices) = &self.notify_hook else {
            return Err(CallError::Host(
                "the plugin does not export notify-events".into(),
            ));
        };
        let payload = payload.to_owned();
        let (r, _) = self
            .run(None, async |inst, store| {
                let hook = indices.load(&mut *store, &inst.raw)?;
                hook.call_on_notify(&mut *store, &payload).await
            })
            .await?;
        let list = match r {
            Ok(None) => return Ok(None),
            Ok(Some(list)) => list,
            Err(e) => return Err(CallError::Live(live_error_from_wit(e))),
        };
        if list.len() > crate::notify::MAX_PUBLICATIONS {
            return Err(CallError::Trap(format!(
                "on-notify returned {} publications; at most {} are allowed",
                list.len(),
                crate::notify::MAX_PUBLICATIONS
            )));
        }
        list.into_iter()
            .map(|p| {
                check_json(&p.data, "publication data")?;
                Ok(crate::notify::Publication {
                    topic: p.topic,
                    event: p.event,
                    data: p.data,
                })
            })
            .collect::<Result<Vec<_>, CallError>>()
            .map(Some)
    }

    /// Run `f` in a sandbox (a fresh one, or a warm one when the plan
    /// reuses instances) under the tenant's plan, and classify any failure.
    /// A failed call always drops its instance. Refused with `Overloaded`
    /// when the tenant already runs `max_concurrent_calls` calls. With a
    /// `connection`, the hook serves it: its imports may act on it and ask
    /// for [`Effect`]s, returned with its result.
    async fn run<R>(
        &self,
        connection: Option<CallerConnection>,
        f: impl AsyncFnOnce(&Sandbox, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<(R, Vec<Effect>), CallError> {
        let rt = &self.runtime;
        let quota = &self.scope.quota;
        if let Err(refusal) = quota.check_fault_budget() {
            metrics::refusal(&self.tenant, RefusalKind::FaultBudget);
            let retry = match refusal {
                Refusal::RateLimited { retry_after } => retry_after,
                Refusal::Full => Duration::from_secs(1),
            };
            return Err(CallError::FaultBudget(retry));
        }
        let Ok(_slot) = quota.try_begin_call() else {
            metrics::refusal(&self.tenant, RefusalKind::ConcurrentCalls);
            return Err(CallError::Overloaded);
        };
        let _active = ActiveCall::new(&rt.active_calls);
        let plan = quota.plan();
        let reuse = plan.instance_reuse > 1;
        let warm = if reuse { self.take_warm(&plan) } else { None };
        let work = async move {
            let mut instantiation = None;
            let (mut store, instance, uses) = match warm {
                Some(mut w) => {
                    w.store.data_mut().begin_call(plan.call_deadline());
                    w.store.set_epoch_deadline(1);
                    if rt.config.fuel {
                        set_fuel(&mut w.store, plan.fuel_per_call);
                    }
                    (w.store, w.instance, w.uses)
                }
                None => {
                    let mut store = self.new_store(&plan);
                    let started = Instant::now();
                    let instantiated = match self.pre.instantiate_async(&mut store).await {
                        Ok(raw) => self
                            .indices
                            .load(&mut store, &raw)
                            .map(|core| Sandbox { core, raw }),
                        Err(e) => Err(e),
                    };
                    instantiation = Some(started.elapsed());
                    match instantiated {
                        Ok(i) => (store, i, 0),
                        Err(e) => return Err(classify(e, &store, true)),
                    }
                }
            };
            store.data_mut().effects = connection.is_some().then(Vec::new);
            store.data_mut().connection = connection;
            let result = f(&instance, &mut store).await;
            store.data_mut().cpu.release_slot();
            self.account(&mut store, instantiation, &plan);
            let asked = store.data_mut().effects.take().unwrap_or_default();
            store.data_mut().connection = None;
            match result {
                Ok(r) => Ok((
                    (r, asked),
                    Warm {
                        store,
                        instance,
                        uses: uses + 1,
                        idle_since: Instant::now(),
                    },
                    plan,
                )),
                Err(e) => Err(classify(e, &store, false)),
            }
        };
        // Boxed: the store and wasmtime's instantiate/call futures are
        // several KiB, and would otherwise be inlined into every caller's
        // future (e.g. each connection's task) for its whole life.
        match tokio::time::timeout(rt.config.call_wall_timeout, Box::pin(work)).await {
            Ok(Ok((r, warm, plan))) => {
                if reuse && warm.uses < plan.instance_reuse {
                    let mut idle = self.idle.lock();
                    if (idle.len() as u64) < plan.max_warm_instances {
                        idle.push(warm);
                    }
                }
                Ok(r)
            }
            Ok(Err(e)) => Err(self.fault(e)),
            Err(_) => {
                metrics::trap(&self.tenant, TrapKind::Timeout);
                tracing::warn!(tenant = %self.tenant, plugin_version = %self.version, "plugin call exceeded its wall-clock bound");
                Err(self.fault(CallError::Timeout))
            }
        }
    }

    /// `e`, counted against the tenant's fault budget if the plugin is to
    /// blame for it (it ran out of time, memory or stack, trapped, or
    /// returned something unusable).
    fn fault(&self, e: CallError) -> CallError {
        if matches!(
            e,
            CallError::Timeout
                | CallError::ResourceExhausted(_)
                | CallError::PayloadTooLarge(_)
                | CallError::Trap(_)
        ) {
            self.scope.quota.record_fault();
        }
        e
    }

    /// Count what the call that just ran in `store` cost: the tenant's
    /// usage (CPU) and the call metrics.
    fn account(&self, store: &mut Store<HostState>, instantiation: Option<Duration>, plan: &Plan) {
        let cpu = store.data_mut().cpu.used();
        let fuel = if self.runtime.config.fuel {
            let granted = if plan.fuel_per_call == 0 {
                u64::MAX
            } else {
                plan.fuel_per_call
            };
            store
                .get_fuel()
                .ok()
                .map(|left| granted.saturating_sub(left))
        } else {
            None
        };
        self.scope.quota.usage.cpu(cpu);
        metrics::call_finished(
            &self.tenant,
            &metrics::CallStats {
                instantiation,
                cpu,
                memory_bytes: store.data().limiter.memory_used() as u64,
                fuel,
            },
        );
    }

    /// A warm instance that has not sat idle past the plan's limit, if any.
    fn take_warm(&self, plan: &Plan) -> Option<Warm> {
        let idle = plan.instance_idle();
        let mut warm = self.idle.lock();
        while let Some(w) = warm.pop() {
            if w.idle_since.elapsed() < idle {
                return Some(w);
            }
        }
        None
    }

    /// A new store with this plugin's scope, the plan's limits and CPU accounting.
    fn new_store(&self, plan: &Plan) -> Store<HostState> {
        let rt = &self.runtime;
        let memory = plan.memory_limit_bytes().min(rt.config.max_memory);
        let mut store = Store::new(
            &rt.engine,
            HostState::new(Arc::clone(&self.scope), memory, plan.call_deadline()),
        );
        store.limiter_async(|s| s);
        if rt.config.fuel {
            set_fuel(&mut store, plan.fuel_per_call);
        }
        // Set before instantiation: start functions run guest code too.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let cpu = &mut ctx.data_mut().cpu;
            if cpu.charge() {
                Ok(UpdateDeadline::Interrupt)
            } else if cpu.slice_used(engine::EPOCH_TICK) {
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(cpu.yield_future())))
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        store
    }
}

/// Give the store `fuel` (0: unmetered, i.e. as much as can be counted).
fn set_fuel(store: &mut Store<HostState>, fuel: u64) {
    let fuel = if fuel == 0 { u64::MAX } else { fuel };
    // Fails only when the engine does not meter fuel, which the caller checked.
    let _ = store.set_fuel(fuel);
}

/// Turn a wasmtime error into what the caller sees; logs the details.
fn classify(err: wasmtime::Error, store: &Store<HostState>, instantiating: bool) -> CallError {
    let scope = &store.data().scope;
    let detail = format!("{err:#}");
    let trap = err.downcast_ref::<Trap>();
    let (result, kind) = if store.data().limiter.exhausted {
        (CallError::ResourceExhausted(detail), TrapKind::Memory)
    } else if matches!(trap, Some(Trap::StackOverflow)) {
        (
            CallError::ResourceExhausted(format!("guest stack exhausted: {detail}")),
            TrapKind::Stack,
        )
    } else if matches!(trap, Some(Trap::Interrupt | Trap::OutOfFuel)) {
        (CallError::Timeout, TrapKind::Timeout)
    } else if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        // The process-wide pool is full: a load problem, not a plugin fault.
        tracing::warn!(error = %detail, "instance pool exhausted (limits.max_instances)");
        return CallError::Overloaded;
    } else if instantiating && trap.is_none() {
        (CallError::Host(detail), TrapKind::Host)
    } else {
        (CallError::Trap(detail), TrapKind::Trap)
    };
    metrics::trap(&scope.tenant, kind);
    tracing::warn!(tenant = %scope.tenant, plugin_version = %scope.plugin_version, error = %result, "plugin call failed");
    result
}

fn check_json(json: &str, what: &str) -> Result<(), CallError> {
    serde_json::from_str::<IgnoredAny>(json)
        .map(|_| ())
        .map_err(|e| CallError::Trap(format!("plugin returned invalid JSON as {what}: {e}")))
}

fn user_from_wit(u: wit::types::User) -> Result<User, CallError> {
    let attributes = if u.attributes.trim().is_empty() {
        "{}".to_owned()
    } else {
        check_json(&u.attributes, "user attributes")?;
        u.attributes
    };
    Ok(User {
        id: u.id,
        attributes,
    })
}

fn presence_event_to_wit(e: &PresenceEvent) -> wit_presence_events::PresenceEvent {
    use wit_presence_events::PresenceChange as W;
    wit_presence_events::PresenceEvent {
        change: match e.change {
            PresenceChange::UserOnline => W::UserOnline,
            PresenceChange::UserOffline => W::UserOffline,
            PresenceChange::TopicOccupied => W::TopicOccupied,
            PresenceChange::TopicVacated => W::TopicVacated,
        },
        topic: e.topic.clone(),
        user: e.user.clone(),
    }
}

/// The WIT call context, and the connection the call serves.
fn ctx_to_wit(ctx: CallContext) -> (wit::types::CallContext, CallerConnection) {
    let conn = CallerConnection {
        id: ctx.connection_id.clone(),
        outbound: ctx.outbound,
    };
    let wit_ctx = wit::types::CallContext {
        user: ctx.user.map(|u| wit::types::User {
            id: u.id,
            attributes: u.attributes,
        }),
        connection_id: ctx.connection_id,
        request_id: ctx.request_id,
    };
    (wit_ctx, conn)
}

fn live_error_from_wit(e: wit::types::LiveError) -> LiveError {
    LiveError {
        code: e.code,
        message: e.message,
        issues: e.issues.map(|v| {
            v.into_iter()
                .map(|i| ValidationIssue {
                    path: i.path,
                    message: i.message,
                })
                .collect()
        }),
        retry_after_ms: e.retry_after_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory;
    use crate::hub::Hub;

    fn runtime(cache_dir: Option<PathBuf>) -> Arc<Runtime> {
        let config = RuntimeConfig {
            cache_dir,
            max_instances: 8,
            ..RuntimeConfig::default()
        };
        Runtime::new(config, memory::backends(Hub::new())).unwrap()
    }

    fn starter() -> Plan {
        Plan::built_in("starter").unwrap()
    }

    fn quota() -> Arc<TenantQuota> {
        TenantQuota::new(starter(), 1)
    }

    async fn load(rt: &Arc<Runtime>, plan: Plan, wasm: &[u8]) -> Arc<Plugin> {
        rt.load_plugin(
            TenantId::parse("acme").unwrap(),
            TenantQuota::new(plan, 1),
            wasm,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn only_plugins_that_ask_get_presence_events() {
        let hub = Hub::new();
        let rt = Runtime::new(
            RuntimeConfig {
                max_instances: 8,
                ..RuntimeConfig::default()
            },
            memory::backends(Arc::clone(&hub)),
        )
        .unwrap();
        let fixture = load(&rt, starter(), &fixture()).await;
        assert!(
            !fixture.wants_presence_events(),
            "the SDK's default declines"
        );
        assert!(matches!(fixture.on_presence(&[]).await, Ok(false)));

        let chat_wasm = std::fs::read(crate::bundled::plugin_path("chat")).unwrap();
        let chat = load(&rt, starter(), &chat_wasm).await;
        assert!(chat.wants_presence_events());
        let (tx, mut rx) = crate::outbound::queue(4);
        let watcher = hub.connect(TenantId::parse("acme").unwrap(), tx, 4);
        watcher.subscribe("activity:lobby").unwrap();
        let events = [PresenceEvent {
            change: PresenceChange::UserOffline,
            topic: "room:lobby".into(),
            user: Some("ann".into()),
        }];
        assert!(matches!(chat.on_presence(&events).await, Ok(true)));
        let crate::hub::Outbound::Text(frame) = rx.recv().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v["event"], "offline");
        assert_eq!(v["data"]["user"], "ann");
    }

    #[tokio::test]
    async fn instances_are_reused_up_to_max_reuse_and_retired_on_failure() {
        let rt = runtime(None);
        let plan = Plan {
            instance_reuse: 3,
            ..starter()
        };
        let p = load(&rt, plan, &fixture()).await;
        let uses = |p: &Plugin| p.idle.lock().iter().map(|w| w.uses).collect::<Vec<_>>();
        assert_eq!(p.call(ctx(), "fixture/echo", "[1]").await.unwrap(), "1");
        assert_eq!(uses(&p), vec![1]);
        // A live error is a normal answer: the instance stays warm.
        assert!(matches!(
            p.call(ctx(), "fixture/nope", "[]").await,
            Err(CallError::Live(_))
        ));
        assert_eq!(uses(&p), vec![2]);
        // The third call is its last.
        p.call(ctx(), "fixture/echo", "[3]").await.unwrap();
        assert!(uses(&p).is_empty());
        // Traps, deadlines and limits retire the instance; the next call works.
        p.call(ctx(), "fixture/echo", "[4]").await.unwrap();
        for bad in ["fixture/panic", "fixture/spin", "fixture/alloc"] {
            assert!(p.call(ctx(), bad, "[]").await.is_err());
            assert!(uses(&p).is_empty(), "{bad} retired the warm instance");
            assert_eq!(p.call(ctx(), "fixture/echo", "[5]").await.unwrap(), "5");
        }
        // The CPU budget is per call, not per instance.
        for _ in 0..2 {
            p.call(ctx(), "fixture/echo", "[6]").await.unwrap();
        }
    }

    fn ctx() -> CallContext {
        CallContext {
            user: None,
            connection_id: "c".into(),
            request_id: "r".into(),
            outbound: None,
        }
    }

    fn fixture() -> Vec<u8> {
        std::fs::read(crate::bundled::plugin_path("fixture")).unwrap()
    }

    fn cached_files(dir: &std::path::Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn compiled_components_are_cached_on_disk_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(Some(dir.path().to_owned()));
        let tenant = TenantId::parse("acme").unwrap();
        let p = rt
            .load_plugin(tenant.clone(), quota(), &fixture())
            .await
            .unwrap();
        let files = cached_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].to_string_lossy().ends_with(".cwasm"));
        assert!(files[0].to_string_lossy().contains(&p.version));

        // A second runtime (a restart) loads from the cache and serves calls.
        let rt2 = runtime(Some(dir.path().to_owned()));
        let p2 = rt2
            .load_plugin(tenant.clone(), quota(), &fixture())
            .await
            .unwrap();
        assert_eq!(p2.version, p.version);
        assert_eq!(p2.call(ctx(), "fixture/echo", "[5]").await.unwrap(), "5");

        // A corrupt cache entry is replaced, not fatal (entries carry a
        // checksum and are verified before use; see cache.rs).
        drop((p2, rt2));
        std::fs::remove_file(&files[0]).unwrap();
        std::fs::write(&files[0], b"garbage").unwrap();
        let rt3 = runtime(Some(dir.path().to_owned()));
        let p3 = rt3.load_plugin(tenant, quota(), &fixture()).await.unwrap();
        assert_eq!(p3.call(ctx(), "fixture/echo", "[6]").await.unwrap(), "6");
        assert!(std::fs::read(&files[0]).unwrap().len() > 1000);
    }

    #[tokio::test]
    async fn invalid_plugins_are_refused_with_a_clear_error() {
        let rt = runtime(None);
        let tenant = TenantId::parse("acme").unwrap();
        for bad in [&b""[..], b"not wasm at all", b"\0asm\x01\0\0\0"] {
            match rt.load_plugin(tenant.clone(), quota(), bad).await {
                Err(RuntimeError::InvalidPlugin(msg)) => assert!(!msg.is_empty()),
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("accepted invalid plugin {bad:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_trap_only_ends_its_own_call() {
        let rt = runtime(None);
        let p = load(&rt, starter(), &fixture()).await;
        assert!(matches!(
            p.call(ctx(), "fixture/panic", "[]").await,
            Err(CallError::Trap(_))
        ));
        assert!(matches!(
            p.call(ctx(), "fixture/spin", "[]").await,
            Err(CallError::Timeout)
        ));
        assert!(matches!(
            p.call(ctx(), "fixture/alloc", "[]").await,
            Err(CallError::ResourceExhausted(_))
        ));
        assert_eq!(p.call(ctx(), "fixture/echo", "[1]").await.unwrap(), "1");
    }

    fn hostile() -> Vec<u8> {
        std::fs::read(crate::bundled::plugin_path("hostile")).unwrap()
    }

    #[tokio::test]
    async fn a_plugin_that_keeps_faulting_is_refused_until_its_budget_refills() {
        let rt = runtime(None);
        let plan = Plan {
            faulted_calls_per_sec: 10,
            faulted_call_burst: 3,
            ..starter()
        };
        let p = load(&rt, plan, &fixture()).await;
        let bystander = load(&rt, starter(), &fixture()).await;
        // Live errors are the plugin's answers, not faults.
        for _ in 0..10 {
            assert!(matches!(
                p.call(ctx(), "fixture/live_error", r#"["NOPE", "no"]"#)
                    .await,
                Err(CallError::Live(_))
            ));
        }
        for _ in 0..3 {
            assert!(matches!(
                p.call(ctx(), "fixture/panic", "[]").await,
                Err(CallError::Trap(_))
            ));
        }
        // The budget is spent: refused before running, even a normal call.
        let refused = p.call(ctx(), "fixture/echo", "[1]").await;
        let Err(CallError::FaultBudget(retry)) = refused else {
            panic!("{refused:?}");
        };
        assert!(retry <= Duration::from_millis(100), "{retry:?}");
        let body = crate::protocol::RpcErrorBody::from(&CallError::FaultBudget(retry));
        assert_eq!(body.code, "RATE_LIMITED");
        assert!(body.retry_after_ms.is_some_and(|ms| ms >= 1));
        // Another tenant is untouched.
        assert_eq!(
            bystander.call(ctx(), "fixture/echo", "[2]").await.unwrap(),
            "2"
        );
        // After the hint, calls run again.
        tokio::time::sleep(retry + Duration::from_millis(5)).await;
        assert_eq!(p.call(ctx(), "fixture/echo", "[3]").await.unwrap(), "3");
    }

    #[tokio::test]
    async fn deep_recursion_is_resource_exhausted_and_costs_only_its_call() {
        let rt = runtime(None);
        let p = load(&rt, starter(), &hostile()).await;
        let m = metrics::get().unwrap();
        let before = m.traps(&p.tenant, TrapKind::Stack);
        let r = p.call(ctx(), "hostile/recurse", "[]").await;
        assert!(m.traps(&p.tenant, TrapKind::Stack) > before, "counted");
        assert!(
            matches!(r, Err(CallError::ResourceExhausted(ref m)) if m.contains("stack")),
            "{r:?}"
        );
        assert_eq!(p.call(ctx(), "hostile/echo", "[1]").await.unwrap(), "1");
    }

    #[tokio::test]
    async fn results_over_the_plan_limit_are_refused() {
        let rt = runtime(None);
        let plan = Plan {
            max_result_bytes: 1000,
            ..starter()
        };
        let p = load(&rt, plan, &hostile()).await;
        // 998 characters + 2 quotes fit; one more does not.
        assert_eq!(
            p.call(ctx(), "hostile/huge", "[998]").await.unwrap().len(),
            1000
        );
        assert!(matches!(
            p.call(ctx(), "hostile/huge", "[999]").await,
            Err(CallError::PayloadTooLarge(_))
        ));
        // The default 100 MiB result cannot even be built in 16 MiB.
        assert!(matches!(
            p.call(ctx(), "hostile/huge", "[]").await,
            Err(CallError::ResourceExhausted(_))
        ));
    }

    #[tokio::test]
    async fn fuel_bounds_cpu_deterministically() {
        let config = RuntimeConfig {
            max_instances: 8,
            fuel: true,
            ..RuntimeConfig::default()
        };
        let rt = Runtime::new(config, memory::backends(Hub::new())).unwrap();
        let plan = Plan {
            fuel_per_call: 1_000_000,
            call_deadline_ms: 10_000,
            ..starter()
        };
        let p = load(&rt, plan, &hostile()).await;
        let started = Instant::now();
        assert!(matches!(
            p.call(ctx(), "hostile/spin", "[]").await,
            Err(CallError::Timeout)
        ));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "fuel, not the deadline, stopped it"
        );
        assert_eq!(p.call(ctx(), "hostile/echo", "[2]").await.unwrap(), "2");
        // Unmetered plans on a fuel engine are not limited by fuel.
        let p = load(&rt, starter(), &hostile()).await;
        assert_eq!(p.call(ctx(), "hostile/echo", "[3]").await.unwrap(), "3");
    }

    #[tokio::test]
    async fn the_tenant_concurrency_limit_answers_overloaded() {
        let rt = runtime(None);
        let plan = Plan {
            max_concurrent_calls: 1,
            call_deadline_ms: 200,
            ..starter()
        };
        let p = load(&rt, plan, &hostile()).await;
        let spinning = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.call(ctx(), "hostile/spin", "[]").await })
        };
        // Wait until the spin call holds the only slot.
        while p.scope.quota.calls() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            p.call(ctx(), "hostile/echo", "[1]").await,
            Err(CallError::Overloaded)
        ));
        assert!(matches!(spinning.await.unwrap(), Err(CallError::Timeout)));
        assert_eq!(p.call(ctx(), "hostile/echo", "[1]").await.unwrap(), "1");
    }

    #[tokio::test]
    async fn a_full_instance_pool_answers_overloaded() {
        let config = RuntimeConfig {
            max_instances: 1,
            ..RuntimeConfig::default()
        };
        let rt = Runtime::new(config, memory::backends(Hub::new())).unwrap();
        let plan = Plan {
            call_deadline_ms: 200,
            ..starter()
        };
        let p = load(&rt, plan, &hostile()).await;
        let spinning = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.call(ctx(), "hostile/spin", "[]").await })
        };
        while p.scope.quota.calls() == 0 {
            tokio::task::yield_now().await;
        }
        // The tenant is far below max_concurrent_calls; the pool is not.
        assert!(matches!(
            p.call(ctx(), "hostile/echo", "[1]").await,
            Err(CallError::Overloaded)
        ));
        assert!(matches!(spinning.await.unwrap(), Err(CallError::Timeout)));
        assert_eq!(p.call(ctx(), "hostile/echo", "[1]").await.unwrap(), "1");
    }

    #[tokio::test]
    async fn warm_instances_idle_past_the_plan_limit_are_not_reused() {
        let rt = runtime(None);
        let plan = Plan {
            instance_reuse: 100,
            instance_idle_ms: 50,
            ..starter()
        };
        let p = load(&rt, plan, &fixture()).await;
        p.call(ctx(), "fixture/echo", "[1]").await.unwrap();
        assert_eq!(p.idle.lock().len(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(
            p.take_warm(&p.scope.quota.plan()).is_none(),
            "stale instance dropped"
        );
        p.call(ctx(), "fixture/echo", "[1]").await.unwrap();
        // The sweeper drops it without any call.
        tokio::time::sleep(IDLE_SWEEP_EVERY + Duration::from_millis(200)).await;
        assert!(p.idle.lock().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_calls_of_one_tenant_take_turns_on_its_cpu_slots() {
        let rt = runtime(None);
        let plan = Plan {
            call_deadline_ms: 30,
            ..starter()
        };
        // One CPU slot: four spinning calls run one at a time, so together
        // they take about four deadlines of wall time, not one.
        let p = load(&rt, plan, &hostile()).await;
        let started = Instant::now();
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let p = Arc::clone(&p);
                tokio::spawn(async move { p.call(ctx(), "hostile/spin", "[]").await })
            })
            .collect();
        for c in calls {
            assert!(matches!(c.await.unwrap(), Err(CallError::Timeout)));
        }
        assert!(
            started.elapsed() >= Duration::from_millis(110),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            p.scope.quota.cpu_slots().available_permits(),
            1,
            "slots returned"
        );
    }
}
