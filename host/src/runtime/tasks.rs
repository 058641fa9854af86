//! The plugin side of the task runner: the optional `task-events` export
//! (`accepts-tasks`, probed at load, and `on-task`).

use super::{CallError, Plugin, check_json, live_error_from_wit, metrics, wit_task_events};
use crate::backend::postgres::tasks::{ClaimedTask, MAX_ACCEPTED_TASKS, valid_name};
use crate::metrics::TrapKind;

impl Plugin {
    /// The task names the plugin runs: what its `accepts-tasks` answered at
    /// load (valid names only; empty without the hook).
    pub fn task_names(&self) -> Vec<String> {
        self.scope.task_names.read().clone()
    }

    /// Ask the plugin which tasks it runs; remembered for
    /// [`Plugin::task_names`].
    pub(super) async fn probe_task_hook(&self) {
        let Some(indices) = &self.task_hook else {
            return;
        };
        let probed = self
            .run(None, async |inst, store| {
                let hook = indices.load(&mut *store, &inst.raw)?;
                hook.call_accepts_tasks(&mut *store).await
            })
            .await;
        // Not kept warm, as for the other probes.
        self.idle.lock().clear();
        match probed {
            Ok((names, _)) => {
                let (valid, invalid): (Vec<String>, Vec<String>) = names
                    .into_iter()
                    .take(MAX_ACCEPTED_TASKS)
                    .partition(|n| valid_name(n));
                if !invalid.is_empty() {
                    tracing::warn!(tenant = %self.tenant, plugin_version = %self.version, ?invalid, "accepts-tasks named invalid tasks; ignored");
                }
                *self.scope.task_names.write() = valid;
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, plugin_version = %self.version, error = %e, "accepts-tasks probe failed; no tasks for this version");
            }
        }
    }

    /// Run one attempt of a claimed task through the plugin's `on-task`,
    /// under the same limits as an RPC: its result (JSON text, checked
    /// against the plan's `max_result_bytes`). `Host` error if the plugin
    /// does not export the hook.
    pub async fn on_task(&self, task: &ClaimedTask) -> Result<String, CallError> {
        let Some(indices) = &self.task_hook else {
            return Err(CallError::Host(
                "the plugin does not export task-events".into(),
            ));
        };
        let record = wit_task_events::Task {
            id: task.id.to_string(),
            name: task.name.clone(),
            idempotency_key: task.idempotency_key.clone(),
            input: task.input.clone(),
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            fence: task.fence,
            request_id: task.request_id.clone(),
        };
        let (r, _) = self
            .run(None, async |inst, store| {
                let hook = indices.load(&mut *store, &inst.raw)?;
                hook.call_on_task(&mut *store, &record).await
            })
            .await?;
        let json = r.map_err(|e| CallError::Live(live_error_from_wit(e)))?;
        let max = self.scope.quota.plan().max_result_bytes;
        if u64::try_from(json.len()).unwrap_or(u64::MAX) > max {
            metrics::trap(&self.tenant, TrapKind::ResultTooLarge);
            return Err(CallError::PayloadTooLarge(format!(
                "task result is {} bytes, the plan allows {max}",
                json.len()
            )));
        }
        check_json(&json, "task result")?;
        Ok(json)
    }
}
