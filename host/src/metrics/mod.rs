//! Process metrics in the Prometheus text format, served at `/metrics` on
//! the admin listener (`docs/operations.md` lists them all).
//!
//! Every name starts with the configured prefix (`[metrics] prefix`,
//! default `tenantry_`). Three groups:
//!
//! - the host's own, per tenant: connections, subscriptions, RPC calls by
//!   code and their latency, plugin instantiation time, CPU time, memory
//!   per call, fuel, traps by kind (a `timeout` trap is an epoch-deadline
//!   hit), quota refusals by kind, bytes in and out, active plugin
//!   versions; and per backend: circuit-breaker state and command latency;
//! - the seeds' extension metrics under the same names (`pubsub_…`,
//!   `presence_…`, `replay_…`, `ratelimit_…`, `group_…`, `cursor_…`), each
//!   with a `tenant` label as well;
//! - `metrics_series_dropped_total`: observations dropped by the series cap.
//!
//! Label values are bounded ([`labels`]): tenants past `max_tenants` are
//! `other`, topics and group names go through `map_topic`, and each metric
//! holds at most `max_series` label sets. Gauges of what exists right now
//! (connections, subscriptions, versions, breakers) are read at scrape time
//! from a [`LiveSource`], so they cost nothing on the hot path.

mod hot;
pub mod labels;

use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use hot::{HotCache, HotSeries};
pub use labels::MetricsSettings;
use labels::{SeriesBudget, TenantLabels, TopicMap};

use crate::tenant::TenantId;

/// Why a plugin call failed in the sandbox (`kind` of `tenantry_traps_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The guest trapped: panic, `unreachable`, bad memory access, bad result.
    Trap,
    /// CPU deadline, fuel or wall-clock bound hit.
    Timeout,
    /// Memory or table cap hit.
    Memory,
    /// Guest stack bound hit.
    Stack,
    /// Result over `max_result_bytes`.
    ResultTooLarge,
    /// The host could not run the plugin (instantiation failed, pool full).
    Host,
}

impl TrapKind {
    fn label(self) -> &'static str {
        match self {
            TrapKind::Trap => "trap",
            TrapKind::Timeout => "timeout",
            TrapKind::Memory => "memory",
            TrapKind::Stack => "stack",
            TrapKind::ResultTooLarge => "result_too_large",
            TrapKind::Host => "host",
        }
    }
}

/// Which quota refused (`kind` of `tenantry_quota_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A connection over `max_connections`.
    Connections,
    /// A connection over `connects_per_sec`.
    ConnectRate,
    /// A call over `max_concurrent_calls`.
    ConcurrentCalls,
    /// A message over the connection's or tenant's message rate.
    MessageRate,
    /// A connection closed with 4429 for ignoring refusals.
    RateClose,
    /// A publish over `publishes_per_sec`.
    PublishRate,
    /// A publish over `max_publish_bytes`.
    PublishSize,
    /// A KV write over `kv_max_keys` / `kv_max_bytes`.
    Kv,
    /// A plugin log line over `log_lines_per_sec`.
    LogRate,
    /// A call refused because the plugin faulted too often (`faulted_calls_per_sec`).
    FaultBudget,
}

impl RefusalKind {
    fn label(self) -> &'static str {
        match self {
            RefusalKind::Connections => "connections",
            RefusalKind::ConnectRate => "connect_rate",
            RefusalKind::ConcurrentCalls => "concurrent_calls",
            RefusalKind::MessageRate => "message_rate",
            RefusalKind::RateClose => "rate_close",
            RefusalKind::PublishRate => "publish_rate",
            RefusalKind::PublishSize => "publish_size",
            RefusalKind::Kv => "kv",
            RefusalKind::LogRate => "log_rate",
            RefusalKind::FaultBudget => "fault_budget",
        }
    }
}

/// The RPC codes counted by name; any other (a plugin's own) is `OTHER`.
const KNOWN_CODES: [&str; 20] = [
    "OK",
    "INVALID_REQUEST",
    "PAYLOAD_TOO_LARGE",
    "INVALID_TOPIC",
    "INVALID_EVENT",
    "NOT_FOUND",
    "VALIDATION",
    "INTERNAL_ERROR",
    "TIMEOUT",
    "RESOURCE_EXHAUSTED",
    "OVERLOADED",
    "RATE_LIMITED",
    "FORBIDDEN",
    "UNAUTHENTICATED",
    "SERVICE_UNAVAILABLE",
    "CONFLICT",
    "LOCK_TIMEOUT",
    "GROUP_FULL",
    "BAD_REQUEST",
    "UNAVAILABLE",
];

/// What one plugin call cost, for [`call_finished`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CallStats {
    /// Time spent instantiating a fresh instance (none for a reused one).
    pub instantiation: Option<Duration>,
    /// Guest running time (import waits not counted).
    pub cpu: Duration,
    /// Linear memory (all memories) the instance held at the end.
    pub memory_bytes: u64,
    /// Fuel consumed, when fuel metering is on.
    pub fuel: Option<u64>,
}

