//! The Redis lock: locks shared by every host process on the same Redis and
//! namespace.
//!
//! # Layout (names built by [`TenantKeys`])
//!
//! - `{ns}:t:{<tenant>}:lock:<key>`: the holder's fencing token (decimal),
//!   with a `PX` expiry of the lease;
//! - `{ns}:t:{<tenant>}:lockseq`: the tenant's token counter (`INCR`). One
//!   counter per tenant, not per key: its tokens increase across all the
//!   tenant's keys, so also per key, and the number of counters is bounded
//!   by the number of tenants. It has no expiry, so tokens keep increasing
//!   for as long as the tenant exists (a resource that remembered a high
//!   token would otherwise refuse every holder after a counter reset);
//!   [`DistributedLock::purge_tenant`] deletes it with the tenant.
//!
//! # Scripts (each one atomic `EVALSHA`)
//!
//! - acquire: if the lock key is free, `INCR` the counter and
//!   `SET <lock> <token> NX PX <ttl>`; a taken lock burns no token;
//! - refresh: compare-and-`PEXPIRE` (only if the key holds the token);
//! - release: compare-and-`DEL`.
//!
//! A waiting acquire runs the acquire script once per try (see
//! `super::poll`). Every command goes through the shared
//! [`CircuitBreaker`]; while it is open every call fails fast with
//! `Unavailable` (a waiting acquire stops at the first error); the calls
//! are made through the store's [`RedisScope`].
//!
//! [`TenantKeys`]: crate::backend::redis::keys::TenantKeys

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{DistributedLock, LockLease, check_key, check_lease, check_wait, poll};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::backend::redis::RedisScope;
use crate::tenant::TenantId;

/// The kind (key segment) of lock keys.
const KIND: &str = "lock";

/// The fixed name of a tenant's token counter.
const COUNTER: &str = "lockseq";

/// KEYS[1] lock, KEYS[2] counter; ARGV[1] ttl ms. The token (a decimal
/// string) or false if the lock is taken.
const ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
redis.call('INCR', KEYS[2])
local token = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[1])
return token
"#;

/// KEYS[1] lock; ARGV[1] token, ARGV[2] ttl ms. 1 if extended, else 0.
const REFRESH: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// KEYS[1] lock; ARGV[1] token. 1 if deleted, else 0.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The scripts, hashed once per process.
struct Scripts {
    acquire: Script,
    refresh: Script,
    release: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire: Script::new(ACQUIRE),
    refresh: Script::new(REFRESH),
    release: Script::new(RELEASE),
});

/// A [`DistributedLock`] in Redis (see the module docs).
#[derive(Clone, Debug)]
pub struct RedisLock {
    scope: RedisScope,
}

impl RedisLock {
    /// A lock store on `conn` under `namespace` (`[a-z0-9_-]`, checked by
    /// the config), every command through `breaker` (the one shared by the
    /// backends on the same Redis).
    pub fn new(conn: ConnectionManager, namespace: String, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            scope: RedisScope::new(conn, namespace, breaker),
        }
    }

    /// The breaker every command of this store goes through.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        self.scope.breaker()
    }

    fn lock_key(&self, tenant: &TenantId, key: &str) -> String {
        self.scope.keys(tenant).name(KIND, key)
    }

    /// One try to take the lock.
    async fn try_acquire(
        &self,
        lock_key: &str,
        counter: &str,
        ttl_ms: u64,
    ) -> Result<Option<LockLease>, BackendError> {
        let mut inv = SCRIPTS.acquire.prepare_invoke();
        inv.key(lock_key).key(counter).arg(ttl_ms);
        let token: Option<String> = self.scope.script("lock acquire", &inv).await?;
        let Some(token) = token else {
            return Ok(None);
        };
        let token = token.parse().map_err(|_| {
            BackendError::Other(format!("lock acquire: bad token {token:?} in Redis"))
        })?;
        Ok(Some(LockLease { token }))
    }

    /// Run a compare-and-act `script` on the lock of `key`.
    async fn compare(
        &self,
        what: &str,
        script: &Script,
        tenant: &TenantId,
        key: &str,
        token: u64,
        ttl_ms: Option<u64>,
    ) -> Result<bool, BackendError> {
        let mut inv = script.prepare_invoke();
        inv.key(self.lock_key(tenant, key)).arg(token.to_string());
        if let Some(ms) = ttl_ms {
            inv.arg(ms);
        }
        let done: i64 = self.scope.script(what, &inv).await?;
        Ok(done == 1)
    }
}

