//! Tenant SQL on PostgreSQL (`[postgres]`): each tenant's schema and role
//! ([`provision`]) and the statements of the `sql` import ([`TenantSql::run`]).
//!
//! **One pool manager for the host, one pool per tenant role.** A tenant's
//! statements must run on connections that *logged in* as its role: a
//! superuser connection that did `SET ROLE` can be switched back with
//! `RESET ROLE`, a connection logged in as the tenant cannot become anyone
//! else. So [`TenantSql`] keeps a deadpool pool per tenant, created on the
//! tenant's first call (after provisioning its role and schema, again, in
//! case they are new or the plan changed), sized by the plan's
//! `sql_max_connections` (the tenant's cap on this host; the role's
//! `CONNECTION LIMIT` caps it across the fleet). A tenant of the isolated
//! tier (`[postgres.tenant_urls]`) has its schema, role and pool in a
//! database of its own; everything else is the same. Every checkout also takes
//! a permit of one host-wide semaphore (`[postgres] max_connections`), so
//! all tenants together never use more than that at once and one tenant
//! cannot take every connection. Connections idle for
//! [`IDLE_CONNECTION`] are closed and pools unused for [`IDLE_POOL`]
//! dropped; at most [`MAX_POOLS`] pools exist (the least recently used idle
//! one makes room).
//!
//! **One call, one unit.** A call runs its statement (or, for a
//! transaction, `BEGIN`, its statements, `COMMIT`) and then resets the
//! session ([`RESET_SESSION`]: rolls back anything left open, resets every
//! `SET`, drops prepared statements, temporary tables, listens and
//! advisory locks) before the connection goes back to the pool; a
//! connection that fails that, or whose call was cut off, is discarded.
//! The whole call is bounded by the plan's `sql_statement_timeout_ms`: the
//! role's `statement_timeout` normally ends a slow statement, and if the
//! plugin turned that off the host cancels the query itself a moment
//! later. Rows are streamed and counted against `sql_max_rows` and
//! `sql_max_result_bytes` as they arrive; the query is cancelled at a cap.

pub mod host_tables;
pub mod jobs;
pub mod notify;
pub mod provision;
pub mod schedules;
pub mod stores;
pub mod tasks;
pub mod value;

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool, PoolError};
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_postgres::{Client, NoTls};

use crate::catalog::postgres::{build_pool, client_config, describe};
use crate::plan::Plan;
use crate::tenant::TenantId;
pub use value::SqlValue;

/// The password secret used when `[postgres] tenant_password_secret` is
/// unset (development only: trust auth ignores passwords).
pub const DEV_PASSWORD_SECRET: &str = "tenantry-dev-tenant-password-secret";
/// A connection unused this long is closed.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(10);
/// A tenant pool unused this long is dropped.
pub const IDLE_POOL: Duration = Duration::from_secs(60);
/// Most tenant pools kept at once.
pub const MAX_POOLS: usize = 1024;
/// Longest wait for a host-wide permit and then for a tenant connection.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after the plan's statement timeout the host cancels a query
/// itself (Postgres's own `statement_timeout` normally ends it first).
const CANCEL_GRACE: Duration = Duration::from_millis(250);
/// Connections of the host's own pool (provisioning and dropping).
const ADMIN_CONNECTIONS: usize = 4;
/// Bound on provisioning or dropping one tenant.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle connections and pools are looked for.
const REAP_EVERY: Duration = Duration::from_secs(5);

/// Run after every call, before the connection is reused: ends any open
/// transaction and resets all session state the plugin could change (what
/// `DISCARD ALL` does; that one refuses to run in a multi-statement string).
const RESET_SESSION: &str = "ROLLBACK; CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; \
     DEALLOCATE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD PLANS; \
     DISCARD SEQUENCES; DISCARD TEMP";

/// What a failed SQL call reports to the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlErrorKind {
    /// Postgres refused a privilege (SQLSTATE 42501).
    AccessDenied,
    /// Syntax, undefined names, bad data, constraint violations, or an
    /// unsupported parameter or column type.
    Invalid,
    /// The call ran past the plan's statement timeout.
    Timeout,
    /// A row, result, statement or temporary-file size cap of the plan.
    TooLarge,
    /// SQL not configured, the database down, or no connection free.
    Unavailable,
    /// Any other database error.
    Other,
}

