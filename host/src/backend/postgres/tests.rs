//! Against the real PostgreSQL (`TENANTRY_TEST_POSTGRES_URL`, default the
//! local test database). Every test uses a tenant prefix of its own and
//! drops every role and schema with it when it ends, passed or not.

use super::*;

fn url() -> String {
    std::env::var("TENANTRY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// A [`TenantSql`] with a unique tenant prefix; drops what it created.
struct Fixture {
    sql: Arc<TenantSql>,
    prefix: String,
}

impl Fixture {
    fn new() -> Self {
        Self::with_host_connections(8)
    }

    fn with_host_connections(max_connections: usize) -> Self {
        let prefix = format!("ut{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let sql = TenantSql::new(SqlSettings {
            url: url(),
            tenant_prefix: prefix.clone(),
            password_secret: b"test".to_vec(),
            max_connections,
            tenant_urls: BTreeMap::new(),
        })
        .unwrap();
        Self { sql, prefix }
    }

    async fn root(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
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
                for row in c
                    .query(
                        "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                        &[&like],
                    )
                    .await
                    .unwrap()
                {
                    let n: String = row.get(0);
                    let _ = c
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{n}\" CASCADE"))
                        .await;
                }
                for row in c
                    .query(
                        "SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
                        &[&like],
                    )
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

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn limits() -> SqlLimits {
    SqlLimits::of(&Plan::built_in("free").unwrap())
}

fn st(sql: &str, params: Vec<SqlValue>) -> Statement {
    Statement {
        sql: sql.to_owned(),
        params,
    }
}

async fn query(
    f: &Fixture,
    t: &TenantId,
    sql: &str,
    params: Vec<SqlValue>,
) -> Result<serde_json::Value, SqlFailure> {
    let out = f
        .sql
        .run(t, &limits(), vec![st(sql, params)], false)
        .await?;
    Ok(serde_json::from_str(&out[0].rows).unwrap())
}

#[tokio::test]
async fn provisioning_is_idempotent_concurrent_and_delete_drops_everything() {
    let f = Fixture::new();
    let t = tid("acme-1");
    let name = f.sql.ident(&t);
    let l = limits();
    let (a, b) = tokio::join!(f.sql.provision(&t, &l), f.sql.provision(&t, &l));
    a.unwrap();
    b.unwrap();
    // The role may change its own defaults; provisioning again undoes that.
    query(
        &f,
        &t,
        "ALTER ROLE CURRENT_USER SET work_mem = '1GB'",
        vec![],
    )
    .await
    .unwrap();
    f.sql.provision(&t, &l).await.unwrap();
    let root = f.root().await;
    let row = root
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolinherit, rolreplication, \
                    rolbypassrls, rolcanlogin, rolconnlimit, \
                    (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1), \
                    array_to_string(rolconfig, ',') \
             FROM pg_roles WHERE rolname = $1",
            &[&name],
        )
        .await
        .unwrap();
    let flags: Vec<bool> = (0..7).map(|i| row.get(i)).collect();
    assert_eq!(flags, [false, false, false, false, false, false, true]);
    assert_eq!(row.get::<_, i32>(7), 2, "free plan: 2 connections");
    assert_eq!(row.get::<_, String>(8), name, "the role owns its schema");
    let config: String = row.get(9);
    assert!(config.contains(&format!("search_path={name}")), "{config}");
    assert!(config.contains("statement_timeout=1000"), "{config}");
    assert!(config.contains("temp_file_limit=64MB"), "{config}");
    assert!(!config.contains("work_mem"), "{config}");

    query(&f, &t, "CREATE TABLE t (id int)", vec![])
        .await
        .unwrap();
    assert!(f.sql.drop_tenant(&t).await.unwrap());
    let left: i64 = root
        .query_one(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1) \
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "role and schema are gone");
    assert!(
        !f.sql.drop_tenant(&t).await.unwrap(),
        "dropping twice is fine"
    );
}

