//! What an operator sees: `/metrics` values that move with real traffic
//! (not only names), bounded label sets, `/readyz` following the Redis
//! breaker, per-tenant usage through the admin API, JSON logs tagged with
//! the tenant, and the optional metrics token. Real host processes, real
//! WebSockets, real Redis.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry_tests::{
    ADMIN_TOKEN, Client, HostProcess, OwnRedis, RedisNamespace, TenantSpec, admin_request,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

/// Limits no test here reaches, so only what is measured moves.
const ROOMY: &str = "connection_messages_per_sec = 100000\nconnection_message_burst = 100000\n\
tenant_messages_per_sec = 100000\ntenant_message_burst = 100000\n\
publishes_per_sec = 100000\npublish_burst = 100000";

/// The Prometheus text of `h`'s `/metrics`.
async fn scrape(h: &HostProcess) -> String {
    let (status, body) = h.admin("GET", "/metrics", b"").await.unwrap();
    assert_eq!(status, 200, "{body}");
    match body {
        Value::String(s) => s,
        other => panic!("not text: {other}"),
    }
}

/// The value of the series `series` (name and labels exactly as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// How many series of metric `name` have labels starting with `labels`.
fn series_count(text: &str, name: &str, labels: &str) -> usize {
    let start = format!("{name}{{{labels}");
    text.lines().filter(|l| l.starts_with(&start)).count()
}

