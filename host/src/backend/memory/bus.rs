//! The in-process pub/sub bus.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::backend::replay::{MemoryReplay, ReplaySettings, SeqSource};
use crate::backend::{BackendError, Bus};
use crate::hub::Hub;
use crate::tenant::TenantId;

/// A [`Bus`] that delivers to this process's subscribers only, through the
/// local [`Hub`]. Every event is first buffered in its [`MemoryReplay`],
/// which assigns the topic's seq (one seq source: the wire seq is the
/// replay seq); events on the host's reserved `__` channels are not
/// buffered. Slow subscribers miss frames; publishing never blocks.
///
/// With durable buffers ([`MemoryBus::with_seq_source`]) every event is
/// appended there instead and delivered with the seq it got; a publish
/// then fails with the buffer's error when it cannot be appended.
pub struct MemoryBus {
    hub: Arc<Hub>,
    seqs: Seqs,
}

/// Where the memory bus numbers and buffers its events.
enum Seqs {
    /// In this process (the default).
    Memory(Arc<MemoryReplay>),
    /// In a durable buffer.
    External(Arc<dyn SeqSource>),
}

impl MemoryBus {
    /// A bus publishing into `hub`, with replay buffers of default size.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self::with_replay(hub, Arc::new(MemoryReplay::new(ReplaySettings::default())))
    }

    /// A bus publishing into `hub` and buffering in `replay`.
    pub fn with_replay(hub: Arc<Hub>, replay: Arc<MemoryReplay>) -> Self {
        Self {
            hub,
            seqs: Seqs::Memory(replay),
        }
    }

    /// A bus publishing into `hub` whose events are numbered and buffered
    /// by `seqs` (the durable replay buffers).
    pub fn with_seq_source(hub: Arc<Hub>, seqs: Arc<dyn SeqSource>) -> Self {
        Self {
            hub,
            seqs: Seqs::External(seqs),
        }
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
        match &self.seqs {
            Seqs::Memory(replay) => {
                replay.append_then(tenant, topic, event, data, |seq| {
                    self.hub.deliver(tenant, topic, event, data, seq);
                });
            }
            Seqs::External(seqs) => {
                let hub = &self.hub;
                seqs.append_then(
                    tenant,
                    topic,
                    event,
                    data,
                    Box::new(move |seq| {
                        hub.deliver(tenant, topic, event, data, seq);
                        let done: BoxFuture<'_, ()> = Box::pin(std::future::ready(()));
                        done
                    }),
                )
                .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Outbound;

    #[tokio::test]
    async fn publishes_to_local_subscribers_of_that_tenant_only() {
        let hub = Hub::new();
        let bus = MemoryBus::new(Arc::clone(&hub));
        let acme = TenantId::parse("acme").unwrap();
        let beta = TenantId::parse("beta").unwrap();
        let (tx, mut rx) = crate::outbound::queue(8);
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