/// What exists right now, read at every scrape: one row per tenant and per
/// backend (see [`set_live_source`]).
#[derive(Debug, Clone, Default)]
pub struct LiveSnapshot {
    /// Per tenant: open connections, client subscriptions, and the plugin
    /// versions serving it (active, and a canary if any).
    pub tenants: Vec<(TenantId, u64, u64, Vec<String>)>,
    /// Per backend breaker: its name and state (0 healthy, 1 probing, 2
    /// broken).
    pub breakers: Vec<(String, i64)>,
}

/// Where the scrape-time gauges come from (the server registers it once).
pub type LiveSource = Box<dyn Fn() -> LiveSnapshot + Send + Sync>;

/// The process's metrics: the registry, its families and the label bounds.
pub struct Metrics {
    registry: Registry,
    tenants: TenantLabels,
    topics: TopicMap,
    series: SeriesBudget,
    dropped: IntCounter,
    live: RwLock<Option<LiveSource>>,
    /// Per-tenant handles on the series every call updates.
    hot: HotCache,
    // The host's own.
    connections: IntGaugeVec,
    subscriptions: IntGaugeVec,
    versions: IntGaugeVec,
    breaker_state: IntGaugeVec,
    rpc_calls: IntCounterVec,
    rpc_duration: HistogramVec,
    instantiation: HistogramVec,
    cpu: prometheus::CounterVec,
    memory: HistogramVec,
    fuel: IntCounterVec,
    traps: IntCounterVec,
    refusals: IntCounterVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    backend_command: HistogramVec,
    sql_duration: HistogramVec,
    sql_errors: IntCounterVec,
    // The seeds' extension metrics.
    relayed: IntCounterVec,
    received: IntCounterVec,
    relay_batch: HistogramVec,
    presence_joins: IntCounterVec,
    presence_leaves: IntCounterVec,
    presence_heartbeats: IntCounter,
    presence_stale: IntCounterVec,
    replay_publishes: IntCounterVec,
    replay_replayed: IntCounterVec,
    replay_truncations: IntCounterVec,
    ratelimit_allowed: IntCounterVec,
    ratelimit_denied: IntCounterVec,
    ratelimit_bans: IntCounterVec,
    group_joins: IntCounterVec,
    group_rejected: IntCounterVec,
    group_leaves: IntCounterVec,
    group_publishes: IntCounterVec,
    cursor_updates: IntCounterVec,
    cursor_broadcasts: IntCounterVec,
    cursor_throttled: IntCounterVec,
    jobs: IntCounterVec,
    job_claim: HistogramVec,
    tasks: IntCounterVec,
    notify_received: IntCounterVec,
    notify_parse_errors: IntCounterVec,
    notify_reconnects: IntCounter,
}

/// Latency buckets in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5, 10.0,
];

/// Memory buckets in bytes: 64 KiB to 1 GiB.
const MEMORY_BUCKETS: [f64; 8] = [
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
];

/// Batch-size buckets (publishes per Redis pipeline).
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0];

/// Registers families on one registry under one prefix.
struct Families<'a> {
    registry: &'a Registry,
    prefix: &'a str,
}

