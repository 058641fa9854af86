//! The LISTEN/NOTIFY bridge through two real host processes sharing Redis
//! and PostgreSQL: the `orders` plugin places an order on host A, its
//! trigger notifies, one host of the two claims the outbox row, and the
//! `created` event reaches WebSocket subscribers on both hosts exactly
//! once; repeating the call returns the same order and publishes nothing.
//! A row inserted by another client of the tenant's schema (here a plain
//! connection logged in as the tenant's role) is published too.
//!
//! The test uses a tenant prefix, registry schema and Redis namespace of
//! its own and drops them when it ends.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry::backend::postgres::DEV_PASSWORD_SECRET;
use tenantry::backend::postgres::provision::{tenant_ident, tenant_password};
use tenantry::tenant::TenantId;
use tenantry_tests::{Client, HostProcess, RedisNamespace, TenantSpec};

use tenantry_tests::{PG_URL, PgScope};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

/// A tenant prefix and registry schema of this test's own.
/// This test's Postgres scope ([`PgScope`]: dropped with everything in it).
struct Pg(PgScope);

impl std::ops::Deref for Pg {
    type Target = PgScope;
    fn deref(&self) -> &PgScope {
        &self.0
    }
}

impl Pg {
    fn new() -> Self {
        Self(PgScope::new("e2n"))
    }

    fn toml(&self) -> String {
        format!(
            "{}\
             [notify]\nreconnect_ms = 200\n",
            self.postgres_toml()
        )
    }

    fn ident(&self, tenant: &str) -> String {
        tenant_ident(&self.prefix, &TenantId::parse(tenant).unwrap())
    }
}

async fn root() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Every `created` event `c` gets on `orders` within `quiet` of the last.
async fn created_events(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut events = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(quiet, c.next_event("orders")).await {
        assert_eq!(e["event"], "created", "{e}");
        events.push(e);
    }
    events
}

#[tokio::test]
async fn an_order_placed_on_one_host_reaches_subscribers_on_both_once() {
    let pg = Pg::new();
    let ns = RedisNamespace::new("notify");
    let toml = format!("{}{}", ns.toml(), pg.toml());
    let tenants = || vec![TenantSpec::new("shop", "orders")];
    let a = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let b = HostProcess::start_with(bin(), &tenants(), &toml).unwrap();
    let mut on_a = Client::connect(&a.url("/t/shop/ws")).await.unwrap();
    let mut on_b = Client::connect(&b.url("/t/shop/ws")).await.unwrap();
    for c in [&mut on_a, &mut on_b] {
        c.subscribe("orders").await.unwrap();
    }
    let denied = on_a.subscribe("secret").await.unwrap();
    assert_ne!(denied["type"], "subscribed", "{denied}");

    let started = Instant::now();
    let placed = on_a
        .rpc("orders/place", json!(["o-1", "tea", 2]))
        .await
        .unwrap();
    assert_eq!(placed["order_id"], "o-1");
    assert_eq!(placed["qty"], 2);
    for (name, c) in [("A", &mut on_a), ("B", &mut on_b)] {
        let e = c.next_event("orders").await.unwrap();
        assert_eq!(e["event"], "created", "host {name}: {e}");
        assert_eq!(e["data"]["order_id"], "o-1", "host {name}: {e}");
        assert_eq!(e["data"]["item"], "tea");
        assert_eq!(e["data"]["qty"], 2);
    }
    let latency = started.elapsed();
    assert!(
        latency < Duration::from_secs(3),
        "via LISTEN, not the poll: {latency:?}"
    );

    // Again, through the other host: the same order, no second row or event.
    let mut caller_b = Client::connect(&b.url("/t/shop/ws")).await.unwrap();
    let again = caller_b
        .rpc("orders/place", json!(["o-1", "tea", 2]))
        .await
        .unwrap();
    assert_eq!(again, placed);
    let list = caller_b.rpc("orders/list", json!([])).await.unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // A row from any client of the tenant's schema: published once as well.
    let ident = pg.ident("shop");
    let password = tenant_password(
        DEV_PASSWORD_SECRET.as_bytes(),
        &TenantId::parse("shop").unwrap(),
    );
    let (tenant_db, conn) = tokio_postgres::connect(
        &format!("postgres://{ident}:{password}@127.0.0.1:5432/test"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    tenant_db
        .execute(
            "INSERT INTO orders (order_id, item, qty) VALUES ('o-2', 'cake', 3)",
            &[],
        )
        .await
        .unwrap();
    for (name, c) in [("A", &mut on_a), ("B", &mut on_b)] {
        let events = created_events(c, Duration::from_millis(1500)).await;
        let ids: Vec<&Value> = events.iter().map(|e| &e["data"]["order_id"]).collect();
        assert_eq!(ids, vec!["o-2"], "host {name}: exactly one event, for o-2");
    }
    let left: i64 = root()
        .await
        .query_one(
            &format!("SELECT count(*) FROM \"{ident}\"._tenantry_notify"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "every outbox row was claimed");
}
