//! The HTTP side: axum routes, shared server state and graceful shutdown.
//!
//! Routes:
//! - `GET /ws`: WebSocket (svelte-adapter-uws protocol); tenant from the
//!   subdomain, the trusted `X-Tenant-ID` header or the default tenant.
//! - `GET /t/{tenant}/ws`: WebSocket for the tenant named in the path.
//! - `GET /healthz`: `200 ok` while the process serves.
//!
//! Modules: [`tenancy`] decides a connection's tenant, [`connect`] builds
//! the `authenticate` request, [`session`] is the frame-format-independent
//! connection state, [`ws`] is the svelte-adapter-uws codec and socket loop.

pub mod connect;
pub mod session;
pub mod tenancy;
pub mod writer;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use axum::serve::{ListenerExt, TapIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Config, Limits};
use crate::hub::Hub;
use crate::signal::Signal;
use crate::tenant::Registry;
use session::Services;
use tenancy::TenancySettings;

/// How long [`serve`] waits for WebSocket connections to finish their close
/// handshake after the shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The settings the server needs from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSettings {
    /// How connections are assigned to tenants.
    pub tenancy: TenancySettings,
    /// Per-connection limits (frame size, send queue, in-flight calls, subscriptions).
    pub limits: Limits,
}

impl ServerSettings {
    /// The server settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            tenancy: TenancySettings::from_config(config),
            limits: config.limits.clone(),
        }
    }
}

struct Shared {
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    services: Arc<Services>,
    settings: ServerSettings,
    /// Raised once shutdown started; every connection waits on it.
    shutdown: Signal<()>,
    /// Number of live WebSocket connections.
    connections: watch::Sender<usize>,
    /// Slots for refused connections held before their 4429 close
    /// (`limits.max_held_refusals`).
    refusal_holds: tokio::sync::Semaphore,
}

/// State shared by every request handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

impl AppState {
    /// State serving the tenants of `registry`, fanning out through `hub`
    /// (the same hub the backends' bus publishes into), with the sessions'
    /// `services` (replay buffers of that bus, presence, idempotency).
    pub fn new(
        registry: Arc<Registry>,
        hub: Arc<Hub>,
        services: Arc<Services>,
        settings: ServerSettings,
    ) -> Self {
        let settings_max_held = settings.limits.max_held_refusals;
        Self {
            shared: Arc::new(Shared {
                registry,
                hub,
                services,
                settings,
                shutdown: Signal::new(),
                connections: watch::Sender::new(0),
                refusal_holds: tokio::sync::Semaphore::new(
                    settings_max_held.min(tokio::sync::Semaphore::MAX_PERMITS),
                ),
            }),
        }
    }

    /// The tenants served.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }

    /// The local fan-out hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.shared.hub
    }

    /// The services every session uses.
    pub fn services(&self) -> &Arc<Services> {
        &self.shared.services
    }

    /// The server settings.
    pub fn settings(&self) -> &ServerSettings {
        &self.shared.settings
    }

    /// Number of open WebSocket connections (including ones being admitted or closed).
    pub fn connection_count(&self) -> usize {
        *self.shared.connections.borrow()
    }

    /// Start shutting down: every WebSocket connection is closed with 1001
    /// and new ones are refused the same way. [`serve`] calls this when its
    /// shutdown future completes.
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.raise(());
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        // Never lowered, so "ever raised" is "raised".
        self.shared.shutdown.ever_raised()
    }

    /// A slot to hold one refused connection before its 4429 close, if
    /// fewer than `limits.max_held_refusals` are held now.
    fn hold_refusal(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.shared.refusal_holds.try_acquire().ok()
    }

    /// Wait until shutdown has started (at once if it has).
    fn shutdown_started(&self) -> impl Future<Output = ()> + Send + '_ {
        self.shared.shutdown.wait()
    }

    /// Count a connection until the returned guard is dropped.
    fn track_connection(&self) -> ConnectionGuard {
        self.shared.connections.send_modify(|n| *n += 1);
        ConnectionGuard {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Wait until no WebSocket connection is left, at most `timeout`;
    /// `true` if all are gone.
    pub async fn wait_for_connections_closed(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.connections.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

struct ConnectionGuard {
    shared: Arc<Shared>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared
            .connections
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// `GET /metrics` (served on the admin listener): Prometheus text format.
pub async fn metrics_text() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::get()
            .map(|m| m.render())
            .unwrap_or_default(),
    )
}

/// The axum router. It needs `ConnectInfo<SocketAddr>`: serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` (as [`serve`] does).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(
                |axum::extract::State(s): axum::extract::State<AppState>| async move {
                    crate::health::readyz(&s.services().readiness).await
                },
            ),
        )
        .route("/ws", get(ws::ws_default))
        .route("/t/{tenant}/ws", get(ws::ws_tenant))
        .with_state(state)
}

/// `listener` with every accepted connection set up for realtime traffic:
/// `TCP_NODELAY`, so a frame goes out as soon as it is flushed (as realtime
/// servers do). With Nagle's algorithm a small frame to a subscriber waits
/// for the ACK of the one before it, up to the client's delayed-ACK timer
/// (about 40 ms; BENCHMARKS.md, "`TCP_NODELAY` and fan-out latency").
fn client_listener(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_nodelay)
}

/// Turn Nagle off on one accepted connection (a failure is only logged:
/// the connection still works, with higher latency).
fn set_nodelay(stream: &mut TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
    }
}

/// Serve HTTP and WebSocket on `listener` until `shutdown` completes; then
/// stop accepting, close every WebSocket with 1001 and wait (at most
/// [`SHUTDOWN_GRACE`]) for the close handshakes.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let trigger = state.clone();
    axum::serve(client_listener(listener), app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            trigger.begin_shutdown();
        })
        .await?;
    if !state.wait_for_connections_closed(SHUTDOWN_GRACE).await {
        tracing::warn!(
            open = state.connection_count(),
            "connections still open after the shutdown grace period"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;

    /// The listener `serve` uses turns Nagle's algorithm off on every
    /// connection it accepts.
    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = client_listener(listener);
        for _ in 0..2 {
            let client = TcpStream::connect(addr);
            let ((stream, peer), client) = tokio::join!(listener.accept(), client);
            let client = client.unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            assert!(
                stream.nodelay().unwrap(),
                "TCP_NODELAY on the accepted socket"
            );
        }
    }
}