impl Families<'_> {
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        let c = IntCounter::with_opts(Opts::new(self.name(name), help))?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        let c = IntCounterVec::new(Opts::new(self.name(name), help), labels)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn float_counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<prometheus::CounterVec, prometheus::Error> {
        let c = prometheus::CounterVec::new(Opts::new(self.name(name), help), labels)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        let g = IntGaugeVec::new(Opts::new(self.name(name), help), labels)?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn histograms(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<HistogramVec, prometheus::Error> {
        let h = HistogramVec::new(
            HistogramOpts::new(self.name(name), help).buckets(buckets.to_vec()),
            labels,
        )?;
        self.registry.register(Box::new(h.clone()))?;
        Ok(h)
    }
}

impl Metrics {
    /// Every family, named and bounded as `settings` says.
    pub fn new(settings: &MetricsSettings) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let f = Families {
            registry: &registry,
            prefix: &settings.prefix,
        };
        let t = &["tenant"];
        let tt = &["tenant", "topic"];
        let tg = &["tenant", "group"];
        // Registered so dashboards built for the seeds find it; it stays 0.
        f.counter(
            "pubsub_echo_suppressed_total",
            "Messages dropped by echo suppression (always 0: every host delivers from Redis).",
        )?;
        Ok(Self {
            tenants: TenantLabels::new(settings.max_tenants),
            topics: TopicMap::new(settings.map_topic.clone()),
            series: SeriesBudget::new(settings.max_series),
            live: RwLock::new(None),
            hot: HotCache::default(),
            dropped: f.counter(
                "metrics_series_dropped_total",
                "Observations dropped because their metric holds max_series label sets.",
            )?,
            connections: f.gauges("connections", "Open WebSocket connections.", t)?,
            subscriptions: f.gauges(
                "subscriptions",
                "Client topic subscriptions on open connections.",
                t,
            )?,
            versions: f.gauges(
                "plugin_versions_active",
                "Plugin versions serving the tenant (1 per version; 2 during a canary).",
                &["tenant", "version"],
            )?,
            breaker_state: f.gauges(
                "breaker_state",
                "Circuit breaker state per backend: 0 healthy, 1 probing, 2 broken.",
                &["backend"],
            )?,
            rpc_calls: f.counters(
                "rpc_calls_total",
                "RPC calls answered, by code (OK or the error code; a plugin's own codes are OTHER).",
                &["tenant", "code"],
            )?,
            rpc_duration: f.histograms(
                "rpc_duration_seconds",
                "RPC call latency in the host, from dispatch to answer.",
                t,
                &LATENCY_BUCKETS,
            )?,
            instantiation: f.histograms(
                "instantiation_seconds",
                "Time to instantiate a fresh plugin instance.",
                t,
                &LATENCY_BUCKETS,
            )?,
            cpu: f.float_counters(
                "call_cpu_seconds_total",
                "Guest running time of plugin calls (waits on host imports excluded).",
                t,
            )?,
            memory: f.histograms(
                "call_memory_bytes",
                "Linear memory a plugin instance held at the end of a call (its peak).",
                t,
                &MEMORY_BUCKETS,
            )?,
            fuel: f.counters(
                "fuel_consumed_total",
                "Fuel consumed by plugin calls (plans with fuel metering).",
                t,
            )?,
            traps: f.counters(
                "traps_total",
                "Plugin calls that failed in the sandbox, by tenant and kind.",
                &["tenant", "kind"],
            )?,
            refusals: f.counters(
                "quota_refusals_total",
                "Requests refused by a quota of the tenant's plan, by tenant and kind.",
                &["tenant", "kind"],
            )?,
            bytes_in: f.counters(
                "bytes_received_total",
                "WebSocket message bytes received from clients.",
                t,
            )?,
            bytes_out: f.counters(
                "bytes_sent_total",
                "WebSocket message bytes sent to clients.",
                t,
            )?,
            backend_command: f.histograms(
                "backend_command_duration_seconds",
                "Latency of backend commands (Redis, Postgres) that got an answer or failed.",
                &["backend"],
                &LATENCY_BUCKETS,
            )?,
            sql_duration: f.histograms(
                "sql_duration_seconds",
                "Time of a plugin's sql import call (checkout, statements, reset).",
                t,
                &LATENCY_BUCKETS,
            )?,
            sql_errors: f.counters(
                "sql_errors_total",
                "Plugin sql import calls that failed (refused, timed out, Postgres errors).",
                t,
            )?,
            relayed: f.counters(
                "pubsub_messages_relayed_total",
                "Messages published through the Redis bus.",
                t,
            )?,
            received: f.counters(
                "pubsub_messages_received_total",
                "Messages received from the Redis bus.",
                t,
            )?,
            relay_batch: f.histograms(
                "pubsub_relay_batch_size",
                "Publishes per Redis pipeline.",
                &[],
                &BATCH_BUCKETS,
            )?,
            presence_joins: f.counters("presence_joins_total", "Presence join events.", tt)?,
            presence_leaves: f.counters("presence_leaves_total", "Presence leave events.", tt)?,
            presence_heartbeats: f.counter(
                "presence_heartbeats_total",
                "Presence heartbeat refresh cycles.",
            )?,
            presence_stale: f.counters(
                "presence_stale_cleaned_total",
                "Presence entries of dead hosts removed by cleanup.",
                t,
            )?,
            replay_publishes: f.counters(
                "replay_publishes_total",
                "Messages published (and buffered for replay).",
                tt,
            )?,
            replay_replayed: f.counters(
                "replay_messages_replayed_total",
                "Messages replayed to clients.",
                tt,
            )?,
            replay_truncations: f.counters(
                "replay_truncations_total",
                "Replays that found events already gone.",
                tt,
            )?,
            ratelimit_allowed: f.counters("ratelimit_allowed_total", "Requests allowed.", t)?,
            ratelimit_denied: f.counters("ratelimit_denied_total", "Requests denied.", t)?,
            ratelimit_bans: f.counters("ratelimit_bans_total", "Bans applied.", t)?,
            group_joins: f.counters("group_joins_total", "Group join events.", tg)?,
            group_rejected: f.counters(
                "group_joins_rejected_total",
                "Group joins rejected (full).",
                tg,
            )?,
            group_leaves: f.counters("group_leaves_total", "Group leave events.", tg)?,
            group_publishes: f.counters("group_publishes_total", "Group publish events.", tg)?,
            cursor_updates: f.counters("cursor_updates_total", "Cursor update calls.", tt)?,
            cursor_broadcasts: f.counters(
                "cursor_broadcasts_total",
                "Cursor broadcasts actually sent.",
                tt,
            )?,
            cursor_throttled: f.counters(
                "cursor_throttled_total",
                "Cursor updates deferred by the throttle.",
                tt,
            )?,
            jobs: f.counters(
                "jobs_total",
                "Job queue events: enqueued, completed, failed (an attempt), dead.",
                &["tenant", "event"],
            )?,
            job_claim: f.histograms(
                "job_claim_duration_seconds",
                "Time of one job claim (checkout, expiry sweep, claim query).",
                &[],
                &LATENCY_BUCKETS,
            )?,
            tasks: f.counters(
                "tasks_total",
                "Task runner events: created, committed, retried (an attempt failed), failed (out of attempts), taken_over, fenced_out, released.",
                &["tenant", "event"],
            )?,
            notify_received: f.counters(
                "notify_received_total",
                "Notifications received (outbox rows claimed by the LISTEN/NOTIFY bridge).",
                &["tenant", "channel"],
            )?,
            notify_parse_errors: f.counters(
                "notify_parse_errors_total",
                "Notifications dropped unpublished: over max_envelope_bytes, not JSON, not {topic,event,data}.",
                &["tenant", "channel"],
            )?,
            notify_reconnects: f.counter(
                "notify_reconnects_total",
                "Reconnect attempts of the LISTEN/NOTIFY bridge's LISTEN connections.",
            )?,
            registry,
        })
    }

    /// The tenant label of `tenant` (its id, or `other` past the cap).
    fn tenant<'a>(&self, tenant: &'a TenantId) -> &'a str {
        self.tenants.label(tenant)
    }

    /// `vec`'s series for `labels`, unless the series cap refuses it (then
    /// the drop is counted).
    fn series<M: prometheus::core::MetricVecBuilder>(
        &self,
        vec: &prometheus::core::MetricVec<M>,
        key: &'static str,
        labels: &[&str],
    ) -> Option<M::M> {
        if self.series.admit(key, labels) {
            vec.get_metric_with_label_values(labels).ok()
        } else {
            self.dropped.inc();
            None
        }
    }

    fn inc(&self, vec: &IntCounterVec, key: &'static str, labels: &[&str], n: u64) {
        if let Some(c) = self.series(vec, key, labels) {
            c.inc_by(n);
        }
    }

    fn observe(&self, vec: &HistogramVec, key: &'static str, labels: &[&str], v: f64) {
        if let Some(h) = self.series(vec, key, labels) {
            h.observe(v);
        }
    }

    /// Run `f` on `tenant`'s per-call series, resolved at its first RPC
    /// call and kept. `None` for a tenant labelled `other`, or while the
    /// series cap refuses one of them: the caller then takes the per-label
    /// path.
    fn hot<R>(&self, tenant: &TenantId, f: impl FnOnce(&HotSeries) -> R) -> Option<R> {
        self.hot.with(tenant, || self.resolve_hot(tenant), f)
    }

    /// As [`Metrics::hot`], but `None` until the tenant's first RPC call
    /// resolved the series.
    fn kept<R>(&self, tenant: &TenantId, f: impl FnOnce(&HotSeries) -> R) -> Option<R> {
        self.hot.with_kept(tenant, f)
    }

    fn resolve_hot(&self, tenant: &TenantId) -> Option<HotSeries> {
        let label = self.tenant(tenant);
        if label != tenant.as_str() {
            return None;
        }
        // A refusal is not counted as a drop here: the per-label path that
        // follows counts the observation it drops.
        let t = [label];
        let admitted = self.series.admit("rpc_calls", &[label, "OK"])
            && [
                "rpc_duration",
                "instantiation",
                "cpu",
                "memory",
                "bytes_in",
                "bytes_out",
            ]
            .into_iter()
            .all(|key| self.series.admit(key, &t));
        if !admitted {
            return None;
        }
        Some(HotSeries {
            rpc_ok: self
                .rpc_calls
                .get_metric_with_label_values(&[label, "OK"])
                .ok()?,
            rpc_duration: self.rpc_duration.get_metric_with_label_values(&t).ok()?,
            instantiation: self.instantiation.get_metric_with_label_values(&t).ok()?,
            cpu: self.cpu.get_metric_with_label_values(&t).ok()?,
            memory: self.memory.get_metric_with_label_values(&t).ok()?,
            bytes_in: self.bytes_in.get_metric_with_label_values(&t).ok()?,
            bytes_out: self.bytes_out.get_metric_with_label_values(&t).ok()?,
        })
    }

    /// Count `n` on a `{tenant}` counter.
    fn by_tenant(&self, vec: &IntCounterVec, key: &'static str, tenant: &TenantId, n: u64) {
        self.inc(vec, key, &[self.tenant(tenant)], n);
    }

    /// Count one on a `{tenant, topic}` (or group) counter.
    fn by_topic(&self, vec: &IntCounterVec, key: &'static str, tenant: &TenantId, topic: &str) {
        let topic = self.topics.label(topic);
        self.inc(vec, key, &[self.tenant(tenant), &topic], 1);
    }

    /// Counted failures of the sandbox so far (for tests and tools).
    pub fn traps(&self, tenant: &TenantId, kind: TrapKind) -> u64 {
        self.traps
            .get_metric_with_label_values(&[self.tenant(tenant), kind.label()])
            .map_or(0, |c| c.get())
    }

    /// Refusals of `tenant` by `kind` so far.
    pub fn refusals(&self, tenant: &TenantId, kind: RefusalKind) -> u64 {
        self.refusals
            .get_metric_with_label_values(&[self.tenant(tenant), kind.label()])
            .map_or(0, |c| c.get())
    }

    /// Reconnect attempts of the notify bridge so far (for tests and tools).
    pub fn notify_reconnects(&self) -> u64 {
        self.notify_reconnects.get()
    }

    /// Notifications of `tenant` on `channel` received and dropped as
    /// unparseable so far (for tests and tools).
    pub fn notify_counts(&self, tenant: &TenantId, channel: &str) -> (u64, u64) {
        let labels = [self.tenant(tenant), self.notify_channel(tenant, channel)];
        let get = |v: &IntCounterVec| {
            v.get_metric_with_label_values(&labels)
                .map_or(0, |c| c.get())
        };
        (get(&self.notify_received), get(&self.notify_parse_errors))
    }

    /// The `channel` label: the channel, or `other` for a tenant whose
    /// label is `other` (channels are per tenant, so as many as tenants).
    fn notify_channel<'a>(&self, tenant: &'a TenantId, channel: &'a str) -> &'a str {
        if self.tenant(tenant) == labels::OTHER {
            labels::OTHER
        } else {
            channel
        }
    }

    /// Everything in the Prometheus text exposition format, with the
    /// scrape-time gauges read from the live source first.
    pub fn render(&self) -> String {
        if let Some(source) = self.live.read().as_ref() {
            self.set_live(&source());
        }
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which
        // the validated prefix and fixed names are not.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn set_live(&self, live: &LiveSnapshot) {
        self.connections.reset();
        self.subscriptions.reset();
        self.versions.reset();
        self.breaker_state.reset();
        for (tenant, connections, subscriptions, versions) in &live.tenants {
            let label = self.tenant(tenant);
            // Tenants past the cap add up under `other`.
            self.connections
                .with_label_values(&[label])
                .add(i64::try_from(*connections).unwrap_or(i64::MAX));
            self.subscriptions
                .with_label_values(&[label])
                .add(i64::try_from(*subscriptions).unwrap_or(i64::MAX));
            for v in versions {
                self.versions.with_label_values(&[label, v]).add(1);
            }
        }
        for (backend, state) in &live.breakers {
            self.breaker_state.with_label_values(&[backend]).set(*state);
        }
    }
}

