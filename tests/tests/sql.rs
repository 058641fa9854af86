//! The `sql` import through a real host process and real WebSockets, on
//! the real PostgreSQL: each tenant's SQL runs as its own role in its own
//! schema, and a plugin trying every escape it can (other schemas, role
//! switching, the search path, server files and programs, catalogs, the
//! registry, `public`, timeouts, result sizes, leaked session state) gets
//! Postgres's refusal. Tenant deletion drops the role and schema.
//!
//! Every test uses a tenant prefix and registry schema of its own (roles
//! are cluster-wide) and drops everything with them when it ends.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry::backend::postgres::provision::tenant_ident;
use tenantry::tenant::TenantId;
use tenantry_tests::{Client, HostProcess, TenantSpec};

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
        Self(PgScope::new("e2e"))
    }

    fn toml(&self) -> String {
        self.postgres_toml()
    }

    /// The schema and role name of `tenant`.
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

fn host(pg: &Pg) -> HostProcess {
    let limits = "sql_statement_timeout_ms = 1000\nsql_max_rows = 1000";
    HostProcess::start_with(
        bin(),
        &[
            TenantSpec::new("alpha", "fixture").limits(limits),
            TenantSpec::new("beta", "fixture").limits(limits),
        ],
        &pg.toml(),
    )
    .unwrap()
}

/// The SQL's rows, or the error text `CODE: SQLSTATE: message`.
async fn sql(c: &mut Client, statement: &str) -> Result<Value, String> {
    c.rpc("fixture/sql", json!([statement]))
        .await
        .map_err(|e| e.to_string())
}

