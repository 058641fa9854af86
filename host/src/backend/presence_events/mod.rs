//! The presence-event outbox: a durable queue of presence *subjects* (a
//! user on a topic, or a topic) waiting to be looked at, plus the last
//! state delivered for each, per tenant — what [`crate::presence_events`]
//! builds the plugins' `on-presence` hook on.
//!
//! # Model
//!
//! A change of presence **marks** its subjects ([`PresenceOutbox::mark`]):
//! each becomes due `delay` from now, unless it is already due sooner (a
//! pending subject keeps its earlier due time, so flapping never postpones
//! it for ever), and its *version* moves on. A host **claims** due subjects
//! ([`PresenceOutbox::claim`]): each becomes due again `lease` from now, so
//! while one host handles it no other does, and if that host dies another
//! claims it after the lease (at least once). The claim carries the
//! subject's version and the state last **settled** for it
//! ([`PresenceOutbox::settle`]: `true` = user online / topic occupied).
//! Settling records the state and removes the subject — unless it was
//! marked again since the claim, in which case it stays queued with the
//! due time of that mark. A failed delivery is **retried**
//! ([`PresenceOutbox::retry`]).
//!
//! Before a host delivers a state it **begins** it
//! ([`PresenceOutbox::begin`]): the state is recorded as *uncertain*, so
//! that if the host dies between delivering and settling, the next claim
//! says so ([`Claimed::uncertain`]) and the current state is delivered
//! again even if it equals the recorded one (at least once, never an event
//! lost because a dead host delivered without settling). The state table
//! keeps only `true` and uncertain states, so it stays as small as
//! presence itself.
//!
//! Implementations: [`memory::MemoryPresenceOutbox`] (one process) and
//! [`redis::RedisPresenceOutbox`] (a fleet sharing one Redis); both pass
//! `conformance::suite` (test builds).

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Longest topic or user key of a subject, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Longest delay, lease or retry.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// What a presence event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// User `user` (a presence user key) on `topic`: online or offline there.
    User {
        /// The topic.
        topic: String,
        /// The user key.
        user: String,
    },
    /// Topic `topic`: occupied (someone present) or vacated.
    Topic {
        /// The topic.
        topic: String,
    },
}

impl Subject {
    /// The subject as one string: `u\n{topic}\n{user}` or `t\n{topic}`
    /// (topics never contain `'\n'`).
    pub fn encode(&self) -> String {
        match self {
            Subject::User { topic, user } => format!("u\n{topic}\n{user}"),
            Subject::Topic { topic } => format!("t\n{topic}"),
        }
    }

    /// The subject [`Subject::encode`] made `s`; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Subject> {
        if let Some(rest) = s.strip_prefix("u\n") {
            let (topic, user) = rest.split_once('\n')?;
            Some(Subject::User {
                topic: topic.to_owned(),
                user: user.to_owned(),
            })
        } else {
            s.strip_prefix("t\n").map(|topic| Subject::Topic {
                topic: topic.to_owned(),
            })
        }
    }
}

/// A subject claimed for delivery by [`PresenceOutbox::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The subject.
    pub subject: Subject,
    /// Its mark version when claimed ([`PresenceOutbox::settle`] compares it).
    pub version: u64,
    /// The last state settled (or begun) for it (`true`: online /
    /// occupied); `false` if never settled.
    pub delivered: bool,
    /// A delivery of `delivered` was begun but never settled (its host
    /// died, or the delivery failed): it may or may not have reached the
    /// plugin.
    pub uncertain: bool,
}

/// What a [`PresenceOutbox`] holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Queued subjects per tenant; a mark over it is `QuotaExceeded` and
    /// marks nothing. Default 100 000.
    pub max_subjects_per_tenant: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_subjects_per_tenant: 100_000,
        }
    }
}

