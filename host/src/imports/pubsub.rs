//! `tenantry:plugin/pubsub`: publish to the calling tenant's topics.

use serde::de::IgnoredAny;

use crate::metrics::{self, RefusalKind};
use crate::protocol;
use crate::runtime::HostState;
use crate::runtime::wit::pubsub::Host;
use crate::runtime::wit::types::HostError;

impl Host for HostState {
    async fn publish(
        &mut self,
        topic: String,
        event: String,
        data: String,
    ) -> Result<(), HostError> {
        if protocol::validate_topic(&topic).is_err() {
            // Reserved (`__`) topics are the host's; the rest is just malformed.
            return Err(if topic.starts_with("__") {
                HostError::AccessDenied
            } else {
                HostError::Invalid
            });
        }
        if protocol::validate_event(&event).is_err() {
            return Err(HostError::Invalid);
        }
        let scope = &self.scope;
        let max = scope.quota.plan().max_publish_bytes;
        if u64::try_from(data.len()).unwrap_or(u64::MAX) > max {
            metrics::refusal(&scope.tenant, RefusalKind::PublishSize);
            return Err(HostError::TooLarge);
        }
        // The data is spliced verbatim into envelopes: it must be one JSON value.
        if serde_json::from_str::<IgnoredAny>(&data).is_err() {
            return Err(HostError::Invalid);
        }
        if let Err(refusal) = scope.quota.check_publish() {
            metrics::refusal(&scope.tenant, RefusalKind::PublishRate);
            return Err(HostError::RateLimited(
                refusal.retry_after_ms().unwrap_or(1),
            ));
        }
        self.cpu.pause();
        let scope = &self.scope;
        let r = scope
            .backends
            .bus
            .publish(&scope.tenant, &topic, &event, &data)
            .await;
        self.cpu.resume();
        if r.is_ok() {
            scope
                .backends
                .publish_rates
                .record(&scope.tenant, &topic, data.len());
        }
        r.map_err(HostError::from)
    }
}
