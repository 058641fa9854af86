//! A small typed HTTP/1.1 client for the admin API: one connection per
//! request (`hyper::client::conn::http1` on a tokio `TcpStream`), plain
//! `http://` only, bearer token on every request, the API's error document
//! decoded into [`ApiError`].

use std::convert::Infallible;
use std::fmt;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use super::output::human_bytes;
use super::{AdminClientError, ConnectionArgs};

/// How long establishing the TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take once connected (upload, compile, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer body read (admin answers are small JSON documents).
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Upload frame size: the unit of progress reporting.
const UPLOAD_CHUNK: usize = 64 << 10;
/// How much of an unexpected body an error message quotes.
const SNIPPET_BYTES: usize = 200;

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` percent-encoded for use as one URL path segment.
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// An error answer of the admin API: `{"error": {"code", "message",
/// "request_id"}}`, plus `reason` and `details` for `INVALID_PLUGIN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The API's error code, e.g. `NOT_FOUND`.
    pub code: String,
    /// The API's message.
    pub message: String,
    /// The request id (from the body, else the `x-request-id` header).
    pub request_id: Option<String>,
    /// Why a plugin was rejected (`INVALID_PLUGIN`), e.g. `wrong_world`.
    pub reason: Option<String>,
    /// The particulars of a rejection, one per line.
    pub details: Vec<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, HTTP {}", self.message, self.code, self.status)?;
        if let Some(id) = &self.request_id {
            write!(f, ", request id {id}")?;
        }
        f.write_str("]")?;
        if let Some(reason) = &self.reason {
            write!(f, "\n  reason: {reason}")?;
        }
        for detail in &self.details {
            write!(f, "\n  - {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// The wire shape of an error answer. `reason`/`details` are read inside
/// `error` and, failing that, next to it.
#[derive(Deserialize)]
struct ErrorDocument {
    error: ErrorObject,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    details: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: String,
    message: String,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    details: Option<Vec<serde_json::Value>>,
}

/// Upload progress, written as one self-overwriting line (for a terminal).
pub struct Progress {
    label: String,
    total: u64,
    sent: u64,
    shown_percent: Option<u64>,
    line_open: bool,
    out: Box<dyn Write + Send>,
}

impl Progress {
    /// Report the upload of `total` bytes as `label: SENT / TOTAL (P%)` on `out`.
    pub fn new(label: String, total: u64, out: Box<dyn Write + Send>) -> Self {
        Progress {
            label,
            total,
            sent: 0,
            shown_percent: None,
            line_open: false,
            out,
        }
    }

    /// `n` more bytes were handed to the connection. Progress output is
    /// best effort: a failed write to it is ignored.
    fn advance(&mut self, n: usize) {
        self.sent = self.sent.saturating_add(n as u64);
        let percent = self
            .sent
            .saturating_mul(100)
            .checked_div(self.total)
            .unwrap_or(100);
        if self.shown_percent != Some(percent) {
            self.shown_percent = Some(percent);
            let _ = write!(
                self.out,
                "\r{}: {} / {} ({percent}%)",
                self.label,
                human_bytes(self.sent),
                human_bytes(self.total)
            );
            self.line_open = true;
        }
        if self.sent >= self.total && self.line_open {
            let _ = writeln!(self.out, ", waiting for the host to check it");
            self.line_open = false;
        }
        let _ = self.out.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An upload cut short leaves the line open: end it so the error
        // message starts on a line of its own.
        if self.line_open {
            let _ = writeln!(self.out);
            let _ = self.out.flush();
        }
    }
}

/// What a request sends: bytes with a content type, optionally reporting
/// upload progress.
pub struct RequestBody {
    content_type: Option<&'static str>,
    data: Bytes,
    progress: Option<Progress>,
}

impl RequestBody {
    /// No body.
    pub fn empty() -> Self {
        RequestBody {
            content_type: None,
            data: Bytes::new(),
            progress: None,
        }
    }

    /// A JSON document.
    pub fn json(value: &serde_json::Value) -> Self {
        RequestBody {
            content_type: Some("application/json"),
            data: Bytes::from(value.to_string()),
            progress: None,
        }
    }

    /// A `.wasm` upload (`application/wasm`), reporting to `progress` if given.
    pub fn wasm(data: Bytes, progress: Option<Progress>) -> Self {
        RequestBody {
            content_type: Some("application/wasm"),
            data,
            progress,
        }
    }
}

/// The streaming request body: the bytes in [`UPLOAD_CHUNK`] frames,
/// counting each frame handed to the connection.
struct UploadBody {
    data: Bytes,
    progress: Option<Progress>,
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.data.is_empty() {
            return Poll::Ready(None);
        }
        let n = this.data.len().min(UPLOAD_CHUNK);
        let chunk = this.data.split_to(n);
        if let Some(progress) = &mut this.progress {
            progress.advance(n);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

/// A successful (2xx) answer.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `x-request-id` header.
    pub request_id: Option<String>,
    /// The body.
    pub body: Bytes,
    method: Method,
    url: String,
}

impl Response {
    /// The body decoded as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, AdminClientError> {
        serde_json::from_slice(&self.body).map_err(|e| self.unexpected(e))
    }

    /// The body re-printed as indented JSON (what `--json` shows).
    pub fn pretty_json(&self) -> Result<String, AdminClientError> {
        let value: serde_json::Value = self.json()?;
        serde_json::to_string_pretty(&value).map_err(|e| self.unexpected(e))
    }

    fn unexpected(&self, e: serde_json::Error) -> AdminClientError {
        AdminClientError::UnexpectedResponse {
            method: self.method.to_string(),
            url: self.url.clone(),
            status: self.status.as_u16(),
            request_id: self.request_id.clone(),
            detail: format!("{e}; body: {}", snippet(&self.body)),
        }
    }
}

/// The start of `body`, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_BYTES)]);
    let text = text.trim();
    if text.is_empty() {
        "(empty)".to_owned()
    } else if body.len() > SNIPPET_BYTES {
        format!("{text}…")
    } else {
        text.to_owned()
    }
}

/// The parts of the base URL a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BaseUrl {
    /// `http://AUTHORITY/PREFIX`, for messages.
    display: String,
    /// Host to connect to (no IPv6 brackets).
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// Path the API is mounted under (`""` or `/x/y`).
    prefix: String,
}

fn parse_base_url(url: &str) -> Result<BaseUrl, AdminClientError> {
    let invalid = |reason: &str| AdminClientError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = url.trim();
    if trimmed
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        return Err(AdminClientError::HttpsUnsupported {
            url: url.to_owned(),
        });
    }
    let uri: Uri = trimmed.parse().map_err(|e: hyper::http::uri::InvalidUri| {
        AdminClientError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        }
    })?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(_) => return Err(invalid("only http:// URLs are supported")),
        None => return Err(invalid("expected http://HOST:PORT")),
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("expected http://HOST:PORT"));
    };
    if authority.as_str().contains('@') {
        return Err(invalid(
            "credentials in the URL are not supported; use --token",
        ));
    }
    if uri.query().is_some() {
        return Err(invalid("a query string is not allowed"));
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let port = authority.port_u16().unwrap_or(80);
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok(BaseUrl {
        display: format!("http://{}{prefix}", authority.as_str()),
        host: host.to_owned(),
        port,
        authority: authority.as_str().to_owned(),
        prefix,
    })
}

