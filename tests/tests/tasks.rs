//! The task runner through real host processes sharing one PostgreSQL:
//! a task started twice with one key (on two hosts) is one task that runs
//! once, and both starts get its result; tasks are not refused by the
//! plan's concurrency cap as failed attempts; a task whose host is killed
//! mid-run is taken over by the other host and commits exactly once (the
//! result of the new attempt); a task taken over while its runner lives is
//! cut off there and only the new attempt commits; a failing task is
//! failed after its attempts.
//!
//! The fixture plugin records every `on-task` run as a row of its own SQL
//! table `task_runs` (task id, name, attempt, fence, input), which the
//! tests read through `fixture/sql`. Every test has a registry schema and
//! tenant prefix of its own (so its own host schema), dropped at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry_tests::{Client, HostProcess, TenantSpec};

use tenantry_tests::PgScope;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tenantry-host"))
}

/// A registry schema and tenant prefix of this test's own.
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
        Self(PgScope::new("tasks"))
    }

    /// The config: this test's Postgres schemas and a fast task runner
    /// (a task whose host died is taken over 1.5 s after its last
    /// heartbeat); calls may last 30 s (the slow task sleeps up to 10 s, on
    /// a machine that may be busy).
    fn toml(&self) -> String {
        format!(
            "{}\
             [tasks]\npoll_ms = 50\nfence_ttl_ms = 1500\nawait_poll_ms = 50\nretry_base_ms = 100\n\
             [limits]\ncall_wall_timeout_ms = 30000\n",
            self.postgres_toml()
        )
    }
}

/// The tenants every test host serves: the fixture, with room for the
/// slow task's `pg_sleep`, and SQL connections for two hosts (the plan's
/// `sql_max_connections` is also the tenant role's `CONNECTION LIMIT`
/// across the fleet: with the starter plan's 4, one host's idle pooled
/// connections can keep the other's task runs and test queries waiting).
fn tenants(ids: &[&str]) -> Vec<TenantSpec> {
    ids.iter()
        .map(|id| {
            TenantSpec::new(id, "fixture")
                .limits("sql_statement_timeout_ms = 10000\nsql_max_connections = 16")
        })
        .collect()
}

fn host(pg: &Pg) -> HostProcess {
    HostProcess::start_with(bin(), &tenants(&["shop"]), &pg.toml()).unwrap()
}

async fn client(h: &HostProcess) -> Client {
    Client::connect(&h.url("/t/shop/ws")).await.unwrap()
}

/// Create the fixture's `task_runs` table.
async fn runs_table(c: &mut Client) {
    c.rpc(
        "fixture/sql",
        json!([
            "CREATE TABLE task_runs (task_id text, name text, attempt int, fence int8, input text)"
        ]),
    )
    .await
    .unwrap();
}

