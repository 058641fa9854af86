//! `tenantry:plugin/lock`: distributed locks of the calling tenant. The
//! wait for a lock counts against the call's wall-clock timeout (not its
//! CPU budget).

use std::time::Duration;

use crate::runtime::HostState;
use crate::runtime::wit::lock::Host;
use crate::runtime::wit::types::HostError;

impl Host for HostState {
    async fn acquire(
        &mut self,
        key: String,
        ttl_ms: u64,
        wait_ms: u64,
    ) -> Result<Option<u64>, HostError> {
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.lock.acquire(
                &s.tenant,
                &key,
                Duration::from_millis(ttl_ms),
                Duration::from_millis(wait_ms),
            ))
            .await;
        Ok(r.map_err(HostError::from)?.map(|lease| lease.token))
    }

    async fn refresh(&mut self, key: String, token: u64, ttl_ms: u64) -> Result<bool, HostError> {
        let s = &self.scope;
        let r = self
            .cpu
            .wait(
                s.backends
                    .lock
                    .refresh(&s.tenant, &key, token, Duration::from_millis(ttl_ms)),
            )
            .await;
        r.map_err(HostError::from)
    }

    async fn release(&mut self, key: String, token: u64) -> Result<bool, HostError> {
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.lock.release(&s.tenant, &key, token))
            .await;
        r.map_err(HostError::from)
    }
}
