//! Test harness shared by the end-to-end tests and `tenantry-bench`: start a
//! real `tenantry` process with a generated config, and talk to it with a
//! real WebSocket client speaking the svelte-adapter-uws / svelte-realtime
//! wire protocol.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any single frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of a bundled plugin (`chat`, `fixture`, ...), built by the host's build script.
pub fn plugin(name: &str) -> PathBuf {
    tenantry::bundled::plugin_path(name)
}

/// The `fixture` plugin with its flavor marker (`tenantry-fixture-flavor:v1`)
/// rewritten to `flavor` (two bytes): a second, genuinely different build —
/// other bytes, another version id, another answer to `fixture/flavor`.
pub fn fixture_flavor(flavor: &str) -> Vec<u8> {
    assert_eq!(flavor.len(), 2, "the flavor replaces two bytes");
    let mut wasm =
        std::fs::read(plugin("fixture")).expect("fixture.wasm is built by host/build.rs");
    let marker = b"tenantry-fixture-flavor:v1";
    let pos = wasm
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the flavor marker is in fixture.wasm");
    wasm[pos + marker.len() - 2..pos + marker.len()].copy_from_slice(flavor.as_bytes());
    wasm
}

/// One tenant in a generated config.
pub struct TenantSpec {
    /// Tenant id.
    pub id: String,
    /// Path of its plugin `.wasm`.
    pub plugin: PathBuf,
    /// Start suspended.
    pub suspended: bool,
    /// Its plan (`None`: the config's default plan).
    pub plan: Option<String>,
    /// Raw TOML lines of its `[tenant.limits]` table (its own overrides).
    pub limits: String,
}

impl TenantSpec {
    /// A tenant running the named bundled plugin, on the default plan.
    pub fn new(id: &str, plugin_name: &str) -> Self {
        Self {
            id: id.to_owned(),
            plugin: plugin(plugin_name),
            suspended: false,
            plan: None,
            limits: String::new(),
        }
    }

    /// The same tenant on plan `plan`.
    pub fn plan(mut self, plan: &str) -> Self {
        self.plan = Some(plan.to_owned());
        self
    }

    /// The same tenant with its own limits: raw TOML lines such as
    /// `"max_connections = 2"`.
    pub fn limits(mut self, toml: &str) -> Self {
        self.limits = toml.to_owned();
        self
    }
}

/// The operator token every test host's admin API accepts.
pub const ADMIN_TOKEN: &str = "test-operator-token";

/// A running `tenantry` process; killed when dropped.
pub struct HostProcess {
    child: Child,
    /// The address it listens on.
    pub addr: String,
    /// The address of its admin API (token [`ADMIN_TOKEN`]).
    pub admin_addr: String,
    /// Every line the process printed (stdout and stderr), for assertions.
    pub output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// A shared compile cache for all test hosts, so plugins compile once per run.
fn test_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tenantry-test-cache")
}

impl HostProcess {
    /// Start `binary` with the given tenants plus extra raw TOML (top-level
    /// keys first, then tables such as `[limits]`); the `[[tenant]]` tables
    /// come last.
    pub fn start_with(binary: &Path, tenants: &[TenantSpec], extra_toml: &str) -> Result<Self> {
        Self::start_with_env(binary, tenants, extra_toml, &[])
    }