/// Every recorded run: `(task id, name, attempt, fence)`.
async fn runs(c: &mut Client) -> Vec<(String, String, i64, i64)> {
    let rows = c
        .rpc(
            "fixture/sql",
            json!(["SELECT task_id, name, attempt, fence FROM task_runs ORDER BY task_id::int8, attempt"]),
        )
        .await
        .unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["task_id"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
                r["attempt"].as_i64().unwrap(),
                r["fence"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn runs_of(all: &[(String, String, i64, i64)], id: &str) -> Vec<(i64, i64)> {
    all.iter()
        .filter(|r| r.0 == id)
        .map(|r| (r.2, r.3))
        .collect()
}

/// Evaluate `$check` (an `Option`, may `.await`) every 50 ms until it is
/// `Some`, for at most `$limit`; its value.
macro_rules! eventually {
    ($what:expr, $limit:expr, $check:expr) => {{
        let start = Instant::now();
        loop {
            if let Some(v) = $check {
                break v;
            }
            assert!(
                start.elapsed() < $limit,
                "{}: not within {:?}",
                $what,
                $limit
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

/// Task `id` of `shop` through the admin API of `h`.
async fn admin_task(h: &HostProcess, id: &str) -> Value {
    let (status, v) = h
        .admin("GET", &format!("/admin/tenants/shop/tasks/{id}"), b"")
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    v["task"].clone()
}

/// The sum over `hosts` of `tenantry_tasks_total{tenant="shop",event}`.
async fn task_events(hosts: &[&HostProcess], event: &str) -> f64 {
    let mut total = 0.0;
    for h in hosts {
        let (_, text) = h.admin("GET", "/metrics", b"").await.unwrap();
        for line in text.as_str().unwrap_or("").lines() {
            if line.starts_with("tenantry_tasks_total{")
                && line.contains("tenant=\"shop\"")
                && line.contains(&format!("event=\"{event}\""))
            {
                total += line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    total
}

/// The result of task `id` once it settled (waiting up to `limit`): its
/// result, or the error (`TASK_FAILED: ...`).
async fn result_of(c: &mut Client, id: &str, limit: Duration) -> Result<Value, String> {
    let started = Instant::now();
    loop {
        match c.rpc("fixture/task_wait", json!([id, 1000])).await {
            Ok(v) => return Ok(v),
            Err(e) if e.to_string().starts_with("TASK_IN_FLIGHT") && started.elapsed() < limit => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn start(
    c: &mut Client,
    name: &str,
    key: &str,
    input: Value,
    attempts: Option<u32>,
) -> Value {
    c.rpc("fixture/task_start", json!([name, key, input, attempts]))
        .await
        .unwrap()
}

#[tokio::test]
async fn one_key_is_one_task_run_once_and_both_hosts_get_its_result() {
    let pg = Pg::new();
    let a = host(&pg);
    let b = host(&pg);
    let mut on_a = client(&a).await;
    let mut on_b = client(&b).await;
    runs_table(&mut on_a).await;

    // The same key started on both hosts: one task, one run, one result.
    let first = start(&mut on_a, "echo", "order-1", json!({"n": 1}), None).await;
    let second = start(&mut on_b, "echo", "order-1", json!({"n": 2}), None).await;
    assert_eq!(first["id"], second["id"]);
    let id = first["id"].as_str().unwrap().to_owned();
    let result = result_of(&mut on_b, &id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(result["input"], json!({"n": 1}), "the first start's input");
    assert_eq!(result["attempt"], 1);
    let again = on_a
        .rpc(
            "fixture/task_run",
            json!(["echo", "order-1", {"n": 3}, 3000]),
        )
        .await
        .unwrap();
    assert_eq!(again, result, "a later run of the key gets the same result");
    let settled = start(&mut on_b, "echo", "order-1", json!(null), None).await;
    assert_eq!(
        (settled["state"].as_str(), &settled["result"]),
        (Some("committed"), &result)
    );
    assert_eq!(runs_of(&runs(&mut on_a).await, &id), [(1, 1)], "ran once");

    // 40 tasks at once (more than two hosts run at once: half the starter
    // plan's 32 calls each): each runs once, on its first attempt (a busy
    // tenant is no failed attempt).
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..40 {
        let c = if n % 2 == 0 { &mut on_a } else { &mut on_b };
        let t = start(c, "echo", &format!("bulk-{n}"), json!({"n": n}), None).await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let r = on_a
            .rpc("fixture/task_wait", json!([id, 4000]))
            .await
            .unwrap();
        assert_eq!(r["attempt"], 1, "{r}");
    }
    eprintln!("40 tasks started and committed in {:?}", started.elapsed());
    let all = runs(&mut on_b).await;
    for id in &ids {
        assert_eq!(runs_of(&all, id).len(), 1, "task {id} ran once");
    }
    let (status, v) = a
        .admin("GET", "/admin/tenants/shop/tasks/counts", b"")
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["counts"],
        json!({"pending": 0, "running": 0, "committed": 41, "failed": 0, "total": 41})
    );
    assert_eq!(task_events(&[&a, &b], "committed").await, 41.0);
    assert_eq!(task_events(&[&a, &b], "retried").await, 0.0);

    // Unknown names, waits on tasks still running, and nonsense.
    let err = on_a
        .rpc("fixture/task_start", json!(["nope", "k", 1, null]))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("UNKNOWN_TASK"), "{err}");
    let slow = start(&mut on_a, "slow", "s-1", json!({"sleep_s": 1}), None).await;
    let err = on_a
        .rpc("fixture/task_wait", json!([slow["id"], 100]))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("TASK_IN_FLIGHT"), "{err}");
    let done = result_of(
        &mut on_b,
        slow["id"].as_str().unwrap(),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(done["attempt"], 1);
    let err = on_a
        .rpc("fixture/task_wait", json!(["999999999", 100]))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("NOT_FOUND"), "{err}");
    assert_eq!(
        on_a.rpc("fixture/task_get", json!(["abc"])).await.unwrap(),
        Value::Null
    );
    let (status, v) = a
        .admin(
            "GET",
            "/admin/tenants/shop/tasks?state=committed&limit=5",
            b"",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tasks"].as_array().unwrap().len(), 5);
    for bad in [
        "/admin/tenants/shop/tasks?state=sleeping",
        "/admin/tenants/shop/tasks/abc",
    ] {
        assert_eq!(a.admin("GET", bad, b"").await.unwrap().0, 400, "{bad}");
    }
    assert_eq!(
        a.admin("GET", "/admin/tenants/shop/tasks/999999999", b"")
            .await
            .unwrap()
            .0,
        404
    );
    assert_eq!(
        a.admin("GET", "/admin/tenants/nobody/tasks", b"")
            .await
            .unwrap()
            .0,
        404
    );
}

#[tokio::test]
async fn a_task_whose_host_is_killed_mid_run_is_taken_over_and_commits_once() {
    let pg = Pg::new();
    let mut hosts = [Some(host(&pg)), Some(host(&pg))];
    let mut clients = Vec::new();
    for h in hosts.iter().flatten() {
        clients.push(client(h).await);
    }
    runs_table(&mut clients[0]).await;

    // Attempt 1 sleeps 10 s in SQL; heartbeats keep it its host's meanwhile.
    let t = start(
        &mut clients[0],
        "slow",
        "big-job",
        json!({"sleep_s": 10}),
        None,
    )
    .await;
    let id = t["id"].as_str().unwrap().to_owned();
    eventually!("slow task started", Duration::from_secs(10), {
        let r = runs(&mut clients[0]).await;
        (runs_of(&r, &id).len() == 1).then_some(())
    });
    // Which host runs it (still attempt 1, mid-run): kill that one.
    let running = admin_task(hosts[0].as_ref().unwrap(), &id).await;
    assert_eq!(
        (running["state"].as_str(), running["attempt"].as_i64()),
        (Some("running"), Some(1)),
        "{running}"
    );
    let owner = running["owner"].as_str().unwrap().to_owned();
    let victim = hosts
        .iter()
        .position(|h| owner.ends_with(&format!("/{}", h.as_ref().unwrap().pid())))
        .unwrap_or_else(|| panic!("owner {owner} is neither host"));
    let survivor = 1 - victim;
    eprintln!("task {id} runs on host {victim} ({owner}); killing it");
    let mut dead = hosts[victim].take().unwrap();
    let killed = Instant::now();
    dead.kill().unwrap();
    drop(dead);
    let h = hosts[survivor].as_ref().unwrap();
    let c = &mut clients[survivor];

    // The survivor takes it over once the lock lapses (1.5 s after the last
    // heartbeat) and commits attempt 2's result.
    let result = result_of(c, &id, Duration::from_secs(20)).await.unwrap();
    eprintln!(
        "taken over and committed {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        (result["attempt"].as_i64(), result["fence"].as_i64()),
        (Some(2), Some(2)),
        "{result}"
    );
    // Nothing else commits or runs, later either.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let task = admin_task(h, &id).await;
    assert_eq!(task["state"], "committed", "{task}");
    assert_eq!(
        (task["attempt"].as_i64(), task["fence"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(task["result"], result);
    assert!(
        task["owner"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{}", h.pid()))
    );
    assert_eq!(runs_of(&runs(c).await, &id), [(1, 1), (2, 2)]);
    assert_eq!(
        c.rpc("fixture/task_run", json!(["slow", "big-job", {}, 100]))
            .await
            .unwrap(),
        result
    );
    assert_eq!(task_events(&[h], "taken_over").await, 1.0);
    assert_eq!(task_events(&[h], "committed").await, 1.0);
}

#[tokio::test]
async fn a_task_taken_over_from_a_live_runner_is_cut_off_there_and_commits_only_the_new_attempt() {
    let pg = Pg::new();
    let a = host(&pg);
    let b = host(&pg);
    let mut c = client(&a).await;
    runs_table(&mut c).await;
    let t = start(&mut c, "slow", "k", json!({"sleep_s": 8}), None).await;
    let id = t["id"].as_str().unwrap().to_owned();
    eventually!("slow task started", Duration::from_secs(10), {
        let r = runs(&mut c).await;
        (runs_of(&r, &id).len() == 1).then_some(())
    });
    // The operator takes it over while attempt 1 sleeps.
    let running = admin_task(&a, &id).await;
    assert_eq!(running["state"], "running", "{running}");
    let (status, v) = b
        .admin(
            "POST",
            &format!("/admin/tenants/shop/tasks/{id}/takeover"),
            b"",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    let took_over = Instant::now();
    let result = result_of(&mut c, &id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        (result["attempt"].as_i64(), result["fence"].as_i64()),
        (Some(2), Some(3)),
        "{result}"
    );
    // Attempt 1's runner was cut off at its next heartbeat: its result
    // never lands, also after its sleep would have ended.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(took_over.elapsed())).await;
    let task = admin_task(&a, &id).await;
    assert_eq!(
        (task["state"].as_str(), &task["result"]),
        (Some("committed"), &result)
    );
    assert_eq!(runs_of(&runs(&mut c).await, &id), [(1, 1), (2, 3)]);
    assert_eq!(task_events(&[&a, &b], "fenced_out").await, 1.0);
    assert_eq!(task_events(&[&a, &b], "committed").await, 1.0);
    // Taking over a task that is not running is a 404.
    assert_eq!(
        b.admin(
            "POST",
            &format!("/admin/tenants/shop/tasks/{id}/takeover"),
            b""
        )
        .await
        .unwrap()
        .0,
        404
    );
}

#[tokio::test]
async fn a_failing_task_is_failed_after_its_attempts_and_a_flaky_one_succeeds_on_retry() {
    let pg = Pg::new();
    let a = host(&pg);
    let b = host(&pg);
    let mut c = client(&b).await;
    runs_table(&mut c).await;
    let fail = start(&mut c, "fail", "f", json!({"why": "always"}), Some(3)).await;
    let fail_id = fail["id"].as_str().unwrap().to_owned();
    let flaky = start(&mut c, "flaky", "fl", json!({}), None).await;
    let flaky = result_of(
        &mut c,
        flaky["id"].as_str().unwrap(),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(flaky["attempt"], 2, "{flaky}");
    // Three attempts (backoff ~100 ms, then ~200 ms), then failed.
    let err = result_of(&mut c, &fail_id, Duration::from_secs(20))
        .await
        .expect_err("a failing task committed");
    assert!(
        err.starts_with("TASK_FAILED") && err.contains("TASK_BOOM"),
        "{err}"
    );
    let runs = runs(&mut c).await;
    assert_eq!(
        runs_of(&runs, &fail_id)
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let task = admin_task(&a, &fail_id).await;
    assert_eq!(
        (task["state"].as_str(), task["attempt"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert!(
        task["error"].as_str().unwrap().contains("TASK_BOOM"),
        "{task}"
    );
    // Starting the key again answers the failure; no fourth run.
    let again = start(&mut c, "fail", "f", json!(null), None).await;
    assert_eq!(again["state"], "failed");
    let (status, v) = a
        .admin("GET", "/admin/tenants/shop/tasks?state=failed", b"")
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(v["counts"]["failed"], 1);
    assert_eq!(task_events(&[&a, &b], "failed").await, 1.0);
    assert_eq!(task_events(&[&a, &b], "retried").await, 3.0);
}