/// The process-wide metrics, set up with the defaults unless
/// [`configure`] ran first; `None` only if the families could not be
/// registered (never expected with validated settings).
pub fn get() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| Metrics::new(&MetricsSettings::default()).ok())
        .as_ref()
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// Set up the process-wide metrics with `settings`; call before anything is
/// counted. `false` if they were already set up (then the first settings
/// stay).
pub fn configure(settings: &MetricsSettings) -> bool {
    let mut fresh = false;
    METRICS.get_or_init(|| {
        fresh = true;
        Metrics::new(settings).ok()
    });
    fresh
}

/// Read the scrape-time gauges from `source` from now on.
pub fn set_live_source(source: LiveSource) {
    if let Some(m) = get() {
        *m.live.write() = Some(source);
    }
}

/// Count a failed plugin call of `tenant`.
pub fn trap(tenant: &TenantId, kind: TrapKind) {
    if let Some(m) = get() {
        m.inc(&m.traps, "traps", &[m.tenant(tenant), kind.label()], 1);
    }
}

/// Count a quota refusal for `tenant`.
pub fn refusal(tenant: &TenantId, kind: RefusalKind) {
    if let Some(m) = get() {
        m.inc(
            &m.refusals,
            "refusals",
            &[m.tenant(tenant), kind.label()],
            1,
        );
    }
}

