//! The svelte-adapter-uws 0.5 WebSocket endpoint (with svelte-realtime RPC):
//! the upgrade handler, the admission steps and the per-connection poll
//! loop that reads, handles and writes frames. Frames are decoded and
//! encoded by [`crate::protocol`]; the connection state lives in
//! [`Session`].
//!
//! Admission, in order: the tenant is resolved from the request
//! ([`super::tenancy`]); the upgrade is always accepted; an unknown or
//! suspended tenant is then closed with 1008 before any other frame; the
//! plugin's `authenticate` decides the user (a live error `UNAUTHENTICATED`
//! closes with 4401, `FORBIDDEN` with 4403, anything else with 1008); then
//! `welcome{sessionId}` is sent.
//!
//! `resume` and `replay` are answered from the replay buffers
//! ([`crate::backend::replay`]). Frames the host accepts but does not act
//! on (documented in `docs/protocol.md`): `reply` (the host sends no server
//! requests yet), unknown `type`s, custom
//! user messages and binary frames that are not RPC. Stream RPCs
//! (`"stream":true`) are answered `INVALID_REQUEST`. A call's
//! `idempotencyKey` makes it run at most once per key, path and user
//! ([`Session::call`]).

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::Response;
use futures_util::StreamExt;
use tracing::Instrument;

use super::connect::{connect_request, truncate_utf8};
use super::session::{CatchUp, PresenceSnapshot, Session};
use super::tenancy::{self, TENANT_HEADER, TenancyError};
use super::writer::Writer;
use super::{AppState, ConnectionGuard};
use crate::cursors;
use crate::metrics::{self, RefusalKind};
use crate::outbound::{self, Outbound};
use crate::presence;
use crate::protocol::{self, ClientFrame, ProtocolError, Ref, RpcCall, RpcErrorBody};
use crate::quota::{ConnectionQuota, ConnectionSlot, MessageVerdict, Refusal};
use crate::runtime::{CallError, ConnectRequest, Plugin};
use crate::tenant::{Tenant, canary_bucket};

/// Most topics of one `resume` frame that are replayed (the rest are left
/// to the client's resubscribe).
pub const MAX_RESUME_TOPICS: usize = protocol::MAX_SUBSCRIBE_BATCH;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: try again later (the tenant has no active plugin version yet).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Close code: policy violation (unknown/suspended tenant, refused connection). Terminal for clients.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: message too big (over `max_frame_bytes`).
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: `authenticate` said `UNAUTHENTICATED`. Terminal for clients.
pub const CLOSE_UNAUTHENTICATED: u16 = 4401;
/// Close code: `authenticate` said `FORBIDDEN`. Terminal for clients.
pub const CLOSE_FORBIDDEN: u16 = 4403;
/// Close code: throttled. The connection kept sending while over its
/// message rate, or the tenant is over `connects_per_sec` or at
/// `max_connections`, or its plugin is at `max_concurrent_calls` when
/// authenticating. Clients back off harder.
pub const CLOSE_RATE_LIMITED: u16 = 4429;
/// Largest inbound message accepted from a connection whose tenant is
/// unknown (it is closed with 1008 before anything is read anyway).
const UNKNOWN_TENANT_MAX_FRAME: usize = 8 * 1024;

/// Read buffer per connection, and the most one read from the socket takes.
/// tungstenite's default (128 KiB) would be touched on the first read and
/// dominate the memory of idle connections. Most frames are smaller than
/// this and arrive in one read; a larger frame takes one read per 512
/// bytes (the buffer grows to hold the whole frame while it is read).
const READ_BUFFER_BYTES: usize = 512;
/// At most this many frames are read and handled in one poll of a
/// connection before it lets other tasks run.
const READ_BATCH: usize = 16;
/// How long a closing connection waits for the peer's close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// After closing with 1009 the rest of the oversized message cannot be read
/// (the library stops parsing); keep the socket open this long so the peer
/// can read our close frame before the TCP connection goes away.
const TOO_BIG_LINGER: Duration = Duration::from_millis(500);
/// Error code for `"stream":true` calls, which are not supported yet.
const STREAM_UNSUPPORTED: &str = "stream calls are not supported yet";

/// `GET /ws`: tenant from subdomain, trusted header or default.
pub async fn ws_default(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, None, remote, headers, uri, upgrade)
}

/// `GET /t/{tenant}/ws`: tenant from the path.
pub async fn ws_tenant(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, Some(tenant), remote, headers, uri, upgrade)
}

