//! `tenantry:plugin/replay`: read the calling tenant's replay buffers.

use crate::protocol;
use crate::runtime::HostState;
use crate::runtime::wit::replay::{Host, ReplayEvent, ReplayPage};
use crate::runtime::wit::types::HostError;

/// Topics follow the wire rules; reserved (`__`) ones are the host's.
fn check_topic(topic: &str) -> Result<(), HostError> {
    match protocol::validate_topic(topic) {
        Ok(()) => Ok(()),
        Err(_) if topic.starts_with("__") => Err(HostError::AccessDenied),
        Err(_) => Err(HostError::Invalid),
    }
}

impl Host for HostState {
    async fn seq(&mut self, topic: String) -> Result<u64, HostError> {
        check_topic(&topic)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.replay.seq(&s.tenant, &topic))
            .await;
        r.map_err(HostError::from)
    }

    async fn since(&mut self, topic: String, since: u64) -> Result<ReplayPage, HostError> {
        check_topic(&topic)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.replay.since(&s.tenant, &topic, since))
            .await;
        let page = r.map_err(HostError::from)?;
        Ok(ReplayPage {
            truncated: page.truncated,
            seq: page.seq,
            events: page
                .events
                .into_iter()
                .map(|e| ReplayEvent {
                    seq: e.seq,
                    event: e.event,
                    data: e.data,
                })
                .collect(),
        })
    }
}
