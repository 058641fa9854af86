//! The `tenantry` command line.
//!
//! ```text
//! tenantry serve [--config FILE] [--listen ADDR] [--admin-listen ADDR] [--data-dir DIR]
//! tenantry tenant|deploy|versions|activate|rollback|keys ...   (admin client, see admin_client)
//! ```
//!
//! `--config` (env `TENANTRY_CONFIG`) names a TOML file (see
//! [`crate::config`]); without it the built-in defaults run the embedded
//! demo. `--listen` (env `TENANTRY_LISTEN`) overrides the file's `listen`;
//! the command line wins over the environment. Logs go to stderr (filter
//! with `RUST_LOG`, default `info`); once bound, one line
//! `tenantry listening on http://ADDR` (the actual address, so port 0
//! works) is printed on stdout. SIGINT/SIGTERM shut down gracefully (every
//! WebSocket closed with 1001) and exit 0; any startup error is printed on
//! stderr and exits 1.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::admin_client::{self, AdminCommand};
use crate::backend::groups::memory::MemoryGroups;
use crate::backend::memory;
use crate::backend::{Backends, redis as redis_backend};
use crate::bundled;
use crate::catalog::CatalogStore;
use crate::catalog::disk::DiskCatalog;
use crate::catalog::memory::MemoryCatalog;
use crate::catalog::postgres::PostgresCatalog;
use crate::config::{Config, ConfigError, PluginSource};
use crate::control::{Control, ControlError, ControlSettings};
use crate::cursors::Cursors;
use crate::groups::Groups;
use crate::hub::Hub;
use crate::presence::Presence;
use crate::presence_events::PresenceEvents;
use crate::runtime::{Runtime, RuntimeConfig, RuntimeError};
use crate::server::session::Services;
use crate::server::{self, AppState, ServerSettings};
use crate::tenant::{Registry, TenantId};

/// Multi-tenant realtime host: WebSocket server + sandboxed WASM tenant plugins.
#[derive(Debug, Parser)]
#[command(name = "tenantry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve WebSocket clients for the configured tenants.
    Serve(ServeArgs),
    /// Admin client commands (talk to a running host's admin API).
    #[command(flatten)]
    Admin(AdminCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration file (TOML). Without it the embedded demo runs.
    #[arg(long, short, env = "TENANTRY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (overrides the file's `listen`).
    #[arg(long, short, env = "TENANTRY_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Address of the admin API, e.g. 127.0.0.1:9090 (needs env
    /// TENANTRY_ADMIN_TOKEN; overrides the file's `admin_listen`).
    #[arg(long, env = "TENANTRY_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Directory keeping tenants, keys and plugin versions across restarts
    /// (overrides the file's `data_dir`; without either they live in memory).
    #[arg(long, env = "TENANTRY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Environment variable holding the admin API's operator token.
pub const ADMIN_TOKEN_ENV: &str = "TENANTRY_ADMIN_TOKEN";

/// Why `tenantry serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    AsyncRuntime(std::io::Error),
    /// The wasm runtime could not start.
    #[error(transparent)]
    Runtime(RuntimeError),
    /// A tenant's plugin file could not be read.
    #[error("tenant {tenant}: cannot read plugin {path}: {source}")]
    ReadPlugin {
        /// The tenant.
        tenant: TenantId,
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `bundled:` plugin name that is not compiled in.
    #[error("tenant {tenant}: unknown bundled plugin {name:?} (available: {})", bundled::EMBEDDED.join(", "))]
    UnknownBundled {
        /// The tenant.
        tenant: TenantId,
        /// The requested name.
        name: String,
    },
    /// A configured tenant could not be created or its plugin deployed.
    #[error("tenant {tenant}: {source}")]
    Seed {
        /// The tenant.
        tenant: TenantId,
        /// Why.
        source: ControlError,
    },
    /// The registry could not be opened or read.
    #[error("registry: {0}")]
    Registry(ControlError),
    /// `[postgres]` is configured but tenant SQL cannot start.
    #[error("postgres: {0}")]
    Sql(crate::backend::postgres::SqlFailure),
    /// Redis is configured but unusable.
    #[error("redis: {0}")]
    Redis(crate::backend::BackendError),
    /// The admin listener is configured without an operator token.
    #[error("the admin API (admin_listen) needs an operator token: set {ADMIN_TOKEN_ENV}")]
    NoAdminToken,
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Entry point of the `tenantry` binary.
pub fn main() -> ExitCode {
    disable_library_backtraces();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Admin(cmd) => return run_admin(cmd),
    };
    init_tracing();
    let result = run_serve(args);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenantry: {e}");
            ExitCode::FAILURE
        }
    }
}

