//! The data of one per-call `Store`: the tenant scope the host imports use,
//! WASI with nothing granted, resource limits and the CPU budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limiter::Limiter;
use super::stdio::LogSink;
use super::types::{CallerConnection, Effect};
use crate::backend::Backends;
use crate::quota::TenantQuota;
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
    /// The tenant's plan and quota state (publish rate, KV quota, log rate, CPU slots).
    pub quota: Arc<TenantQuota>,
    /// The task names this plugin version runs (its `accepts-tasks` at
    /// load; empty without the hook): the `tasks` import starts only these.
    pub task_names: parking_lot::RwLock<Vec<String>>,
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
    /// What the running hook asked the host to do to its connection once
    /// it returns; `None` while serving a hook with no connection yet
    /// (`authenticate`), where such imports are refused.
    pub effects: Option<Vec<Effect>>,
    /// The connection the running hook serves; `None` for `authenticate`.
    pub connection: Option<CallerConnection>,
}

impl HostState {
    /// Fresh state for one call of a plugin in `scope`.
    pub fn new(scope: Arc<Scope>, memory_limit: usize, cpu_budget: Duration) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(RESOURCE_TABLE_CAPACITY);
        // No preopens, no env, no args, no network, no stdin; stdout and
        // stderr go to the tenant's log, rate-limited.
        let wasi = WasiCtx::builder()
            .stdout(LogSink::stdout(Arc::clone(&scope)))
            .stderr(LogSink::stderr(Arc::clone(&scope)))
            .build();
        let slots = Arc::clone(scope.quota.cpu_slots());
        Self {
            scope,
            wasi,
            table,
            limiter: Limiter::new(memory_limit),
            cpu: CpuBudget::new(cpu_budget, slots),
            effects: None,
            connection: None,
        }
    }
}

impl HostState {
    /// Reset the per-call accounting before a call (needed when an instance
    /// is reused): a full CPU budget and a clear limit flag. Memory already
    /// grown stays counted.
    pub fn begin_call(&mut self, cpu_budget: Duration) {
        self.cpu.reset(cpu_budget);
        self.limiter.exhausted = false;
    }
}

/// Memory growth of at least this much gives other tasks a turn first: the
/// guest will fault the new pages in (kernel work no epoch tick interrupts).
const GROWTH_YIELD_BYTES: usize = 1 << 20;

