//! Errors of the wire protocol: what a malformed client frame decodes to
//! ([`ProtocolError`]) and the body of an RPC error answer ([`RpcErrorBody`]).

use super::frames::Ref;
use crate::runtime::types::{CallError, LiveError};

/// The error codes this module and the host put on the wire.
///
/// Codes are plain strings on the wire; plugins may use any other code in
/// their own `live-error`s (they are passed through verbatim).
pub mod codes {
    /// The frame or call is malformed (bad JSON, bad path, `args` not an array, ...).
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// The frame (or a part of it) is larger than the protocol allows.
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
    /// A topic breaks the topic rules, or is a reserved `__` topic.
    pub const INVALID_TOPIC: &str = "INVALID_TOPIC";
    /// An event name cannot be put on the wire.
    pub const INVALID_EVENT: &str = "INVALID_EVENT";
    /// No handler is registered under the RPC path.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// The arguments did not validate (the error carries `issues`).
    pub const VALIDATION: &str = "VALIDATION";
    /// Anything that is not a plugin `live-error`; the message is hidden.
    pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";
    /// The call ran past its CPU deadline.
    pub const TIMEOUT: &str = "TIMEOUT";
    /// The call exceeded its memory (or table) limit.
    pub const RESOURCE_EXHAUSTED: &str = "RESOURCE_EXHAUSTED";
    /// The host or tenant has too many calls in flight; retry later.
    pub const OVERLOADED: &str = "OVERLOADED";
    /// The tenant's message rate is exceeded; the error carries `retryAfter`.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// Subscribe denial: the gate refused the topic.
    pub const FORBIDDEN: &str = "FORBIDDEN";
    /// Subscribe denial: the gate needs an authenticated user.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
}

/// The message the client sees for every error that is not a plugin `live-error`.
pub const INTERNAL_ERROR_MESSAGE: &str = "Internal server error";

/// Why a client frame could not be decoded (or is refused by the protocol).
///
/// When the frame was an RPC call whose id could be read, `rpc_id` holds it so
/// the server answers on `__rpc` (see [`super::rpc_error`]); otherwise the
/// server answers with [`super::protocol_error`] (or nothing, for
/// fire-and-forget calls, see `docs/protocol.md`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// Machine-readable code, one of [`codes`].
    pub code: &'static str,
    /// Human-readable reason, safe to show to the client.
    pub message: String,
    /// The correlation id of the RPC call this error answers, if known.
    pub rpc_id: Option<Ref>,
}

impl ProtocolError {
    /// An error with no RPC id.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            rpc_id: None,
        }
    }

    /// `INVALID_REQUEST` with no RPC id.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_REQUEST, message)
    }

    /// The same error, answering the RPC call `id`.
    pub fn with_rpc_id(mut self, id: Option<Ref>) -> Self {
        self.rpc_id = id;
        self
    }
}

/// The error half of an RPC answer: `{"id","ok":false,"code","error","issues"?,"retryAfter"?}`.
/// It is the same thing as a plugin's [`LiveError`] (wire keys: `code`,
/// `error` for the message, `issues`, `retryAfter`), so it is that type.
pub type RpcErrorBody = LiveError;

impl LiveError {
    /// `INTERNAL_ERROR` / `Internal server error`: what the client sees for any
    /// failure that is not a plugin `live-error`.
    pub fn internal() -> Self {
        Self::new(codes::INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE)
    }
}

impl From<&ProtocolError> for RpcErrorBody {
    fn from(e: &ProtocolError) -> Self {
        Self::new(e.code, e.message.clone())
    }
}

/// The client-visible form of a failed plugin call: live errors verbatim,
/// `TIMEOUT` and `RESOURCE_EXHAUSTED` with fixed messages, everything else
/// `INTERNAL_ERROR` with the message hidden.
impl From<&CallError> for RpcErrorBody {
    fn from(e: &CallError) -> Self {
        match e {
            CallError::Live(live) => live.clone(),
            CallError::Timeout => Self::new(codes::TIMEOUT, "Call exceeded its time limit"),
            CallError::ResourceExhausted(_) => Self::new(
                codes::RESOURCE_EXHAUSTED,
                "Call exceeded its resource limit",
            ),
            CallError::Overloaded => Self::new(
                codes::OVERLOADED,
                "Too many calls in flight for this tenant",
            ),
            CallError::PayloadTooLarge(_) => {
                Self::new(codes::PAYLOAD_TOO_LARGE, "Result exceeds the size limit")
            }
            CallError::FaultBudget(retry_after) => Self {
                retry_after_ms: Some(
                    u64::try_from(retry_after.as_nanos().div_ceil(1_000_000))
                        .unwrap_or(u64::MAX)
                        .max(1),
                ),
                ..Self::new(
                    codes::RATE_LIMITED,
                    "This tenant's calls failed too often; retry later",
                )
            },
            CallError::Trap(_) | CallError::Host(_) => Self::internal(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_errors_hide_internal_messages() {
        let body = RpcErrorBody::from(&CallError::Trap("panicked at secret.rs".into()));
        assert_eq!(
            body,
            RpcErrorBody::new("INTERNAL_ERROR", "Internal server error")
        );
        let body = RpcErrorBody::from(&CallError::Host("pool exhausted".into()));
        assert_eq!(body.code, "INTERNAL_ERROR");
        assert!(!body.message.contains("pool"));
        let body = RpcErrorBody::from(&CallError::ResourceExhausted("64 MiB".into()));
        assert_eq!(body.code, "RESOURCE_EXHAUSTED");
        assert_eq!(RpcErrorBody::from(&CallError::Timeout).code, "TIMEOUT");
    }

    #[test]
    fn live_errors_pass_through() {
        let mut live = LiveError::new("RATE_LIMITED", "slow down");
        live.retry_after_ms = Some(250);
        let body = RpcErrorBody::from(&CallError::Live(live));
        assert_eq!(body.code, "RATE_LIMITED");
        assert_eq!(body.message, "slow down");
        assert_eq!(body.retry_after_ms, Some(250));
    }
}
