//! Running tasks, on every host of the fleet (the seeds' `createTaskRunner`;
//! the store is [`crate::backend::postgres::tasks`]).
//!
//! **Dispatch.** Every [`TaskRunnerSettings::poll`] (and at once when this
//! host started a task), for each tenant in the registry whose active
//! plugin runs tasks (its `accepts-tasks` answer, probed at load), the
//! runner claims as many due tasks as the tenant has room for on this
//! host: at most [`TaskRunnerSettings::batch`] of its tasks run here at
//! once, at most half its plan's `max_concurrent_calls` (the other half
//! stays for its RPCs, as for jobs), and never more than its free calls,
//! so a claim is rarely refused `OVERLOADED` by the sandbox. Due means pending (new, or after
//! its backoff), or running with an expired lock: the **takeover** of a
//! task whose runner died. One claim per tenant runs at a time; each
//! claimed task then runs on its own.
//!
//! **One attempt.** The plugin's `on-task` runs under the same sandbox
//! limits as an RPC while a **heartbeat** extends the task's lock every
//! third of the fence TTL. If a heartbeat finds the fence gone (the task
//! was taken over, e.g. this host stalled past the TTL), the call is cut
//! off. The result commits only if the fence is still the task's; a
//! failure (error, trap, timeout, a result that is not JSON or too big)
//! retries with backoff or fails the task; a call the sandbox refused
//! anyway (`OVERLOADED`) gives the claim back without counting an attempt.
//!
//! **Cleanup.** Every [`TaskRunnerSettings::cleanup_every`], settled tasks
//! older than the row TTL are deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::backend::BackendError;
use crate::backend::postgres::tasks::{ClaimedTask, TaskFailOutcome, TaskStore};
use crate::metrics::{self, TaskEvent};
use crate::runtime::{CallError, Plugin};
use crate::tenant::{Registry, TenantId};

/// How this host runs tasks (the `[tasks]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRunnerSettings {
    /// How often each host looks for due tasks (and for tasks to take over).
    pub poll: Duration,
    /// Tasks of one tenant running at once on a host.
    pub batch: usize,
    /// How often each host deletes settled tasks past their TTL.
    pub cleanup_every: Duration,
}

impl Default for TaskRunnerSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            batch: 16,
            cleanup_every: Duration::from_secs(3600),
        }
    }
}

/// A tenant's tasks on this host.
#[derive(Debug, Default)]
struct Slots {
    /// Tasks running.
    running: usize,
    /// A claim is in flight.
    claiming: bool,
}

/// This host's task runner. Share it as `Arc<TaskRunner>`.
pub struct TaskRunner {
    store: Arc<TaskStore>,
    registry: Arc<Registry>,
    settings: TaskRunnerSettings,
    /// Who this runner is, on the tasks it claims (`host/pid`).
    owner: String,
    slots: parking_lot::Mutex<HashMap<TenantId, Slots>>,
}

/// Counts one running task of its tenant while alive (also when the task
/// panicked).
struct Running<'a>(&'a TaskRunner, TenantId);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0.slots.lock().get_mut(&self.1) {
            s.running = s.running.saturating_sub(1);
        }
    }
}

/// How many more tasks of a tenant this host may start now, with `running`
/// of them running here: at most `batch` in all, at most half the plan's
/// `max_concurrent_calls` (tasks share the call slots with the tenant's
/// RPCs and hooks, which keep the other half, as for jobs), and no more
/// than the calls free now (`max_calls - calls`).
fn task_room(batch: usize, running: usize, max_calls: u64, calls: u64) -> usize {
    let half = usize::try_from((max_calls / 2).max(1)).unwrap_or(usize::MAX);
    let free = usize::try_from(max_calls.saturating_sub(calls)).unwrap_or(usize::MAX);
    batch.min(half).saturating_sub(running).min(free)
}

