//! Presence events for plugins: the optional `on-presence` hook gets
//! `user-online` / `user-offline` per user and topic and `topic-occupied` /
//! `topic-vacated` per topic, fleet-wide, debounced, flap-suppressed and at
//! least once.
//!
//! How: whenever presence changes — a user's first connection joins a
//! topic, its last one leaves, or another host expires the users of a host
//! that died — [`PresenceEvents::changed`] marks the user and the topic in
//! the tenant's [`PresenceOutbox`] (memory, or Redis for a fleet), due
//! [`PresenceEventSettings::delay`] later (a pending mark keeps its earlier
//! due time). Every host's delivery loop ([`PresenceEvents::spawn`]) claims
//! due subjects of the tenants whose plugin asked for events (with a
//! lease: if the host dies, another claims them after it), reads the
//! current presence, and compares it with the last state delivered for the
//! subject: only a difference becomes an event (or a state whose earlier
//! delivery was begun but never settled: it is delivered again). A user who left and came
//! back within the delay produces nothing (flap suppression); one who
//! stayed away produces one `user-offline`. The batch goes to the tenant's
//! active plugin version; if the call fails, the subjects are retried
//! after [`PresenceEventSettings::retry`], so each event is delivered at
//! least once (a plugin should handle one twice gracefully).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::backend::presence::PresenceStore;
use crate::backend::presence_events::{Claimed, PresenceOutbox, Subject};
use crate::runtime::{PresenceChange, PresenceEvent};
use crate::tenant::{Registry, TenantId};

/// How presence events are debounced and delivered (the `[presence]`
/// table's `events_delay_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceEventSettings {
    /// How long after a change its subjects are looked at (debounce).
    pub delay: Duration,
    /// How often each host looks for due subjects.
    pub poll: Duration,
    /// How long a claimed subject is hidden from other hosts; if not
    /// settled by then (the host died), it is delivered again.
    pub lease: Duration,
    /// How long after a failed delivery it is tried again.
    pub retry: Duration,
    /// Subjects claimed (and events delivered at most) per plugin call.
    pub batch: usize,
}

impl Default for PresenceEventSettings {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(2),
            poll: Duration::from_millis(250),
            lease: Duration::from_secs(30),
            retry: Duration::from_secs(5),
            batch: 100,
        }
    }
}

/// This host's side of presence events. Share it as `Arc<PresenceEvents>`.
pub struct PresenceEvents {
    outbox: Arc<dyn PresenceOutbox>,
    presence: Arc<dyn PresenceStore>,
    registry: Arc<Registry>,
    settings: PresenceEventSettings,
}

