//! The admin API: JSON over HTTP on its own listener (`--admin-listen`),
//! for provisioning tenants and deploying their plugins while the host
//! serves. The public contract is `docs/admin-api.md`; every change goes
//! through [`crate::control`].
//!
//! Modules: [`auth`] (operator token and deploy keys), [`error`] (the one
//! error shape and the request id).

pub mod auth;
pub mod error;
mod tasks;

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::catalog::TenantRecord;
use crate::control::{Control, ControlError};
use crate::plan::PlanOverrides;
use crate::tenant::TenantId;
use auth::Caller;
use error::{ApiError, REQUEST_ID};

/// State of the admin routes. Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    control: Arc<Control>,
    token: Arc<str>,
    /// With it, `/metrics` needs `Authorization: Bearer <token>` (this one
    /// or the operator's).
    metrics_token: Option<Arc<str>>,
    /// What `/readyz` checks.
    readiness: crate::health::Readiness,
}

impl AdminState {
    /// Admin routes changing `control`, with operator token `token`.
    pub fn new(control: Arc<Control>, token: &str) -> Self {
        Self {
            readiness: crate::health::Readiness::new(control.backends().breakers.clone()),
            control,
            token: Arc::from(token),
            metrics_token: None,
        }
    }

    /// The same state with `/readyz` checking `readiness`.
    pub fn with_readiness(mut self, readiness: crate::health::Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// The same state with `/metrics` protected by `token` (see
    /// [`METRICS_TOKEN_ENV`]).
    pub fn with_metrics_token(mut self, token: Option<&str>) -> Self {
        self.metrics_token = token.map(Arc::from);
        self
    }
}

type ApiResult = Result<Response, ApiError>;

/// The admin router (`/healthz`, `/metrics`, `/admin/...`).
pub fn router(state: AdminState) -> Router {
    let upload_limit = state.control.settings().max_upload_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move {
                crate::health::readyz(&s.readiness).await
            }),
        )
        .route("/metrics", get(metrics))
        .route("/admin/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/admin/tenants/{id}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route("/admin/tenants/{id}/publish-rates", get(publish_rates))
        .route("/admin/tenants/{id}/usage", get(usage))
        .route("/admin/tenants/{id}/jobs", get(list_jobs))
        .route("/admin/tenants/{id}/jobs/{job}/retry", post(retry_job))
        .route("/admin/tenants/{id}/tasks", get(tasks::list_tasks))
        .route("/admin/tenants/{id}/tasks/counts", get(tasks::task_counts))
        .route("/admin/tenants/{id}/tasks/{task}", get(tasks::get_task))
        .route(
            "/admin/tenants/{id}/tasks/{task}/takeover",
            post(tasks::takeover_task),
        )
        .route("/admin/tenants/{id}/suspend", post(suspend))
        .route("/admin/tenants/{id}/resume", post(resume))
        .route("/admin/tenants/{id}/keys", post(create_key).get(list_keys))
        .route("/admin/tenants/{id}/keys/{key_id}", delete(delete_key))
        .route(
            "/admin/tenants/{id}/plugins",
            post(upload)
                .get(list_versions)
                // One byte over the cap, so the handler sees the overflow
                // and answers in the API's error shape.
                .layer(DefaultBodyLimit::max(upload_limit.saturating_add(1))),
        )
        .route(
            "/admin/tenants/{id}/plugins/{version}",
            delete(delete_version),
        )
        .route(
            "/admin/tenants/{id}/plugins/{version}/activate",
            post(activate),
        )
        .route("/admin/tenants/{id}/rollback", post(rollback))
        .fallback(|| async { ApiError::not_found("no such admin route") })
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Serve the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Give every request an id (the client's sane `x-request-id`, else a
/// fresh UUID): in a span around its handling, in error bodies, and in the
/// response's `x-request-id` header.
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "admin",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "admin request"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Parse an optional JSON body: empty means `None`.
fn optional_json<T: DeserializeOwned>(body: &Bytes) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

fn required_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    optional_json(body)?.ok_or_else(|| ApiError::invalid("a JSON body is required"))
}

/// RFC 3339 UTC time of `ms` milliseconds since the Unix epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn tenant_view(rec: &TenantRecord) -> Value {
    json!({
        "id": rec.id,
        "plan": rec.plan,
        "limits": rec.limits,
        "suspended": rec.suspended,
        "suspend_reason": rec.suspend_reason,
        "created_at": rfc3339(rec.created_at_ms),
        "active_version": rec.active,
        "canary": rec.canary.as_ref().map(|c| json!({"version": c.version, "percent": c.percent})),
        "versions": rec.versions.len(),
    })
}

fn version_view(rec: &TenantRecord, version: &str) -> Value {
    let Some(v) = rec.version(version) else {
        return Value::Null;
    };
    json!({
        "version": v.version,
        "sha256": v.sha256,
        "size": v.size,
        "uploaded_at": rfc3339(v.uploaded_at_ms),
        "uploaded_by": v.uploaded_by,
        "world": v.world,
        "active": rec.active.as_deref() == Some(v.version.as_str()),
        "canary": rec.canary.as_ref().is_some_and(|c| c.version == v.version),
    })
}

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
    plan: Option<String>,
    #[serde(default)]
    limits: PlanOverrides,
    #[serde(default)]
    suspended: bool,
}

