//! Process metrics in the Prometheus text format, served at `/metrics`.
//!
//! For now: what the sandbox and the quotas refuse, per tenant —
//! `tenantry_traps_total{tenant,kind}` and
//! `tenantry_quota_refusals_total{tenant,kind}`. Tenants are configured by
//! the operator, so the label sets are bounded. (The full metric set comes
//! with the observability work.)

use std::sync::OnceLock;

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

use crate::tenant::TenantId;

/// Why a plugin call failed in the sandbox (`kind` of `tenantry_traps_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The guest trapped: panic, `unreachable`, bad memory access, bad result.
    Trap,
    /// CPU deadline, fuel or wall-clock bound hit.
    Timeout,
    /// Memory or table cap hit.
    Memory,
    /// Guest stack bound hit.
    Stack,
    /// Result over `max_result_bytes`.
    ResultTooLarge,
    /// The host could not run the plugin (instantiation failed, pool full).
    Host,
}

impl TrapKind {
    fn label(self) -> &'static str {
        match self {
            TrapKind::Trap => "trap",
            TrapKind::Timeout => "timeout",
            TrapKind::Memory => "memory",
            TrapKind::Stack => "stack",
            TrapKind::ResultTooLarge => "result_too_large",
            TrapKind::Host => "host",
        }
    }
}

/// Which quota refused (`kind` of `tenantry_quota_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A connection over `max_connections`.
    Connections,
    /// A connection over `connects_per_sec`.
    ConnectRate,
    /// A call over `max_concurrent_calls`.
    ConcurrentCalls,
    /// A message over the connection's or tenant's message rate.
    MessageRate,
    /// A connection closed with 4429 for ignoring refusals.
    RateClose,
    /// A publish over `publishes_per_sec`.
    PublishRate,
    /// A publish over `max_publish_bytes`.
    PublishSize,
    /// A KV write over `kv_max_keys` / `kv_max_bytes`.
    Kv,
    /// A plugin log line over `log_lines_per_sec`.
    LogRate,
}

impl RefusalKind {
    fn label(self) -> &'static str {
        match self {
            RefusalKind::Connections => "connections",
            RefusalKind::ConnectRate => "connect_rate",
            RefusalKind::ConcurrentCalls => "concurrent_calls",
            RefusalKind::MessageRate => "message_rate",
            RefusalKind::RateClose => "rate_close",
            RefusalKind::PublishRate => "publish_rate",
            RefusalKind::PublishSize => "publish_size",
            RefusalKind::Kv => "kv",
            RefusalKind::LogRate => "log_rate",
        }
    }
}

/// The process's metrics registry and its counters.
pub struct Metrics {
    registry: Registry,
    traps: IntCounterVec,
    refusals: IntCounterVec,
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let traps = IntCounterVec::new(
            Opts::new(
                "tenantry_traps_total",
                "Plugin calls that failed in the sandbox, by tenant and kind.",
            ),
            &["tenant", "kind"],
        )?;
        let refusals = IntCounterVec::new(
            Opts::new(
                "tenantry_quota_refusals_total",
                "Requests refused by a quota of the tenant's plan, by tenant and kind.",
            ),
            &["tenant", "kind"],
        )?;
        registry.register(Box::new(traps.clone()))?;
        registry.register(Box::new(refusals.clone()))?;
        Ok(Self {
            registry,
            traps,
            refusals,
        })
    }

    /// Count a failed plugin call.
    pub fn trap(&self, tenant: &TenantId, kind: TrapKind) {
        self.traps
            .with_label_values(&[tenant.as_str(), kind.label()])
            .inc();
    }

    /// Plugin calls of `tenant` that failed with `kind` so far.
    pub fn traps(&self, tenant: &TenantId, kind: TrapKind) -> u64 {
        self.traps
            .with_label_values(&[tenant.as_str(), kind.label()])
            .get()
    }

    /// Count a quota refusal.
    pub fn refusal(&self, tenant: &TenantId, kind: RefusalKind) {
        self.refusals
            .with_label_values(&[tenant.as_str(), kind.label()])
            .inc();
    }

    /// Refusals of `tenant` by `kind` so far.
    pub fn refusals(&self, tenant: &TenantId, kind: RefusalKind) -> u64 {
        self.refusals
            .with_label_values(&[tenant.as_str(), kind.label()])
            .get()
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which
        // the fixed names and labels above are not.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The process-wide metrics, or `None` if they could not be set up (then
/// nothing is counted; never expected with the fixed names above).
pub fn get() -> Option<&'static Metrics> {
    static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new().ok()).as_ref()
}

/// Count a failed plugin call of `tenant`.
pub fn trap(tenant: &TenantId, kind: TrapKind) {
    if let Some(m) = get() {
        m.trap(tenant, kind);
    }
}

/// Count a quota refusal for `tenant`.
pub fn refusal(tenant: &TenantId, kind: RefusalKind) {
    if let Some(m) = get() {
        m.refusal(tenant, kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_and_render() {
        let t = TenantId::parse("metrics-test").unwrap();
        let m = get().unwrap();
        let before = m.traps(&t, TrapKind::Stack);
        trap(&t, TrapKind::Stack);
        refusal(&t, RefusalKind::PublishRate);
        assert_eq!(m.traps(&t, TrapKind::Stack), before + 1);
        let text = m.render();
        assert!(
            text.contains(r#"tenantry_traps_total{kind="stack",tenant="metrics-test"}"#),
            "{text}"
        );
        assert!(text.contains(
            r#"tenantry_quota_refusals_total{kind="publish_rate",tenant="metrics-test"} 1"#
        ));
    }
}
