//! `tenantry:plugin/kv`: the calling tenant's key-value store.

use std::time::Duration;

use super::{MAX_KV_KEY_BYTES, MAX_KV_VALUE_BYTES};
use crate::backend::{BackendError, KvQuota};
use crate::metrics::{self, RefusalKind};
use crate::runtime::wit::kv::Host;
use crate::runtime::wit::types::HostError;
use crate::runtime::{HostState, Scope};

fn check_key(key: &str) -> Result<(), HostError> {
    if key.is_empty() {
        Err(HostError::Invalid)
    } else if key.len() > MAX_KV_KEY_BYTES {
        Err(HostError::TooLarge)
    } else {
        Ok(())
    }
}

/// Map a backend failure for the guest, counting quota refusals.
fn refused(scope: &Scope, e: BackendError) -> HostError {
    if matches!(e, BackendError::QuotaExceeded(_)) {
        metrics::refusal(&scope.tenant, RefusalKind::Kv);
    }
    HostError::from(e)
}

fn quota(scope: &Scope) -> KvQuota {
    let plan = scope.quota.plan();
    KvQuota {
        max_keys: plan.kv_max_keys,
        max_bytes: plan.kv_max_bytes,
    }
}

impl Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        check_key(&key)?;
        let s = &self.scope;
        let r = self.cpu.wait(s.backends.kv.get(&s.tenant, &key)).await;
        r.map_err(HostError::from)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), HostError> {
        check_key(&key)?;
        if value.len() > MAX_KV_VALUE_BYTES {
            return Err(HostError::TooLarge);
        }
        if ttl_ms == Some(0) {
            return Err(HostError::Invalid);
        }
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.kv.set(
                &s.tenant,
                &key,
                value,
                ttl_ms.map(Duration::from_millis),
                quota(s),
            ))
            .await;
        r.map_err(|e| refused(s, e))
    }

    async fn delete(&mut self, key: String) -> Result<bool, HostError> {
        check_key(&key)?;
        let s = &self.scope;
        let r = self.cpu.wait(s.backends.kv.delete(&s.tenant, &key)).await;
        r.map_err(HostError::from)
    }

    async fn incr(&mut self, key: String, delta: i64) -> Result<i64, HostError> {
        check_key(&key)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.kv.incr(&s.tenant, &key, delta, quota(s)))
            .await;
        r.map_err(|e| refused(s, e))
    }
}