/// Count an answered RPC call: `code` is `OK` or the error code.
pub fn rpc(tenant: &TenantId, code: &str, elapsed: Duration) {
    if let Some(m) = get() {
        m.count_rpc(tenant, code, elapsed);
    }
}

/// Account one plugin call's costs.
pub fn call_finished(tenant: &TenantId, stats: &CallStats) {
    if let Some(m) = get() {
        m.count_call(tenant, stats);
    }
}

/// Count `n` bytes received from a client of `tenant`.
pub fn bytes_received(tenant: &TenantId, n: u64) {
    if let Some(m) = get() {
        m.count_bytes(tenant, Direction::In, n);
    }
}

/// Count `n` bytes sent to a client of `tenant`.
pub fn bytes_sent(tenant: &TenantId, n: u64) {
    if let Some(m) = get() {
        m.count_bytes(tenant, Direction::Out, n);
    }
}

/// Which way WebSocket bytes went, for [`Metrics::count_bytes`].
#[derive(Clone, Copy)]
enum Direction {
    In,
    Out,
}

impl Metrics {
    fn count_rpc(&self, tenant: &TenantId, code: &str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let ok = code == "OK";
        let hot = self.hot(tenant, |h| {
            h.rpc_duration.observe(secs);
            if ok {
                h.rpc_ok.inc();
            }
        });
        if hot.is_some() && ok {
            return;
        }
        let code = KNOWN_CODES
            .iter()
            .find(|c| **c == code)
            .copied()
            .unwrap_or("OTHER");
        let label = self.tenant(tenant);
        self.inc(&self.rpc_calls, "rpc_calls", &[label, code], 1);
        if hot.is_none() {
            self.observe(&self.rpc_duration, "rpc_duration", &[label], secs);
        }
    }

