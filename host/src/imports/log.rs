//! `tenantry:plugin/log`: guest logs routed to `tracing` (target `plugin`)
//! with the tenant and plugin version attached, under the tenant's log line
//! rate (`log_lines_per_sec`, `log_line_burst`). Lines over the rate are
//! dropped and counted; the next line kept is preceded by a warning saying
//! how many were dropped. Guest stdout and stderr use the same path.

use super::MAX_LOG_BYTES;
use crate::metrics::{self, RefusalKind};
use crate::runtime::HostState;
use crate::runtime::Scope;
use crate::runtime::wit::log::{Host, Level};

/// Severity of a plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal events (guest stdout).
    Info,
    /// Unexpected but handled (guest stderr).
    Warn,
    /// Failures.
    Error,
}

/// Log `message` for the plugin of `scope`, if the tenant's log rate allows;
/// messages are cut to [`MAX_LOG_BYTES`].
pub fn emit_plugin_log(scope: &Scope, level: LogLevel, message: &str) {
    if !scope.quota.allow_log_line() {
        metrics::refusal(&scope.tenant, RefusalKind::LogRate);
        return;
    }
    let mut end = message.len().min(MAX_LOG_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    let tenant = scope.tenant.as_str();
    let version = scope.plugin_version.as_str();
    let dropped = scope.quota.take_logs_dropped();
    if dropped > 0 {
        tracing::warn!(target: "plugin", tenant, plugin_version = version, dropped, "plugin log lines dropped: over the tenant's log rate");
    }
    match level {
        LogLevel::Trace => {
            tracing::trace!(target: "plugin", tenant, plugin_version = version, "{message}")
        }
        LogLevel::Debug => {
            tracing::debug!(target: "plugin", tenant, plugin_version = version, "{message}")
        }
        LogLevel::Info => {
            tracing::info!(target: "plugin", tenant, plugin_version = version, "{message}")
        }
        LogLevel::Warn => {
            tracing::warn!(target: "plugin", tenant, plugin_version = version, "{message}")
        }
        LogLevel::Error => {
            tracing::error!(target: "plugin", tenant, plugin_version = version, "{message}")
        }
    }
}

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        emit_plugin_log(&self.scope, level, &message);
    }
}
