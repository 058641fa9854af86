//! A tenant's schema and role: their names, the role's password, creating
//! them (idempotent, serialised across hosts) and dropping them.
//!
//! The role logs in itself (plugin SQL never runs on a superuser
//! connection that switched role, which `RESET ROLE` would undo), owns
//! exactly its schema, is a member of no role, and has no attribute beyond
//! `LOGIN`. Its `search_path` is its schema and its `statement_timeout` the
//! plan's, both as role defaults, so every session starts that way.

use sha2::{Digest, Sha256};
use tokio_postgres::Transaction;

use super::{SqlFailure, SqlLimits, admin_failure};
use crate::tenant::TenantId;

/// Longest identifier Postgres keeps (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;
/// Hex digits of the tenant id's SHA-256 in its schema and role name.
const HASH_DIGITS: usize = 12;
/// First key of the advisory lock taken while a tenant's role and schema
/// are created or dropped (the second is `hashtext(name)`): `tnsq`.
const PROVISION_LOCK_CLASS: i32 = 0x746e_7371;

/// The name of `tenant`'s schema and role: `{prefix}_t_{id}_{hash}`, with
/// `-` written `_` and the id cut to fit 63 bytes; `hash`, the first 12 hex
/// digits of the SHA-256 of the exact id, keeps `a-b` and `a_b` (and ids
/// that share a long start) apart.
pub fn tenant_ident(prefix: &str, tenant: &TenantId) -> String {
    let id = tenant.as_str();
    let hash = hex::encode(Sha256::digest(id.as_bytes()));
    let room = MAX_IDENTIFIER.saturating_sub(prefix.len() + "_t_".len() + 1 + HASH_DIGITS);
    let encoded: String = id
        .chars()
        .take(room)
        .map(|c| if c == '-' { '_' } else { c })
        .collect();
    format!("{prefix}_t_{encoded}_{}", &hash[..HASH_DIGITS])
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The password of `tenant`'s role: HMAC-SHA256(`secret`, tenant id), hex.
pub fn tenant_password(secret: &[u8], tenant: &TenantId) -> String {
    hex::encode(hmac_sha256(secret, tenant.as_str().as_bytes()))
}

/// HMAC-SHA256 (RFC 2104) over `sha2`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

async fn lock(tx: &Transaction<'_>, name: &str) -> Result<(), SqlFailure> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&PROVISION_LOCK_CLASS, &name],
    )
    .await
    .map_err(admin_failure)?;
    Ok(())
}

async fn role_exists(tx: &Transaction<'_>, name: &str) -> Result<bool, SqlFailure> {
    Ok(tx
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .map_err(admin_failure)?
        .is_some())
}

