//! Running jobs and firing schedules, on every host of the fleet.
//!
//! **Poller.** Every [`JobRunnerSettings::poll`] (and at once when this
//! host enqueued), for each loaded tenant whose active plugin accepts
//! jobs (its `accepts-jobs` answer, probed at load), a worker task claims
//! up to [`JobRunnerSettings::batch`] due jobs of those queues from the
//! [`JobStore`], calls the plugin's `on-job` for each (concurrently, under
//! the same sandbox limits as an RPC: CPU deadline, fuel, memory, the
//! tenant's concurrency cap, counted in its usage), completes the ones
//! that succeeded and fails the others (retry with backoff, or dead). A
//! tenant has at most one worker per host, so at most `batch` of its jobs
//! run at once on a host and one tenant cannot starve the others; a
//! worker that claimed a full batch claims again at once.
//!
//! **Scheduler.** Every [`JobRunnerSettings::schedule_poll`], for each
//! loaded tenant, fires its due schedules ([`ScheduleStore::fire_due`]:
//! exactly one host fires each occurrence).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::backend::postgres::jobs::{FailOutcome, Job, JobStore};
use crate::backend::postgres::schedules::ScheduleStore;
use crate::quota::TenantQuota;
use crate::runtime::{CallError, Plugin};
use crate::tenant::{Registry, TenantId};

/// How this host runs jobs (the `[jobs]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRunnerSettings {
    /// How often each host looks for due jobs.
    pub poll: Duration,
    /// Jobs of one tenant claimed (and run at once) per round on a host.
    pub batch: usize,
    /// How long a claimed job is hidden from other hosts.
    pub visibility: Duration,
    /// How often each host looks for due schedules.
    pub schedule_poll: Duration,
}

impl Default for JobRunnerSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(200),
            batch: 16,
            visibility: Duration::from_secs(30),
            schedule_poll: Duration::from_millis(250),
        }
    }
}

/// How many jobs `tenant` may start now on this host: at most `batch`,
/// at most half its plan's `max_concurrent_calls` (jobs share the call
/// slots with its RPCs and hooks, which keep the other half), and no more
/// than the slots free now.
fn job_slots(batch: usize, quota: &TenantQuota) -> usize {
    let max = quota.plan().max_concurrent_calls;
    let free = max.saturating_sub(quota.calls());
    let half = (max / 2).max(1);
    batch.min(usize::try_from(half.min(free)).unwrap_or(usize::MAX))
}

/// This host's job runner and scheduler. Share it as `Arc<JobRunner>`.
pub struct JobRunner {
    store: Arc<JobStore>,
    schedules: Arc<ScheduleStore>,
    registry: Arc<Registry>,
    settings: JobRunnerSettings,
    /// Tenants with a worker running on this host.
    busy: parking_lot::Mutex<HashSet<TenantId>>,
}

/// Removes its tenant from [`JobRunner::busy`] when dropped (also when
/// the worker panicked).
struct Busy<'a>(&'a JobRunner, TenantId);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.lock().remove(&self.1);
    }
}

