//! The rate-limit, lock, idempotency and replay imports through a real
//! plugin: on one host (memory backends) and shared by two hosts on Redis,
//! with equal key names in two tenants kept apart.

use std::path::Path;

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, RedisNamespace, TenantSpec};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

fn tenants() -> Vec<TenantSpec> {
    vec![
        TenantSpec::new("alpha", "fixture"),
        TenantSpec::new("beta", "fixture"),
    ]
}

/// Clients of user ann of tenant `alpha` on host A and host B (the same
/// host twice on memory), of user bob of `alpha` on host B, and of a user
/// ann of tenant `beta` on host B.
struct Clients {
    a: Client,
    b: Client,
    bob: Client,
    other_tenant: Client,
}

async fn clients(a: &HostProcess, b: &HostProcess) -> Clients {
    Clients {
        a: Client::connect(&a.url("/t/alpha/ws?user=ann"))
            .await
            .unwrap(),
        b: Client::connect(&b.url("/t/alpha/ws?user=ann"))
            .await
            .unwrap(),
        bob: Client::connect(&b.url("/t/alpha/ws?user=bob"))
            .await
            .unwrap(),
        other_tenant: Client::connect(&b.url("/t/beta/ws?user=ann"))
            .await
            .unwrap(),
    }
}

/// An RPC sent with an `idempotencyKey`; the `data` of its answer.
async fn rpc_once(c: &mut Client, path: &str, args: Value, key: &str) -> Value {
    let id = c.new_id();
    c.send_json(&json!({"rpc": path, "id": id, "args": args, "idempotencyKey": key}))
        .await
        .unwrap();
    let reply = c
        .wait_for(|f| f["topic"] == "__rpc" && f["event"] == id.as_str())
        .await
        .unwrap();
    reply["data"].clone()
}

