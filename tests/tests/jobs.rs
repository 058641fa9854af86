//! The job queue and the scheduler through real host processes sharing
//! one PostgreSQL: jobs enqueued by a plugin on one host run exactly once
//! somewhere in the fleet, failing ones are retried with backoff and go
//! dead after their attempts (listed and retried through the admin API),
//! a job whose host died mid-run runs again after the visibility timeout,
//! and a schedule fires once per occurrence however many hosts run.
//!
//! The fixture plugin records every `on-job` run as a row of its own SQL
//! table `job_runs` (job id, queue, attempt, payload), which the tests
//! read through `fixture/sql`. Every test has a registry schema and tenant
//! prefix of its own (so its own host schema, `{prefix}_host`), dropped at
//! the end.

use std::collections::HashMap;
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
        Self(PgScope::new("jobs"))
    }

    /// The config: this test's Postgres schemas and a fast job runner.
    fn toml(&self, visibility_ms: u64) -> String {
        format!(
            "{}\
             [jobs]\npoll_ms = 50\nvisibility_ms = {visibility_ms}\nretry_base_ms = 100\n",
            self.postgres_toml()
        )
    }
}

/// The tenants every test host serves: the fixture, with room for the
/// slow job's 4 s of `pg_sleep`.
fn tenants(ids: &[&str]) -> Vec<TenantSpec> {
    ids.iter()
        .map(|id| {
            TenantSpec::new(id, "fixture")
                .limits("sql_statement_timeout_ms = 10000\nsql_max_connections = 40")
        })
        .collect()
}

fn host(pg: &Pg, ids: &[&str], visibility_ms: u64) -> HostProcess {
    HostProcess::start_with(bin(), &tenants(ids), &pg.toml(visibility_ms)).unwrap()
}

async fn client(h: &HostProcess, tenant: &str) -> Client {
    Client::connect(&h.url(&format!("/t/{tenant}/ws")))
        .await
        .unwrap()
}

/// Create the fixture's `job_runs` table.
async fn runs_table(c: &mut Client) {
    c.rpc(
        "fixture/sql",
        json!(["CREATE TABLE job_runs (job_id text, queue text, attempt int, payload text)"]),
    )
    .await
    .unwrap();
}

/// Every recorded run: `(job id, queue, attempt, payload)`.
async fn runs(c: &mut Client) -> Vec<(String, String, i64, String)> {
    let rows = c
        .rpc(
            "fixture/sql",
            json!(["SELECT job_id, queue, attempt, payload FROM job_runs ORDER BY job_id::int8, attempt"]),
        )
        .await
        .unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["job_id"].as_str().unwrap().to_owned(),
                r["queue"].as_str().unwrap().to_owned(),
                r["attempt"].as_i64().unwrap(),
                r["payload"].as_str().unwrap().to_owned(),
            )
        })
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

