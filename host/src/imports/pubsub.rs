//! `tenantry:plugin/pubsub`: publish to the calling tenant's topics.

use serde::de::IgnoredAny;

use crate::metrics::{self, RefusalKind};
use crate::protocol;
use crate::runtime::wit::pubsub::Host;
use crate::runtime::wit::types::HostError;
use crate::runtime::{HostState, Scope};

/// The checks every plugin publish passes (topic aside): a valid event
/// name, data within the plan's size that is one JSON value (it is spliced
/// verbatim into envelopes), and the plan's publish rate (consumed here).
pub(super) fn check_publish(scope: &Scope, event: &str, data: &str) -> Result<(), HostError> {
    if protocol::validate_event(event).is_err() {
        return Err(HostError::Invalid);
    }
    let max = scope.quota.plan().max_publish_bytes;
    if u64::try_from(data.len()).unwrap_or(u64::MAX) > max {
        metrics::refusal(&scope.tenant, RefusalKind::PublishSize);
        return Err(HostError::TooLarge);
    }
    if serde_json::from_str::<IgnoredAny>(data).is_err() {
        return Err(HostError::Invalid);
    }
    if let Err(refusal) = scope.quota.check_publish() {
        metrics::refusal(&scope.tenant, RefusalKind::PublishRate);
        return Err(HostError::RateLimited(
            refusal.retry_after_ms().unwrap_or(1),
        ));
    }
    Ok(())
}

/// Publish `event` with `data` on `topic` of `scope`'s tenant with every
/// check, quota and record of the `publish` import: for host code acting
/// for the tenant's plugin (the notify bridge) as well as the import.
pub(crate) async fn publish_as(
    scope: &Scope,
    topic: &str,
    event: &str,
    data: &str,
) -> Result<(), HostError> {
    if protocol::validate_topic(topic).is_err() {
        // Reserved (`__`) topics are the host's; the rest is just malformed.
        return Err(if topic.starts_with("__") {
            HostError::AccessDenied
        } else {
            HostError::Invalid
        });
    }
    check_publish(scope, event, data)?;
    let r = scope
        .backends
        .bus
        .publish(&scope.tenant, topic, event, data)
        .await;
    if r.is_ok() {
        scope
            .backends
            .publish_rates
            .record(&scope.tenant, topic, data.len());
        metrics::replay_publish(&scope.tenant, topic);
    }
    r.map_err(HostError::from)
}

impl Host for HostState {
    async fn publish(
        &mut self,
        topic: String,
        event: String,
        data: String,
    ) -> Result<(), HostError> {
        let scope = std::sync::Arc::clone(&self.scope);
        self.cpu
            .wait(publish_as(&scope, &topic, &event, &data))
            .await
    }
}
