//! Plain Rust types crossing the host ↔ plugin boundary. The server and the
//! rest of the host use these; only [`crate::runtime`] sees the generated
//! WIT bindings.

use serde::Serialize;

/// A user as decided by the plugin's `authenticate` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Stable user id.
    pub id: String,
    /// Extra attributes, a JSON object as text.
    pub attributes: String,
}

/// Facts about one call, handed to the plugin.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The connection's user, if any.
    pub user: Option<User>,
    /// The connection (session) id.
    pub connection_id: String,
    /// This request's id.
    pub request_id: String,
    /// The connection's outbound queue (not shown to the plugin): imports
    /// that attach the connection to host channels (broadcast groups) use
    /// it. `None` where there is no live connection (tools, tests).
    pub outbound: Option<crate::outbound::Sender>,
}

/// The connection a hook serves, as its host imports see it.
#[derive(Debug, Clone)]
pub struct CallerConnection {
    /// The connection (session) id.
    pub id: String,
    /// Its outbound queue, if it is live.
    pub outbound: Option<crate::outbound::Sender>,
}

/// One validation problem in a call's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationIssue {
    /// Where the problem is.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// An error meant for the client, with a machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveError {
    /// Code such as `FORBIDDEN` or `VALIDATION`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Validation issues, for `VALIDATION`.
    pub issues: Option<Vec<ValidationIssue>>,
    /// Retry hint in milliseconds, for `RATE_LIMITED`.
    pub retry_after_ms: Option<u64>,
}

impl LiveError {
    /// A live error with just a code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            issues: None,
            retry_after_ms: None,
        }
    }
}

/// The HTTP upgrade request of a new connection, for `authenticate`.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Cookies from the `cookie` header.
    pub cookies: Vec<(String, String)>,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    /// Peer address `ip:port`.
    pub remote_address: String,
    /// Request path.
    pub path: String,
}

/// Why a call into a plugin did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin returned a live error: shown to the client as is.
    #[error("{}: {}", .0.code, .0.message)]
    Live(LiveError),
    /// The call ran past its CPU deadline (client code `TIMEOUT`).
    #[error("plugin call exceeded its deadline")]
    Timeout,
    /// The call exceeded a memory or table limit (client code `RESOURCE_EXHAUSTED`).
    #[error("plugin exceeded a resource limit: {0}")]
    ResourceExhausted(String),
    /// The tenant already runs as many calls as its plan allows
    /// (`max_concurrent_calls`), or the process's instance pool is full
    /// (`max_instances`): client code `OVERLOADED`.
    #[error("the tenant's concurrent call limit is reached")]
    Overloaded,
    /// The result is larger than the plan's `max_result_bytes`: client
    /// code `PAYLOAD_TOO_LARGE`.
    #[error("plugin result too large: {0}")]
    PayloadTooLarge(String),
    /// The tenant's plugin faulted too often lately (its plan's
    /// `faulted_calls_per_sec` / `faulted_call_burst`): the call was refused
    /// before it started; client code `RATE_LIMITED` with `retryAfter`.
    #[error("the tenant's plugin faulted too often; calls are refused for {0:?}")]
    FaultBudget(std::time::Duration),
    /// The plugin trapped (panic, unreachable, bad result): client sees
    /// `INTERNAL_ERROR` with the message hidden.
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The host failed to run the plugin (instantiation, pool exhausted...):
    /// client sees `INTERNAL_ERROR`.
    #[error("host error running plugin: {0}")]
    Host(String),
}

/// Most [`Effect`]s one hook may ask for; more fail with `quota-exceeded`.
pub const MAX_EFFECTS_PER_CALL: usize = 16;

/// A change to its own connection a hook asks for (through a host import)
/// that the host applies once the hook has returned successfully; a hook
/// that fails or traps changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Make the connection present on `topic` with JSON `data`.
    PresenceJoin {
        /// The topic.
        topic: String,
        /// What others see of the user (JSON).
        data: String,
    },
    /// Make the connection leave `topic`'s presence.
    PresenceLeave {
        /// The topic.
        topic: String,
    },
}

/// What changed, in a [`PresenceEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceChange {
    /// The user is now present on the topic.
    UserOnline,
    /// The user is no longer present on the topic.
    UserOffline,
    /// The topic now has someone present.
    TopicOccupied,
    /// The topic has nobody present any more.
    TopicVacated,
}

/// One event for a plugin's `on-presence` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// What changed.
    pub change: PresenceChange,
    /// The topic.
    pub topic: String,
    /// The user's key, for the user events.
    pub user: Option<String>,
}
