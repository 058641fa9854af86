//! Per-tenant handles on the series every RPC call updates.
//!
//! Looking a series up by its label values hashes the labels and takes the
//! family's lock, and the series cap checks its own set too: about 130 ns
//! per update, eight updates per call. A tenant's handles are resolved once
//! (through the same tenant-label and series caps) and kept here, so a
//! call's updates are one map lookup each. They are resolved at the
//! tenant's first answered RPC call, so a tenant that never made one has no
//! `rpc_calls_total` series of its own (other updates use the kept handles
//! once they exist).

use std::collections::HashMap;

use parking_lot::RwLock;
use prometheus::{Counter, Histogram, IntCounter};

use crate::tenant::TenantId;

/// One tenant's series updated on every call.
pub(super) struct HotSeries {
    /// `rpc_calls_total{code="OK"}`.
    pub rpc_ok: IntCounter,
    /// `rpc_duration_seconds`.
    pub rpc_duration: Histogram,
    /// `instantiation_seconds`.
    pub instantiation: Histogram,
    /// `call_cpu_seconds_total`.
    pub cpu: Counter,
    /// `call_memory_bytes`.
    pub memory: Histogram,
    /// `bytes_received_total`.
    pub bytes_in: IntCounter,
    /// `bytes_sent_total`.
    pub bytes_out: IntCounter,
}

/// The handles of the tenants labelled by their own id (at most the
/// metrics' `max_tenants`; tenants counted as `other` are not kept).
#[derive(Default)]
pub(super) struct HotCache {
    tenants: RwLock<HashMap<TenantId, HotSeries>>,
}

impl HotCache {
    /// Run `f` on `tenant`'s handles if they were resolved already.
    pub fn with_kept<R>(&self, tenant: &TenantId, f: impl FnOnce(&HotSeries) -> R) -> Option<R> {
        self.tenants.read().get(tenant).map(f)
    }

    /// Run `f` on `tenant`'s handles, resolving them with `build` the first
    /// time. `None` (the caller takes the slow path) if `build` declines:
    /// the tenant is labelled `other`, or a series was refused by the cap.
    pub fn with<R>(
        &self,
        tenant: &TenantId,
        build: impl FnOnce() -> Option<HotSeries>,
        f: impl FnOnce(&HotSeries) -> R,
    ) -> Option<R> {
        if let Some(hot) = self.tenants.read().get(tenant) {
            return Some(f(hot));
        }
        let hot = build()?;
        let out = f(&hot);
        self.tenants.write().entry(tenant.clone()).or_insert(hot);
        Some(out)
    }
}