async fn tx(c: &mut Client, statements: &[&str]) -> Result<Value, String> {
    c.rpc("fixture/sql_tx", json!([statements]))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn tenants_are_isolated_and_every_escape_fails() {
    let pg = Pg::new();
    let h = host(&pg);
    let mut a = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();
    let mut b = Client::connect(&h.url("/t/beta/ws")).await.unwrap();
    let (sa, sb) = (pg.ident("alpha"), pg.ident("beta"));

    // A's own table, found through its search path.
    sql(&mut a, "CREATE TABLE t (id int, secret text)")
        .await
        .unwrap();
    let n = a
        .rpc(
            "fixture/sql_exec",
            json!([
                "INSERT INTO t VALUES ($1, $2), ($3, $4)",
                [1, "a-secret", 2, "it's'; DROP TABLE t; --"]
            ]),
        )
        .await
        .unwrap();
    assert_eq!(n, json!(2));
    assert_eq!(
        sql(&mut a, "SELECT id, secret FROM t ORDER BY id")
            .await
            .unwrap(),
        json!([{"id": 1, "secret": "a-secret"}, {"id": 2, "secret": "it's'; DROP TABLE t; --"}]),
        "parameters are bound, never spliced"
    );
    assert_eq!(
        sql(
            &mut b,
            "SELECT current_user AS u, session_user AS s, current_schema() AS sc"
        )
        .await
        .unwrap(),
        json!([{"u": sb, "s": sb, "sc": sb}])
    );
    sql(&mut b, "CREATE TABLE mine (x int)").await.unwrap();

    // B names A's table: Postgres refuses, with its own message.
    let e = sql(&mut b, &format!("SELECT * FROM \"{sa}\".t"))
        .await
        .unwrap_err();
    assert!(
        e.starts_with("FORBIDDEN: 42501: permission denied for schema"),
        "{e}"
    );

    let forbidden = [
        format!("SET ROLE \"{sa}\""),
        "SET ROLE root".to_owned(),
        "SET SESSION AUTHORIZATION root".to_owned(),
        "SELECT pg_read_file('/etc/passwd') AS f".to_owned(),
        "COPY (SELECT 1) TO PROGRAM 'id'".to_owned(),
        "COPY (SELECT 1) TO '/tmp/tenantry-escape'".to_owned(),
        "CREATE ROLE evil LOGIN SUPERUSER".to_owned(),
        format!("ALTER ROLE \"{sa}\" PASSWORD 'x'"),
        format!("ALTER ROLE \"{sb}\" SUPERUSER"),
        "SELECT rolpassword FROM pg_authid".to_owned(),
        format!("SELECT * FROM \"{}\".tenants", pg.registry),
        format!("SELECT * FROM \"{}\".plugin_blobs", pg.registry),
        "CREATE TABLE public.planted (x int)".to_owned(),
        format!("GRANT USAGE ON SCHEMA \"{sa}\" TO \"{sb}\""),
        format!("DROP SCHEMA \"{sa}\" CASCADE"),
        "CREATE EXTENSION dblink".to_owned(),
        "SELECT set_config('role', 'root', false) AS r".to_owned(),
        "DO $$ BEGIN EXECUTE 'SET ROLE root'; END $$".to_owned(),
        "SELECT lo_import('/etc/passwd') AS o".to_owned(),
        "SELECT pg_ls_dir('.') AS f".to_owned(),
        "ALTER SYSTEM SET statement_timeout = 0".to_owned(),
        "SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity WHERE usename = 'root'"
            .to_owned(),
    ];
    for escape in &forbidden {
        let e = sql(&mut b, escape).await.unwrap_err();
        assert!(e.starts_with("FORBIDDEN: 42501: "), "{escape}: {e}");
    }
    // RESET ROLE returns to B's own role (its login), which still cannot.
    let e = tx(
        &mut b,
        &["RESET ROLE", &format!("SELECT * FROM \"{sa}\".t")],
    )
    .await
    .unwrap_err();
    assert!(
        e.starts_with("FORBIDDEN: 42501: permission denied for schema"),
        "{e}"
    );
    // A's schema on the search path is skipped: not visible at all.
    let e = tx(
        &mut b,
        &[&format!("SET search_path = \"{sa}\""), "SELECT * FROM t"],
    )
    .await
    .unwrap_err();
    assert!(
        e.starts_with("INVALID_REQUEST: 42P01: relation \"t\" does not exist"),
        "{e}"
    );

    // The timeout holds even when the plugin turns Postgres's off.
    let started = Instant::now();
    let e = tx(
        &mut b,
        &["SET statement_timeout = 0", "SELECT pg_sleep(60)"],
    )
    .await
    .unwrap_err();
    assert!(e.starts_with("TIMEOUT: "), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // A huge result stops at the plan's cap.
    let e = sql(&mut b, "SELECT generate_series(1, 1000000000) AS n")
        .await
        .unwrap_err();
    assert!(e.starts_with("PAYLOAD_TOO_LARGE: "), "{e}");

    // No state leaks from one call into the next.
    sql(&mut b, "SET search_path = public").await.unwrap();
    sql(&mut b, "SET statement_timeout = 0").await.unwrap();
    sql(&mut b, "BEGIN").await.unwrap();
    sql(&mut b, "INSERT INTO mine VALUES (1)").await.unwrap();
    assert_eq!(
        sql(
            &mut b,
            "SELECT count(*) AS n, current_setting('statement_timeout') AS st FROM mine"
        )
        .await
        .unwrap(),
        json!([{"n": 1, "st": "1s"}]),
        "own tables resolve again, the timeout is back, the insert was its own call"
    );

    // A is untouched by all of this.
    assert_eq!(
        sql(&mut a, "SELECT count(*) AS n FROM t").await.unwrap(),
        json!([{"n": 2}])
    );
    let c = root().await;
    let planted: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'planted'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(planted, 0);
}

#[tokio::test]
async fn deleting_a_tenant_drops_its_schema_and_role() {
    let pg = Pg::new();
    let h = host(&pg);
    let mut a = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();
    sql(&mut a, "CREATE TABLE t (id int)").await.unwrap();
    // The registry is in Postgres too: /readyz checks it answers.
    let (status, ready) = h.admin("GET", "/readyz", b"").await.unwrap();
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["registry"]["store"], "postgres", "{ready}");
    assert_eq!(ready["checks"]["registry"]["ok"], true, "{ready}");
    let name = pg.ident("alpha");
    let c = root().await;
    let count = |name: String| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1) \
                      + (SELECT count(*) FROM pg_namespace WHERE nspname = $1)",
                &[&name],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    assert_eq!(count(name.clone()).await, 2, "provisioned at start");
    let (status, v) = h
        .admin("DELETE", "/admin/tenants/alpha", b"")
        .await
        .unwrap();
    assert!((200..300).contains(&status), "{status} {v}");
    assert_eq!(count(name).await, 0, "role and schema dropped");
    assert_eq!(
        count(pg.ident("beta")).await,
        2,
        "the other tenant keeps its own"
    );
}

#[tokio::test]
async fn without_postgres_sql_is_unavailable() {
    let h = HostProcess::start_with(bin(), &[TenantSpec::new("alpha", "fixture")], "").unwrap();
    let mut a = Client::connect(&h.url("/t/alpha/ws")).await.unwrap();
    assert_eq!(
        sql(&mut a, "SELECT 1").await.unwrap_err(),
        "SERVICE_UNAVAILABLE: -: SQL is not configured on this host"
    );
}
