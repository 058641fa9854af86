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
mod store;
pub mod types;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

pub(crate) use bindings::tenantry::plugin as wit;
pub use store::{HostState, Scope};
pub use types::{CallContext, CallError, ConnectRequest, LiveError, User, ValidationIssue};

use crate::backend::Backends;
use crate::tenant::TenantId;

/// Settings of the runtime (per process; per-tenant plans come later).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Guest CPU time one call may use before it is interrupted (`TIMEOUT`).
    pub call_deadline: Duration,
    /// Wall-clock bound on one call including host-import waits (`TIMEOUT`).
    pub call_wall_timeout: Duration,
    /// Linear memory per instance, in bytes, summed over all its memories.
    pub memory_limit: usize,
    /// Plugin instances alive at once in this process (the pool size).
    pub max_instances: u32,
    /// Calls one instance may serve before it is retired. `0` or `1`: a fresh
    /// instance for every call (the default, the strongest isolation). Above
    /// that, an instance whose call succeeded (a live error counts as success)
    /// is kept warm and serves later calls of the same plugin, so guest state
    /// persists between calls of one tenant; any trap, deadline or limit
    /// still retires it. Warm instances hold pool slots.
    pub max_reuse: u32,
    /// Warm instances kept per plugin when `max_reuse` > 1.
    pub max_idle_per_plugin: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            call_deadline: Duration::from_millis(50),
            call_wall_timeout: Duration::from_secs(5),
            memory_limit: 16 << 20,
            max_instances: 1000,
            max_reuse: 0,
            max_idle_per_plugin: 4,
        }
    }
}

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
}

impl Runtime {
    /// Build the engine and linker and start the epoch ticker.
    pub fn new(config: RuntimeConfig, backends: Backends) -> Result<Arc<Runtime>, RuntimeError> {
        let engine = engine::build_engine(config.max_instances, config.memory_limit)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        engine::start_epoch_ticker(&engine)
            .map_err(|e| RuntimeError::Engine(format!("epoch ticker thread: {e}")))?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("linking WASI: {e:#}")))?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
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
        }))
    }

    /// Compile (or load from the disk cache) `wasm` and prepare it to serve
    /// `tenant`. Compilation runs on a blocking thread.
    pub async fn load_plugin(
        self: &Arc<Self>,
        tenant: TenantId,
        wasm: &[u8],
    ) -> Result<Arc<Plugin>, RuntimeError> {
        let hash = hex::encode(Sha256::digest(wasm));
        let version = hash[..12].to_owned();
        let this = Arc::clone(self);
        let bytes = wasm.to_vec();
        let component = tokio::task::spawn_blocking(move || this.compile(&hash, &bytes))
            .await
            .map_err(|e| RuntimeError::InvalidPlugin(format!("compiler task failed: {e}")))??;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::InvalidPlugin(format!("{e:#}")))?;
        let pre = bindings::PluginPre::new(pre)
            .map_err(|e| RuntimeError::InvalidPlugin(format!("{e:#}")))?;
        tracing::info!(%tenant, plugin_version = %version, "plugin loaded");
        Ok(Arc::new(Plugin {
            scope: Arc::new(Scope {
                tenant: tenant.clone(),
                plugin_version: version.clone(),
                backends: self.backends.clone(),
            }),
            tenant,
            version,
            pre,
            idle: parking_lot::Mutex::new(Vec::new()),
            runtime: Arc::clone(self),
        }))
    }

    fn compile(&self, hash: &str, wasm: &[u8]) -> Result<Component, RuntimeError> {
        if let Some(c) = self.cache.as_ref().and_then(|c| c.load(&self.engine, hash)) {
            return Ok(c);
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| RuntimeError::InvalidPlugin(format!("{e:#}")))?;
        if let Some(cache) = &self.cache {
            cache.store(hash, &component);
        }
        Ok(component)
    }
}

/// A compiled, deployed plugin version serving one tenant.
pub struct Plugin {
    /// The tenant this plugin serves; every import it makes is scoped to it.
    pub tenant: TenantId,
    /// Version id: the first 12 hex digits of the `.wasm`'s SHA-256.
    pub version: String,
    scope: Arc<Scope>,
    pre: bindings::PluginPre<HostState>,
    /// Warm instances ready for another call (only with `max_reuse` > 1).
    idle: parking_lot::Mutex<Vec<Warm>>,
    runtime: Arc<Runtime>,
}

