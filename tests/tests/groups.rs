//! Broadcast groups through the fixture plugin's `fixture/group_*` RPCs:
//! on one host (memory backends) and across two hosts on Redis — members
//! hear joins, leaves and role-filtered events wherever they are
//! connected, `maxMembers` holds across the fleet, `close` reaches every
//! member, a dead host's members leave after the member TTL, and two
//! tenants with equal group names never meet.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, RedisNamespace, TenantSpec};

const QUIET: Duration = Duration::from_millis(300);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

fn tenants() -> Vec<TenantSpec> {
    vec![
        TenantSpec::new("alpha", "fixture"),
        TenantSpec::new("beta", "fixture"),
    ]
}

async fn client(h: &HostProcess, tenant: &str, user: &str) -> Client {
    Client::connect(&h.url(&format!("/t/{tenant}/ws?user={user}")))
        .await
        .unwrap()
}

/// The next `__group:{group}` frame: `(event, data)`.
async fn next(c: &mut Client, group: &str) -> (String, Value) {
    let f = c.next_event(&format!("__group:{group}")).await.unwrap();
    (f["event"].as_str().unwrap().to_owned(), f["data"].clone())
}

/// The roles of a member list (`[{"role",…}]`), sorted (members are
/// listed by connection id).
fn roles(members: &Value) -> Vec<String> {
    let mut roles: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect();
    roles.sort();
    roles
}

async fn join(c: &mut Client, group: &str, role: &str) -> Value {
    c.rpc("fixture/group_join", json!([group, role]))
        .await
        .unwrap()
}

#[tokio::test]
async fn groups_on_one_host() {
    let h = HostProcess::start_with(bin(), &tenants(), "").unwrap();
    groups_across(&h, &h).await;
}

#[tokio::test]
async fn groups_across_a_redis_fleet() {
    let ns = RedisNamespace::new("groups");
    let toml = ns.toml();
    let a = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    groups_across(&a, &b).await;
}

#[tokio::test]
async fn groups_across_a_fleet_on_the_sharded_bus() {
    let ns = RedisNamespace::new("groups-sharded");
    let toml = ns.toml_with_bus("sharded");
    let a = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    groups_across(&a, &b).await;
}