async fn create_tenant(State(s): State<AdminState>, caller: Caller, body: Bytes) -> ApiResult {
    caller.operator_only()?;
    let req: CreateTenant = required_json(&body)?;
    let id = tenant_id(&req.id)?;
    let rec = s
        .control
        .create_tenant(id, req.plan, req.limits, req.suspended)
        .await?;
    ok(StatusCode::CREATED, tenant_view(&rec))
}

async fn list_tenants(State(s): State<AdminState>, caller: Caller) -> ApiResult {
    caller.operator_only()?;
    let tenants: Vec<Value> = s.control.list().await?.iter().map(tenant_view).collect();
    ok(StatusCode::OK, json!({ "tenants": tenants }))
}

async fn get_tenant(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    ok(StatusCode::OK, tenant_view(&s.control.get(&id).await?))
}

/// The environment variable holding the token `/metrics` asks for (unset:
/// `/metrics` is open to whoever reaches the admin listener).
pub const METRICS_TOKEN_ENV: &str = "TENANTRY_METRICS_TOKEN";

/// `GET /metrics`: the Prometheus text; with a metrics token, only for a
/// bearer of it or of the operator token (401 otherwise).
async fn metrics(State(s): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(want) = &s.metrics_token {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !(auth::same_secret(given, want) || auth::same_secret(given, &s.token)) {
            return ApiError::unauthorized("/metrics needs the metrics token").into_response();
        }
    }
    crate::server::metrics_text().await.into_response()
}