/// A failed SQL call: its class, Postgres's SQLSTATE and message (or the
/// host's), and in a transaction which statement failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlFailure {
    /// The class of failure.
    pub kind: SqlErrorKind,
    /// The SQLSTATE when Postgres reported it.
    pub sqlstate: Option<String>,
    /// The message the plugin sees.
    pub message: String,
    /// In a transaction, the 0-based index of the failing statement.
    pub statement: Option<u32>,
}

impl SqlFailure {
    fn new(kind: SqlErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            sqlstate: None,
            message: message.into(),
            statement: None,
        }
    }

    /// `unavailable` with `message`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(SqlErrorKind::Unavailable, message)
    }

    fn at(mut self, statement: usize) -> Self {
        self.statement = u32::try_from(statement).ok();
        self
    }
}

/// A Postgres error as the plugin sees it: the class from the SQLSTATE,
/// Postgres's own message.
pub fn pg_failure(e: &tokio_postgres::Error) -> SqlFailure {
    let Some(db) = e.as_db_error() else {
        return SqlFailure::unavailable(format!("database connection failed: {}", describe(e)));
    };
    let code = db.code().code();
    let kind = match code {
        "42501" => SqlErrorKind::AccessDenied,
        "57014" => SqlErrorKind::Timeout,
        // temp_file_limit (the plan's sql_max_temp_file_mb).
        "53400" => SqlErrorKind::TooLarge,
        _ if code.starts_with("28") => SqlErrorKind::AccessDenied,
        _ if ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c)) => {
            SqlErrorKind::Unavailable
        }
        _ if [
            "42", "22", "23", "0A", "21", "25", "2B", "3D", "3F", "44", "54",
        ]
        .iter()
        .any(|c| code.starts_with(c)) =>
        {
            SqlErrorKind::Invalid
        }
        _ => SqlErrorKind::Other,
    };
    SqlFailure {
        kind,
        sqlstate: Some(code.to_owned()),
        message: db.message().to_owned(),
        statement: None,
    }
}

/// A failure of the host's own (provisioning) SQL.
fn admin_failure(e: tokio_postgres::Error) -> SqlFailure {
    let mut f = pg_failure(&e);
    f.kind = SqlErrorKind::Unavailable;
    f.message = format!("tenant provisioning failed: {}", describe(&e));
    f
}

/// The SQL limits of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    /// Run time of one call; the role's `statement_timeout`.
    pub timeout: Duration,
    /// Rows one call may return.
    pub max_rows: u64,
    /// Bytes of JSON one call may return.
    pub max_result_bytes: u64,
    /// Connections of the tenant's role.
    pub max_connections: u32,
    /// Bytes of SQL text plus parameters in one call.
    pub max_statement_bytes: u64,
    /// Temporary-file space of one statement, MiB: the role's
    /// `temp_file_limit`.
    pub max_temp_file_mb: u64,
}

impl SqlLimits {
    /// The SQL limits of `plan`.
    pub fn of(plan: &Plan) -> Self {
        Self {
            timeout: plan.sql_statement_timeout(),
            max_rows: plan.sql_max_rows,
            max_result_bytes: plan.sql_max_result_bytes,
            max_connections: u32::try_from(plan.sql_max_connections).unwrap_or(u32::MAX),
            max_statement_bytes: plan.sql_max_statement_bytes,
            max_temp_file_mb: plan.sql_max_temp_file_mb,
        }
    }
}

/// One statement of a call.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL text (one statement).
    pub sql: String,
    /// Its bind parameters.
    pub params: Vec<SqlValue>,
}

/// What one statement produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its rows as a JSON array of objects.
    pub rows: String,
    /// Rows affected (or returned).
    pub affected: u64,
}

/// What [`TenantSql::new`] needs.
#[derive(Clone)]
pub struct SqlSettings {
    /// The connection URL of a superuser (or a role with CREATEROLE that
    /// may create schemas); tenant connections use its host and database.
    pub url: String,
    /// First part of every tenant's schema and role name.
    pub tenant_prefix: String,
    /// Secret the role passwords derive from.
    pub password_secret: Vec<u8>,
    /// Tenant connections in use at once on this host.
    pub max_connections: usize,
    /// The isolated tier: tenants whose schema and role live in a database
    /// of their own, with the (superuser) URL of that database.
    pub tenant_urls: BTreeMap<TenantId, String>,
}

