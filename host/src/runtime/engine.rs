//! The process-wide wasmtime engine: pooling allocator tuned as measured in
//! `shared/research/wasm-spike.md` (keep-resident + PAGEMAP_SCAN reset), epoch
//! interruption, and the epoch ticker thread (100 µs while calls run, 1 ms when idle).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ProfilingStrategy,
};

use super::RuntimeConfig;

/// Interval between epoch ticks while plugin calls run: the granularity of
/// CPU deadlines and how long a running guest may keep its worker thread
/// before it yields to other tasks (other tenants' calls among them).
pub const EPOCH_TICK: Duration = Duration::from_micros(100);
/// Interval between epoch ticks while no call runs (fewer wake-ups when idle).
pub const IDLE_EPOCH_TICK: Duration = Duration::from_millis(1);

/// Core instances per component instance we size the pool for (a Rust
/// wasm32-wasip2 component has 3: main, shim, fixup).
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;

/// Wasm frames kept in a trap's backtrace (logged, never sent to clients).
const BACKTRACE_FRAMES: usize = 32;

/// Host stack on top of the guest stack bound, for host frames (imports,
/// libcalls) running on a call's async stack.
const HOST_STACK_HEADROOM: usize = 1 << 20;

/// Environment variable that makes the engine write `/tmp/perf-PID.map`,
/// so `perf report` names the plugins' compiled functions instead of
/// showing anonymous JIT addresses. For profiling only: the file grows with
/// every compiled plugin.
pub const PERF_MAP_ENV: &str = "TENANTRY_PERF_MAP";

/// Whether the value of [`PERF_MAP_ENV`] asks for the perf map (`1`).
fn perf_map_requested(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| v == "1")
}

/// Build the engine: a pool of `max_instances` concurrently live plugin
/// instances of at most `max_memory` bytes of linear memory each, guest
/// stacks bounded by `max_wasm_stack`, fuel metering if `fuel`.
pub fn build_engine(rc: &RuntimeConfig) -> wasmtime::Result<Engine> {
    let n = rc.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_memories(n.saturating_mul(2))
        .max_memories_per_component(2)
        .total_tables(n.saturating_mul(4))
        .max_tables_per_component(4)
        .total_stacks(n)
        .max_memory_size(rc.max_memory)
        // Reset only dirty pages and keep them resident: 2.5x faster fresh
        // instances and positive scaling across threads (spike §4b, §7).
        // How much is the operator's trade of RSS against page faults
        // (`limits.memory_keep_resident_kb`, BENCHMARKS.md "Keeping the whole slot resident").
        .linear_memory_keep_resident(rc.memory_keep_resident)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(rc.fuel)
        .max_wasm_stack(rc.max_wasm_stack)
        // A trap's backtrace is for the log; walking every frame of a
        // guest that recursed 16,000 deep would cost milliseconds.
        .wasm_backtrace_max_frames(NonZeroUsize::new(BACKTRACE_FRAMES))
        .async_stack_size(rc.max_wasm_stack.saturating_add(HOST_STACK_HEADROOM))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if perf_map_requested(std::env::var_os(PERF_MAP_ENV).as_deref()) {
        // Names the plugins' JIT code in `perf` profiles.
        config.profiler(ProfilingStrategy::PerfMap);
    }
    Engine::new(&config)
}

/// Start the thread that advances the engine's epoch every [`EPOCH_TICK`]
/// while `active` (calls in flight) is above zero, else every
/// [`IDLE_EPOCH_TICK`]. It stops by itself once the engine is dropped.
pub fn start_epoch_ticker(engine: &Engine, active: Arc<AtomicUsize>) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("tenantry-epoch".into())
        .spawn(move || {
            loop {
                let busy = active.load(Ordering::Relaxed) > 0;
                std::thread::sleep(if busy { EPOCH_TICK } else { IDLE_EPOCH_TICK });
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_perf_map_is_opt_in() {
        assert!(perf_map_requested(Some(std::ffi::OsStr::new("1"))));
        assert!(!perf_map_requested(Some(std::ffi::OsStr::new("0"))));
        assert!(!perf_map_requested(None));
    }
}
