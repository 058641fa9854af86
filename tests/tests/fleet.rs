//! Several host processes sharing one registry in PostgreSQL (a fleet): a
//! change made through one host's admin API is applied by the others
//! within a second, without restarts.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tenantry_tests::{Client, HostProcess, fixture_flavor};

const PG_URL: &str = "postgres://root@127.0.0.1:5432/test";
/// What the issue promises: a deploy on one host is served by every other within this.
const PROPAGATION: Duration = Duration::from_secs(1);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

/// A registry schema of its own, dropped when the test ends.
struct Schema(String);

impl Schema {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self(format!(
            "tenantry_e2e_{name}_{}_{nanos}",
            std::process::id()
        ))
    }

    /// The tenants' SQL schema and role prefix: this test's own (roles
    /// are cluster-wide).
    fn tenant_prefix(&self) -> String {
        let digest = self.0.bytes().fold(0u64, |h, b| {
            h.wrapping_mul(0x100_0000_01b3).wrapping_add(u64::from(b))
        });
        format!("fleet{:010x}", digest & 0xff_ffff_ffff)
    }

    fn toml(&self) -> String {
        format!(
            "[postgres]\nurl = {PG_URL:?}\nregistry_schema = {:?}\ntenant_prefix = {:?}\n",
            self.0,
            self.tenant_prefix()
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
        let like = format!("{}\\_t\\_%", self.tenant_prefix());
        // Dropped from a plain thread: the test's runtime may be gone.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await
                    .unwrap();
                // The tenants' SQL schemas and roles.
                for row in client
                    .query(
                        "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                        &[&like],
                    )
                    .await
                    .unwrap()
                {
                    let n: String = row.get(0);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA \"{n}\" CASCADE"))
                        .await;
                }
                for row in client
                    .query(
                        "SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
                        &[&like],
                    )
                    .await
                    .unwrap()
                {
                    let n: String = row.get(0);
                    let _ = client
                        .batch_execute(&format!("DROP OWNED BY \"{n}\"; DROP ROLE \"{n}\""))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn ok(h: &HostProcess, method: &str, path: &str, body: &[u8]) -> serde_json::Value {
    let (status, v) = h.admin(method, path, body).await.unwrap();
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

async fn flavor(c: &mut Client) -> String {
    c.rpc("fixture/flavor", json!([]))
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Poll `check` until it is true; panics if that takes longer than
/// [`PROPAGATION`]. Returns how long it took.
async fn within_a_second<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROPAGATION,
            "{what}: not seen by the other host within {PROPAGATION:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_deploy_through_one_host_is_served_by_another_within_a_second() {
    let schema = Schema::new("deploy");
    let a = HostProcess::start_with(bin(), &[], &schema.toml()).unwrap();
    let b = HostProcess::start_with(bin(), &[], &schema.toml()).unwrap();

    // A tenant created and deployed through A...
    ok(
        &a,
        "POST",
        "/admin/tenants",
        br#"{"id":"fleet","plan":"enterprise"}"#,
    )
    .await;
    ok(
        &a,
        "POST",
        "/admin/tenants/fleet/plugins?activate=true",
        &fixture_flavor("v1"),
    )
    .await;
    // ...is served by B.
    let url = b.url("/t/fleet/ws");
    let took = within_a_second("create + deploy", || async {
        match Client::connect(&url).await {
            Ok(mut c) => c.rpc("fixture/flavor", json!([])).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    eprintln!("create + deploy on A served by B after {took:?}");
    let mut on_b = Client::connect(&url).await.unwrap();
    assert_eq!(flavor(&mut on_b).await, "v1");
    // B's view through its own admin API agrees.
    let t = ok(&b, "GET", "/admin/tenants/fleet", b"").await;
    assert_eq!(t["plan"], "enterprise");

    // A new version activated through A: B's open connection runs it.
    let v2 = ok(
        &a,
        "POST",
        "/admin/tenants/fleet/plugins",
        &fixture_flavor("v2"),
    )
    .await;
    let v2 = v2["version"].as_str().unwrap().to_owned();
    ok(
        &a,
        "POST",
        &format!("/admin/tenants/fleet/plugins/{v2}/activate"),
        b"",
    )
    .await;
    let on_b = std::sync::Arc::new(tokio::sync::Mutex::new(on_b));
    let took = within_a_second("activate", || {
        let on_b = on_b.clone();
        async move { flavor(&mut *on_b.lock().await).await == "v2" }
    })
    .await;
    eprintln!("activation on A served by B after {took:?}");
    // Rollback through B is seen by A.
    ok(&b, "POST", "/admin/tenants/fleet/rollback", b"").await;
    let on_a = std::sync::Arc::new(tokio::sync::Mutex::new(
        Client::connect(&a.url("/t/fleet/ws")).await.unwrap(),
    ));
    within_a_second("rollback", || {
        let c = on_a.clone();
        async move { flavor(&mut *c.lock().await).await == "v1" }
    })
    .await;

    // A deploy key made on A works on B.
    let key = ok(&a, "POST", "/admin/tenants/fleet/keys", b"").await;
    let key = key["key"].as_str().unwrap().to_owned();
    within_a_second("deploy key", || {
        let (addr, key) = (b.admin_addr.clone(), key.clone());
        async move {
            tenantry_tests::admin_request(&addr, "GET", "/admin/tenants/fleet", Some(&key), b"")
                .await
                .is_ok_and(|(s, _)| s == 200)
        }
    })
    .await;

    // Suspending through A closes B's connections.
    ok(
        &a,
        "POST",
        "/admin/tenants/fleet/suspend",
        br#"{"reason":"fleet test"}"#,
    )
    .await;
    let closed = tokio::time::timeout(PROPAGATION, async {
        on_b.lock().await.closed().await.unwrap()
    })
    .await
    .expect("B closed its connection within a second");
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (Some(1008), "fleet test")
    );

    // Deleting through A removes the tenant from B.
    ok(&a, "DELETE", "/admin/tenants/fleet", b"").await;
    within_a_second("delete", || async {
        let Ok(mut c) = Client::connect_raw(&url).await else {
            return false;
        };
        c.closed().await.is_ok_and(|c| c.reason == "unknown tenant")
    })
    .await;
}

/// Hosts changing the same tenant at the same moment never overwrite each
/// other: a host that loses the race re-applies its change to the newer
/// record, so every upload is accepted and every one is in the registry.
#[tokio::test]
async fn concurrent_changes_through_two_hosts_lose_nothing() {
    let schema = Schema::new("race");
    let a = HostProcess::start_with(bin(), &[], &schema.toml()).unwrap();
    let b = HostProcess::start_with(bin(), &[], &schema.toml()).unwrap();
    ok(&a, "POST", "/admin/tenants", br#"{"id":"race"}"#).await;
    let uploads = (0..12).map(|i| {
        let host = if i % 2 == 0 { &a } else { &b };
        let wasm = fixture_flavor(&format!("{i:02}"));
        async move {
            loop {
                let (status, v) = host
                    .admin("POST", "/admin/tenants/race/plugins", &wasm)
                    .await
                    .unwrap();
                // One compile per tenant per host at a time: wait for our turn.
                if status != 429 {
                    return (status, v);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let results = futures_util::future::join_all(uploads).await;
    let mut accepted = Vec::new();
    for (status, v) in &results {
        match status {
            201 => accepted.push(v["version"].as_str().unwrap().to_owned()),
            409 => assert_eq!(v["error"]["code"], "CONFLICT", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(accepted.len(), results.len(), "{results:?}");
    let listed = ok(&b, "GET", "/admin/tenants/race/plugins", b"").await;
    let mut stored: Vec<String> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap().to_owned())
        .collect();
    stored.sort();
    accepted.sort();
    assert_eq!(
        stored, accepted,
        "every accepted upload is stored, no other"
    );
}