    fn count_call(&self, tenant: &TenantId, stats: &CallStats) {
        let hot = self.kept(tenant, |h| {
            if let Some(d) = stats.instantiation {
                h.instantiation.observe(d.as_secs_f64());
            }
            h.cpu.inc_by(stats.cpu.as_secs_f64());
            h.memory.observe(stats.memory_bytes as f64);
        });
        if hot.is_none() {
            let label = self.tenant(tenant);
            if let Some(d) = stats.instantiation {
                self.observe(
                    &self.instantiation,
                    "instantiation",
                    &[label],
                    d.as_secs_f64(),
                );
            }
            if let Some(c) = self.series(&self.cpu, "cpu", &[label]) {
                c.inc_by(stats.cpu.as_secs_f64());
            }
            self.observe(&self.memory, "memory", &[label], stats.memory_bytes as f64);
        }
        if let Some(fuel) = stats.fuel {
            self.inc(&self.fuel, "fuel", &[self.tenant(tenant)], fuel);
        }
    }

    fn count_bytes(&self, tenant: &TenantId, direction: Direction, n: u64) {
        let hot = self.kept(tenant, |h| match direction {
            Direction::In => h.bytes_in.inc_by(n),
            Direction::Out => h.bytes_out.inc_by(n),
        });
        if hot.is_none() {
            match direction {
                Direction::In => self.by_tenant(&self.bytes_in, "bytes_in", tenant, n),
                Direction::Out => self.by_tenant(&self.bytes_out, "bytes_out", tenant, n),
            }
        }
    }
}

/// Time one backend command (`backend` is the breaker's name).
pub fn backend_command(backend: &str, elapsed: Duration) {
    if let Some(m) = get() {
        m.observe(
            &m.backend_command,
            "backend_command",
            &[backend],
            elapsed.as_secs_f64(),
        );
    }
}

/// Time one `sql` import call of `tenant` (and count it if it failed).
pub fn sql(tenant: &TenantId, elapsed: Duration, ok: bool) {
    if let Some(m) = get() {
        let label = m.tenant(tenant);
        m.observe(
            &m.sql_duration,
            "sql_duration",
            &[label],
            elapsed.as_secs_f64(),
        );
        if !ok {
            m.inc(&m.sql_errors, "sql_errors", &[label], 1);
        }
    }
}

/// Count a message published through the Redis bus.
pub fn bus_relayed(tenant: &TenantId) {
    if let Some(m) = get() {
        m.by_tenant(&m.relayed, "relayed", tenant, 1);
    }
}

/// Count a message received from the Redis bus.
pub fn bus_received(tenant: &TenantId) {
    if let Some(m) = get() {
        m.by_tenant(&m.received, "received", tenant, 1);
    }
}

/// Record the size of one Redis publish pipeline.
pub fn relay_batch(publishes: usize) {
    if let Some(m) = get() {
        m.observe(&m.relay_batch, "relay_batch", &[], publishes as f64);
    }
}

/// Count a presence join (`joined`) or leave announced on `topic`.
pub fn presence_change(tenant: &TenantId, topic: &str, joined: bool) {
    if let Some(m) = get() {
        if joined {
            m.by_topic(&m.presence_joins, "presence_joins", tenant, topic);
        } else {
            m.by_topic(&m.presence_leaves, "presence_leaves", tenant, topic);
        }
    }
}

/// Count a presence heartbeat cycle.
pub fn presence_heartbeat() {
    if let Some(m) = get() {
        m.presence_heartbeats.inc();
    }
}

/// Count `n` presence entries of dead hosts removed.
pub fn presence_stale_cleaned(tenant: &TenantId, n: u64) {
    if let Some(m) = get() {
        m.by_tenant(&m.presence_stale, "presence_stale", tenant, n);
    }
}

/// Count a message published (and buffered) on `topic`.
pub fn replay_publish(tenant: &TenantId, topic: &str) {
    if let Some(m) = get() {
        m.by_topic(&m.replay_publishes, "replay_publishes", tenant, topic);
    }
}

/// Count `n` messages replayed to a client on `topic`, and whether the
/// replay found events already gone.
pub fn replayed(tenant: &TenantId, topic: &str, n: u64, truncated: bool) {
    let Some(m) = get() else { return };
    let t = m.tenant(tenant);
    let label = m.topics.label(topic);
    if n > 0 {
        m.inc(&m.replay_replayed, "replay_replayed", &[t, &label], n);
    }
    if truncated {
        m.inc(&m.replay_truncations, "replay_truncations", &[t, &label], 1);
    }
}

/// Count a rate-limit decision.
pub fn ratelimit(tenant: &TenantId, allowed: bool) {
    if let Some(m) = get() {
        if allowed {
            m.by_tenant(&m.ratelimit_allowed, "ratelimit_allowed", tenant, 1);
        } else {
            m.by_tenant(&m.ratelimit_denied, "ratelimit_denied", tenant, 1);
        }
    }
}

/// Count a rate-limit ban applied.
pub fn ratelimit_ban(tenant: &TenantId) {
    if let Some(m) = get() {
        m.by_tenant(&m.ratelimit_bans, "ratelimit_bans", tenant, 1);
    }
}

/// What happened in a broadcast group, for [`group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEvent {
    /// A member joined.
    Join,
    /// A join was refused: the group is full.
    Rejected,
    /// A member left.
    Leave,
    /// A plugin published to the group.
    Publish,
}

