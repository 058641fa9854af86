//! Two host processes sharing Redis (a fleet): a publish through one host
//! reaches subscribers on both with the same seq, KV data and quotas are
//! shared, and tenants stay apart.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, RedisNamespace, TenantSpec};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

fn fleet(ns: &RedisNamespace, tenants: fn() -> Vec<TenantSpec>) -> (HostProcess, HostProcess) {
    let a = HostProcess::start_with(bin(), &tenants(), &ns.toml()).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &ns.toml()).unwrap();
    (a, b)
}

fn two_tenants() -> Vec<TenantSpec> {
    vec![
        TenantSpec::new("red", "fixture").limits("kv_max_keys = 3"),
        TenantSpec::new("blue", "fixture"),
    ]
}

#[tokio::test]
async fn a_publish_on_one_host_reaches_subscribers_on_both_with_one_seq() {
    one_seq_across_hosts("pubsub").await;
}

#[tokio::test]
async fn the_sharded_bus_reaches_subscribers_on_both_with_one_seq() {
    one_seq_across_hosts("sharded").await;
}

async fn one_seq_across_hosts(bus_mode: &str) {
    let ns = RedisNamespace::new("bus");
    let toml = ns.toml_with_bus(bus_mode);
    let a = HostProcess::start_with(bin(), &two_tenants(), &toml).unwrap();
    let b = HostProcess::start_with(bin(), &two_tenants(), &toml).unwrap();
    let mut on_a = Client::connect(&a.url("/t/red/ws")).await.unwrap();
    let mut on_b = Client::connect(&b.url("/t/red/ws")).await.unwrap();
    let mut other_tenant = Client::connect(&b.url("/t/blue/ws")).await.unwrap();
    for c in [&mut on_a, &mut on_b, &mut other_tenant] {
        c.subscribe("news").await.unwrap();
    }
    let mut publisher = Client::connect(&a.url("/t/red/ws")).await.unwrap();
    let mut publisher_b = Client::connect(&b.url("/t/red/ws")).await.unwrap();
    for i in 0..10 {
        // Alternate hosts: one seq per topic across the fleet.
        let p = if i % 2 == 0 {
            &mut publisher
        } else {
            &mut publisher_b
        };
        p.rpc("fixture/publish", json!(["news", "story", {"n": i}]))
            .await
            .unwrap();
    }
    let mut seqs = [Vec::new(), Vec::new()];
    for (k, c) in [&mut on_a, &mut on_b].into_iter().enumerate() {
        for i in 0..10 {
            let e = c.next_event("news").await.unwrap();
            assert_eq!(e["data"], json!({"n": i}), "host {k}: {e}");
            seqs[k].push(e["seq"].as_u64().unwrap());
        }
        c.expect_silence(Duration::from_millis(200)).await.unwrap();
    }
    assert_eq!(seqs[0], seqs[1], "the same seq on every host");
    assert!(
        seqs[0].windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free: {:?}",
        seqs[0]
    );
    other_tenant
        .expect_silence(Duration::from_millis(200))
        .await
        .unwrap();
}

#[tokio::test]
async fn kv_data_and_quota_are_shared_by_the_fleet_and_per_tenant() {
    let ns = RedisNamespace::new("kv");
    let (a, b) = fleet(&ns, two_tenants);
    let mut on_a = Client::connect(&a.url("/t/red/ws")).await.unwrap();
    let mut on_b = Client::connect(&b.url("/t/red/ws")).await.unwrap();
    let mut blue = Client::connect(&b.url("/t/blue/ws")).await.unwrap();
    on_a.rpc("fixture/kv_set", json!(["k1", "from-a", null]))
        .await
        .unwrap();
    assert_eq!(
        on_b.rpc("fixture/kv_get", json!(["k1"])).await.unwrap(),
        json!("from-a")
    );
    // Same key name, other tenant: its own value.
    assert_eq!(
        blue.rpc("fixture/kv_get", json!(["k1"])).await.unwrap(),
        Value::Null
    );
    blue.rpc("fixture/kv_set", json!(["k1", "blue", null]))
        .await
        .unwrap();
    assert_eq!(
        on_a.rpc("fixture/kv_get", json!(["k1"])).await.unwrap(),
        json!("from-a")
    );
    // kv_max_keys = 3 for the whole fleet: two more keys fit, the fourth does not.
    on_b.rpc("fixture/kv_set", json!(["k2", 2, null]))
        .await
        .unwrap();
    on_a.rpc("fixture/kv_set", json!(["k3", 3, null]))
        .await
        .unwrap();
    let refused = on_b
        .rpc_raw("fixture/kv_set", json!(["k4", 4, null]))
        .await
        .unwrap();
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["code"], "RESOURCE_EXHAUSTED", "{refused}");
}