impl PresenceEvents {
    /// Presence events of the tenants in `registry`, queued in `outbox`,
    /// read from `presence`.
    pub fn new(
        outbox: Arc<dyn PresenceOutbox>,
        presence: Arc<dyn PresenceStore>,
        registry: Arc<Registry>,
        settings: PresenceEventSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            outbox,
            presence,
            registry,
            settings,
        })
    }

    /// Whether `tenant`'s active plugin asked for presence events.
    fn wanted(&self, tenant: &TenantId) -> bool {
        self.registry
            .get(tenant)
            .and_then(|t| t.deployment().active)
            .is_some_and(|p| p.wants_presence_events())
    }

    /// User `user` came online or went offline on `topic` of `tenant` (its
    /// first connection joined, its last left or expired). Marks the user
    /// and the topic, if the tenant's plugin wants events. Failures are
    /// logged (the event is lost, as presence itself may then be stale).
    pub async fn changed(&self, tenant: &TenantId, topic: &str, user: &str) {
        if !self.wanted(tenant) {
            return;
        }
        let subjects = [
            Subject::User {
                topic: topic.to_owned(),
                user: user.to_owned(),
            },
            Subject::Topic {
                topic: topic.to_owned(),
            },
        ];
        if let Err(e) = self
            .outbox
            .mark(tenant, &subjects, self.settings.delay)
            .await
        {
            tracing::warn!(%tenant, topic, error = %e, "presence event not queued");
        }
    }

    /// Deliver the due events of every tenant that wants them, once.
    pub async fn deliver_due(&self) {
        for tenant in self.registry.ids() {
            if self.wanted(&tenant) {
                self.deliver_tenant(&tenant).await;
            }
        }
    }

    /// Claim, compare and deliver one batch of `tenant`'s due subjects.
    async fn deliver_tenant(&self, tenant: &TenantId) {
        let s = &self.settings;
        let claimed = match self.outbox.claim(tenant, s.batch, s.lease).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "presence events not claimed");
                return;
            }
        };
        if claimed.is_empty() {
            return;
        }
        // Who is on each topic now (one read per topic).
        let mut present: HashMap<String, Option<Vec<String>>> = HashMap::new();
        for c in &claimed {
            let topic = match &c.subject {
                Subject::User { topic, .. } | Subject::Topic { topic } => topic,
            };
            if !present.contains_key(topic) {
                let keys = match self.presence.members(tenant, topic).await {
                    Ok(m) => Some(m.into_iter().map(|m| m.key).collect()),
                    Err(e) => {
                        tracing::warn!(%tenant, topic, error = %e, "presence not readable; events retried");
                        None
                    }
                };
                present.insert(topic.clone(), keys);
            }
        }
        let mut events = Vec::new();
        let mut settle: Vec<(&Claimed, bool)> = Vec::new();
        let mut unreadable: Vec<&Claimed> = Vec::new();
        for c in &claimed {
            let (topic, user) = match &c.subject {
                Subject::User { topic, user } => (topic, Some(user)),
                Subject::Topic { topic } => (topic, None),
            };
            let Some(Some(keys)) = present.get(topic) else {
                unreadable.push(c);
                continue;
            };
            let now = match user {
                Some(user) => keys.iter().any(|k| k == user),
                None => !keys.is_empty(),
            };
            // An uncertain state (a delivery begun and never settled) is
            // delivered again: it may never have reached the plugin.
            if now != c.delivered || c.uncertain {
                let change = match (user.is_some(), now) {
                    (true, true) => PresenceChange::UserOnline,
                    (true, false) => PresenceChange::UserOffline,
                    (false, true) => PresenceChange::TopicOccupied,
                    (false, false) => PresenceChange::TopicVacated,
                };
                events.push(PresenceEvent {
                    change,
                    topic: topic.clone(),
                    user: user.cloned(),
                });
            }
            settle.push((c, now));
        }
        // Recorded as uncertain first: if this host dies between the call
        // and the settle, the next claimer delivers again.
        for (c, state) in &settle {
            if (*state != c.delivered || c.uncertain)
                && let Err(e) = self.outbox.begin(tenant, c, *state).await
            {
                tracing::warn!(%tenant, error = %e, "presence event not begun; retried later");
                return;
            }
        }
        let delivered = if events.is_empty() {
            true
        } else {
            let plugin = self
                .registry
                .get(tenant)
                .and_then(|t| t.deployment().active);
            match plugin {
                Some(p) => match p.on_presence(&events).await {
                    // `false`: this version declines events; nothing to retry.
                    Ok(_) => true,
                    Err(e) => {
                        tracing::info!(%tenant, events = events.len(), error = %e, "on-presence failed; retrying later");
                        false
                    }
                },
                // The tenant went away meanwhile.
                None => true,
            }
        };
        for (c, state) in settle {
            let r = if delivered {
                self.outbox.settle(tenant, c, state).await
            } else {
                self.outbox.retry(tenant, c, s.retry).await
            };
            if let Err(e) = r {
                // The lease runs out and the subject comes back.
                tracing::warn!(%tenant, error = %e, "presence event not settled");
            }
        }
        for c in unreadable {
            if let Err(e) = self.outbox.retry(tenant, c, s.retry).await {
                tracing::warn!(%tenant, error = %e, "presence event not rescheduled");
            }
        }
    }

    /// Run [`PresenceEvents::deliver_due`] every poll interval until the
    /// returned task is aborted.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.settings.poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.deliver_due().await;
            }
        })
    }
}