/// Count a group event on `group`.
pub fn group(tenant: &TenantId, group: &str, event: GroupEvent) {
    if let Some(m) = get() {
        let (vec, key) = match event {
            GroupEvent::Join => (&m.group_joins, "group_joins"),
            GroupEvent::Rejected => (&m.group_rejected, "group_rejected"),
            GroupEvent::Leave => (&m.group_leaves, "group_leaves"),
            GroupEvent::Publish => (&m.group_publishes, "group_publishes"),
        };
        m.by_topic(vec, key, tenant, group);
    }
}

/// What happened to a cursor move, for [`cursor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorEvent {
    /// A client moved its cursor.
    Update,
    /// A move was broadcast.
    Broadcast,
    /// A move was held back by the throttle.
    Throttled,
}

/// Count a cursor event on `topic`.
pub fn cursor(tenant: &TenantId, topic: &str, event: CursorEvent) {
    if let Some(m) = get() {
        let (vec, key) = match event {
            CursorEvent::Update => (&m.cursor_updates, "cursor_updates"),
            CursorEvent::Broadcast => (&m.cursor_broadcasts, "cursor_broadcasts"),
            CursorEvent::Throttled => (&m.cursor_throttled, "cursor_throttled"),
        };
        m.by_topic(vec, key, tenant, topic);
    }
}

/// What happened to a job, for [`job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// A job was enqueued.
    Enqueued,
    /// A job completed.
    Completed,
    /// An attempt failed.
    Failed,
    /// A job went dead (out of attempts).
    Dead,
}

/// Count a job event of `tenant`.
pub fn job(tenant: &TenantId, event: JobEvent) {
    if let Some(m) = get() {
        let name = match event {
            JobEvent::Enqueued => "enqueued",
            JobEvent::Completed => "completed",
            JobEvent::Failed => "failed",
            JobEvent::Dead => "dead",
        };
        m.inc(&m.jobs, "jobs", &[m.tenant(tenant), name], 1);
    }
}

/// Time one job claim.
pub fn job_claim(elapsed: Duration) {
    if let Some(m) = get() {
        m.observe(&m.job_claim, "job_claim", &[], elapsed.as_secs_f64());
    }
}

/// What happened to a task, for [`task`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// A task was created (a start with a new key).
    Created,
    /// A task committed its result.
    Committed,
    /// An attempt failed; the task will run again.
    Retried,
    /// A task failed (out of attempts).
    Failed,
    /// A claim took a task over from a runner whose lock expired.
    TakenOver,
    /// A runner lost its task to a newer claim (its run was cut off or its
    /// result discarded).
    FencedOut,
    /// A claim was given back without an attempt (the tenant was busy).
    Released,
}

/// Count a task event of `tenant`.
pub fn task(tenant: &TenantId, event: TaskEvent) {
    if let Some(m) = get() {
        let name = match event {
            TaskEvent::Created => "created",
            TaskEvent::Committed => "committed",
            TaskEvent::Retried => "retried",
            TaskEvent::Failed => "failed",
            TaskEvent::TakenOver => "taken_over",
            TaskEvent::FencedOut => "fenced_out",
            TaskEvent::Released => "released",
        };
        m.inc(&m.tasks, "tasks", &[m.tenant(tenant), name], 1);
    }
}

/// Count a notification of `tenant` received on `channel` by the bridge.
pub fn notify_received(tenant: &TenantId, channel: &str) {
    if let Some(m) = get() {
        let labels = [m.tenant(tenant), m.notify_channel(tenant, channel)];
        m.inc(&m.notify_received, "notify_received", &labels, 1);
    }
}

/// Count a notification of `tenant` on `channel` dropped unpublished.
pub fn notify_parse_error(tenant: &TenantId, channel: &str) {
    if let Some(m) = get() {
        let labels = [m.tenant(tenant), m.notify_channel(tenant, channel)];
        m.inc(&m.notify_parse_errors, "notify_parse_errors", &labels, 1);
    }
}