/// Aborts the connection task when the request is over (or abandoned).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client of one admin API with one token.
#[derive(Debug, Clone)]
pub struct Client {
    base: BaseUrl,
    authorization: HeaderValue,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Client {
    /// A client for `--url` with `--token` (the URL is checked first, then
    /// that a non-empty token is present).
    pub fn new(conn: &ConnectionArgs) -> Result<Self, AdminClientError> {
        let base = parse_base_url(&conn.url)?;
        let token = conn
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AdminClientError::MissingToken)?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| AdminClientError::InvalidToken)?;
        authorization.set_sensitive(true);
        Ok(Client {
            base,
            authorization,
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        })
    }

    /// The same client with other timeouts.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// The base URL, for messages.
    pub fn url(&self) -> &str {
        &self.base.display
    }

    /// Send `method path` (path and query, starting with `/`, segments
    /// already encoded with [`segment`]) and read the whole answer. A non-2xx
    /// answer is an error: [`AdminClientError::Api`] when it is the API's
    /// error document.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: RequestBody,
    ) -> Result<Response, AdminClientError> {
        let url = format!("{}{path}", self.base.display);
        let sent_request_id = uuid::Uuid::new_v4().to_string();
        let transport =
            |source: Box<dyn std::error::Error + Send + Sync>| AdminClientError::Transport {
                method: method.to_string(),
                url: url.clone(),
                source,
            };

        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base.prefix))
            .header(HOST, &self.base.authority)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("tenantry/", env!("CARGO_PKG_VERSION")))
            .header("x-request-id", &sent_request_id);
        if let Some(content_type) = body.content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(UploadBody {
                data: body.data,
                progress: body.progress,
            })
            .map_err(|e| AdminClientError::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;

        let host = self.base.host.as_str();
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host, self.base.port)),
        )
        .await
        {
            Err(_) => {
                return Err(AdminClientError::ConnectTimeout {
                    url: self.base.display.clone(),
                    after_secs: self.connect_timeout.as_secs(),
                });
            }
            Ok(Err(source)) => {
                return Err(AdminClientError::Unreachable {
                    url: self.base.display.clone(),
                    source,
                });
            }
            Ok(Ok(stream)) => stream,
        };
        // Latency only; the request works without it.
        let _ = stream.set_nodelay(true);

        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| transport(e.into()))?;
            let _connection = AbortOnDrop(tokio::spawn(async move {
                // Its errors surface through `send_request` and the body.
                let _ = connection.await;
            }));
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| transport(e.into()))?;
            let (parts, incoming) = response.into_parts();
            let body = Limited::new(incoming, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(transport)?
                .to_bytes();
            Ok::<_, AdminClientError>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| AdminClientError::RequestTimeout {
                method: method.to_string(),
                url: url.clone(),
                after_secs: self.request_timeout.as_secs(),
            })??;

        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !parts.status.is_success() {
            return Err(decode_error(
                parts.status,
                request_id.or(Some(sent_request_id)),
                &body,
                &method,
                &url,
            ));
        }
        Ok(Response {
            status: parts.status,
            request_id,
            body,
            method,
            url,
        })
    }
}

