//! `tenantry-bench`: load tool for a real `tenantry` process over real
//! WebSockets. It starts the host itself (pinned to one core with `taskset`
//! unless `--no-pin`), runs the load from this process (pinned to the other
//! core), and reads the host's CPU time and RSS from `/proc`.
//!
//! ```text
//! cargo build --release -p tenantry-tests --bins
//! target/release/tenantry-bench echo    --conns 50 --seconds 10 [--plugin hostile]
//! target/release/tenantry-bench --reuse 1000 echo --conns 50 --seconds 10
//! target/release/tenantry-bench fanout  --subs 1000 --rate 200 --seconds 10
//! target/release/tenantry-bench idle    --conns 10000
//! target/release/tenantry-bench noisy   --seconds 5
//! target/release/tenantry-bench sql     --conns 4 --seconds 5
//! target/release/tenantry-bench jobs    --jobs 2000 --conns 4
//! ```
//!
//! `noisy` is the noisy-neighbour benchmark: one host, two tenants. Tenant
//! `steady` (B, plugin `fixture`, plan `bench`) runs a steady, paced echo
//! load; tenant `noisy` (A, plugin `hostile`, the default plan `starter`)
//! runs one hostile behaviour at full speed per phase. It reports B's
//! latency and errors per phase against a baseline with A idle, measured
//! just before that phase (`--rounds N` repeats the whole and judges each
//! phase by its median ratio).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tenantry_tests::{HostProcess, TenantSpec};
use tokio_tungstenite::tungstenite::Message;

/// The plan load tests run on: enterprise with rates and counts high enough
/// that the load generator, not a quota, is the bottleneck.
const BENCH_PLAN: &str = "[plans.bench]
base = \"enterprise\"
max_connections = 1000000
max_concurrent_calls = 100000
max_inflight_calls_per_connection = 100000
connection_messages_per_sec = 100000000
connection_message_burst = 100000000
tenant_messages_per_sec = 100000000
tenant_message_burst = 100000000
publishes_per_sec = 100000000
publish_burst = 100000000
";

#[derive(Parser)]
#[command(about = "Load tool for tenantry: echo RPC, fan-out, idle connections, noisy neighbour")]
struct Cli {
    /// The host binary (default: `tenantry-host` next to this executable).
    #[arg(long)]
    host_bin: Option<PathBuf>,
    /// Do not pin the host to core 0 and the load to core 1.
    #[arg(long)]
    no_pin: bool,
    /// The bench plan's `instance_reuse` (0: a fresh instance per call).
    #[arg(long, default_value_t = 0)]
    reuse: u32,
    /// The host's `limits.memory_keep_resident_kb` (unset: the host's default).
    #[arg(long)]
    keep_resident_kb: Option<u64>,
    /// The host's `limits.worker_threads` (unset: the host's default, one
    /// per CPU it may run on: one when pinned).
    #[arg(long)]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Closed-loop echo RPCs from N connections.
    Echo {
        #[arg(long, default_value_t = 50)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The plugin whose `PLUGIN/echo` is called: `fixture` (imports
        /// every interface) or `hostile` (imports few).
        #[arg(long, default_value = "fixture")]
        plugin: String,
        /// Bytes of the string each call echoes (the frame is about 50
        /// bytes longer).
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
    /// One publisher at a fixed rate, N subscribers on one topic.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Two hosts sharing Redis (a fleet): one publisher on host A at a fixed
    /// rate, N subscribers on host B. Reports publish -> delivery latency
    /// across hosts, deliveries/s, loss, seq gaps and Redis commands per 100
    /// publishes. Neither host is pinned (two hosts, Redis and the load share
    /// the machine's cores).
    Fleet {
        #[arg(long, default_value_t = 100)]
        subs: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Redis URL.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// PostgreSQL URL: with it the replay buffers are durable on
        /// Postgres (`[replay] store = "postgres"`, the bus takes its seqs
        /// there); the bench's schemas are dropped at the end.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Presence at scale: N users (plugin `chat`) join R rooms' presence
    /// by subscribing (one observer per room first), then all leave.
    /// Reports join latency (subscribe -> presence_state), joins/s, host
    /// CPU per join, RSS per present connection, and how fast the leaves
    /// reach the observers. With `--redis` the presence store is Redis.
    Presence {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Joins in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Redis URL (default: in-memory presence).
        #[arg(long)]
        redis: Option<String>,
    },
    /// SQL round trips through the plugin (`fixture/sql`, `fixture/sql_exec`)
    /// on the real PostgreSQL: closed-loop `SELECT 1` from N connections,
    /// then single-row inserts. Reports calls/s, latency and host CPU per
    /// call for each. Uses a registry schema and tenant prefix of its own
    /// and drops them afterwards.
    Sql {
        #[arg(long, default_value_t = 4)]
        conns: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// PostgreSQL URL (a superuser).
        #[arg(long, default_value = "postgres://root@127.0.0.1:5432/test")]
        postgres: String,
    },
    /// NOTIFY → WebSocket latency: rows inserted into tenant `bench`'s
    /// `orders` table (plugin `orders`) by a connection logged in as the
    /// tenant's role, at `rate` per second; reports INSERT sent → `created`
    /// event received p50/p99, deliveries and host CPU per row.
    Notify {
        #[arg(long, default_value_t = 1)]
        subs: usize,
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// PostgreSQL URL (a superuser).
        #[arg(long, default_value = "postgres://root@127.0.0.1:5432/test")]
        postgres: String,
    },
    /// The job queue on the real PostgreSQL: `conns` connections enqueue
    /// `jobs` jobs (`fixture/enqueue` on queue `bench`) in closed loops
    /// while the host runs them (`on-job` publishes each payload on topic
    /// `jobs:done`, which one subscriber watches). Reports enqueues/s, jobs
    /// run per second, enqueue → done latency p50/p99, lost jobs and host
    /// CPU per job.
    Jobs {
        #[arg(long, default_value_t = 2000)]
        jobs: u64,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// PostgreSQL URL (a superuser).
        #[arg(long, default_value = "postgres://root@127.0.0.1:5432/test")]
        postgres: String,
    },
    /// Open N idle connections and report the host's RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Keep the connections open this many seconds after the reading
        /// (the host's pid is printed), e.g. to inspect its heap with gdb.
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// Noisy neighbour: tenant B's steady echo load while tenant A (hostile
    /// plugin, default plan) runs one hostile behaviour per phase at full
    /// speed, each phase right after a baseline with A idle. Reports B's
    /// latency and errors per phase against that baseline.
    Noisy {
        /// B's connections, each a closed loop of `fixture/echo` calls.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// B's total calls per second over all its connections (0: unpaced,
        /// each connection sends its next call as soon as the answer arrives).
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Length of B's measurement in each phase.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// A's connections, each calling the hostile handler in a closed loop.
        #[arg(long, default_value_t = 8)]
        noisy_connections: usize,
        /// Run only these phases (comma-separated, from: spin, alloc,
        /// recurse, panic, huge, publish_flood, kv_flood, log_flood,
        /// rpc_flood, connect_flood). Each runs right after a baseline of its own.
        #[arg(long, value_delimiter = ',')]
        phases: Vec<String>,
        /// Run every phase (each with its baseline) this many times; the
        /// verdict takes each phase's median p99 ratio over the rounds.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Print one JSON line with every phase on stdout (the table goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let host_bin = match cli.host_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .join("tenantry-host"),
    };
    let pin = !cli.no_pin;
    if pin {
        pin_self_to_core(1)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Check the noisy mode's arguments before starting anything.
    let noisy_phases = match &cli.mode {
        Mode::Noisy {
            phases,
            connections,
            rounds,
            ..
        } => {
            if *connections == 0 {
                bail!("--connections must be at least 1");
            }
            if *rounds == 0 {
                bail!("--rounds must be at least 1");
            }
            parse_phases(phases)?
        }
        _ => Vec::new(),
    };
    let tenants = match cli.mode {
        Mode::Noisy { .. } => vec![
            // A stays on the default plan: the plan is what protects B.
            TenantSpec::new(NOISY_TENANT, "hostile"),
            TenantSpec::new(STEADY_TENANT, "fixture").plan("bench"),
        ],
        Mode::Presence { .. } => vec![TenantSpec::new("bench", "chat").plan("bench")],
        Mode::Notify { .. } => vec![TenantSpec::new("bench", "orders").plan("bench")],
        Mode::Echo { ref plugin, .. } => vec![TenantSpec::new("bench", plugin).plan("bench")],
        _ => vec![TenantSpec::new("bench", "fixture").plan("bench")],
    };
    if let Mode::Fleet {
        subs,
        rate,
        seconds,
        redis,
        postgres,
    } = &cli.mode
    {
        return rt.block_on(fleet(
            &host_bin,
            cli.reuse,
            &tenants,
            &redis.clone(),
            postgres.as_deref(),
            *subs,
            *rate,
            *seconds,
        ));
    }
    let mut extra = match &cli.mode {
        Mode::Presence {
            redis: Some(url), ..
        } => format!(
            "\n[redis]\nurl = {url:?}\nnamespace = \"bench-presence-{}\"\n",
            std::process::id()
        ),
        Mode::Sql { postgres, .. }
        | Mode::Notify { postgres, .. }
        | Mode::Jobs { postgres, .. } => format!(
            "\n[postgres]\nurl = {postgres:?}\nregistry_schema = \"bench_sql_{0}\"\ntenant_prefix = \"bench{0}\"\n",
            std::process::id()
        ),
        _ => String::new(),
    };
    let mut limits = String::new();
    if let Some(kb) = cli.keep_resident_kb {
        limits.push_str(&format!("memory_keep_resident_kb = {kb}\n"));
    }
    if let Some(n) = cli.worker_threads {
        limits.push_str(&format!("worker_threads = {n}\n"));
    }
    if !limits.is_empty() {
        extra.push_str(&format!("\n[limits]\n{limits}"));
    }
    let host = start_host(&host_bin, pin, cli.reuse, &tenants, &extra)?;
    eprintln!("host pid {} on {}", host.pid(), host.addr);
    rt.block_on(async {
        match cli.mode {
            Mode::Fleet { .. } => Ok(()),
            Mode::Echo {
                conns,
                seconds,
                plugin,
                payload,
            } => echo(&host, conns, seconds, &plugin, payload).await,
            Mode::Fanout {
                subs,
                rate,
                seconds,
            } => fanout(&host, subs, rate, seconds).await,
            Mode::Idle { conns, hold } => idle(&host, conns, hold).await,
            Mode::Notify {
                subs,
                rate,
                seconds,
                postgres,
            } => {
                let result = notify_bench(&host, &postgres, subs, rate, seconds).await;
                drop(host);
                drop_bench_sql(&postgres).await?;
                result
            }
            Mode::Jobs {
                jobs,
                conns,
                postgres,
            } => {
                let result = jobs_bench(&host, jobs, conns).await;
                drop(host);
                drop_bench_sql(&postgres).await?;
                result
            }
            Mode::Sql {
                conns,
                seconds,
                postgres,
            } => {
                let result = sql(&host, conns, seconds).await;
                drop(host);
                drop_bench_sql(&postgres).await?;
                result
            }
            Mode::Presence {
                conns,
                rooms,
                concurrency,
                redis,
            } => {
                let result = presence(&host, conns, rooms, concurrency, redis.is_some()).await;
                if let Some(url) = redis {
                    // The observers' entries outlive the host: remove the run's keys.
                    let client = redis::Client::open(url.as_str())?;
                    let mut conn = client.get_connection()?;
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("bench-presence-{}:*", std::process::id()))
                        .query(&mut conn)?;
                    for chunk in keys.chunks(500) {
                        let _: () = redis::cmd("DEL").arg(chunk).query(&mut conn)?;
                    }
                }
                result
            }
            Mode::Noisy {
                connections,
                rate,
                seconds,
                noisy_connections,
                phases: _,
                rounds,
                json,
            } => {
                let cfg = NoisyConfig {
                    connections,
                    rate,
                    seconds,
                    noisy_connections,
                    phases: noisy_phases,
                    rounds,
                    json,
                };
                noisy(&host, cfg).await
            }
        }
    })
}

fn pin_self_to_core(core: u32) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset failed");
    }
    Ok(())
}