/// This process's name on the tasks it claims: `hostname/pid`.
pub fn owner_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tenantry".to_owned());
    format!("{host}/{}", std::process::id())
}

impl TaskRunner {
    /// A runner of the tasks in `store` for the tenants in `registry`.
    pub fn new(
        store: Arc<TaskStore>,
        registry: Arc<Registry>,
        settings: TaskRunnerSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry,
            settings,
            owner: owner_name(),
            slots: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// `tenant`'s active plugin, if it runs tasks, and its plan's
    /// `max_concurrent_calls` and calls running now.
    fn runner_of(&self, tenant: &TenantId) -> Option<(Arc<Plugin>, u64, u64)> {
        let t = self.registry.get(tenant)?;
        if t.is_suspended() {
            return None;
        }
        let plugin = t
            .deployment()
            .active
            .filter(|p| !p.task_names().is_empty())?;
        Some((plugin, t.quota.plan().max_concurrent_calls, t.quota.calls()))
    }

    /// Start a claim for every tenant with room for more tasks and none
    /// claiming yet.
    pub fn poll_once(self: &Arc<Self>) {
        let ids = self.registry.ids();
        {
            let known: HashSet<&TenantId> = ids.iter().collect();
            self.slots
                .lock()
                .retain(|t, s| s.running > 0 || s.claiming || known.contains(t));
        }
        for tenant in ids {
            let Some((plugin, max_calls, calls)) = self.runner_of(&tenant) else {
                continue;
            };
            let room = {
                let mut slots = self.slots.lock();
                let s = slots.entry(tenant.clone()).or_default();
                let room = task_room(self.settings.batch, s.running, max_calls, calls);
                if s.claiming || room == 0 {
                    continue;
                }
                s.claiming = true;
                room
            };
            let me = Arc::clone(self);
            tokio::spawn(async move { me.claim(tenant, plugin, room).await });
        }
    }

    /// Claim up to `room` tasks of `tenant` and run each on its own.
    async fn claim(self: Arc<Self>, tenant: TenantId, plugin: Arc<Plugin>, room: usize) {
        let claimed = self
            .store
            .claim(&tenant, &plugin.task_names(), room, &self.owner)
            .await;
        let tasks = {
            let mut slots = self.slots.lock();
            let s = slots.entry(tenant.clone()).or_default();
            s.claiming = false;
            match claimed {
                Ok(tasks) => {
                    s.running += tasks.len();
                    tasks
                }
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "tasks not claimed");
                    return;
                }
            }
        };
        for task in tasks {
            let (me, tenant, plugin) = (Arc::clone(&self), tenant.clone(), Arc::clone(&plugin));
            tokio::spawn(async move {
                let _running = Running(&me, tenant.clone());
                me.run(&tenant, &plugin, &task).await;
            });
        }
    }

    /// Extend `task`'s lock every third of the fence TTL; returns when the
    /// task is no longer this claim's (taken over).
    async fn heartbeat(&self, tenant: &TenantId, task: &ClaimedTask) {
        let every = (self.store.settings().fence_ttl / 3).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            match self.store.heartbeat(tenant, task).await {
                Ok(true) => {}
                Ok(false) => return,
                // The lock may lapse; then another runner takes the task
                // over and this one's commit is refused.
                Err(e) => {
                    tracing::warn!(%tenant, task = task.id, error = %e, "task heartbeat failed");
                }
            }
        }
    }

    /// Run one attempt of a claimed task and settle it.
    async fn run(&self, tenant: &TenantId, plugin: &Plugin, task: &ClaimedTask) {
        if task.taken_over {
            tracing::info!(%tenant, task = task.id, name = %task.name, attempt = task.attempt, "task taken over from a runner whose lock expired");
        }
        let outcome = tokio::select! {
            r = plugin.on_task(task) => r,
            () = self.heartbeat(tenant, task) => {
                metrics::task(tenant, TaskEvent::FencedOut);
                tracing::warn!(%tenant, task = task.id, attempt = task.attempt, "task taken over while running here; its call was cut off");
                return;
            }
        };
        match outcome {
            Ok(result) => match self.store.commit(tenant, task, &result).await {
                Ok(true) => {
                    tracing::debug!(%tenant, task = task.id, name = %task.name, attempt = task.attempt, "task committed");
                }
                Ok(false) => {
                    metrics::task(tenant, TaskEvent::FencedOut);
                    tracing::warn!(%tenant, task = task.id, attempt = task.attempt, "task finished after it was taken over; its result is discarded");
                }
                Err(e @ (BackendError::Invalid(_) | BackendError::TooLarge(_))) => {
                    self.fail(tenant, task, &e.to_string()).await;
                }
                Err(e) => {
                    tracing::warn!(%tenant, task = task.id, error = %e, "task result not committed; the task is taken over once its lock expires");
                }
            },
            Err(CallError::Overloaded | CallError::FaultBudget(_)) => {
                match self.store.release(tenant, task).await {
                    Ok(released) => {
                        if released {
                            metrics::task(tenant, TaskEvent::Released);
                        }
                        tracing::debug!(%tenant, task = task.id, "the tenant was at its concurrency cap or out of fault budget; task claim given back");
                    }
                    Err(e) => {
                        tracing::warn!(%tenant, task = task.id, error = %e, "task claim not given back; it is taken over once its lock expires");
                    }
                }
            }
            Err(e) => self.fail(tenant, task, &e.to_string()).await,
        }
    }

    /// Fail the attempt of `task` with `error`.
    async fn fail(&self, tenant: &TenantId, task: &ClaimedTask, error: &str) {
        match self.store.fail(tenant, task, error).await {
            Ok(TaskFailOutcome::Retrying { after_ms }) => {
                tracing::info!(%tenant, task = task.id, name = %task.name, attempt = task.attempt, retry_in_ms = after_ms, error, "task attempt failed; retrying");
            }
            Ok(TaskFailOutcome::Failed) => {
                tracing::warn!(%tenant, task = task.id, name = %task.name, attempt = task.attempt, error, "task failed its last attempt");
            }
            Ok(TaskFailOutcome::Lost) => {
                metrics::task(tenant, TaskEvent::FencedOut);
                tracing::warn!(%tenant, task = task.id, attempt = task.attempt, "task failed after it was taken over");
            }
            Err(e) => {
                tracing::warn!(%tenant, task = task.id, error = %e, "task failure not recorded; the task is taken over once its lock expires");
            }
        }
    }

    /// Run the dispatcher and the cleanup until the returned tasks are aborted.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let dispatcher = {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.settings.poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = me.store.started() => {}
                    }
                    me.poll_once();
                }
            })
        };
        let cleanup = {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.settings.cleanup_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match me.store.cleanup().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(tasks = n, "settled tasks past their TTL deleted"),
                        Err(e) => tracing::warn!(error = %e, "task cleanup failed"),
                    }
                }
            })
        };
        vec![dispatcher, cleanup]
    }
}