/// The async limiter wasmtime consults: the sum-over-memories caps of
/// [`Limiter`], plus a yield to the scheduler (not charged as CPU) before a
/// large growth of an existing memory is granted, so a guest allocating flat
/// out lets other connections' work run between its growths. Creating a
/// memory (at instantiation) never yields.
#[async_trait::async_trait]
impl wasmtime::ResourceLimiterAsync for HostState {
    async fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        use wasmtime::ResourceLimiter;
        let granted = self.limiter.memory_growing(current, desired, maximum)?;
        if granted && current > 0 && desired.saturating_sub(current) >= GROWTH_YIELD_BYTES {
            // Not a wait: the slot stays with the call.
            let _ = self.cpu.charge();
            yield_behind_woken_tasks().await;
            self.cpu.resume();
        }
        Ok(granted)
    }

    async fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        use wasmtime::ResourceLimiter;
        self.limiter.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        use wasmtime::ResourceLimiter;
        self.limiter.instances()
    }

    fn tables(&self) -> usize {
        use wasmtime::ResourceLimiter;
        self.limiter.tables()
    }

    fn memories(&self) -> usize {
        use wasmtime::ResourceLimiter;
        self.limiter.memories()
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
///
/// It also keeps one tenant from occupying every worker thread: a call that
/// has run a whole slice (a long call) yields, and must hold one of the
/// tenant's CPU slots to go on; it gives the slot back at every later yield
/// so the tenant's other long calls take turns. Short calls never yield and
/// never touch a slot.
pub struct CpuBudget {
    budget: Duration,
    used: Duration,
    origin: Instant,
    /// Nanoseconds since `origin` at which the guest last (re)started running.
    /// Shared with the yield future, which updates it when the guest resumes.
    running_since: Arc<AtomicU64>,
    /// Nanoseconds since `origin` at which the current slice began: the
    /// guest started or came back from a yield.
    slice_since: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
    /// The CPU slot this call holds, if it is a long call between ticks.
    slot: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl CpuBudget {
    /// A budget of `budget` running time, starting now, taking turns on
    /// the tenant's `slots` once the call runs past its first slice.
    pub fn new(budget: Duration, slots: Arc<Semaphore>) -> Self {
        Self {
            budget,
            used: Duration::ZERO,
            origin: Instant::now(),
            running_since: Arc::new(AtomicU64::new(0)),
            slice_since: Arc::new(AtomicU64::new(0)),
            slots,
            slot: Arc::new(Mutex::new(None)),
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

    /// The running time of the call so far (accounting the current slice).
    pub fn used(&mut self) -> Duration {
        let _ = self.charge();
        self.used
    }

    /// A full budget of `budget`, starting now (for a reused instance;
    /// allocates nothing).
    pub fn reset(&mut self, budget: Duration) {
        self.budget = budget;
        self.used = Duration::ZERO;
        self.origin = Instant::now();
        self.running_since.store(0, Ordering::Relaxed);
        self.slice_since.store(0, Ordering::Relaxed);
        self.release_slot();
    }

    /// Await `import`, a host import's work for the guest.
    ///
    /// What the import does without waiting (an in-memory backend answers
    /// at once) is work done for the guest on this worker: it is charged to
    /// the call's budget and the call keeps its CPU slot, so a plugin cannot
    /// escape its deadline, or its tenant's limit on workers, by calling
    /// such imports in a loop. Once the import has to wait (I/O, a lock, a
    /// timer), the time so far is charged, the slot is given back (the
    /// tenant's other long calls go on; a call waiting seconds on SQL must
    /// not stall them) and the waiting time is not charged; the call takes a
    /// slot again at its next yield.
    pub async fn wait<F: Future>(&mut self, import: F) -> F::Output {
        let mut import = std::pin::pin!(import);
        let first = std::future::poll_fn(|cx| match import.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        if let Some(out) = first {
            return out;
        }
        self.pause();
        let out = import.await;
        self.resume();
        out
    }

    /// The guest waits for a host import from now: account its running
    /// time so far and give back its CPU slot, if it holds one. Until
    /// [`CpuBudget::resume`], time is not charged.
    fn pause(&mut self) {
        // A spent budget is acted on at the next epoch tick.
        let _ = self.charge();
        self.release_slot();
    }

    /// The guest runs again after a host import's wait. The slice goes on
    /// (it is wall time): a guest calling many imports must still yield.
    fn resume(&self) {
        self.running_since
            .store(duration_nanos(self.origin.elapsed()), Ordering::Relaxed);
    }

    /// Whether the guest has run at least `min` since its slice began, so
    /// an epoch tick should make it yield. Younger slices go on: most calls
    /// finish in microseconds and would only be delayed by a yield.
    pub fn slice_used(&self, min: Duration) -> bool {
        let since = self.slice_since.load(Ordering::Relaxed);
        duration_nanos(self.origin.elapsed()).saturating_sub(since) >= duration_nanos(min)
    }

    /// Give back the CPU slot, if held (at the end of a call).
    pub fn release_slot(&mut self) {
        drop(self.slot.lock().take());
    }

    /// A future that yields to the tokio scheduler, gives back the call's
    /// CPU slot, waits for a slot again (behind the tenant's other long
    /// calls) and then marks the guest as running, so parked and waiting
    /// time is not charged.
    pub fn yield_future(&self) -> impl Future<Output = ()> + Send + 'static {
        let running_since = Arc::clone(&self.running_since);
        let slice_since = Arc::clone(&self.slice_since);
        let origin = self.origin;
        let slots = Arc::clone(&self.slots);
        let slot = Arc::clone(&self.slot);
        async move {
            // Yield first, with the slot still held: the worker polls for
            // I/O and runs the tasks that woke before this call's next
            // slice, so other connections' frames are read and answered in
            // between. Handing the slot over first would wake the tenant's
            // next long call at once, and long calls could pass the worker
            // among themselves without ever letting it poll for I/O.
            yield_behind_woken_tasks().await;
            drop(slot.lock().take());
            // The semaphore is never closed; if it were, run without a slot.
            if let Ok(permit) = slots.acquire_owned().await {
                *slot.lock() = Some(permit);
            }
            let now = duration_nanos(origin.elapsed());
            running_since.store(now, Ordering::Relaxed);
            slice_since.store(now, Ordering::Relaxed);
        }
    }
}

/// Give the worker thread to every task that is ready, including those its
/// next I/O poll wakes, before this one runs again.
///
/// `tokio::task::yield_now` alone does not do that. Its wake is deferred
/// until the worker has polled for I/O, and then it is an ordinary wake from
/// the worker thread, which tokio puts in the worker's LIFO slot: ahead of
/// the tasks the I/O poll had just woken. A guest yielding every 100 µs
/// would so run a second slice before another connection's request was even
/// read (measured: the other tenant's p50 doubled under `hostile/spin`). A
/// task that wakes itself while being polled is instead queued at the back,
/// behind those tasks, so after the deferred yield this wakes itself once.
async fn yield_behind_woken_tasks() {
    tokio::task::yield_now().await;
    let mut woke = false;
    std::future::poll_fn(|cx| {
        if woke {
            Poll::Ready(())
        } else {
            woke = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On one worker thread (as the host runs on one core): a task yielding
    /// lets a connection whose bytes have just arrived run before it goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_yielding_call_lets_a_task_woken_by_io_run_first() {
        use std::sync::atomic::AtomicBool;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut client, mut server) = tokio::net::UnixStream::pair().unwrap();
        let waiting = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicBool::new(false));
        let reader = {
            let (waiting, answered) = (Arc::clone(&waiting), Arc::clone(&answered));
            tokio::spawn(async move {
                waiting.store(true, Ordering::SeqCst);
                let mut byte = [0u8; 1];
                server.read_exact(&mut byte).await.unwrap();
                answered.store(true, Ordering::SeqCst);
            })
        };
        // The "guest": on the same worker, sends the reader its bytes and
        // then yields between two slices.
        let guest = tokio::spawn(async move {
            while !waiting.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
            client.write_all(b"x").await.unwrap();
            yield_behind_woken_tasks().await;
            answered.load(Ordering::SeqCst)
        });
        assert!(
            guest.await.unwrap(),
            "the yielding task ran again before the task its I/O woke"
        );
        reader.await.unwrap();
    }

    #[test]
    fn time_waiting_on_host_imports_is_not_charged() {
        let mut cpu = CpuBudget::new(Duration::from_millis(20), Arc::new(Semaphore::new(1)));
        cpu.pause();
        std::thread::sleep(Duration::from_millis(30));
        cpu.resume();
        assert!(!cpu.charge(), "30 ms of waiting spent a 20 ms budget");
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            cpu.charge(),
            "30 ms of running did not spend a 20 ms budget"
        );
    }

    #[tokio::test]
    async fn an_import_that_answers_at_once_is_charged_and_keeps_the_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let mut cpu = CpuBudget::new(Duration::from_millis(20), Arc::clone(&slots));
        cpu.yield_future().await;
        assert_eq!(slots.available_permits(), 0);
        // Host work done at once for the guest (30 ms of it).
        cpu.wait(async { std::thread::sleep(Duration::from_millis(30)) })
            .await;
        assert_eq!(
            slots.available_permits(),
            0,
            "the slot was given back for work that did not wait"
        );
        assert!(
            cpu.charge(),
            "30 ms of import work did not spend a 20 ms budget"
        );
    }

    #[tokio::test]
    async fn an_import_that_waits_is_not_charged_and_gives_back_the_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let mut cpu = CpuBudget::new(Duration::from_millis(20), Arc::clone(&slots));
        cpu.yield_future().await;
        let probe = Arc::clone(&slots);
        let free_while_waiting = cpu
            .wait(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                probe.available_permits()
            })
            .await;
        assert_eq!(free_while_waiting, 1, "the slot was kept while waiting");
        assert!(!cpu.charge(), "30 ms of waiting spent a 20 ms budget");
    }

    #[tokio::test]
    async fn a_call_waiting_on_a_host_import_gives_back_its_cpu_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let mut cpu = CpuBudget::new(Duration::from_secs(1), Arc::clone(&slots));
        // A long call yields and holds the tenant's only slot.
        cpu.yield_future().await;
        assert_eq!(slots.available_permits(), 0);
        // Waiting on an import, it does not.
        cpu.pause();
        assert_eq!(
            slots.available_permits(),
            1,
            "the slot was kept while waiting"
        );
        cpu.resume();
        // Its next yield takes one again.
        cpu.yield_future().await;
        assert_eq!(slots.available_permits(), 0);
        cpu.release_slot();
        assert_eq!(slots.available_permits(), 1);
    }
}
