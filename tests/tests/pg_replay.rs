//! The durable replay buffers (`[replay] store = "postgres"`): two hosts
//! sharing Postgres and a Redis bus, a client that reconnects to the other
//! host resumes with exactly what it missed, and the buffers (and seqs)
//! survive a restart of every host; the memory bus in front of Postgres
//! keeps its buffers across a restart too.
//!
//! Each test uses a tenant prefix, registry schema and Redis namespace of
//! its own and drops them at the end.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, RedisNamespace, TenantSpec};

use tenantry_tests::PgScope;
const SILENCE: Duration = Duration::from_millis(300);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

fn tenants() -> Vec<TenantSpec> {
    vec![TenantSpec::new("alpha", "fixture")]
}

/// A tenant prefix (so a host schema `{prefix}_host`) and registry schema
/// of this test's own, dropped at the end.
/// This test's Postgres scope ([`PgScope`]: dropped with everything in it).
struct Pg(PgScope);

impl std::ops::Deref for Pg {
    type Target = PgScope;
    fn deref(&self) -> &PgScope {
        &self.0
    }
}

impl Pg {
    fn new(tag: &str) -> Self {
        Self(PgScope::new(&format!("e2r{tag}")))
    }

    fn toml(&self) -> String {
        format!(
            "{}\
             [notify]\nenabled = false\n\
             [replay]\nstore = \"postgres\"\nsize = 100\n",
            self.postgres_toml()
        )
    }
}

async fn publish(c: &mut Client, topic: &str, n: u64) {
    c.rpc("fixture/publish", json!([topic, "story", {"n": n}]))
        .await
        .unwrap();
}

/// Resume with `last` seen on `news`; the `(seq, n)` of every event sent
/// before `resumed`.
async fn resume(c: &mut Client, last: u64) -> Vec<(u64, u64)> {
    c.send_json(&json!({"type":"resume","sessionId":"s","lastSeenSeqs":{"news": last}}))
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let f: Value = c.next_frame().await.unwrap();
        if f["type"] == "resumed" {
            return got;
        }
        assert_eq!(f["topic"], "news", "{f}");
        got.push((f["seq"].as_u64().unwrap(), f["data"]["n"].as_u64().unwrap()));
    }
}

#[tokio::test]
async fn two_hosts_on_postgres_resume_across_hosts_and_keep_the_buffers_across_restarts() {
    fleet_on_postgres("pubsub").await;
}

#[tokio::test]
async fn the_sharded_bus_on_postgres_resumes_across_hosts_and_restarts() {
    fleet_on_postgres("sharded").await;
}

/// Two hosts on Postgres and a Redis bus of `bus_mode`: failover resume,
/// then a restart of every host (and a fresh Redis namespace).
async fn fleet_on_postgres(bus_mode: &str) {
    let pg = Pg::new(&bus_mode[..1]);
    let ns = RedisNamespace::new("pgreplay");
    let toml = format!("{}{}", pg.toml(), ns.toml_with_bus(bus_mode));
    let mut a = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let mut b = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    assert!(
        a.output_text().contains("replay buffers on Postgres"),
        "{}",
        a.output_text()
    );
    let mut publisher = Client::connect(&b.url("/t/alpha/ws")).await.unwrap();
    let mut c = Client::connect(&a.url("/t/alpha/ws")).await.unwrap();
    c.subscribe("news").await.unwrap();
    for n in 1..=3 {
        publish(&mut publisher, "news", n).await;
    }
    for n in 1..=3 {
        let e = c.next_event("news").await.unwrap();
        assert_eq!((e["seq"].as_u64(), &e["data"]), (Some(n), &json!({"n": n})));
    }
    // The client's host dies; it misses 4..=6 and reconnects to b.
    a.kill().unwrap();
    for n in 4..=6 {
        publish(&mut publisher, "news", n).await;
    }
    let mut c = Client::connect(&b.url("/t/alpha/ws")).await.unwrap();
    assert_eq!(
        resume(&mut c, 3).await,
        [(4, 4), (5, 5), (6, 6)],
        "exactly what it missed"
    );
    publish(&mut publisher, "news", 7).await;
    let e = c.next_event("news").await.unwrap();
    assert_eq!((e["seq"].as_u64(), &e["data"]), (Some(7), &json!({"n": 7})));
    c.expect_silence(SILENCE).await.unwrap();
    drop((c, publisher));

    // Every host goes; Redis forgets the namespace too. New hosts still
    // have the buffers and continue the seq.
    b.kill().unwrap();
    drop(ns);
    let ns = RedisNamespace::new("pgreplay2");
    let toml = format!("{}{}", pg.toml(), ns.toml_with_bus(bus_mode));
    let a = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let mut c = Client::connect(&a.url("/t/alpha/ws")).await.unwrap();
    assert_eq!(
        resume(&mut c, 5).await,
        [(6, 6), (7, 7)],
        "the buffer survived"
    );
    let mut publisher = Client::connect(&b.url("/t/alpha/ws")).await.unwrap();
    publish(&mut publisher, "news", 8).await;
    let e = c.next_event("news").await.unwrap();
    assert_eq!(
        (e["seq"].as_u64(), &e["data"]),
        (Some(8), &json!({"n": 8})),
        "the seq continues across restarts"
    );
    c.expect_silence(SILENCE).await.unwrap();
}

#[tokio::test]
async fn the_memory_bus_on_postgres_keeps_its_buffers_across_a_restart() {
    let pg = Pg::new("m");
    let mut h = HostProcess::start_with(bin(), &tenants(), &pg.toml()).unwrap();
    let mut c = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();
    c.subscribe("news").await.unwrap();
    for n in 1..=4 {
        publish(&mut c, "news", n).await;
        let e = c.next_event("news").await.unwrap();
        assert_eq!(e["seq"].as_u64(), Some(n), "the wire seq is the buffer's");
    }
    drop(c);
    h.terminate().unwrap();

    let h = HostProcess::start_with(bin(), &tenants(), &pg.toml()).unwrap();
    let mut c = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();
    c.send_json(&json!({"type":"replay","topic":"news","since":2,"reqId":1}))
        .await
        .unwrap();
    for seq in [3, 4] {
        let m = c.next_event("__replay:news").await.unwrap();
        assert_eq!(
            m["data"],
            json!({"reqId":1,"seq":seq,"event":"story","data":{"n":seq}})
        );
    }
    assert_eq!(c.next_event("__replay:news").await.unwrap()["event"], "end");
    c.subscribe("news").await.unwrap();
    publish(&mut c, "news", 5).await;
    assert_eq!(c.next_event("news").await.unwrap()["seq"], 5);
}
