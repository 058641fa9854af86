//! Errors: [`LiveError`] (what the client sees) and [`Error`] (what a host
//! import can fail with).

use serde::{Deserialize, Serialize};

/// Standard error codes, as svelte-realtime clients know them.
///
/// [`LiveError::new`] accepts any string; these constants just avoid typos.
pub mod codes {
    /// The request is malformed (not a problem with one argument).
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// No such handler, or the thing asked for does not exist.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// The arguments are wrong; the error carries issues.
    pub const VALIDATION: &str = "VALIDATION";
    /// Too many requests; the error carries a retry hint.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// The caller must log in first.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The caller may not do this.
    pub const FORBIDDEN: &str = "FORBIDDEN";
    /// A conflicting operation is in flight.
    pub const CONFLICT: &str = "CONFLICT";
    /// A distributed lock was not free in time.
    pub const LOCK_TIMEOUT: &str = "LOCK_TIMEOUT";
    /// An argument or stored value is larger than allowed.
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
    /// A quota of the tenant's plan is used up.
    pub const RESOURCE_EXHAUSTED: &str = "RESOURCE_EXHAUSTED";
    /// Something did not answer in time.
    pub const TIMEOUT: &str = "TIMEOUT";
    /// A backend is down; retry later.
    pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
    /// Anything else. Clients show a generic message.
    pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";
}

/// One problem with the arguments of a call, for [`codes::VALIDATION`] errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationIssue {
    /// Where the problem is, e.g. `args[1]` or `args[0].text`.
    pub path: String,
    /// What is wrong, for humans.
    pub message: String,
}

impl ValidationIssue {
    /// An issue at `path` (e.g. `"args[1]"`) with a human-readable message.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// An error the client sees verbatim: svelte-realtime's `LiveError`.
///
/// Return it from a handler or hook. Everything else that goes wrong in a
/// plugin (a panic, a trap, a timeout) reaches the client as
/// `INTERNAL_ERROR` with the message hidden, so put in a `LiveError` only what
/// the client may read.
///
/// ```
/// use tenantry_sdk::{LiveError, ValidationIssue};
///
/// let e = LiveError::new("PAYMENT_REQUIRED", "upgrade your plan");
/// assert_eq!(e.code, "PAYMENT_REQUIRED");
/// let e = LiveError::validation(vec![ValidationIssue::new("args[1]", "must not be empty")]);
/// assert_eq!(e.code, "VALIDATION");
/// let e = LiveError::rate_limited(1_500);
/// assert_eq!(e.retry_after_ms, Some(1_500));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct LiveError {
    /// Machine-readable code, e.g. `FORBIDDEN` (see [`codes`]).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Validation issues, for `VALIDATION` errors.
    pub issues: Option<Vec<ValidationIssue>>,
    /// How long the client should wait before retrying, for `RATE_LIMITED`.
    pub retry_after_ms: Option<u64>,
}

impl LiveError {
    /// An error with any code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            issues: None,
            retry_after_ms: None,
        }
    }

    /// `FORBIDDEN`: the caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(codes::FORBIDDEN, message)
    }

    /// `UNAUTHENTICATED`: the caller must log in first. From `authenticate`
    /// it closes the connection with 4401 (the client stops retrying).
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(codes::UNAUTHENTICATED, message)
    }

    /// `NOT_FOUND`: no such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(codes::NOT_FOUND, message)
    }

    /// `INVALID_REQUEST`: the request as a whole is malformed.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_REQUEST, message)
    }

    /// `VALIDATION` with the message `Validation failed` and these issues.
    pub fn validation(issues: Vec<ValidationIssue>) -> Self {
        Self::new(codes::VALIDATION, "Validation failed").with_issues(issues)
    }

    /// `RATE_LIMITED` with the message `Too many requests`: the client
    /// should retry after `retry_after_ms` milliseconds.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        Self::new(codes::RATE_LIMITED, "Too many requests").with_retry_after_ms(retry_after_ms)
    }

    /// `CONFLICT`: a conflicting operation is in flight.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(codes::CONFLICT, message)
    }

    /// `PAYLOAD_TOO_LARGE`.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(codes::PAYLOAD_TOO_LARGE, message)
    }

    /// `TIMEOUT`.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(codes::TIMEOUT, message)
    }

    /// `SERVICE_UNAVAILABLE`: retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(codes::SERVICE_UNAVAILABLE, message)
    }

    /// `INTERNAL_ERROR`. Unlike a panic, the message is shown to the client.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL_ERROR, message)
    }

    /// The same error with these validation issues attached.
    pub fn with_issues(mut self, issues: Vec<ValidationIssue>) -> Self {
        self.issues = Some(issues);
        self
    }

    /// The same error with a retry hint attached.
    pub fn with_retry_after_ms(mut self, retry_after_ms: u64) -> Self {
        self.retry_after_ms = Some(retry_after_ms);
        self
    }
}