/// wasmtime builds an internal error value every time a store is dropped
/// (fiber disposal), and captures a backtrace for it when `RUST_BACKTRACE`
/// is set: 5 µs on every plugin call. Library backtraces are therefore off
/// unless the operator asks for them with `RUST_LIB_BACKTRACE=1`; panics
/// still honour `RUST_BACKTRACE`.
fn disable_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before any other thread
        // exists, so nothing can read the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Run an admin client command on a small single-threaded runtime.
fn run_admin(cmd: AdminCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(admin_client::run(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenantry: {e}");
            ExitCode::from(admin_client::exit_code(&e))
        }
    }
}

/// The environment variable choosing the log format: `json` (one JSON
/// object per line, with the span fields: tenant, plugin version, session,
/// path, request id) or anything else for text.
pub const LOG_FORMAT_ENV: &str = "TENANTRY_LOG_FORMAT";

/// Added to `RUST_LOG` unless it names `tokio_postgres`: tokio-postgres
/// logs every server notice at `info` (the `ROLLBACK` of each tenant SQL
/// connection's reset, "already exists, skipping" at every start, a
/// tenant's own `RAISE NOTICE`), which would flood the host's log.
const QUIET_POSTGRES_NOTICES: &str = "tokio_postgres::connection=warn";

fn init_tracing() {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("tokio_postgres") {
        spec
    } else {
        format!("{spec},{QUIET_POSTGRES_NOTICES}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("info,{QUIET_POSTGRES_NOTICES}"))
    });
    let json = std::env::var(LOG_FORMAT_ENV).is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

fn run_serve(args: ServeArgs) -> Result<(), CliError> {
    let mut config = Config::load(args.config.as_deref(), args.listen.as_deref())?;
    if let Some(addr) = args.admin_listen {
        config.admin_listen = Some(addr);
    }
    if let Some(dir) = args.data_dir {
        config.set_data_dir(dir);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = config.limits.worker_threads() {
        builder.worker_threads(n);
    }
    let rt = builder.build().map_err(CliError::AsyncRuntime)?;
    rt.block_on(serve_config(config, shutdown_signal()))
}

/// Start everything `config` describes and serve until `shutdown`
/// completes: memory backends, the wasm runtime, the registry (memory or
/// `data_dir`) with the configured tenants seeded into it, the public
/// listener and, with `admin_listen`, the admin API (operator token from
/// [`ADMIN_TOKEN_ENV`]). Prints `tenantry listening on http://ADDR` (and
/// `tenantry admin listening on http://ADDR`) on stdout once bound.
pub async fn serve_config(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let admin_token = match &config.admin_listen {
        Some(_) => Some(
            std::env::var(ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .ok_or(CliError::NoAdminToken)?,
        ),
        None => None,
    };
    if !crate::metrics::configure(&config.metrics) {
        tracing::warn!("metrics were set up before the configuration was read; [metrics] ignored");
    }
    let hub = Hub::new();
    let tables = host_tables(&config)?;
    let durable_replay = durable_replay(&config, tables.as_ref())?;
    let mut backends = build_backends(&config, &hub, durable_replay.as_ref()).await?;
    backends.sql = tenant_sql(&config)?;
    let notify_sql = backends.sql.clone();
    backends.host_tables = tables;
    backends.jobs = backends.host_tables.clone().map(|tables| {
        crate::backend::postgres::jobs::JobStore::new(tables, config.jobs.store_settings())
    });
    backends.schedules = backends
        .jobs
        .clone()
        .map(crate::backend::postgres::schedules::ScheduleStore::new);
    let job_stores = backends.jobs.clone().zip(backends.schedules.clone());
    backends.tasks = backends.host_tables.clone().map(|tables| {
        crate::backend::postgres::tasks::TaskStore::new(
            tables,
            config
                .tasks
                .store_settings(config.limits.call_wall_timeout()),
        )
    });
    let task_store = backends.tasks.clone();
    durable_stores(&config, &mut backends)?;
    let purgeable = backends.clone();
    let purgeable_breakers = backends.breakers.clone();
    let publish_rates = Arc::clone(&backends.publish_rates);
    let replay = Arc::clone(&backends.replay);
    let idempotency = Arc::clone(&backends.idempotency);
    let cursor_store = Arc::clone(&backends.cursors);
    let cursor_bus = Arc::clone(&backends.bus);
    let groups = Arc::clone(&backends.groups);
    let presence = Presence::new(
        Arc::clone(&backends.presence),
        Arc::clone(&backends.bus),
        Arc::clone(&hub),
        config.presence.settings(),
    );
    // Every plan a tenant could be given, including their own overrides.
    let plans = || {
        config
            .plans
            .values()
            .chain(config.tenants.iter().map(|t| &t.plan))
    };
    let max_memory = plans()
        .map(|p| p.memory_limit_bytes())
        .max()
        .unwrap_or(16 << 20);
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: Some(config.cache_dir.clone()),
            call_wall_timeout: config.limits.call_wall_timeout(),
            max_memory,
            max_instances: config.limits.max_instances,
            max_wasm_stack: config.limits.max_wasm_stack_bytes(),
            memory_keep_resident: config.limits.memory_keep_resident_bytes(),
            fuel: plans().any(|p| p.fuel_per_call > 0),
        },
        backends,
    )
    .map_err(CliError::Runtime)?;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let cpu_slots = config.limits.cpu_workers_per_tenant(workers);

    let catalog: Arc<dyn CatalogStore> = match (&config.postgres, &config.data_dir) {
        (Some(pg), _) => Arc::new(
            PostgresCatalog::connect(&pg.url, &pg.registry_schema)
                .await
                .map_err(|e| CliError::Registry(e.into()))?,
        ),
        (None, Some(dir)) => Arc::new(
            DiskCatalog::open(dir.clone())
                .await
                .map_err(|e| CliError::Registry(e.into()))?,
        ),
        (None, None) => Arc::new(MemoryCatalog::new()),
    };
    let readiness =
        crate::health::Readiness::new(purgeable_breakers).with_catalog(Arc::clone(&catalog));
    let registry = Arc::new(Registry::new());
    crate::metrics::set_live_source(live_metrics(
        Arc::clone(&registry),
        Arc::clone(&hub),
        purgeable.breakers.clone(),
    ));
    let presence_events = PresenceEvents::new(
        Arc::clone(&purgeable.presence_events),
        Arc::clone(&purgeable.presence),
        Arc::clone(&registry),
        config.presence.event_settings(),
    );
    presence.set_events(Arc::clone(&presence_events));
    let control = Control::new(
        catalog,
        runtime,
        Arc::clone(&registry),
        purgeable,
        config.plans.clone(),
        config.default_plan.clone(),
        ControlSettings {
            max_upload_bytes: config.admin.max_upload_bytes(),
            compile_timeout: config.admin.compile_timeout(),
            cpu_slots,
            max_memory_bytes: max_memory,
        },
    );
    // Follow other hosts' changes from before the initial load on, so none is missed.
    let follower = control.follow_changes();
    control.load().await.map_err(CliError::Registry)?;
    for t in &config.tenants {
        let wasm: std::borrow::Cow<'static, [u8]> = match &t.plugin {
            PluginSource::Bundled(name) => bundled::embedded(name)
                .ok_or_else(|| CliError::UnknownBundled {
                    tenant: t.id.clone(),
                    name: name.clone(),
                })?
                .into(),
            PluginSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|source| CliError::ReadPlugin {
                    tenant: t.id.clone(),
                    path: path.clone(),
                    source,
                })?
                .into(),
        };
        control
            .seed(&t.id, &t.plan_name, &t.limits, t.suspended, &wasm)
            .await
            .map_err(|source| CliError::Seed {
                tenant: t.id.clone(),
                source,
            })?;
    }

    let listener = bind(&config.listen).await?;
    let admin = match (&config.admin_listen, admin_token) {
        (Some(addr), Some(token)) => Some((bind(addr).await?, token)),
        _ => None,
    };
    let addr = local_addr(&listener, &config.listen)?;
    tracing::info!(
        %addr,
        tenants = ?registry.ids().iter().map(TenantId::as_str).collect::<Vec<_>>(),
        default_tenant = config.default_tenant.as_ref().map(TenantId::as_str),
        data_dir = config.data_dir.as_ref().map(|d| d.display().to_string()),
        workers,
        cpu_workers_per_tenant = cpu_slots,
        "serving"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = match admin {
        Some((listener, token)) => {
            let admin_addr = local_addr(&listener, config.admin_listen.as_deref().unwrap_or(""))?;
            tracing::info!(addr = %admin_addr, "admin API listening");
            print_line(&format!("tenantry admin listening on http://{admin_addr}"));
            let metrics_token = std::env::var(admin::METRICS_TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty());
            let state = AdminState::new(Arc::clone(&control), &token)
                .with_metrics_token(metrics_token.as_deref())
                .with_readiness(readiness.clone());
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(admin::serve(listener, state, async move {
                let _ = stop.wait_for(|s| *s).await;
            })))
        }
        None => None,
    };
    print_line(&format!("tenantry listening on http://{addr}"));
    let rate_reports = publish_rates.spawn();
    let presence_maintenance = {
        let registry = Arc::clone(&registry);
        presence.spawn_maintenance(move || registry.ids())
    };
    let presence_event_delivery = presence_events.spawn();
    let job_tasks = match job_stores {
        Some((store, schedules)) => crate::jobs::JobRunner::new(
            store,
            schedules,
            Arc::clone(&registry),
            config.jobs.runner_settings(),
        )
        .spawn(),
        None => Vec::new(),
    };
    let task_tasks = match task_store {
        Some(store) => crate::tasks::TaskRunner::new(
            store,
            Arc::clone(&registry),
            config.tasks.runner_settings(),
        )
        .spawn(),
        None => Vec::new(),
    };
    let notify_bridge = notify_bridge(&config, notify_sql, &registry);
    let group_maintenance = {
        let registry = Arc::clone(&registry);
        groups.spawn_maintenance(move || registry.ids())
    };
    let cursors = Cursors::new(cursor_store, Arc::clone(&cursor_bus));
    let cursor_flusher = cursors.spawn_flusher();
    let services = Arc::new(Services {
        replay,
        presence,
        groups,
        idempotency,
        cursors,
        bus: cursor_bus,
        readiness,
    });
    let state = AppState::new(
        registry,
        hub,
        services,
        ServerSettings::from_config(&config),
    );
    let served = server::serve(listener, state, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    if let Some(task) = admin_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "admin API stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "admin API task failed"),
            Ok(Ok(())) => {}
        }
    }
    drop(stop_rx);
    if let Some(f) = follower {
        f.abort();
    }
    presence_maintenance.abort();
    group_maintenance.abort();
    presence_event_delivery.abort();
    for task in job_tasks {
        task.abort();
    }
    for task in task_tasks {
        task.abort();
    }
    if let Some((bridge, task)) = notify_bridge {
        task.abort();
        drop(bridge);
    }
    rate_reports.abort();
    if let Some(f) = cursor_flusher {
        f.abort();
    }
    served.map_err(CliError::Serve)?;
    tracing::info!("stopped");
    Ok(())
}