/// The behaviour every deployment shows, run against one host or a fleet.
async fn extensions_behave(c: &mut Clients) {
    // Rate limit: 5 points shared by every host; the other tenant has its
    // own bucket under the same key.
    let mut allowed = 0;
    for i in 0..10 {
        let client = if i % 2 == 0 { &mut c.a } else { &mut c.b };
        let d = client
            .rpc("fixture/limit", json!(["send:ann", 5, 60_000, 0]))
            .await
            .unwrap();
        if d["allowed"] == true {
            allowed += 1;
        } else {
            assert!(d["retryAfterMs"].as_u64().unwrap() > 0, "{d}");
        }
    }
    assert_eq!(allowed, 5, "one bucket across the fleet");
    let theirs = c
        .other_tenant
        .rpc("fixture/limit", json!(["send:ann", 5, 60_000, 0]))
        .await
        .unwrap();
    assert_eq!(theirs["allowed"], true, "another tenant's bucket: {theirs}");

    // Lock: held on A, busy on B, free again after release; fencing tokens grow.
    let t1 =
        c.a.rpc("fixture/lock", json!(["order:1", 10_000, 0]))
            .await
            .unwrap();
    assert!(t1.is_u64(), "{t1}");
    assert_eq!(
        c.b.rpc("fixture/lock", json!(["order:1", 10_000, 50]))
            .await
            .unwrap(),
        Value::Null,
        "held by A"
    );
    let other = c
        .other_tenant
        .rpc("fixture/lock", json!(["order:1", 10_000, 0]))
        .await
        .unwrap();
    assert!(
        other.is_u64(),
        "another tenant's lock of the same name is free"
    );
    assert_eq!(
        c.b.rpc("fixture/unlock", json!(["order:1", 999_999]))
            .await
            .unwrap(),
        json!(false),
        "a stale token cannot release"
    );
    assert_eq!(
        c.a.rpc("fixture/unlock", json!(["order:1", t1]))
            .await
            .unwrap(),
        json!(true)
    );
    let t2 =
        c.b.rpc("fixture/lock", json!(["order:1", 10_000, 0]))
            .await
            .unwrap();
    assert!(
        t2.as_u64().unwrap() > t1.as_u64().unwrap(),
        "{t1} then {t2}"
    );

    // Idempotency: the first call's result wins on every host.
    assert_eq!(
        c.a.rpc("fixture/once", json!(["pay:7", "first"]))
            .await
            .unwrap(),
        json!("first")
    );
    assert_eq!(
        c.b.rpc("fixture/once", json!(["pay:7", "second"]))
            .await
            .unwrap(),
        json!("first")
    );
    assert_eq!(
        c.other_tenant
            .rpc("fixture/once", json!(["pay:7", "theirs"]))
            .await
            .unwrap(),
        json!("theirs")
    );

    // RPCs with an idempotencyKey run once per user and key, fleet-wide.
    let first = rpc_once(&mut c.a, "fixture/kv_incr", json!(["orders", 1]), "k1").await;
    assert_eq!(first["data"], 1, "{first}");
    let retry = rpc_once(&mut c.b, "fixture/kv_incr", json!(["orders", 1]), "k1").await;
    assert_eq!(retry["data"], 1, "the retry gets the first result: {retry}");
    let bobs = rpc_once(&mut c.bob, "fixture/kv_incr", json!(["orders", 1]), "k1").await;
    assert_eq!(
        bobs["data"], 2,
        "another user's key is another call: {bobs}"
    );
    c.a.rpc("fixture/kv_set", json!(["bad", "x", null]))
        .await
        .unwrap();
    let failed = rpc_once(&mut c.a, "fixture/kv_incr", json!(["bad", 1]), "k2").await;
    assert_eq!(failed["ok"], false, "{failed}");
    c.a.rpc("fixture/kv_set", json!(["bad", 5, null]))
        .await
        .unwrap();
    let again = rpc_once(&mut c.b, "fixture/kv_incr", json!(["bad", 1]), "k2").await;
    assert_eq!(
        again["data"], 6,
        "a failed call keeps nothing, the retry runs: {again}"
    );
    let reserved =
        c.a.rpc_raw("fixture/once", json!(["__rpc:x", 1]))
            .await
            .unwrap();
    assert_eq!(
        reserved["code"], "FORBIDDEN",
        "plugins cannot read the host's records"
    );

    // Replay import: what was published, with the wire seqs.
    for n in 1..=3 {
        c.a.rpc("fixture/publish", json!(["feed", "item", {"n": n}]))
            .await
            .unwrap();
    }
    let page = c.b.rpc("fixture/replay", json!(["feed", 1])).await.unwrap();
    assert_eq!(page["seq"], 3);
    assert_eq!(page["truncated"], false);
    assert_eq!(
        page["events"],
        json!([
            {"seq": 2, "event": "item", "data": {"n": 2}},
            {"seq": 3, "event": "item", "data": {"n": 3}},
        ])
    );
    let theirs = c
        .other_tenant
        .rpc("fixture/replay", json!(["feed", 0]))
        .await
        .unwrap();
    assert_eq!(theirs["events"], json!([]), "another tenant's feed");
    let reserved =
        c.a.rpc_raw("fixture/replay", json!(["__rpc", 0]))
            .await
            .unwrap();
    assert_eq!(reserved["code"], "FORBIDDEN", "{reserved}");
}

#[tokio::test]
async fn extensions_work_on_one_host() {
    let h = HostProcess::start_with(bin(), &tenants(), "").unwrap();
    let mut c = clients(&h, &h).await;
    extensions_behave(&mut c).await;
}

#[tokio::test]
async fn extensions_are_shared_by_a_redis_fleet() {
    let ns = RedisNamespace::new("ext");
    let a = HostProcess::start_with(bin(), &tenants(), &ns.toml()).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &ns.toml()).unwrap();
    let mut c = clients(&a, &b).await;
    extensions_behave(&mut c).await;
}

