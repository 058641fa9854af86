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

/// The next `__presence:room:lobby` frame of `event`.
async fn next(c: &mut Client, event: &str) -> Value {
    let f = c.next_event("__presence:room:lobby").await.unwrap();
    assert_eq!(f["event"], event, "{f}");
    f["data"].clone()
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
    bob.expect_silence(QUIET).await.unwrap();

    // Another tenant with the same room and user names sees none of it.
    let mut other = join(&b, "beta", "bob").await;
    assert_eq!(
        next(&mut other, "presence_state").await,
        json!({"bob": {"name": "bob"}})
    );
    let _ = next(&mut other, "presence_diff").await; // its own join

    // Closing one of ann's tabs: nobody hears a leave. Closing the last: everyone does.
    drop(ann1);
    bob.expect_silence(QUIET).await.unwrap();
    drop(ann2);
    assert_eq!(
        next(&mut bob, "presence_diff").await,
        json!({"joins": {}, "leaves": {"ann": {"name": "ann"}}})
    );

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
    bob.expect_silence(QUIET).await.unwrap();
    other.expect_silence(QUIET).await.unwrap();
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
