//! The tenant's replay buffers: the last events published on each topic,
//! with the seqs subscribers saw.
//!
//! Clients catch up by themselves (the `replay` and `resume` frames); a
//! plugin reads the buffers to answer with what a client missed, e.g. a
//! loader that returns `since(topic, client_seq)` instead of a full reload
//! unless the page is `truncated`.
//!
//! ```no_run
//! # fn demo() -> Result<(), tenantry_sdk::Error> {
//! use tenantry_sdk::replay;
//! let page = replay::since("room:lobby", 41)?;
//! if page.truncated {
//!     // Too old: send a full snapshot instead.
//! }
//! for e in &page.events {
//!     let _ = (e.seq, &e.event, &e.data);
//! }
//! let latest = replay::seq("room:lobby")?;
//! # let _ = latest; Ok(()) }
//! ```

use crate::error::Error;
use crate::host;

/// One buffered event.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayEvent {
    /// Its seq on the topic.
    pub seq: u64,
    /// The event name.
    pub event: String,
    /// The data, parsed from JSON.
    pub data: serde_json::Value,
}

/// What [`since`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayPage {
    /// Some events after `since` are no longer buffered (the buffer was
    /// trimmed or expired, or the seq restarted): reload instead.
    pub truncated: bool,
    /// The buffered events after `since`, oldest first.
    pub events: Vec<ReplayEvent>,
    /// The topic's current seq (0: nothing published, or forgotten).
    pub seq: u64,
}

/// The topic's current seq: the seq of its last event, 0 if none.
pub fn seq(topic: &str) -> Result<u64, Error> {
    host::replay_seq(topic)
}

/// The buffered events of `topic` with a seq above `since` (0: all kept).
pub fn since(topic: &str, since: u64) -> Result<ReplayPage, Error> {
    host::replay_since(topic, since)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_buffers_what_is_published() {
        crate::testing::reset();
        assert_eq!(seq("room:1"), Ok(0));
        for n in 1..=3 {
            crate::publish("room:1", "m", &n).unwrap();
        }
        assert_eq!(seq("room:1"), Ok(3));
        let page = since("room:1", 1).unwrap();
        assert!(!page.truncated);
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(page.events[0].data, serde_json::json!(2));
        assert!(since("room:1", 9).unwrap().truncated, "ahead of the seq");
        assert_eq!(since("__x", 0), Err(Error::AccessDenied));
        assert_eq!(seq(""), Err(Error::Invalid));
    }
}