/// A database tenants live in: its host-side pool (provisioning) and the
/// settings tenant connections start from.
struct Database {
    admin: Pool,
    base: tokio_postgres::Config,
}

impl Database {
    fn new(url: &str) -> Result<Self, SqlFailure> {
        let base = client_config(url)
            .map_err(|e| SqlFailure::unavailable(format!("bad PostgreSQL url: {e}")))?;
        let admin = build_pool(base.clone(), ADMIN_CONNECTIONS, ADMIN_TIMEOUT)
            .map_err(SqlFailure::unavailable)?;
        Ok(Self { admin, base })
    }
}

struct TenantPool {
    pool: Pool,
    /// The tenant's calls in flight on this host, at most its pool size:
    /// taken before the host-wide permit, so a tenant's queued calls never
    /// hold permits other tenants could use.
    slots: Arc<Semaphore>,
    limits: SqlLimits,
    last_used: Instant,
}

/// The host's tenant SQL: provisioning, pools and calls. See the module docs.
pub struct TenantSql {
    /// The database of `[postgres] url`, where tenants live by default.
    shared: Database,
    /// The databases of isolated tenants.
    isolated: HashMap<TenantId, Database>,
    prefix: String,
    secret: Vec<u8>,
    host_slots: Arc<Semaphore>,
    pools: parking_lot::Mutex<HashMap<TenantId, TenantPool>>,
}

