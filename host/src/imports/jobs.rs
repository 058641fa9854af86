//! `tenantry:plugin/jobs` and `tenantry:plugin/schedule`: the calling
//! tenant's job queue and recurring jobs on the host's Postgres
//! ([`crate::backend::postgres::jobs`], [`crate::backend::postgres::schedules`]).
//! Without `[postgres]` every call fails `unavailable`.

use std::time::Duration;

use crate::backend::BackendError;
use crate::backend::postgres::jobs::EnqueueOptions;
use crate::runtime::HostState;
use crate::runtime::wit::jobs as wit_jobs;
use crate::runtime::wit::schedule as wit_schedule;
use crate::runtime::wit::types::HostError;

fn not_configured() -> HostError {
    HostError::from(BackendError::Unavailable(
        "jobs need [postgres] on this host".into(),
    ))
}

impl wit_jobs::Host for HostState {
    async fn enqueue(
        &mut self,
        queue: String,
        payload: String,
        options: wit_jobs::EnqueueOptions,
    ) -> Result<String, HostError> {
        let s = &self.scope;
        let Some(jobs) = s.backends.jobs.clone() else {
            return Err(not_configured());
        };
        let tenant = s.tenant.clone();
        let options = EnqueueOptions {
            delay: Duration::from_millis(options.delay_ms.unwrap_or(0)),
            max_attempts: options.max_attempts,
            request_id: None,
        };
        let r = self
            .cpu
            .wait(jobs.enqueue(&tenant, &queue, &payload, &options))
            .await;
        if let Err(e) = &r {
            tracing::debug!(%tenant, queue, error = %e, "job not enqueued");
        }
        Ok(r?.to_string())
    }
}

impl wit_schedule::Host for HostState {
    async fn set(
        &mut self,
        id: String,
        cron: String,
        queue: String,
        payload: String,
    ) -> Result<u64, HostError> {
        let s = &self.scope;
        let Some(schedules) = s.backends.schedules.clone() else {
            return Err(not_configured());
        };
        let tenant = s.tenant.clone();
        let r = self
            .cpu
            .wait(schedules.set(&tenant, &id, &cron, &queue, &payload))
            .await;
        Ok(r?)
    }

    async fn remove(&mut self, id: String) -> Result<bool, HostError> {
        let s = &self.scope;
        let Some(schedules) = s.backends.schedules.clone() else {
            return Err(not_configured());
        };
        let tenant = s.tenant.clone();
        let r = self.cpu.wait(schedules.remove(&tenant, &id)).await;
        Ok(r?)
    }

    async fn list(&mut self) -> Result<Vec<wit_schedule::ScheduleInfo>, HostError> {
        let s = &self.scope;
        let Some(schedules) = s.backends.schedules.clone() else {
            return Err(not_configured());
        };
        let tenant = s.tenant.clone();
        let r = self.cpu.wait(schedules.list(&tenant)).await;
        Ok(r?
            .into_iter()
            .map(|s| wit_schedule::ScheduleInfo {
                id: s.id,
                cron: s.cron,
                queue: s.queue,
                payload: s.payload,
                next_at_ms: s.next_at_ms,
            })
            .collect())
    }
}