/// The scrape-time gauges: per tenant its connections, subscriptions and
/// serving plugin versions; per Redis its breaker state.
fn live_metrics(
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    breakers: Vec<Arc<crate::backend::breaker::CircuitBreaker>>,
) -> crate::metrics::LiveSource {
    Box::new(move || {
        let subscriptions = hub.subscriptions_by_tenant();
        let tenants = registry
            .ids()
            .into_iter()
            .filter_map(|id| {
                let tenant = registry.get(&id)?;
                let deployment = tenant.deployment();
                let versions = deployment
                    .active
                    .iter()
                    .chain(deployment.canary.as_ref().map(|(p, _)| p))
                    .map(|p| p.version.clone())
                    .collect();
                let subs = subscriptions.get(&id).copied().unwrap_or(0);
                Some((id, tenant.quota.connections(), subs, versions))
            })
            .collect();
        crate::metrics::LiveSnapshot {
            tenants,
            breakers: breakers
                .iter()
                .map(|b| (b.name().to_owned(), b.state_code()))
                .collect(),
        }
    })
}

/// Tenant SQL when `[postgres]` is configured (it connects lazily).
fn tenant_sql(
    config: &Config,
) -> Result<Option<Arc<crate::backend::postgres::TenantSql>>, CliError> {
    use crate::backend::postgres::{DEV_PASSWORD_SECRET, SqlSettings, TenantSql};
    let Some(pg) = &config.postgres else {
        return Ok(None);
    };
    let secret = match &pg.tenant_password_secret {
        Some(s) => s.clone(),
        None => {
            tracing::warn!(
                "[postgres] tenant_password_secret is not set: tenant roles get passwords derived from a fixed development secret; set it in production"
            );
            DEV_PASSWORD_SECRET.to_owned()
        }
    };
    let sql = TenantSql::new(SqlSettings {
        url: pg.url.clone(),
        tenant_prefix: pg.tenant_prefix.clone(),
        password_secret: secret.into_bytes(),
        max_connections: pg.max_connections,
        tenant_urls: pg
            .tenant_urls
            .iter()
            .filter_map(|(id, url)| Some((TenantId::parse(id).ok()?, url.clone())))
            .collect(),
    })
    .map_err(CliError::Sql)?;
    Ok(Some(sql))
}