impl TenantSql {
    /// The tenant SQL service of `settings`: checks the URL and starts the
    /// reaper of idle connections and pools (it ends with the service).
    /// Connects lazily. Must run inside a tokio runtime.
    pub fn new(settings: SqlSettings) -> Result<Arc<Self>, SqlFailure> {
        let shared = Database::new(&settings.url)?;
        let isolated = settings
            .tenant_urls
            .iter()
            .map(|(id, url)| {
                Database::new(url)
                    .map(|db| (id.clone(), db))
                    .map_err(|e| SqlFailure::unavailable(format!("tenant {id}: {}", e.message)))
            })
            .collect::<Result<_, _>>()?;
        let this = Arc::new(Self {
            shared,
            isolated,
            prefix: settings.tenant_prefix,
            secret: settings.password_secret,
            host_slots: Arc::new(Semaphore::new(settings.max_connections)),
            pools: parking_lot::Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(reap(weak));
        Ok(this)
    }

    /// The name of `tenant`'s schema and role.
    pub fn ident(&self, tenant: &TenantId) -> String {
        provision::tenant_ident(&self.prefix, tenant)
    }

    /// Create `tenant`'s role and schema, or bring them up to date with
    /// `limits` (idempotent; safe when several hosts do it at once).
    pub async fn provision(&self, tenant: &TenantId, limits: &SqlLimits) -> Result<(), SqlFailure> {
        let name = self.ident(tenant);
        let password = provision::tenant_password(&self.secret, tenant);
        let work = async {
            let mut client = self.admin_client(tenant).await?;
            let tx = client.transaction().await.map_err(admin_failure)?;
            provision::provision(&tx, &name, &password, limits).await?;
            tx.commit().await.map_err(admin_failure)
        };
        tokio::time::timeout(ADMIN_TIMEOUT, work)
            .await
            .map_err(|_| SqlFailure::unavailable("tenant provisioning timed out"))??;
        tracing::debug!(tenant = %tenant, role = %name, "tenant SQL role and schema provisioned");
        Ok(())
    }

    /// Drop `tenant`'s pool here, its sessions everywhere, its schema with
    /// all its data, and its role. `true` if there was a role or schema.
    pub async fn drop_tenant(&self, tenant: &TenantId) -> Result<bool, SqlFailure> {
        self.forget(tenant);
        let name = self.ident(tenant);
        let work = async {
            let mut client = self.admin_client(tenant).await?;
            // No new sessions from here on (committed before they are ended).
            let tx = client.transaction().await.map_err(admin_failure)?;
            provision::disable_login(&tx, &name).await?;
            tx.commit().await.map_err(admin_failure)?;
            let tx = client.transaction().await.map_err(admin_failure)?;
            let existed = provision::drop_tenant(&tx, &name).await?;
            tx.commit().await.map_err(admin_failure)?;
            Ok::<_, SqlFailure>(existed)
        };
        let existed = tokio::time::timeout(ADMIN_TIMEOUT, work)
            .await
            .map_err(|_| SqlFailure::unavailable("dropping the tenant's schema timed out"))??;
        tracing::info!(tenant = %tenant, role = %name, existed, "tenant SQL role and schema dropped");
        Ok(existed)
    }

    /// Close this host's pool of `tenant` (deleted elsewhere, or going away).
    pub fn forget(&self, tenant: &TenantId) {
        if let Some(p) = self.pools.lock().remove(tenant) {
            p.pool.close();
        }
    }

    /// The database `tenant` lives in: its own (isolated tier) or the shared one.
    fn database(&self, tenant: &TenantId) -> &Database {
        self.isolated.get(tenant).unwrap_or(&self.shared)
    }

    async fn admin_client(&self, tenant: &TenantId) -> Result<Object, SqlFailure> {
        self.database(tenant)
            .admin
            .get()
            .await
            .map_err(|e| pool_failure(&e))
    }

    /// The pool of `tenant` for `limits` and its call slots: the existing
    /// one, or (first call, or the plan changed) a new one after
    /// provisioning.
    async fn pool(
        &self,
        tenant: &TenantId,
        limits: &SqlLimits,
    ) -> Result<(Pool, Arc<Semaphore>), SqlFailure> {
        {
            let mut pools = self.pools.lock();
            if let Some(p) = pools.get_mut(tenant)
                && p.limits == *limits
            {
                p.last_used = Instant::now();
                return Ok((p.pool.clone(), Arc::clone(&p.slots)));
            }
        }
        self.provision(tenant, limits).await?;
        let mut config = self.database(tenant).base.clone();
        config
            .user(self.ident(tenant))
            .password(provision::tenant_password(&self.secret, tenant))
            // Options from the operator's URL (`-c ...`) would override the
            // role's own settings: none for tenants.
            .options("")
            .application_name("tenantry-tenant");
        let max = usize::try_from(limits.max_connections).unwrap_or(usize::MAX);
        let pool = build_pool(config, max, CHECKOUT_TIMEOUT).map_err(SqlFailure::unavailable)?;
        let mut pools = self.pools.lock();
        if pools.len() >= MAX_POOLS && !pools.contains_key(tenant) {
            let oldest = pools
                .iter()
                .filter(|(_, p)| p.slots.available_permits() == p.pool.status().max_size)
                .min_by_key(|(_, p)| p.last_used)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    if let Some(p) = pools.remove(&id) {
                        p.pool.close();
                    }
                }
                None => {
                    return Err(SqlFailure::unavailable(
                        "too many tenants are using SQL on this host at once",
                    ));
                }
            }
        }
        let slots = Arc::new(Semaphore::new(max));
        if let Some(old) = pools.insert(
            tenant.clone(),
            TenantPool {
                pool: pool.clone(),
                slots: Arc::clone(&slots),
                limits: *limits,
                last_used: Instant::now(),
            },
        ) {
            old.pool.close();
        }
        Ok((pool, slots))
    }