fn start_host(
    bin: &std::path::Path,
    pin: bool,
    reuse: u32,
    tenants: &[TenantSpec],
    more_toml: &str,
) -> Result<HostProcess> {
    let extra = format!("{BENCH_PLAN}instance_reuse = {reuse}\n{more_toml}");
    // Started while this process is on core 0, the host inherits that
    // affinity, so its runtime sizes itself for one core (one worker
    // thread) instead of being squeezed onto one core after the fact.
    if pin {
        pin_self_to_core(0)?;
    }
    let h = HostProcess::start_with(bin, tenants, &extra);
    if pin {
        pin_self_to_core(1)?;
    }
    let h = h?;
    if pin {
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &h.pid().to_string()])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("taskset on host failed");
        }
    }
    Ok(h)
}

/// Host CPU time (user + system) in microseconds.
fn cpu_micros(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the comm: state is index 0, utime 11, stime 12 (1-based 14, 15).
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(ticks * 10_000) // CLK_TCK = 100
}

/// Host resident set size in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS not found")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, NO_NAGLE).await?;
    // Wait for welcome so the connection is fully set up.
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("welcome") => break,
            Some(Ok(_)) => continue,
            other => bail!("no welcome: {other:?}"),
        }
    }
    Ok(ws)
}

/// The load's sockets send at once (`TCP_NODELAY`), as browsers' do: with
/// Nagle a client's small frame would wait for the ACK of its last one.
const NO_NAGLE: bool = true;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn echo(
    host: &HostProcess,
    conns: usize,
    seconds: u64,
    plugin: &str,
    payload: usize,
) -> Result<()> {
    let url = host.url("/t/bench/ws");
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        sockets.push(open(&url).await?);
    }
    // Warm up.
    for ws in sockets.iter_mut() {
        ws.send(Message::text(format!(
            r#"{{"rpc":"{plugin}/echo","id":"w","args":["warm"]}}"#
        )))
        .await?;
        let _ = ws.next().await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu_micros(host.pid())?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let stop = Arc::clone(&stop);
        let plugin = plugin.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            let payload = "x".repeat(payload);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let frame = format!(r#"{{"rpc":"{plugin}/echo","id":"{n}","args":["{payload}"]}}"#);
                let t = Instant::now();
                if ws.send(Message::text(frame)).await.is_err() {
                    break;
                }
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => lat.push(t.elapsed().as_micros() as u64),
                    _ => break,
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_micros(host.pid())? - cpu0;
    lat.sort_unstable();
    let calls = lat.len() as f64;
    println!(
        "{}",
        json!({
            "mode": "echo", "connections": conns, "payload_bytes": payload, "seconds": elapsed,
            "calls": lat.len(), "calls_per_s": (calls / elapsed).round(),
            "p50_us": percentile(&lat, 0.50), "p99_us": percentile(&lat, 0.99),
            "host_cpu_us_per_call": (cpu as f64 / calls * 100.0).round() / 100.0,
        })
    );
    Ok(())
}

/// Builds the `n`th call's frame.
type FrameFn = fn(u64) -> String;

/// Closed-loop calls of `frame(n)` from every socket for `seconds`: the
/// latencies (µs) of the successful calls and the number of failed ones.
async fn closed_loop(
    sockets: Vec<Ws>,
    seconds: u64,
    frame: FrameFn,
) -> Result<(Vec<u64>, u64, Vec<Ws>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed, mut n) = (Vec::new(), 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = Instant::now();
                if ws.send(Message::text(frame(n))).await.is_err() {
                    break;
                }
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        if text.as_str().contains(r#""ok":true"#) {
                            lat.push(t.elapsed().as_micros() as u64);
                        } else {
                            failed += 1;
                        }
                    }
                    _ => break,
                }
            }
            (lat, failed, ws)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut failed, mut sockets) = (Vec::new(), 0, Vec::new());
    for t in tasks {
        let (l, f, ws) = t.await?;
        lat.extend(l);
        failed += f;
        sockets.push(ws);
    }
    lat.sort_unstable();
    Ok((lat, failed, sockets))
}