/// The LISTEN/NOTIFY bridge when `[postgres]` is configured and
/// `[notify] enabled` (the default): the bridge (its listeners stop when
/// it is dropped) and its task, to abort at shutdown.
fn notify_bridge(
    config: &Config,
    sql: Option<Arc<crate::backend::postgres::TenantSql>>,
    registry: &Arc<Registry>,
) -> Option<(
    Arc<crate::notify::NotifyBridge>,
    tokio::task::JoinHandle<()>,
)> {
    let (Some(pg), Some(sql)) = (&config.postgres, sql) else {
        return None;
    };
    if !config.notify.enabled {
        return None;
    }
    let isolated = pg
        .tenant_urls
        .iter()
        .filter_map(|(id, url)| Some((TenantId::parse(id).ok()?, url.clone())))
        .collect();
    let bridge = crate::notify::NotifyBridge::new(
        sql,
        Arc::clone(registry),
        pg.url.clone(),
        isolated,
        config.notify.settings(),
    );
    let task = bridge.spawn();
    Some((bridge, task))
}

/// The host's own Postgres tables when `[postgres]` is configured (it
/// connects lazily).
fn host_tables(
    config: &Config,
) -> Result<Option<Arc<crate::backend::postgres::host_tables::HostTables>>, CliError> {
    let Some(pg) = &config.postgres else {
        return Ok(None);
    };
    let tenant_urls = pg
        .tenant_urls
        .iter()
        .filter_map(|(id, url)| Some((TenantId::parse(id).ok()?, url.clone())))
        .collect();
    crate::backend::postgres::host_tables::HostTables::new(
        &pg.url,
        &pg.tenant_prefix,
        &tenant_urls,
        HOST_TABLE_CONNECTIONS,
    )
    .map(Some)
    .map_err(CliError::Sql)
}

