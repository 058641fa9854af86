//! Two host processes on a private redis-server that is killed and
//! restarted: during the outage a publish still reaches the publishing
//! host's subscribers (local delivery) and KV calls fail quickly with
//! `SERVICE_UNAVAILABLE`; once Redis is back, cross-host delivery and KV
//! work again without restarting the hosts. Prints the measured times.
//!
//! The shared Redis on 6379 is never touched: the test starts its own
//! `redis-server` on a free port and kills it when done (also on panic).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, OwnRedis, TenantSpec};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

/// Read frames for up to `d`; the first event on `topic`, if any.
async fn event_within(c: &mut Client, topic: &str, d: Duration) -> Option<Value> {
    tokio::time::timeout(d, c.next_event(topic))
        .await
        .ok()
        .and_then(Result::ok)
}

#[tokio::test]
async fn hosts_survive_a_redis_outage() {
    let mut redis = OwnRedis::start();
    let toml = format!("[redis]\nurl = {:?}\nnamespace = \"outage\"\n", redis.url());
    let tenants = vec![TenantSpec::new("red", "fixture")];
    let a = HostProcess::start_with(bin(), &tenants, &toml).unwrap();
    let b = HostProcess::start_with(bin(), &tenants, &toml).unwrap();
    let mut on_a = Client::connect(&a.url("/t/red/ws")).await.unwrap();
    let mut on_b = Client::connect(&b.url("/t/red/ws")).await.unwrap();
    on_a.subscribe("news").await.unwrap();
    on_b.subscribe("news").await.unwrap();
    // The host's own notices: the one `__` topic a client may subscribe to.
    let mut watcher = Client::connect(&a.url("/t/red/ws")).await.unwrap();
    let sub = watcher.subscribe("__realtime").await.unwrap();
    assert_eq!(sub["type"], "subscribed", "{sub}");
    let mut caller = Client::connect(&a.url("/t/red/ws")).await.unwrap();
    caller
        .rpc("fixture/publish", json!(["news", "story", 0]))
        .await
        .unwrap();
    assert_eq!(on_a.next_event("news").await.unwrap()["data"], 0);
    assert_eq!(on_b.next_event("news").await.unwrap()["data"], 0);
    caller
        .rpc("fixture/kv_set", json!(["k", "v", null]))
        .await
        .unwrap();

    redis.kill();
    let killed = Instant::now();

    // Local delivery continues on A.
    let mut publish_times = Vec::new();
    for i in 1..=3 {
        let started = Instant::now();
        caller
            .rpc("fixture/publish", json!(["news", "story", i]))
            .await
            .unwrap();
        let e = on_a.next_event("news").await.unwrap();
        publish_times.push(started.elapsed());
        assert_eq!(e["data"], i, "{e}");
    }

    // KV calls fail quickly with an error code, then fail fast.
    let mut kv_times = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let r = caller
            .rpc_raw("fixture/kv_get", json!(["k"]))
            .await
            .unwrap();
        let took = started.elapsed();
        kv_times.push(took);
        assert_eq!(r["ok"], false, "{r}");
        assert!(
            r["code"] == "SERVICE_UNAVAILABLE" || r["code"] == "TIMEOUT",
            "{r}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    let last = kv_times[kv_times.len() - 1];
    assert!(last < Duration::from_millis(200), "fail fast: {kv_times:?}");
    // With the breaker open the other Redis extensions fail fast too: a
    // rate limit refuses (fails closed), locks and run-once records are
    // unavailable, and a replay request is denied SERVICE_UNAVAILABLE.
    for (path, args) in [
        ("fixture/limit", json!(["k", 100, 1000, 0])),
        ("fixture/lock", json!(["k", 1000, 0])),
        ("fixture/once", json!(["k", 1])),
        ("fixture/replay", json!(["news", 0])),
    ] {
        let started = Instant::now();
        let r = caller.rpc_raw(path, args).await.unwrap();
        assert_eq!(
            (path, &r["code"]),
            (path, &json!("SERVICE_UNAVAILABLE")),
            "{r}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{path} fails fast"
        );
    }
    watcher
        .send_json(&json!({"type": "replay", "topic": "news", "since": 0, "reqId": 1}))
        .await
        .unwrap();
    let denied = watcher.next_event("__replay:news").await.unwrap();
    assert_eq!(denied["event"], "denied", "{denied}");
    assert_eq!(denied["data"]["code"], "SERVICE_UNAVAILABLE", "{denied}");
    // B got none of A's outage publishes.
    assert!(
        event_within(&mut on_b, "news", Duration::from_millis(200))
            .await
            .is_none()
    );
    eprintln!(
        "redis outage e2e: publish -> local delivery during the outage {publish_times:?}; \
         KV calls {kv_times:?} (breaker open {:?} after the kill)",
        killed.elapsed()
    );
    // The breaker is open: A's clients were told.
    let degraded = watcher.next_event("__realtime").await.unwrap();
    assert_eq!(degraded["event"], "degraded", "{degraded}");
    assert!(degraded["data"]["at"].is_u64(), "{degraded}");

    redis.restart();
    let restarted = Instant::now();
    // Publish on A until B gets one through Redis again.
    let mut n = 100;
    let cross_host = loop {
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "no cross-host delivery within 15 s of the restart"
        );
        n += 1;
        caller
            .rpc("fixture/publish", json!(["news", "story", n]))
            .await
            .unwrap();
        if let Some(e) = event_within(&mut on_b, "news", Duration::from_millis(200)).await {
            assert!(e["data"].as_i64().unwrap() > 100, "{e}");
            break restarted.elapsed();
        }
    };
    // KV works again (the restarted Redis lost the old value).
    let kv_back = loop {
        let r = caller
            .rpc_raw("fixture/kv_get", json!(["k"]))
            .await
            .unwrap();
        if r["ok"] == true {
            assert_eq!(r["data"], Value::Null, "{r}");
            break restarted.elapsed();
        }
        assert!(restarted.elapsed() < Duration::from_secs(15), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = caller
        .rpc_raw("fixture/kv_set", json!(["k", "again", null]))
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}\n{}", a.output_text());
    let mut reader = Client::connect(&b.url("/t/red/ws")).await.unwrap();
    assert_eq!(
        reader.rpc("fixture/kv_get", json!(["k"])).await.unwrap(),
        json!("again")
    );
    eprintln!(
        "redis outage e2e: after the restart, cross-host delivery in {cross_host:?}, KV in {kv_back:?}"
    );
    assert!(cross_host < Duration::from_secs(12), "{cross_host:?}");
    // ...and told that it is over.
    let recovered = watcher.next_event("__realtime").await.unwrap();
    assert_eq!(recovered["event"], "recovered", "{recovered}");

    // Both hosts on one stream again: one more publish reaches both once.
    // (Drain A's backlog of the recovery loop first.)
    while event_within(&mut on_a, "news", Duration::from_millis(300))
        .await
        .is_some()
    {}
    while event_within(&mut on_b, "news", Duration::from_millis(300))
        .await
        .is_some()
    {}
    caller
        .rpc("fixture/publish", json!(["news", "story", "last"]))
        .await
        .unwrap();
    let ea = on_a.next_event("news").await.unwrap();
    let eb = on_b.next_event("news").await.unwrap();
    assert_eq!((&ea["data"], &eb["data"]), (&json!("last"), &json!("last")));
    assert_eq!(ea["seq"], eb["seq"]);
}
