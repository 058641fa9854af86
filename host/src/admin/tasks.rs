//! The task runner's admin routes (`docs/admin-api.md`, "Tasks"): list a
//! tenant's tasks and their counts, show one, take one over. Open to the
//! operator and the tenant's deploy key; 503 on a host without `[postgres]`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::error::ApiError;
use super::{AdminState, ApiResult, ok, tenant_id};
use crate::backend::postgres::tasks::{MAX_LIST, TaskState, TaskStore};
use crate::control::ControlError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TasksQuery {
    /// `pending`, `running`, `committed` or `failed`; all when absent.
    state: Option<String>,
    /// Most tasks listed (1-1000, default 100).
    limit: Option<i64>,
}

/// The task store, or 503 on a host without `[postgres]`.
fn task_store(s: &AdminState) -> Result<Arc<TaskStore>, ApiError> {
    s.control.backends().tasks.clone().ok_or_else(|| {
        ControlError::Backend("this host has no task runner (it needs [postgres])".into()).into()
    })
}

fn unavailable(e: &crate::backend::BackendError) -> ApiError {
    ControlError::Backend(format!("task store unavailable: {e}")).into()
}

fn task_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::invalid(format!("task id {raw:?} is not a number")))
}

/// `GET /admin/tenants/{id}/tasks[?state=S][&limit=N]`: the tenant's tasks
/// (in state `S`, or all), oldest first, and its counts per state.
pub(super) async fn list_tasks(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<TasksQuery>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    s.control.get(&id).await?;
    let state = match q.state.as_deref() {
        None => None,
        Some(raw) => Some(TaskState::parse(raw).ok_or_else(|| {
            ApiError::invalid("state must be pending, running, committed or failed")
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1-{MAX_LIST}")));
    }
    let store = task_store(&s)?;
    let tasks = store
        .list(&id, state, limit)
        .await
        .map_err(|e| unavailable(&e))?;
    let counts = store.counts(&id).await.map_err(|e| unavailable(&e))?;
    let tasks: Vec<_> = tasks.iter().map(|t| t.view()).collect();
    ok(
        StatusCode::OK,
        json!({
            "tenant": id.as_str(),
            "state": state.map(TaskState::as_str),
            "counts": counts,
            "tasks": tasks,
        }),
    )
}

/// `GET /admin/tenants/{id}/tasks/counts`: `{pending, running, committed,
/// failed, total}`.
pub(super) async fn task_counts(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    s.control.get(&id).await?;
    let counts = task_store(&s)?
        .counts(&id)
        .await
        .map_err(|e| unavailable(&e))?;
    ok(
        StatusCode::OK,
        json!({ "tenant": id.as_str(), "counts": counts }),
    )
}

/// `GET /admin/tenants/{id}/tasks/{task}`: one task; 404 if the tenant
/// has no such task.
pub(super) async fn get_task(
    State(s): State<AdminState>,
    caller: Caller,
    Path((id, task)): Path<(String, String)>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    s.control.get(&id).await?;
    let task_id = task_id(&task)?;
    let found = task_store(&s)?
        .get(&id, task_id)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| ApiError::not_found(format!("tenant {id} has no task {task_id}")))?;
    ok(StatusCode::OK, json!({ "task": found.view() }))
}

/// `POST /admin/tenants/{id}/tasks/{task}/takeover`: expire a running
/// task's lock now, so the next claim on any host runs it again with a new
/// fence (its current runner is fenced out). 404 if it is not a running
/// task of the tenant.
pub(super) async fn takeover_task(
    State(s): State<AdminState>,
    caller: Caller,
    Path((id, task)): Path<(String, String)>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    s.control.get(&id).await?;
    let task_id = task_id(&task)?;
    let taken = task_store(&s)?
        .takeover(&id, task_id)
        .await
        .map_err(|e| unavailable(&e))?;
    if !taken {
        return Err(ApiError::not_found(format!(
            "tenant {id} has no running task {task_id}"
        )));
    }
    ok(StatusCode::OK, json!({ "taken_over": task_id.to_string() }))
}
