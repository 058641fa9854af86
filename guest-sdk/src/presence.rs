//! Presence: who is on a topic, across the fleet, one entry per user
//! however many tabs it has open (the seeds' `createPresence`).
//!
//! Call [`join`] from a hook serving a connection — typically the
//! subscribe gate, so subscribing to a room means being present in it (the
//! seeds' `presence.hooks`). The host then sends the connection
//! `presence_state` and everyone on the topic a `presence_diff` on
//! `__presence:{topic}`; the connection leaves when it unsubscribes, closes
//! or [`leave`] is called. `data` is what others see of the user: put only
//! what they may see in it (the seeds' `select`).
//!
//! ```no_run
//! use tenantry_sdk::{Ctx, LiveError, presence, serde_json::json};
//!
//! fn authorize_subscribe(ctx: &Ctx, topic: &str) -> Result<(), LiveError> {
//!     if topic.starts_with("room:") {
//!         presence::join(topic, &json!({"name": ctx.user_id()}))?;
//!     }
//!     Ok(())
//! }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::host;

/// One present user.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The user's id (for an anonymous connection, its connection id).
    pub key: String,
    /// What its connection joined with.
    pub data: serde_json::Value,
}

impl Member {
    /// The data decoded as `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.data.clone()).map_err(|e| Error::Decode(e.to_string()))
    }
}

/// One event for [`Plugin::on_presence`](crate::Plugin::on_presence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// `user` (a user id; an anonymous connection's id) is now present on
    /// `topic`: its first connection joined.
    UserOnline {
        /// The topic.
        topic: String,
        /// The user's key.
        user: String,
    },
    /// `user` is no longer present on `topic`: its last connection left
    /// (or its host died and its presence expired).
    UserOffline {
        /// The topic.
        topic: String,
        /// The user's key.
        user: String,
    },
    /// `topic` now has someone present.
    TopicOccupied {
        /// The topic.
        topic: String,
    },
    /// `topic` has nobody present any more.
    TopicVacated {
        /// The topic.
        topic: String,
    },
}

/// Make the calling connection present on `topic` with `data`, once the
/// hook returns successfully (in the subscribe gate: once subscribed).
pub fn join<T: Serialize + ?Sized>(topic: &str, data: &T) -> Result<(), Error> {
    let json = serde_json::to_string(data).map_err(|e| Error::Encode(e.to_string()))?;
    host::presence_join(topic, &json)
}

/// Make the calling connection leave `topic`, once the hook returns.
pub fn leave(topic: &str) -> Result<(), Error> {
    host::presence_leave(topic)
}

/// The users present on `topic`, sorted by key.
pub fn members(topic: &str) -> Result<Vec<Member>, Error> {
    host::presence_members(topic)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_records_joins_and_leaves() {
        crate::testing::reset();
        join("room:1", &serde_json::json!({"name": "ann"})).unwrap();
        assert_eq!(
            crate::testing::take_presence(),
            [(
                "room:1".to_owned(),
                Some(serde_json::json!({"name": "ann"}))
            )]
        );
        leave("room:1").unwrap();
        assert_eq!(
            crate::testing::take_presence(),
            [("room:1".to_owned(), None)]
        );
        assert_eq!(join("__x", &1), Err(Error::AccessDenied));
        assert_eq!(members("room:1").unwrap(), []);
    }
}