/// Connections per database of the host's own Postgres tables.
const HOST_TABLE_CONNECTIONS: usize = 8;

/// Connections per database of the durable replay buffers (a pool of
/// their own: a publish holds its connection while it delivers).
const REPLAY_CONNECTIONS: usize = 16;

/// The durable replay buffers when `[replay] store = "postgres"` (the
/// config checked `[postgres]` is set): on the host tables' schema, with a
/// pool of their own. The bus [`build_backends`] makes numbers and buffers
/// its events there (one seq source).
fn durable_replay(
    config: &Config,
    tables: Option<&Arc<crate::backend::postgres::host_tables::HostTables>>,
) -> Result<Option<crate::backend::replay::DurableReplay>, CliError> {
    use crate::config::StoreChoice;
    if config.replay.store != StoreChoice::Postgres {
        return Ok(None);
    }
    let (Some(pg), Some(_)) = (&config.postgres, tables) else {
        return Err(CliError::Sql(
            crate::backend::postgres::SqlFailure::unavailable(
                "replay.store = \"postgres\" needs [postgres]",
            ),
        ));
    };
    let tenant_urls = pg
        .tenant_urls
        .iter()
        .filter_map(|(id, url)| Some((TenantId::parse(id).ok()?, url.clone())))
        .collect();
    let own = crate::backend::postgres::host_tables::HostTables::new(
        &pg.url,
        &pg.tenant_prefix,
        &tenant_urls,
        REPLAY_CONNECTIONS,
    )
    .map_err(CliError::Sql)?;
    let settings = config.replay.settings();
    let replay = crate::backend::replay::PostgresReplay::new(
        own,
        settings,
        config.replay.cleanup_interval(),
    );
    tracing::info!(
        size = settings.size,
        ttl_s = settings.ttl.map_or(0, |t| t.as_secs()),
        cleanup_interval_ms = config.replay.cleanup_interval().as_millis() as u64,
        "replay buffers on Postgres (the bus numbers events there)"
    );
    Ok(Some(crate::backend::replay::DurableReplay::new(replay)))
}