    /// As [`HostProcess::start_with`], with extra environment variables.
    pub fn start_with_env(
        binary: &Path,
        tenants: &[TenantSpec],
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut toml = format!("cache_dir = {:?}\n", test_cache_dir().display().to_string());
        toml.push_str(extra_toml);
        toml.push('\n');
        for t in tenants {
            toml.push_str(&format!(
                "\n[[tenant]]\nid = {:?}\nplugin = {:?}\nsuspended = {}\n",
                t.id,
                t.plugin.display().to_string(),
                t.suspended
            ));
            if let Some(plan) = &t.plan {
                toml.push_str(&format!("plan = {plan:?}\n"));
            }
            if !t.limits.is_empty() {
                toml.push_str(&format!("[tenant.limits]\n{}\n", t.limits));
            }
        }
        let config = dir.path().join("tenantry.toml");
        std::fs::write(&config, toml)?;
        Self::spawn(
            binary,
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--config",
            ],
            Some(&config),
            dir,
            env,
        )
    }

    /// Start `binary` with no config file at all (the embedded default).
    pub fn start_default(binary: &Path) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        Self::spawn(
            binary,
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            None,
            dir,
            &[],
        )
    }

    fn spawn(
        binary: &Path,
        args: &[&str],
        config: Option<&Path>,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.args(args);
        if let Some(c) = config {
            cmd.arg(c);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("TENANTRY_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .env("TENANTRY_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("TENANTRY_ADMIN_LISTEN")
        .env_remove("TENANTRY_DATA_DIR")
        .env_remove("TENANTRY_LISTEN")
        .env_remove("TENANTRY_CONFIG")
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Drain both pipes for the whole life of the process so it never blocks on a full pipe.
        if let Some(out) = child.stdout.take() {
            drain(out, Arc::clone(&output), tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            drain(err, Arc::clone(&output), tx);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let after = |line: &str, prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        };
        let mut admin_addr = None;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = after(&line, "tenantry admin listening on http://") {
                        admin_addr = Some(a);
                    } else if let Some(addr) = after(&line, "tenantry listening on http://") {
                        return Ok(Self {
                            child,
                            addr,
                            admin_addr: admin_addr.unwrap_or_default(),
                            output,
                            _dir: dir,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let lines = output.lock().map(|l| l.join("\n")).unwrap_or_default();
                    bail!("host did not start listening; output:\n{lines}");
                }
            }
        }
    }

    /// The WebSocket URL for `path` (e.g. `/ws` or `/t/acme/ws?user=ann`).
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Call the admin API with the operator token; see [`admin_request`].
    pub async fn admin(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Value)> {
        admin_request(&self.admin_addr, method, path, Some(ADMIN_TOKEN), body).await
    }

    /// Send SIGKILL and wait for the process to be gone (a crash).
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(self.child.wait()?)
    }

    /// All output so far, joined.
    pub fn output_text(&self) -> String {
        self.output.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

/// One HTTP/1.1 request to the admin API at `addr` (a raw socket, so
/// tests see exactly what the host answers): `(status, JSON body)`; a
/// non-JSON body comes back as a JSON string.
pub async fn admin_request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin API at {addr}"))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
        .await
        .context("admin API answer timed out")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer: {text}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in: {head}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, value))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn drain(
    pipe: impl std::io::Read + Send + 'static,
    output: Arc<Mutex<Vec<String>>>,
    tx: std::sync::mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut o) = output.lock() {
                o.push(line.clone());
            }
            let _ = tx.send(line);
        }
    });
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket client speaking the host's wire protocol.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: AtomicU64,
    /// Frames received while waiting for something else, oldest first.
    pending: Vec<Value>,
    /// The session id from `welcome`.
    pub session_id: String,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code, if a close frame arrived.
    pub code: Option<u16>,
    /// The close reason.
    pub reason: String,
}

impl Client {
    /// Connect and wait for `welcome`.
    pub async fn connect(url: &str) -> Result<Self> {
        let c = Self::connect_raw(url).await?;
        Self::welcomed(c).await
    }

    /// Wrap an already-open WebSocket (e.g. one opened with custom headers)
    /// and wait for `welcome`.
    pub async fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Result<Self> {
        let c = Self {
            ws,
            next_id: AtomicU64::new(1),
            pending: Vec::new(),
            session_id: String::new(),
        };
        Self::welcomed(c).await
    }

