//! A guest's stdout and stderr: each complete line goes to the tenant's log
//! (target `plugin`, with tenant and plugin version), under the same
//! per-tenant line rate as the `log` import. Nothing reaches the host's own
//! stdout.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::store::Scope;
use crate::imports::{LogLevel, emit_plugin_log};

/// Longest line kept; a longer line is cut and the rest starts a new one.
const MAX_LINE_BYTES: usize = 4096;
/// Bytes the guest may write per `check-write` permit.
const WRITE_PERMIT: usize = 64 * 1024;

/// The stdout or stderr given to a plugin's WASI context.
pub struct LogSink {
    scope: Arc<Scope>,
    level: LogLevel,
}

impl LogSink {
    /// Stdout: lines are logged at info.
    pub fn stdout(scope: Arc<Scope>) -> Self {
        Self {
            scope,
            level: LogLevel::Info,
        }
    }

    /// Stderr: lines are logged at warn.
    pub fn stderr(scope: Arc<Scope>) -> Self {
        Self {
            scope,
            level: LogLevel::Warn,
        }
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            scope: Arc::clone(&self.scope),
            level: self.level,
            line: Vec::new(),
        })
    }

    /// Only WASIp3 guests use this; output is discarded for them for now.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

/// Splits written bytes into lines and logs each.
struct LineWriter {
    scope: Arc<Scope>,
    level: LogLevel,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        emit_plugin_log(&self.scope, self.level, text);
        self.line.clear();
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        for &b in bytes.iter() {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE_BYTES {
                    self.emit();
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}
