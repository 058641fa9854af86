//! Test helpers for the Redis backends: the test Redis and a namespace per
//! test that leaves nothing behind.

use std::sync::atomic::{AtomicU32, Ordering};

use redis::aio::ConnectionManager;

/// The test Redis; `TENANTRY_TEST_REDIS_URL` overrides it.
pub fn redis_url() -> String {
    std::env::var("TENANTRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A namespace of one test; every key under it is deleted when dropped
/// (also when the test panics), and a test that passes fails here if it
/// left keys behind.
pub struct Namespace(pub String);

impl Namespace {
    /// A fresh namespace, unique per process and call.
    pub fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        Self(format!(
            "tenantry-test-{}-{nanos}-{seq}",
            std::process::id()
        ))
    }

    /// The namespace's name (the first segment of every key).
    pub fn name(&self) -> String {
        self.0.clone()
    }

    /// A KV store under the namespace.
    pub async fn kv(&self) -> super::kv::RedisKv {
        super::kv::RedisKv::new(self.conn().await, self.0.clone())
    }

    /// A new connection to the test Redis.
    pub async fn conn(&self) -> ConnectionManager {
        super::connect(&redis_url()).await.unwrap()
    }

    /// Every key under the namespace (SCAN, not KEYS).
    pub fn keys(&self) -> Vec<String> {
        let pattern = format!("{}:*", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let client = redis::Client::open(redis_url()).unwrap();
                let mut conn = client.get_connection().unwrap();
                let mut keys: Vec<String> = redis::cmd("SCAN")
                    .cursor_arg(0)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .clone()
                    .iter(&mut conn)
                    .unwrap()
                    .map(|k| k.unwrap())
                    .collect();
                keys.sort();
                keys
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let keys = self.keys();
        let _ = std::thread::scope(|s| {
            s.spawn(|| -> redis::RedisResult<()> {
                let client = redis::Client::open(redis_url())?;
                let mut conn = client.get_connection()?;
                for chunk in keys.chunks(500) {
                    redis::cmd("DEL").arg(chunk).query::<()>(&mut conn)?;
                }
                Ok(())
            })
            .join()
        });
        if !std::thread::panicking() {
            assert!(self.keys().is_empty(), "keys left under {}", self.0);
        }
    }
}

/// A tenant id for tests.
pub fn tid(s: &str) -> crate::tenant::TenantId {
    crate::tenant::TenantId::parse(s).unwrap()
}

/// A fresh breaker with the default settings.
pub fn breaker() -> std::sync::Arc<crate::backend::breaker::CircuitBreaker> {
    use crate::backend::breaker::{BreakerConfig, CircuitBreaker};
    std::sync::Arc::new(CircuitBreaker::new("redis", BreakerConfig::default()))
}

/// A fresh breaker that breaks at the first failure and stays broken for
/// a minute (for the tests of an open breaker).
pub fn tripping_breaker() -> std::sync::Arc<crate::backend::breaker::CircuitBreaker> {
    use crate::backend::breaker::{BreakerConfig, CircuitBreaker};
    std::sync::Arc::new(CircuitBreaker::new(
        "redis",
        BreakerConfig {
            failure_threshold: 1,
            reset_timeout: std::time::Duration::from_secs(60),
        },
    ))
}

/// A lazy connection to a port nobody listens on: every command fails
/// (bounded by [`super::COMMAND_TIMEOUT`], one retry).
pub async fn unreachable_conn() -> ConnectionManager {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", closed.local_addr().unwrap());
    drop(closed);
    let client = redis::Client::open(url.as_str()).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(super::COMMAND_TIMEOUT))
        .set_response_timeout(Some(super::COMMAND_TIMEOUT))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client, config).unwrap()
}