    async fn welcomed(mut c: Self) -> Result<Self> {
        let w = c.next_frame().await?;
        if w["type"] != "welcome" {
            bail!("expected welcome, got {w}");
        }
        c.session_id = w["sessionId"].as_str().unwrap_or_default().to_owned();
        c.send_text(r#"{"type":"hello","caps":["batch"]}"#).await?;
        Ok(c)
    }

    /// Connect without waiting for anything.
    pub async fn connect_raw(url: &str) -> Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            ws,
            next_id: AtomicU64::new(1),
            pending: Vec::new(),
            session_id: String::new(),
        })
    }

    /// Send a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.ws.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// Send a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.ws.send(Message::binary(bytes)).await?;
        Ok(())
    }

    /// Send a JSON value as a text frame, with its discriminating key
    /// (`type`, `rpc` or `batch`) first as the protocol requires.
    pub async fn send_json(&mut self, v: &Value) -> Result<()> {
        self.send_text(frame_text(v)).await
    }

    /// The next JSON frame from the server (including ones queued earlier).
    pub async fn next_frame(&mut self) -> Result<Value> {
        if !self.pending.is_empty() {
            return Ok(self.pending.remove(0));
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Result<Value> {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| anyhow!("timed out waiting for a frame"))?
                .ok_or_else(|| anyhow!("connection ended"))??;
            match msg {
                Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
                Message::Close(c) => bail!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Wait for the first frame matching `pred`; others are kept for later.
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        if let Some(i) = self.pending.iter().position(&pred) {
            return Ok(self.pending.remove(i));
        }
        loop {
            let f = self.read_frame().await?;
            if pred(&f) {
                return Ok(f);
            }
            self.pending.push(f);
        }
    }

    /// Wait until the server closes the connection; returns its close frame.
    pub async fn closed(&mut self) -> Result<Closed> {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| anyhow!("timed out waiting for close"))?;
            match msg {
                None => {
                    return Ok(Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
                Some(Err(_)) => {
                    return Ok(Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
                Some(Ok(Message::Close(c))) => return Ok(close_info(c)),
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str(t.as_str()) {
                        self.pending.push(v);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// A fresh RPC correlation id.
    pub fn new_id(&self) -> String {
        format!("t{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Call `path` with `args` and return the `data` of the `__rpc` reply
    /// (`{"id","ok",...}`), whatever its outcome.
    pub async fn rpc_raw(&mut self, path: &str, args: Value) -> Result<Value> {
        let id = self.new_id();
        self.send_json(&json!({"rpc": path, "id": id, "args": args}))
            .await?;
        let reply = self
            .wait_for(|f| f["topic"] == "__rpc" && f["event"] == id.as_str())
            .await?;
        Ok(reply["data"].clone())
    }

    /// Call `path` and return its result, or an error `CODE: message`.
    pub async fn rpc(&mut self, path: &str, args: Value) -> Result<Value> {
        let d = self.rpc_raw(path, args).await?;
        if d["ok"] == true {
            Ok(d["data"].clone())
        } else {
            bail!(
                "{}: {}",
                d["code"].as_str().unwrap_or("?"),
                d["error"].as_str().unwrap_or("?")
            )
        }
    }

    /// Subscribe with a ref and return the ack frame (`subscribed` or `subscribe-denied`).
    pub async fn subscribe(&mut self, topic: &str) -> Result<Value> {
        let r = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send_json(&json!({"type": "subscribe", "topic": topic, "ref": r}))
            .await?;
        self.wait_for(|f| f["ref"] == r && f["topic"] == topic)
            .await
    }

    /// Wait for the next event envelope on `topic`.
    pub async fn next_event(&mut self, topic: &str) -> Result<Value> {
        self.wait_for(|f| f["topic"] == topic && f.get("type").is_none())
            .await
    }

    /// Stay connected for `d` without sending anything, but reading, so that
    /// the WebSocket library answers the server's pings. Fails if a text
    /// frame arrives or the connection ends. Returns how many pings the
    /// server sent.
    pub async fn idle_answering_pings(&mut self, d: Duration) -> Result<usize> {
        if let Some(f) = self.pending.first() {
            bail!("unexpected frame {f}");
        }
        let deadline = tokio::time::Instant::now() + d;
        let mut pings = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(pings),
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Message::Pong(_)))) => {}
                Ok(other) => bail!("unexpected {other:?} while idle"),
            }
        }
    }

    /// Expect that no frame arrives within `d` (frames already queued count).
    pub async fn expect_silence(&mut self, d: Duration) -> Result<()> {
        if let Some(f) = self.pending.first() {
            bail!("unexpected frame {f}");
        }
        match tokio::time::timeout(d, self.ws.next()).await {
            Err(_) => Ok(()),
            Ok(Some(Ok(Message::Text(t)))) => bail!("unexpected frame {t}"),
            Ok(other) => bail!("unexpected {other:?}"),
        }
    }
}

/// Serialize a client frame with `type`, `rpc` or `batch` as its first key:
/// the server only recognises control frames starting `{"type"` and RPC
/// frames starting `{"rpc"` / `{"batch"` (svelte-adapter-uws's fast path),
/// and `serde_json` would otherwise sort the keys.
pub fn frame_text(v: &Value) -> String {
    let Some(obj) = v.as_object() else {
        return v.to_string();
    };
    let first = ["type", "rpc", "batch"]
        .into_iter()
        .find(|k| obj.contains_key(*k));
    let mut out = String::from("{");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    if let Some(f) = first {
        keys.retain(|k| *k != f);
        keys.insert(0, f);
    }
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String((*k).to_owned()).to_string());
        out.push(':');
        out.push_str(&obj[*k].to_string());
    }
    out.push('}');
    out
}

fn close_info(c: Option<CloseFrame>) -> Closed {
    match c {
        Some(c) => Closed {
            code: Some(u16::from(c.code)),
            reason: c.reason.to_string(),
        },
        None => Closed {
            code: None,
            reason: String::new(),
        },
    }
}

/// A private `redis-server` on a free port (no persistence), for tests
/// that kill Redis or need a second one; killed when dropped (also when
/// the test panics). The shared Redis on 6379 is never touched.
pub struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// Start one; returns once it answers `PING`. Panics if it cannot.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop it (SIGKILL); idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it (again) on the same port; returns once it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("a Redis URL");
        for _ in 0..100 {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not start", self.port);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The shared test Redis.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A Redis namespace of one test on [`REDIS_URL`]; every key under it is
/// deleted when dropped (also when the test panics).
pub struct RedisNamespace(pub String);

impl RedisNamespace {
    /// A fresh namespace `e2e-{name}-{pid}-{nanos}`.
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self(format!("e2e-{name}-{}-{nanos}", std::process::id()))
    }

    /// The `[redis]` table of a host on this namespace.
    pub fn toml(&self) -> String {
        format!("[redis]\nurl = {REDIS_URL:?}\nnamespace = {:?}\n", self.0)
    }

    /// As [`RedisNamespace::toml`], with `bus_mode` (`pubsub` or `sharded`).
    pub fn toml_with_bus(&self, bus_mode: &str) -> String {
        format!("{}bus_mode = {bus_mode:?}\n", self.toml())
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.0);
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(REDIS_URL) else {
                return;
            };
            let Ok(mut conn) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        })
        .join();
    }
}

