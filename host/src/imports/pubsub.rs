//! `tenantry:plugin/pubsub`: publish to the calling tenant's topics.

use serde::de::IgnoredAny;

use super::MAX_PUBLISH_BYTES;
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
        if data.len() > MAX_PUBLISH_BYTES {
            return Err(HostError::TooLarge);
        }
        // The data is spliced verbatim into envelopes: it must be one JSON value.
        if serde_json::from_str::<IgnoredAny>(&data).is_err() {
            return Err(HostError::Invalid);
        }
        let scope = &self.scope;
        scope
            .backends
            .bus
            .publish(&scope.tenant, &topic, &event, &data)
            .await
            .map_err(HostError::from)
    }
}