/// Count a reconnect attempt of a notify bridge `LISTEN` connection.
pub fn notify_reconnect() {
    if let Some(m) = get() {
        m.notify_reconnects.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn counters_move_and_render() {
        let t = tid("metrics-test");
        let m = get().unwrap();
        let before = m.traps(&t, TrapKind::Stack);
        trap(&t, TrapKind::Stack);
        refusal(&t, RefusalKind::PublishRate);
        assert_eq!(m.traps(&t, TrapKind::Stack), before + 1);
        rpc(&t, "OK", Duration::from_millis(1));
        rpc(&t, "MY_OWN_CODE", Duration::from_millis(1));
        let text = m.render();
        assert!(
            text.contains(r#"tenantry_traps_total{kind="stack",tenant="metrics-test"}"#),
            "{text}"
        );
        assert!(text.contains(
            r#"tenantry_quota_refusals_total{kind="publish_rate",tenant="metrics-test"} 1"#
        ));
        assert!(text.contains(r#"tenantry_rpc_calls_total{code="OK",tenant="metrics-test"} 1"#));
        assert!(
            text.contains(r#"tenantry_rpc_calls_total{code="OTHER",tenant="metrics-test"} 1"#),
            "plugin codes are bounded"
        );
        assert!(text.contains(r#"tenantry_rpc_duration_seconds_count{tenant="metrics-test"} 2"#));
    }

    #[test]
    fn labels_are_bounded() {
        let m = Metrics::new(&MetricsSettings {
            prefix: "bounded_".into(),
            max_tenants: 2,
            max_series: 50,
            map_topic: Vec::new(),
        })
        .unwrap();
        let t = tid("acme");
        for i in 0..1000 {
            m.by_topic(
                &m.replay_publishes,
                "replay_publishes",
                &t,
                &format!("room:{i}"),
            );
            m.by_topic(&m.presence_joins, "presence_joins", &t, &format!("t{i}"));
        }
        for i in 0..5 {
            m.by_tenant(&m.bytes_in, "bytes_in", &tid(&format!("t{i}")), 1);
        }
        let text = m.render();
        let series = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(
            series("bounded_replay_publishes_total{"),
            1,
            "room:* is one label"
        );
        assert!(
            text.contains(r#"bounded_replay_publishes_total{tenant="acme",topic="room:*"} 1000"#)
        );
        assert_eq!(series("bounded_presence_joins_total{"), 50, "capped");
        assert!(
            text.contains("bounded_metrics_series_dropped_total 950"),
            "{text}"
        );
        // acme and t0 have the two tenant labels; t1..t4 add up as other.
        assert_eq!(series("bounded_bytes_received_total{"), 2);
        assert!(text.contains(r#"bounded_bytes_received_total{tenant="t0"} 1"#));
        assert!(text.contains(r#"bounded_bytes_received_total{tenant="other"} 4"#));
    }

    #[test]
    fn per_call_series_count_the_same_through_the_kept_handles() {
        let m = Metrics::new(&MetricsSettings {
            prefix: "hot_".into(),
            max_tenants: 1,
            ..MetricsSettings::default()
        })
        .unwrap();
        let stats = CallStats {
            instantiation: Some(Duration::from_millis(2)),
            cpu: Duration::from_millis(250),
            memory_bytes: 100_000,
            fuel: None,
        };
        // acme gets the one tenant label (and kept handles); beta is `other`.
        for t in [tid("acme"), tid("beta")] {
            for _ in 0..3 {
                m.count_rpc(&t, "OK", Duration::from_millis(1));
                m.count_call(&t, &stats);
                m.count_bytes(&t, Direction::In, 10);
                m.count_bytes(&t, Direction::Out, 7);
            }
            m.count_rpc(&t, "NOT_FOUND", Duration::from_millis(1));
        }
        let text = m.render();
        for label in ["acme", "other"] {
            for line in [
                format!(r#"hot_rpc_calls_total{{code="OK",tenant="{label}"}} 3"#),
                format!(r#"hot_rpc_calls_total{{code="NOT_FOUND",tenant="{label}"}} 1"#),
                format!(r#"hot_rpc_duration_seconds_count{{tenant="{label}"}} 4"#),
                format!(r#"hot_instantiation_seconds_count{{tenant="{label}"}} 3"#),
                format!(r#"hot_call_cpu_seconds_total{{tenant="{label}"}} 0.75"#),
                format!(r#"hot_call_memory_bytes_count{{tenant="{label}"}} 3"#),
                format!(r#"hot_bytes_received_total{{tenant="{label}"}} 30"#),
                format!(r#"hot_bytes_sent_total{{tenant="{label}"}} 21"#),
            ] {
                assert!(text.contains(&line), "{line}\n{text}");
            }
        }
    }

    #[test]
    fn per_call_series_past_the_series_cap_are_dropped_once_each() {
        let m = Metrics::new(&MetricsSettings {
            prefix: "hotcap_".into(),
            max_series: 1,
            ..MetricsSettings::default()
        })
        .unwrap();
        m.count_rpc(&tid("first"), "OK", Duration::from_millis(1));
        m.count_bytes(&tid("first"), Direction::In, 5);
        // `second` would be each family's second series: every observation
        // (two per RPC, one per byte count) is refused and counted as one
        // drop, not resolved into handles.
        for _ in 0..4 {
            m.count_rpc(&tid("second"), "OK", Duration::from_millis(1));
            m.count_bytes(&tid("second"), Direction::In, 5);
        }
        let text = m.render();
        assert!(text.contains(r#"hotcap_bytes_received_total{tenant="first"} 5"#));
        assert!(text.contains(r#"hotcap_rpc_calls_total{code="OK",tenant="first"} 1"#));
        assert!(!text.contains(r#"tenant="second""#), "{text}");
        assert!(
            text.contains("hotcap_metrics_series_dropped_total 12"),
            "{text}"
        );
    }

    #[test]
    fn live_gauges_are_read_at_scrape_time() {
        let m = Metrics::new(&MetricsSettings {
            prefix: "live_".into(),
            ..MetricsSettings::default()
        })
        .unwrap();
        *m.live.write() = Some(Box::new(|| LiveSnapshot {
            tenants: vec![(tid("acme"), 3, 7, vec!["v1".into(), "v2".into()])],
            breakers: vec![("redis".into(), 2)],
        }));
        let text = m.render();
        for line in [
            r#"live_connections{tenant="acme"} 3"#,
            r#"live_subscriptions{tenant="acme"} 7"#,
            r#"live_plugin_versions_active{tenant="acme",version="v2"} 1"#,
            r#"live_breaker_state{backend="redis"} 2"#,
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
