//! The one JSON error shape of the admin API, and the request id every
//! response and log line carries.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::control::ControlError;

tokio::task_local! {
    /// The id of the admin request being served.
    pub(crate) static REQUEST_ID: String;
}

/// An admin API error: HTTP status, machine code, message and, for
/// rejected uploads, the reason and details.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    reason: Option<&'static str>,
    details: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            reason: None,
            details: Vec::new(),
        }
    }

    /// 400 `INVALID_REQUEST`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }

    /// 401 `UNAUTHORIZED`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// 403 `FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 413 `PAYLOAD_TOO_LARGE`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", message)
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let message = e.to_string();
        match e {
            ControlError::NotFound(_) => Self::not_found(message),
            ControlError::Conflict(_) => Self::new(StatusCode::CONFLICT, "CONFLICT", message),
            ControlError::Invalid(_) => Self::invalid(message),
            ControlError::TooLarge { .. } => Self::too_large(message),
            ControlError::Plugin(r) => Self {
                reason: Some(r.reason()),
                details: r.details(),
                ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_PLUGIN", message)
            },
            ControlError::Store(_) | ControlError::Backend(_) => {
                tracing::error!(error = %message, "admin request failed in a backend");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
            }
            ControlError::Busy(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message)
            }
            ControlError::Load { .. } => {
                tracing::error!(error = %message, "admin request failed to load a plugin version");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        let mut error = json!({
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        });
        if let Some(reason) = self.reason {
            error["reason"] = json!(reason);
            error["details"] = json!(self.details);
        }
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "admin request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), code = self.code, message = %self.message, "admin request refused");
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}
