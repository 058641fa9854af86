//! The data of one per-call `Store`: the tenant scope the host imports use,
//! WASI with nothing granted, resource limits and the CPU budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limiter::Limiter;
use crate::backend::Backends;
use crate::tenant::TenantId;

/// Resource handles a plugin may hold at once (WASI streams etc.).
const RESOURCE_TABLE_CAPACITY: usize = 256;

/// What a plugin's host imports act on: the tenant is fixed here by the host
/// when the plugin is loaded and never comes from the guest.
pub struct Scope {
    /// The tenant owning the plugin.
    pub tenant: TenantId,
    /// The plugin version (content hash prefix), for logs.
    pub plugin_version: String,
    /// The backends the imports reach.
    pub backends: Backends,
}

/// Store data for one call.
pub struct HostState {
    /// Tenant scope for every import.
    pub scope: Arc<Scope>,
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory/table limits.
    pub limiter: Limiter,
    /// CPU accounting for the epoch callback.
    pub cpu: CpuBudget,
}

impl HostState {
    /// Fresh state for one call of a plugin in `scope`.
    pub fn new(scope: Arc<Scope>, memory_limit: usize, cpu_budget: Duration) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(RESOURCE_TABLE_CAPACITY);
        Self {
            scope,
            // No preopens, no env, no args, no network, stdio discarded.
            wasi: WasiCtx::builder().build(),
            table,
            limiter: Limiter::new(memory_limit),
            cpu: CpuBudget::new(cpu_budget),
        }
    }
}

impl HostState {
    /// Reset the per-call accounting before a call (needed when an instance
    /// is reused): a full CPU budget and a clear limit flag. Memory already
    /// grown stays counted.
    pub fn begin_call(&mut self, cpu_budget: Duration) {
        self.cpu = CpuBudget::new(cpu_budget);
        self.limiter.exhausted = false;
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Guest running time of one call, measured between epoch ticks and
/// excluding the time the guest spent parked after yielding to tokio.
pub struct CpuBudget {
    budget: Duration,
    used: Duration,
    origin: Instant,
    /// Nanoseconds since `origin` at which the guest last (re)started running.
    /// Shared with the yield future, which updates it when the guest resumes.
    running_since: Arc<AtomicU64>,
}

impl CpuBudget {
    /// A budget of `budget` running time, starting now.
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            used: Duration::ZERO,
            origin: Instant::now(),
            running_since: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Account the time run since the last resume; `true` when the budget is spent.
    pub fn charge(&mut self) -> bool {
        let now = self.origin.elapsed();
        let since = Duration::from_nanos(self.running_since.load(Ordering::Relaxed));
        self.used += now.saturating_sub(since);
        self.running_since
            .store(duration_nanos(now), Ordering::Relaxed);
        self.used >= self.budget
    }

    /// A future that yields to the tokio scheduler once and then marks the
    /// guest as running again, so parked time is not charged.
    pub fn yield_future(&self) -> impl Future<Output = ()> + Send + 'static {
        let running_since = Arc::clone(&self.running_since);
        let origin = self.origin;
        async move {
            tokio::task::yield_now().await;
            running_since.store(duration_nanos(origin.elapsed()), Ordering::Relaxed);
        }
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
