//! Who is calling the admin API: the operator (the token from
//! `TENANTRY_ADMIN_TOKEN`) or a tenant's deploy key.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::AdminState;
use super::error::ApiError;
use crate::control::Actor;
use crate::tenant::TenantId;

/// The authenticated caller of an admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator: every route.
    Operator,
    /// A deploy key of `tenant`: its own tenant's read and plugin routes.
    Key {
        /// The tenant the key belongs to.
        tenant: TenantId,
        /// The key's id.
        key_id: String,
    },
}

impl Caller {
    /// Refuse deploy keys (`403`).
    pub fn operator_only(&self) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Key { .. } => Err(ApiError::forbidden(
                "this route needs the operator token; deploy keys cannot use it",
            )),
        }
    }

    /// Allow the operator and `tenant`'s own deploy keys (`403` for
    /// another tenant's key); the actor to record.
    pub fn for_tenant(&self, tenant: &TenantId) -> Result<Actor, ApiError> {
        match self {
            Caller::Operator => Ok(Actor::Operator),
            Caller::Key {
                tenant: own,
                key_id,
            } if own == tenant => Ok(Actor::Key(key_id.clone())),
            Caller::Key { .. } => Err(ApiError::forbidden(
                "this deploy key belongs to another tenant",
            )),
        }
    }
}

/// Equal in constant time (both sides hashed first, so lengths match).
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl FromRequestParts<AdminState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer TOKEN`")
            })?;
        if same_secret(token, &state.token) {
            return Ok(Caller::Operator);
        }
        match state.control.authenticate_key(token) {
            Some((tenant, key_id)) => Ok(Caller::Key { tenant, key_id }),
            None => Err(ApiError::unauthorized("unknown token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "x"));
    }
}