impl JobRunner {
    /// A runner of the jobs in `store` and the schedules in `schedules`
    /// for the tenants in `registry`.
    pub fn new(
        store: Arc<JobStore>,
        schedules: Arc<ScheduleStore>,
        registry: Arc<Registry>,
        settings: JobRunnerSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            schedules,
            registry,
            settings,
            busy: parking_lot::Mutex::new(HashSet::new()),
        })
    }

    /// `tenant`'s active plugin, if it accepts jobs.
    fn runner_of(&self, tenant: &TenantId) -> Option<Arc<Plugin>> {
        let t = self.registry.get(tenant)?;
        if t.is_suspended() {
            return None;
        }
        t.deployment().active.filter(|p| !p.job_queues().is_empty())
    }

    /// Start a worker for every tenant with jobs to run and none yet.
    pub fn poll_once(self: &Arc<Self>) {
        for tenant in self.registry.ids() {
            let Some(plugin) = self.runner_of(&tenant) else {
                continue;
            };
            if !self.busy.lock().insert(tenant.clone()) {
                continue;
            }
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let _busy = Busy(&me, tenant.clone());
                me.work(&tenant, &plugin).await;
            });
        }
    }

    /// Claim and run `tenant`'s due jobs until a round finds fewer than a
    /// full batch.
    async fn work(&self, tenant: &TenantId, plugin: &Arc<Plugin>) {
        let queues = plugin.job_queues();
        let s = &self.settings;
        loop {
            let batch = job_slots(s.batch, &plugin.scope().quota);
            if batch == 0 {
                // The tenant's calls fill its plan; the next poll tries again.
                return;
            }
            let jobs = match self.store.claim(tenant, &queues, batch, s.visibility).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "jobs not claimed");
                    return;
                }
            };
            let full = jobs.len() >= batch;
            let given_back =
                futures_util::future::join_all(jobs.iter().map(|j| self.run(tenant, plugin, j)))
                    .await;
            // A job given back means the tenant cannot run more now: wait
            // for the next poll instead of claiming it again at once.
            if !full || given_back.contains(&true) {
                return;
            }
        }
    }

    /// Run one claimed job and settle it; `true` if it did not run and
    /// was given back.
    async fn run(&self, tenant: &TenantId, plugin: &Plugin, job: &Job) -> bool {
        let outcome = plugin.on_job(job).await;
        let settled = match &outcome {
            Err(CallError::Overloaded | CallError::FaultBudget(_)) => {
                // Not run (the tenant's calls filled its plan meanwhile, or
                // its plugin faulted too often lately): not an attempt.
                if let Err(e) = self.store.release(tenant, job).await {
                    tracing::warn!(%tenant, job = job.id, error = %e, "job not given back; it runs again after its visibility timeout");
                }
                return true;
            }
            Ok(()) => self.store.complete(tenant, job).await.map(|done| {
                if !done {
                    tracing::warn!(%tenant, job = job.id, attempt = job.attempt, "job finished after its claim expired; a newer attempt owns it");
                }
            }),
            Err(e) => {
                let message = e.to_string();
                self.store
                    .fail(tenant, job, &message)
                    .await
                    .map(|f| match f {
                        FailOutcome::Retrying { after_ms } => {
                            tracing::info!(%tenant, job = job.id, queue = %job.queue, attempt = job.attempt, retry_in_ms = after_ms, error = %message, "job failed; retrying");
                        }
                        FailOutcome::Dead => {
                            tracing::warn!(%tenant, job = job.id, queue = %job.queue, attempt = job.attempt, error = %message, "job failed its last attempt: dead");
                        }
                        FailOutcome::Lost => {
                            tracing::warn!(%tenant, job = job.id, attempt = job.attempt, "job failed after its claim expired; a newer attempt owns it");
                        }
                    })
            }
        };
        if let Err(e) = settled {
            // The claim expires and the job runs again.
            tracing::warn!(%tenant, job = job.id, error = %e, "job not settled; it runs again after its visibility timeout");
        }
        false
    }

    /// Fire the due schedules of every loaded tenant once.
    pub async fn fire_schedules(&self) {
        for tenant in self.registry.ids() {
            match self.schedules.fire_due(&tenant).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(%tenant, jobs = n, "schedules fired"),
                Err(e) => tracing::warn!(%tenant, error = %e, "schedules not fired"),
            }
        }
    }

    /// Run the poller and the scheduler until the returned tasks are aborted.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let poller = {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.settings.poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = me.store.enqueued() => {}
                    }
                    me.poll_once();
                }
            })
        };
        let scheduler = {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.settings.schedule_poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    me.fire_schedules().await;
                }
            })
        };
        vec![poller, scheduler]
    }
}
