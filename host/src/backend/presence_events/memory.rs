//! The presence-event outbox of one process (the embedded default).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{
    Claimed, OutboxLimits, PresenceOutbox, Subject, check_duration, check_subject, too_many,
};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// One queued subject.
struct Entry {
    due: Instant,
    version: u64,
}

/// One tenant's queue and delivered states.
#[derive(Default)]
struct TenantState {
    /// `(due, subject)`, earliest first.
    due: BTreeSet<(Instant, Subject)>,
    entries: HashMap<Subject, Entry>,
    /// Subjects whose delivered state is `true` or uncertain: the state
    /// and whether it is uncertain.
    states: HashMap<Subject, (bool, bool)>,
}

impl TenantState {
    fn set_due(&mut self, subject: &Subject, at: Instant, only_sooner: bool) -> bool {
        let Some(e) = self.entries.get_mut(subject) else {
            return false;
        };
        if only_sooner && e.due <= at {
            return true;
        }
        self.due.remove(&(e.due, subject.clone()));
        e.due = at;
        self.due.insert((at, subject.clone()));
        true
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.states.is_empty()
    }
}

/// A [`PresenceOutbox`] in this process's memory.
#[derive(Default)]
pub struct MemoryPresenceOutbox {
    limits: OutboxLimits,
    tenants: Mutex<HashMap<TenantId, TenantState>>,
}

impl MemoryPresenceOutbox {
    /// An empty outbox with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty outbox with `limits`.
    pub fn with_limits(limits: OutboxLimits) -> Self {
        Self {
            limits,
            tenants: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl PresenceOutbox for MemoryPresenceOutbox {
    async fn mark(
        &self,
        tenant: &TenantId,
        subjects: &[Subject],
        delay: Duration,
    ) -> Result<(), BackendError> {
        for s in subjects {
            check_subject(s)?;
        }
        let ms = check_duration("delay", delay)?;
        let at = Instant::now() + Duration::from_millis(ms);
        let mut tenants = self.tenants.lock();
        let state = tenants.entry(tenant.clone()).or_default();
        let new: HashSet<&Subject> = subjects
            .iter()
            .filter(|s| !state.entries.contains_key(*s))
            .collect();
        if state.entries.len() + new.len() > self.limits.max_subjects_per_tenant {
            return Err(too_many(self.limits.max_subjects_per_tenant));
        }
        for s in subjects {
            match state.entries.get_mut(s) {
                Some(e) => {
                    e.version += 1;
                    state.set_due(s, at, true);
                }
                None => {
                    state.entries.insert(
                        s.clone(),
                        Entry {
                            due: at,
                            version: 1,
                        },
                    );
                    state.due.insert((at, s.clone()));
                }
            }
        }
        Ok(())
    }

    async fn claim(
        &self,
        tenant: &TenantId,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, BackendError> {
        let ms = check_duration("lease", lease)?;
        let now = Instant::now();
        let until = now + Duration::from_millis(ms);
        let mut tenants = self.tenants.lock();
        let Some(state) = tenants.get_mut(tenant) else {
            return Ok(Vec::new());
        };
        let due: Vec<Subject> = state
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, s)| s.clone())
            .collect();
        let mut claimed = Vec::with_capacity(due.len());
        for s in due {
            state.set_due(&s, until, false);
            let version = state.entries.get(&s).map_or(0, |e| e.version);
            let (delivered, uncertain) = state.states.get(&s).copied().unwrap_or_default();
            claimed.push(Claimed {
                delivered,
                uncertain,
                subject: s,
                version,
            });
        }
        Ok(claimed)
    }

    async fn settle(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        state: bool,
    ) -> Result<(), BackendError> {
        check_subject(&claimed.subject)?;
        let mut tenants = self.tenants.lock();
        let t = tenants.entry(tenant.clone()).or_default();
        let s = &claimed.subject;
        if state {
            t.states.insert(s.clone(), (true, false));
        } else {
            t.states.remove(s);
        }
        if let Some(e) = t.entries.get(s)
            && e.version == claimed.version
        {
            t.due.remove(&(e.due, s.clone()));
            t.entries.remove(s);
        }
        if t.is_empty() {
            tenants.remove(tenant);
        }
        Ok(())
    }

    async fn begin(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        state: bool,
    ) -> Result<(), BackendError> {
        check_subject(&claimed.subject)?;
        self.tenants
            .lock()
            .entry(tenant.clone())
            .or_default()
            .states
            .insert(claimed.subject.clone(), (state, true));
        Ok(())
    }

    async fn retry(
        &self,
        tenant: &TenantId,
        claimed: &Claimed,
        delay: Duration,
    ) -> Result<(), BackendError> {
        check_subject(&claimed.subject)?;
        let ms = check_duration("delay", delay)?;
        let at = Instant::now() + Duration::from_millis(ms);
        if let Some(t) = self.tenants.lock().get_mut(tenant) {
            t.set_due(&claimed.subject, at, true);
        }
        Ok(())
    }

    async fn pending(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        Ok(self
            .tenants
            .lock()
            .get(tenant)
            .map_or(0, |t| t.entries.len() as u64))
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        Ok(self
            .tenants
            .lock()
            .remove(tenant)
            .map_or(0, |t| (t.entries.len() + t.states.len()) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::presence_events::conformance;

    #[tokio::test]
    async fn memory_outbox_passes_the_conformance_suite() {
        let outbox = MemoryPresenceOutbox::new();
        conformance::suite(&outbox, &outbox).await;
        assert!(outbox.tenants.lock().is_empty(), "the suite cleans up");
    }

    #[tokio::test]
    async fn the_bound_refuses_new_subjects() {
        let outbox = MemoryPresenceOutbox::with_limits(OutboxLimits {
            max_subjects_per_tenant: 2,
        });
        let t = TenantId::parse("acme").unwrap();
        let topic = |n: u32| Subject::Topic {
            topic: format!("t{n}"),
        };
        let d = Duration::from_secs(1);
        outbox.mark(&t, &[topic(1), topic(2)], d).await.unwrap();
        outbox.mark(&t, &[topic(1)], d).await.unwrap();
        assert!(matches!(
            outbox.mark(&t, &[topic(1), topic(3)], d).await,
            Err(BackendError::QuotaExceeded(_))
        ));
        assert_eq!(
            outbox.pending(&t).await,
            Ok(2),
            "nothing of the refused mark"
        );
    }
}
