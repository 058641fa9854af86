//! End-to-end tests: a real `tenantry` process, real plugins, real WebSockets.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, TenantSpec};

const SILENCE: Duration = Duration::from_millis(300);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

fn host(tenants: &[TenantSpec]) -> HostProcess {
    HostProcess::start_with(bin(), tenants, "").unwrap()
}

fn two_fixture_tenants() -> HostProcess {
    host(&[
        TenantSpec::new("alpha", "fixture"),
        TenantSpec::new("beta", "fixture"),
    ])
}

async fn client(h: &HostProcess, path: &str) -> Client {
    Client::connect(&h.url(path)).await.unwrap()
}

fn code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn rpc_round_trip() {
    let h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    let v = c
        .rpc("fixture/echo", json!([{"a": [1, 2, "x"]}]))
        .await
        .unwrap();
    assert_eq!(v, json!({"a": [1, 2, "x"]}));
    let raw = c.rpc_raw("fixture/echo", json!(["hi"])).await.unwrap();
    assert_eq!(raw["ok"], true);
    assert!(raw["id"].is_string(), "reply carries the call id: {raw}");
}

#[tokio::test]
async fn publish_reaches_every_subscriber_of_the_tenant_and_no_other_tenant() {
    let h = two_fixture_tenants();
    let mut a1 = client(&h, "/t/alpha/ws").await;
    let mut a2 = client(&h, "/t/alpha/ws").await;
    let mut b1 = client(&h, "/t/beta/ws").await;
    for c in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(c.subscribe("news").await.unwrap()["type"], "subscribed");
    }
    for i in 1..=3 {
        a1.rpc("fixture/publish", json!(["news", "story", {"n": i}]))
            .await
            .unwrap();
    }
    for c in [&mut a1, &mut a2] {
        for i in 1..=3u64 {
            let e = c.next_event("news").await.unwrap();
            assert_eq!(
                e,
                json!({"topic": "news", "event": "story", "data": {"n": i}, "seq": i})
            );
        }
    }
    b1.expect_silence(SILENCE).await.unwrap();
    // beta's own publish has its own seq, starting at 1.
    b1.rpc("fixture/publish", json!(["news", "story", "b"]))
        .await
        .unwrap();
    let e = b1.next_event("news").await.unwrap();
    assert_eq!(e["seq"], 1);
    assert_eq!(e["data"], "b");
    a1.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let h = two_fixture_tenants();
    let mut a = client(&h, "/t/alpha/ws").await;
    a.subscribe("t1").await.unwrap();
    a.send_json(&json!({"type": "unsubscribe", "topic": "t1"}))
        .await
        .unwrap();
    a.rpc("fixture/publish", json!(["t1", "e", 1]))
        .await
        .unwrap();
    a.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn subscribe_gate_and_topic_rules() {
    let h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    let d = c.subscribe("denied:secret").await.unwrap();
    assert_eq!(d["type"], "subscribe-denied");
    assert_eq!(d["reason"], "FORBIDDEN");
    let d = c.subscribe("__rpc").await.unwrap();
    assert_eq!(d["type"], "subscribe-denied");
    assert_eq!(d["reason"], "INVALID_TOPIC");
    let long = "x".repeat(257);
    let d = c.subscribe(&long).await.unwrap();
    assert_eq!(d["reason"], "INVALID_TOPIC");
    // A denied topic receives nothing.
    c.rpc("fixture/publish", json!(["denied:secret", "e", 1]))
        .await
        .unwrap();
    c.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn subscribe_batch_acks_each_topic_with_the_batch_ref() {
    let h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    c.send_json(&json!({"type": "subscribe-batch", "topics": ["a", "denied:b", "c"], "ref": 9}))
        .await
        .unwrap();
    let mut acks = Vec::new();
    for _ in 0..3 {
        acks.push(c.wait_for(|f| f["ref"] == 9).await.unwrap());
    }
    acks.sort_by_key(|a| a["topic"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        acks[0],
        json!({"type": "subscribed", "topic": "a", "ref": 9})
    );
    assert_eq!(
        acks[1],
        json!({"type": "subscribed", "topic": "c", "ref": 9})
    );
    assert_eq!(
        acks[2],
        json!({"type": "subscribe-denied", "topic": "denied:b", "ref": 9, "reason": "FORBIDDEN"})
    );
}

#[tokio::test]
async fn ref_less_subscribe_gets_no_ack_but_receives_events() {
    let h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    c.send_json(&json!({"type": "subscribe", "topic": "old"}))
        .await
        .unwrap();
    // The echo reply proves the subscribe frame was processed (frames are handled in order).
    c.rpc("fixture/echo", json!([1])).await.unwrap();
    c.expect_silence(SILENCE).await.unwrap();
    c.rpc("fixture/publish", json!(["old", "e", true]))
        .await
        .unwrap();
    assert_eq!(c.next_event("old").await.unwrap()["data"], true);
}

#[tokio::test]
async fn rpc_errors_are_mapped_and_the_next_call_works() {
    rpc_errors_are_mapped(&two_fixture_tenants()).await;
}

#[tokio::test]
async fn rpc_errors_are_mapped_with_instance_reuse_too() {
    let h = HostProcess::start_with(
        bin(),
        &[TenantSpec::new("alpha", "fixture")],
        "[plans.starter]\ninstance_reuse = 100",
    )
    .unwrap();
    rpc_errors_are_mapped(&h).await;
}

async fn rpc_errors_are_mapped(h: &HostProcess) {
    let mut c = client(h, "/t/alpha/ws").await;

    let r = c.rpc_raw("fixture/nope", json!([])).await.unwrap();
    assert_eq!(code(&r), "NOT_FOUND");

    let r = c
        .rpc_raw("fixture/live_error", json!(["CONFLICT", "busy"]))
        .await
        .unwrap();
    assert_eq!((code(&r), r["error"].as_str()), ("CONFLICT", Some("busy")));

    let r = c
        .rpc_raw("fixture/echo", json!({"not": "an array"}))
        .await
        .unwrap();
    assert_eq!(code(&r), "INVALID_REQUEST");

    let r = c.rpc_raw("fixture/panic", json!([])).await.unwrap();
    assert_eq!(code(&r), "INTERNAL_ERROR");
    assert_eq!(
        r["error"], "Internal server error",
        "panic message must be hidden: {r}"
    );
    assert_eq!(
        c.rpc("fixture/echo", json!(["after panic"])).await.unwrap(),
        "after panic"
    );

    let r = c.rpc_raw("fixture/spin", json!([])).await.unwrap();
    assert_eq!(code(&r), "TIMEOUT");
    assert_eq!(
        c.rpc("fixture/echo", json!(["after spin"])).await.unwrap(),
        "after spin"
    );

    let r = c.rpc_raw("fixture/alloc", json!([])).await.unwrap();
    assert_eq!(code(&r), "RESOURCE_EXHAUSTED", "{r}");
    assert_eq!(
        c.rpc("fixture/echo", json!(["after alloc"])).await.unwrap(),
        "after alloc"
    );
}

#[tokio::test]
async fn validation_errors_carry_issues() {
    let h = host(&[TenantSpec::new("acme", "chat")]);
    let mut c = client(&h, "/t/acme/ws?user=ann").await;
    let r = c.rpc_raw("chat/send", json!(["lobby", ""])).await.unwrap();
    assert_eq!(code(&r), "VALIDATION");
    assert!(r["issues"].as_array().is_some_and(|i| !i.is_empty()), "{r}");
    let r = c
        .rpc_raw("chat/send", json!(["lobby", "x".repeat(5000)]))
        .await
        .unwrap();
    assert_eq!(code(&r), "VALIDATION");
    // Wrong argument types are a validation error too.
    let r = c.rpc_raw("chat/send", json!([1, 2])).await.unwrap();
    assert_eq!(code(&r), "VALIDATION");
}

#[tokio::test]
async fn batch_calls_reply_once_in_order() {
    let h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    c.send_json(&json!({"batch": [
        {"rpc": "fixture/echo", "id": "b1", "args": [1]},
        {"rpc": "fixture/nope", "id": "b2", "args": []},
        {"rpc": "fixture/echo", "id": "b3", "args": [3]},
    ]}))
    .await
    .unwrap();
    let f = c
        .wait_for(|f| f["topic"] == "__rpc" && f["event"] == "__batch")
        .await
        .unwrap();
    let b = f["data"]["batch"].as_array().unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!(b[0], json!({"id": "b1", "ok": true, "data": 1}));
    assert_eq!(b[1]["id"], "b2");
    assert_eq!(b[1]["ok"], false);
    assert_eq!(b[1]["code"], "NOT_FOUND");
    assert_eq!(b[2], json!({"id": "b3", "ok": true, "data": 3}));

    let calls: Vec<Value> = (0..51)
        .map(|i| json!({"rpc": "fixture/echo", "id": format!("x{i}"), "args": [i]}))
        .collect();
    c.send_json(&json!({ "batch": calls })).await.unwrap();
    // Over the 50-call limit: refused, and the connection keeps working.
    let f = c.next_frame().await.unwrap();
    assert!(
        f.to_string().contains("INVALID_REQUEST") || f.to_string().contains("PAYLOAD_TOO_LARGE"),
        "{f}"
    );
    c.rpc("fixture/echo", json!([0])).await.unwrap();
}

#[tokio::test]
async fn fire_and_forget_calls_get_no_reply_but_run() {
    let h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    c.subscribe("ff").await.unwrap();
    c.send_json(&json!({"rpc": "fixture/publish", "args": ["ff", "e", 7]}))
        .await
        .unwrap();
    let e = c.next_event("ff").await.unwrap();
    assert_eq!(e["data"], 7);
    c.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_keeps_working() {
    let h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    for bad in [
        "not json at all",
        "{\"rpc\":",
        "{\"type\":\"subscribe\"}",
        &format!(
            "{{\"rpc\":\"fixture/echo\",\"id\":\"deep\",\"args\":[{}1{}]}}",
            "[".repeat(200),
            "]".repeat(200)
        ),
    ] {
        c.send_text(bad).await.unwrap();
    }
    // Bad path with an id: answered on __rpc.
    let r = c.rpc_raw("no-slash", json!([])).await.unwrap();
    assert_eq!(code(&r), "INVALID_REQUEST");
    c.send_binary(vec![0xff, 0x00, 0x13]).await.unwrap();
    assert_eq!(
        c.rpc("fixture/echo", json!(["still here"])).await.unwrap(),
        "still here"
    );
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_the_host_keeps_serving() {
    let mut h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    let big = format!(
        "{{\"rpc\":\"fixture/echo\",\"id\":\"1\",\"args\":[\"{}\"]}}",
        "x".repeat(1 << 20)
    );
    let _ = c.send_text(big).await;
    let closed = c.closed().await.unwrap();
    assert_eq!(closed.code, Some(1009), "{closed:?}");
    assert!(h.is_running());
    let mut c2 = client(&h, "/t/alpha/ws").await;
    c2.rpc("fixture/echo", json!([1])).await.unwrap();
    // Just under the limit still works.
    let ok = "y".repeat((1 << 20) - 200);
    assert_eq!(
        c2.rpc("fixture/echo", json!([ok.clone()])).await.unwrap(),
        json!(ok)
    );
}

#[tokio::test]
async fn unknown_and_suspended_tenants_are_closed_with_1008() {
    let mut suspended = TenantSpec::new("frozen", "fixture");
    suspended.suspended = true;
    let h = host(&[TenantSpec::new("alpha", "fixture"), suspended]);
    for path in ["/t/nobody/ws", "/t/frozen/ws", "/t/Bad_Id/ws"] {
        let mut c = Client::connect_raw(&h.url(path)).await.unwrap();
        let closed = c.closed().await.unwrap();
        assert_eq!(closed.code, Some(1008), "{path}: {closed:?}");
        assert!(!closed.reason.is_empty(), "{path}: a reason is given");
    }
}

#[tokio::test]
async fn authenticate_decides_the_user_and_can_refuse() {
    let h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws?user=ann").await;
    let who = c.rpc("fixture/whoami", json!([])).await.unwrap();
    assert_eq!(who["user"], "ann");
    assert_eq!(who["connectionId"], c.session_id.as_str());

    let mut c = Client::connect_raw(&h.url("/t/alpha/ws?deny=unauth"))
        .await
        .unwrap();
    assert_eq!(c.closed().await.unwrap().code, Some(4401));
    let mut c = Client::connect_raw(&h.url("/t/alpha/ws?deny=forbidden"))
        .await
        .unwrap();
    assert_eq!(c.closed().await.unwrap().code, Some(4403));
}

#[tokio::test]
async fn kv_is_disjoint_between_tenants() {
    let h = two_fixture_tenants();
    let mut a = client(&h, "/t/alpha/ws").await;
    let mut b = client(&h, "/t/beta/ws").await;
    a.rpc("fixture/kv_set", json!(["k", "from-alpha", null]))
        .await
        .unwrap();
    assert_eq!(
        a.rpc("fixture/kv_get", json!(["k"])).await.unwrap(),
        "from-alpha"
    );
    assert_eq!(
        b.rpc("fixture/kv_get", json!(["k"])).await.unwrap(),
        Value::Null
    );
    assert_eq!(a.rpc("fixture/kv_incr", json!(["n", 5])).await.unwrap(), 5);
    assert_eq!(b.rpc("fixture/kv_incr", json!(["n", 1])).await.unwrap(), 1);
    // A TTL expires the key.
    a.rpc("fixture/kv_set", json!(["t", "soon-gone", 50]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        a.rpc("fixture/kv_get", json!(["t"])).await.unwrap(),
        Value::Null
    );
}

/// Connect to `/ws` with one extra request header (e.g. `x-tenant-id`, `host`).
async fn client_with_header(h: &HostProcess, name: &'static str, value: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = h.url("/ws").into_client_request().unwrap();
    req.headers_mut().insert(name, value.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    Client::from_stream(ws).await.unwrap()
}

#[tokio::test]
async fn tenant_header_is_ignored_unless_trusted() {
    let tenants = [
        TenantSpec::new("alpha", "fixture"),
        TenantSpec::new("beta", "chat"),
    ];
    // Not trusted: the header cannot pick a tenant; the default tenant serves.
    let h = HostProcess::start_with(bin(), &tenants, "default_tenant = \"alpha\"").unwrap();
    let mut c = client_with_header(&h, "x-tenant-id", "beta").await;
    assert_eq!(
        c.rpc("fixture/echo", json!([1])).await.unwrap(),
        1,
        "served by alpha"
    );

    // Trusted: the header picks the tenant.
    let h = HostProcess::start_with(
        bin(),
        &tenants,
        "default_tenant = \"alpha\"\ntrust_tenant_header = true",
    )
    .unwrap();
    let mut c = client_with_header(&h, "x-tenant-id", "beta").await;
    assert_eq!(
        c.rpc("chat/count", json!([])).await.unwrap(),
        1,
        "served by beta's chat plugin"
    );
}

#[tokio::test]
async fn embedded_default_serves_the_demo_chat() {
    let h = HostProcess::start_default(bin()).unwrap();
    let mut ann = client(&h, "/ws?user=ann").await;
    let mut bob = client(&h, "/ws?user=bob").await;
    assert_eq!(
        bob.subscribe("room:lobby").await.unwrap()["type"],
        "subscribed"
    );
    assert_eq!(bob.subscribe("lobby").await.unwrap()["reason"], "FORBIDDEN");
    let sent = ann
        .rpc("chat/send", json!(["lobby", "hello"]))
        .await
        .unwrap();
    let e = bob.next_event("room:lobby").await.unwrap();
    assert_eq!(e["event"], "message");
    assert_eq!(e["data"]["user"], "ann");
    assert_eq!(e["data"]["text"], "hello");
    assert_eq!(e["data"]["id"], sent["id"]);
    let hist = bob.rpc("chat/history", json!(["lobby"])).await.unwrap();
    assert_eq!(hist.as_array().map(|h| h.len()), Some(1), "{hist}");
    assert_eq!(hist[0]["text"], "hello");
    let n1 = ann
        .rpc("chat/count", json!([]))
        .await
        .unwrap()
        .as_i64()
        .unwrap();
    let n2 = bob
        .rpc("chat/count", json!([]))
        .await
        .unwrap()
        .as_i64()
        .unwrap();
    assert_eq!(n2, n1 + 1);
    // The tenant path works for the demo tenant too.
    let mut c = client(&h, "/t/demo/ws").await;
    let who = c.rpc("chat/count", json!([])).await.unwrap();
    assert_eq!(who.as_i64(), Some(n2 + 1));
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let mut h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    let status = tokio::task::spawn_blocking(move || {
        let s = h.terminate().unwrap();
        (s, h)
    });
    let closed = c.closed().await.unwrap();
    assert_eq!(closed.code, Some(1001));
    let (status, _h) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// A silent peer is pinged after `idle_ping_ms`; one that answers (its
/// library sends the pongs) stays connected however long it says nothing,
/// and one that does not answer (it never reads) is dropped after twice
/// that, without disturbing the other.
#[tokio::test]
async fn silent_peers_are_pinged_and_dropped_only_if_they_do_not_answer() {
    let h = HostProcess::start_with(
        bin(),
        &[TenantSpec::new("pinged", "fixture")],
        "[limits]\nidle_ping_ms = 300\n",
    )
    .unwrap();
    let mut answering = client(&h, "/t/pinged/ws").await;
    let mut deaf = client(&h, "/t/pinged/ws").await;
    let pings = answering
        .idle_answering_pings(Duration::from_millis(2000))
        .await
        .unwrap();
    assert!(pings >= 3, "one ping per 300 ms of silence, got {pings}");
    let echoed = answering.rpc("fixture/echo", json!(["still here"])).await;
    assert_eq!(echoed.unwrap(), json!("still here"));
    // `deaf` read nothing for 2 s (four times the limit): the host has
    // dropped it, without a close frame (the peer does not read one).
    let started = std::time::Instant::now();
    let closed = deaf.closed().await.unwrap();
    assert_eq!(closed.code, None, "{closed:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the connection was already gone, not closed now"
    );
}

#[tokio::test]
async fn health_endpoint_answers() {
    let h = two_fixture_tenants();
    let mut s = tokio::net::TcpStream::connect(&h.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn resume_after_a_host_restart_reports_truncation_then_resumed() {
    // A client claims seq 3 of a topic this (fresh) host never saw: the
    // events are gone, which it is told before `resumed`.
    let h = two_fixture_tenants();
    let mut c = client(&h, "/t/alpha/ws").await;
    c.send_json(&json!({"type": "resume", "sessionId": "00000000-0000-0000-0000-000000000000", "lastSeenSeqs": {"news": 3}}))
        .await
        .unwrap();
    assert_eq!(
        c.next_frame().await.unwrap(),
        json!({"topic": "__replay:news", "event": "truncated", "data": null})
    );
    assert_eq!(c.next_frame().await.unwrap(), json!({"type": "resumed"}));
}

/// Fuzz the whole dispatch path of a real host: random and mutated frames
/// (control frames, RPCs with random paths and arguments, batches, binary)
/// must never take the host down or break the connection. (The tenant's
/// message rate is raised so the fuzzer is not closed with 4429.)
#[tokio::test]
async fn random_frames_never_break_the_host() {
    let rates = "connection_messages_per_sec = 100000\nconnection_message_burst = 100000\ntenant_messages_per_sec = 100000\ntenant_message_burst = 100000";
    let mut h = HostProcess::start_with(
        bin(),
        &[
            TenantSpec::new("alpha", "fixture").limits(rates),
            TenantSpec::new("beta", "fixture"),
        ],
        "",
    )
    .unwrap();
    let mut c = client(&h, "/t/alpha/ws").await;
    let seeds = [
        r#"{"type":"subscribe","topic":"a","ref":1}"#,
        r#"{"type":"subscribe-batch","topics":["a","b"],"ref":"x"}"#,
        r#"{"type":"unsubscribe","topic":"a"}"#,
        r#"{"type":"hello","caps":["batch"]}"#,
        r#"{"type":"resume","sessionId":"s","lastSeenSeqs":{"a":1}}"#,
        r#"{"rpc":"fixture/echo","id":"e","args":[1,"two",{"3":null}]}"#,
        r#"{"rpc":"fixture/publish","id":"p","args":["a","ev",{"k":[1]}]}"#,
        r#"{"rpc":"fixture/kv_set","id":"k","args":["key","v",1000]}"#,
        r#"{"rpc":"fixture/whoami","args":[]}"#,
        r#"{"batch":[{"rpc":"fixture/echo","id":"1","args":[1]},{"rpc":"x/y","id":"2"}]}"#,
    ];
    let alphabet: &[u8] = b"{}[]\":,0123456789abcdefrpcidtypeargs/_-\\ \x00\xff";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..2000 {
        let seed = seeds[(next() % seeds.len() as u64) as usize].as_bytes();
        let mut bytes = seed.to_vec();
        for _ in 0..(next() % 4) {
            let pos = (next() % (bytes.len() as u64 + 1)) as usize;
            let b = alphabet[(next() % alphabet.len() as u64) as usize];
            match next() % 3 {
                0 if pos < bytes.len() => bytes[pos] = b,
                1 if pos < bytes.len() => {
                    bytes.remove(pos);
                }
                _ => bytes.insert(pos, b),
            }
        }
        if i % 10 == 0 {
            c.send_binary(bytes).await.unwrap();
        } else {
            match String::from_utf8(bytes) {
                Ok(text) => c.send_text(text).await.unwrap(),
                Err(e) => c.send_binary(e.into_bytes()).await.unwrap(),
            }
        }
    }
    assert!(h.is_running());
    // Calls from the random frames may still be in flight; until they finish
    // the connection answers OVERLOADED (its in-flight bound), then serves.
    let mut answer = Value::Null;
    for _ in 0..100 {
        let r = c.rpc_raw("fixture/echo", json!(["alive"])).await.unwrap();
        if code(&r) != "OVERLOADED" {
            answer = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["data"], "alive");
    let mut other = client(&h, "/t/beta/ws").await;
    assert_eq!(other.rpc("fixture/echo", json!([2])).await.unwrap(), 2);
}

#[tokio::test]
async fn subdomain_picks_the_tenant_under_the_base_domain() {
    let h = HostProcess::start_with(
        bin(),
        &[
            TenantSpec::new("alpha", "fixture"),
            TenantSpec::new("beta", "chat"),
        ],
        "base_domain = \"example.test\"",
    )
    .unwrap();
    let mut c = client_with_header(&h, "host", "beta.example.test").await;
    assert_eq!(c.rpc("chat/count", json!([])).await.unwrap(), 1);
    // No default tenant and no subdomain: refused with 1008.
    let mut c = Client::connect_raw(&h.url("/ws")).await.unwrap();
    assert_eq!(c.closed().await.unwrap().code, Some(1008));
}