#[tokio::test]
async fn publish_rates_are_merged_across_the_fleet() {
    let ns = RedisNamespace::new("rates");
    let a = HostProcess::start_with(bin(), &tenants(), &ns.toml()).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &ns.toml()).unwrap();
    let mut on_a = Client::connect(&a.url("/t/alpha/ws")).await.unwrap();
    let mut on_b = Client::connect(&b.url("/t/alpha/ws")).await.unwrap();
    for _ in 0..20 {
        on_a.rpc("fixture/publish", json!(["hot", "e", 1]))
            .await
            .unwrap();
        on_b.rpc("fixture/publish", json!(["hot", "e", 1]))
            .await
            .unwrap();
    }
    on_b.rpc("fixture/publish", json!(["cold", "e", 1]))
        .await
        .unwrap();
    // Hosts report every 5 s; ask until both have.
    let started = std::time::Instant::now();
    let top = loop {
        let (status, body) = a
            .admin("GET", "/admin/tenants/alpha/publish-rates", b"")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let top = body["topPublishers"].clone();
        if top[0]["contributingInstances"] == 2 {
            break top;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(top[0]["topic"], "hot", "{top}");
    assert!(top[0]["messagesPerSec"].as_f64().unwrap() > 0.0, "{top}");
    assert_eq!(top[1]["topic"], "cold", "{top}");
    assert_eq!(top[1]["contributingInstances"], 1, "{top}");
    let (_, other) = b
        .admin("GET", "/admin/tenants/beta/publish-rates", b"")
        .await
        .unwrap();
    assert_eq!(other["topPublishers"], json!([]), "another tenant: {other}");
}

#[tokio::test]
async fn cursors_are_relayed_across_the_fleet_with_a_snapshot_on_attach() {
    let ns = RedisNamespace::new("cursor");
    let a = HostProcess::start_with(bin(), &tenants(), &ns.toml()).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &ns.toml()).unwrap();
    let attach = |h: &HostProcess, tenant: &str, user: &str| {
        let url = h.url(&format!("/t/{tenant}/ws?user={user}"));
        async move {
            let mut c = Client::connect(&url).await.unwrap();
            c.subscribe("canvas").await.unwrap();
            c.send_json(&json!({"type": "cursor-snapshot", "topic": "canvas"}))
                .await
                .unwrap();
            let snap = c.next_event("__cursor:canvas").await.unwrap();
            assert_eq!(snap["event"], "snapshot", "{snap}");
            (c, snap["data"].clone())
        }
    };
    let (mut ann, snap) = attach(&a, "alpha", "ann").await;
    assert_eq!(snap, json!([]));
    let (mut bob, _) = attach(&b, "alpha", "bob").await;
    let (mut other, _) = attach(&b, "beta", "ann").await;
    let whoami = ann.rpc("fixture/whoami", json!([])).await.unwrap();
    let ann_key = whoami["connectionId"].clone();

    ann.send_json(&json!({"type": "cursor", "topic": "canvas", "data": {"x": 1, "y": 2}}))
        .await
        .unwrap();
    let update = bob.next_event("__cursor:canvas").await.unwrap();
    assert_eq!(update["event"], "update", "{update}");
    assert_eq!(
        update["data"],
        json!({"key": ann_key, "user": "ann", "data": {"x": 1, "y": 2}})
    );
    // A later viewer gets the snapshot; a connection not on the topic
    // cannot move a cursor there.
    let (mut carol, snap) = attach(&b, "alpha", "carol").await;
    assert_eq!(
        snap,
        json!([{"key": ann_key, "user": "ann", "data": {"x": 1, "y": 2}}])
    );
    let mut outsider = Client::connect(&a.url("/t/alpha/ws?user=eve"))
        .await
        .unwrap();
    outsider
        .send_json(&json!({"type": "cursor", "topic": "canvas", "data": {"x": 9}}))
        .await
        .unwrap();
    // Leaving the topic removes the cursor.
    ann.send_json(&json!({"type": "unsubscribe", "topic": "canvas"}))
        .await
        .unwrap();
    let gone = loop {
        let f = carol.next_event("__cursor:canvas").await.unwrap();
        if f["event"] != "update" {
            break f;
        }
        assert_ne!(f["data"]["user"], "eve", "{f}");
    };
    assert_eq!(
        (gone["event"].as_str(), &gone["data"]),
        (Some("remove"), &json!({"key": ann_key}))
    );
    other
        .expect_silence(std::time::Duration::from_millis(300))
        .await
        .unwrap();
}
