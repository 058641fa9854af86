//! End-to-end tests for hostile tenants: a real `tenantry` process, the
//! `hostile` plugin attacking its host, and a second tenant that must not
//! notice. For every attack the documented error reaches the caller, the
//! host stays up, the attacker's next normal call works, and the other
//! tenant's calls keep succeeding while the attack runs. The per-tenant and
//! per-connection limits of the plans (message rates, connections,
//! concurrent calls, frame size, subscriptions) are checked the same way.
//!
//! Every test starts its own host with its own tenant ids.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry_tests::{Client, Closed, HostProcess, TenantSpec};

/// How long "nothing more arrives" is waited for.
const SILENCE: Duration = Duration::from_millis(300);
/// Pause between two calls of the other tenant's background loop: keeps it
/// well under the default per-connection rate (100/s) however long the
/// attack runs.
const B_PACE: Duration = Duration::from_millis(20);
/// The background loop makes at least this many calls.
const B_MIN_CALLS: u64 = 3;
/// The message the hostile plugin panics with (`hostile::PANIC_MESSAGE`).
const PANIC_MESSAGE: &str = "hostile panic: this message must not reach the client";
/// The text of every line `hostile/log_flood` logs and prints.
const LOG_FLOOD_TEXT: &str = "hostile log flood line ";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

async fn client(h: &HostProcess, path: &str) -> Client {
    Client::connect(&h.url(path)).await.unwrap()
}

fn code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("<none>")
}

/// `/t/{tenant}/ws`.
fn ws(tenant: &str) -> String {
    format!("/t/{tenant}/ws")
}

/// Send an RPC frame without waiting for its answer.
async fn send_rpc(c: &mut Client, path: &str, id: &str, args: Value) {
    c.send_json(&json!({"rpc": path, "id": id, "args": args}))
        .await
        .unwrap();
}

/// The `__rpc` answer (its `data`) to the call with id `id`.
async fn answer(c: &mut Client, id: &str) -> Value {
    let f = c
        .wait_for(|f| f["topic"] == "__rpc" && f["event"] == id)
        .await
        .unwrap();
    f["data"].clone()
}

/// The `retryAfter` of a `RATE_LIMITED` answer, checked to be a whole
/// number of milliseconds, at least 1.
fn retry_after(reply: &Value) -> u64 {
    let ms = reply["retryAfter"]
        .as_u64()
        .unwrap_or_else(|| panic!("RATE_LIMITED without a numeric retryAfter: {reply}"));
    assert!(ms >= 1, "retryAfter must be at least 1 ms: {reply}");
    ms
}

/// Connect until the tenant admits the connection (a slot freed by a
/// closed connection is returned asynchronously), for at most 5 s (each
/// refused attempt is held for `refused_connect_hold_ms`, 1 s by default).
async fn connect_when_admitted(h: &HostProcess, path: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Client::connect(&h.url(path)).await {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{path}: never admitted again: {e:#}"),
        }
    }
}

/// Connect without waiting for `welcome` and return how the server closed
/// the connection, checking that it sent no frame at all before closing.
/// The body of a plain HTTP GET to the host.
async fn http_get(h: &HostProcess, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&h.admin_addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

async fn refused(h: &HostProcess, path: &str) -> Closed {
    let mut c = Client::connect_raw(&h.url(path)).await.unwrap();
    let closed = c.closed().await.unwrap();
    if let Ok(f) = c.next_frame().await {
        panic!("{path}: a refused connection got a frame before its close: {f}");
    }
    closed
}

/// Calls of another tenant running in the background, one every
/// [`B_PACE`], each of which must succeed.
struct EchoLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Client, u64)>,
}