async fn sql(host: &HostProcess, conns: usize, seconds: u64) -> Result<()> {
    let url = host.url("/t/bench/ws");
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        sockets.push(open(&url).await?);
    }
    let setup = r#"{"rpc":"fixture/sql","id":"setup","args":["CREATE TABLE IF NOT EXISTS bench_t (id bigserial PRIMARY KEY, v text)"]}"#;
    sockets[0].send(Message::text(setup)).await?;
    match sockets[0].next().await {
        Some(Ok(Message::Text(t))) if t.as_str().contains(r#""ok":true"#) => {}
        other => bail!("creating the table failed: {other:?}"),
    }
    let phases: [(&str, FrameFn); 2] = [
        ("select_1", |n| {
            format!(r#"{{"rpc":"fixture/sql","id":"{n}","args":["SELECT 1 AS one"]}}"#)
        }),
        ("insert", |n| {
            format!(
                r#"{{"rpc":"fixture/sql_exec","id":"{n}","args":["INSERT INTO bench_t (v) VALUES ($1)",["row {n}"]]}}"#
            )
        }),
    ];
    for (name, frame) in phases {
        // Warm up: every connection's pool slot opened.
        let (_, _, warm) = closed_loop(sockets, 1, frame).await?;
        let cpu0 = cpu_micros(host.pid())?;
        let t0 = Instant::now();
        let (lat, failed, rest) = closed_loop(warm, seconds, frame).await?;
        sockets = rest;
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = cpu_micros(host.pid())? - cpu0;
        let calls = lat.len() as f64;
        println!(
            "{}",
            json!({
                "mode": "sql", "statement": name, "connections": conns, "seconds": elapsed,
                "calls": lat.len(), "failed": failed, "calls_per_s": (calls / elapsed).round(),
                "p50_us": percentile(&lat, 0.50), "p99_us": percentile(&lat, 0.99),
                "host_cpu_us_per_call": (cpu as f64 / calls.max(1.0) * 100.0).round() / 100.0,
            })
        );
    }
    Ok(())
}

/// Drop the SQL bench's registry schema and tenant role and schema.
async fn drop_bench_sql(url: &str) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let pid = std::process::id();
    let like = format!("bench{pid}\\_t\\_%");
    for row in client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            &[&like],
        )
        .await?
    {
        let n: String = row.get(0);
        client
            .batch_execute(&format!("DROP SCHEMA \"{n}\" CASCADE"))
            .await?;
    }
    for row in client
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
            &[&like],
        )
        .await?
    {
        let n: String = row.get(0);
        client
            .batch_execute(&format!("DROP OWNED BY \"{n}\"; DROP ROLE \"{n}\""))
            .await?;
    }
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS bench_sql_{pid} CASCADE; DROP SCHEMA IF EXISTS bench{pid}_host CASCADE"
        ))
        .await?;
    Ok(())
}

async fn jobs_bench(host: &HostProcess, jobs: u64, conns: usize) -> Result<()> {
    use std::collections::HashMap;
    let url = host.url("/t/bench/ws");
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let mut watcher = open(&url).await?;
    watcher
        .send(Message::text(
            r#"{"type":"subscribe","topic":"jobs:done","ref":1}"#,
        ))
        .await?;
    loop {
        match watcher.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("subscribed") => break,
            Some(Ok(_)) => continue,
            other => bail!("subscribe failed: {other:?}"),
        }
    }
    let last_done = Arc::new(Mutex::new(Instant::now()));
    let reader = {
        let (sent, latencies, done, last_done) = (
            Arc::clone(&sent),
            Arc::clone(&latencies),
            Arc::clone(&done),
            Arc::clone(&last_done),
        );
        tokio::spawn(async move {
            while let Some(Ok(Message::Text(t))) = watcher.next().await {
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["topic"] != "jobs:done" {
                    continue;
                }
                let Some(n) = v["data"]["n"].as_u64() else {
                    continue;
                };
                done.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = last_done.lock() {
                    *l = Instant::now();
                }
                if let Some(at) = sent.lock().ok().and_then(|m| m.get(&n).copied()) {
                    let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                    if let Ok(mut l) = latencies.lock() {
                        l.push(us);
                    }
                }
            }
        })
    };
    let conns = conns.max(1);
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        sockets.push(open(&url).await?);
    }
    let failed = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_micros(host.pid())?;
    let t0 = Instant::now();
    let mut enqueuers = Vec::new();
    for (k, mut ws) in sockets.into_iter().enumerate() {
        let (sent, failed) = (Arc::clone(&sent), Arc::clone(&failed));
        enqueuers.push(tokio::spawn(async move {
            let mut n = k as u64;
            while n < jobs {
                if let Ok(mut m) = sent.lock() {
                    m.insert(n, Instant::now());
                }
                let frame = format!(
                    r#"{{"rpc":"fixture/enqueue","id":"{n}","args":["bench",{{"n":{n}}}]}}"#
                );
                if ws.send(Message::text(frame)).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return ws;
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str().contains(r#""id":""#) => {
                            if !t.as_str().contains(r#""ok":true"#) {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        Some(Ok(_)) => continue,
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return ws;
                        }
                    }
                }
                n += conns as u64;
            }
            ws
        }));
    }
    for e in enqueuers {
        let _ = e.await;
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    let wait_until = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < jobs && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_micros(host.pid())? - cpu0;
    reader.abort();
    let run_s = last_done
        .lock()
        .map(|l| l.duration_since(t0).as_secs_f64())
        .unwrap_or(0.0);
    let ran = done.load(Ordering::Relaxed);
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    println!(
        "{}",
        json!({
            "mode": "jobs", "jobs": jobs, "connections": conns,
            "enqueue_failed": failed.load(Ordering::Relaxed),
            "enqueues_per_s": (jobs as f64 / enqueue_s).round(),
            "ran": ran, "lost": jobs.saturating_sub(ran),
            "jobs_per_s": (ran as f64 / run_s.max(1e-9)).round(),
            "p50_us": percentile(&lat, 0.50), "p99_us": percentile(&lat, 0.99),
            "max_us": lat.last().copied().unwrap_or(0),
            "host_cpu_us_per_job": (cpu as f64 / (jobs.max(1)) as f64 * 100.0).round() / 100.0,
        })
    );
    Ok(())
}

