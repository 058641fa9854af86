//! `tenantry:plugin/presence`: who is on the calling tenant's topics.
//! `join` and `leave` act on the calling connection once the hook returns
//! (they are [`Effect`]s); `members` reads the store.

use serde::de::IgnoredAny;

use crate::backend::presence::{MAX_DATA_BYTES, check_name};
use crate::protocol;
use crate::runtime::wit::presence::{Host, Member};
use crate::runtime::wit::types::HostError;
use crate::runtime::{Effect, HostState, MAX_EFFECTS_PER_CALL};

fn check_topic(topic: &str) -> Result<(), HostError> {
    match protocol::validate_topic(topic) {
        Ok(()) => check_name("topic", topic).map_err(HostError::from),
        Err(_) if topic.starts_with("__") => Err(HostError::AccessDenied),
        Err(_) => Err(HostError::Invalid),
    }
}

impl HostState {
    /// Queue `effect` for the calling connection.
    fn ask(&mut self, effect: Effect) -> Result<(), HostError> {
        let Some(effects) = self.effects.as_mut() else {
            // `authenticate`: there is no connection yet.
            return Err(HostError::AccessDenied);
        };
        if effects.len() >= MAX_EFFECTS_PER_CALL {
            return Err(HostError::QuotaExceeded);
        }
        effects.push(effect);
        Ok(())
    }
}

impl Host for HostState {
    async fn join(&mut self, topic: String, data: String) -> Result<(), HostError> {
        check_topic(&topic)?;
        if data.len() > MAX_DATA_BYTES {
            return Err(HostError::TooLarge);
        }
        // Spliced verbatim into frames: it must be one JSON value.
        if serde_json::from_str::<IgnoredAny>(&data).is_err() {
            return Err(HostError::Invalid);
        }
        self.ask(Effect::PresenceJoin { topic, data })
    }

    async fn leave(&mut self, topic: String) -> Result<(), HostError> {
        check_topic(&topic)?;
        self.ask(Effect::PresenceLeave { topic })
    }

    async fn members(&mut self, topic: String) -> Result<Vec<Member>, HostError> {
        check_topic(&topic)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.presence.members(&s.tenant, &topic))
            .await;
        Ok(r.map_err(HostError::from)?
            .into_iter()
            .map(|m| Member {
                key: m.key,
                data: m.data,
            })
            .collect())
    }
}