#[tokio::test]
async fn values_come_back_as_json_and_parameters_are_bound() {
    let f = Fixture::new();
    let t = tid("vals");
    let rows = query(
        &f,
        &t,
        "SELECT $1::int8 AS i, $2::float8 AS f, $3::text AS s, $4::bool AS b, $5::bytea AS x, \
                $6::jsonb AS j, $7::int4 AS n, 12.50::numeric AS num, \
                '2024-02-29 12:34:56.5+00'::timestamptz AS ts, '2024-02-29'::date AS d, \
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, 'NaN'::float8 AS nan, \
                0.1::float4 AS f4",
        vec![
            SqlValue::Int(-7),
            SqlValue::Float(1.5),
            SqlValue::Text("it's; DROP TABLE x".into()),
            SqlValue::Boolean(true),
            SqlValue::Bytes(vec![0, 255]),
            SqlValue::Json(r#"{"a":[1,null]}"#.into()),
            SqlValue::Null,
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{
            "i": -7, "f": 1.5, "s": "it's; DROP TABLE x", "b": true, "x": "\\x00ff",
            "j": {"a": [1, null]}, "n": null, "num": "12.50",
            "ts": "2024-02-29T12:34:56.500000Z", "d": "2024-02-29",
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "nan": "NaN", "f4": 0.1
        }])
    );
    let e = query(&f, &t, "SELECT '1 day'::interval AS iv", vec![])
        .await
        .unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Invalid);
    assert!(
        e.message.contains("interval") && e.message.contains("iv"),
        "{e}"
    );
    let e = query(&f, &t, "SELECT $1::int8", vec![]).await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Invalid, "{e}");
    let e = query(&f, &t, "SELEC 1", vec![]).await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_deref()),
        (SqlErrorKind::Invalid, Some("42601"))
    );
    f.sql.drop_tenant(&t).await.unwrap();
}

