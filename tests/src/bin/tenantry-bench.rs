//! `tenantry-bench`: load tool for a real `tenantry` process over real
//! WebSockets. It starts the host itself (pinned to one core with `taskset`
//! unless `--no-pin`), runs the load from this process (pinned to the other
//! core), and reads the host's CPU time and RSS from `/proc`.
//!
//! ```text
//! cargo build --release -p tenantry-tests --bins
//! target/release/tenantry-bench echo    --conns 50 --seconds 10
//! target/release/tenantry-bench --reuse 1000 echo --conns 50 --seconds 10
//! target/release/tenantry-bench fanout  --subs 1000 --rate 200 --seconds 10
//! target/release/tenantry-bench idle    --conns 10000
//! ```

use std::path::PathBuf;
use std::sync::Arc;
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
#[command(about = "Load tool for tenantry: echo RPC, fan-out, idle connections")]
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
    /// Open N idle connections and report the host's RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
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
    let host = start_host(&host_bin, pin, cli.reuse)?;
    eprintln!("host pid {} on {}", host.pid(), host.addr);
    rt.block_on(async {
        match cli.mode {
            Mode::Echo { conns, seconds } => echo(&host, conns, seconds).await,
            Mode::Fanout {
                subs,
                rate,
                seconds,
            } => fanout(&host, subs, rate, seconds).await,
            Mode::Idle { conns } => idle(&host, conns).await,
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

fn start_host(bin: &std::path::Path, pin: bool, reuse: u32) -> Result<HostProcess> {
    let extra = format!("{BENCH_PLAN}instance_reuse = {reuse}\n");
    let tenants = [TenantSpec::new("bench", "fixture").plan("bench")];
    let h = HostProcess::start_with(bin, &tenants, &extra)?;
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
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
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

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn echo(host: &HostProcess, conns: usize, seconds: u64) -> Result<()> {
    let url = host.url("/t/bench/ws");
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        sockets.push(open(&url).await?);
    }
    // Warm up.
    for ws in sockets.iter_mut() {
        ws.send(Message::text(
            r#"{"rpc":"fixture/echo","id":"w","args":["warm"]}"#,
        ))
        .await?;
        let _ = ws.next().await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu_micros(host.pid())?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            let payload = "x".repeat(100);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let frame = format!(r#"{{"rpc":"fixture/echo","id":"{n}","args":["{payload}"]}}"#);
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
            "mode": "echo", "connections": conns, "seconds": elapsed,
            "calls": lat.len(), "calls_per_s": (calls / elapsed).round(),
            "p50_us": percentile(&lat, 0.50), "p99_us": percentile(&lat, 0.99),
            "host_cpu_us_per_call": (cpu as f64 / calls * 100.0).round() / 100.0,
        })
    );
    Ok(())
}

async fn fanout(host: &HostProcess, subs: usize, rate: u64, seconds: u64) -> Result<()> {
    let url = host.url("/t/bench/ws");
    let received = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
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
                    }
                }
            }
        }));
    }
    let mut publisher = open(&url).await?;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let cpu0 = cpu_micros(host.pid())?;
    let t0 = Instant::now();
    let mut next = tokio::time::Instant::now();
    for _ in 0..total {
        publisher
            .send(Message::text(
                r#"{"rpc":"fixture/publish","args":["fan","m",{"v":"0123456789"}]}"#,
            ))
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
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let got = received.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "mode": "fanout", "subscribers": subs, "rate_per_s": rate, "published": total,
            "publish_seconds": send_elapsed, "deliveries_expected": expected, "deliveries": got,
            "lost": expected.saturating_sub(got), "seq_gaps": gaps.load(Ordering::Relaxed),
            "deliveries_per_s": (got as f64 / elapsed).round(),
            "host_cpu_percent": (cpu as f64 / elapsed / 10_000.0).round(),
        })
    );
    Ok(())
}

async fn idle(host: &HostProcess, conns: usize) -> Result<()> {
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
        })
    );
    drop(warm);
    drop(sockets);
    Ok(())
}