/// What an SDK operation ([`crate::Kv`], [`crate::publish`]) can fail with.
///
/// The first eight variants are the host's `host-error`: every host import
/// fails the same way, whatever the backend. The last two are the SDK's own
/// (turning a value into JSON or back). Use `?` in a handler: it converts into
/// a [`LiveError`] with a standard code (see the `From` impl).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The operation is not allowed for this tenant or on this name.
    #[error("access denied")]
    AccessDenied,
    /// A quota of the tenant's plan is used up.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// The backend did not answer in time.
    #[error("backend timeout")]
    Timeout,
    /// The backend is down or its circuit breaker is open; retry later.
    #[error("backend unavailable")]
    Unavailable,
    /// An argument is larger than the host accepts.
    #[error("too large")]
    TooLarge,
    /// An argument is malformed (bad topic, bad JSON, value not an integer...).
    #[error("invalid argument")]
    Invalid,
    /// A rate of the tenant's plan is exceeded (e.g. publishes per second);
    /// the same operation succeeds after `retry_after_ms`.
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited {
        /// When to retry, in milliseconds.
        retry_after_ms: u64,
    },
    /// Anything else the host reported, with a message for logs.
    #[error("host error: {0}")]
    Other(String),
    /// A value could not be turned into JSON.
    #[error("cannot encode value as JSON: {0}")]
    Encode(String),
    /// A stored value is not JSON of the expected type.
    #[error("cannot decode stored value: {0}")]
    Decode(String),
}

impl From<Error> for LiveError {
    /// The standard mapping: rate-limited → `RATE_LIMITED` with
    /// `retryAfter`, quota-exceeded → `RESOURCE_EXHAUSTED`,
    /// too-large → `PAYLOAD_TOO_LARGE`, timeout → `TIMEOUT`, unavailable →
    /// `SERVICE_UNAVAILABLE`, access-denied → `FORBIDDEN`, invalid →
    /// `INVALID_REQUEST`, anything else → `INTERNAL_ERROR` (whose message
    /// does not repeat host or codec details).
    fn from(e: Error) -> Self {
        match e {
            Error::AccessDenied => LiveError::forbidden("Access denied"),
            Error::QuotaExceeded => LiveError::new(codes::RESOURCE_EXHAUSTED, "Quota exceeded"),
            Error::Timeout => LiveError::timeout("Backend timeout"),
            Error::Unavailable => LiveError::unavailable("Service unavailable"),
            Error::TooLarge => LiveError::payload_too_large("Payload too large"),
            Error::Invalid => LiveError::invalid_request("Invalid request"),
            Error::RateLimited { retry_after_ms } => LiveError::rate_limited(retry_after_ms),
            Error::Other(_) | Error::Encode(_) | Error::Decode(_) => {
                LiveError::internal("Internal server error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_errors_map_to_standard_codes() {
        let cases = [
            (Error::QuotaExceeded, "RESOURCE_EXHAUSTED"),
            (Error::TooLarge, "PAYLOAD_TOO_LARGE"),
            (Error::Timeout, "TIMEOUT"),
            (Error::Unavailable, "SERVICE_UNAVAILABLE"),
            (Error::AccessDenied, "FORBIDDEN"),
            (Error::Invalid, "INVALID_REQUEST"),
            (Error::RateLimited { retry_after_ms: 5 }, "RATE_LIMITED"),
            (
                Error::Other("redis: connection reset".into()),
                "INTERNAL_ERROR",
            ),
            (Error::Encode("x".into()), "INTERNAL_ERROR"),
            (Error::Decode("x".into()), "INTERNAL_ERROR"),
        ];
        for (err, code) in cases {
            assert_eq!(LiveError::from(err).code, code);
        }
    }

    #[test]
    fn other_error_message_is_not_leaked() {
        let e = LiveError::from(Error::Other("redis at 10.0.0.7 refused".into()));
        assert!(!e.message.contains("10.0.0.7"));
    }

    #[test]
    fn question_mark_converts_host_errors() {
        fn handler() -> Result<(), LiveError> {
            Err(Error::QuotaExceeded)?;
            Ok(())
        }
        assert_eq!(handler().unwrap_err().code, "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn helpers_set_code_and_extras() {
        assert_eq!(LiveError::forbidden("no").code, "FORBIDDEN");
        assert_eq!(LiveError::unauthenticated("who").code, "UNAUTHENTICATED");
        assert_eq!(LiveError::not_found("gone").code, "NOT_FOUND");
        assert_eq!(LiveError::internal("x").code, "INTERNAL_ERROR");
        let v = LiveError::validation(vec![ValidationIssue::new("args[0]", "bad")]);
        assert_eq!(v.code, "VALIDATION");
        assert_eq!(v.issues.as_ref().map(Vec::len), Some(1));
        let r = LiveError::rate_limited(250);
        assert_eq!(
            (r.code.as_str(), r.retry_after_ms),
            ("RATE_LIMITED", Some(250))
        );
        assert_eq!(LiveError::new("X", "y").to_string(), "X: y");
    }
}
