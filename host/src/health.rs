//! Health and readiness: `/healthz` (the process serves HTTP) and `/readyz`
//! (it can do its work: the registry is loaded and every backend's circuit
//! breaker is closed), on the public and the admin listener.
//!
//! With the registry in Postgres, `/readyz` also runs `SELECT 1` on it.
//!
//! `/readyz` answers `200` with `{"ready": true, "checks": {...}}`, or
//! `503` with `"ready": false` and, for each failing check, why: a load
//! balancer takes the host out of rotation while Redis is unreachable and
//! puts it back once the breaker closes.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::backend::breaker::{BreakerState, CircuitBreaker};
use crate::catalog::CatalogStore;

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Readiness {
    breakers: Vec<Arc<CircuitBreaker>>,
    catalog: Option<Arc<dyn CatalogStore>>,
}

impl Readiness {
    /// Ready while every one of `breakers` is healthy (the registry is
    /// loaded before a listener serves).
    pub fn new(breakers: Vec<Arc<CircuitBreaker>>) -> Self {
        Self {
            breakers,
            catalog: None,
        }
    }

    /// The same checks plus the registry store's own health check.
    pub fn with_catalog(mut self, catalog: Arc<dyn CatalogStore>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// The status and JSON body of `/readyz`.
    pub async fn report(&self) -> (StatusCode, Value) {
        let mut checks = Map::new();
        let mut ready = true;
        let registry = match &self.catalog {
            Some(c) => c.health().await,
            None => None,
        };
        match registry {
            None => {
                checks.insert("registry".into(), json!({"ok": true}));
            }
            Some((store, Ok(()))) => {
                checks.insert("registry".into(), json!({"ok": true, "store": store}));
            }
            Some((store, Err(e))) => {
                ready = false;
                checks.insert(
                    "registry".into(),
                    json!({"ok": false, "store": store, "reason": e.to_string()}),
                );
            }
        }
        for b in &self.breakers {
            let state = b.state();
            let ok = state == BreakerState::Healthy;
            ready &= ok;
            let mut check = json!({
                "ok": ok,
                "state": match state {
                    BreakerState::Healthy => "healthy",
                    BreakerState::Probing => "probing",
                    BreakerState::Broken => "broken",
                },
            });
            if !ok {
                check["reason"] = json!(format!(
                    "{} is unreachable: the circuit breaker opened after {} failed commands",
                    b.name(),
                    b.failures()
                ));
            }
            checks.insert(b.name().to_owned(), check);
        }
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, json!({"ready": ready, "checks": checks}))
    }
}

/// The `/readyz` response for `readiness`.
pub async fn readyz(readiness: &Readiness) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (status, body) = readiness.report().await;
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::breaker::BreakerConfig;

    #[tokio::test]
    async fn ready_only_while_every_breaker_is_closed() {
        let redis = Arc::new(CircuitBreaker::new(
            "redis",
            BreakerConfig {
                failure_threshold: 1,
                ..BreakerConfig::default()
            },
        ));
        let r = Readiness::new(vec![Arc::clone(&redis)]);
        let (status, body) = r.report().await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["checks"]["redis"]["state"], "healthy");
        redis.failure();
        let (status, body) = r.report().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["ready"], false);
        assert_eq!(body["checks"]["redis"]["state"], "broken");
        assert!(
            body["checks"]["redis"]["reason"]
                .as_str()
                .unwrap()
                .contains("redis")
        );
        assert_eq!(
            Readiness::default().report().await.0,
            StatusCode::OK,
            "memory only"
        );
    }
}