async fn jobs_in(h: &HostProcess, tenant: &str, state: &str) -> Vec<Value> {
    let (status, v) = h
        .admin(
            "GET",
            &format!("/admin/tenants/{tenant}/jobs?state={state}"),
            b"",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    v["jobs"].as_array().unwrap().clone()
}

#[tokio::test]
async fn jobs_enqueued_on_one_host_run_exactly_once_across_two() {
    let pg = Pg::new();
    let a = host(&pg, &["shop"], 30_000);
    let b = host(&pg, &["shop"], 30_000);
    let mut on_a = client(&a, "shop").await;
    runs_table(&mut on_a).await;
    // B serves the tenant too (it runs jobs once its plugin is loaded).
    let mut on_b = client(&b, "shop").await;
    assert_eq!(on_b.rpc("fixture/echo", json!([1])).await.unwrap(), 1);

    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..200 {
        let id = on_a
            .rpc("fixture/enqueue", json!(["ok", {"n": n}]))
            .await
            .unwrap();
        ids.push(id.as_str().unwrap().to_owned());
    }
    let all = eventually!("200 runs", Duration::from_secs(30), {
        let r = runs(&mut on_a).await;
        (r.len() >= 200).then_some(r)
    });
    eprintln!("200 jobs enqueued and run in {:?}", started.elapsed());
    // Nothing runs twice, later either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_after = runs(&mut on_a).await;
    assert_eq!(all_after.len(), 200, "a job ran twice");
    assert_eq!(all, all_after);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (id, queue, attempt, payload) in &all {
        assert_eq!((queue.as_str(), *attempt), ("ok", 1));
        assert!(payload.starts_with("{\"n\":"), "{payload}");
        *seen.entry(id.clone()).or_default() += 1;
    }
    ids.sort();
    let mut ran: Vec<String> = seen.keys().cloned().collect();
    ran.sort();
    assert_eq!(ran, ids, "every enqueued job ran once");
    for h in [&a, &b] {
        assert!(jobs_in(h, "shop", "queued").await.is_empty());
        assert!(jobs_in(h, "shop", "running").await.is_empty());
    }
    // The metrics count them (on whichever host ran them).
    let mut completed = 0.0;
    for h in [&a, &b] {
        let (_, text) = h.admin("GET", "/metrics", b"").await.unwrap();
        for line in text.as_str().unwrap_or("").lines() {
            if line.starts_with("tenantry_jobs_total{")
                && line.contains("tenant=\"shop\"")
                && line.contains("event=\"completed\"")
            {
                completed += line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    assert_eq!(completed, 200.0);
}

#[tokio::test]
async fn failing_jobs_go_dead_are_listed_and_retried_and_flaky_ones_succeed_on_retry() {
    let pg = Pg::new();
    let a = host(&pg, &["shop"], 30_000);
    let b = host(&pg, &["shop"], 30_000);
    let mut c = client(&b, "shop").await;
    runs_table(&mut c).await;

    let fail_id = c
        .rpc(
            "fixture/enqueue_with",
            json!(["fail", {"why": "always"}, null, 3]),
        )
        .await
        .unwrap();
    let fail_id = fail_id.as_str().unwrap().to_owned();
    let flaky_id = c
        .rpc("fixture/enqueue", json!(["flaky", "once"]))
        .await
        .unwrap();
    let flaky_id = flaky_id.as_str().unwrap().to_owned();

    // The failing job: three attempts (backoff 100 ms, then ~200 ms), then dead.
    let dead = eventually!("dead job", Duration::from_secs(15), {
        let d = jobs_in(&a, "shop", "dead").await;
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], fail_id.as_str());
    assert_eq!(dead[0]["queue"], "fail");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["max_attempts"], 3);
    assert_eq!(dead[0]["payload"], json!({"why": "always"}));
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("JOB_FAILED"),
        "{}",
        dead[0]
    );
    let attempts = |r: &[(String, String, i64, String)], id: &str| -> Vec<i64> {
        r.iter().filter(|x| x.0 == id).map(|x| x.2).collect()
    };
    assert_eq!(attempts(&runs(&mut c).await, &fail_id), [1, 2, 3]);
    // The flaky job failed once and succeeded on its second attempt.
    eventually!("flaky job done", Duration::from_secs(10), {
        let r = runs(&mut c).await;
        (attempts(&r, &flaky_id) == [1, 2]).then_some(())
    });

    // The operator retries the dead job (through the other host): three more
    // attempts, dead again.
    let (status, v) = a
        .admin(
            "POST",
            &format!("/admin/tenants/shop/jobs/{fail_id}/retry"),
            b"",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["retried"], fail_id.as_str());
    eventually!("dead again", Duration::from_secs(15), {
        let r = runs(&mut c).await;
        let dead = jobs_in(&b, "shop", "dead").await;
        (attempts(&r, &fail_id) == [1, 1, 2, 2, 3, 3] && dead.len() == 1).then_some(())
    });
    // Retrying a job that is not dead, or another tenant's, or nonsense.
    let (status, _) = a
        .admin("POST", "/admin/tenants/shop/jobs/999999999/retry", b"")
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = a
        .admin("POST", "/admin/tenants/shop/jobs/abc/retry", b"")
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = a
        .admin("GET", "/admin/tenants/shop/jobs?state=sleeping", b"")
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = a
        .admin("GET", "/admin/tenants/nobody/jobs?state=dead", b"")
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_job_whose_host_dies_mid_run_runs_again_after_the_visibility_timeout() {
    let pg = Pg::new();
    let mut a = host(&pg, &["shop"], 2_000);
    let mut c = client(&a, "shop").await;
    runs_table(&mut c).await;
    // Attempt 1 of a `slow` job sleeps 4 s in SQL.
    let id = c
        .rpc("fixture/enqueue", json!(["slow", null]))
        .await
        .unwrap();
    let id = id.as_str().unwrap().to_owned();
    eventually!("slow job started", Duration::from_secs(10), {
        let r = runs(&mut c).await;
        (r.len() == 1).then_some(())
    });
    drop(c);
    let killed = Instant::now();
    a.kill().unwrap();

    // Another host takes it over once its claim expires (2 s).
    let b = host(&pg, &["shop"], 2_000);
    let mut c = client(&b, "shop").await;
    let r = eventually!("slow job re-run", Duration::from_secs(15), {
        let r = runs(&mut c).await;
        (r.len() == 2).then_some(r)
    });
    let took = killed.elapsed();
    eprintln!("re-run {took:?} after the kill");
    assert_eq!(
        r.iter().map(|x| (x.0.as_str(), x.2)).collect::<Vec<_>>(),
        [(id.as_str(), 1), (id.as_str(), 2)]
    );
    eventually!("slow job settled", Duration::from_secs(5), {
        (jobs_in(&b, "shop", "running").await.is_empty()
            && jobs_in(&b, "shop", "queued").await.is_empty())
        .then_some(())
    });
}

#[tokio::test]
async fn a_schedule_fires_once_per_occurrence_across_two_hosts_and_ids_are_per_tenant() {
    let pg = Pg::new();
    let a = host(&pg, &["north", "south"], 30_000);
    let b = host(&pg, &["north", "south"], 30_000);
    let mut north = client(&a, "north").await;
    let mut south = client(&b, "south").await;
    runs_table(&mut north).await;
    runs_table(&mut south).await;

    // Both tenants own a `daily_report`; one fires every second, one every two.
    let next = north
        .rpc(
            "fixture/schedule_set",
            json!(["daily_report", "* * * * * *", "ok", {"from": "north"}]),
        )
        .await
        .unwrap();
    assert!(next.as_u64().unwrap() > 1_700_000_000_000, "{next}");
    let started = Instant::now();
    south
        .rpc(
            "fixture/schedule_set",
            json!(["daily_report", "*/2 * * * * *", "ok", {"from": "south"}]),
        )
        .await
        .unwrap();
    let listed = north.rpc("fixture/schedule_list", json!([])).await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], "daily_report");
    assert_eq!(listed[0]["cron"], "* * * * * *");
    let err = north
        .rpc("fixture/schedule_set", json!(["x", "* * *", "ok", 1]))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("INVALID_REQUEST"), "{err}");

    tokio::time::sleep(Duration::from_millis(4_200)).await;
    assert_eq!(
        north
            .rpc("fixture/schedule_remove", json!(["daily_report"]))
            .await
            .unwrap(),
        true
    );
    assert_eq!(
        south
            .rpc("fixture/schedule_remove", json!(["daily_report"]))
            .await
            .unwrap(),
        true
    );
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last fired jobs run.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let n = runs(&mut north).await;
    let s = runs(&mut south).await;
    eprintln!(
        "north ran {} and south {} scheduled jobs in {elapsed:.1} s",
        n.len(),
        s.len()
    );
    // Each occurrence once: at most one job per elapsed second (two hosts
    // firing each occurrence would double it), at least most of them.
    assert!(
        (3..=(elapsed as usize + 1)).contains(&n.len()),
        "north: {n:?}"
    );
    assert!(
        (1..=(elapsed as usize / 2 + 1)).contains(&s.len()),
        "south: {s:?}"
    );
    for (runs, from) in [(&n, "north"), (&s, "south")] {
        let mut ids: Vec<&String> = runs.iter().map(|r| &r.0).collect();
        ids.dedup();
        assert_eq!(ids.len(), runs.len(), "a job ran twice");
        assert!(
            runs.iter()
                .all(|r| r.3 == format!("{{\"from\":\"{from}\"}}"))
        );
    }
    // Nothing fires after the removal.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(runs(&mut north).await.len(), n.len());
}