/// `GET /admin/tenants/{id}/publish-rates`: the tenant's busiest topics
/// over the whole fleet (the seeds' `topPublishers`).
async fn publish_rates(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    s.control.get(&id).await?;
    let top = s
        .control
        .backends()
        .publish_rates
        .board()
        .merged(&id)
        .await
        .map_err(|e| ControlError::Backend(format!("publish rates unavailable: {e}")))?;
    ok(
        StatusCode::OK,
        json!({ "tenant": id.as_str(), "topPublishers": top }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// Minutes of the window (1-60, default 60).
    window: Option<usize>,
}

/// `GET /admin/tenants/{id}/usage[?window=MINUTES]`: what the tenant used
/// on this host — open connections and KV holdings now, and calls,
/// errors, CPU, bytes in/out and SQL time in the last `window` minutes and
/// since the host started. Open to the operator and the tenant's deploy
/// key.
async fn usage(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<UsageQuery>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    s.control.get(&id).await?;
    let minutes = q.window.unwrap_or(crate::usage::WINDOW_MINUTES);
    if !(1..=crate::usage::WINDOW_MINUTES).contains(&minutes) {
        return Err(ApiError::invalid(format!(
            "window must be 1-{} minutes",
            crate::usage::WINDOW_MINUTES
        )));
    }
    let (kv_keys, kv_bytes) = s
        .control
        .backends()
        .kv
        .stored(&id)
        .await
        .map_err(|e| ControlError::Backend(format!("KV usage unavailable: {e}")))?;
    let live = s.control.registry().get(&id);
    let (connections, window, totals) = match &live {
        Some(t) => (
            t.quota.connections(),
            t.quota.usage.window(minutes),
            t.quota.usage.totals(),
        ),
        None => (0, Default::default(), Default::default()),
    };
    ok(
        StatusCode::OK,
        json!({
            "tenant": id.as_str(),
            "connections": connections,
            "kv": {"keys": kv_keys, "bytes": kv_bytes},
            "window": {"minutes": minutes, "usage": window},
            "since_start": totals,
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    /// `dead` (the default), `queued` or `running`.
    state: Option<String>,
    /// Most jobs listed (1-1000, default 100).
    limit: Option<i64>,
}

/// The job queue, or 503 on a host without `[postgres]`.
fn job_store(
    s: &AdminState,
) -> Result<std::sync::Arc<crate::backend::postgres::jobs::JobStore>, ApiError> {
    s.control.backends().jobs.clone().ok_or_else(|| {
        ControlError::Backend("this host has no job queue (it needs [postgres])".into()).into()
    })
}

/// `GET /admin/tenants/{id}/jobs?state=dead|queued|running[&limit=N]`:
/// the tenant's jobs in that state, oldest first. Open to the operator
/// and the tenant's deploy key.
async fn list_jobs(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<JobsQuery>,
) -> ApiResult {
    use crate::backend::postgres::jobs::{JobState, MAX_LIST};
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    s.control.get(&id).await?;
    let state = JobState::parse(q.state.as_deref().unwrap_or("dead"))
        .ok_or_else(|| ApiError::invalid("state must be dead, queued or running"))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1-{MAX_LIST}")));
    }
    let jobs = job_store(&s)?
        .list(&id, state, limit)
        .await
        .map_err(|e| ControlError::Backend(format!("job queue unavailable: {e}")))?;
    ok(
        StatusCode::OK,
        json!({ "tenant": id.as_str(), "state": state.as_str(), "jobs": jobs }),
    )
}

/// `POST /admin/tenants/{id}/jobs/{job}/retry`: queue a dead job again,
/// due now, with its attempts reset. 404 if it is not a dead job of the
/// tenant. Open to the operator and the tenant's deploy key.
async fn retry_job(
    State(s): State<AdminState>,
    caller: Caller,
    Path((id, job)): Path<(String, String)>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    s.control.get(&id).await?;
    let job_id: i64 = job
        .parse()
        .map_err(|_| ApiError::invalid(format!("job id {job:?} is not a number")))?;
    let retried = job_store(&s)?
        .retry(&id, job_id)
        .await
        .map_err(|e| ControlError::Backend(format!("job queue unavailable: {e}")))?;
    if !retried {
        return Err(ApiError::not_found(format!(
            "tenant {id} has no dead job {job_id}"
        )));
    }
    ok(StatusCode::OK, json!({ "retried": job_id.to_string() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateTenant {
    plan: Option<String>,
    limits: Option<PlanOverrides>,
}

async fn update_tenant(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.operator_only()?;
    let id = tenant_id(&id)?;
    let req: UpdateTenant = required_json(&body)?;
    let rec = s.control.update_tenant(&id, req.plan, req.limits).await?;
    ok(StatusCode::OK, tenant_view(&rec))
}

async fn delete_tenant(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    caller.operator_only()?;
    let id = tenant_id(&id)?;
    s.control.delete_tenant(&id).await?;
    ok(StatusCode::OK, json!({ "deleted": id }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Suspend {
    reason: Option<String>,
}

async fn suspend(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.operator_only()?;
    let id = tenant_id(&id)?;
    let req: Option<Suspend> = optional_json(&body)?;
    let rec = s.control.suspend(&id, req.and_then(|r| r.reason)).await?;
    ok(StatusCode::OK, tenant_view(&rec))
}

async fn resume(State(s): State<AdminState>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    caller.operator_only()?;
    let id = tenant_id(&id)?;
    ok(StatusCode::OK, tenant_view(&s.control.resume(&id).await?))
}

async fn create_key(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    caller.operator_only()?;
    let id = tenant_id(&id)?;
    let key = s.control.create_key(&id).await?;
    ok(
        StatusCode::CREATED,
        json!({
            "id": key.record.id,
            "key": key.secret,
            "tenant": id,
            "created_at": rfc3339(key.record.created_at_ms),
        }),
    )
}

async fn list_keys(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    caller.operator_only()?;
    let id = tenant_id(&id)?;
    let rec = s.control.get(&id).await?;
    let keys: Vec<Value> = rec
        .keys
        .iter()
        .map(|k| json!({"id": k.id, "created_at": rfc3339(k.created_at_ms)}))
        .collect();
    ok(StatusCode::OK, json!({ "keys": keys }))
}

async fn delete_key(
    State(s): State<AdminState>,
    caller: Caller,
    Path((id, key_id)): Path<(String, String)>,
) -> ApiResult {
    caller.operator_only()?;
    let id = tenant_id(&id)?;
    s.control.delete_key(&id, &key_id).await?;
    ok(StatusCode::OK, json!({ "deleted": key_id }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    #[serde(default)]
    activate: bool,
}

async fn upload(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    let actor = caller.for_tenant(&id)?;
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = s.control.settings().max_upload_bytes;
    let body = match body {
        Ok(b) if b.len() > limit => None,
        Ok(b) => Some(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => None,
        Err(e) => {
            return Err(ApiError::invalid(format!(
                "cannot read the upload: {}",
                e.body_text()
            )));
        }
    };
    let Some(body) = body else {
        return Err(ApiError::too_large(format!(
            "the plugin is larger than the upload limit of {limit} bytes"
        )));
    };
    let up = s.control.upload(&id, &body, &actor, query.activate).await?;
    let status = if up.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, version_view(&up.tenant, &up.version.version))
}

async fn list_versions(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    let rec = s.control.get(&id).await?;
    let versions: Vec<Value> = rec
        .versions
        .iter()
        .map(|v| version_view(&rec, &v.version))
        .collect();
    ok(
        StatusCode::OK,
        json!({
            "active": rec.active,
            "canary": rec.canary.as_ref().map(|c| json!({"version": c.version, "percent": c.percent})),
            "versions": versions,
        }),
    )
}

async fn delete_version(
    State(s): State<AdminState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    s.control.delete_version(&id, &version).await?;
    ok(StatusCode::OK, json!({ "deleted": version }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Activate {
    canary_percent: Option<u8>,
}

async fn activate(
    State(s): State<AdminState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    let req: Option<Activate> = optional_json(&body)?;
    let rec = s
        .control
        .activate(&id, &version, req.and_then(|r| r.canary_percent))
        .await?;
    ok(StatusCode::OK, tenant_view(&rec))
}

async fn rollback(
    State(s): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let id = tenant_id(&id)?;
    caller.for_tenant(&id)?;
    ok(StatusCode::OK, tenant_view(&s.control.rollback(&id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_453_261_999), "2026-11-23T17:01:01Z");
        assert_eq!(rfc3339(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }
}
