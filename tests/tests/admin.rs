//! End-to-end tests of the admin API (issue: tenant and plugin lifecycle):
//! a real host process, its admin listener, real uploads of real plugins,
//! real WebSocket clients watching what a deploy does to them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, TenantSpec, admin_request, fixture_flavor, plugin};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

fn host_with(extra_toml: &str) -> HostProcess {
    HostProcess::start_with(bin(), &[TenantSpec::new("seeded", "fixture")], extra_toml).unwrap()
}

fn fixture_wasm() -> Vec<u8> {
    std::fs::read(plugin("fixture")).unwrap()
}

async fn ok(h: &HostProcess, method: &str, path: &str, body: &[u8]) -> Value {
    let (status, v) = h.admin(method, path, body).await.unwrap();
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

async fn err(h: &HostProcess, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (status, v) = h.admin(method, path, body).await.unwrap();
    assert!(
        status >= 400,
        "{method} {path}: expected an error, got {status} {v}"
    );
    let e = &v["error"];
    assert!(e["code"].is_string() && e["message"].is_string(), "{v}");
    assert!(
        e["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{v}"
    );
    (status, e.clone())
}

/// Create `id` with the fixture uploaded and active; returns the version.
async fn tenant_with_fixture(h: &HostProcess, id: &str) -> String {
    let body = json!({"id": id}).to_string();
    ok(h, "POST", "/admin/tenants", body.as_bytes()).await;
    let v = ok(
        h,
        "POST",
        &format!("/admin/tenants/{id}/plugins?activate=true"),
        &fixture_wasm(),
    )
    .await;
    assert_eq!(v["active"], true, "{v}");
    v["version"].as_str().unwrap().to_owned()
}

async fn flavor(c: &mut Client) -> String {
    c.rpc("fixture/flavor", json!([]))
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn tokens_and_key_scopes() {
    let h = host_with("");
    let a = &h.admin_addr;
    // No token, a malformed header, an unknown token: 401.
    let (s, v) = admin_request(a, "GET", "/admin/tenants", None, b"")
        .await
        .unwrap();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    let (s, _) = admin_request(a, "GET", "/admin/tenants", Some("nope"), b"")
        .await
        .unwrap();
    assert_eq!(s, 401);
    // Health and metrics need no token.
    let (s, _) = admin_request(a, "GET", "/healthz", None, b"")
        .await
        .unwrap();
    assert_eq!(s, 200);
    let (s, m) = admin_request(a, "GET", "/metrics", None, b"")
        .await
        .unwrap();
    assert_eq!(s, 200, "{m}");
    // /metrics is no longer on the public listener.
    let (s, _) = admin_request(&h.addr, "GET", "/metrics", None, b"")
        .await
        .unwrap();
    assert_eq!(s, 404);

    tenant_with_fixture(&h, "scope-a").await;
    ok(&h, "POST", "/admin/tenants", br#"{"id":"scope-b"}"#).await;
    let key = ok(&h, "POST", "/admin/tenants/scope-a/keys", b"").await;
    let secret = key["key"].as_str().unwrap().to_owned();
    let key_id = key["id"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("tdk_") && key_id.starts_with("k_"),
        "{key}"
    );
    let listed = ok(&h, "GET", "/admin/tenants/scope-a/keys", b"").await;
    assert_eq!(listed["keys"][0]["id"], key_id.as_str());
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are never listed"
    );

    let as_key = |m: &'static str, p: String, b: Vec<u8>| {
        let secret = secret.clone();
        let a = a.clone();
        async move { admin_request(&a, m, &p, Some(&secret), &b).await.unwrap() }
    };
    // Its own tenant: read and deploy.
    let (s, v) = as_key("GET", "/admin/tenants/scope-a".into(), vec![]).await;
    assert_eq!((s, v["id"].as_str()), (200, Some("scope-a")));
    let (s, v) = as_key(
        "POST",
        "/admin/tenants/scope-a/plugins".into(),
        fixture_flavor("v2"),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["uploaded_by"], format!("key:{key_id}"));
    let version = v["version"].as_str().unwrap().to_owned();
    let (s, _) = as_key(
        "POST",
        format!("/admin/tenants/scope-a/plugins/{version}/activate"),
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = as_key("POST", "/admin/tenants/scope-a/rollback".into(), vec![]).await;
    assert_eq!(s, 200);
    // Another tenant: 403, whatever the route.
    for (m, p) in [
        ("GET", "/admin/tenants/scope-b"),
        ("GET", "/admin/tenants/scope-b/plugins"),
        ("POST", "/admin/tenants/scope-b/rollback"),
    ] {
        let (s, v) = as_key(m, p.into(), vec![]).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("FORBIDDEN")),
            "{m} {p}"
        );
    }
    // Operator-only routes: 403 even on its own tenant.
    for (m, p) in [
        ("GET", "/admin/tenants"),
        ("POST", "/admin/tenants/scope-a/keys"),
        ("POST", "/admin/tenants/scope-a/suspend"),
        ("DELETE", "/admin/tenants/scope-a"),
        ("PATCH", "/admin/tenants/scope-a"),
    ] {
        let (s, _) = as_key(m, p.into(), br#"{"plan":"free"}"#.to_vec()).await;
        assert_eq!(s, 403, "{m} {p}");
    }
    // A revoked key is unknown.
    ok(
        &h,
        "DELETE",
        &format!("/admin/tenants/scope-a/keys/{key_id}"),
        b"",
    )
    .await;
    let (s, _) = as_key("GET", "/admin/tenants/scope-a".into(), vec![]).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn tenant_crud_and_request_errors() {
    let h = host_with("");
    // The configured tenant was seeded into the registry.
    let list = ok(&h, "GET", "/admin/tenants", b"").await;
    let seeded = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "seeded")
        .cloned()
        .unwrap();
    assert_eq!(seeded["plan"], "starter");
    assert!(seeded["active_version"].is_string(), "{seeded}");

    let t = ok(
        &h,
        "POST",
        "/admin/tenants",
        br#"{"id":"crud-a","plan":"free","limits":{"max_connections":3}}"#,
    )
    .await;
    assert_eq!(t["plan"], "free");
    assert_eq!(t["limits"], json!({"max_connections": 3}));
    assert_eq!(t["active_version"], Value::Null);
    assert!(t["created_at"].as_str().unwrap().ends_with('Z'));
    for (body, status, code) in [
        (r#"{"id":"crud-a"}"#, 409, "CONFLICT"),
        (r#"{"id":"Bad_Id"}"#, 400, "INVALID_REQUEST"),
        (r#"{"id":"x","plan":"platinum"}"#, 400, "INVALID_REQUEST"),
        (
            r#"{"id":"x","limits":{"max_connections":0}}"#,
            400,
            "INVALID_REQUEST",
        ),
        (r#"{"id":"x","limits":{"bogus":1}}"#, 400, "INVALID_REQUEST"),
        (
            r#"{"id":"x","limits":{"memory_limit_mb":100000}}"#,
            400,
            "INVALID_REQUEST",
        ),
        (r#"{"id":"x""#, 400, "INVALID_REQUEST"),
        ("", 400, "INVALID_REQUEST"),
    ] {
        let (s, e) = err(&h, "POST", "/admin/tenants", body.as_bytes()).await;
        assert_eq!(
            (s, e["code"].as_str().unwrap()),
            (status, code),
            "{body}: {e}"
        );
    }
    let (s, e) = err(&h, "GET", "/admin/tenants/nobody", b"").await;
    assert_eq!((s, e["code"].as_str()), (404, Some("NOT_FOUND")));
    let (s, _) = err(&h, "GET", "/admin/nothing-here", b"").await;
    assert_eq!(s, 404);

    let t = ok(
        &h,
        "PATCH",
        "/admin/tenants/crud-a",
        br#"{"plan":"professional","limits":{}}"#,
    )
    .await;
    assert_eq!(
        (t["plan"].as_str(), &t["limits"]),
        (Some("professional"), &json!({}))
    );
    let t = ok(&h, "GET", "/admin/tenants/crud-a", b"").await;
    assert_eq!(t["plan"], "professional");

    // A tenant without a plugin: connections are told to try again later.
    let mut c = Client::connect_raw(&h.url("/t/crud-a/ws")).await.unwrap();
    assert_eq!(c.closed().await.unwrap().code, Some(1013));

    ok(&h, "DELETE", "/admin/tenants/crud-a", b"").await;
    let (s, _) = err(&h, "DELETE", "/admin/tenants/crud-a", b"").await;
    assert_eq!(s, 404);
    let mut c = Client::connect_raw(&h.url("/t/crud-a/ws")).await.unwrap();
    assert_eq!(c.closed().await.unwrap().code, Some(1008));
}

#[tokio::test]
async fn suspend_closes_connections_and_resume_lets_them_back() {
    let h = host_with("");
    tenant_with_fixture(&h, "susp").await;
    let mut c = Client::connect(&h.url("/t/susp/ws")).await.unwrap();
    assert_eq!(flavor(&mut c).await, "v1");
    let t = ok(
        &h,
        "POST",
        "/admin/tenants/susp/suspend",
        br#"{"reason":"billing overdue"}"#,
    )
    .await;
    assert_eq!(
        (t["suspended"].as_bool(), t["suspend_reason"].as_str()),
        (Some(true), Some("billing overdue"))
    );
    let closed = c.closed().await.unwrap();
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (Some(1008), "billing overdue")
    );
    let mut refused = Client::connect_raw(&h.url("/t/susp/ws")).await.unwrap();
    assert_eq!(refused.closed().await.unwrap().code, Some(1008));
    ok(&h, "POST", "/admin/tenants/susp/resume", b"").await;
    let mut c = Client::connect(&h.url("/t/susp/ws")).await.unwrap();
    assert_eq!(flavor(&mut c).await, "v1");
}

#[tokio::test]
async fn delete_removes_the_tenants_data_and_closes_its_connections() {
    let h = host_with("");
    tenant_with_fixture(&h, "gone").await;
    tenant_with_fixture(&h, "stays").await;
    let mut g = Client::connect(&h.url("/t/gone/ws")).await.unwrap();
    let mut s = Client::connect(&h.url("/t/stays/ws")).await.unwrap();
    for c in [&mut g, &mut s] {
        c.rpc("fixture/kv_set", json!(["k", "v", null]))
            .await
            .unwrap();
    }
    ok(&h, "DELETE", "/admin/tenants/gone", b"").await;
    let closed = g.closed().await.unwrap();
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (Some(1008), "tenant deleted")
    );
    // The other tenant is untouched.
    assert_eq!(
        s.rpc("fixture/kv_get", json!(["k"])).await.unwrap(),
        json!("v")
    );
    // Created again, the tenant starts empty.
    tenant_with_fixture(&h, "gone").await;
    let mut g = Client::connect(&h.url("/t/gone/ws")).await.unwrap();
    assert_eq!(
        g.rpc("fixture/kv_get", json!(["k"])).await.unwrap(),
        Value::Null
    );
    let versions = ok(&h, "GET", "/admin/tenants/gone/plugins", b"").await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn uploads_are_validated_and_a_rejected_upload_changes_nothing() {
    let h = host_with("[admin]\nmax_upload_mb = 1\n");
    let version = tenant_with_fixture(&h, "val").await;
    let before = ok(&h, "GET", "/admin/tenants/val/plugins", b"").await;
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    for (body, reason) in [
        (b"hello, world".to_vec(), "not_wasm"),
        (Vec::new(), "not_wasm"),
        (core_module, "core_module"),
        (empty_component, "wrong_world"),
    ] {
        let (s, e) = err(
            &h,
            "POST",
            "/admin/tenants/val/plugins?activate=true",
            &body,
        )
        .await;
        assert_eq!(
            (s, e["code"].as_str()),
            (422, Some("INVALID_PLUGIN")),
            "{e}"
        );
        assert_eq!(e["reason"], reason, "{e}");
        assert!(e["details"].is_array(), "{e}");
    }
    let (s, e) = err(
        &h,
        "POST",
        "/admin/tenants/val/plugins",
        &vec![0u8; 1 << 20 | 1],
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE")),
        "{e}"
    );
    let (s, _) = err(&h, "POST", "/admin/tenants/nobody/plugins", &fixture_wasm()).await;
    assert_eq!(s, 404);
    // Nothing changed.
    assert_eq!(
        ok(&h, "GET", "/admin/tenants/val/plugins", b"").await,
        before
    );
    let mut c = Client::connect(&h.url("/t/val/ws")).await.unwrap();
    assert_eq!(flavor(&mut c).await, "v1");

    // The same bytes again: the existing version, 200.
    let (s, v) = h
        .admin("POST", "/admin/tenants/val/plugins", &fixture_wasm())
        .await
        .unwrap();
    assert_eq!((s, v["version"].as_str()), (200, Some(version.as_str())));
    assert_eq!(v["world"], "tenantry:plugin/plugin@0.1.0");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn compile_failures_and_the_compile_budget_are_reported() {
    // 1 ms: no real plugin compiles that fast (configured plugins are exempt).
    let h = host_with("[admin]\ncompile_timeout_ms = 1\n");
    ok(&h, "POST", "/admin/tenants", br#"{"id":"budget"}"#).await;
    // A variant no test ever compiles successfully, so never in the cache.
    let (s, e) = err(
        &h,
        "POST",
        "/admin/tenants/budget/plugins",
        &fixture_flavor("~~"),
    )
    .await;
    assert_eq!(
        (s, e["reason"].as_str()),
        (422, Some("compile_timeout")),
        "{e}"
    );
    let t = ok(&h, "GET", "/admin/tenants/budget", b"").await;
    assert_eq!(t["versions"], 0, "rejected uploads change nothing");

    // Cut in half: a component header, then garbage for the compiler. On a
    // host with the default budget (parsing half a component can take more
    // than 1 ms on a loaded machine, which would report the budget instead).
    let h = host_with("");
    ok(&h, "POST", "/admin/tenants", br#"{"id":"budget"}"#).await;
    let wasm = fixture_wasm();
    let (s, e) = err(
        &h,
        "POST",
        "/admin/tenants/budget/plugins",
        &wasm[..wasm.len() / 2],
    )
    .await;
    assert_eq!(
        (s, e["reason"].as_str()),
        (422, Some("compile_failed")),
        "{e}"
    );
    let t = ok(&h, "GET", "/admin/tenants/budget", b"").await;
    assert_eq!(t["versions"], 0, "rejected uploads change nothing");
}

#[tokio::test]
async fn versions_activate_canary_rollback_and_delete() {
    let h = host_with("");
    let v1 = tenant_with_fixture(&h, "ver").await;
    let up = ok(
        &h,
        "POST",
        "/admin/tenants/ver/plugins",
        &fixture_flavor("v2"),
    )
    .await;
    let v2 = up["version"].as_str().unwrap().to_owned();
    assert_eq!(up["active"], false);
    let mut c = Client::connect(&h.url("/t/ver/ws")).await.unwrap();
    assert_eq!(flavor(&mut c).await, "v1", "uploading does not activate");

    ok(
        &h,
        "POST",
        &format!("/admin/tenants/ver/plugins/{v2}/activate"),
        b"",
    )
    .await;
    assert_eq!(
        flavor(&mut c).await,
        "v2",
        "the open connection runs the new version"
    );
    let (s, _) = err(
        &h,
        "DELETE",
        &format!("/admin/tenants/ver/plugins/{v2}"),
        b"",
    )
    .await;
    assert_eq!(s, 409, "the active version cannot be deleted");

    let t = ok(&h, "POST", "/admin/tenants/ver/rollback", b"").await;
    assert_eq!(t["active_version"], v1.as_str());
    assert_eq!(flavor(&mut c).await, "v1");
    let (s, _) = err(&h, "POST", "/admin/tenants/ver/rollback", b"").await;
    assert_eq!(s, 409, "nothing older to roll back to");

    // A 50% canary: new connections split between the versions.
    let t = ok(
        &h,
        "POST",
        &format!("/admin/tenants/ver/plugins/{v2}/activate"),
        br#"{"canary_percent":50}"#,
    )
    .await;
    assert_eq!(t["canary"], json!({"version": v2, "percent": 50}));
    let mut seen = std::collections::HashMap::new();
    for _ in 0..40 {
        let mut c = Client::connect(&h.url("/t/ver/ws")).await.unwrap();
        let f = flavor(&mut c).await;
        // A connection stays on its version.
        assert_eq!(flavor(&mut c).await, f);
        *seen.entry(f).or_insert(0) += 1;
    }
    assert!(seen.get("v1").is_some_and(|&n| n >= 5), "{seen:?}");
    assert!(seen.get("v2").is_some_and(|&n| n >= 5), "{seen:?}");
    let (s, _) = err(
        &h,
        "POST",
        &format!("/admin/tenants/ver/plugins/{v1}/activate"),
        br#"{"canary_percent":0}"#,
    )
    .await;
    assert_eq!(s, 400);
    // Rollback ends the canary.
    let t = ok(&h, "POST", "/admin/tenants/ver/rollback", b"").await;
    assert_eq!(
        (t["canary"].clone(), t["active_version"].as_str()),
        (Value::Null, Some(v1.as_str()))
    );
    for _ in 0..10 {
        let mut c = Client::connect(&h.url("/t/ver/ws")).await.unwrap();
        assert_eq!(flavor(&mut c).await, "v1");
    }

    let listed = ok(&h, "GET", "/admin/tenants/ver/plugins", b"").await;
    assert_eq!(listed["active"], v1.as_str());
    assert_eq!(listed["versions"].as_array().unwrap().len(), 2);
    ok(
        &h,
        "DELETE",
        &format!("/admin/tenants/ver/plugins/{v2}"),
        b"",
    )
    .await;
    let listed = ok(&h, "GET", "/admin/tenants/ver/plugins", b"").await;
    assert_eq!(listed["versions"].as_array().unwrap().len(), 1);
    let (s, _) = err(
        &h,
        "POST",
        &format!("/admin/tenants/ver/plugins/{v2}/activate"),
        b"",
    )
    .await;
    assert_eq!(s, 404);
}

/// Clients call continuously while versions are activated and rolled back
/// again and again: no call fails, no connection drops, and every answer
/// comes from exactly one of the two versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_fails_no_call_and_drops_no_connection() {
    let h = host_with("");
    // Rates and CPU budget far above what closed-loop callers on a busy
    // test machine can reach: any failure is the swap's fault.
    let body = json!({"id": "swap", "plan": "enterprise", "limits": {
        "connection_messages_per_sec": 1_000_000u64, "connection_message_burst": 1_000_000u64,
        "tenant_messages_per_sec": 1_000_000u64, "tenant_message_burst": 1_000_000u64,
        "call_deadline_ms": 2000u64,
    }});
    ok(&h, "POST", "/admin/tenants", body.to_string().as_bytes()).await;
    ok(
        &h,
        "POST",
        "/admin/tenants/swap/plugins?activate=true",
        &fixture_wasm(),
    )
    .await;
    let up = ok(
        &h,
        "POST",
        "/admin/tenants/swap/plugins",
        &fixture_flavor("v2"),
    )
    .await;
    let v2 = up["version"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = Client::connect(&h.url("/t/swap/ws")).await.unwrap();
        let stop = Arc::clone(&stop);
        let counts = Arc::clone(&counts);
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let f = c
                    .rpc("fixture/flavor", json!([]))
                    .await
                    .unwrap_or_else(|e| panic!("call {calls} failed during a swap: {e:#}"));
                match f.as_str() {
                    Some("v1") => counts[0].fetch_add(1, Ordering::Relaxed),
                    Some("v2") => counts[1].fetch_add(1, Ordering::Relaxed),
                    other => panic!("answer from no known version: {other:?}"),
                };
                calls += 1;
            }
            // Still connected and answering.
            c.rpc("fixture/echo", json!([1])).await.unwrap();
            calls
        }));
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ok(
            &h,
            "POST",
            &format!("/admin/tenants/swap/plugins/{v2}/activate"),
            b"",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        ok(&h, "POST", "/admin/tenants/swap/rollback", b"").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let (n1, n2) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    assert_eq!(n1 + n2, total);
    assert!(n1 > 0 && n2 > 0, "both versions served: v1 {n1}, v2 {n2}");
    assert!(total > 100, "calls kept flowing: {total}");
}

/// With a data directory, the registry survives restarts, and a host killed
/// (SIGKILL) in the middle of uploads and activations restarts with one of
/// the versions active, never none.
#[tokio::test]
async fn registry_survives_restarts_and_kills_during_deploys() {
    let data = tempfile::tempdir().unwrap();
    let toml = format!("data_dir = {:?}\n", data.path().display().to_string());
    let mut h = host_with(&toml);
    tenant_with_fixture(&h, "durable").await;
    let key = ok(&h, "POST", "/admin/tenants/durable/keys", b"").await;
    h.terminate().unwrap();

    let flavors: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    for (round, f) in flavors.iter().enumerate() {
        let mut h = host_with(&toml);
        // The key and the tenant survived.
        let (s, _) = admin_request(
            &h.admin_addr,
            "GET",
            "/admin/tenants/durable",
            key["key"].as_str(),
            b"",
        )
        .await
        .unwrap();
        assert_eq!(s, 200, "round {round}");
        let mut c = Client::connect(&h.url("/t/durable/ws")).await.unwrap();
        let serving = flavor(&mut c).await;
        assert!(
            serving == "v1" || serving.starts_with('c'),
            "round {round}: {serving}"
        );
        // Upload + activate in a loop and kill the host partway through.
        let addr = h.admin_addr.clone();
        let wasm = fixture_flavor(f);
        let deploys = tokio::spawn(async move {
            loop {
                let _ = admin_request(
                    &addr,
                    "POST",
                    "/admin/tenants/durable/plugins?activate=true",
                    Some(tenantry_tests::ADMIN_TOKEN),
                    &wasm,
                )
                .await;
                let _ = admin_request(
                    &addr,
                    "POST",
                    "/admin/tenants/durable/rollback",
                    Some(tenantry_tests::ADMIN_TOKEN),
                    b"",
                )
                .await;
            }
        });
        tokio::time::sleep(Duration::from_millis(40 + 37 * round as u64)).await;
        h.kill().unwrap();
        deploys.abort();
    }
    let h = host_with(&toml);
    let t = ok(&h, "GET", "/admin/tenants/durable", b"").await;
    assert!(t["active_version"].is_string(), "{t}");
    let mut c = Client::connect(&h.url("/t/durable/ws")).await.unwrap();
    flavor(&mut c).await;
}

/// Run the `tenantry` CLI against `h`'s admin API with `token`.
fn cli(h: &HostProcess, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env("TENANTRY_ADMIN_URL", format!("http://{}", h.admin_addr))
        .env("TENANTRY_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_drives_the_admin_api() {
    let h = host_with("");
    let op = tenantry_tests::ADMIN_TOKEN;
    let (okay, out, err) = cli(&h, op, &["tenant", "create", "cli-a", "--plan", "free"]);
    assert!(okay, "{out}{err}");
    assert!(out.contains("cli-a"), "{out}");
    let (okay, out, _) = cli(&h, op, &["tenant", "list", "--json"]);
    assert!(okay);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert!(
        list["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "cli-a")
    );

    // A deploy key deploys to its own tenant.
    let (okay, out, _) = cli(&h, op, &["keys", "create", "--tenant", "cli-a", "--json"]);
    assert!(okay, "{out}");
    let key: Value = serde_json::from_str(&out).unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let wasm = plugin("fixture");
    let wasm = wasm.to_str().unwrap();
    let (okay, out, err) = cli(
        &h,
        &key,
        &["deploy", "--tenant", "cli-a", wasm, "--activate"],
    );
    assert!(okay, "{out}{err}");
    let mut c = Client::connect(&h.url("/t/cli-a/ws")).await.unwrap();
    assert_eq!(flavor(&mut c).await, "v1");
    let (okay, out, _) = cli(&h, &key, &["versions", "--tenant", "cli-a"]);
    assert!(
        okay && out.contains("tenantry:plugin/plugin@0.1.0"),
        "{out}"
    );
    // ...and nothing else.
    let (okay, _, err) = cli(&h, &key, &["tenant", "delete", "cli-a"]);
    assert!(!okay && err.contains("FORBIDDEN"), "{err}");

    // A rejected upload prints the reason and exits non-zero.
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), b"not wasm").unwrap();
    let (okay, _, err) = cli(
        &h,
        op,
        &[
            "deploy",
            "--tenant",
            "cli-a",
            bogus.path().to_str().unwrap(),
        ],
    );
    assert!(!okay && err.contains("not_wasm"), "{err}");

    let (okay, out, err) = cli(
        &h,
        op,
        &["tenant", "suspend", "cli-a", "--reason", "maintenance"],
    );
    assert!(okay, "{out}{err}");
    assert_eq!(c.closed().await.unwrap().reason, "maintenance");
    let (okay, _, _) = cli(&h, op, &["tenant", "resume", "cli-a"]);
    assert!(okay);
    let (okay, _, _) = cli(&h, op, &["tenant", "delete", "cli-a"]);
    assert!(okay);
    let (okay, _, err) = cli(&h, op, &["tenant", "show", "cli-a"]);
    assert!(!okay && err.contains("NOT_FOUND"), "{err}");
}

/// A start that fails on a bad configured plugin leaves the tenant without
/// a plugin; once the configuration is fixed, the next start deploys it.
#[tokio::test]
async fn a_failed_seed_is_finished_by_the_next_start() {
    let data = tempfile::tempdir().unwrap();
    let toml = format!("data_dir = {:?}\n", data.path().display().to_string());
    let bogus = data.path().join("bogus.wasm");
    std::fs::write(&bogus, b"not a plugin").unwrap();
    let mut bad = TenantSpec::new("fixme", "fixture");
    bad.plugin = bogus;
    let err = HostProcess::start_with(bin(), &[bad], &toml)
        .err()
        .expect("start fails");
    assert!(
        err.to_string().contains("not_wasm") || err.to_string().contains("WebAssembly"),
        "{err:#}"
    );
    let h = HostProcess::start_with(bin(), &[TenantSpec::new("fixme", "fixture")], &toml).unwrap();
    let mut c = Client::connect(&h.url("/t/fixme/ws")).await.unwrap();
    assert_eq!(flavor(&mut c).await, "v1");
}