async fn fanout(host: &HostProcess, subs: usize, rate: u64, seconds: u64) -> Result<()> {
    let url = host.url("/t/bench/ws");
    let received = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
    // Each message carries its publish time (µs since `origin`), so every
    // subscriber measures publish -> delivery latency.
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..subs {
        let mut ws = open(&url).await?;
        ws.send(Message::text(format!(
            r#"{{"type":"subscribe","topic":"fan","ref":{i}}}"#
        )))
        .await?;
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"subscribed\"") => {}
            other => bail!("subscribe failed: {other:?}"),
        }
        let received = Arc::clone(&received);
        let gaps = Arc::clone(&gaps);
        tasks.push(tokio::spawn(async move {
            let mut last = 0u64;
            let mut lat = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["event"] == "done" {
                        break;
                    }
                    if let Some(seq) = v["seq"].as_u64() {
                        if seq != last + 1 {
                            gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        last = seq;
                        received.fetch_add(1, Ordering::Relaxed);
                        if let Some(sent) = v["data"]["t"].as_u64() {
                            let now =
                                u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
                            lat.push(now.saturating_sub(sent));
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut publisher = open(&url).await?;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let cpu0 = cpu_micros(host.pid())?;
    let t0 = Instant::now();
    let mut next = tokio::time::Instant::now();
    for _ in 0..total {
        let sent = origin.elapsed().as_micros();
        publisher
            .send(Message::text(format!(
                r#"{{"rpc":"fixture/publish","args":["fan","m",{{"t":{sent}}}]}}"#
            )))
            .await?;
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    let send_elapsed = t0.elapsed().as_secs_f64();
    // Let queues drain, then end the subscribers.
    let expected = total * subs as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_micros(host.pid())? - cpu0;
    publisher
        .send(Message::text(
            r#"{"rpc":"fixture/publish","args":["fan","done",null]}"#,
        ))
        .await?;
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(5), t).await {
            lat.extend(l);
        }
    }
    lat.sort_unstable();
    let got = received.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "mode": "fanout", "subscribers": subs, "rate_per_s": rate, "published": total,
            "publish_seconds": send_elapsed, "deliveries_expected": expected, "deliveries": got,
            "lost": expected.saturating_sub(got), "seq_gaps": gaps.load(Ordering::Relaxed),
            "deliveries_per_s": (got as f64 / elapsed).round(),
            "host_cpu_percent": (cpu as f64 / elapsed / 10_000.0).round(),
            "latency_p50_us": percentile(&lat, 0.50), "latency_p99_us": percentile(&lat, 0.99),
            "latency_max_us": lat.last().copied().unwrap_or(0),
        })
    );
    Ok(())
}

/// Redis `total_commands_processed`.
fn redis_commands(conn: &mut redis::Connection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query(conn)?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no total_commands_processed in INFO")
}

#[allow(clippy::too_many_arguments)]
async fn fleet(
    bin: &std::path::Path,
    reuse: u32,
    tenants: &[TenantSpec],
    redis_url: &str,
    postgres: Option<&str>,
    subs: usize,
    rate: u64,
    seconds: u64,
) -> Result<()> {
    let namespace = format!("bench-{}", std::process::id());
    let mut extra = format!(
        "{BENCH_PLAN}instance_reuse = {reuse}\n\n[redis]\nurl = {redis_url:?}\nnamespace = {namespace:?}\n"
    );
    let prefix = format!("bench{}", std::process::id());
    let registry = format!("tenantry_bench_{}", std::process::id());
    if let Some(url) = postgres {
        extra.push_str(&format!(
            "[postgres]\nurl = {url:?}\nregistry_schema = {registry:?}\ntenant_prefix = {prefix:?}\n\
             [notify]\nenabled = false\n[replay]\nstore = \"postgres\"\n"
        ));
    }
    let a = HostProcess::start_with(bin, tenants, &extra)?;
    let b = HostProcess::start_with(bin, tenants, &extra)?;
    eprintln!(
        "host A pid {} on {}, host B pid {} on {}",
        a.pid(),
        a.addr,
        b.pid(),
        b.addr
    );
    let t0 = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(
        (rate * seconds) as usize * subs,
    )));
    let mut tasks = Vec::new();
    for i in 0..subs {
        let mut ws = open(&b.url("/t/bench/ws")).await?;
        ws.send(Message::text(format!(
            r#"{{"type":"subscribe","topic":"fan","ref":{i}}}"#
        )))
        .await?;
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"subscribed\"") => {}
            other => bail!("subscribe failed: {other:?}"),
        }
        let (received, gaps, latencies) = (
            Arc::clone(&received),
            Arc::clone(&gaps),
            Arc::clone(&latencies),
        );
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            let mut mine = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["event"] == "done" {
                        break;
                    }
                    if let (Some(seq), Some(sent)) = (v["seq"].as_u64(), v["data"]["t"].as_u64()) {
                        if last.is_some_and(|l: u64| seq != l + 1) {
                            gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        last = Some(seq);
                        let now = t0.elapsed().as_micros() as u64;
                        mine.push(now.saturating_sub(sent));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Ok(mut l) = latencies.lock() {
                l.extend(mine);
            }
        }));
    }
    let mut redis_conn = redis::Client::open(redis_url)?.get_connection()?;
    let cmds0 = redis_commands(&mut redis_conn)?;
    let mut publisher = open(&a.url("/t/bench/ws")).await?;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut next = tokio::time::Instant::now();
    for _ in 0..total {
        let t = t0.elapsed().as_micros() as u64;
        publisher
            .send(Message::text(format!(
                r#"{{"rpc":"fixture/publish","args":["fan","m",{{"t":{t}}}]}}"#
            )))
            .await?;
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    let expected = total * subs as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cmds = redis_commands(&mut redis_conn)?.saturating_sub(cmds0);
    publisher
        .send(Message::text(
            r#"{"rpc":"fixture/publish","args":["fan","done",null]}"#,
        ))
        .await?;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let got = received.load(Ordering::Relaxed);
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    // Leave nothing behind in Redis.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query(&mut redis_conn)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut redis_conn);
    }
    if let Some(url) = postgres {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        // The host schema, the registry and the tenant's schema and role.
        let like = format!("{prefix}\\_t\\_%");
        let mut schemas = vec![format!("{prefix}_host"), registry];
        for row in client
            .query(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                &[&like],
            )
            .await?
        {
            schemas.push(row.get(0));
        }
        for schema in schemas {
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await?;
        }
        for row in client
            .query(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
                &[&like],
            )
            .await?
        {
            let role: String = row.get(0);
            client
                .batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""))
                .await?;
        }
    }
    println!(
        "{}",
        json!({
            "mode": "fleet", "replay_store": if postgres.is_some() { "postgres" } else { "default" },
            "subscribers_on_b": subs, "rate_per_s": rate, "published_on_a": total,
            "deliveries_expected": expected, "deliveries": got,
            "lost": expected.saturating_sub(got), "seq_gaps": gaps.load(Ordering::Relaxed),
            "deliveries_per_s": (got as f64 / elapsed).round(),
            "latency_p50_us": percentile(&lat, 0.50), "latency_p99_us": percentile(&lat, 0.99),
            "redis_commands_per_100_publishes": (cmds as f64 * 100.0 / total.max(1) as f64).round(),
        })
    );
    Ok(())
}

