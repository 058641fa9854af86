//! This host's publish-rate reports, in memory.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{MergedRate, RateBoard, STALE_AFTER, TopicRate, merge};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// One host's latest report and when it came.
type Report = (Instant, Vec<TopicRate>);

/// Reports per tenant and host. Bounded by the tenants that publish and
/// [`super::TOP_N`] topics per report; a stale report is dropped when read.
#[derive(Default)]
pub struct MemoryRateBoard {
    reports: Mutex<HashMap<TenantId, HashMap<String, Report>>>,
}

impl MemoryRateBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RateBoard for MemoryRateBoard {
    async fn report(
        &self,
        tenant: &TenantId,
        instance: &str,
        slice: &[TopicRate],
    ) -> Result<(), BackendError> {
        let mut reports = self.reports.lock();
        if slice.is_empty() {
            if let Some(hosts) = reports.get_mut(tenant) {
                hosts.remove(instance);
                if hosts.is_empty() {
                    reports.remove(tenant);
                }
            }
        } else {
            reports
                .entry(tenant.clone())
                .or_default()
                .insert(instance.to_owned(), (Instant::now(), slice.to_vec()));
        }
        Ok(())
    }

    async fn merged(&self, tenant: &TenantId) -> Result<Vec<MergedRate>, BackendError> {
        let mut reports = self.reports.lock();
        let Some(hosts) = reports.get_mut(tenant) else {
            return Ok(Vec::new());
        };
        hosts.retain(|_, (at, _)| at.elapsed() < STALE_AFTER);
        Ok(merge(hosts.values().map(|(_, s)| s.as_slice())))
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        Ok(self
            .reports
            .lock()
            .remove(tenant)
            .map_or(0, |h| h.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_board_passes_the_conformance_suite() {
        super::super::conformance(&MemoryRateBoard::new()).await;
    }
}