fn accept(
    state: AppState,
    path_tenant: Option<String>,
    remote: SocketAddr,
    headers: HeaderMap,
    uri: Uri,
    upgrade: WebSocketUpgrade,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let tenant_header = headers.get(TENANT_HEADER).and_then(|h| h.to_str().ok());
    let resolved = tenancy::resolve_tenant(
        path_tenant.as_deref(),
        host,
        tenant_header,
        &state.settings().tenancy,
    );
    let request = connect_request(&headers, &uri, remote);
    let max = resolved
        .as_ref()
        .ok()
        .and_then(|id| state.registry().get(id))
        .map_or(UNKNOWN_TENANT_MAX_FRAME, |t| {
            usize::try_from(t.quota.plan().max_frame_bytes).unwrap_or(usize::MAX)
        });
    let upgrading = Box::new((state, resolved, request));
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        // Boxed: axum's upgrade task keeps its callback for the
        // connection's life, so the callback holds only a pointer.
        .on_upgrade(move |socket| {
            let (state, resolved, request) = *upgrading;
            run_connection(socket, state, resolved, request)
        })
}

/// Send a close frame as the only frame and wait (bounded) for the peer's reply.
async fn close_now(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(truncate_utf8(reason, 123).as_ref()),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// Close a connection refused before `welcome` with 4429 and `reason`,
/// after holding it unread for `limits.refused_connect_hold_ms` (if a hold
/// slot is free; shutdown ends the hold). A client retrying in a tight loop
/// then makes a few attempts per second per socket instead of thousands,
/// each of which would cost an accept, an upgrade and a close.
async fn close_throttled(socket: WebSocket, state: &AppState, reason: &str) {
    let hold = state.settings().limits.refused_connect_hold();
    if !hold.is_zero()
        && let Some(_slot) = state.hold_refusal()
    {
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            () = state.shutdown_started() => {}
        }
    }
    close_now(socket, CLOSE_RATE_LIMITED, reason).await;
}

/// The close code and reason for a failed `authenticate`.
pub fn authenticate_close(err: &CallError) -> (u16, String) {
    match err {
        CallError::Live(e) if e.code == "UNAUTHENTICATED" => {
            (CLOSE_UNAUTHENTICATED, e.message.clone())
        }
        CallError::Live(e) if e.code == "FORBIDDEN" => (CLOSE_FORBIDDEN, e.message.clone()),
        CallError::Live(e) => (CLOSE_POLICY, e.code.clone()),
        CallError::Overloaded => (CLOSE_RATE_LIMITED, "tenant overloaded".to_owned()),
        CallError::FaultBudget(_) => (
            CLOSE_RATE_LIMITED,
            "the tenant's plugin failed too often".to_owned(),
        ),
        _ => (CLOSE_POLICY, "authentication failed".to_owned()),
    }
}

/// One connection's life. Opening (the tenant checks, `authenticate`, the
/// welcome) and closing run in boxed futures of their own, so that while
/// the connection is open its task holds only what [`serve`] needs: that
/// is what every idle connection costs.
fn run_connection(
    socket: WebSocket,
    state: AppState,
    resolved: Result<crate::tenant::TenantId, TenancyError>,
    request: ConnectRequest,
) -> impl Future<Output = ()> + Send + 'static {
    let opening = Box::pin(open_connection(socket, state, resolved, request));
    async move {
        // Not `if let`: its scrutinee would keep a second `Open` in this
        // future for the connection's life.
        let Some((open, span)) = opening.await else {
            return;
        };
        serve(open).instrument(span).await;
    }
}

/// An open connection: what [`serve`] needs while it is open.
struct Open {
    state: AppState,
    conn: Connection,
    socket: WebSocket,
    /// The connection's outbound queue, written to `socket` by [`drive`].
    rx: outbound::Receiver,
    /// Count the connection for graceful shutdown and hold the tenant's
    /// connection slot.
    _guards: (ConnectionGuard, ConnectionSlot),
}