/// An instance kept for reuse, with the calls it has served.
struct Warm {
    store: Store<HostState>,
    instance: bindings::Plugin,
    uses: u32,
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
        let r = self
            .run(async |inst, store| {
                inst.tenantry_plugin_handler()
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
    /// the result as JSON text (validated).
    pub async fn call(
        &self,
        ctx: CallContext,
        path: &str,
        args_json: &str,
    ) -> Result<String, CallError> {
        let ctx = ctx_to_wit(ctx);
        let args = args_json.to_owned();
        let r = self
            .run(async |inst, store| {
                inst.tenantry_plugin_handler()
                    .call_call(store, &ctx, path, &args)
                    .await
            })
            .await?;
        match r {
            Ok(json) => {
                check_json(&json, "call result")?;
                Ok(json)
            }
            Err(e) => Err(CallError::Live(live_error_from_wit(e))),
        }
    }

    /// Ask the plugin's gate whether this connection may subscribe to `topic`.
    pub async fn authorize_subscribe(
        &self,
        ctx: CallContext,
        topic: &str,
    ) -> Result<(), CallError> {
        let ctx = ctx_to_wit(ctx);
        let r = self
            .run(async |inst, store| {
                inst.tenantry_plugin_handler()
                    .call_authorize_subscribe(store, &ctx, topic)
                    .await
            })
            .await?;
        r.map_err(|e| CallError::Live(live_error_from_wit(e)))
    }

    /// Run `f` in a sandbox (a fresh one, or a warm one when reuse is on) and
    /// classify any failure. A failed call always drops its instance.
    async fn run<R>(
        &self,
        f: impl AsyncFnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let rt = &self.runtime;
        let reuse = rt.config.max_reuse > 1;
        let warm = if reuse { self.idle.lock().pop() } else { None };
        let work = async move {
            let (mut store, instance, uses) = match warm {
                Some(mut w) => {
                    w.store.data_mut().begin_call(rt.config.call_deadline);
                    w.store.set_epoch_deadline(1);
                    (w.store, w.instance, w.uses)
                }
                None => {
                    let mut store = self.new_store();
                    match self.pre.instantiate_async(&mut store).await {
                        Ok(i) => (store, i, 0),
                        Err(e) => return Err(classify(e, &store, true)),
                    }
                }
            };
            match f(&instance, &mut store).await {
                Ok(r) => Ok((
                    r,
                    Warm {
                        store,
                        instance,
                        uses: uses + 1,
                    },
                )),
                Err(e) => Err(classify(e, &store, false)),
            }
        };
        // Boxed: the store and wasmtime's instantiate/call futures are
        // several KiB, and would otherwise be inlined into every caller's
        // future (e.g. each connection's reader task) for its whole life.
        match tokio::time::timeout(rt.config.call_wall_timeout, Box::pin(work)).await {
            Ok(Ok((r, warm))) => {
                if reuse && warm.uses < rt.config.max_reuse {
                    let mut idle = self.idle.lock();
                    if idle.len() < rt.config.max_idle_per_plugin {
                        idle.push(warm);
                    }
                }
                Ok(r)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// A new store with this plugin's scope, limits and CPU accounting.
    fn new_store(&self) -> Store<HostState> {
        let rt = &self.runtime;
        let mut store = Store::new(
            &rt.engine,
            HostState::new(
                Arc::clone(&self.scope),
                rt.config.memory_limit,
                rt.config.call_deadline,
            ),
        );
        store.limiter(|s| &mut s.limiter);
        // Set before instantiation: start functions run guest code too.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let cpu = &mut ctx.data_mut().cpu;
            if cpu.charge() {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(cpu.yield_future())))
            }
        });
        store
    }
}

/// Turn a wasmtime error into what the caller sees; logs the details.
fn classify(err: wasmtime::Error, store: &Store<HostState>, instantiating: bool) -> CallError {
    let scope = &store.data().scope;
    let detail = format!("{err:#}");
    let result = if store.data().limiter.exhausted {
        CallError::ResourceExhausted(detail)
    } else if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        CallError::Timeout
    } else if instantiating && err.downcast_ref::<Trap>().is_none() {
        CallError::Host(detail)
    } else {
        CallError::Trap(detail)
    };
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

fn ctx_to_wit(ctx: CallContext) -> wit::types::CallContext {
    wit::types::CallContext {
        user: ctx.user.map(|u| wit::types::User {
            id: u.id,
            attributes: u.attributes,
        }),
        connection_id: ctx.connection_id,
        request_id: ctx.request_id,
    }
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

    #[tokio::test]
    async fn instances_are_reused_up_to_max_reuse_and_retired_on_failure() {
        let config = RuntimeConfig {
            max_instances: 8,
            max_reuse: 3,
            ..RuntimeConfig::default()
        };
        let rt = Runtime::new(config, memory::backends(Hub::new())).unwrap();
        let p = rt
            .load_plugin(TenantId::parse("acme").unwrap(), &fixture())
            .await
            .unwrap();
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
        let p = rt.load_plugin(tenant.clone(), &fixture()).await.unwrap();
        let files = cached_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].to_string_lossy().ends_with(".cwasm"));
        assert!(files[0].to_string_lossy().contains(&p.version));

        // A second runtime (a restart) loads from the cache and serves calls.
        let rt2 = runtime(Some(dir.path().to_owned()));
        let p2 = rt2.load_plugin(tenant.clone(), &fixture()).await.unwrap();
        assert_eq!(p2.version, p.version);
        assert_eq!(p2.call(ctx(), "fixture/echo", "[5]").await.unwrap(), "5");

        // A corrupt cache entry is replaced, not fatal. (Written as a new
        // file: truncating a cached file in place would pull the pages from
        // under the runtimes that mmap it — the cache itself only ever
        // writes a temp file and renames it.)
        drop((p2, rt2));
        std::fs::remove_file(&files[0]).unwrap();
        std::fs::write(&files[0], b"garbage").unwrap();
        let rt3 = runtime(Some(dir.path().to_owned()));
        let p3 = rt3.load_plugin(tenant, &fixture()).await.unwrap();
        assert_eq!(p3.call(ctx(), "fixture/echo", "[6]").await.unwrap(), "6");
        assert!(std::fs::read(&files[0]).unwrap().len() > 1000);
    }

    #[tokio::test]
    async fn invalid_plugins_are_refused_with_a_clear_error() {
        let rt = runtime(None);
        let tenant = TenantId::parse("acme").unwrap();
        for bad in [&b""[..], b"not wasm at all", b"\0asm\x01\0\0\0"] {
            match rt.load_plugin(tenant.clone(), bad).await {
                Err(RuntimeError::InvalidPlugin(msg)) => assert!(!msg.is_empty()),
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("accepted invalid plugin {bad:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_trap_only_ends_its_own_call() {
        let rt = runtime(None);
        let p = rt
            .load_plugin(TenantId::parse("acme").unwrap(), &fixture())
            .await
            .unwrap();
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
}
