//! Health and readiness: `/healthz` (the process serves HTTP) and `/readyz`
//! (it can do its work: the registry is loaded and every backend's circuit
//! breaker is closed), on the public and the admin listener.
//!
//! `/readyz` answers `200` with `{"ready": true, "checks": {...}}`, or
//! `503` with `"ready": false` and, for each failing check, why: a load
//! balancer takes the host out of rotation while Redis is unreachable and
//! puts it back once the breaker closes.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::backend::breaker::{BreakerState, CircuitBreaker};

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Readiness {
    breakers: Vec<Arc<CircuitBreaker>>,
}

impl Readiness {
    /// Ready while every one of `breakers` is healthy (the registry is
    /// loaded before a listener serves).
    pub fn new(breakers: Vec<Arc<CircuitBreaker>>) -> Self {
        Self { breakers }
    }

    /// The status and JSON body of `/readyz`.
    pub fn report(&self) -> (StatusCode, Value) {
        let mut checks = Map::new();
        checks.insert("registry".into(), json!({"ok": true}));
        let mut ready = true;
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
pub fn readyz(readiness: &Readiness) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (status, body) = readiness.report();
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::breaker::BreakerConfig;

    #[test]
    fn ready_only_while_every_breaker_is_closed() {
        let redis = Arc::new(CircuitBreaker::new(
            "redis",
            BreakerConfig {
                failure_threshold: 1,
                ..BreakerConfig::default()
            },
        ));
        let r = Readiness::new(vec![Arc::clone(&redis)]);
        let (status, body) = r.report();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["checks"]["redis"]["state"], "healthy");
        redis.failure();
        let (status, body) = r.report();
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
            Readiness::default().report().0,
            StatusCode::OK,
            "memory only"
        );
    }
}