    /// Run `statements` for `tenant` under `limits`: one statement on its
    /// own, or several (`atomic`) in one transaction that commits only if
    /// all succeed. See the module docs for the bounds.
    pub async fn run(
        &self,
        tenant: &TenantId,
        limits: &SqlLimits,
        statements: Vec<Statement>,
        atomic: bool,
    ) -> Result<Vec<Outcome>, SqlFailure> {
        let size: usize = statements
            .iter()
            .map(|s| s.sql.len() + s.params.iter().map(SqlValue::size).sum::<usize>())
            .sum();
        if size as u64 > limits.max_statement_bytes {
            return Err(SqlFailure::new(
                SqlErrorKind::TooLarge,
                format!(
                    "the SQL is {size} bytes; this plan allows {} (sql_max_statement_bytes)",
                    limits.max_statement_bytes
                ),
            ));
        }
        let (pool, slots) = self.pool(tenant, limits).await?;
        // First the tenant's own slot, then the host's: a tenant at its cap
        // waits without holding a host permit.
        let _slot = tokio::time::timeout(CHECKOUT_TIMEOUT, slots.acquire_owned())
            .await
            .map_err(|_| {
                SqlFailure::unavailable(
                    "every SQL connection of this tenant is busy (sql_max_connections)",
                )
            })?
            .map_err(|_| SqlFailure::unavailable("the tenant's SQL pool was closed"))?;
        let _permit = tokio::time::timeout(CHECKOUT_TIMEOUT, self.host_slots.acquire())
            .await
            .map_err(|_| SqlFailure::unavailable("every SQL connection of this host is busy"))?
            .map_err(|_| SqlFailure::unavailable("SQL is shutting down"))?;
        let deadline = tokio::time::Instant::now() + limits.timeout + CANCEL_GRACE;
        let client = checkout(&pool, tokio::time::Instant::now() + CHECKOUT_TIMEOUT).await?;
        let cancel = client.cancel_token();
        let work = execute(&client, statements, atomic, limits);
        match tokio::time::timeout_at(deadline, work).await {
            Ok(Ok(outcomes)) => {
                reset(client).await;
                Ok(outcomes)
            }
            Ok(Err(Failed { failure, cut_off })) => {
                if cut_off {
                    // Rows are still coming: stop the query, drop the connection.
                    let _ = cancel.cancel_query(NoTls).await;
                    drop(Object::take(client));
                } else {
                    reset(client).await;
                }
                Err(failure)
            }
            Err(_) => {
                let _ = cancel.cancel_query(NoTls).await;
                drop(Object::take(client));
                Err(SqlFailure::new(
                    SqlErrorKind::Timeout,
                    format!(
                        "canceling statement due to statement timeout ({} ms, sql_statement_timeout_ms)",
                        limits.timeout.as_millis()
                    ),
                ))
            }
        }
    }
}

/// Reset the session of a connection going back to its pool; discard it
/// if that fails.
async fn reset(client: Object) {
    match client.batch_execute(RESET_SESSION).await {
        Ok(()) => client.clear_type_cache(),
        Err(e) => {
            tracing::debug!(error = %e, "discarding a tenant SQL connection that could not be reset");
            drop(Object::take(client));
        }
    }
}

/// A connection of `pool`. The role's `CONNECTION LIMIT` counts the
/// tenant's connections on every host, so a new connection may be refused
/// (`53300`) while another host holds them; that is waited out (retrying
/// every [`CONNECTION_RETRY`]) until `deadline`, like a full pool.
async fn checkout(pool: &Pool, deadline: tokio::time::Instant) -> Result<Object, SqlFailure> {
    loop {
        match pool.get().await {
            Ok(client) => return Ok(client),
            Err(PoolError::Backend(e))
                if e.as_db_error().map(|d| d.code().code()) == Some("53300")
                    && tokio::time::Instant::now() + CONNECTION_RETRY < deadline =>
            {
                tokio::time::sleep(CONNECTION_RETRY).await;
            }
            Err(PoolError::Backend(e))
                if e.as_db_error().map(|d| d.code().code()) == Some("53300") =>
            {
                return Err(SqlFailure::unavailable(format!(
                    "every SQL connection of this tenant is in use across the fleet \
                     (sql_max_connections): {}",
                    describe(&e)
                )));
            }
            Err(e) => return Err(pool_failure(&e)),
        }
    }
}

/// How often a checkout refused by the role's connection limit tries again.
const CONNECTION_RETRY: Duration = Duration::from_millis(25);

fn pool_failure(e: &PoolError) -> SqlFailure {
    match e {
        PoolError::Backend(e) => {
            let mut f = pg_failure(e);
            f.kind = SqlErrorKind::Unavailable;
            f
        }
        PoolError::Timeout(_) => SqlFailure::unavailable(
            "no SQL connection of this tenant became free in time (sql_max_connections)",
        ),
        e => SqlFailure::unavailable(format!("database connection failed: {}", describe(e))),
    }
}

/// A failure while executing, and whether it cut a result stream short
/// (the connection is then mid-query).
struct Failed {
    failure: SqlFailure,
    cut_off: bool,
}

impl From<SqlFailure> for Failed {
    fn from(failure: SqlFailure) -> Self {
        Self {
            failure,
            cut_off: false,
        }
    }
}

