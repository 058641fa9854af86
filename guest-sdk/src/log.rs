//! Write to the host's log. Entries carry the tenant and the plugin version;
//! the operator sees them in the host's `tracing` output.
//!
//! ```no_run
//! tenantry_sdk::log::info("room created");
//! tenantry_sdk::log::warn(&format!("slow backend: {} ms", 120));
//! ```

use crate::host;

/// Severity of a log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging details.
    Debug,
    /// Normal events.
    Info,
    /// Something unusual that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

/// Log `message` at `level`.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// Log at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Log at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Log at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Log at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Log at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}