/// Admit the connection: refuse it (closing with the code the refusal
/// calls for) or authenticate it and send `welcome`. Returns the open
/// connection and its `conn` span.
async fn open_connection(
    socket: WebSocket,
    state: AppState,
    resolved: Result<crate::tenant::TenantId, TenancyError>,
    request: ConnectRequest,
) -> Option<(Open, tracing::Span)> {
    let tracked = state.track_connection();
    if state.is_shutting_down() {
        close_now(socket, CLOSE_GOING_AWAY, "server shutting down").await;
        return None;
    }
    let tenant = match resolved {
        Ok(id) => match state.registry().get(&id) {
            Some(t) if t.is_suspended() => {
                tracing::debug!(tenant = %id, "connection refused: tenant suspended");
                close_now(socket, CLOSE_POLICY, "tenant suspended").await;
                return None;
            }
            Some(t) => t,
            None => {
                tracing::debug!(tenant = %id, "connection refused: unknown tenant");
                close_now(socket, CLOSE_POLICY, "unknown tenant").await;
                return None;
            }
        },
        Err(e) => {
            tracing::debug!(error = ?e, "connection refused");
            close_now(socket, CLOSE_POLICY, &e.to_string()).await;
            return None;
        }
    };
    let slot = match tenant.quota.try_connect() {
        Ok(slot) => slot,
        Err(refusal) => {
            let (kind, reason) = match refusal {
                Refusal::RateLimited { .. } => {
                    (RefusalKind::ConnectRate, "tenant connection rate exceeded")
                }
                Refusal::Full => (RefusalKind::Connections, "tenant connection limit reached"),
            };
            metrics::refusal(&tenant.id, kind);
            tracing::debug!(tenant = %tenant.id, reason, "connection refused");
            // Boxed: its timer would otherwise grow every connection's future.
            Box::pin(close_throttled(socket, &state, reason)).await;
            return None;
        }
    };
    let session_id = uuid::Uuid::new_v4().to_string();
    let Some(plugin) = tenant.plugin_for(canary_bucket(&session_id)) else {
        tracing::debug!(tenant = %tenant.id, "connection refused: no active plugin version");
        close_now(socket, CLOSE_TRY_AGAIN_LATER, "no plugin deployed").await;
        return None;
    };
    let span = tracing::info_span!(
        "conn",
        tenant = %tenant.id,
        plugin_version = %plugin.version,
        session = %session_id,
        user = tracing::field::Empty,
    );
    let open = start_session(
        socket,
        state,
        tenant,
        plugin,
        session_id,
        request,
        (tracked, slot),
    )
    .instrument(span.clone())
    .await?;
    Some((open, span))
}

/// Run `authenticate`, then create the session and send `welcome`. `None`
/// if the connection was closed instead. `guards` stay with the open
/// connection.
async fn start_session(
    mut socket: WebSocket,
    state: AppState,
    tenant: Arc<Tenant>,
    plugin: Arc<Plugin>,
    session_id: String,
    request: ConnectRequest,
    guards: (ConnectionGuard, ConnectionSlot),
) -> Option<Open> {
    let authenticated = tokio::select! {
        biased;
        eviction = tenant.evicted() => Err(eviction),
        // Boxed: a plugin call's future is large.
        user = Box::pin(plugin.authenticate(request)) => Ok(user),
    };
    drop(plugin);
    let authenticated = match authenticated {
        Ok(authenticated) => authenticated,
        Err(eviction) => {
            close_now(socket, eviction.code, &eviction.reason).await;
            return None;
        }
    };
    let user = match authenticated {
        Ok(user) => user,
        Err(e) => {
            let (code, reason) = authenticate_close(&e);
            match &e {
                CallError::Live(_) => tracing::debug!(code, error = %e, "authenticate refused"),
                _ => tracing::warn!(code, error = %e, "authenticate failed"),
            }
            if code == CLOSE_RATE_LIMITED {
                Box::pin(close_throttled(socket, &state, &reason)).await;
            } else {
                close_now(socket, code, &reason).await;
            }
            return None;
        }
    };
    let plan = tenant.quota.plan();
    let as_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let max_inflight = as_usize(plan.max_inflight_calls_per_connection);
    let (tx, rx) = outbound::queue(state.settings().limits.send_queue);
    let hub = state.hub().connect(
        tenant.id.clone(),
        tx.clone(),
        as_usize(plan.max_subscriptions_per_connection),
    );
    let session = Arc::new(Session::new(
        session_id,
        tenant,
        user,
        hub,
        Arc::clone(state.services()),
        max_inflight,
    ));
    if socket
        .send(Message::Text(protocol::welcome(session.id()).into()))
        .await
        .is_err()
    {
        return None;
    }
    if let Some(user) = session.user() {
        tracing::Span::current().record("user", user.id.as_str());
    }
    tracing::debug!("connected");
    Some(Open {
        state,
        conn: Connection {
            session,
            tx,
            max_inflight,
            quota: ConnectionQuota::new(),
        },
        socket,
        rx,
        _guards: guards,
    })
}

