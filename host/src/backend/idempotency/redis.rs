//! The Redis idempotency store: records shared by every host process on
//! the same Redis and namespace.
//!
//! # Layout
//!
//! One string per record, `{ns}:t:{<tenant>}:idem:<key>` (built by
//! [`TenantKeys`]), with a `PX` expiry: `P` while pending, `D` followed by
//! the result once committed.
//!
//! # Commands (each one atomic round trip)
//!
//! - acquire: `SET <key> P NX PX <pending_ttl> GET` (Redis ≥ 7.0): sets
//!   the pending marker only if the key is absent and returns what was
//!   there, so exactly one concurrent caller sees "absent" (`Acquired`);
//! - commit: `SET <key> D<result> PX <ttl>`, replacing whatever is there;
//! - abort: a Lua compare-and-delete: deletes only a pending marker.
//!
//! Every command goes through the shared [`CircuitBreaker`]; while it is
//! open every call fails fast with `Unavailable`. The calls are made
//! through the store's [`RedisScope`].
//!
//! Records are bounded only by their TTLs (results at most
//! [`super::MAX_RESULT_BYTES`] each, kept at most [`super::MAX_TTL`]).
//!
//! [`TenantKeys`]: crate::backend::redis::keys::TenantKeys

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{IdemAcquire, IdempotencyStore, check_key, check_result, ttl_ms};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::backend::redis::RedisScope;
use crate::tenant::TenantId;

/// The kind (key segment) of idempotency records.
const KIND: &str = "idem";

/// The value of a pending record.
const PENDING: &str = "P";

/// The prefix of a committed record's value.
const DONE: char = 'D';

/// KEYS[1] the record. Deletes it if pending: 1, else 0.
const ABORT: &str = r#"
if redis.call('GET', KEYS[1]) == 'P' then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

static ABORT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ABORT));

/// An [`IdempotencyStore`] in Redis (see the module docs).
#[derive(Clone, Debug)]
pub struct RedisIdempotency {
    scope: RedisScope,
}

impl RedisIdempotency {
    /// A store on `conn` under `namespace` (`[a-z0-9_-]`, checked by the
    /// config), every command through `breaker` (the one shared by the
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

    fn record(&self, tenant: &TenantId, key: &str) -> String {
        self.scope.keys(tenant).name(KIND, key)
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn acquire(
        &self,
        tenant: &TenantId,
        key: &str,
        pending_ttl: Duration,
    ) -> Result<IdemAcquire, BackendError> {
        check_key(key)?;
        let ms = ttl_ms("pending ttl", pending_ttl)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.record(tenant, key))
            .arg(PENDING)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .arg("GET");
        let before: Option<String> = self.scope.cmd("idempotency acquire", &cmd).await?;
        match before.as_deref() {
            None => Ok(IdemAcquire::Acquired),
            Some(PENDING) => Ok(IdemAcquire::Pending),
            Some(value) => match value.strip_prefix(DONE) {
                Some(result) => Ok(IdemAcquire::Done(result.to_owned())),
                None => Err(BackendError::Other(format!(
                    "idempotency acquire: unexpected record {:?} in Redis",
                    value.chars().take(16).collect::<String>()
                ))),
            },
        }
    }

    async fn commit(
        &self,
        tenant: &TenantId,
        key: &str,
        result: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        check_key(key)?;
        check_result(result)?;
        let ms = ttl_ms("result ttl", ttl)?;
        let mut value = String::with_capacity(result.len() + 1);
        value.push(DONE);
        value.push_str(result);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.record(tenant, key))
            .arg(value)
            .arg("PX")
            .arg(ms);
        let () = self.scope.cmd("idempotency commit", &cmd).await?;
        Ok(())
    }

    async fn abort(&self, tenant: &TenantId, key: &str) -> Result<bool, BackendError> {
        check_key(key)?;
        let mut inv = ABORT_SCRIPT.prepare_invoke();
        inv.key(self.record(tenant, key));
        let deleted: i64 = self.scope.script("idempotency abort", &inv).await?;
        Ok(deleted == 1)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let prefix = self.scope.keys(tenant).name(KIND, "");
        self.scope
            .delete_matching("idempotency purge", &prefix)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::backend::breaker::OPEN_MESSAGE;
    use crate::backend::idempotency::conformance;
    use crate::backend::redis::test_support::{Namespace, breaker, tid, tripping_breaker};

    async fn store(ns: &Namespace) -> RedisIdempotency {
        RedisIdempotency::new(ns.conn().await, ns.name(), breaker())
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn redis_idempotency_passes_the_conformance_suite() {
        let ns = Namespace::new();
        let s = store(&ns).await;
        conformance::suite(&s).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    /// Two stores on two connections are two hosts: one `Acquired` among
    /// 20 concurrent acquires, and everybody sees the committed result.
    #[tokio::test]
    async fn exactly_one_acquire_across_hosts() {
        let ns = Namespace::new();
        let (a, b) = (store(&ns).await, store(&ns).await);
        conformance::concurrent_acquires(&[&a, &b]).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn keys_stay_in_the_tenant_prefix() {
        let ns = Namespace::new();
        let s = store(&ns).await;
        let t = tid("acme");
        let evil = "}:t:{other}:idem:x";
        assert_eq!(s.acquire(&t, evil, LONG).await, Ok(IdemAcquire::Acquired));
        s.commit(&t, "done", "{\"a\":1}", Duration::from_secs(10))
            .await
            .unwrap();
        let prefix = format!("{}:t:{{acme}}:idem:", ns.name());
        assert_eq!(
            ns.keys(),
            [format!("{prefix}done"), format!("{prefix}{evil}")]
        );
        let mut conn = ns.conn().await;
        let (value, ttl): (String, i64) = redis::pipe()
            .cmd("GET")
            .arg(format!("{prefix}done"))
            .cmd("PTTL")
            .arg(format!("{prefix}done"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, "D{\"a\":1}");
        assert!((9_000..=10_000).contains(&ttl), "{ttl}");
        // A record this store did not write is an error, not a result.
        let () = redis::cmd("SET")
            .arg(format!("{prefix}odd"))
            .arg("garbage")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(matches!(
            s.acquire(&t, "odd", LONG).await,
            Err(BackendError::Other(_))
        ));
        assert_eq!(s.purge_tenant(&t).await.unwrap(), 3);
        assert_eq!(ns.keys(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn an_open_breaker_fails_fast() {
        let ns = Namespace::new();
        let shared = tripping_breaker();
        let s = RedisIdempotency::new(ns.conn().await, ns.name(), Arc::clone(&shared));
        let t = tid("acme");
        assert_eq!(s.acquire(&t, "k", LONG).await, Ok(IdemAcquire::Acquired));
        shared.failure();
        let open = BackendError::Unavailable(OPEN_MESSAGE.into());
        let started = Instant::now();
        assert_eq!(s.acquire(&t, "k2", LONG).await, Err(open.clone()));
        assert_eq!(s.commit(&t, "k", "1", LONG).await, Err(open.clone()));
        assert_eq!(s.abort(&t, "k").await, Err(open));
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        shared.reset();
        assert_eq!(s.acquire(&t, "k2", LONG).await, Ok(IdemAcquire::Acquired));
        assert_eq!(s.acquire(&t, "k", LONG).await, Ok(IdemAcquire::Pending));
        assert_eq!(s.purge_tenant(&t).await.unwrap(), 2);
    }
}
