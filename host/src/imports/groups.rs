//! `tenantry:plugin/groups`: the calling tenant's broadcast groups. `join`
//! and `leave` act on the calling connection at once (see
//! [`crate::groups`]); the rest acts on the group.

use serde::de::IgnoredAny;

use crate::backend::BackendError;
use crate::backend::groups::{MAX_META_BYTES, Role};
use crate::metrics::{self, GroupEvent};
use crate::runtime::HostState;
use crate::runtime::wit::groups::{GroupInfo, GroupMember, Host, Joined, Role as WitRole};
use crate::runtime::wit::types::HostError;

fn role_from_wit(role: WitRole) -> Role {
    match role {
        WitRole::Member => Role::Member,
        WitRole::Admin => Role::Admin,
        WitRole::Viewer => Role::Viewer,
    }
}

fn role_to_wit(role: Role) -> WitRole {
    match role {
        Role::Member => WitRole::Member,
        Role::Admin => WitRole::Admin,
        Role::Viewer => WitRole::Viewer,
    }
}

/// Group meta is handed back to plugins as JSON: it must be one JSON value
/// within [`MAX_META_BYTES`].
fn check_meta(meta: &str) -> Result<(), HostError> {
    if meta.len() > MAX_META_BYTES {
        return Err(HostError::TooLarge);
    }
    if serde_json::from_str::<IgnoredAny>(meta).is_err() {
        return Err(HostError::Invalid);
    }
    Ok(())
}

impl Host for HostState {
    async fn create(
        &mut self,
        name: String,
        max_members: Option<u32>,
        meta: String,
    ) -> Result<GroupInfo, HostError> {
        check_meta(&meta)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(
                s.backends
                    .groups
                    .create(&s.tenant, &name, max_members, &meta),
            )
            .await;
        let info = r.map_err(HostError::from)?;
        Ok(GroupInfo {
            created: info.created,
            max_members: (info.max_members != crate::backend::groups::UNLIMITED_MEMBERS)
                .then_some(info.max_members),
            meta: info.meta,
            closed: info.closed,
        })
    }

    async fn join(&mut self, name: String, role: WitRole) -> Result<Joined, HostError> {
        let Some(conn) = self.connection.clone() else {
            // `authenticate`: there is no connection yet.
            return Err(HostError::AccessDenied);
        };
        let Some(outbound) = conn.outbound else {
            return Err(HostError::Unavailable);
        };
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.groups.join(
                &s.tenant,
                &conn.id,
                &outbound,
                &name,
                role_from_wit(role),
            ))
            .await;
        match &r {
            Ok(j) if j.new => metrics::group(&s.tenant, &name, GroupEvent::Join),
            Err(BackendError::QuotaExceeded(_)) => {
                metrics::group(&s.tenant, &name, GroupEvent::Rejected);
            }
            _ => {}
        }
        let joined = r.map_err(HostError::from)?;
        Ok(Joined {
            new: joined.new,
            role: role_to_wit(joined.role),
            count: joined.count,
        })
    }

    async fn leave(&mut self, name: String) -> Result<bool, HostError> {
        let Some(conn) = self.connection.as_ref().map(|c| c.id.clone()) else {
            return Err(HostError::AccessDenied);
        };
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.groups.leave(&s.tenant, &conn, &name))
            .await;
        if let Ok(true) = r {
            metrics::group(&s.tenant, &name, GroupEvent::Leave);
        }
        r.map_err(HostError::from)
    }

    async fn publish(
        &mut self,
        name: String,
        event: String,
        data: String,
        role: Option<WitRole>,
    ) -> Result<(), HostError> {
        crate::groups::check_group_name(&name).map_err(HostError::from)?;
        super::pubsub::check_publish(&self.scope, &event, &data)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.groups.publish(
                &s.tenant,
                &name,
                &event,
                &data,
                role.map(role_from_wit),
            ))
            .await;
        if r.is_ok() {
            s.backends
                .publish_rates
                .record(&s.tenant, &crate::groups::channel(&name), data.len());
            metrics::group(&s.tenant, &name, GroupEvent::Publish);
        }
        r.map_err(HostError::from)
    }

    async fn members(&mut self, name: String) -> Result<Vec<GroupMember>, HostError> {
        crate::groups::check_group_name(&name).map_err(HostError::from)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.groups.store().members(&s.tenant, &name))
            .await;
        Ok(r.map_err(HostError::from)?
            .into_iter()
            .map(|m| GroupMember {
                connection_id: m.id,
                role: role_to_wit(m.role),
            })
            .collect())
    }

    async fn count(&mut self, name: String) -> Result<u64, HostError> {
        crate::groups::check_group_name(&name).map_err(HostError::from)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.groups.store().count(&s.tenant, &name))
            .await;
        r.map_err(HostError::from)
    }

    async fn get_meta(&mut self, name: String) -> Result<Option<String>, HostError> {
        crate::groups::check_group_name(&name).map_err(HostError::from)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.groups.store().meta(&s.tenant, &name))
            .await;
        r.map_err(HostError::from)
    }

    async fn set_meta(&mut self, name: String, meta: String) -> Result<(), HostError> {
        crate::groups::check_group_name(&name).map_err(HostError::from)?;
        check_meta(&meta)?;
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.groups.store().set_meta(&s.tenant, &name, &meta))
            .await;
        r.map_err(HostError::from)
    }

    async fn close(&mut self, name: String) -> Result<u32, HostError> {
        let s = &self.scope;
        let r = self
            .cpu
            .wait(s.backends.groups.close(&s.tenant, &name))
            .await;
        let n = r.map_err(HostError::from)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}
