//! `tenantry:plugin/idempotency`: run-once records of the calling tenant.
//! Keys starting `__` are reserved for the host's own records (RPCs sent
//! with an `idempotencyKey`): `access-denied`.

use std::time::Duration;

use serde::de::IgnoredAny;

use crate::backend::idempotency::IdemAcquire;
use crate::runtime::HostState;
use crate::runtime::wit::idempotency::{Host, IdemState};
use crate::runtime::wit::types::HostError;

/// Keys starting `__` are the host's (RPCs sent with an `idempotencyKey`).
fn check_key(key: &str) -> Result<(), HostError> {
    if key.starts_with("__") {
        Err(HostError::AccessDenied)
    } else {
        Ok(())
    }
}

impl Host for HostState {
    async fn acquire(&mut self, key: String, pending_ttl_ms: u64) -> Result<IdemState, HostError> {
        check_key(&key)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.idempotency.acquire(
                &s.tenant,
                &key,
                Duration::from_millis(pending_ttl_ms),
            ))
            .await;
        Ok(match r.map_err(HostError::from)? {
            IdemAcquire::Acquired => IdemState::Acquired,
            IdemAcquire::Pending => IdemState::Pending,
            IdemAcquire::Done(result) => IdemState::Done(result),
        })
    }

    async fn commit(&mut self, key: String, value: String, ttl_ms: u64) -> Result<(), HostError> {
        check_key(&key)?;
        // Handed back verbatim as JSON later: it must be one JSON value.
        if serde_json::from_str::<IgnoredAny>(&value).is_err() {
            return Err(HostError::Invalid);
        }
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.idempotency.commit(
                &s.tenant,
                &key,
                &value,
                Duration::from_millis(ttl_ms),
            ))
            .await;
        r.map_err(HostError::from)
    }

    async fn abort(&mut self, key: String) -> Result<(), HostError> {
        check_key(&key)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.idempotency.abort(&s.tenant, &key))
            .await;
        r.map(drop).map_err(HostError::from)
    }
}