impl EchoLoop {
    /// Start calling `path` (an echo) on `c`; returns once the first call
    /// has succeeded, so the loop is known to be running.
    async fn start(mut c: Client, path: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (stop2, done2) = (Arc::clone(&stop), Arc::clone(&done));
        let task = tokio::spawn(async move {
            let mut n: u64 = 0;
            while n < B_MIN_CALLS || !stop2.load(Ordering::Acquire) {
                let r = c
                    .rpc_raw(&path, json!([n]))
                    .await
                    .unwrap_or_else(|e| panic!("the other tenant's call {n} got no answer: {e:#}"));
                assert_eq!(
                    (&r["ok"], &r["data"]),
                    (&json!(true), &json!(n)),
                    "the other tenant's call {n} failed: {r}"
                );
                n += 1;
                done2.store(n, Ordering::Release);
                tokio::time::sleep(B_PACE).await;
            }
            (c, n)
        });
        let started = Instant::now();
        while done.load(Ordering::Acquire) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5) && !task.is_finished(),
                "the other tenant's first call did not succeed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Self { stop, task }
    }

    /// Stop the loop; every call it made succeeded. Returns the client and
    /// the number of calls.
    async fn finish(self) -> (Client, u64) {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("the other tenant's loop failed")
    }
}

/// A host with two tenants: `a` runs `hostile` (the attacker), `b` runs
/// `fixture` or `hostile` (the bystander).
struct Pair {
    h: HostProcess,
    a: String,
    b: String,
    /// The bystander's echo handler (`fixture/echo` or `hostile/echo`).
    b_echo: String,
}

impl Pair {
    fn start(a: TenantSpec, b: TenantSpec) -> Self {
        let b_plugin = b
            .plugin
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap()
            .to_owned();
        let (a_id, b_id) = (a.id.clone(), b.id.clone());
        let h = HostProcess::start_with(bin(), &[a, b], "").unwrap();
        Self {
            h,
            a: a_id,
            b: b_id,
            b_echo: format!("{b_plugin}/echo"),
        }
    }

    async fn a_client(&self) -> Client {
        client(&self.h, &ws(&self.a)).await
    }

    async fn b_client(&self) -> Client {
        client(&self.h, &ws(&self.b)).await
    }

    /// Start the bystander's background echo loop on a new connection.
    async fn b_loop(&self) -> EchoLoop {
        EchoLoop::start(self.b_client().await, self.b_echo.clone()).await
    }

    /// The bystander's echo on `c` works.
    async fn b_echo_works(&self, c: &mut Client) {
        assert_eq!(
            c.rpc(&self.b_echo, json!(["still served"])).await.unwrap(),
            "still served"
        );
    }

    /// The attacker calls `behaviour` with `args` while the bystander calls
    /// its echo in a loop on its own connection. Checks that the attacker
    /// gets `expected_code`, the host stays up, the attacker's next normal
    /// call on the same connection (and on a new one) works, and every call
    /// of the bystander succeeds, during the attack and after it. Returns
    /// the attacker's error answer for further checks.
    async fn assert_contained(
        &mut self,
        behaviour: &str,
        args: Value,
        expected_code: &str,
    ) -> Value {
        let mut a = self.a_client().await;
        let b = self.b_loop().await;
        let reply = a.rpc_raw(behaviour, args.clone()).await.unwrap();
        let (mut b, calls) = b.finish().await;
        assert_eq!(reply["ok"], false, "{behaviour} {args}: {reply}");
        assert_eq!(
            code(&reply),
            expected_code,
            "{behaviour} {args}: unexpected answer {reply}"
        );
        assert!(
            self.h.is_running(),
            "the host died on {behaviour}:\n{}",
            self.h.output_text()
        );
        assert_eq!(
            a.rpc("hostile/echo", json!(["after"])).await.unwrap(),
            "after",
            "the attacker's next call after {behaviour}"
        );
        let mut fresh = self.a_client().await;
        assert_eq!(
            fresh.rpc("hostile/echo", json!([1])).await.unwrap(),
            1,
            "a new connection of the attacker after {behaviour}"
        );
        self.b_echo_works(&mut b).await;
        assert!(calls >= B_MIN_CALLS, "{behaviour}: {calls} calls of B");
        reply
    }
}

fn hostile(id: &str) -> TenantSpec {
    TenantSpec::new(id, "hostile")
}

fn fixture(id: &str) -> TenantSpec {
    TenantSpec::new(id, "fixture")
}

// ---------------------------------------------------------------------------
// Hostile plugin behaviours
// ---------------------------------------------------------------------------

#[tokio::test]
async fn spin_is_stopped_with_timeout() {
    let mut p = Pair::start(hostile("spin-a"), fixture("spin-b"));
    let r = p
        .assert_contained("hostile/spin", json!([]), "TIMEOUT")
        .await;
    assert_eq!(r["error"], "Call exceeded its time limit");
}

