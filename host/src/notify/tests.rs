//! The bridge against the real PostgreSQL (`TENANTRY_TEST_POSTGRES_URL`,
//! default the local test database), with the `orders` plugin and the
//! in-memory bus. Every test uses a tenant prefix of its own and drops
//! every role and schema with it when it ends.

use std::time::Instant;

use super::*;
use crate::backend::memory;
use crate::backend::postgres::{SqlSettings, SqlValue, Statement};
use crate::hub::{Hub, HubConnection, Outbound};
use crate::plan::Plan;
use crate::quota::TenantQuota;
use crate::runtime::{CallContext, Runtime, RuntimeConfig};
use crate::tenant::{Deployment, Tenant};

fn url() -> String {
    std::env::var("TENANTRY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn ctx() -> CallContext {
    CallContext {
        user: None,
        connection_id: "c".into(),
        request_id: "r".into(),
        outbound: None,
    }
}

/// A bridge over a tenant prefix of its own; drops what it created.
struct Fixture {
    prefix: String,
    sql: Arc<TenantSql>,
    hub: Arc<Hub>,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    bridge: Arc<NotifyBridge>,
    task: JoinHandle<()>,
}

/// A subscriber: its hub connection (kept alive) and its frames.
struct Subscriber {
    _conn: HubConnection,
    rx: crate::outbound::Receiver,
}

impl Subscriber {
    /// The next frame, as JSON, within `within`.
    async fn next(&mut self, within: Duration) -> Option<serde_json::Value> {
        let Outbound::Text(frame) = tokio::time::timeout(within, self.rx.recv()).await.ok()??;
        Some(serde_json::from_str(frame.as_str()).unwrap())
    }
}

impl Fixture {
    fn new(settings: NotifySettings) -> Self {
        let prefix = format!("nt{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        Self::with(prefix, settings, BTreeMap::new())
    }

    /// A fixture whose tenants in `tenant_urls` live in databases of their
    /// own (the isolated tier).
    fn with(
        prefix: String,
        settings: NotifySettings,
        tenant_urls: BTreeMap<TenantId, String>,
    ) -> Self {
        let sql = TenantSql::new(SqlSettings {
            url: url(),
            tenant_prefix: prefix.clone(),
            password_secret: b"test".to_vec(),
            max_connections: 16,
            tenant_urls: tenant_urls.clone(),
        })
        .unwrap();
        let hub = Hub::new();
        let mut backends = memory::backends(Arc::clone(&hub));
        backends.sql = Some(Arc::clone(&sql));
        let runtime = Runtime::new(
            RuntimeConfig {
                max_instances: 16,
                ..RuntimeConfig::default()
            },
            backends,
        )
        .unwrap();
        let registry = Arc::new(Registry::new());
        let bridge = NotifyBridge::new(
            Arc::clone(&sql),
            Arc::clone(&registry),
            url(),
            tenant_urls,
            NotifySettings {
                resync: Duration::from_millis(50),
                ..settings
            },
        );
        let task = bridge.spawn();
        Self {
            prefix,
            sql,
            hub,
            runtime,
            registry,
            bridge,
            task,
        }
    }

    /// Tenant `id` running `plugin` (a bundled plugin's name), bridged
    /// once its plugin wants notifications.
    async fn tenant(&self, id: &str, plugin: &str) -> Arc<Plugin> {
        let quota = TenantQuota::new(Plan::built_in("starter").unwrap(), 1);
        let wasm = std::fs::read(crate::bundled::plugin_path(plugin)).unwrap();
        let p = self
            .runtime
            .load_plugin(tid(id), Arc::clone(&quota), &wasm)
            .await
            .unwrap();
        let t = Tenant::new(tid(id), "starter".into(), quota);
        t.set_deployment(Deployment {
            active: Some(Arc::clone(&p)),
            canary: None,
        });
        self.registry.insert(t);
        if p.wants_notify_events() {
            let started = Instant::now();
            while !self.bridge.is_bridged(&tid(id)) {
                assert!(started.elapsed() < Duration::from_secs(5), "not bridged");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        p
    }

    fn subscribe(&self, tenant: &str, topic: &str) -> Subscriber {
        let (tx, rx) = crate::outbound::queue(64);
        let conn = self.hub.connect(tid(tenant), tx, 64);
        conn.subscribe(topic).unwrap();
        Subscriber { _conn: conn, rx }
    }

    /// Run `sql` with `params` as `tenant`'s own role.
    async fn as_tenant(
        &self,
        tenant: &str,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<crate::backend::postgres::Outcome>, crate::backend::postgres::SqlFailure> {
        let limits = SqlLimits::of(&Plan::built_in("starter").unwrap());
        self.sql
            .run(
                &tid(tenant),
                &limits,
                vec![Statement {
                    sql: sql.to_owned(),
                    params,
                }],
                false,
            )
            .await
    }

    async fn root(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (c, conn) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
                tokio::spawn(conn);
                let like = format!("{prefix}\\_t\\_%");
                let _ = c
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename LIKE $1",
                        &[&like],
                    )
                    .await;
                for row in c
                    .query("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", &[&like])
                    .await
                    .unwrap()
                {
                    let n: String = row.get(0);
                    let _ = c
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{n}\" CASCADE"))
                        .await;
                }
                for row in c
                    .query("SELECT rolname FROM pg_roles WHERE rolname LIKE $1", &[&like])
                    .await
                    .unwrap()
                {
                    let n: String = row.get(0);
                    let _ = c
                        .batch_execute(&format!("DROP OWNED BY \"{n}\"; DROP ROLE \"{n}\""))
                        .await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn a_tenant_in_its_own_database_is_bridged_on_a_listen_connection_of_its_own() {
    let prefix = format!("nt{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let db = format!("{prefix}_iso");
    {
        let (root, conn) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        root.batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await
            .unwrap();
    }
    let base = url();
    let iso_url = format!("{}/{db}", &base[..base.rfind('/').unwrap()]);
    let f = Fixture::with(
        prefix,
        NotifySettings::default(),
        BTreeMap::from([(tid("vip"), iso_url)]),
    );
    let vip = f.tenant("vip", "orders").await;
    let shared = f.tenant("shop", "orders").await;
    let mut vip_sub = f.subscribe("vip", "orders");
    let mut shop_sub = f.subscribe("shop", "orders");
    vip.call(ctx(), "orders/place", &place_args("v-1"))
        .await
        .unwrap();
    let frame = vip_sub
        .next(Duration::from_secs(5))
        .await
        .expect("delivered");
    assert_eq!(frame["event"], "created");
    assert_eq!(frame["data"]["order_id"], "v-1");
    shared
        .call(ctx(), "orders/place", &place_args("s-1"))
        .await
        .unwrap();
    let frame = shop_sub
        .next(Duration::from_secs(5))
        .await
        .expect("delivered");
    assert_eq!(frame["data"]["order_id"], "s-1");
    // Each got its own rows only, and the vip's table is in its database.
    assert!(vip_sub.next(Duration::from_millis(300)).await.is_none());
    assert!(shop_sub.next(Duration::from_millis(300)).await.is_none());
    let out = f
        .as_tenant("vip", "SELECT current_database() AS d", vec![])
        .await
        .unwrap();
    assert_eq!(out[0].rows, format!(r#"[{{"d":"{db}"}}]"#));
    assert_eq!(f.bridge.listener_pids().len(), 2, "one LISTEN per database");
    drop(vip);
    drop(shared);
    let sql = Arc::clone(&f.sql);
    assert!(sql.drop_tenant(&tid("vip")).await.unwrap());
    drop(f);
    drop(sql);
    let (root, conn) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    root.batch_execute(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .await
        .unwrap();
}

fn place_args(id: &str) -> String {
    format!(r#"["{id}","tea",2]"#)
}

#[tokio::test]
async fn an_inserted_row_reaches_subscribers_once() {
    let f = Fixture::new(NotifySettings::default());
    let shop = f.tenant("shop", "orders").await;
    let mut sub = f.subscribe("shop", "orders");
    let placed = shop
        .call(ctx(), "orders/place", &place_args("o-1"))
        .await
        .unwrap();
    let placed: serde_json::Value = serde_json::from_str(&placed).unwrap();
    assert_eq!(placed["order_id"], "o-1");
    let frame = sub.next(Duration::from_secs(5)).await.expect("delivered");
    assert_eq!(frame["topic"], "orders");
    assert_eq!(frame["event"], "created");
    assert_eq!(frame["data"]["order_id"], "o-1");
    assert_eq!(frame["data"]["item"], "tea");
    assert_eq!(frame["data"]["qty"], 2);

    // The same call again: the same order, no second row, no second event.
    let again = shop
        .call(ctx(), "orders/place", &place_args("o-1"))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap(),
        placed
    );
    assert!(
        sub.next(Duration::from_millis(700)).await.is_none(),
        "one event only"
    );
    let list = shop.call(ctx(), "orders/list", "[]").await.unwrap();
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&list)
            .unwrap()
            .len(),
        1
    );

    // A row written by any client of the schema (here, the tenant's role
    // directly) is published as well.
    f.as_tenant(
        "shop",
        "INSERT INTO orders (order_id, item, qty) VALUES ($1, $2, $3)",
        vec![
            SqlValue::Text("o-2".into()),
            SqlValue::Text("cake".into()),
            SqlValue::Int(1),
        ],
    )
    .await
    .unwrap();
    let frame = sub.next(Duration::from_secs(5)).await.expect("delivered");
    assert_eq!(frame["data"]["order_id"], "o-2");

    // A tenant whose plugin does not want notifications is not bridged.
    f.tenant("plain", "fixture").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!f.bridge.is_bridged(&tid("plain")));
}

#[tokio::test]
async fn the_bridge_listens_again_after_its_connection_is_killed() {
    // No poll in sight: only LISTEN can deliver within the test.
    let f = Fixture::new(NotifySettings {
        poll: Duration::from_secs(3600),
        reconnect: Duration::from_millis(100),
        ..NotifySettings::default()
    });
    let shop = f.tenant("shop", "orders").await;
    let mut sub = f.subscribe("shop", "orders");
    shop.call(ctx(), "orders/place", &place_args("o-1"))
        .await
        .unwrap();
    assert!(sub.next(Duration::from_secs(5)).await.is_some());
    let before = f.bridge.listener_pids();
    assert_eq!(before.len(), 1, "one LISTEN connection: {before:?}");
    let reconnects = crate::metrics::get().map_or(0, |m| m.notify_reconnects());
    f.root()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&before[0]])
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let now = f.bridge.listener_pids();
        if now.len() == 1 && now != before {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(m) = crate::metrics::get() {
        assert!(m.notify_reconnects() > reconnects, "counted");
    }
    shop.call(ctx(), "orders/place", &place_args("o-2"))
        .await
        .unwrap();
    let frame = sub
        .next(Duration::from_secs(5))
        .await
        .expect("delivered after reconnect");
    assert_eq!(frame["data"]["order_id"], "o-2");
}

#[tokio::test]
async fn a_forged_notify_from_another_tenant_delivers_nothing() {
    let f = Fixture::new(NotifySettings::default());
    let alpha = f.tenant("alpha", "orders").await;
    f.tenant("beta", "orders").await;
    let mut on_alpha = f.subscribe("alpha", "orders");
    let mut on_beta = f.subscribe("beta", "orders");
    alpha
        .call(ctx(), "orders/place", &place_args("a-1"))
        .await
        .unwrap();
    assert!(on_alpha.next(Duration::from_secs(5)).await.is_some());

    let channel = f.bridge.channel(&tid("alpha"));
    let forged = r#"{"topic":"orders","event":"created","data":{"forged":true}}"#;
    // Beta's role may NOTIFY alpha's channel (NOTIFY needs no privilege)...
    f.as_tenant(
        "beta",
        "SELECT pg_notify($1, $2)::text AS sent",
        vec![
            SqlValue::Text(channel.clone()),
            SqlValue::Text(forged.into()),
        ],
    )
    .await
    .unwrap();
    f.as_tenant("beta", &format!("NOTIFY \"{channel}\", '{forged}'"), vec![])
        .await
        .unwrap();
    // ...and its own, with a payload of its choosing...
    let own = f.bridge.channel(&tid("beta"));
    f.as_tenant(
        "beta",
        "SELECT pg_notify($1, $2)::text AS sent",
        vec![SqlValue::Text(own), SqlValue::Text(forged.into())],
    )
    .await
    .unwrap();
    // ...but cannot write alpha's outbox.
    let denied = f
        .as_tenant(
            "beta",
            &format!(
                "INSERT INTO \"{}\"._tenantry_notify (channel, payload) VALUES ($1, $2)",
                f.sql.ident(&tid("alpha"))
            ),
            vec![SqlValue::Text(channel), SqlValue::Text(forged.into())],
        )
        .await
        .unwrap_err();
    assert_eq!(denied.kind, SqlErrorKind::AccessDenied, "{denied:?}");
    assert!(
        on_alpha.next(Duration::from_secs(1)).await.is_none(),
        "nothing forged reaches alpha"
    );
    assert!(
        on_beta.next(Duration::from_millis(300)).await.is_none(),
        "payloads are ignored"
    );
}

#[tokio::test]
async fn oversized_malformed_and_system_topic_payloads_are_dropped() {
    let f = Fixture::new(NotifySettings {
        max_envelope_bytes: 2000,
        ..NotifySettings::default()
    });
    let shop = f.tenant("shop", "orders").await;
    let mut sub = f.subscribe("shop", "orders");
    let mut presence = f.subscribe("shop", "__presence:orders");
    shop.call(ctx(), "orders/place", &place_args("o-1"))
        .await
        .unwrap();
    assert!(sub.next(Duration::from_secs(5)).await.is_some());
    let channel = f.bridge.channel(&tid("shop"));
    let counts =
        || crate::metrics::get().map_or((0, 0), |m| m.notify_counts(&tid("shop"), &channel));
    let (received, errors) = counts();

    let big = format!(
        r#"{{"topic":"orders","event":"created","data":"{}"}}"#,
        "x".repeat(3000)
    );
    for payload in [
        big.as_str(),
        "not json",
        r#"{"topic":"__presence:orders","event":"presence_state","data":[]}"#,
        r#"{"topic":"orders","event":"created","data":{"n":1}}"#,
    ] {
        f.as_tenant(
            "shop",
            "INSERT INTO _tenantry_notify (channel, payload) VALUES ($1, $2)",
            vec![
                SqlValue::Text(channel.clone()),
                SqlValue::Text(payload.into()),
            ],
        )
        .await
        .unwrap();
    }
    f.as_tenant(
        "shop",
        "SELECT pg_notify($1, '')::text AS sent",
        vec![SqlValue::Text(channel.clone())],
    )
    .await
    .unwrap();
    let frame = sub
        .next(Duration::from_secs(5))
        .await
        .expect("the good one");
    assert_eq!(frame["data"], serde_json::json!({"n": 1}));
    assert!(
        sub.next(Duration::from_millis(500)).await.is_none(),
        "only the good one"
    );
    assert!(
        presence.next(Duration::from_millis(100)).await.is_none(),
        "no system topic"
    );
    if crate::metrics::get().is_some() {
        let (r, e) = counts();
        assert!(r >= received + 4, "all four received: {r} vs {received}");
        assert!(
            e >= errors + 2,
            "oversize and not-JSON are parse errors: {e} vs {errors}"
        );
    }
    let left = f
        .as_tenant(
            "shop",
            "SELECT count(*)::int8 AS n FROM _tenantry_notify",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(left[0].rows, r#"[{"n":0}]"#, "every row claimed");
}