/// The `[tasks]` table: the task runner (hosts with `[postgres]`; see
/// `docs/configuration.md`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksTable {
    /// How long a claim, or its last heartbeat, keeps a task its runner's,
    /// ms: a task whose host died is taken over this long after its last
    /// heartbeat. Runners heartbeat every third of it. Default 60000.
    pub fence_ttl_ms: u64,
    /// How often each host looks for due tasks and tasks to take over, ms
    /// (it also looks at once when it started one). Default 1000.
    pub poll_ms: u64,
    /// Tasks of one tenant running at once on a host. Default 16.
    pub batch: usize,
    /// How often a `wait` looks at its task, ms. Default 500.
    pub await_poll_ms: u64,
    /// The longest `wait`, ms (also capped below `[limits]
    /// call_wall_timeout_ms`). Default 4000.
    pub max_wait_ms: u64,
    /// Backoff before a failed task's second attempt, ms; doubling with
    /// each attempt (with jitter), at most `retry_max_ms`. Default 1000.
    pub retry_base_ms: u64,
    /// Longest backoff, ms. Default 60000.
    pub retry_max_ms: u64,
    /// Attempts of a task that names none. Default 3.
    pub max_attempts: u32,
    /// Pending or running tasks a tenant may hold. Default 10000.
    pub max_open: u64,
    /// Largest task input, KiB. Default 256.
    pub max_input_kb: usize,
    /// Largest task result, KiB. Default 256.
    pub max_result_kb: usize,
    /// How long settled tasks are kept (and answer starts of their key),
    /// seconds. Default 604800 (a week).
    pub row_ttl_s: u64,
    /// How often each host deletes settled tasks past `row_ttl_s`, ms.
    /// Default 3600000.
    pub cleanup_interval_ms: u64,
}