#[async_trait]
impl DistributedLock for RedisLock {
    async fn acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<LockLease>, BackendError> {
        let ttl_ms = check_lease(key, ttl)?;
        check_wait(wait)?;
        let keys = self.scope.keys(tenant);
        let (lock_key, counter) = (keys.name(KIND, key), keys.fixed(COUNTER));
        poll(wait, || self.try_acquire(&lock_key, &counter, ttl_ms)).await
    }

    async fn refresh(
        &self,
        tenant: &TenantId,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let ttl_ms = check_lease(key, ttl)?;
        self.compare(
            "lock refresh",
            &SCRIPTS.refresh,
            tenant,
            key,
            token,
            Some(ttl_ms),
        )
        .await
    }

    async fn release(
        &self,
        tenant: &TenantId,
        key: &str,
        token: u64,
    ) -> Result<bool, BackendError> {
        check_key(key)?;
        self.compare("lock release", &SCRIPTS.release, tenant, key, token, None)
            .await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let keys = self.scope.keys(tenant);
        let removed = self
            .scope
            .delete_matching("lock purge", &keys.name(KIND, ""))
            .await?;
        let mut del = redis::cmd("DEL");
        del.arg(keys.fixed(COUNTER));
        let _: u64 = self.scope.cmd("lock purge", &del).await?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::backend::breaker::OPEN_MESSAGE;
    use crate::backend::lock::conformance;
    use crate::backend::redis::test_support::{Namespace, breaker, tid, tripping_breaker};

    async fn store(ns: &Namespace) -> RedisLock {
        RedisLock::new(ns.conn().await, ns.name(), breaker())
    }

    #[tokio::test]
    async fn redis_lock_passes_the_conformance_suite() {
        let ns = Namespace::new();
        let lock = store(&ns).await;
        conformance::suite(&lock).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Two stores on two connections are two hosts: one holder at a time,
    /// tokens increasing in the order the lock was taken.
    #[tokio::test]
    async fn mutual_exclusion_across_hosts() {
        let ns = Namespace::new();
        let (a, b) = (store(&ns).await, store(&ns).await);
        conformance::mutual_exclusion(&[&a, &b]).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn keys_stay_in_the_tenant_prefix() {
        let ns = Namespace::new();
        let lock = store(&ns).await;
        let t = tid("acme");
        let ttl = Duration::from_secs(10);
        let evil = "}:t:{other}:lock:x";
        let lease = lock
            .acquire(&t, evil, ttl, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let prefix = format!("{}:t:{{acme}}:", ns.name());
        let keys = ns.keys();
        assert_eq!(
            keys,
            [format!("{prefix}lock:{evil}"), format!("{prefix}lockseq")]
        );
        // The lock key holds the token and expires with the lease.
        let mut conn = ns.conn().await;
        let (value, ttl_ms): (String, i64) = redis::pipe()
            .cmd("GET")
            .arg(&keys[0])
            .cmd("PTTL")
            .arg(&keys[0])
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, lease.token.to_string());
        assert!((9_000..=10_000).contains(&ttl_ms), "{ttl_ms}");
        assert_eq!(lock.purge_tenant(&t).await.unwrap(), 1);
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn an_open_breaker_fails_fast() {
        let ns = Namespace::new();
        let shared = tripping_breaker();
        let lock = RedisLock::new(ns.conn().await, ns.name(), Arc::clone(&shared));
        let t = tid("acme");
        let ttl = Duration::from_secs(10);
        let lease = lock
            .acquire(&t, "k", ttl, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        shared.failure();
        let open = BackendError::Unavailable(OPEN_MESSAGE.into());
        let started = Instant::now();
        // A waiting acquire stops at the error instead of polling on.
        assert_eq!(
            lock.acquire(&t, "k2", ttl, Duration::from_secs(5)).await,
            Err(open.clone())
        );
        assert_eq!(
            lock.refresh(&t, "k", lease.token, ttl).await,
            Err(open.clone())
        );
        assert_eq!(lock.release(&t, "k", lease.token).await, Err(open));
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        shared.reset();
        assert_eq!(lock.release(&t, "k", lease.token).await, Ok(true));
        lock.purge_tenant(&t).await.unwrap();
    }
}
