//! Presence across a Redis fleet through the `chat` plugin (which joins a
//! room's presence when a client subscribes to it): two tabs of one user
//! are one member, leave is announced only when the last tab closes, a
//! dead host's users leave after the TTL, and tenants never see each
//! other's rooms.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, RedisNamespace, TenantSpec};

const QUIET: Duration = Duration::from_millis(400);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

fn tenants() -> Vec<TenantSpec> {
    vec![
        TenantSpec::new("alpha", "chat"),
        TenantSpec::new("beta", "chat"),
    ]
}

async fn join(h: &HostProcess, tenant: &str, user: &str) -> Client {
    let mut c = Client::connect(&h.url(&format!("/t/{tenant}/ws?user={user}")))
        .await
        .unwrap();
    assert_eq!(
        c.subscribe("room:lobby").await.unwrap()["type"],
        "subscribed"
    );
    c
}

/// The next `__presence:room:lobby` frame of `event`, skipping the
/// periodic `heartbeat` frames (checked: a list of keys, no seq).
async fn next(c: &mut Client, event: &str) -> Value {
    loop {
        let f = c.next_event("__presence:room:lobby").await.unwrap();
        if f["event"] == "heartbeat" && event != "heartbeat" {
            assert!(f["data"].is_array() && f.get("seq").is_none(), "{f}");
            continue;
        }
        assert_eq!(f["event"], event, "{f}");
        return f["data"].clone();
    }
}

/// Expect no frame but presence `heartbeat`s for [`QUIET`].
async fn quiet(c: &mut Client) {
    let until = tokio::time::Instant::now() + QUIET;
    loop {
        match tokio::time::timeout_at(until, c.next_frame()).await {
            Err(_) => return,
            Ok(f) => {
                let f = f.unwrap();
                assert_eq!(f["event"], "heartbeat", "unexpected frame {f}");
            }
        }
    }
}

#[tokio::test]
async fn presence_spans_the_fleet_dedups_tabs_and_expires_a_dead_hosts_users() {
    presence_across_a_fleet("pubsub").await;
}

#[tokio::test]
async fn presence_spans_a_fleet_on_the_sharded_bus() {
    presence_across_a_fleet("sharded").await;
}

async fn presence_across_a_fleet(bus_mode: &str) {
    let ns = RedisNamespace::new("presence");
    let toml = format!(
        "{}[presence]\nheartbeat_ms = 200\nttl_ms = 1000\n",
        ns.toml_with_bus(bus_mode)
    );
    let mut a = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();

    let mut ann1 = join(&a, "alpha", "ann").await;
    assert_eq!(
        next(&mut ann1, "presence_state").await,
        json!({"ann": {"name": "ann"}})
    );
    // The joiner may also hear its own join.
    let own = next(&mut ann1, "presence_diff").await;
    assert_eq!(
        own,
        json!({"joins": {"ann": {"name": "ann"}}, "leaves": {}})
    );

    let mut bob = join(&b, "alpha", "bob").await;
    assert_eq!(
        next(&mut bob, "presence_state").await,
        json!({"ann": {"name": "ann"}, "bob": {"name": "bob"}})
    );
    assert_eq!(
        next(&mut ann1, "presence_diff").await,
        json!({"joins": {"bob": {"name": "bob"}}, "leaves": {}}),
        "A hears B's join"
    );
    let _ = next(&mut bob, "presence_diff").await; // its own join

    // A second tab of ann, on the other host: one member, no diff.
    let mut ann2 = join(&b, "alpha", "ann").await;
    assert_eq!(
        next(&mut ann2, "presence_state").await,
        json!({"ann": {"name": "ann"}, "bob": {"name": "bob"}})
    );
    quiet(&mut bob).await;

    // Another tenant with the same room and user names sees none of it.
    let mut other = join(&b, "beta", "bob").await;
    assert_eq!(
        next(&mut other, "presence_state").await,
        json!({"bob": {"name": "bob"}})
    );
    let _ = next(&mut other, "presence_diff").await; // its own join

    // Closing one of ann's tabs: nobody hears a leave. Closing the last: everyone does.
    drop(ann1);
    quiet(&mut bob).await;
    drop(ann2);
    assert_eq!(
        next(&mut bob, "presence_diff").await,
        json!({"joins": {}, "leaves": {"ann": {"name": "ann"}}})
    );

    // Every heartbeat lists who is present (from bob's host).
    assert_eq!(next(&mut bob, "heartbeat").await, json!(["bob"]));

    // A host that dies says no goodbye: its users leave after the TTL.
    let _carol = join(&a, "alpha", "carol").await;
    assert_eq!(
        next(&mut bob, "presence_diff").await,
        json!({"joins": {"carol": {"name": "carol"}}, "leaves": {}})
    );
    a.kill().unwrap();
    assert_eq!(
        next(&mut bob, "presence_diff").await,
        json!({"joins": {}, "leaves": {"carol": {"name": "carol"}}}),
        "expired by the surviving host"
    );
    quiet(&mut bob).await;
    quiet(&mut other).await;
}