/// The error for a non-2xx answer.
fn decode_error(
    status: StatusCode,
    header_request_id: Option<String>,
    body: &[u8],
    method: &Method,
    url: &str,
) -> AdminClientError {
    match serde_json::from_slice::<ErrorDocument>(body) {
        Ok(doc) => {
            let details = doc.error.details.or(doc.details).unwrap_or_default();
            ApiError {
                status: status.as_u16(),
                code: doc.error.code,
                message: doc.error.message,
                request_id: doc.error.request_id.or(header_request_id),
                reason: doc.error.reason.or(doc.reason),
                details: details
                    .into_iter()
                    .map(|d| match d {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect(),
            }
            .into()
        }
        Err(_) => AdminClientError::UnexpectedResponse {
            method: method.to_string(),
            url: url.to_owned(),
            status: status.as_u16(),
            request_id: header_request_id,
            detail: format!("not the API's error document: {}", snippet(body)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(url: &str) -> Result<BaseUrl, AdminClientError> {
        parse_base_url(url)
    }

    #[test]
    fn base_urls() {
        let b = base("http://127.0.0.1:9090").unwrap();
        assert_eq!(
            (
                b.host.as_str(),
                b.port,
                b.authority.as_str(),
                b.prefix.as_str()
            ),
            ("127.0.0.1", 9090, "127.0.0.1:9090", "")
        );
        assert_eq!(b.display, "http://127.0.0.1:9090");
        let b = base("HTTP://[::1]:9/api/").unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.prefix.as_str()),
            ("::1", 9, "/api")
        );
        assert_eq!(b.display, "http://[::1]:9/api");
        assert_eq!(base("http://admin.internal").unwrap().port, 80);

        assert!(matches!(
            base("https://h:1"),
            Err(AdminClientError::HttpsUnsupported { .. })
        ));
        for bad in [
            "127.0.0.1:9090",
            "ftp://h/",
            "http://u:p@h:1",
            "http://h:1/?x=1",
            "not a url",
        ] {
            assert!(
                matches!(base(bad), Err(AdminClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn https_message_is_clear() {
        let e = base("https://admin:9090").unwrap_err().to_string();
        assert!(e.contains("https is not supported"), "{e}");
        assert!(e.contains("plain HTTP"), "{e}");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("acme-1"), "acme-1");
        assert_eq!(segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(segment(".."), "..");
    }

    #[test]
    fn error_documents() {
        let e = decode_error(
            StatusCode::NOT_FOUND,
            Some("hdr".into()),
            br#"{"error":{"code":"NOT_FOUND","message":"tenant \"acme\" does not exist","request_id":"5b0c"}}"#,
            &Method::GET,
            "http://h/admin/tenants/acme",
        );
        let AdminClientError::Api(api) = e else {
            panic!("{e:?}")
        };
        assert_eq!(api.code, "NOT_FOUND");
        assert_eq!(api.request_id.as_deref(), Some("5b0c"));
        assert_eq!(
            api.to_string(),
            r#"tenant "acme" does not exist [NOT_FOUND, HTTP 404, request id 5b0c]"#
        );

        // reason/details next to `error`, and the header's request id as fallback.
        let e = decode_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("hdr".into()),
            br#"{"error":{"code":"INVALID_PLUGIN","message":"not a plugin"},"reason":"refused_imports","details":["wasi:sockets/tcp@0.2.0"]}"#,
            &Method::POST,
            "http://h/x",
        );
        let AdminClientError::Api(api) = e else {
            panic!("{e:?}")
        };
        assert_eq!(api.reason.as_deref(), Some("refused_imports"));
        assert_eq!(api.details, ["wasi:sockets/tcp@0.2.0"]);
        assert_eq!(api.request_id.as_deref(), Some("hdr"));

        let e = decode_error(
            StatusCode::BAD_GATEWAY,
            None,
            b"<html>bad gateway</html>",
            &Method::GET,
            "http://h/x",
        );
        let msg = e.to_string();
        assert!(matches!(
            e,
            AdminClientError::UnexpectedResponse { status: 502, .. }
        ));
        assert!(msg.contains("<html>bad gateway</html>"), "{msg}");
    }

    #[test]
    fn progress_line() {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let mut p = Progress::new("uploading p.wasm".into(), 4096, Box::new(sink.clone()));
        p.advance(1024);
        p.advance(1024);
        p.advance(2048);
        drop(p);
        let text = String::from_utf8(sink.0.lock().clone()).unwrap();
        assert_eq!(
            text,
            "\ruploading p.wasm: 1.0 KiB / 4.0 KiB (25%)\
             \ruploading p.wasm: 2.0 KiB / 4.0 KiB (50%)\
             \ruploading p.wasm: 4.0 KiB / 4.0 KiB (100%), waiting for the host to check it\n"
        );

        // Cut short: the line is ended on drop.
        let sink = Sink::default();
        let mut p = Progress::new("up".into(), 10, Box::new(sink.clone()));
        p.advance(5);
        drop(p);
        assert!(
            String::from_utf8(sink.0.lock().clone())
                .unwrap()
                .ends_with("(50%)\n")
        );
    }
}