#[tokio::test]
async fn alloc_is_stopped_with_resource_exhausted() {
    let mut p = Pair::start(hostile("alloc-a"), hostile("alloc-b"));
    let r = p
        .assert_contained("hostile/alloc", json!([]), "RESOURCE_EXHAUSTED")
        .await;
    assert_eq!(r["error"], "Call exceeded its resource limit");
}

#[tokio::test]
async fn recurse_is_stopped_with_resource_exhausted() {
    let mut p = Pair::start(hostile("recurse-a"), fixture("recurse-b"));
    let r = p
        .assert_contained("hostile/recurse", json!([]), "RESOURCE_EXHAUSTED")
        .await;
    assert_eq!(r["error"], "Call exceeded its resource limit");
}

#[tokio::test]
async fn panic_is_an_internal_error_without_its_message() {
    let mut p = Pair::start(hostile("panic-a"), hostile("panic-b"));
    let r = p
        .assert_contained("hostile/panic", json!([]), "INTERNAL_ERROR")
        .await;
    assert_eq!(r["error"], "Internal server error");
    let text = r.to_string();
    for secret in [PANIC_MESSAGE, "hostile panic", "must not reach"] {
        assert!(!text.contains(secret), "the panic message leaked: {text}");
    }
    // The operator still sees it, in the tenant's log.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !p.h.output_text().contains(PANIC_MESSAGE) {
        assert!(
            Instant::now() < deadline,
            "the panic message is not in the host's log:\n{}",
            p.h.output_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    } // And counts it: /metrics has the tenant's trap.
    let metrics = http_get(&p.h, "/metrics").await;
    assert!(
        metrics.contains(r#"tenantry_traps_total{kind="trap",tenant="panic-a"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn huge_result_is_refused_by_memory_or_by_size() {
    let mut p = Pair::start(hostile("huge-a"), fixture("huge-b"));
    // 100 MiB cannot be built in a 16 MiB instance.
    let r = p
        .assert_contained("hostile/huge", json!([]), "RESOURCE_EXHAUSTED")
        .await;
    assert_eq!(r["error"], "Call exceeded its resource limit");
    // 2 MB can, but is over starter's max_result_bytes (1 MiB).
    let r = p
        .assert_contained("hostile/huge", json!([2_000_000]), "PAYLOAD_TOO_LARGE")
        .await;
    assert_eq!(r["error"], "Result exceeds the size limit");
    // Just under the limit is served.
    let mut a = p.a_client().await;
    let n = (1 << 20) - 2;
    let s = a.rpc("hostile/huge", json!([n])).await.unwrap();
    assert_eq!(s.as_str().map(str::len), Some(n));
}

#[tokio::test]
async fn publish_flood_is_rate_limited_and_stays_in_its_tenant() {
    const BURST: u64 = 50;
    const RATE: u64 = 10;
    let limits = format!("publish_burst = {BURST}\npublishes_per_sec = {RATE}");
    let mut p = Pair::start(hostile("pubflood-a").limits(&limits), hostile("pubflood-b"));
    let mut a_sub = p.a_client().await;
    let mut b_sub = p.b_client().await;
    for c in [&mut a_sub, &mut b_sub] {
        assert_eq!(c.subscribe("flood").await.unwrap()["type"], "subscribed");
    }
    let started = Instant::now();
    let r = p
        .assert_contained("hostile/publish_flood", json!([]), "RATE_LIMITED")
        .await;
    let elapsed = started.elapsed();
    assert_eq!(r["error"], "Too many requests");
    let retry = retry_after(&r);
    assert!(
        retry <= 1000 / RATE,
        "retryAfter {retry} ms is over one publish interval: {r}"
    );

    // A's subscriber gets the publishes the bucket let through, in order.
    let mut got: u64 = 0;
    while let Ok(e) = tokio::time::timeout(SILENCE, a_sub.next_event("flood")).await {
        let e = e.unwrap();
        assert_eq!(
            e,
            json!({"topic": "flood", "event": "tick", "data": {"n": got}, "seq": got + 1})
        );
        got += 1;
    }
    let allowed =
        BURST + RATE * elapsed.as_secs() + RATE * u64::from(elapsed.subsec_millis()) / 1000 + 1;
    assert!(
        (1..=allowed).contains(&got),
        "A's subscriber got {got} events; the publish bucket allows {allowed} in {elapsed:?}"
    );
    // B's subscriber of the same topic name gets nothing.
    b_sub.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn kv_flood_hits_the_key_quota_of_its_tenant_only() {
    // B has the same small key quota: A's keys must not count against it.
    let mut p = Pair::start(
        hostile("kvflood-a").limits("kv_max_keys = 500"),
        fixture("kvflood-b").limits("kv_max_keys = 500"),
    );
    let r = p
        .assert_contained("hostile/kv_flood", json!([]), "RESOURCE_EXHAUSTED")
        .await;
    assert_eq!(r["error"], "Quota exceeded");
    // A is at its quota: the next flood is refused at once.
    let mut a = p.a_client().await;
    let r = a.rpc_raw("hostile/kv_flood", json!([])).await.unwrap();
    assert_eq!(code(&r), "RESOURCE_EXHAUSTED", "{r}");
    // B can still write, and read back.
    let mut b = p.b_client().await;
    for i in 0..20 {
        b.rpc("fixture/kv_set", json!([format!("flood:{i}"), i, null]))
            .await
            .unwrap();
    }
    assert_eq!(
        b.rpc("fixture/kv_get", json!(["flood:7"])).await.unwrap(),
        7
    );
}

/// The flood lines of `tenant` in `lines`, and the `dropped=N` counts of
/// its "plugin log lines dropped" warnings, with their positions.
fn log_flood_lines(lines: &[String], tenant: &str) -> (Vec<usize>, Vec<(usize, u64)>) {
    let tenant_field = format!("tenant={tenant}");
    let mut flood = Vec::new();
    let mut dropped = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains(LOG_FLOOD_TEXT) {
            flood.push(i);
        } else if l.contains("dropped") && l.contains(&tenant_field) {
            let n = l
                .split("dropped=")
                .nth(1)
                .and_then(|s| {
                    s.split(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|d| d.parse().ok())
                })
                .unwrap_or_else(|| panic!("a dropped warning without a count: {l}"));
            dropped.push((i, n));
        }
    }
    (flood, dropped)
}

#[tokio::test]
async fn log_flood_is_stopped_and_its_lines_rate_limited() {
    // starter: log_line_burst = 100, log_lines_per_sec = 50.
    const BURST: u64 = 100;
    const RATE: u64 = 50;
    let mut p = Pair::start(hostile("logflood-a"), fixture("logflood-b"));
    let started = Instant::now();
    p.assert_contained("hostile/log_flood", json!([]), "TIMEOUT")
        .await;
    p.assert_contained("hostile/log_flood", json!([]), "TIMEOUT")
        .await;
    let elapsed = started.elapsed();

    // B's own log line is kept (its log rate is its own), and once it shows,
    // every line the host wrote before it has been read.
    let marker = "logflood-b marker line";
    let mut b = p.b_client().await;
    b.rpc("fixture/log", json!([marker])).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !p.h.output_text().contains(marker) {
        assert!(
            Instant::now() < deadline,
            "B's log line never appeared:\n{}",
            p.h.output_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let lines = p.h.output.lock().unwrap().clone();
    let (flood, dropped) = log_flood_lines(&lines, "logflood-a");
    let kept = flood.len() as u64;
    let allowed = BURST + RATE * elapsed.as_millis() as u64 / 1000 + 2;
    assert!(
        (1..=allowed).contains(&kept),
        "{kept} flood lines kept; the log bucket allows {allowed} in {elapsed:?}"
    );
    for &i in &flood {
        assert!(
            lines[i].contains("tenant=logflood-a"),
            "a flood line without its tenant: {}",
            lines[i]
        );
    }
    // The stdout copy of a line is logged too (same text, same index): some
    // index shows twice.
    let mut per_index: BTreeMap<&str, u32> = BTreeMap::new();
    for &i in &flood {
        let rest = lines[i].split(LOG_FLOOD_TEXT).nth(1).unwrap_or_default();
        *per_index.entry(rest.get(..20).unwrap_or(rest)).or_default() += 1;
    }
    assert!(
        per_index.values().any(|&n| n == 2),
        "no flood line was kept both from the log import and from stdout: {per_index:?}"
    );
    // The drops are reported, with a count, before a later kept line.
    assert!(
        !dropped.is_empty(),
        "no 'dropped' warning after two floods:\n{}",
        lines.join("\n")
    );
    for &(at, _) in &dropped {
        assert!(
            flood.iter().any(|&i| i > at),
            "a dropped warning must precede the kept line that reports it"
        );
    }
    let total_dropped: u64 = dropped.iter().map(|&(_, n)| n).sum();
    assert!(
        total_dropped >= 5 * kept,
        "the floods must produce far more lines than are kept: {kept} kept, {total_dropped} dropped"
    );
}

// ---------------------------------------------------------------------------
// Per-connection and per-tenant limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn connection_message_rate_refuses_then_closes_with_4429() {
    let mut p = Pair::start(
        hostile("msgrate-a")
            .limits("connection_messages_per_sec = 5\nconnection_message_burst = 10"),
        fixture("msgrate-b"),
    );
    let b = p.b_loop().await;
    let mut a = p.a_client().await;
    // The burst (10) and one more, back to back.
    for i in 0..11 {
        send_rpc(&mut a, "hostile/echo", &format!("m{i}"), json!([i])).await;
    }
    for i in 0..10 {
        let r = answer(&mut a, &format!("m{i}")).await;
        assert_eq!((&r["ok"], &r["data"]), (&json!(true), &json!(i)), "{r}");
    }
    let r = answer(&mut a, "m10").await;
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    assert_eq!(r["error"], "Too many requests");
    let retry = retry_after(&r);
    assert!(retry <= 200, "one message every 200 ms: retryAfter {retry}");
    // Ignoring the refusals: closed with 4429 after `burst` more of them.
    for i in 11..40 {
        if a.send_json(&json!({"rpc": "hostile/echo", "id": format!("m{i}"), "args": [i]}))
            .await
            .is_err()
        {
            break;
        }
    }
    let closed = a.closed().await.unwrap();
    assert_eq!(closed.code, Some(4429), "{closed:?}");
    assert_eq!(closed.reason, "rate limit exceeded");
    assert!(p.h.is_running());
    // A new connection of the same tenant is served.
    tokio::time::sleep(Duration::from_millis(retry)).await;
    let mut a2 = p.a_client().await;
    assert_eq!(
        a2.rpc("hostile/echo", json!(["again"])).await.unwrap(),
        "again"
    );
    let (mut b, _) = b.finish().await;
    p.b_echo_works(&mut b).await;
}

#[tokio::test]
async fn tenant_message_rate_is_shared_by_its_connections() {
    let mut p = Pair::start(
        hostile("tenrate-a").limits("tenant_messages_per_sec = 5\ntenant_message_burst = 10"),
        hostile("tenrate-b"),
    );
    let b = p.b_loop().await;
    let mut a1 = p.a_client().await;
    let mut a2 = p.a_client().await;
    for i in 0..10 {
        send_rpc(&mut a1, "hostile/echo", &format!("x{i}"), json!([i])).await;
    }
    for i in 0..10 {
        let r = answer(&mut a1, &format!("x{i}")).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    // The tenant's bucket is empty: the other connection, which has sent
    // nothing yet, is refused too.
    let r = a2.rpc_raw("hostile/echo", json!([1])).await.unwrap();
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    let retry = retry_after(&r);
    assert!(retry <= 200, "one message every 200 ms: retryAfter {retry}");
    // The same call succeeds after retryAfter (docs/protocol.md §5). The
    // hint must therefore be rounded up to whole milliseconds, not down.
    tokio::time::sleep(Duration::from_millis(retry)).await;
    let r = a2.rpc_raw("hostile/echo", json!([2])).await.unwrap();
    assert_eq!(
        r["ok"], true,
        "refused again after waiting retryAfter = {retry} ms (a retryAfter truncated \
         to whole ms is up to 1 ms short): {r}"
    );
    assert!(p.h.is_running());
    let (mut b, _) = b.finish().await;
    p.b_echo_works(&mut b).await;
}

#[tokio::test]
async fn connects_over_the_tenant_rate_are_closed_with_4429() {
    let mut p = Pair::start(
        hostile("connrate-a").limits("connects_per_sec = 1\nconnect_burst = 3"),
        fixture("connrate-b").limits("connects_per_sec = 1\nconnect_burst = 3"),
    );
    // Three at once (the burst) are admitted; the fourth is refused before
    // authenticate runs, without a welcome.
    let mut admitted = Vec::new();
    for _ in 0..3 {
        admitted.push(p.a_client().await);
    }
    let closed = refused(&p.h, &ws(&p.a)).await;
    assert_eq!(closed.code, Some(4429), "{closed:?}");
    assert_eq!(closed.reason, "tenant connection rate exceeded");
    // The admitted ones are served, and B has its own rate.
    for c in &mut admitted {
        assert_eq!(c.rpc("hostile/echo", json!([1])).await.unwrap(), 1);
    }
    let mut b = p.b_client().await;
    p.b_echo_works(&mut b).await;
    // One token a second: a connection is admitted again after a while.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut later = p.a_client().await;
    assert_eq!(later.rpc("hostile/echo", json!([2])).await.unwrap(), 2);
    assert!(p.h.is_running());
}

#[tokio::test]
async fn max_connections_closes_the_extra_connection_with_4429() {
    let mut p = Pair::start(
        hostile("maxconn-a").limits("max_connections = 2"),
        fixture("maxconn-b").limits("max_connections = 2"),
    );
    let a1 = p.a_client().await;
    let mut a2 = p.a_client().await;
    let closed = refused(&p.h, &ws(&p.a)).await;
    assert_eq!(closed.code, Some(4429), "{closed:?}");
    assert_eq!(closed.reason, "tenant connection limit reached");
    // B has its own count.
    let mut b1 = p.b_client().await;
    let mut b2 = p.b_client().await;
    p.b_echo_works(&mut b1).await;
    p.b_echo_works(&mut b2).await;
    // The admitted connections are served.
    assert_eq!(a2.rpc("hostile/echo", json!([2])).await.unwrap(), 2);
    // Closing one frees its slot.
    drop(a1);
    let mut a3 = connect_when_admitted(&p.h, &ws(&p.a)).await;
    assert_eq!(a3.rpc("hostile/echo", json!([3])).await.unwrap(), 3);
    let closed = refused(&p.h, &ws(&p.a)).await;
    assert_eq!(closed.code, Some(4429), "still at the limit: {closed:?}");
    assert!(p.h.is_running());
}

#[tokio::test]
async fn refused_connections_are_held_before_their_4429_close() {
    let (a, b) = ("hold-a", "hold-b");
    let mut h = HostProcess::start_with(
        bin(),
        &[hostile(a).limits("max_connections = 1"), fixture(b)],
        "[limits]\nrefused_connect_hold_ms = 700\nmax_held_refusals = 1",
    )
    .unwrap();
    let mut admitted = client(&h, &ws(a)).await;
    // Refused (the tenant is at max_connections): held, unread, then closed.
    let t0 = Instant::now();
    let mut held = Client::connect_raw(&h.url(&ws(a))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The one hold slot is taken: the next refusal is closed at once.
    let t1 = Instant::now();
    let at_once = refused(&h, &ws(a)).await;
    assert_eq!(at_once.code, Some(4429), "{at_once:?}");
    assert!(
        t1.elapsed() < Duration::from_millis(500),
        "with every hold slot taken a refusal is closed at once, took {:?}",
        t1.elapsed()
    );
    // Meanwhile the admitted connection and the other tenant are served.
    assert_eq!(admitted.rpc("hostile/echo", json!([1])).await.unwrap(), 1);
    let mut other = client(&h, &ws(b)).await;
    assert_eq!(other.rpc("fixture/echo", json!([2])).await.unwrap(), 2);
    let closed = held.closed().await.unwrap();
    assert_eq!(closed.code, Some(4429), "{closed:?}");
    assert_eq!(closed.reason, "tenant connection limit reached");
    assert!(
        t0.elapsed() >= Duration::from_millis(650),
        "the refusal was not held: closed after {:?}",
        t0.elapsed()
    );
    if let Ok(f) = held.next_frame().await {
        panic!("a held connection got a frame: {f}");
    }
    // The slot is free again: the next refusal is held too.
    let t2 = Instant::now();
    let again = refused(&h, &ws(a)).await;
    assert_eq!(again.code, Some(4429), "{again:?}");
    assert!(
        t2.elapsed() >= Duration::from_millis(650),
        "{:?}",
        t2.elapsed()
    );
    assert!(h.is_running());
}

#[tokio::test]
async fn max_concurrent_calls_refuses_the_extra_call_with_overloaded() {
    // Spins of 500 ms CPU, so the two are surely still running when the
    // third call comes.
    let mut p = Pair::start(
        hostile("conc-a").limits("max_concurrent_calls = 2\ncall_deadline_ms = 500"),
        fixture("conc-b"),
    );
    // Connect first: `authenticate` is a plugin call too.
    let mut spinners = [p.a_client().await, p.a_client().await];
    let mut a = p.a_client().await;
    let b = p.b_loop().await;
    let mut ids = [String::from("s0"), String::from("s1")];
    for (c, id) in spinners.iter_mut().zip(&ids) {
        send_rpc(c, "hostile/spin", id, json!([])).await;
    }
    // Probe with a third call until it is refused. Each connection's frames
    // are read by its own task, so a probe can reach the host before a spin
    // and take its slot: that spin is then refused OVERLOADED at once, and
    // is started again.
    let mut overloaded = None;
    for i in 0..100 {
        let r = a.rpc_raw("hostile/echo", json!([i])).await.unwrap();
        if r["ok"] != true {
            overloaded = Some(r);
            break;
        }
        for (k, c) in spinners.iter_mut().enumerate() {
            let early = tokio::time::timeout(Duration::from_millis(5), answer(c, &ids[k])).await;
            if let Ok(r) = early {
                assert_eq!(code(&r), "OVERLOADED", "a spin ended early: {r}");
                ids[k] = format!("s{k}-{i}");
                send_rpc(c, "hostile/spin", &ids[k], json!([])).await;
            }
        }
    }
    let r = overloaded.expect("no call was refused while two spins ran");
    assert_eq!(code(&r), "OVERLOADED", "{r}");
    assert_eq!(r["error"], "Too many calls in flight for this tenant");
    // A new connection cannot even authenticate now.
    let closed = refused(&p.h, &ws(&p.a)).await;
    assert_eq!(closed.code, Some(4429), "{closed:?}");
    assert_eq!(closed.reason, "tenant overloaded");
    // Both spins end with TIMEOUT, then A is served again.
    for (c, id) in spinners.iter_mut().zip(&ids) {
        let r = answer(c, id).await;
        assert_eq!(code(&r), "TIMEOUT", "{r}");
    }
    assert_eq!(
        a.rpc("hostile/echo", json!(["free"])).await.unwrap(),
        "free"
    );
    assert!(p.h.is_running());
    let (mut b, calls) = b.finish().await;
    assert!(calls >= B_MIN_CALLS);
    p.b_echo_works(&mut b).await;
}

#[tokio::test]
async fn max_frame_bytes_follows_the_plan() {
    // free: max_frame_bytes = 64 KiB; starter: 1 MiB.
    let mut p = Pair::start(hostile("frame-a").plan("free"), hostile("frame-b"));
    let big = "x".repeat(100 << 10);
    let frame = |s: &str| format!("{{\"rpc\":\"hostile/echo\",\"id\":\"big\",\"args\":[\"{s}\"]}}");

    let mut a = p.a_client().await;
    let _ = a.send_text(frame(&big)).await;
    let closed = a.closed().await.unwrap();
    assert_eq!(closed.code, Some(1009), "{closed:?}");
    assert!(p.h.is_running());

    let mut b = p.b_client().await;
    b.send_text(frame(&big)).await.unwrap();
    let r = answer(&mut b, "big").await;
    assert_eq!(
        r["ok"],
        true,
        "the starter tenant accepts 100 KiB: {}",
        code(&r)
    );
    assert_eq!(r["data"].as_str().map(str::len), Some(big.len()));

    // Under its own limit the free tenant is served.
    let mut a = p.a_client().await;
    let small = "y".repeat(60 << 10);
    a.send_text(frame(&small)).await.unwrap();
    let r = answer(&mut a, "big").await;
    assert_eq!(
        r["data"].as_str().map(str::len),
        Some(small.len()),
        "{}",
        code(&r)
    );
}

#[tokio::test]
async fn subscription_storm_is_denied_over_the_connection_limit() {
    let mut p = Pair::start(
        hostile("substorm-a").limits("max_subscriptions_per_connection = 3"),
        hostile("substorm-b"),
    );
    let mut a = p.a_client().await;
    for t in ["s0", "s1", "s2"] {
        assert_eq!(a.subscribe(t).await.unwrap()["type"], "subscribed", "{t}");
    }
    let d = a.subscribe("s3").await.unwrap();
    assert_eq!(
        d,
        json!({"type": "subscribe-denied", "topic": "s3", "ref": d["ref"], "reason": "RATE_LIMITED"})
    );
    // A storm in one batch: every topic denied.
    let topics: Vec<String> = (0..50).map(|i| format!("storm{i}")).collect();
    a.send_json(&json!({"type": "subscribe-batch", "topics": topics, "ref": "storm"}))
        .await
        .unwrap();
    for _ in 0..topics.len() {
        let ack = a.wait_for(|f| f["ref"] == "storm").await.unwrap();
        assert_eq!(ack["type"], "subscribe-denied", "{ack}");
        assert_eq!(ack["reason"], "RATE_LIMITED", "{ack}");
    }
    // A topic already held is still acked; after an unsubscribe there is room.
    assert_eq!(a.subscribe("s0").await.unwrap()["type"], "subscribed");
    a.send_json(&json!({"type": "unsubscribe", "topic": "s0"}))
        .await
        .unwrap();
    assert_eq!(a.subscribe("s3").await.unwrap()["type"], "subscribed");
    assert_eq!(a.rpc("hostile/echo", json!([1])).await.unwrap(), 1);
    // The limit is per connection, and B has its own.
    let mut a2 = p.a_client().await;
    for t in ["s0", "s1", "s2"] {
        assert_eq!(a2.subscribe(t).await.unwrap()["type"], "subscribed");
    }
    let mut b = p.b_client().await;
    for i in 0..10 {
        let t = format!("storm{i}");
        assert_eq!(b.subscribe(&t).await.unwrap()["type"], "subscribed", "{t}");
    }
    p.b_echo_works(&mut b).await;
    assert!(p.h.is_running());
}

#[tokio::test]
async fn a_plugin_that_keeps_faulting_is_refused_rate_limited_until_its_budget_refills() {
    // A budget of 3 faults, refilled at 2 a second.
    let p = Pair::start(
        hostile("faulty-a").limits("faulted_calls_per_sec = 2\nfaulted_call_burst = 3"),
        fixture("faulty-b"),
    );
    let mut a = p.a_client().await;
    let b = p.b_loop().await;
    for _ in 0..3 {
        let r = a.rpc_raw("hostile/panic", json!([])).await.unwrap();
        assert_eq!(code(&r), "INTERNAL_ERROR", "{r}");
    }
    // Spent: even a normal call is refused before it runs, with a hint.
    let r = a.rpc_raw("hostile/echo", json!([1])).await.unwrap();
    assert_eq!(code(&r), "RATE_LIMITED", "{r}");
    assert_eq!(
        r["error"],
        "This tenant's calls failed too often; retry later"
    );
    let wait = retry_after(&r);
    assert!(wait <= 500, "one token at 2/s: {r}");
    // A new connection of the tenant is closed 4429 (authenticate is a call).
    let closed = refused(&p.h, &ws(&p.a)).await;
    assert_eq!(closed.code, Some(4429), "{closed:?}");
    // The refusals are counted.
    let metrics = http_get(&p.h, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tenantry_quota_refusals_total")
                && l.contains(r#"kind="fault_budget""#)
                && l.contains(r#"tenant="faulty-a""#)),
        "{metrics}"
    );
    // After the hint, A is served again; B never noticed.
    tokio::time::sleep(Duration::from_millis(wait + 10)).await;
    assert_eq!(
        a.rpc("hostile/echo", json!(["back"])).await.unwrap(),
        "back"
    );
    let (mut b, calls) = b.finish().await;
    assert!(calls >= B_MIN_CALLS);
    p.b_echo_works(&mut b).await;
}