#[tokio::test]
async fn presence_works_on_the_embedded_default_and_clients_cannot_subscribe_to_it() {
    let h = HostProcess::start_with(bin(), &tenants(), "").unwrap();
    let mut ann = join(&h, "alpha", "ann").await;
    assert_eq!(
        next(&mut ann, "presence_state").await,
        json!({"ann": {"name": "ann"}})
    );
    let mut eve = Client::connect(&h.url("/t/alpha/ws?user=eve"))
        .await
        .unwrap();
    let denied = eve.subscribe("__presence:room:lobby").await.unwrap();
    assert_eq!(denied["type"], "subscribe-denied");
    assert_eq!(denied["reason"], "INVALID_TOPIC");
    // Unsubscribing leaves the room's presence.
    let mut bob = join(&h, "alpha", "bob").await;
    let _ = next(&mut bob, "presence_state").await;
    let _ = next(&mut bob, "presence_diff").await;
    ann.send_json(&json!({"type": "unsubscribe", "topic": "room:lobby"}))
        .await
        .unwrap();
    let left = loop {
        let d = next(&mut bob, "presence_diff").await;
        if d["leaves"] != json!({}) {
            break d;
        }
    };
    assert_eq!(
        left,
        json!({"joins": {}, "leaves": {"ann": {"name": "ann"}}})
    );
}

/// The next `activity:lobby` event: `(event, user)`.
async fn activity(c: &mut Client) -> (String, String) {
    let f = c.next_event("activity:lobby").await.unwrap();
    (
        f["event"].as_str().unwrap().to_owned(),
        f["data"]["user"].as_str().unwrap().to_owned(),
    )
}

async fn watch_activity(h: &HostProcess, tenant: &str) -> Client {
    let mut c = Client::connect(&h.url(&format!("/t/{tenant}/ws?user=watcher")))
        .await
        .unwrap();
    assert_eq!(
        c.subscribe("activity:lobby").await.unwrap()["type"],
        "subscribed"
    );
    c
}

/// The `chat` plugin's `on-presence` hook publishes `online` / `offline` on
/// `activity:{room}`: debounced (a quick reconnect says nothing), once per
/// change across the fleet, and `offline` also for the users of a host
/// that died.
#[tokio::test]
async fn the_presence_hook_hears_users_come_and_go_across_the_fleet() {
    let ns = RedisNamespace::new("presence-events");
    let toml = format!(
        "{}[presence]\nheartbeat_ms = 200\nttl_ms = 1000\nevents_delay_ms = 300\n",
        ns.toml()
    );
    let mut a = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let mut watcher = watch_activity(&b, "alpha").await;
    let mut other_tenant = watch_activity(&b, "beta").await;

    let ann = join(&a, "alpha", "ann").await;
    assert_eq!(
        activity(&mut watcher).await,
        ("online".into(), "ann".into())
    );
    // A quick reconnect (to the other host) within the delay: ann never
    // went offline as far as the hook is concerned.
    drop(ann);
    let ann = join(&b, "alpha", "ann").await;
    watcher
        .expect_silence(Duration::from_millis(1200))
        .await
        .unwrap();

    // Leaving for good: one offline, delivered once although both hosts
    // deliver events.
    drop(ann);
    assert_eq!(
        activity(&mut watcher).await,
        ("offline".into(), "ann".into())
    );
    watcher
        .expect_silence(Duration::from_millis(800))
        .await
        .unwrap();

    // A host that dies: its user goes offline once its presence expires,
    // announced by the surviving host.
    let _carol = join(&a, "alpha", "carol").await;
    assert_eq!(
        activity(&mut watcher).await,
        ("online".into(), "carol".into())
    );
    a.kill().unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        activity(&mut watcher).await,
        ("offline".into(), "carol".into())
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    other_tenant.expect_silence(QUIET).await.unwrap();
}

#[tokio::test]
async fn the_presence_hook_works_on_the_embedded_default() {
    let h =
        HostProcess::start_with(bin(), &tenants(), "[presence]\nevents_delay_ms = 100\n").unwrap();
    let mut watcher = watch_activity(&h, "alpha").await;
    let bob = join(&h, "alpha", "bob").await;
    assert_eq!(
        activity(&mut watcher).await,
        ("online".into(), "bob".into())
    );
    drop(bob);
    assert_eq!(
        activity(&mut watcher).await,
        ("offline".into(), "bob".into())
    );
}
