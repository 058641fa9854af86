//! The "instance per tenant" tier: with `[redis.tenant_urls]`, one tenant's
//! data and bus traffic live on a Redis of its own while the others share
//! the host's Redis. Two real host processes, the shared test Redis (a
//! private namespace) and a private `redis-server` for the tenant `vip`:
//!
//! - both tenants publish across the two hosts and share KV across them;
//! - `vip`'s keys are on its own Redis only, `std`'s on the shared one only;
//! - killing `vip`'s Redis degrades `vip` alone (`degraded` on its
//!   `__realtime`, KV `SERVICE_UNAVAILABLE`), while `std` keeps working
//!   across hosts and hears nothing; after a restart `vip` recovers.
//!
//! Run on both bus modes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, OwnRedis, REDIS_URL, RedisNamespace, TenantSpec};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

/// How many keys of `tenant` under `ns` the Redis at `url` holds.
async fn keys_of(url: &str, ns: &str, tenant: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:t:{{{tenant}}}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.len()
}

/// The first event on `topic` within `d`, if any.
async fn event_within(c: &mut Client, topic: &str, d: Duration) -> Option<Value> {
    tokio::time::timeout(d, c.next_event(topic))
        .await
        .ok()
        .and_then(Result::ok)
}

/// A publish by a client on host A reaches a subscriber on host B.
async fn crosses_hosts(a: &HostProcess, b: &HostProcess, tenant: &str, n: i64) {
    let mut sub = Client::connect(&b.url(&format!("/t/{tenant}/ws")))
        .await
        .unwrap();
    sub.subscribe("news").await.unwrap();
    let mut caller = Client::connect(&a.url(&format!("/t/{tenant}/ws")))
        .await
        .unwrap();
    caller
        .rpc("fixture/publish", json!(["news", "story", n]))
        .await
        .unwrap();
    let e = sub.next_event("news").await.unwrap();
    assert_eq!(e["data"], n, "{tenant}: {e}");
}

async fn own_redis_for_one_tenant(bus_mode: &str) {
    let mut own = OwnRedis::start();
    let ns = RedisNamespace::new("own");
    let toml = format!(
        "{}[redis.tenant_urls]\nvip = {:?}\n",
        ns.toml_with_bus(bus_mode),
        own.url()
    );
    let tenants = vec![
        TenantSpec::new("vip", "fixture"),
        TenantSpec::new("std", "fixture"),
    ];
    let a = HostProcess::start_with(bin(), &tenants, &toml).unwrap();
    let b = HostProcess::start_with(bin(), &tenants, &toml).unwrap();

    // Both tenants work across the two hosts: bus and KV.
    for tenant in ["vip", "std"] {
        crosses_hosts(&a, &b, tenant, 1).await;
        let mut on_a = Client::connect(&a.url(&format!("/t/{tenant}/ws")))
            .await
            .unwrap();
        on_a.rpc("fixture/kv_set", json!(["k", tenant, null]))
            .await
            .unwrap();
        let mut on_b = Client::connect(&b.url(&format!("/t/{tenant}/ws")))
            .await
            .unwrap();
        assert_eq!(
            on_b.rpc("fixture/kv_get", json!(["k"])).await.unwrap(),
            json!(tenant)
        );
    }
    // Each tenant's keys are on its own Redis only.
    assert!(keys_of(&own.url(), &ns.0, "vip").await > 0);
    assert_eq!(keys_of(REDIS_URL, &ns.0, "vip").await, 0);
    assert!(keys_of(REDIS_URL, &ns.0, "std").await > 0);
    assert_eq!(keys_of(&own.url(), &ns.0, "std").await, 0);

    // Watchers of the host's notices, one per tenant, on host A.
    let mut vip_watch = Client::connect(&a.url("/t/vip/ws")).await.unwrap();
    vip_watch.subscribe("__realtime").await.unwrap();
    let mut std_watch = Client::connect(&a.url("/t/std/ws")).await.unwrap();
    std_watch.subscribe("__realtime").await.unwrap();

    own.kill();
    // vip's KV fails (then fails fast once its breaker is open) ...
    let mut vip = Client::connect(&a.url("/t/vip/ws")).await.unwrap();
    let mut last = Duration::ZERO;
    for _ in 0..8 {
        let started = Instant::now();
        let r = vip.rpc_raw("fixture/kv_get", json!(["k"])).await.unwrap();
        last = started.elapsed();
        assert_eq!(r["ok"], false, "{r}");
        assert!(
            r["code"] == "SERVICE_UNAVAILABLE" || r["code"] == "TIMEOUT",
            "{r}"
        );
    }
    assert!(last < Duration::from_millis(200), "fail fast: {last:?}");
    let degraded = vip_watch.next_event("__realtime").await.unwrap();
    assert_eq!(degraded["event"], "degraded", "{degraded}");
    // ... while std is untouched: cross-host bus, KV, and no notice.
    crosses_hosts(&a, &b, "std", 2).await;
    let mut std_client = Client::connect(&a.url("/t/std/ws")).await.unwrap();
    assert_eq!(
        std_client
            .rpc("fixture/kv_get", json!(["k"]))
            .await
            .unwrap(),
        json!("std")
    );
    assert!(
        event_within(&mut std_watch, "__realtime", Duration::from_millis(300))
            .await
            .is_none(),
        "std heard another tenant's Redis outage"
    );

    // vip's Redis comes back (empty): vip recovers without restarts.
    own.restart();
    let restarted = Instant::now();
    let recovered = vip_watch.next_event("__realtime").await.unwrap();
    assert_eq!(recovered["event"], "recovered", "{recovered}");
    loop {
        let r = vip
            .rpc_raw("fixture/kv_set", json!(["k", "again", null]))
            .await
            .unwrap();
        if r["ok"] == true {
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(15), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crosses_hosts(&a, &b, "vip", 3).await;
    assert!(keys_of(&own.url(), &ns.0, "vip").await > 0);
    assert_eq!(keys_of(REDIS_URL, &ns.0, "vip").await, 0);
    eprintln!(
        "own redis ({bus_mode}): vip recovered {:?} after its Redis restarted",
        restarted.elapsed()
    );
}

#[tokio::test]
async fn a_tenant_on_its_own_redis_pubsub() {
    own_redis_for_one_tenant("pubsub").await;
}

#[tokio::test]
async fn a_tenant_on_its_own_redis_sharded() {
    own_redis_for_one_tenant("sharded").await;
}
