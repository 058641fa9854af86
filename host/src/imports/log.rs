//! `tenantry:plugin/log`: guest logs routed to `tracing` with the tenant and
//! plugin version attached.

use super::MAX_LOG_BYTES;
use crate::runtime::HostState;
use crate::runtime::wit::log::{Host, Level};

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        let mut end = message.len().min(MAX_LOG_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let tenant = self.scope.tenant.as_str();
        let version = self.scope.plugin_version.as_str();
        match level {
            Level::Trace => {
                tracing::trace!(target: "plugin", tenant, plugin_version = version, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "plugin", tenant, plugin_version = version, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "plugin", tenant, plugin_version = version, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "plugin", tenant, plugin_version = version, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "plugin", tenant, plugin_version = version, "{message}")
            }
        }
    }
}
