//! `tenantry:plugin/tasks`: the calling tenant's tasks on the host's
//! Postgres ([`crate::backend::postgres::tasks`]). Without `[postgres]`
//! every call fails `unavailable`. Waiting pauses the call's CPU clock
//! and is capped by `[tasks] max_wait_ms`.

use std::time::Duration;

use crate::backend::BackendError;
use crate::backend::postgres::tasks::{StartOptions, TaskRecord, TaskState};
use crate::runtime::HostState;
use crate::runtime::wit::tasks as wit_tasks;
use crate::runtime::wit::types::HostError;
use wit_tasks::TaskError;

/// Longest request id kept on a task, bytes.
const MAX_REQUEST_ID_BYTES: usize = 128;

fn host(e: BackendError) -> TaskError {
    TaskError::Host(HostError::from(e))
}

fn not_configured() -> TaskError {
    host(BackendError::Unavailable(
        "tasks need [postgres] on this host".into(),
    ))
}

fn info(t: TaskRecord) -> wit_tasks::TaskInfo {
    wit_tasks::TaskInfo {
        id: t.id.to_string(),
        name: t.name,
        idempotency_key: t.idempotency_key,
        state: match t.state {
            TaskState::Pending => wit_tasks::TaskState::Pending,
            TaskState::Running => wit_tasks::TaskState::Running,
            TaskState::Committed => wit_tasks::TaskState::Committed,
            TaskState::Failed => wit_tasks::TaskState::Failed,
        },
        attempt: t.attempt,
        max_attempts: t.max_attempts,
        result: t.result,
        error: t.error,
        created_at_ms: t.created_at_ms,
    }
}

impl wit_tasks::Host for HostState {
    async fn start(
        &mut self,
        name: String,
        idempotency_key: String,
        input: String,
        options: wit_tasks::StartOptions,
    ) -> Result<wit_tasks::TaskInfo, TaskError> {
        let s = &self.scope;
        let Some(tasks) = s.backends.tasks.clone() else {
            return Err(not_configured());
        };
        if !s.task_names.read().contains(&name) {
            return Err(TaskError::UnknownTask);
        }
        let tenant = s.tenant.clone();
        let options = StartOptions {
            max_attempts: options.max_attempts,
            request_id: options
                .request_id
                .filter(|r| r.len() <= MAX_REQUEST_ID_BYTES),
        };
        let r = self
            .cpu
            .wait(tasks.start(&tenant, &name, &idempotency_key, &input, &options))
            .await;
        match r {
            Ok((task, _)) => Ok(info(task)),
            Err(e) => {
                tracing::debug!(%tenant, name, error = %e, "task not started");
                Err(host(e))
            }
        }
    }

    async fn wait(&mut self, id: String, timeout_ms: u64) -> Result<String, TaskError> {
        let s = &self.scope;
        let Some(tasks) = s.backends.tasks.clone() else {
            return Err(not_configured());
        };
        let Ok(id) = id.parse::<i64>() else {
            return Err(TaskError::NotFound);
        };
        let tenant = s.tenant.clone();
        let settings = tasks.settings();
        let timeout = Duration::from_millis(timeout_ms).min(settings.max_wait);
        let poll = settings.await_poll;
        let r = self.cpu.wait(tasks.wait(&tenant, id, timeout, poll)).await;
        let task = r.map_err(host)?.ok_or(TaskError::NotFound)?;
        match task.state {
            TaskState::Committed => Ok(task.result.unwrap_or_else(|| "null".to_owned())),
            TaskState::Failed => Err(TaskError::Failed(task.error.unwrap_or_default())),
            TaskState::Pending | TaskState::Running => Err(TaskError::InFlight),
        }
    }

    async fn get(&mut self, id: String) -> Result<Option<wit_tasks::TaskInfo>, TaskError> {
        let s = &self.scope;
        let Some(tasks) = s.backends.tasks.clone() else {
            return Err(not_configured());
        };
        let Ok(id) = id.parse::<i64>() else {
            return Ok(None);
        };
        let tenant = s.tenant.clone();
        let r = self.cpu.wait(tasks.get(&tenant, id)).await;
        Ok(r.map_err(host)?.map(info))
    }
}