/// The PostgreSQL the end-to-end tests use (a superuser, trust auth).
pub const PG_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// A registry schema and tenant prefix of one test's own on [`PG_URL`], so
/// tests run in parallel; dropping it removes everything hosts made under
/// them: the tenants' sessions, schemas and roles, the registry schema and
/// the host schema (`{prefix}_host`).
pub struct PgScope {
    /// The hosts' `tenant_prefix`.
    pub prefix: String,
    /// The hosts' `registry_schema`.
    pub registry: String,
}

/// Scopes made by this process, so two made in the same nanosecond differ.
static PG_SCOPES: AtomicU64 = AtomicU64::new(0);

impl PgScope {
    /// A fresh scope: prefix `{label}{tag}`, registry
    /// `tenantry_e2e_{label}_{tag}` (`label`: a few lowercase letters).
    pub fn new(label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = PG_SCOPES.fetch_add(1, Ordering::Relaxed);
        let tag = format!(
            "{:x}",
            (nanos ^ u128::from(std::process::id()) << 64 ^ u128::from(n) << 32) & 0xff_ffff_ffff
        );
        Self {
            prefix: format!("{label}{tag}"),
            registry: format!("tenantry_e2e_{label}_{tag}"),
        }
    }

    /// The `[postgres]` table for hosts of this scope.
    pub fn postgres_toml(&self) -> String {
        format!(
            "[postgres]\nurl = {PG_URL:?}\nregistry_schema = {:?}\ntenant_prefix = {:?}\n",
            self.registry, self.prefix
        )
    }
}

impl Drop for PgScope {
    fn drop(&mut self) {
        let (prefix, registry) = (self.prefix.clone(), self.registry.clone());
        // From a plain thread: the test's runtime may be gone.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok((c, conn)) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(conn);
                let like = format!("{prefix}\\_t\\_%");
                let _ = c
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename LIKE $1",
                        &[&like],
                    )
                    .await;
                let schemas = c
                    .query(
                        "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                        &[&like],
                    )
                    .await
                    .unwrap_or_default();
                for row in schemas {
                    let n: String = row.get(0);
                    let _ = c
                        .batch_execute(&format!("DROP SCHEMA \"{n}\" CASCADE"))
                        .await;
                }
                let roles = c
                    .query("SELECT rolname FROM pg_roles WHERE rolname LIKE $1", &[&like])
                    .await
                    .unwrap_or_default();
                for row in roles {
                    let n: String = row.get(0);
                    let _ = c
                        .batch_execute(&format!("DROP OWNED BY \"{n}\"; DROP ROLE \"{n}\""))
                        .await;
                }
                let _ = c
                    .batch_execute(&format!(
                        "DROP SCHEMA IF EXISTS \"{registry}\" CASCADE; \
                         DROP SCHEMA IF EXISTS \"{prefix}_host\" CASCADE"
                    ))
                    .await;
            });
        })
        .join();
    }
}