#[tokio::test]
async fn transactions_commit_all_or_nothing_and_nothing_outlives_a_call() {
    let f = Fixture::new();
    let t = tid("tx");
    let l = limits();
    f.sql
        .run(
            &t,
            &l,
            vec![st("CREATE TABLE t (id int primary key)", vec![])],
            false,
        )
        .await
        .unwrap();
    let e = f
        .sql
        .run(
            &t,
            &l,
            vec![
                st("INSERT INTO t VALUES (1)", vec![]),
                st("INSERT INTO t VALUES (1)", vec![]),
            ],
            true,
        )
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.statement), (SqlErrorKind::Invalid, Some(1)));
    assert_eq!(e.sqlstate.as_deref(), Some("23505"));
    let out = f
        .sql
        .run(
            &t,
            &l,
            vec![
                st(
                    "INSERT INTO t VALUES ($1), ($2)",
                    vec![SqlValue::Int(1), SqlValue::Int(2)],
                ),
                st("SELECT count(*) AS n FROM t", vec![]),
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(out[0].affected, 2);
    assert_eq!(
        out[1].rows, r#"[{"n":2}]"#,
        "the failed transaction left nothing"
    );
    // A BEGIN left open is rolled back when the call returns; a SET does not
    // reach the next call.
    query(&f, &t, "BEGIN", vec![]).await.unwrap();
    query(&f, &t, "SET search_path = public", vec![])
        .await
        .unwrap();
    query(&f, &t, "SET statement_timeout = 0", vec![])
        .await
        .unwrap();
    let rows = query(
        &f,
        &t,
        "SELECT current_setting('search_path') AS p, current_setting('statement_timeout') AS s, \
                (SELECT count(*) FROM t) AS n",
        vec![],
    )
    .await
    .unwrap();
    let name = f.sql.ident(&t);
    assert_eq!(rows[0]["p"], name.as_str());
    assert_eq!(rows[0]["s"], "1s");
    assert_eq!(rows[0]["n"], 2);
    // ... and the connection survived the reset and is reused.
    let pid = |v: serde_json::Value| v[0]["pid"].as_i64().unwrap();
    let first = pid(query(&f, &t, "SELECT pg_backend_pid() AS pid", vec![])
        .await
        .unwrap());
    let second = pid(query(&f, &t, "SELECT pg_backend_pid() AS pid", vec![])
        .await
        .unwrap());
    assert_eq!(first, second, "the reset kept the connection");
    f.sql.drop_tenant(&t).await.unwrap();
}

#[tokio::test]
async fn caps_and_the_timeout_hold_even_when_the_plugin_lifts_them() {
    let f = Fixture::new();
    let t = tid("caps");
    let l = limits();
    let e = query(&f, &t, "SELECT generate_series(1, 100000000) AS n", vec![])
        .await
        .unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::TooLarge, "{e}");
    let e = query(&f, &t, "SELECT repeat('x', 2000000) AS big", vec![])
        .await
        .unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::TooLarge, "{e}");
    let huge = "SELECT 1 -- ".to_owned() + &"x".repeat(70_000);
    let e = query(&f, &t, &huge, vec![]).await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::TooLarge, "{e}");
    // Postgres's own statement_timeout.
    let started = Instant::now();
    let e = query(&f, &t, "SELECT pg_sleep(10)", vec![])
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_deref()),
        (SqlErrorKind::Timeout, Some("57014"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Turned off by the plugin: the host cancels.
    let started = Instant::now();
    let e = f
        .sql
        .run(
            &t,
            &l,
            vec![
                st("SET statement_timeout = 0", vec![]),
                st("SELECT pg_sleep(10)", vec![]),
            ],
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Timeout, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The tenant still works afterwards.
    assert_eq!(
        query(&f, &t, "SELECT 1 AS one", vec![]).await.unwrap(),
        serde_json::json!([{"one": 1}])
    );
    f.sql.drop_tenant(&t).await.unwrap();
}

#[tokio::test]
async fn temporary_files_are_capped_and_the_tenant_cannot_lift_the_cap() {
    let f = Fixture::new();
    let t = tid("temp");
    // The sorts below take about a second alone and several while the
    // rest of the suite runs: a generous timeout keeps this test about the
    // temp-file cap, not the machine's speed.
    let unhurried = SqlLimits {
        timeout: Duration::from_secs(60),
        ..limits()
    };
    let l = SqlLimits {
        max_temp_file_mb: 1,
        ..unhurried
    };
    let run = |sql: &'static str| f.sql.run(&t, &l, vec![st(sql, vec![])], true);
    let e = run("SET temp_file_limit = -1").await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::AccessDenied, "{e}");
    // A sort that spills far more than 1 MiB to disk.
    let e = f
        .sql
        .run(
            &t,
            &l,
            vec![
                st("SET work_mem = '64kB'", vec![]),
                st(
                    "SELECT count(*) AS n FROM (SELECT md5(g::text) AS h FROM \
                     generate_series(1, 300000) g ORDER BY h) s",
                    vec![],
                ),
            ],
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_deref()),
        (SqlErrorKind::TooLarge, Some("53400")),
        "{e}"
    );
    // The same work within the cap of the free plan succeeds.
    let rows = f
        .sql
        .run(
            &t,
            &unhurried,
            vec![
                st("SET work_mem = '64kB'", vec![]),
                st(
                    "SELECT count(*) AS n FROM (SELECT md5(g::text) AS h FROM \
                     generate_series(1, 300000) g ORDER BY h) s",
                    vec![],
                ),
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(rows[1].rows, r#"[{"n":300000}]"#);
    f.sql.drop_tenant(&t).await.unwrap();
}

#[tokio::test]
async fn another_tenants_schema_and_the_usual_escapes_are_refused() {
    let f = Fixture::new();
    let (a, b) = (tid("alpha"), tid("beta"));
    query(&f, &a, "CREATE TABLE secrets (s text)", vec![])
        .await
        .unwrap();
    query(&f, &a, "INSERT INTO secrets VALUES ('a')", vec![])
        .await
        .unwrap();
    let a_schema = f.sql.ident(&a);
    let denied = |e: SqlFailure| {
        assert_eq!(e.kind, SqlErrorKind::AccessDenied, "{e:?}");
        e.message
    };
    let m = denied(
        query(
            &f,
            &b,
            &format!("SELECT * FROM \"{a_schema}\".secrets"),
            vec![],
        )
        .await
        .unwrap_err(),
    );
    assert!(m.contains("permission denied for schema"), "{m}");
    for escape in [
        format!("SET ROLE \"{a_schema}\""),
        "SET ROLE root".to_owned(),
        "SET SESSION AUTHORIZATION root".to_owned(),
        "SELECT pg_read_file('/etc/passwd')".to_owned(),
        "CREATE ROLE evil".to_owned(),
        format!("ALTER ROLE \"{a_schema}\" SUPERUSER"),
        "SELECT * FROM pg_authid".to_owned(),
        "CREATE TABLE public.x (i int)".to_owned(),
    ] {
        let e = query(&f, &b, &escape, vec![]).await.unwrap_err();
        assert_eq!(e.kind, SqlErrorKind::AccessDenied, "{escape}: {e:?}");
    }
    let e = f
        .sql
        .run(
            &b,
            &limits(),
            vec![
                st("RESET ROLE", vec![]),
                st(&format!("SET search_path = \"{a_schema}\""), vec![]),
                st("SELECT * FROM secrets", vec![]),
            ],
            true,
        )
        .await
        .unwrap_err();
    // A schema the role may not use is skipped by the search path, so the
    // table is simply not found.
    assert_eq!(
        (e.kind, e.sqlstate.as_deref(), e.statement),
        (SqlErrorKind::Invalid, Some("42P01"), Some(2)),
        "{e:?}"
    );
    f.sql.drop_tenant(&a).await.unwrap();
    f.sql.drop_tenant(&b).await.unwrap();
}

#[tokio::test]
async fn a_tenant_at_its_connection_cap_waits_without_starving_others() {
    // Three connections for the host; the free plan lets a tenant use two.
    let f = Fixture::with_host_connections(3);
    let (busy, quiet) = (tid("busy"), tid("quiet"));
    query(&f, &busy, "SELECT 1 AS x", vec![]).await.unwrap();
    query(&f, &quiet, "SELECT 1 AS x", vec![]).await.unwrap();
    let sleepers: Vec<_> = (0..6)
        .map(|_| {
            let sql = Arc::clone(&f.sql);
            let busy = busy.clone();
            tokio::spawn(async move {
                sql.run(
                    &busy,
                    &limits(),
                    vec![st("SELECT pg_sleep(0.3)", vec![])],
                    false,
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    query(&f, &quiet, "SELECT 2 AS x", vec![]).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "the quiet tenant waited {:?} behind the busy one",
        started.elapsed()
    );
    for s in sleepers {
        s.await.unwrap().unwrap();
    }
    let root = f.root().await;
    let most: i64 = root
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&f.sql.ident(&busy)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(most <= 2, "{most} connections for a cap of 2");
    f.sql.drop_tenant(&busy).await.unwrap();
    f.sql.drop_tenant(&quiet).await.unwrap();
}

#[tokio::test]
async fn an_isolated_tenant_lives_in_its_own_database() {
    let f = Fixture::new();
    let db = format!("{}_iso", f.prefix);
    let root = f.root().await;
    root.batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .await
        .unwrap();
    let base = url();
    let iso_url = format!("{}/{db}", &base[..base.rfind('/').unwrap()]);
    let t = tid("iso");
    let sql = TenantSql::new(SqlSettings {
        url: base,
        tenant_prefix: f.prefix.clone(),
        password_secret: b"test".to_vec(),
        max_connections: 4,
        tenant_urls: BTreeMap::from([(t.clone(), iso_url.clone())]),
    })
    .unwrap();
    sql.run(
        &t,
        &limits(),
        vec![st("CREATE TABLE here (x int)", vec![])],
        false,
    )
    .await
    .unwrap();
    let out = sql
        .run(
            &t,
            &limits(),
            vec![st("SELECT current_database() AS d", vec![])],
            false,
        )
        .await
        .unwrap();
    assert_eq!(out[0].rows, format!(r#"[{{"d":"{db}"}}]"#));
    let name = sql.ident(&t);
    let in_shared: i64 = root
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_shared, 0, "nothing in the shared database");
    assert!(sql.drop_tenant(&t).await.unwrap());
    drop(sql);
    root.batch_execute(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .await
        .unwrap();
}
