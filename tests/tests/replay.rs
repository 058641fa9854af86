//! Catching up on missed events: the `replay` frame and `resume` after a
//! reconnect, on one host (memory buffers) and across a Redis fleet where
//! the client reconnects to another host after its host died.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, RedisNamespace, TenantSpec};

const SILENCE: Duration = Duration::from_millis(300);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

fn tenants() -> Vec<TenantSpec> {
    vec![
        TenantSpec::new("alpha", "fixture"),
        TenantSpec::new("beta", "fixture"),
    ]
}

async fn publish(c: &mut Client, topic: &str, n: u64) {
    c.rpc("fixture/publish", json!([topic, "story", {"n": n}]))
        .await
        .unwrap();
}

/// The next frame on `__replay:{topic}`.
async fn next_replay(c: &mut Client, topic: &str) -> Value {
    c.next_event(&format!("__replay:{topic}")).await.unwrap()
}

#[tokio::test]
async fn replay_frame_sends_what_was_missed_then_end() {
    let h = HostProcess::start_with(bin(), &tenants(), "[replay]\nsize = 3\n").unwrap();
    let mut p = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();
    for n in 1..=5 {
        publish(&mut p, "news", n).await;
    }
    let mut c = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();

    // Within the buffer (3..=5 kept): no truncation.
    c.send_json(&json!({"type":"replay","topic":"news","since":3,"reqId":1}))
        .await
        .unwrap();
    for seq in [4, 5] {
        let m = next_replay(&mut c, "news").await;
        assert_eq!(m["event"], "msg", "{m}");
        assert_eq!(
            m["data"],
            json!({"reqId":1,"seq":seq,"event":"story","data":{"n":seq}})
        );
    }
    let end = next_replay(&mut c, "news").await;
    assert_eq!(
        (end["event"].as_str(), &end["data"]),
        (Some("end"), &json!({"reqId":1}))
    );

    // Older than the buffer: `truncated` first, then what is kept, then
    // `end{truncated:true}`.
    c.send_json(&json!({"type":"replay","topic":"news","since":1,"reqId":"r2"}))
        .await
        .unwrap();
    assert_eq!(next_replay(&mut c, "news").await["event"], "truncated");
    for seq in [3, 4, 5] {
        assert_eq!(next_replay(&mut c, "news").await["data"]["seq"], seq);
    }
    let end = next_replay(&mut c, "news").await;
    assert_eq!(end["data"], json!({"reqId":"r2","truncated":true}));

    // The subscribe gate applies; another tenant's buffer is not visible.
    c.send_json(&json!({"type":"replay","topic":"denied:x","since":0,"reqId":3}))
        .await
        .unwrap();
    let denied = next_replay(&mut c, "denied:x").await;
    assert_eq!(denied["event"], "denied");
    assert_eq!(denied["data"], json!({"code":"FORBIDDEN","reqId":3}));
    let mut other = Client::connect(&h.url("/t/beta/ws")).await.unwrap();
    other
        .send_json(&json!({"type":"replay","topic":"news","since":0}))
        .await
        .unwrap();
    let end = next_replay(&mut other, "news").await;
    assert_eq!(
        (end["event"].as_str(), &end["data"]),
        (Some("end"), &Value::Null)
    );
    other.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn resume_replays_each_topic_then_goes_live_without_gap_or_duplicate() {
    let h = HostProcess::start_with(bin(), &tenants(), "").unwrap();
    let mut p = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();
    let mut c = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();
    c.subscribe("news").await.unwrap();
    publish(&mut p, "news", 1).await;
    assert_eq!(c.next_event("news").await.unwrap()["seq"], 1);
    drop(c);
    // Missed while disconnected.
    for n in 2..=4 {
        publish(&mut p, "news", n).await;
    }
    publish(&mut p, "sport", 1).await;

    let mut c = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();
    c.send_json(&json!({
        "type": "resume",
        "sessionId": "previous",
        "lastSeenSeqs": {"news": 1, "sport": 0, "denied:x": 0}
    }))
    .await
    .unwrap();
    // A publisher keeps going while the resume is served.
    let racer = tokio::spawn(async move {
        for n in 5..=40 {
            publish(&mut p, "news", n).await;
        }
        p
    });
    let mut news = Vec::new();
    let mut sport = Vec::new();
    loop {
        let f = c.next_frame().await.unwrap();
        if f["type"] == "resumed" {
            break;
        }
        match f["topic"].as_str() {
            Some("news") => news.push(f["seq"].as_u64().unwrap()),
            Some("sport") => sport.push(f["seq"].as_u64().unwrap()),
            _ => panic!("unexpected frame before resumed: {f}"),
        }
    }
    assert_eq!(sport, [1]);
    // The client's own resubscribe is acked (it is already subscribed).
    assert_eq!(c.subscribe("news").await.unwrap()["type"], "subscribed");
    let _p = racer.await.unwrap();
    while news.last() != Some(&40) {
        let f = c
            .next_event("news")
            .await
            .unwrap_or_else(|e| panic!("{e}: got {news:?}"));
        news.push(f["seq"].as_u64().unwrap());
    }
    assert_eq!(
        news,
        (2..=40).collect::<Vec<_>>(),
        "every event once, in order"
    );
    // The denied topic was skipped: its subscribe is still denied.
    let denied = c.subscribe("denied:x").await.unwrap();
    assert_eq!(denied["type"], "subscribe-denied");
    c.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn a_client_reconnecting_to_another_host_after_its_host_died_replays_exactly_what_it_missed()
{
    failover_resume("pubsub").await;
}

#[tokio::test]
async fn failover_resume_on_the_sharded_bus() {
    failover_resume("sharded").await;
}

async fn failover_resume(bus_mode: &str) {
    let ns = RedisNamespace::new("resume");
    let mut a = HostProcess::start_with(bin(), &tenants(), &ns.toml_with_bus(bus_mode)).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &ns.toml_with_bus(bus_mode)).unwrap();
    let mut publisher = Client::connect(&b.url("/t/alpha/ws")).await.unwrap();
    let mut c = Client::connect(&a.url("/t/alpha/ws")).await.unwrap();
    c.subscribe("news").await.unwrap();
    for n in 1..=3 {
        publish(&mut publisher, "news", n).await;
    }
    let mut last = 0;
    for n in 1..=3 {
        let e = c.next_event("news").await.unwrap();
        assert_eq!(e["data"], json!({"n": n}));
        last = e["seq"].as_u64().unwrap();
    }
    assert_eq!(last, 3);
    a.kill().unwrap();
    for n in 4..=6 {
        publish(&mut publisher, "news", n).await;
    }
    let mut c = Client::connect(&b.url("/t/alpha/ws")).await.unwrap();
    c.send_json(&json!({"type":"resume","sessionId":"s","lastSeenSeqs":{"news": last}}))
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let f = c.next_frame().await.unwrap();
        if f["type"] == "resumed" {
            break;
        }
        assert_eq!(f["topic"], "news", "{f}");
        got.push((f["seq"].as_u64().unwrap(), f["data"]["n"].as_u64().unwrap()));
    }
    assert_eq!(got, [(4, 4), (5, 5), (6, 6)], "exactly what it missed");
    publish(&mut publisher, "news", 7).await;
    let e = c.next_event("news").await.unwrap();
    assert_eq!((e["seq"].as_u64(), &e["data"]), (Some(7), &json!({"n": 7})));
    c.expect_silence(SILENCE).await.unwrap();
}