fn v(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test]
async fn metrics_and_usage_move_with_traffic() {
    let ns = RedisNamespace::new("obs");
    let tenants = [
        TenantSpec::new("obs-a", "fixture").limits(ROOMY),
        TenantSpec::new("obs-b", "fixture"),
    ];
    let h = HostProcess::start_with(bin(), &tenants, &ns.toml()).unwrap();
    let mut a1 = Client::connect(&h.url("/t/obs-a/ws")).await.unwrap();
    let mut a2 = Client::connect(&h.url("/t/obs-a/ws")).await.unwrap();
    let mut a3 = Client::connect(&h.url("/t/obs-a/ws")).await.unwrap();
    let _b = Client::connect(&h.url("/t/obs-b/ws")).await.unwrap();
    for c in [&mut a1, &mut a2, &mut a3] {
        c.subscribe("room:1").await.unwrap();
    }
    a1.subscribe("news").await.unwrap();

    for i in 0..5 {
        a1.rpc("fixture/echo", json!([i])).await.unwrap();
    }
    for i in 0..3 {
        a1.rpc("fixture/publish", json!(["room:1", "m", i]))
            .await
            .unwrap();
    }
    let allowed = a1
        .rpc("fixture/limit", json!(["k", 1, 60000, 0]))
        .await
        .unwrap();
    assert_eq!(allowed["allowed"], true);
    let denied = a1
        .rpc("fixture/limit", json!(["k", 1, 60000, 0]))
        .await
        .unwrap();
    assert_eq!(denied["allowed"], false);
    for _ in 0..2 {
        let r = a1.rpc_raw("fixture/nope", json!([])).await.unwrap();
        assert_eq!(r["code"], "NOT_FOUND", "{r}");
    }
    let r = a1.rpc_raw("fixture/panic", json!([])).await.unwrap();
    assert_eq!(r["code"], "INTERNAL_ERROR", "{r}");
    // Every subscriber got the three events (through Redis).
    for c in [&mut a1, &mut a2, &mut a3] {
        for _ in 0..3 {
            c.next_event("room:1").await.unwrap();
        }
    }

    let text = scrape(&h).await;
    let p = "tenantry_";
    assert_eq!(
        v(
            &text,
            &format!(r#"{p}rpc_calls_total{{code="OK",tenant="obs-a"}}"#)
        ),
        10.0
    );
    assert_eq!(
        v(
            &text,
            &format!(r#"{p}rpc_calls_total{{code="NOT_FOUND",tenant="obs-a"}}"#)
        ),
        2.0
    );
    assert_eq!(
        v(
            &text,
            &format!(r#"{p}rpc_calls_total{{code="INTERNAL_ERROR",tenant="obs-a"}}"#)
        ),
        1.0
    );
    assert_eq!(
        v(
            &text,
            &format!(r#"{p}rpc_duration_seconds_count{{tenant="obs-a"}}"#)
        ),
        13.0
    );
    assert_eq!(
        series_count(&text, &format!("{p}rpc_calls_total"), ""),
        3,
        "obs-b made no call: no series of its own"
    );
    assert_eq!(
        v(
            &text,
            &format!(r#"{p}traps_total{{kind="trap",tenant="obs-a"}}"#)
        ),
        1.0
    );
    assert_eq!(
        v(&text, &format!(r#"{p}connections{{tenant="obs-a"}}"#)),
        3.0
    );
    assert_eq!(
        v(&text, &format!(r#"{p}connections{{tenant="obs-b"}}"#)),
        1.0
    );
    assert_eq!(
        v(&text, &format!(r#"{p}subscriptions{{tenant="obs-a"}}"#)),
        4.0
    );
    assert_eq!(
        series_count(
            &text,
            &format!("{p}plugin_versions_active"),
            r#"tenant="obs-a""#
        ),
        1
    );
    assert_eq!(
        v(
            &text,
            &format!(r#"{p}replay_publishes_total{{tenant="obs-a",topic="room:*"}}"#)
        ),
        3.0,
        "room:1 is labelled room:*"
    );
    assert_eq!(
        v(
            &text,
            &format!(r#"{p}ratelimit_allowed_total{{tenant="obs-a"}}"#)
        ),
        1.0
    );
    assert_eq!(
        v(
            &text,
            &format!(r#"{p}ratelimit_denied_total{{tenant="obs-a"}}"#)
        ),
        1.0
    );
    assert!(
        v(
            &text,
            &format!(r#"{p}pubsub_messages_relayed_total{{tenant="obs-a"}}"#)
        ) >= 3.0
    );
    assert!(
        v(
            &text,
            &format!(r#"{p}pubsub_messages_received_total{{tenant="obs-a"}}"#)
        ) >= 3.0
    );
    assert_eq!(v(&text, &format!("{p}pubsub_echo_suppressed_total")), 0.0);
    assert!(
        v(
            &text,
            &format!(r#"{p}bytes_received_total{{tenant="obs-a"}}"#)
        ) > 100.0
    );
    assert!(v(&text, &format!(r#"{p}bytes_sent_total{{tenant="obs-a"}}"#)) > 100.0);
    assert!(
        v(
            &text,
            &format!(r#"{p}call_cpu_seconds_total{{tenant="obs-a"}}"#)
        ) > 0.0
    );
    assert!(
        v(
            &text,
            &format!(r#"{p}instantiation_seconds_count{{tenant="obs-a"}}"#)
        ) >= 13.0
    );
    assert!(
        v(
            &text,
            &format!(r#"{p}call_memory_bytes_count{{tenant="obs-a"}}"#)
        ) >= 13.0
    );
    assert_eq!(
        v(&text, &format!(r#"{p}breaker_state{{backend="redis"}}"#)),
        0.0
    );
    assert!(
        v(
            &text,
            &format!(r#"{p}backend_command_duration_seconds_count{{backend="redis"}}"#)
        ) > 0.0
    );

    // Usage through the admin API: exact per tenant.
    let (status, usage) = h
        .admin("GET", "/admin/tenants/obs-a/usage", b"")
        .await
        .unwrap();
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["connections"], 3);
    for period in ["window", "since_start"] {
        let u = if period == "window" {
            &usage["window"]["usage"]
        } else {
            &usage["since_start"]
        };
        assert_eq!(u["calls"], 13, "{usage}");
        assert_eq!(u["errors"], 3, "{usage}");
        assert!(u["bytes_in"].as_u64().unwrap() > 100, "{usage}");
        assert!(u["bytes_out"].as_u64().unwrap() > 100, "{usage}");
        assert!(u["cpu_us"].as_u64().unwrap() > 0, "{usage}");
    }
    assert_eq!(usage["window"]["minutes"], 60);
    let (status, b) = h
        .admin("GET", "/admin/tenants/obs-b/usage?window=5", b"")
        .await
        .unwrap();
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["window"]["usage"]["calls"], 0, "tenants are apart");
    let (status, _) = h
        .admin("GET", "/admin/tenants/obs-a/usage?window=0", b"")
        .await
        .unwrap();
    assert_eq!(status, 400);
    a1.rpc("fixture/kv_set", json!(["k", "v", null]))
        .await
        .unwrap();
    let (_, usage) = h
        .admin("GET", "/admin/tenants/obs-a/usage", b"")
        .await
        .unwrap();
    assert_eq!(usage["kv"]["keys"], 1, "{usage}");

    // A closed connection leaves the gauges.
    drop(a3);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(&h).await;
        if value(&text, &format!(r#"{p}connections{{tenant="obs-a"}}"#)) == Some(2.0) {
            assert_eq!(
                v(&text, &format!(r#"{p}subscriptions{{tenant="obs-a"}}"#)),
                3.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "connections gauge did not drop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ten_thousand_topics_do_not_make_ten_thousand_series() {
    let tenants = [TenantSpec::new("obs-topics", "fixture").limits(ROOMY)];
    let toml = "[metrics]\nmax_series = 200\n\
                [[metrics.map_topic]]\nprefix = \"vip:\"\nlabel = \"vip\"\n";
    let h = HostProcess::start_with(bin(), &tenants, toml).unwrap();
    let mut c = Client::connect(&h.url("/t/obs-topics/ws")).await.unwrap();
    let send = async |c: &mut Client, topics: Vec<String>| {
        let batch: Vec<Value> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"rpc": "fixture/publish", "id": format!("c{i}"), "args": [t, "e", 1]}))
            .collect();
        c.send_json(&json!({"batch": batch, "sequential": true}))
            .await
            .unwrap();
        let reply = c.next_event("__rpc").await.unwrap();
        let slots = reply["data"]["batch"].as_array().unwrap();
        assert!(slots.iter().all(|s| s["ok"] == true), "{reply}");
    };
    let started = Instant::now();
    for chunk in 0..200 {
        let topics = (0..50).map(|i| format!("t{}", chunk * 50 + i)).collect();
        send(&mut c, topics).await;
    }
    for chunk in 0..4 {
        let topics = (0..50).map(|i| format!("vip:{}", chunk * 50 + i)).collect();
        send(&mut c, topics).await;
    }
    eprintln!("10,200 publishes in {:?}", started.elapsed());
    let text = scrape(&h).await;
    let name = "tenantry_replay_publishes_total";
    let series = series_count(&text, name, "");
    assert_eq!(series, 200, "capped at max_series");
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let dropped = v(&text, "tenantry_metrics_series_dropped_total");
    assert_eq!(
        counted + dropped,
        10_200.0,
        "every publish counted or dropped"
    );
    assert!(dropped >= 9_800.0, "{dropped}");
    // The 200 vip: topics were all one label, already present or dropped
    // as one series; no more than 200 series in all either way.
    assert!(text.lines().count() < 2_000, "the scrape stays small");
}

#[tokio::test]
async fn readyz_follows_the_redis_breaker() {
    let mut redis = OwnRedis::start();
    let toml = format!("[redis]\nurl = {:?}\nnamespace = \"ready\"\n", redis.url());
    let tenants = [TenantSpec::new("obs-ready", "fixture")];
    let h = HostProcess::start_with(bin(), &tenants, &toml).unwrap();
    let readyz = async |addr: &str| {
        admin_request(addr, "GET", "/readyz", None, b"")
            .await
            .unwrap()
    };
    for addr in [&h.addr, &h.admin_addr] {
        let (status, body) = readyz(addr).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["ready"], true);
        assert_eq!(body["checks"]["redis"]["state"], "healthy");
    }
    redis.kill();
    let mut c = Client::connect(&h.url("/t/obs-ready/ws")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = c.rpc_raw("fixture/kv_get", json!(["k"])).await.unwrap();
        let (status, body) = readyz(&h.addr).await;
        if status == 503 {
            assert_eq!(body["ready"], false, "{body}");
            assert_eq!(body["checks"]["redis"]["ok"], false, "{body}");
            assert!(body["checks"]["redis"]["reason"].is_string(), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never unready: {body}");
    }
    let text = scrape(&h).await;
    assert_eq!(v(&text, r#"tenantry_breaker_state{backend="redis"}"#), 2.0);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readyz(&h.admin_addr).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready again: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn json_logs_and_the_metrics_token() {
    let tenants = [TenantSpec::new("obs-json", "fixture")];
    let h = HostProcess::start_with_env(
        bin(),
        &tenants,
        "",
        &[
            ("TENANTRY_LOG_FORMAT", "json"),
            ("TENANTRY_METRICS_TOKEN", "scrape-secret"),
        ],
    )
    .unwrap();
    let mut c = Client::connect(&h.url("/t/obs-json/ws?user=ann"))
        .await
        .unwrap();
    let r = c.rpc_raw("fixture/panic", json!([])).await.unwrap();
    assert_eq!(r["code"], "INTERNAL_ERROR");
    // The failure is logged as JSON, with the tenant, inside the call's span.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = h
            .output
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|j| j["message"] == "plugin call failed");
        if let Some(j) = found {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "no JSON log line:\n{}",
            h.output_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["tenant"], "obs-json", "{line}");
    let spans = line["spans"].to_string();
    assert!(spans.contains("\"user\":\"ann\""), "{line}");
    assert!(spans.contains("\"path\":\"fixture/panic\""), "{line}");
    assert!(spans.contains("request_id"), "{line}");

    // /metrics wants the metrics token (or the operator's).
    let (status, _) = admin_request(&h.admin_addr, "GET", "/metrics", None, b"")
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = admin_request(&h.admin_addr, "GET", "/metrics", Some("wrong"), b"")
        .await
        .unwrap();
    assert_eq!(status, 401);
    for token in ["scrape-secret", ADMIN_TOKEN] {
        let (status, body) = admin_request(&h.admin_addr, "GET", "/metrics", Some(token), b"")
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(
            body.as_str().unwrap().contains("tenantry_traps_total"),
            "{body}"
        );
    }
}