/// The per-tenant queue of presence subjects (see the module docs).
#[async_trait]
pub trait PresenceOutbox: Send + Sync + 'static {
    /// Changes of `subjects` happened: each becomes due `delay` from now,
    /// or stays due sooner if it already is, and its version moves on.
    async fn mark(
        &self,
        tenant: &TenantId,
        subjects: &[Subject],
        delay: Duration,
    ) -> Result<(), BackendError>;

    /// Claim up to `limit` of `tenant`'s due subjects, earliest first: each
    /// becomes due again `lease` from now.
    async fn claim(
        &self,
        tenant: &TenantId,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, BackendError>;

    /// Record that `state` is about to be delivered for the claimed
    /// subject (uncertain until [`PresenceOutbox::settle`]).
    async fn begin(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        state: bool,
    ) -> Result<(), BackendError>;

    /// Record `state` as delivered for the claimed subject and remove it
    /// from the queue, unless it was marked again since the claim (then it
    /// stays queued, due as that mark said).
    async fn settle(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        state: bool,
    ) -> Result<(), BackendError>;

    /// Delivery failed: the claimed subject becomes due `delay` from now
    /// (or stays due sooner). A subject no longer queued is left alone.
    async fn retry(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        delay: Duration,
    ) -> Result<(), BackendError>;

    /// How many subjects of `tenant` are queued (due or not).
    async fn pending(&self, tenant: &TenantId) -> Result<u64, BackendError>;

    /// Remove everything of `tenant` (queue, versions, states); returns how
    /// many subjects and states went.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
}

/// Check a subject: topic 1 to [`MAX_NAME_BYTES`] bytes without `'\n'`,
/// user key 1 to [`MAX_NAME_BYTES`] bytes.
pub fn check_subject(subject: &Subject) -> Result<(), BackendError> {
    let check = |what: &str, s: &str| {
        if s.is_empty() {
            return Err(BackendError::Invalid(format!("{what} must not be empty")));
        }
        if s.len() > MAX_NAME_BYTES {
            return Err(BackendError::TooLarge(format!(
                "{what} is {} bytes, the limit is {MAX_NAME_BYTES}",
                s.len()
            )));
        }
        Ok(())
    };
    match subject {
        Subject::User { topic, user } => {
            check("topic", topic)?;
            check("user key", user)?;
            if topic.contains('\n') {
                return Err(BackendError::Invalid(
                    "topic must not contain a newline".into(),
                ));
            }
            Ok(())
        }
        Subject::Topic { topic } => {
            check("topic", topic)?;
            if topic.contains('\n') {
                return Err(BackendError::Invalid(
                    "topic must not contain a newline".into(),
                ));
            }
            Ok(())
        }
    }
}

/// Check a delay, lease or retry: 1 ms to [`MAX_DURATION`]. Returns it in
/// whole milliseconds, rounded up.
pub fn check_duration(what: &str, d: Duration) -> Result<u64, BackendError> {
    if d.is_zero() || d > MAX_DURATION {
        return Err(BackendError::Invalid(format!(
            "{what} must be between 1 ms and a day"
        )));
    }
    Ok(d.as_nanos().div_ceil(1_000_000) as u64)
}

/// The refusal of a mark over [`OutboxLimits::max_subjects_per_tenant`].
pub(crate) fn too_many(max: usize) -> BackendError {
    BackendError::QuotaExceeded(format!(
        "at most {max} presence subjects may be queued per tenant"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_and_are_checked() {
        for s in [
            Subject::User {
                topic: "room:1".into(),
                user: "a\nb".into(),
            },
            Subject::Topic {
                topic: "room:1".into(),
            },
        ] {
            assert_eq!(Subject::decode(&s.encode()), Some(s.clone()));
            assert!(check_subject(&s).is_ok());
        }
        assert_eq!(Subject::decode("x\ny"), None);
        assert!(matches!(
            check_subject(&Subject::Topic { topic: "".into() }),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            check_subject(&Subject::Topic {
                topic: "a\nb".into()
            }),
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            check_subject(&Subject::User {
                topic: "t".into(),
                user: "x".repeat(MAX_NAME_BYTES + 1)
            }),
            Err(BackendError::TooLarge(_))
        ));
        assert_eq!(check_duration("delay", Duration::from_micros(1500)), Ok(2));
        assert!(check_duration("delay", Duration::ZERO).is_err());
        assert!(check_duration("delay", MAX_DURATION * 2).is_err());
    }
}