async fn execute(
    client: &Client,
    statements: Vec<Statement>,
    atomic: bool,
    limits: &SqlLimits,
) -> Result<Vec<Outcome>, Failed> {
    if atomic {
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| pg_failure(&e))?;
    }
    let mut budget = Budget {
        rows: limits.max_rows,
        bytes: limits.max_result_bytes,
    };
    let mut outcomes = Vec::with_capacity(statements.len());
    for (i, s) in statements.into_iter().enumerate() {
        let out = one(client, s, &mut budget).await.map_err(|mut f| {
            if atomic {
                f.failure = f.failure.at(i);
            }
            f
        })?;
        outcomes.push(out);
    }
    if atomic {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg_failure(&e))?;
    }
    Ok(outcomes)
}

/// What a call may still return.
struct Budget {
    rows: u64,
    bytes: u64,
}

async fn one(client: &Client, s: Statement, budget: &mut Budget) -> Result<Outcome, Failed> {
    let stmt = client.prepare(&s.sql).await.map_err(|e| pg_failure(&e))?;
    if stmt.params().len() != s.params.len() {
        return Err(SqlFailure::new(
            SqlErrorKind::Invalid,
            format!(
                "the statement has {} parameter(s); {} given",
                stmt.params().len(),
                s.params.len()
            ),
        )
        .into());
    }
    if let Some(c) = stmt.columns().iter().find(|c| !value::supported(c.type_())) {
        return Err(SqlFailure::new(
            SqlErrorKind::Invalid,
            format!(
                "column {:?} has type {}, which SQL results cannot carry; cast it in the SQL (e.g. {}::text)",
                c.name(),
                c.type_(),
                c.name()
            ),
        )
        .into());
    }
    let params = s
        .params
        .into_iter()
        .zip(stmt.params())
        .enumerate()
        .map(|(i, (v, ty))| value::encode(i + 1, ty, v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| SqlFailure::new(SqlErrorKind::Invalid, m))?;
    let rows = client
        .query_raw(&stmt, params.iter())
        .await
        .map_err(|e| pg_failure(&e))?;
    let mut rows = pin!(rows);
    let mut out = String::from("[");
    let mut count: u64 = 0;
    let too_large = |m: String| Failed {
        failure: SqlFailure::new(SqlErrorKind::TooLarge, m),
        cut_off: true,
    };
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| Failed {
            failure: pg_failure(&e),
            cut_off: false,
        })?;
        if budget.rows == 0 {
            return Err(too_large(
                "the result has more rows than this plan allows in one call (sql_max_rows)".into(),
            ));
        }
        budget.rows -= 1;
        let mut object = serde_json::Map::with_capacity(row.len());
        for (i, column) in row.columns().iter().enumerate() {
            let raw: value::Raw<'_> = row.try_get(i).map_err(|e| Failed {
                failure: SqlFailure::new(SqlErrorKind::Invalid, describe(&e)),
                cut_off: true,
            })?;
            let v = value::decode(column.type_(), raw.0).map_err(|m| Failed {
                failure: SqlFailure::new(
                    SqlErrorKind::Invalid,
                    format!("column {:?}: {m}", column.name()),
                ),
                cut_off: true,
            })?;
            object.insert(column.name().to_owned(), v);
        }
        let text = serde_json::Value::Object(object).to_string();
        let len = text.len() as u64 + 1;
        if len > budget.bytes {
            return Err(too_large(
                "the result is larger than this plan allows in one call (sql_max_result_bytes)"
                    .into(),
            ));
        }
        budget.bytes -= len;
        if count > 0 {
            out.push(',');
        }
        out.push_str(&text);
        count += 1;
    }
    out.push(']');
    Ok(Outcome {
        rows: out,
        affected: rows.rows_affected().unwrap_or(count),
    })
}

/// Close idle connections and drop idle pools until `sql` is gone.
async fn reap(sql: Weak<TenantSql>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(sql) = sql.upgrade() else { return };
        let mut pools = sql.pools.lock();
        pools.retain(|_, p| {
            p.pool.retain(|_, m| m.last_used() < IDLE_CONNECTION);
            let idle = p.last_used.elapsed() >= IDLE_POOL && p.pool.status().size == 0;
            if idle {
                p.pool.close();
            }
            !idle
        });
    }
}

#[cfg(test)]
mod tests;