/// An admin on `a`, a viewer on `b`; capacity 2 across both.
async fn groups_across(a: &HostProcess, b: &HostProcess) {
    let mut admin = client(a, "alpha", "ann").await;
    let mut viewer = client(b, "alpha", "bob").await;
    let mut third = client(b, "alpha", "cy").await;
    let mut other_tenant = client(b, "beta", "ann").await;

    let info = admin
        .rpc(
            "fixture/group_create",
            json!(["lobby", 2, {"game": "chess"}]),
        )
        .await
        .unwrap();
    assert_eq!(
        info,
        json!({"created": true, "maxMembers": 2, "meta": {"game": "chess"}, "closed": false})
    );
    let again = viewer
        .rpc("fixture/group_create", json!(["lobby", 9, {}]))
        .await
        .unwrap();
    assert_eq!(again["created"], false, "one group for the fleet: {again}");
    assert_eq!(again["maxMembers"], 2);

    assert_eq!(
        join(&mut admin, "lobby", "admin").await,
        json!({"new": true, "role": "admin", "count": 1})
    );
    assert_eq!(
        next(&mut admin, "lobby").await,
        ("members".into(), json!([{"role": "admin"}]))
    );
    assert_eq!(
        next(&mut admin, "lobby").await,
        ("join".into(), json!({"role": "admin", "count": 1}))
    );
    assert_eq!(
        join(&mut viewer, "lobby", "viewer").await,
        json!({"new": true, "role": "viewer", "count": 2})
    );
    let (event, members) = next(&mut viewer, "lobby").await;
    assert_eq!(event, "members");
    assert_eq!(roles(&members), ["admin", "viewer"]);
    assert_eq!(
        next(&mut admin, "lobby").await,
        ("join".into(), json!({"role": "viewer", "count": 2})),
        "the join on the other host is heard"
    );
    // Full across the fleet.
    let full = third
        .rpc_raw("fixture/group_join", json!(["lobby", "member"]))
        .await
        .unwrap();
    assert_eq!(full["code"], "GROUP_FULL", "{full}");

    // Role-filtered publish from the viewer's host: only the admin hears it.
    viewer
        .rpc(
            "fixture/group_publish",
            json!(["lobby", "secret", {"k": 1}, "admin"]),
        )
        .await
        .unwrap();
    viewer
        .rpc(
            "fixture/group_publish",
            json!(["lobby", "move", "e4", null]),
        )
        .await
        .unwrap();
    assert_eq!(
        next(&mut admin, "lobby").await,
        ("secret".into(), json!({"k": 1}))
    );
    assert_eq!(
        next(&mut admin, "lobby").await,
        ("move".into(), json!("e4"))
    );
    assert_eq!(
        next(&mut viewer, "lobby").await,
        ("join".into(), json!({"role": "viewer", "count": 2}))
    );
    assert_eq!(
        next(&mut viewer, "lobby").await,
        ("move".into(), json!("e4")),
        "the viewer gets the event for all, not the admins'"
    );
    let reserved = viewer
        .rpc_raw(
            "fixture/group_publish",
            json!(["lobby", "close", null, null]),
        )
        .await
        .unwrap();
    assert_eq!(reserved["ok"], false, "{reserved}");

    let members = third
        .rpc("fixture/group_members", json!(["lobby"]))
        .await
        .unwrap();
    assert_eq!(roles(&members), ["admin", "viewer"], "{members}");
    assert_eq!(
        third
            .rpc("fixture/group_count", json!(["lobby"]))
            .await
            .unwrap(),
        2
    );
    third
        .rpc("fixture/group_set_meta", json!(["lobby", {"game": "go"}]))
        .await
        .unwrap();
    assert_eq!(
        admin
            .rpc("fixture/group_meta", json!(["lobby"]))
            .await
            .unwrap(),
        json!({"game": "go"})
    );

    // The other tenant's `lobby` is another group.
    assert_eq!(
        other_tenant
            .rpc("fixture/group_count", json!(["lobby"]))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        other_tenant
            .rpc("fixture/group_meta", json!(["lobby"]))
            .await
            .unwrap(),
        Value::Null
    );
    other_tenant
        .rpc("fixture/group_create", json!(["lobby", 1, {}]))
        .await
        .unwrap();
    assert_eq!(
        join(&mut other_tenant, "lobby", "member").await["count"],
        1,
        "alpha's members do not count"
    );
    assert_eq!(next(&mut other_tenant, "lobby").await.0, "members");
    assert_eq!(next(&mut other_tenant, "lobby").await.0, "join");

    // The viewer leaves by closing its connection: the admin hears it, and
    // a third member now fits.
    drop(viewer);
    assert_eq!(
        next(&mut admin, "lobby").await,
        ("leave".into(), json!({"role": "viewer", "count": 1}))
    );
    assert_eq!(join(&mut third, "lobby", "member").await["count"], 2);
    assert_eq!(next(&mut admin, "lobby").await.0, "join");
    assert!(
        third
            .rpc("fixture/group_leave", json!(["lobby"]))
            .await
            .unwrap()
            == true
    );
    assert_eq!(
        next(&mut admin, "lobby").await,
        ("leave".into(), json!({"role": "member", "count": 1}))
    );
    assert_eq!(join(&mut third, "lobby", "member").await["count"], 2);

    // Close from the third member's host: everyone hears `close` once, and
    // joins are refused afterwards.
    assert_eq!(
        third
            .rpc("fixture/group_close", json!(["lobby"]))
            .await
            .unwrap(),
        2
    );
    let closing = [&mut admin, &mut third];
    for c in closing {
        loop {
            let (event, data) = next(c, "lobby").await;
            if event == "close" {
                assert_eq!(data, Value::Null);
                break;
            }
            assert!(event == "join" || event == "members", "{event} {data}");
        }
    }
    let refused = admin
        .rpc_raw("fixture/group_join", json!(["lobby", "member"]))
        .await
        .unwrap();
    assert_eq!(refused["code"], "GROUP_CLOSED", "{refused}");
    admin.expect_silence(QUIET).await.unwrap();
    third.expect_silence(QUIET).await.unwrap();
    assert_eq!(
        other_tenant
            .rpc("fixture/group_count", json!(["lobby"]))
            .await
            .unwrap(),
        1,
        "beta's lobby is still open"
    );
}

#[tokio::test]
async fn a_dead_hosts_members_leave_after_the_member_ttl() {
    let ns = RedisNamespace::new("groups-ttl");
    let toml = format!("{}[groups]\nmember_ttl_ms = 900\n", ns.toml());
    let mut a = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let mut on_a = client(&a, "alpha", "ann").await;
    let mut on_b = client(&b, "alpha", "bob").await;
    on_a.rpc("fixture/group_create", json!(["room", null, {}]))
        .await
        .unwrap();
    join(&mut on_a, "room", "admin").await;
    join(&mut on_b, "room", "member").await;
    assert_eq!(next(&mut on_b, "room").await.0, "members");
    assert_eq!(next(&mut on_b, "room").await.0, "join");

    // Well past the TTL, heartbeats keep both.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        on_b.rpc("fixture/group_count", json!(["room"]))
            .await
            .unwrap(),
        2
    );

    a.kill().unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        next(&mut on_b, "room").await,
        ("leave".into(), json!({"role": "admin", "count": 1}))
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        on_b.rpc("fixture/group_count", json!(["room"]))
            .await
            .unwrap(),
        1
    );
}
