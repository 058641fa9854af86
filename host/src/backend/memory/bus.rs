//! The in-process pub/sub bus.

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::replay::{MemoryReplay, ReplaySettings};
use crate::backend::{BackendError, Bus};
use crate::hub::Hub;
use crate::tenant::TenantId;

/// A [`Bus`] that delivers to this process's subscribers only, through the
/// local [`Hub`]. Every event is first buffered in its [`MemoryReplay`],
/// which assigns the topic's seq (one seq source: the wire seq is the
/// replay seq); events on the host's reserved `__` channels are not
/// buffered. Slow subscribers miss frames; publishing never blocks.
pub struct MemoryBus {
    hub: Arc<Hub>,
    replay: Arc<MemoryReplay>,
}

impl MemoryBus {
    /// A bus publishing into `hub`, with replay buffers of default size.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self::with_replay(hub, Arc::new(MemoryReplay::new(ReplaySettings::default())))
    }

    /// A bus publishing into `hub` and buffering in `replay`.
    pub fn with_replay(hub: Arc<Hub>, replay: Arc<MemoryReplay>) -> Self {
        Self { hub, replay }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
    ) -> Result<(), BackendError> {
        if topic.starts_with("__") {
            // The host's own channels (presence diffs, cursors): not
            // replayable, so not buffered; numbered by the hub.
            self.hub.publish(tenant, topic, event, data);
            return Ok(());
        }
        self.replay.append_then(tenant, topic, event, data, |seq| {
            self.hub.deliver(tenant, topic, event, data, seq);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Outbound;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn publishes_to_local_subscribers_of_that_tenant_only() {
        let hub = Hub::new();
        let bus = MemoryBus::new(Arc::clone(&hub));
        let acme = TenantId::parse("acme").unwrap();
        let beta = TenantId::parse("beta").unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let conn = hub.connect(acme.clone(), tx, 10);
        conn.subscribe("room:1").unwrap();
        bus.publish(&beta, "room:1", "message", "{}").await.unwrap();
        bus.publish(&acme, "room:1", "message", r#"{"a":1}"#)
            .await
            .unwrap();
        let Outbound::Text(frame) = rx.recv().await.unwrap();
        assert_eq!(
            frame.as_str(),
            r#"{"topic":"room:1","event":"message","data":{"a":1},"seq":1}"#
        );
        assert!(rx.try_recv().is_err());
    }
}
