//! [`RedisScope`]: what every Redis-backed store holds — the connection,
//! the namespace its keys live under and the breaker its calls go
//! through — and the calls it makes with them, each through the breaker,
//! bounded and with Redis errors mapped (see [`super::call`]).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, FromRedisValue, Pipeline, ScriptInvocation};

use super::keys::TenantKeys;
use super::{COMMAND_TIMEOUT, SCRIPT_TIMEOUT, call, delete_matching};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::tenant::TenantId;

/// A connection to Redis, the namespace a store's keys live under and the
/// breaker every call goes through (the one shared by the backends on the
/// same Redis). Cheap to clone; its `Debug` shows the namespace only.
#[derive(Clone)]
pub struct RedisScope {
    conn: ConnectionManager,
    namespace: String,
    breaker: Arc<CircuitBreaker>,
}

impl std::fmt::Debug for RedisScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisScope")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisScope {
    /// Calls on `conn` under `namespace` (`[a-z0-9_-]`, checked by the
    /// config), every one through `breaker`.
    pub fn new(conn: ConnectionManager, namespace: String, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            conn,
            namespace,
            breaker,
        }
    }

    /// The same scope with calls through `breaker` instead.
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.breaker = breaker;
        self
    }

    /// The names of `tenant` under the namespace.
    pub fn keys(&self, tenant: &TenantId) -> TenantKeys {
        TenantKeys::new(&self.namespace, tenant)
    }

    /// The breaker every call goes through.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// The namespace (the first segment of every key).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Run the script call `inv`, bounded by [`SCRIPT_TIMEOUT`] (which
    /// covers the reload after `NOSCRIPT`).
    pub async fn script<T: FromRedisValue>(
        &self,
        what: &str,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        call(
            &self.breaker,
            what,
            SCRIPT_TIMEOUT,
            inv.invoke_async(&mut conn),
        )
        .await
    }

    /// Run the command `cmd`, bounded by [`COMMAND_TIMEOUT`].
    pub async fn cmd<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> Result<T, BackendError> {
        self.cmd_within(what, COMMAND_TIMEOUT, cmd).await
    }

    /// Run the command `cmd`, bounded by `limit` (for the stores that
    /// bound a plain command like a script call).
    pub async fn cmd_within<T: FromRedisValue>(
        &self,
        what: &str,
        limit: Duration,
        cmd: &Cmd,
    ) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        call(&self.breaker, what, limit, cmd.query_async(&mut conn)).await
    }

    /// Run the pipeline `pipe`, bounded by [`COMMAND_TIMEOUT`].
    pub async fn pipe<T: FromRedisValue>(
        &self,
        what: &str,
        pipe: &Pipeline,
    ) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        call(
            &self.breaker,
            what,
            COMMAND_TIMEOUT,
            pipe.query_async(&mut conn),
        )
        .await
    }

    /// Delete every key starting with `prefix` (see [`delete_matching`]);
    /// how many existed.
    pub async fn delete_matching(&self, what: &str, prefix: &str) -> Result<u64, BackendError> {
        delete_matching(&self.conn, &self.breaker, what, prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::redis::test_support::{Namespace, breaker, tid};

    #[tokio::test]
    async fn debug_shows_the_namespace_only_and_keys_are_the_tenants() {
        let ns = Namespace::new();
        let scope = RedisScope::new(ns.conn().await, "ns-1".into(), breaker());
        assert_eq!(
            format!("{scope:?}"),
            r#"RedisScope { namespace: "ns-1", .. }"#
        );
        assert_eq!(scope.namespace(), "ns-1");
        assert_eq!(scope.keys(&tid("acme")).prefix(), "ns-1:t:{acme}:");
    }
}