/// Run the open connection until it closes, then close it.
///
/// A plain fn around an `async move` block, not an `async fn`: an async
/// fn stores its arguments twice in its future (as captured and as
/// locals), and the block uses `open` in place, so every open connection
/// holds it once.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve(mut open: Open) -> impl Future<Output = ()> + Send {
    async move {
        let close = drive(&mut open.socket, &mut open.rx, &open.conn, &open.state).await;
        let Open {
            conn,
            socket,
            rx,
            _guards,
            ..
        } = open;
        let session = Arc::clone(&conn.session);
        session.close();
        drop(conn);
        drop(rx);
        // Boxed: allocated only while the connection closes.
        Box::pin(close_connection(session, socket, close)).await;
    }
}

/// Close a connection whose poll loop ended: presence leaves go out (to
/// other connections) whatever the close; then, if the server closes, the
/// close frame (frames still queued are discarded) and a bounded wait for
/// the peer's.
async fn close_connection(session: Arc<Session>, mut socket: WebSocket, close: CloseRequest) {
    session.leave_all_presence().await;
    drop(session);
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate_utf8(&reason, 123).as_ref()),
        };
        // A peer that does not read can block the send: give up on it.
        let sent = tokio::time::timeout(
            CLOSE_HANDSHAKE_TIMEOUT,
            socket.send(Message::Close(Some(frame))),
        )
        .await;
        if matches!(sent, Ok(Ok(()))) {
            if code == CLOSE_TOO_BIG {
                tokio::time::sleep(TOO_BIG_LINGER).await;
            } else {
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                    while let Some(Ok(_)) = socket.next().await {}
                })
                .await;
            }
        }
    }
    tracing::debug!("disconnected");
}

/// Count `len` bytes received on `conn` toward its tenant's usage and metrics.
fn received(conn: &Connection, len: usize) {
    let tenant = conn.session.tenant();
    tenant.quota.usage.bytes_in(len as u64);
    metrics::bytes_received(&tenant.id, len as u64);
}