/// Create (or bring up to date) the role and schema `name` with
/// `password` and `limits`, inside `tx`, holding the tenant's advisory
/// lock. Refuses (and so rolls back) when the role could create objects
/// in `public` or has been made a member of another role. (Nothing is
/// granted or revoked on `public` itself: its ACL is one catalog row that
/// concurrent provisioning of two tenants would both update, and the role
/// never held a grant there; the check is what matters.)
pub async fn provision(
    tx: &Transaction<'_>,
    name: &str,
    password: &str,
    limits: &SqlLimits,
) -> Result<(), SqlFailure> {
    lock(tx, name).await?;
    let role = quote_ident(name);
    // The password is hex: safe inside a literal (utility statements take
    // no parameters).
    let attributes = format!(
        "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS \
         CONNECTION LIMIT {} PASSWORD '{password}'",
        limits.max_connections
    );
    let verb = if role_exists(tx, name).await? {
        "ALTER"
    } else {
        "CREATE"
    };
    let statements = [
        format!("{verb} ROLE {role} WITH {attributes}"),
        format!("CREATE SCHEMA IF NOT EXISTS {role} AUTHORIZATION {role}"),
        format!("ALTER SCHEMA {role} OWNER TO {role}"),
        // A role may change its own defaults (and password): provisioning
        // puts back exactly the host's.
        format!("ALTER ROLE {role} RESET ALL"),
        format!("ALTER ROLE {role} SET search_path = {role}"),
        format!(
            "ALTER ROLE {role} SET statement_timeout = {}",
            limits.timeout.as_millis()
        ),
        // A superuser-only setting: the tenant cannot raise it.
        format!(
            "ALTER ROLE {role} SET temp_file_limit = '{}MB'",
            limits.max_temp_file_mb
        ),
    ];
    for s in &statements {
        tx.batch_execute(s).await.map_err(admin_failure)?;
    }
    let row = tx
        .query_one(
            "SELECT has_schema_privilege($1, 'public', 'CREATE'), \
                    (SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
                     WHERE r.rolname = $1)",
            &[&name],
        )
        .await
        .map_err(admin_failure)?;
    let (create_in_public, memberships): (bool, i64) = (row.get(0), row.get(1));
    if create_in_public {
        return Err(SqlFailure::unavailable(format!(
            "tenant role {name} could create objects in schema public (PUBLIC has CREATE on it); \
             run `REVOKE CREATE ON SCHEMA public FROM PUBLIC` (the default since PostgreSQL 15)"
        )));
    }
    if memberships > 0 {
        return Err(SqlFailure::unavailable(format!(
            "tenant role {name} is a member of {memberships} role(s); a tenant role must be a member of none"
        )));
    }
    Ok(())
}

/// Stop `name` from logging in (committed on its own, before its sessions
/// are ended).
pub async fn disable_login(tx: &Transaction<'_>, name: &str) -> Result<bool, SqlFailure> {
    lock(tx, name).await?;
    if !role_exists(tx, name).await? {
        return Ok(false);
    }
    tx.batch_execute(&format!("ALTER ROLE {} NOLOGIN", quote_ident(name)))
        .await
        .map_err(admin_failure)?;
    Ok(true)
}

/// End every session of `name`, drop its schema with everything in it,
/// everything else it owns, and the role. `true` if there was anything.
pub async fn drop_tenant(tx: &Transaction<'_>, name: &str) -> Result<bool, SqlFailure> {
    lock(tx, name).await?;
    let role = quote_ident(name);
    let exists = role_exists(tx, name).await?;
    tx.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename = $1 AND pid <> pg_backend_pid()",
        &[&name],
    )
    .await
    .map_err(admin_failure)?;
    let schema = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&name])
        .await
        .map_err(admin_failure)?
        .is_some();
    tx.batch_execute(&format!("DROP SCHEMA IF EXISTS {role} CASCADE"))
        .await
        .map_err(admin_failure)?;
    if exists {
        tx.batch_execute(&format!("DROP OWNED BY {role} CASCADE; DROP ROLE {role}"))
            .await
            .map_err(admin_failure)?;
    }
    Ok(exists || schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn names_are_unique_short_and_plain() {
        // Tenant ids have no `_`, but the hash keeps names apart anyway.
        let a = tenant_ident("tenantry", &id("a-b"));
        let b = tenant_ident("tenantry", &id("ab"));
        assert_ne!(a, b);
        assert!(a.starts_with("tenantry_t_a_b_"), "{a}");
        assert_eq!(a.len(), "tenantry_t_a_b_".len() + HASH_DIGITS);
        let long = "x".repeat(63);
        let l1 = tenant_ident("abcdefghijklmnop", &id(&long));
        let l2 = tenant_ident("abcdefghijklmnop", &id(&format!("{}y", &long[..62])));
        assert!(l1.len() <= MAX_IDENTIFIER, "{l1}");
        assert_ne!(l1, l2, "ids differing past the cut stay apart");
        assert!(
            l1.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_ne!(
            tenant_password(b"s", &id("a")),
            tenant_password(b"s", &id("b"))
        );
    }
}