impl Default for TasksTable {
    fn default() -> Self {
        let store = crate::backend::postgres::tasks::TaskSettings::default();
        let runner = TaskRunnerSettings::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            fence_ttl_ms: ms(store.fence_ttl),
            poll_ms: 1000,
            batch: runner.batch,
            await_poll_ms: ms(store.await_poll),
            max_wait_ms: ms(store.max_wait),
            retry_base_ms: ms(store.retry_base),
            retry_max_ms: ms(store.retry_max),
            max_attempts: store.default_max_attempts,
            max_open: store.max_open,
            max_input_kb: store.max_input_bytes >> 10,
            max_result_kb: store.max_result_bytes >> 10,
            row_ttl_s: store.row_ttl.as_secs(),
            cleanup_interval_ms: ms(runner.cleanup_every),
        }
    }
}

impl TasksTable {
    /// The store's settings; waits capped below `call_wall_timeout`.
    pub fn store_settings(
        &self,
        call_wall_timeout: Duration,
    ) -> crate::backend::postgres::tasks::TaskSettings {
        let wall_cap = call_wall_timeout.saturating_sub(Duration::from_millis(250));
        crate::backend::postgres::tasks::TaskSettings {
            max_input_bytes: self.max_input_kb << 10,
            max_result_bytes: self.max_result_kb << 10,
            max_open: self.max_open,
            default_max_attempts: self.max_attempts,
            fence_ttl: Duration::from_millis(self.fence_ttl_ms),
            retry_base: Duration::from_millis(self.retry_base_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
            row_ttl: Duration::from_secs(self.row_ttl_s),
            await_poll: Duration::from_millis(self.await_poll_ms),
            max_wait: Duration::from_millis(self.max_wait_ms).min(wall_cap),
        }
    }

    /// The runner's settings.
    pub fn runner_settings(&self) -> TaskRunnerSettings {
        TaskRunnerSettings {
            poll: Duration::from_millis(self.poll_ms),
            batch: self.batch,
            cleanup_every: Duration::from_millis(self.cleanup_interval_ms),
        }
    }

    /// Check the table; the first problem.
    pub fn validate(&self) -> Result<(), String> {
        let hour = 60 * 60 * 1000;
        let checks = [
            (
                (300..=24 * hour).contains(&self.fence_ttl_ms),
                "tasks.fence_ttl_ms must be between 300 ms and a day",
            ),
            (
                (1..=60_000).contains(&self.poll_ms),
                "tasks.poll_ms must be 1-60000",
            ),
            (
                (1..=1000).contains(&self.batch),
                "tasks.batch must be 1-1000",
            ),
            (
                (1..=60_000).contains(&self.await_poll_ms),
                "tasks.await_poll_ms must be 1-60000",
            ),
            (
                (1..=600_000).contains(&self.max_wait_ms),
                "tasks.max_wait_ms must be 1-600000",
            ),
            (
                self.retry_base_ms >= 1 && self.retry_max_ms >= self.retry_base_ms,
                "tasks: retry_base_ms must be at least 1 and retry_max_ms at least retry_base_ms",
            ),
            (
                self.retry_max_ms <= 24 * hour,
                "tasks.retry_max_ms must be at most a day",
            ),
            (
                (1..=crate::backend::postgres::tasks::MAX_ATTEMPTS_LIMIT)
                    .contains(&self.max_attempts),
                "tasks.max_attempts must be 1-100",
            ),
            (self.max_open >= 1, "tasks.max_open must be at least 1"),
            (
                (1..=16 * 1024).contains(&self.max_input_kb),
                "tasks.max_input_kb must be 1-16384",
            ),
            (
                (1..=16 * 1024).contains(&self.max_result_kb),
                "tasks.max_result_kb must be 1-16384",
            ),
            (
                (1..=365 * 86_400).contains(&self.row_ttl_s),
                "tasks.row_ttl_s must be between 1 s and a year",
            ),
            (
                (1000..=24 * hour).contains(&self.cleanup_interval_ms),
                "tasks.cleanup_interval_ms must be between 1 s and a day",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err((*why).to_owned()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn tasks_take_at_most_half_the_plans_calls_and_only_free_ones() {
        // The free plan's 8 calls: 4 tasks at most, fewer when calls run.
        assert_eq!(task_room(16, 0, 8, 0), 4);
        assert_eq!(task_room(16, 3, 8, 3), 1);
        assert_eq!(task_room(16, 4, 8, 4), 0);
        assert_eq!(task_room(16, 0, 8, 7), 1, "only free calls");
        assert_eq!(task_room(16, 0, 8, 9), 0);
        assert_eq!(
            task_room(16, 0, 1, 0),
            1,
            "a plan of one call still runs tasks"
        );
        assert_eq!(task_room(2, 0, 32, 0), 2, "the batch bounds it");
        assert_eq!(task_room(16, 10, 32, 10), 6);
    }

    #[test]
    fn the_tasks_table_has_the_seed_defaults_and_is_checked() {
        let c = Config::from_toml("", Path::new("/etc/tenantry")).unwrap();
        assert_eq!(c.tasks, TasksTable::default());
        let s = c.tasks.store_settings(Duration::from_secs(5));
        assert_eq!(s.fence_ttl, Duration::from_secs(60));
        assert_eq!(s.row_ttl, Duration::from_secs(604_800));
        assert_eq!(s.await_poll, Duration::from_millis(500));
        assert_eq!(s.max_wait, Duration::from_secs(4));
        assert_eq!(s.default_max_attempts, 3);
        assert_eq!(
            c.tasks.runner_settings().cleanup_every,
            Duration::from_secs(3600)
        );
        // Waits stay below the call's wall-clock bound.
        let short = c.tasks.store_settings(Duration::from_secs(2));
        assert_eq!(short.max_wait, Duration::from_millis(1750));

        let c = Config::from_toml(
            "[tasks]\nfence_ttl_ms = 1500\npoll_ms = 50\nbatch = 4\nmax_attempts = 5\nrow_ttl_s = 60\n",
            Path::new("/etc/tenantry"),
        )
        .unwrap();
        assert_eq!(
            c.tasks.store_settings(Duration::from_secs(5)).fence_ttl,
            Duration::from_millis(1500)
        );
        assert_eq!(c.tasks.runner_settings().batch, 4);
        for bad in [
            "fence_ttl_ms = 10",
            "poll_ms = 0",
            "batch = 0",
            "max_attempts = 0",
            "max_attempts = 101",
            "retry_base_ms = 10\nretry_max_ms = 5",
            "max_input_kb = 0",
            "row_ttl_s = 0",
            "cleanup_interval_ms = 10",
            "nonsense = 1",
        ] {
            assert!(
                Config::from_toml(&format!("[tasks]\n{bad}\n"), Path::new("/etc/tenantry"))
                    .is_err(),
                "{bad}"
            );
        }
    }
}