async fn idle(host: &HostProcess, conns: usize, hold: u64) -> Result<()> {
    let url = host.url("/t/bench/ws");
    // Warm the process up with a few connections so one-off allocations are excluded.
    let mut warm = Vec::new();
    for _ in 0..10 {
        warm.push(open(&url).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kib(host.pid())?;
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        sockets.push(open(&url).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib(host.pid())?;
    println!(
        "{}",
        json!({
            "mode": "idle", "connections": conns, "rss_before_kib": rss0, "rss_after_kib": rss1,
            "kib_per_connection": ((rss1.saturating_sub(rss0)) as f64 / conns as f64 * 100.0).round() / 100.0,
            "host_pid": host.pid(),
        })
    );
    if hold > 0 {
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    drop(warm);
    drop(sockets);
    Ok(())
}

// ---------------------------------------------------------------------------
// presence: joins and leaves at scale
// ---------------------------------------------------------------------------

type WsSink = futures_util::stream::SplitSink<Ws, Message>;

/// Open a connection as `user`, subscribe it to `room` (the chat plugin then
/// joins the room's presence) and wait for its `presence_state`; returns
/// the sink, the stream and the subscribe -> state latency.
async fn join_room(
    host: &HostProcess,
    user: &str,
    room: usize,
) -> Result<(WsSink, futures_util::stream::SplitStream<Ws>, Duration)> {
    let ws = open(&host.url(&format!("/t/bench/ws?user={user}"))).await?;
    let (mut sink, mut stream) = ws.split();
    let t0 = Instant::now();
    sink.send(Message::text(format!(
        r#"{{"type":"subscribe","topic":"room:{room}","ref":1}}"#
    )))
    .await?;
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"presence_state\"") => break,
            Some(Ok(_)) => {}
            other => bail!("join of {user} failed: {other:?}"),
        }
    }
    Ok((sink, stream, t0.elapsed()))
}

/// Read and discard frames until the connection ends.
fn drain(mut stream: futures_util::stream::SplitStream<Ws>) {
    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
}

async fn presence(
    host: &HostProcess,
    conns: usize,
    rooms: usize,
    concurrency: usize,
    on_redis: bool,
) -> Result<()> {
    if rooms == 0 || conns < rooms {
        bail!("--rooms must be between 1 and --conns");
    }
    // One observer per room counts the leaves it hears.
    let left = Arc::new(AtomicU64::new(0));
    let mut observers = Vec::new();
    for r in 0..rooms {
        let (sink, mut stream, _) = join_room(host, &format!("obs{r}"), r).await?;
        let left = Arc::clone(&left);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["event"] == "presence_diff"
                        && let Some(l) = v["data"]["leaves"].as_object()
                    {
                        left.fetch_add(l.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        });
        observers.push(sink);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu0, rss0) = (cpu_micros(host.pid())?, rss_kib(host.pid())?);
    let t0 = Instant::now();
    let results: Vec<Result<(WsSink, Duration)>> = futures_util::stream::iter(0..conns)
        .map(|i| async move {
            let (sink, stream, latency) = join_room(host, &format!("u{i}"), i % rooms).await?;
            drain(stream);
            Ok((sink, latency))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let join_elapsed = t0.elapsed();
    let (cpu1, rss1) = (cpu_micros(host.pid())?, rss_kib(host.pid())?);
    let mut sinks = Vec::with_capacity(conns);
    let mut latencies = Vec::with_capacity(conns);
    for r in results {
        let (sink, latency) = r?;
        sinks.push(sink);
        latencies.push(latency.as_micros() as u64);
    }
    latencies.sort_unstable();
    // Everyone leaves; the observers must hear every leave.
    let t1 = Instant::now();
    futures_util::stream::iter(sinks)
        .for_each_concurrent(concurrency.max(1), |mut sink| async move {
            let _ = sink.close().await;
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while left.load(Ordering::Relaxed) < conns as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leave_elapsed = t1.elapsed();
    let cpu2 = cpu_micros(host.pid())?;
    let heard = left.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "mode": "presence", "store": if on_redis { "redis" } else { "memory" },
            "connections": conns, "rooms": rooms, "concurrency": concurrency,
            "join_p50_ms": percentile(&latencies, 0.50) as f64 / 1000.0,
            "join_p99_ms": percentile(&latencies, 0.99) as f64 / 1000.0,
            "join_max_ms": latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
            "joins_per_s": (conns as f64 / join_elapsed.as_secs_f64()).round(),
            "host_cpu_us_per_join": (cpu1 - cpu0) / conns as u64,
            "rss_kib_per_present_connection": ((rss1.saturating_sub(rss0)) as f64 / conns as f64 * 100.0).round() / 100.0,
            "leaves_heard": heard,
            "leaves_per_s": (heard as f64 / leave_elapsed.as_secs_f64()).round(),
            "host_cpu_us_per_leave": (cpu2 - cpu1) / conns as u64,
        })
    );
    drop(observers);
    if heard < conns as u64 {
        bail!("observers heard {heard} of {conns} leaves");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// noisy: the noisy-neighbour benchmark
// ---------------------------------------------------------------------------

/// Tenant A: the `hostile` plugin on the default plan.
const NOISY_TENANT: &str = "noisy";
/// Tenant B: the `fixture` plugin on the bench plan.
const STEADY_TENANT: &str = "steady";

/// A's behaviours, one phase each, in order: the hostile handler and its
/// arguments, or the two flood phases that are not a single handler.
const BEHAVIOURS: [&str; 10] = [
    "spin",
    "alloc",
    "recurse",
    "panic",
    "huge",
    "publish_flood",
    "kv_flood",
    "log_flood",
    "rpc_flood",
    "connect_flood",
];

/// The target: B's p99 grows by at most this factor over the baseline,
/// and B sees no errors at all.
const MAX_P99_RATIO: f64 = 2.0;

/// A starts this long before B's measurement, so B is measured under a
/// running attack, not its first milliseconds.
const RAMP: Duration = Duration::from_millis(300);
/// Quiet time between phases, so one phase's tail does not leak into the next.
const SETTLE: Duration = Duration::from_millis(500);
/// Unrecorded load before the baseline (instance cache, allocator, TCP).
const WARMUP: Duration = Duration::from_secs(1);
/// How long after the end of a phase B waits for an answer before it counts
/// the call as an error (`timeout`).
const B_GRACE: Duration = Duration::from_secs(2);
/// How long A waits for one answer (over the host's 5 s wall-clock bound).
const A_ANSWER_TIMEOUT: Duration = Duration::from_secs(6);
/// How long A's workers get to notice the end of a phase before they are aborted.
const A_STOP_WAIT: Duration = Duration::from_secs(1);
/// Size of `hostile/huge`'s result: twice `max_result_bytes` of `starter`
/// (1 MiB), so the result limit refuses it. The handler's own default
/// (100 MiB) would only hit the 16 MiB memory cap again, like `alloc`.
const HUGE_BYTES: u64 = 2 << 20;

struct NoisyConfig {
    connections: usize,
    rate: u64,
    seconds: u64,
    noisy_connections: usize,
    /// The behaviours to run, in order (the baselines are not listed).
    phases: Vec<&'static str>,
    /// How many times each phase (with its baseline) runs.
    rounds: usize,
    json: bool,
}

/// One attacked phase and the baseline measured just before it.
struct Pair {
    round: usize,
    baseline: PhaseReport,
    attacked: PhaseReport,
}

impl Pair {
    /// B's p99 under attack over B's p99 in the baseline just before.
    fn ratio(&self) -> f64 {
        self.attacked.p(0.99) as f64 / self.baseline.p(0.99).max(1) as f64
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The `--phases` list as behaviours (empty: all of them, in order).
fn parse_phases(names: &[String]) -> Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(BEHAVIOURS.to_vec());
    }
    names
        .iter()
        .map(|p| {
            BEHAVIOURS
                .iter()
                .copied()
                .find(|b| *b == p.as_str())
                .with_context(|| format!("unknown phase {p:?}; known: {}", BEHAVIOURS.join(", ")))
        })
        .collect()
}

/// The RPC frame A sends in a behaviour's phase (`None`: `connect_flood`).
fn noisy_call(behaviour: &str) -> Option<(String, String)> {
    let (path, args) = match behaviour {
        "connect_flood" => return None,
        "rpc_flood" => ("hostile/echo".to_owned(), r#"["x"]"#.to_owned()),
        "huge" => ("hostile/huge".to_owned(), format!("[{HUGE_BYTES}]")),
        other => (format!("hostile/{other}"), "[]".to_owned()),
    };
    Some((path, args))
}

/// Counts by outcome: `ok`, an error code, `close:CODE`, `dropped`,
/// `timeout`, `connect_error`, `welcome`.
type Outcomes = BTreeMap<String, u64>;

fn bump(map: &Mutex<Outcomes>, key: &str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key.to_owned()).or_default() += 1;
    }
}

fn outcomes_text(m: &Outcomes) -> String {
    if m.is_empty() {
        return "-".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How an answer frame, a close or a failure counts: `ok` or the error code.
fn answer_outcome(data: &Value) -> String {
    if data["ok"] == true {
        "ok".to_owned()
    } else {
        data["code"].as_str().unwrap_or("?").to_owned()
    }
}

fn close_outcome(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> String {
    match msg {
        Some(Ok(Message::Close(Some(c)))) => format!("close:{}", u16::from(c.code)),
        _ => "dropped".to_owned(),
    }
}

/// Wait for the `__rpc` answer to `id` until `deadline`: `Ok(data)`, or
/// `Err(outcome)` when the connection ended or time ran out (the
/// connection is then unusable).
async fn await_answer(
    ws: &mut Ws,
    id: &str,
    deadline: tokio::time::Instant,
) -> std::result::Result<Value, String> {
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("timeout".to_owned()),
            Ok(m) => m,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["topic"] == "__rpc" && v["event"] == id {
                    return Ok(v["data"].clone());
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(close_outcome(msg)),
            Some(Ok(_)) => {}
        }
    }
}

/// Open a connection of A: the socket after `welcome`, or the outcome
/// (`close:4429` when the tenant is at its connection limit, ...).
async fn open_noisy(url: &str) -> std::result::Result<Ws, String> {
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        A_ANSWER_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, None, NO_NAGLE),
    )
    .await
    else {
        return Err("connect_error".to_owned());
    };
    loop {
        let msg = match tokio::time::timeout(A_ANSWER_TIMEOUT, ws.next()).await {
            Err(_) => return Err("timeout".to_owned()),
            Ok(m) => m,
        };
        match msg {
            Some(Ok(Message::Text(t))) if t.as_str().contains("welcome") => return Ok(ws),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(close_outcome(msg)),
            Some(Ok(_)) => {}
        }
    }
}

/// One of A's connections, at full speed until `stop`: calls `call` in a
/// closed loop (reconnecting whenever the host closes it), or for
/// `connect_flood` (`call` = `None`) opens connections and drops them as
/// soon as they are welcomed. Every attempt is counted in `calls`, every
/// outcome in `outcomes`.
async fn noisy_worker(
    url: String,
    call: Option<(String, String)>,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    let mut ws: Option<Ws> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(w) = ws.as_mut() else {
            if call.is_none() {
                calls.fetch_add(1, Ordering::Relaxed);
            }
            match open_noisy(&url).await {
                Ok(w) if call.is_none() => {
                    bump(&outcomes, "welcome");
                    drop(w);
                }
                Ok(w) => ws = Some(w),
                Err(outcome) => {
                    bump(&outcomes, &outcome);
                    // A refused connect can fail without ever waiting: let
                    // the other tasks run.
                    tokio::task::yield_now().await;
                }
            }
            continue;
        };
        let Some((path, args)) = &call else {
            continue;
        };
        n += 1;
        let id = n.to_string();
        calls.fetch_add(1, Ordering::Relaxed);
        let frame = format!(r#"{{"rpc":"{path}","id":"{id}","args":{args}}}"#);
        if w.send(Message::text(frame)).await.is_err() {
            bump(&outcomes, "dropped");
            ws = None;
            continue;
        }
        let deadline = tokio::time::Instant::now() + A_ANSWER_TIMEOUT;
        match await_answer(w, &id, deadline).await {
            Ok(data) => bump(&outcomes, &answer_outcome(&data)),
            Err(outcome) => {
                bump(&outcomes, &outcome);
                ws = None;
            }
        }
    }
}

/// What one of B's connections did in one phase.
struct SteadyResult {
    /// The connection, if still usable.
    ws: Option<Ws>,
    /// Calls sent.
    calls: u64,
    /// Latency of every answered call (ok or not), µs.
    lat: Vec<u64>,
    /// Every error: a non-ok answer's code, `close:CODE`, `dropped`, `timeout`.
    errors: Outcomes,
}

/// One of B's connections: `fixture/echo` in a closed loop from `start` to
/// `end`, paced at one call per `interval` if given (a late call is sent at
/// once, and the schedule restarts from it: no catch-up bursts).
async fn steady_conn(
    mut ws: Ws,
    start: Instant,
    end: Instant,
    interval: Option<Duration>,
) -> SteadyResult {
    let mut r = SteadyResult {
        ws: None,
        calls: 0,
        lat: Vec::new(),
        errors: Outcomes::new(),
    };
    let deadline = tokio::time::Instant::from_std(end + B_GRACE);
    let mut next = start;
    let mut n = 0u64;
    loop {
        if Instant::now() < next {
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        }
        let t = Instant::now();
        if t >= end {
            break;
        }
        if let Some(iv) = interval {
            next = (next + iv).max(t);
        }
        n += 1;
        r.calls += 1;
        let id = format!("s{n}");
        let frame =
            format!(r#"{{"rpc":"fixture/echo","id":"{id}","args":["steady-payload-0123456789"]}}"#);
        if ws.send(Message::text(frame)).await.is_err() {
            *r.errors.entry("dropped".to_owned()).or_default() += 1;
            return r;
        }
        match await_answer(&mut ws, &id, deadline).await {
            Ok(data) => {
                r.lat.push(t.elapsed().as_micros() as u64);
                if data["ok"] != true {
                    *r.errors.entry(answer_outcome(&data)).or_default() += 1;
                }
            }
            Err(outcome) => {
                *r.errors.entry(outcome).or_default() += 1;
                return r;
            }
        }
    }
    r.ws = Some(ws);
    r
}

/// One phase's results.
struct PhaseReport {
    name: String,
    b_calls: u64,
    b_errors: Outcomes,
    /// B's sorted latencies, µs.
    lat: Vec<u64>,
    b_seconds: f64,
    host_cpu_percent: f64,
    a_calls: u64,
    a_seconds: f64,
    a_outcomes: Outcomes,
}

impl PhaseReport {
    fn b_error_count(&self) -> u64 {
        self.b_errors.values().sum()
    }
    fn p(&self, q: f64) -> u64 {
        percentile(&self.lat, q)
    }
}

/// Run B's load on its own runtime (and thread) over `conns`, reopening
/// connections that did not survive the last phase.
async fn steady_phase(
    b_rt: &tokio::runtime::Handle,
    url: &str,
    conns: &mut [Option<Ws>],
    rate: u64,
    seconds: u64,
) -> Result<(u64, Outcomes, Vec<u64>, f64)> {
    for slot in conns.iter_mut() {
        if slot.is_none() {
            let url = url.to_owned();
            *slot = Some(b_rt.spawn(async move { open(&url).await }).await??);
        }
    }
    let interval = (rate > 0).then(|| Duration::from_secs_f64(conns.len() as f64 / rate as f64));
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs(seconds);
    let count = u32::try_from(conns.len()).context("too many connections")?;
    let mut tasks = Vec::new();
    for (i, slot) in (0u32..).zip(conns.iter_mut()) {
        let ws = slot.take().context("B connection missing")?;
        // Spread the connections' schedules over one interval.
        let offset = interval.map_or(Duration::ZERO, |iv| iv * i / count);
        tasks.push(b_rt.spawn(steady_conn(ws, start + offset, end, interval)));
    }
    let mut calls = 0;
    let mut errors = Outcomes::new();
    let mut lat = Vec::new();
    for (slot, t) in conns.iter_mut().zip(tasks) {
        let r = t.await?;
        *slot = r.ws;
        calls += r.calls;
        lat.extend(r.lat);
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok((calls, errors, lat, elapsed))
}

async fn run_phase(
    host: &HostProcess,
    b_rt: &tokio::runtime::Handle,
    b_conns: &mut [Option<Ws>],
    cfg: &NoisyConfig,
    behaviour: Option<&str>,
) -> Result<PhaseReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let a_calls = Arc::new(AtomicU64::new(0));
    let a_outcomes = Arc::new(Mutex::new(Outcomes::new()));
    let a_start = Instant::now();
    let mut a_tasks = Vec::new();
    if let Some(b) = behaviour {
        let url = host.url(&format!("/t/{NOISY_TENANT}/ws"));
        for _ in 0..cfg.noisy_connections {
            a_tasks.push(tokio::spawn(noisy_worker(
                url.clone(),
                noisy_call(b),
                Arc::clone(&stop),
                Arc::clone(&a_calls),
                Arc::clone(&a_outcomes),
            )));
        }
        tokio::time::sleep(RAMP).await;
    }
    let steady_url = host.url(&format!("/t/{STEADY_TENANT}/ws"));
    let cpu0 = cpu_micros(host.pid())?;
    let (b_calls, b_errors, lat, b_seconds) =
        steady_phase(b_rt, &steady_url, b_conns, cfg.rate, cfg.seconds).await?;
    let cpu = cpu_micros(host.pid())?.saturating_sub(cpu0);
    stop.store(true, Ordering::Relaxed);
    let stop_deadline = tokio::time::Instant::now() + A_STOP_WAIT;
    for t in a_tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout_at(stop_deadline, t).await.is_err() {
            abort.abort();
        }
    }
    let a_seconds = a_start.elapsed().as_secs_f64();
    let a_outcomes = a_outcomes.lock().map(|m| m.clone()).unwrap_or_default();
    tokio::time::sleep(SETTLE).await;
    Ok(PhaseReport {
        name: behaviour.unwrap_or("baseline").to_owned(),
        b_calls,
        b_errors,
        lat,
        b_seconds,
        host_cpu_percent: (cpu as f64 / b_seconds / 10_000.0).round(),
        a_calls: a_calls.load(Ordering::Relaxed),
        a_seconds,
        a_outcomes,
    })
}

/// One table row: `r` against the baseline p99 `base_p99`, with its round
/// when there are several.
fn phase_line(r: &PhaseReport, base_p99: u64, round: usize, cfg: &NoisyConfig) -> String {
    let ratio = r.p(0.99) as f64 / base_p99.max(1) as f64;
    let a = if r.name == "baseline" {
        "-".to_owned()
    } else {
        format!(
            "{} ({:.0}/s): {}",
            r.a_calls,
            r.a_calls as f64 / r.a_seconds,
            outcomes_text(&r.a_outcomes)
        )
    };
    let b_err = if r.b_errors.is_empty() {
        "0".to_owned()
    } else {
        format!("{} ({})", r.b_error_count(), outcomes_text(&r.b_errors))
    };
    let name = if cfg.rounds > 1 {
        format!("{}#{round}", r.name)
    } else {
        r.name.clone()
    };
    format!(
        "{:<17} {:>8} {:>7} {:>8} {:>8} {:>8} {:>6.2}x {:>5}%  {}",
        name,
        r.b_calls,
        b_err,
        r.p(0.50),
        r.p(0.99),
        r.p(0.999),
        ratio,
        r.host_cpu_percent,
        a
    )
}

async fn noisy(host: &HostProcess, cfg: NoisyConfig) -> Result<()> {
    // Print the table on stdout, or on stderr when stdout carries the JSON.
    let out = |line: String| {
        if cfg.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };

    // B runs on its own runtime and thread, so A's busy client tasks do not
    // delay B's sends and reads in this process's event loop (both threads
    // still share this process's core; see the priority below).
    let b_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let b_handle = b_rt.handle().clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let b_thread = std::thread::Builder::new()
        .name("steady-load".into())
        .spawn(move || {
            b_rt.block_on(async {
                let _ = done_rx.await;
            });
        })?;

    // A's flooding clients run on this (main) thread. At the lowest
    // priority they cannot starve B's thread on the shared core, so B's
    // latency measures the host, not this load generator.
    // SAFETY: setpriority has no memory-safety preconditions; on Linux,
    // PRIO_PROCESS with id 0 applies to the calling thread only.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }

    let result = async {
        let mut b_conns: Vec<Option<Ws>> = (0..cfg.connections).map(|_| None).collect();
        let steady_url = host.url(&format!("/t/{STEADY_TENANT}/ws"));
        // Warm-up, not recorded.
        steady_phase(
            &b_handle,
            &steady_url,
            &mut b_conns,
            cfg.rate,
            WARMUP.as_secs().max(1),
        )
        .await?;
        let rate = if cfg.rate == 0 {
            "unpaced".to_owned()
        } else {
            format!("{}/s", cfg.rate)
        };
        out(format!(
            "noisy neighbour: B = {STEADY_TENANT} (fixture/echo, {} conns, {rate}, {} s/phase), \
             A = {NOISY_TENANT} (hostile, plan starter, {} conns at full speed)",
            cfg.connections, cfg.seconds, cfg.noisy_connections
        ));
        out(format!(
            "{:<17} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>6}  A calls (rate): answers",
            "phase", "B calls", "B err", "p50 µs", "p99 µs", "p999 µs", "p99 x", "host"
        ));
        // Each phase is compared with a baseline measured just before it,
        // so a machine whose speed drifts over minutes (a shared VM) moves
        // both sides of a ratio together.
        let mut pairs = Vec::new();
        for round in 1..=cfg.rounds {
            for b in &cfg.phases {
                let baseline = run_phase(host, &b_handle, &mut b_conns, &cfg, None).await?;
                let base_p99 = baseline.p(0.99);
                out(phase_line(&baseline, base_p99, round, &cfg));
                let attacked = run_phase(host, &b_handle, &mut b_conns, &cfg, Some(b)).await?;
                out(phase_line(&attacked, base_p99, round, &cfg));
                pairs.push(Pair {
                    round,
                    baseline,
                    attacked,
                });
            }
        }
        anyhow::Ok(pairs)
    }
    .await;
    let _ = done_tx.send(());
    let _ = b_thread.join();
    let pairs = result?;

    // Per phase, over the rounds: the median ratio, and every B error.
    struct Verdict {
        name: &'static str,
        ratios: Vec<f64>,
        median: f64,
        b_errors: u64,
        baseline_errors: u64,
    }
    let verdicts: Vec<Verdict> = cfg
        .phases
        .iter()
        .map(|name| {
            let mine: Vec<&Pair> = pairs.iter().filter(|p| p.attacked.name == *name).collect();
            let ratios: Vec<f64> = mine.iter().map(|p| p.ratio()).collect();
            Verdict {
                name,
                median: median(&mut ratios.clone()),
                ratios,
                b_errors: mine.iter().map(|p| p.attacked.b_error_count()).sum(),
                baseline_errors: mine.iter().map(|p| p.baseline.b_error_count()).sum(),
            }
        })
        .collect();
    let pass = |v: &Verdict| v.median <= MAX_P99_RATIO && v.b_errors == 0 && v.baseline_errors == 0;
    let texts: Vec<String> = verdicts
        .iter()
        .map(|v| {
            let ratios = if cfg.rounds > 1 {
                let each: Vec<String> = v.ratios.iter().map(|r| format!("{r:.1}")).collect();
                format!(" [{}]", each.join(" "))
            } else {
                String::new()
            };
            if pass(v) {
                format!("{} PASS{ratios}", v.name)
            } else {
                let mut why = Vec::new();
                if v.median > MAX_P99_RATIO {
                    why.push(format!("p99 {:.1}x", v.median));
                }
                if v.b_errors > 0 {
                    why.push(format!("{} errors", v.b_errors));
                }
                if v.baseline_errors > 0 {
                    why.push(format!("{} errors in its baseline", v.baseline_errors));
                }
                format!("{} FAIL ({}){ratios}", v.name, why.join(", "))
            }
        })
        .collect();
    let passed = verdicts.iter().filter(|v| pass(v)).count();
    let all_pass = passed == verdicts.len();
    let over = if cfg.rounds > 1 {
        format!(" (median of {} rounds)", cfg.rounds)
    } else {
        String::new()
    };
    out(format!(
        "verdict (target: B's p99 at most {MAX_P99_RATIO}x its baseline{over}, B sees zero errors): {} \
         -> {passed}/{} PASS: {}",
        texts.join(", "),
        verdicts.len(),
        if all_pass { "PASS" } else { "FAIL" }
    ));

    if cfg.json {
        let report = |r: &PhaseReport, round: usize, base_p99: u64| {
            json!({
                "phase": r.name, "round": round,
                "b_calls": r.b_calls, "b_seconds": r.b_seconds,
                "b_calls_per_s": (r.b_calls as f64 / r.b_seconds).round(),
                "b_errors": r.b_error_count(), "b_error_codes": r.b_errors,
                "p50_us": r.p(0.50), "p99_us": r.p(0.99), "p999_us": r.p(0.999),
                "max_us": r.lat.last().copied().unwrap_or(0),
                "p99_ratio": ((r.p(0.99) as f64 / base_p99.max(1) as f64) * 100.0).round() / 100.0,
                "host_cpu_percent": r.host_cpu_percent,
                "a_calls": r.a_calls,
                "a_calls_per_s": (r.a_calls as f64 / r.a_seconds).round(),
                "a_answers": r.a_outcomes,
            })
        };
        let phases: Vec<Value> = pairs
            .iter()
            .flat_map(|p| {
                let base = p.baseline.p(0.99);
                [
                    report(&p.baseline, p.round, base),
                    report(&p.attacked, p.round, base),
                ]
            })
            .collect();
        let summary: Vec<Value> = verdicts
            .iter()
            .map(|v| {
                json!({
                    "phase": v.name,
                    "p99_ratios": v.ratios.iter().map(|r| (r * 100.0).round() / 100.0).collect::<Vec<_>>(),
                    "median_p99_ratio": (v.median * 100.0).round() / 100.0,
                    "b_errors": v.b_errors, "baseline_b_errors": v.baseline_errors,
                    "pass": pass(v),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "mode": "noisy", "connections": cfg.connections, "rate_per_s": cfg.rate,
                "seconds": cfg.seconds, "noisy_connections": cfg.noisy_connections,
                "rounds": cfg.rounds,
                "target": {"max_p99_ratio": MAX_P99_RATIO, "max_b_errors": 0},
                "phases": phases, "summary": summary,
                "passed": passed, "failed": verdicts.len() - passed,
                "pass": all_pass,
            })
        );
    }
    Ok(())
}

/// NOTIFY → WebSocket latency: subscribers on topic `orders` of tenant
/// `bench` (plugin `orders`), a plain connection logged in as the tenant's
/// role inserting rows into `orders` at `rate` per second; each row's
/// trigger notifies, the bridge claims the outbox row and publishes
/// `created`. Latency is from sending the INSERT (autocommit) to the event
/// reaching the first subscriber.
async fn notify_bench(
    host: &HostProcess,
    postgres: &str,
    subs: usize,
    rate: u64,
    seconds: u64,
) -> Result<()> {
    use std::collections::HashMap;
    let url = host.url("/t/bench/ws");
    let mut caller = open(&url).await?;
    // First use: the plugin creates the table and installs the trigger.
    caller
        .send(Message::text(
            r#"{"rpc":"orders/place","id":"setup","args":["setup","tea",1]}"#,
        ))
        .await?;
    loop {
        match caller.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains(r#""event":"setup""#) => {
                if !t.as_str().contains(r#""ok":true"#) {
                    bail!("orders/place failed: {t}");
                }
                break;
            }
            Some(Ok(_)) => continue,
            other => bail!("no answer to orders/place: {other:?}"),
        }
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    let deliveries = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for k in 0..subs.max(1) {
        let mut ws = open(&url).await?;
        ws.send(Message::text(
            r#"{"type":"subscribe","topic":"orders","ref":1}"#,
        ))
        .await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().contains("subscribed") => break,
                Some(Ok(_)) => continue,
                other => bail!("subscribe failed: {other:?}"),
            }
        }
        let (sent, latencies, deliveries) = (
            Arc::clone(&sent),
            Arc::clone(&latencies),
            Arc::clone(&deliveries),
        );
        readers.push(tokio::spawn(async move {
            while let Some(Ok(Message::Text(t))) = ws.next().await {
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["topic"] != "orders" || v["event"] != "created" {
                    continue;
                }
                deliveries.fetch_add(1, Ordering::Relaxed);
                let Some(id) = v["data"]["order_id"].as_str() else {
                    continue;
                };
                if k == 0
                    && let Some(at) = sent.lock().ok().and_then(|m| m.get(id).copied())
                {
                    let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                    if let Ok(mut l) = latencies.lock() {
                        l.push(us);
                    }
                }
            }
        }));
    }
    let prefix = format!("bench{}", std::process::id());
    let tenant = tenantry::tenant::TenantId::parse("bench")?;
    let role = tenantry::backend::postgres::provision::tenant_ident(&prefix, &tenant);
    let password = tenantry::backend::postgres::provision::tenant_password(
        tenantry::backend::postgres::DEV_PASSWORD_SECRET.as_bytes(),
        &tenant,
    );
    let mut config: tokio_postgres::Config = postgres.parse()?;
    config.user(&role).password(&password);
    let (db, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let insert = db
        .prepare("INSERT INTO orders (order_id, item, qty) VALUES ($1, 'tea', 1)")
        .await?;
    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let cpu0 = cpu_micros(host.pid())?;
    let t0 = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let id = format!("n{i}");
        if let Ok(mut m) = sent.lock() {
            m.insert(id.clone(), Instant::now());
        }
        db.execute(&insert, &[&id]).await?;
    }
    // Let the last events arrive.
    let wait_until = Instant::now() + Duration::from_secs(3);
    while deliveries.load(Ordering::Relaxed) < total * subs.max(1) as u64
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_micros(host.pid())? - cpu0;
    for r in readers {
        r.abort();
    }
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    let delivered = deliveries.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "mode": "notify", "rows": total, "rate": rate, "subscribers": subs.max(1),
            "seconds": elapsed, "deliveries": delivered,
            "lost": (total * subs.max(1) as u64).saturating_sub(delivered),
            "p50_us": percentile(&lat, 0.50), "p99_us": percentile(&lat, 0.99),
            "max_us": lat.last().copied().unwrap_or(0),
            "host_cpu_us_per_row": (cpu as f64 / (total.max(1)) as f64 * 100.0).round() / 100.0,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0]), 3.0);
        assert_eq!(
            median(&mut [9.0, 1.0, 2.0]),
            2.0,
            "one bad round does not decide"
        );
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