/// Put the stores `store = "postgres"` asks for (`[idempotency]`; the
/// replay buffers are made with the bus, see [`durable_replay`]) on the
/// host tables (the config checked `[postgres]` is set).
fn durable_stores(config: &Config, backends: &mut Backends) -> Result<(), CliError> {
    use crate::config::StoreChoice;
    let tables = || {
        backends.host_tables.clone().ok_or_else(|| {
            CliError::Sql(crate::backend::postgres::SqlFailure::unavailable(
                "a store on Postgres needs [postgres]",
            ))
        })
    };
    if config.idempotency.store == StoreChoice::Postgres {
        backends.idempotency =
            crate::backend::idempotency::postgres::PostgresIdempotency::new(tables()?);
        tracing::info!("idempotency records on Postgres");
    }
    Ok(())
}

/// The backends `config` asks for: in memory, or on Redis (`[redis]`, per
/// extension, and per tenant with `tenant_urls`) — the bus then fans out
/// through `hub` on every host. With `durable` replay buffers the bus
/// numbers and buffers there.
async fn build_backends(
    config: &Config,
    hub: &Arc<Hub>,
    durable: Option<&crate::backend::replay::DurableReplay>,
) -> Result<Backends, CliError> {
    let replay = config.replay.settings();
    let Some(r) = &config.redis else {
        let mut backends = memory::backends_with_durable_replay(Arc::clone(hub), replay, durable);
        backends.groups = Groups::new(
            Arc::new(MemoryGroups::new()),
            Arc::clone(hub),
            Arc::clone(&backends.bus),
            config.groups.member_ttl(),
        );
        return Ok(backends);
    };
    let backends =
        redis_backend::fleet_backends(r, hub, replay, config.groups.member_ttl(), durable)
            .await
            .map_err(CliError::Redis)?;
    tracing::info!(
        namespace = %r.namespace,
        bus = r.bus,
        bus_mode = ?r.bus_mode,
        kv = r.kv,
        ratelimit = r.ratelimit,
        lock = r.lock,
        idempotency = r.idempotency,
        presence = r.presence,
        publish_rates = r.publish_rates,
        groups = r.groups,
        cursors = r.cursors,
        tenants_with_own_redis = r.tenant_urls.len(),
        "Redis backends connected"
    );
    Ok(backends)
}

async fn bind(addr: &str) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CliError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

fn local_addr(listener: &TcpListener, configured: &str) -> Result<std::net::SocketAddr, CliError> {
    listener.local_addr().map_err(|source| CliError::Bind {
        addr: configured.to_owned(),
        source,
    })
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_arguments() {
        let cli = Cli::try_parse_from([
            "tenantry",
            "serve",
            "--config",
            "t.toml",
            "--listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.config, Some(PathBuf::from("t.toml")));
        assert_eq!(args.listen.as_deref(), Some("127.0.0.1:0"));
        assert!(Cli::try_parse_from(["tenantry", "serve", "--bogus"]).is_err());
        let cli = Cli::try_parse_from([
            "tenantry",
            "serve",
            "--admin-listen",
            "127.0.0.1:9090",
            "--data-dir",
            "/srv/tenantry",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.admin_listen.as_deref(), Some("127.0.0.1:9090"));
        assert_eq!(args.data_dir, Some(PathBuf::from("/srv/tenantry")));
    }
}