/// Whether a read error is the library's message size limit.
fn is_too_big(err: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

type CloseRequest = Option<(u16, std::borrow::Cow<'static, str>)>;

/// The connection's one poll loop, until the peer goes away (`None`) or the
/// server must close the connection (`Some(code, reason)`). Each poll
/// reads and handles frames, one at a time and in order (the next frame is
/// read once the last one's handling is done), writes what is queued on
/// `rx` (the handling's answers, the hub's events), and watches shutdown,
/// the tenant's eviction and the idle timer: a peer silent for
/// `limits.idle_ping_ms` is pinged; silent for twice that, it is dropped.
///
/// Polling all of it from one future keeps an open connection to one task
/// and no locks or channels of its own: the socket is not split, and the
/// writer ([`Writer`]) is plain state.
#[allow(clippy::manual_async_fn)] // on purpose, as `serve`
fn drive<'a>(
    socket: &'a mut WebSocket,
    rx: &'a mut outbound::Receiver,
    conn: &'a Connection,
    state: &'a AppState,
) -> impl Future<Output = CloseRequest> + Send + 'a {
    async move {
        const SHUTDOWN: CloseRequest = Some((
            CLOSE_GOING_AWAY,
            std::borrow::Cow::Borrowed("server shutting down"),
        ));
        // The loop's captures are part of every open connection's memory:
        // the tenant and the idle limit are looked up where they are used
        // rather than kept.
        let idle_ping = || state.settings().limits.idle_ping();
        let mut shutdown = pin!(state.shutdown_started());
        let mut evicted = pin!(conn.session.tenant().evicted());
        // Fires `idle_ping` after the last frame read, or after the ping.
        // (Moving a tokio timer later is one atomic operation, no lock.)
        let mut idle = pin!(tokio::time::sleep(idle_ping()));
        let mut pinged = false;
        let mut writer = Writer::default();
        // The handling of the last frame read, while it is not done. Boxed:
        // allocated only while a frame is handled.
        let mut handling: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
        // The waker the shutdown and eviction waits hold. Polling a waiting
        // `Notified` takes its `Notify`'s lock, which every connection (of
        // the tenant) shares, so they are polled only when the waker they
        // hold is not this poll's, or when their flag says they may be done
        // (see `Tenant::has_been_evicted`).
        let mut registered: Option<std::task::Waker> = None;
        poll_fn(move |cx| {
            let rewaked = registered.as_ref().is_none_or(|w| !w.will_wake(cx.waker()));
            if (rewaked || state.is_shutting_down()) && shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(SHUTDOWN);
            }
            if (rewaked || conn.session.tenant().has_been_evicted())
                && let Poll::Ready(eviction) = evicted.as_mut().poll(cx)
            {
                return Poll::Ready(Some((eviction.code, eviction.reason.into())));
            }
            if rewaked {
                registered = Some(cx.waker().clone());
            }
            let mut read = 0;
            loop {
                if let Some(h) = handling.as_mut() {
                    if h.as_mut().poll(cx).is_pending() {
                        break;
                    }
                    handling = None;
                }
                if read == READ_BATCH {
                    // Let other connections run; come back at once.
                    cx.waker().wake_by_ref();
                    break;
                }
                let Poll::Ready(next) = socket.poll_next_unpin(cx) else {
                    break;
                };
                read += 1;
                pinged = false;
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + idle_ping());
                let frame = match next {
                    None => return Poll::Ready(None),
                    Some(Err(e)) if is_too_big(&e) => {
                        tracing::debug!(error = %e, "frame over the size limit");
                        return Poll::Ready(Some((CLOSE_TOO_BIG, "message too big".into())));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read error");
                        return Poll::Ready(None);
                    }
                    Some(Ok(Message::Text(text))) => {
                        received(conn, text.len());
                        protocol::decode_text(text.as_str())
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        received(conn, bytes.len());
                        protocol::decode_binary(&bytes)
                    }
                    // The library answers pings and the peer's close itself; the
                    // stream ends after the close handshake.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => continue,
                };
                handling = match conn.admit(frame) {
                    Admission::Handle(frame) => Some(Box::pin(conn.handle(frame))),
                    Admission::Refused(frame, refusal) => {
                        Some(Box::pin(conn.refuse(frame, refusal)))
                    }
                    Admission::Close => {
                        tracing::debug!("connection over its message rate; closing");
                        return Poll::Ready(Some((
                            CLOSE_RATE_LIMITED,
                            "rate limit exceeded".into(),
                        )));
                    }
                };
            }
            while idle.as_mut().poll(cx).is_ready() {
                if pinged {
                    tracing::debug!("peer unresponsive; dropping the connection");
                    return Poll::Ready(None);
                }
                pinged = true;
                writer.ping();
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + idle_ping());
            }
            let written = writer.poll_write(socket, rx, cx, |bytes| {
                let tenant = conn.session.tenant();
                tenant.quota.usage.bytes_out(bytes);
                metrics::bytes_sent(&tenant.id, bytes);
            });
            if let Poll::Ready(Err(e)) = written {
                tracing::debug!(error = %e, "write error");
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

/// What to do with a decoded frame after the rate checks.
enum Admission {
    /// Within the rates: handle it.
    Handle(Result<ClientFrame, ProtocolError>),
    /// Over a rate: answer `RATE_LIMITED` where the frame expects an answer.
    Refused(Result<ClientFrame, ProtocolError>, Refusal),
    /// The connection ignores refusals: close it with 4429.
    Close,
}

/// Messages a frame counts for against the message rates: one per call or
/// topic (a `resume` counts its topics); 0 for frames that only lower load
/// or are acknowledgements (`hello`, `unsubscribe`, `reply`).
fn message_cost(frame: &Result<ClientFrame, ProtocolError>) -> u64 {
    let n = match frame {
        Ok(ClientFrame::Hello { .. } | ClientFrame::Unsubscribe { .. }) => 0,
        Ok(ClientFrame::Reply { .. }) => 0,
        Ok(ClientFrame::Resume { last_seen_seqs, .. }) => {
            last_seen_seqs.len().min(MAX_RESUME_TOPICS)
        }
        Ok(ClientFrame::Batch { calls, .. }) => calls.len().max(1),
        Ok(ClientFrame::SubscribeBatch { topics, .. }) => topics.len().max(1),
        Ok(ClientFrame::Rpc(_) | ClientFrame::Subscribe { .. } | ClientFrame::Ignored) => 1,
        Ok(ClientFrame::Replay { .. }) => 1,
        Ok(ClientFrame::Cursor { .. } | ClientFrame::CursorSnapshot { .. }) => 1,
        Err(_) => 1,
    };
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What the reader needs to act on frames of one connection.
struct Connection {
    session: Arc<Session>,
    tx: outbound::Sender,
    max_inflight: usize,
    quota: ConnectionQuota,
}

impl Connection {
    /// Check a frame against the connection's and the tenant's message rates.
    fn admit(&self, frame: Result<ClientFrame, ProtocolError>) -> Admission {
        let cost = message_cost(&frame);
        if cost == 0 {
            return Admission::Handle(frame);
        }
        let tenant = &self.session.tenant().quota;
        match self.quota.check(tenant, &tenant.plan(), cost) {
            MessageVerdict::Allow => Admission::Handle(frame),
            MessageVerdict::Refuse(refusal) => {
                metrics::refusal(&self.session.tenant().id, RefusalKind::MessageRate);
                Admission::Refused(frame, refusal)
            }
            MessageVerdict::Close => {
                metrics::refusal(&self.session.tenant().id, RefusalKind::RateClose);
                Admission::Close
            }
        }
    }

    /// Answer a frame refused by a rate limit: RPCs get `RATE_LIMITED` with
    /// `retryAfter`, subscriptions with a `ref` get `subscribe-denied`
    /// `RATE_LIMITED`; other frames are dropped.
    async fn refuse(&self, frame: Result<ClientFrame, ProtocolError>, refusal: Refusal) {
        let body = || {
            let mut body = RpcErrorBody::new("RATE_LIMITED", "Too many requests");
            body.retry_after_ms = refusal.retry_after_ms();
            body
        };
        match frame {
            Ok(ClientFrame::Rpc(call)) => {
                if let Some(id) = &call.id {
                    self.send(protocol::rpc_error(id, &body())).await;
                }
            }
            Ok(ClientFrame::Batch { calls, .. }) => {
                let results: Vec<_> = calls.iter().map(|c| (batch_id(c), Err(body()))).collect();
                self.send(protocol::rpc_batch(&results)).await;
            }
            Ok(ClientFrame::Subscribe {
                topic,
                reference: Some(reference),
            }) => {
                self.send(protocol::subscribe_denied(
                    &topic,
                    &reference,
                    "RATE_LIMITED",
                ))
                .await;
            }
            Ok(ClientFrame::SubscribeBatch {
                topics,
                reference: Some(reference),
            }) => {
                for topic in &topics {
                    self.send(protocol::subscribe_denied(
                        topic,
                        &reference,
                        "RATE_LIMITED",
                    ))
                    .await;
                }
            }
            Ok(ClientFrame::Replay { topic, req_id, .. }) => {
                self.send(protocol::replay_denied(
                    &topic,
                    "RATE_LIMITED",
                    req_id.as_ref(),
                ))
                .await;
            }
            // The client waits for it; it resubscribes live either way.
            Ok(ClientFrame::Resume { .. }) => self.send(protocol::resumed().to_owned()).await,
            _ => {}
        }
    }

    /// Queue a frame that must not be dropped (acks, RPC answers): waits
    /// while the queue is full. Fails only when the connection is gone.
    async fn send(&self, frame: String) {
        let _ = self.tx.send(Outbound::Text(frame.into())).await;
    }

    async fn handle(&self, frame: Result<ClientFrame, ProtocolError>) {
        match frame {
            Ok(ClientFrame::Hello { caps }) => self.session.set_caps(caps),
            Ok(ClientFrame::Subscribe { topic, reference }) => {
                self.subscribe(&topic, reference.as_ref()).await;
            }
            Ok(ClientFrame::SubscribeBatch { topics, reference }) => {
                for topic in &topics {
                    self.subscribe(topic, reference.as_ref()).await;
                }
            }
            Ok(ClientFrame::Unsubscribe { topic }) => {
                self.session.unsubscribe(&topic).await;
            }
            Ok(ClientFrame::Rpc(call)) => self.rpc(call).await,
            Ok(ClientFrame::Batch { calls, sequential }) => self.batch(calls, sequential).await,
            Ok(ClientFrame::Resume { last_seen_seqs, .. }) => self.resume(last_seen_seqs).await,
            Ok(ClientFrame::Replay {
                topic,
                since,
                req_id,
            }) => self.replay(&topic, since, req_id.as_ref()).await,
            Ok(ClientFrame::Cursor { topic, data }) => {
                self.session.move_cursor(&topic, &data).await;
            }
            Ok(ClientFrame::CursorSnapshot { topic }) => {
                if let Some(entries) = self.session.attach_cursors(&topic).await {
                    let frame =
                        protocol::envelope(&cursors::channel(&topic), "snapshot", &entries, None);
                    self.send(frame).await;
                }
            }
            Ok(ClientFrame::Reply { .. } | ClientFrame::Ignored) => {}
            Err(e) => {
                tracing::debug!(code = e.code, message = %e.message, "malformed frame");
                let frame = match &e.rpc_id {
                    Some(id) => protocol::rpc_error(id, &RpcErrorBody::from(&e)),
                    None => protocol::protocol_error(&e),
                };
                self.send(frame).await;
            }
        }
    }

    async fn subscribe(&self, topic: &str, reference: Option<&Ref>) {
        let result = self.session.subscribe(topic).await;
        if let Some(reference) = reference {
            let frame = match &result {
                Ok(_) => protocol::subscribed(topic, reference),
                Err(denied) => protocol::subscribe_denied(topic, reference, &denied.reason),
            };
            self.send(frame).await;
        }
        if let Ok(snapshots) = result {
            send_presence_states(&self.session, &self.tx, &snapshots).await;
        }
    }

    /// The `replay` frame: `truncated` (if events are gone), one `msg` per
    /// buffered event after `since`, then `end`, all on `__replay:{topic}`;
    /// or `denied` with the gate's code.
    async fn replay(&self, topic: &str, since: u64, req_id: Option<&Ref>) {
        match self.session.replay(topic, since).await {
            Ok(page) => {
                if page.truncated {
                    self.send(protocol::replay_truncated(topic)).await;
                }
                for e in &page.events {
                    self.send(protocol::replay_msg(
                        topic, req_id, e.seq, &e.event, &e.data,
                    ))
                    .await;
                }
                self.send(protocol::replay_end(topic, req_id, page.truncated))
                    .await;
            }
            Err(denied) => {
                self.send(protocol::replay_denied(topic, &denied.reason, req_id))
                    .await;
            }
        }
    }

    /// The `resume` frame after a reconnect: for each topic (at most
    /// [`MAX_RESUME_TOPICS`]) the gate allows, subscribe and send the
    /// missed events as ordinary envelopes with their seqs (preceded by
    /// `truncated` on `__replay:{topic}` when some are gone), with live
    /// events held until the replay is out; then `resumed`. A denied topic
    /// is skipped (the client's own subscribe gets the denial).
    async fn resume(&self, last_seen_seqs: std::collections::BTreeMap<String, u64>) {
        for (topic, since) in last_seen_seqs.into_iter().take(MAX_RESUME_TOPICS) {
            let effects = match self.session.catch_up(&topic, since).await {
                Ok((CatchUp::Replay(page), effects)) => {
                    if page.truncated {
                        self.send(protocol::replay_truncated(&topic)).await;
                    }
                    for e in &page.events {
                        self.send(protocol::envelope(&topic, &e.event, &e.data, Some(e.seq)))
                            .await;
                    }
                    let after = match page.events.last() {
                        Some(e) => e.seq,
                        // Nothing buffered: the client's own position, unless
                        // the seq restarted below it.
                        None if since > page.seq => 0,
                        None => since,
                    };
                    self.session.finish_catch_up(&topic, after);
                    effects
                }
                Ok((CatchUp::AlreadyLive | CatchUp::Unavailable, effects)) => effects,
                Err(denied) => {
                    tracing::debug!(topic, reason = denied.reason, "resume: topic denied");
                    continue;
                }
            };
            let snapshots = self.session.apply(effects).await;
            send_presence_states(&self.session, &self.tx, &snapshots).await;
        }
        self.send(protocol::resumed().to_owned()).await;
    }

    /// Start one call concurrently; its answer is queued when it finishes.
    async fn rpc(&self, call: RpcCall) {
        let Some(permit) = self.session.try_reserve_calls(1) else {
            if let Some(id) = &call.id {
                self.send(protocol::rpc_error(id, &overloaded())).await;
            }
            return;
        };
        let session = Arc::clone(&self.session);
        let tx = self.tx.clone();
        tokio::spawn(
            async move {
                let (result, snapshots) = run_call(&session, &call).await;
                if let Some(id) = &call.id {
                    let frame = match result {
                        Ok(json) => protocol::rpc_ok(id, &json),
                        Err(err) => protocol::rpc_error(id, &err),
                    };
                    let _ = tx.send(Outbound::Text(frame.into())).await;
                }
                send_presence_states(&session, &tx, &snapshots).await;
                drop(permit);
            }
            .in_current_span(),
        );
    }

    /// Run a batch (in order if `sequential`, else up to the in-flight limit
    /// at once) and answer once with every result in call order.
    async fn batch(&self, calls: Vec<Result<RpcCall, ProtocolError>>, sequential: bool) {
        let width = if sequential {
            1
        } else {
            calls.len().clamp(1, self.max_inflight)
        };
        let id_of = batch_id;
        let Some(permit) = u32::try_from(width)
            .ok()
            .and_then(|w| self.session.try_reserve_calls(w))
        else {
            let results: Vec<_> = calls
                .iter()
                .map(|c| (id_of(c), Err(overloaded())))
                .collect();
            self.send(protocol::rpc_batch(&results)).await;
            return;
        };
        let session = Arc::clone(&self.session);
        let tx = self.tx.clone();
        tokio::spawn(
            async move {
                let answers: Vec<(Ref, Result<String, RpcErrorBody>, Vec<PresenceSnapshot>)> =
                    futures_util::stream::iter(calls)
                        .map(|entry| {
                            let session = &session;
                            let id = id_of(&entry);
                            async move {
                                let (result, snapshots) = match entry {
                                    Ok(call) => run_call(session, &call).await,
                                    Err(e) => (Err(RpcErrorBody::from(&e)), Vec::new()),
                                };
                                (id, result, snapshots)
                            }
                        })
                        .buffered(width)
                        .collect()
                        .await;
                let mut snapshots = Vec::new();
                let results: Vec<(Ref, Result<String, RpcErrorBody>)> = answers
                    .into_iter()
                    .map(|(id, result, s)| {
                        snapshots.extend(s);
                        (id, result)
                    })
                    .collect();
                let _ = tx
                    .send(Outbound::Text(protocol::rpc_batch(&results).into()))
                    .await;
                send_presence_states(&session, &tx, &snapshots).await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

/// The id a batch answer uses for one entry (empty when it has none).
fn batch_id(c: &Result<RpcCall, ProtocolError>) -> Ref {
    match c {
        Ok(call) => call.id.clone(),
        Err(e) => e.rpc_id.clone(),
    }
    .unwrap_or_else(|| Ref::Str(String::new()))
}

fn overloaded() -> RpcErrorBody {
    RpcErrorBody::new("OVERLOADED", "Too many calls in flight on this connection")
}

/// Run one call and map its failure to what the client may see; also the
/// presence snapshots of topics the call joined.
async fn run_call(
    session: &Session,
    call: &RpcCall,
) -> (Result<String, RpcErrorBody>, Vec<PresenceSnapshot>) {
    if call.stream {
        return (
            Err(RpcErrorBody::new("INVALID_REQUEST", STREAM_UNSUPPORTED)),
            Vec::new(),
        );
    }
    let started = std::time::Instant::now();
    let (answer, snapshots) = match session
        .call(&call.path, &call.args_json, call.idempotency_key.as_deref())
        .await
    {
        Ok((json, snapshots)) => (Ok(json), snapshots),
        Err(e) => (Err(RpcErrorBody::from(&e)), Vec::new()),
    };
    let tenant = session.tenant();
    tenant.quota.usage.call(answer.is_ok());
    let code = answer.as_ref().map_or_else(|e| e.code.as_str(), |_| "OK");
    metrics::rpc(&tenant.id, code, started.elapsed());
    (answer, snapshots)
}

/// Send each snapshot as `presence_state` `{key: data, …}` on
/// `__presence:{topic}` (not dropped when the queue is full), then let the
/// topics' diffs through.
async fn send_presence_states(
    session: &Session,
    tx: &outbound::Sender,
    snapshots: &[PresenceSnapshot],
) {
    for s in snapshots {
        let members =
            presence::members_json(s.members.iter().map(|m| (m.key.as_str(), m.data.as_str())));
        let frame = protocol::envelope(
            &presence::channel(&s.topic),
            "presence_state",
            &members,
            None,
        );
        let _ = tx.send(Outbound::Text(frame.into())).await;
    }
    session.release_presence(snapshots);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::LiveError;

    #[test]
    fn authenticate_errors_map_to_close_codes() {
        let live = |c: &str| CallError::Live(LiveError::new(c, "nope"));
        assert_eq!(
            authenticate_close(&live("UNAUTHENTICATED")),
            (4401, "nope".into())
        );
        assert_eq!(
            authenticate_close(&live("FORBIDDEN")),
            (4403, "nope".into())
        );
        assert_eq!(authenticate_close(&live("TEAPOT")).0, 1008);
        assert_eq!(authenticate_close(&CallError::Timeout).0, 1008);
        let (code, reason) = authenticate_close(&CallError::Trap("secret".into()));
        assert_eq!(code, 1008);
        assert!(!reason.contains("secret"));
    }
}
