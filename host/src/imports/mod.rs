//! The host side of each WIT import, one file per interface. Every function
//! acts on the tenant recorded in the store's [`Scope`](crate::runtime::Scope),
//! never on anything the guest names, and refuses oversized or malformed input
//! before it reaches a backend.

mod groups;
mod idempotency;
mod jobs;
mod kv;
mod lock;
mod log;
mod notify;
mod presence;
mod pubsub;
mod ratelimit;
mod replay;
mod sql;
mod tasks;

pub use log::{LogLevel, emit_plugin_log};
pub(crate) use pubsub::publish_as;

use crate::backend::BackendError;
use crate::runtime::HostState;
use crate::runtime::wit::types::HostError;

/// Longest KV key, in bytes.
pub const MAX_KV_KEY_BYTES: usize = 1024;
/// Largest KV value, in bytes.
pub const MAX_KV_VALUE_BYTES: usize = 1 << 20;
/// Longest log message kept; longer ones are truncated.
pub const MAX_LOG_BYTES: usize = 4096;

impl crate::runtime::wit::types::Host for HostState {}

impl From<BackendError> for HostError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::AccessDenied(_) => HostError::AccessDenied,
            BackendError::QuotaExceeded(_) => HostError::QuotaExceeded,
            BackendError::Timeout => HostError::Timeout,
            BackendError::Unavailable(_) => HostError::Unavailable,
            BackendError::TooLarge(_) => HostError::TooLarge,
            BackendError::Invalid(_) => HostError::Invalid,
            BackendError::RateLimited { retry_after_ms } => HostError::RateLimited(retry_after_ms),
            BackendError::Other(m) => HostError::Other(m),
        }
    }
}
