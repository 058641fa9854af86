//! [`PostgresCatalog`]: the catalog in PostgreSQL, shared by every host
//! configured with the same database and schema (a fleet).
//!
//! ```text
//! <schema>.tenants(id text primary key, record jsonb not null,
//!                  revision bigint not null, updated_at timestamptz default now())
//! <schema>.plugin_blobs(tenant text not null, sha256 text not null,
//!                       bytes bytea not null, primary key (tenant, sha256))
//! ```
//!
//! [`PostgresCatalog::connect`] creates the schema and tables if needed,
//! inside a transaction holding an advisory lock, so hosts starting at the
//! same moment do not race. Every write that changes a record ([`put`],
//! [`delete`]) sends `pg_notify('<schema>_catalog', '<tenant id>')` in the
//! same transaction: the notification goes out when the write commits, and
//! only then. [`PostgresCatalog::changes`] listens on that channel over a
//! dedicated connection (one task per receiver, ending when the receiver is
//! dropped), reconnects on its own with backoff (100 ms doubling to 5 s)
//! and sends [`CatalogChange::All`] after every (re)connect and after
//! changes were dropped because the receiver fell 1024 behind.
//!
//! The record is stored as its JSON (the same serde form the disk store
//! writes). `jsonb` cannot hold the character U+0000, so a record with a NUL
//! in one of its strings is refused by `put` (an `Io` error).
//!
//! Connections are plain TCP or Unix sockets (no TLS).
//!
//! [`put`]: CatalogStore::put
//! [`delete`]: CatalogStore::delete

use std::fmt;
use std::pin::pin;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{CatalogChange, CatalogError, CatalogStore, TenantRecord};
use super::{check_blob_bytes, check_sha256};
use crate::tenant::TenantId;

/// Most connections the pool opens (the listeners have their own).
const MAX_CONNECTIONS: usize = 8;
/// Bound on opening one connection (TCP connect and start-up).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for a free pooled connection.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the whole of [`PostgresCatalog::connect`] (connect + migration).
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive: idle time before the first probe, so a dead peer is
/// noticed within about a minute instead of hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// TCP keepalive: time between probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// TCP keepalive: unanswered probes before the connection is dropped.
const KEEPALIVE_RETRIES: u32 = 3;
/// Capacity of each [`PostgresCatalog::changes`] channel.
const CHANGES_CAPACITY: usize = 1024;
/// First wait before the listener reconnects; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait before the listener reconnects.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Advisory lock key held (per transaction) while creating the schema and
/// tables: `tenantry` in ASCII.
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e74_7279;
/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

/// The catalog in a PostgreSQL schema; see the module docs.
pub struct PostgresCatalog {
    /// Pooled connections for the store's operations.
    pool: Pool,
    /// How to open a connection (the listeners' own).
    config: tokio_postgres::Config,
    /// The schema (validated: safe inside double quotes).
    schema: String,
    /// The notification channel, `<schema>_catalog` (at most 63 bytes).
    channel: String,
    /// The runtime `connect` ran on; listener tasks are spawned on it.
    runtime: tokio::runtime::Handle,
    /// The SQL of every operation, with the schema filled in.
    sql: Sql,
}

/// Every statement the store runs, built once for its schema.
struct Sql {
    /// Create the schema and both tables (idempotent).
    migrate: String,
    /// `$1` id, `$2` record JSON, `$3` revision: insert or replace.
    upsert: String,
    /// `$1` id, `$2` record, `$3` revision: insert only if absent.
    insert_new: String,
    /// `$1` id, `$2` record, `$3` revision, `$4` revision read: update only if unchanged.
    update_if: String,
    /// `$1` id: the record as JSON text.
    get: String,
    /// Every id and record as JSON text.
    list: String,
    /// `$1` id: remove its blobs.
    delete_blobs: String,
    /// `$1` id: remove its record.
    delete_record: String,
    /// `$1` tenant, `$2` sha256, `$3` bytes: store unless identical bytes are there.
    put_blob: String,
    /// `$1` tenant, `$2` sha256: the bytes.
    get_blob: String,
    /// `$1` tenant, `$2` sha256: remove them.
    delete_blob: String,
    /// `$1` channel, `$2` payload.
    notify: &'static str,
    /// Start listening on the channel.
    listen: String,
}

impl Sql {
    /// The statements for `schema` (validated) and `channel`.
    fn new(schema: &str, channel: &str) -> Self {
        let s = format!("\"{schema}\"");
        Self {
            migrate: format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.tenants (
                     id text PRIMARY KEY,
                     record jsonb NOT NULL,
                     revision bigint NOT NULL,
                     updated_at timestamptz DEFAULT now()
                 );
                 CREATE TABLE IF NOT EXISTS {s}.plugin_blobs (
                     tenant text NOT NULL,
                     sha256 text NOT NULL,
                     bytes bytea NOT NULL,
                     PRIMARY KEY (tenant, sha256)
                 );"
            ),
            upsert: format!(
                "INSERT INTO {s}.tenants (id, record, revision) VALUES ($1, $2::text::jsonb, $3)
                 ON CONFLICT (id) DO UPDATE
                 SET record = EXCLUDED.record, revision = EXCLUDED.revision, updated_at = now()"
            ),
            insert_new: format!(
                "INSERT INTO {s}.tenants (id, record, revision) VALUES ($1, $2::text::jsonb, $3)
                 ON CONFLICT (id) DO NOTHING"
            ),
            update_if: format!(
                "UPDATE {s}.tenants SET record = $2::text::jsonb, revision = $3, updated_at = now()
                 WHERE id = $1 AND revision = $4"
            ),
            get: format!("SELECT record::text FROM {s}.tenants WHERE id = $1"),
            list: format!("SELECT id, record::text FROM {s}.tenants"),
            delete_blobs: format!("DELETE FROM {s}.plugin_blobs WHERE tenant = $1"),
            delete_record: format!("DELETE FROM {s}.tenants WHERE id = $1"),
            // Identical bytes: nothing to do. Other bytes under the same
            // name can only be damaged ones (the new bytes were checked
            // against the name): replace them.
            put_blob: format!(
                "INSERT INTO {s}.plugin_blobs AS b (tenant, sha256, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant, sha256) DO UPDATE SET bytes = EXCLUDED.bytes
                 WHERE b.bytes <> EXCLUDED.bytes"
            ),
            get_blob: format!(
                "SELECT bytes FROM {s}.plugin_blobs WHERE tenant = $1 AND sha256 = $2"
            ),
            delete_blob: format!("DELETE FROM {s}.plugin_blobs WHERE tenant = $1 AND sha256 = $2"),
            notify: "SELECT pg_notify($1, $2)",
            listen: format!("LISTEN \"{channel}\""),
        }
    }
}

impl PostgresCatalog {
    /// Connect to the database at `url` (a `postgres://` URL or a
    /// `key=value` string) and use the catalog in `schema`, creating the
    /// schema and its tables if needed. `schema` must match
    /// `[a-z_][a-z0-9_]{0,62}`. Fails (never hangs) when the database is
    /// unreachable: connecting and migrating are bounded by timeouts.
    ///
    /// Connections get TCP keepalives (first probe after 30 s idle, so a
    /// dead server is noticed within about a minute) and, unless the URL
    /// sets one, a 5 s connect timeout.
    ///
    /// Must run inside a tokio runtime; [`CatalogStore::changes`] spawns its
    /// listeners on that runtime.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, CatalogError> {
        check_schema(schema)?;
        let config = client_config(url).map_err(|message| CatalogError::Io {
            op: "parse the PostgreSQL connection URL".to_owned(),
            message,
        })?;
        let pool =
            build_pool(config.clone(), MAX_CONNECTIONS, POOL_WAIT_TIMEOUT).map_err(|message| {
                CatalogError::Io {
                    op: "create the PostgreSQL connection pool".to_owned(),
                    message,
                }
            })?;
        let channel = channel_name(schema);
        let catalog = Self {
            pool,
            config,
            schema: schema.to_owned(),
            sql: Sql::new(schema, &channel),
            channel,
            runtime: tokio::runtime::Handle::current(),
        };
        let op = catalog.op("create the schema and tables");
        match tokio::time::timeout(SETUP_TIMEOUT, catalog.migrate(&op)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(CatalogError::Io {
                    op,
                    message: format!("timed out after {} s", SETUP_TIMEOUT.as_secs()),
                });
            }
        }
        Ok(catalog)
    }

    /// The schema the catalog lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The channel changes are notified on: `<schema>_catalog`, cut to
    /// PostgreSQL's 63-byte identifier limit.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Create the schema and tables, serialised with other hosts by a
    /// transaction-scoped advisory lock.
    async fn migrate(&self, op: &str) -> Result<(), CatalogError> {
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(db_error(op))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_error(op))?;
        tx.batch_execute(&self.sql.migrate)
            .await
            .map_err(db_error(op))?;
        tx.commit().await.map_err(db_error(op))
    }

    /// `what`, naming where: for error messages.
    fn op(&self, what: impl fmt::Display) -> String {
        format!("{what} (PostgreSQL schema {})", self.schema)
    }

    /// A pooled connection, for `op`; the time it is held (checkout and
    /// commands) is observed as `backend_command_duration_seconds
    /// {backend="postgres-registry"}`.
    async fn client(&self, op: &str) -> Result<TimedClient, CatalogError> {
        let started = std::time::Instant::now();
        let client = self.pool.get().await.map_err(db_error(op))?;
        Ok(TimedClient { client, started })
    }

    /// A receiver of the changes committed to this schema, fed by a new
    /// listener task holding at most `capacity` undelivered changes.
    fn changes_with_capacity(&self, capacity: usize) -> mpsc::Receiver<CatalogChange> {
        let (tx, rx) = mpsc::channel(capacity);
        let listener = Listener {
            config: self.config.clone(),
            listen: self.sql.listen.clone(),
            channel: self.channel.clone(),
            tx,
        };
        drop(self.runtime.spawn(listener.run()));
        rx
    }
}

/// A registry connection that reports how long it was used when dropped.
struct TimedClient {
    client: Object,
    started: std::time::Instant,
}

impl std::ops::Deref for TimedClient {
    type Target = Object;

    fn deref(&self) -> &Object {
        &self.client
    }
}

impl std::ops::DerefMut for TimedClient {
    fn deref_mut(&mut self) -> &mut Object {
        &mut self.client
    }
}

impl Drop for TimedClient {
    fn drop(&mut self) {
        crate::metrics::backend_command(REGISTRY_BACKEND, self.started.elapsed());
    }
}

/// The `backend` label of the registry's command latency.
const REGISTRY_BACKEND: &str = "postgres-registry";

impl fmt::Debug for PostgresCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresCatalog")
            .field("schema", &self.schema)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl CatalogStore for PostgresCatalog {
    async fn list(&self) -> Result<(Vec<TenantRecord>, Vec<(String, CatalogError)>), CatalogError> {
        let op = self.op("list tenants");
        let client = self.client(&op).await?;
        let rows = client
            .query(&self.sql.list, &[])
            .await
            .map_err(db_error(&op))?;
        let mut records = Vec::new();
        let mut errors = Vec::new();
        for row in rows {
            let id: String = row.try_get(0).map_err(db_error(&op))?;
            let json: String = row.try_get(1).map_err(db_error(&op))?;
            match self.decode(&id, &json) {
                Ok(record) => records.push(record),
                Err(e) => errors.push((id, e)),
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        errors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((records, errors))
    }

    async fn health(&self) -> Option<(&'static str, Result<(), CatalogError>)> {
        let op = self.op(format_args!("answer a health check"));
        let check = async {
            let client = self.client(&op).await?;
            client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(db_error(&op))
        };
        let result = tokio::time::timeout(std::time::Duration::from_secs(2), check)
            .await
            .unwrap_or_else(|_| {
                Err(CatalogError::Io {
                    op: op.clone(),
                    message: "no answer within 2 s".into(),
                })
            });
        Some(("postgres", result))
    }

    async fn get(&self, id: &TenantId) -> Result<Option<TenantRecord>, CatalogError> {
        let op = self.op(format_args!("read the record of tenant {id}"));
        let client = self.client(&op).await?;
        let row = client
            .query_opt(&self.sql.get, &[&id.as_str()])
            .await
            .map_err(db_error(&op))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let json: String = row.try_get(0).map_err(db_error(&op))?;
        self.decode(id.as_str(), &json).map(Some)
    }

    async fn put(&self, record: &TenantRecord) -> Result<(), CatalogError> {
        let id = record.id.as_str();
        let op = self.op(format_args!("write the record of tenant {id}"));
        let json = serde_json::to_string(record).map_err(|e| CatalogError::Io {
            op: op.clone(),
            message: format!("encode the record: {e}"),
        })?;
        let revision = i64::try_from(record.revision).map_err(|_| CatalogError::Io {
            op: op.clone(),
            message: format!("revision {} does not fit a bigint", record.revision),
        })?;
        let mut client = self.client(&op).await?;
        let tx = client.transaction().await.map_err(db_error(&op))?;
        tx.execute(&self.sql.upsert, &[&id, &json, &revision])
            .await
            .map_err(db_error(&op))?;
        tx.execute(self.sql.notify, &[&self.channel, &id])
            .await
            .map_err(db_error(&op))?;
        tx.commit().await.map_err(db_error(&op))
    }

    async fn replace(
        &self,
        record: &TenantRecord,
        read_revision: Option<u64>,
    ) -> Result<(), CatalogError> {
        let id = record.id.as_str();
        let op = self.op(format_args!("write the record of tenant {id}"));
        let json = serde_json::to_string(record).map_err(|e| CatalogError::Io {
            op: op.clone(),
            message: format!("encode the record: {e}"),
        })?;
        let bigint = |r: u64| {
            i64::try_from(r).map_err(|_| CatalogError::Io {
                op: op.clone(),
                message: format!("revision {r} does not fit a bigint"),
            })
        };
        let revision = bigint(record.revision)?;
        let mut client = self.client(&op).await?;
        let tx = client.transaction().await.map_err(db_error(&op))?;
        let written = match read_revision {
            None => tx
                .execute(&self.sql.insert_new, &[&id, &json, &revision])
                .await
                .map_err(db_error(&op))?,
            Some(read) => {
                let read = bigint(read)?;
                tx.execute(&self.sql.update_if, &[&id, &json, &revision, &read])
                    .await
                    .map_err(db_error(&op))?
            }
        };
        if written != 1 {
            // Dropping the transaction rolls it back.
            return Err(CatalogError::Conflict { id: id.to_owned() });
        }
        tx.execute(self.sql.notify, &[&self.channel, &id])
            .await
            .map_err(db_error(&op))?;
        tx.commit().await.map_err(db_error(&op))
    }

    async fn delete(&self, id: &TenantId) -> Result<bool, CatalogError> {
        let op = self.op(format_args!("delete tenant {id}"));
        let mut client = self.client(&op).await?;
        let tx = client.transaction().await.map_err(db_error(&op))?;
        tx.execute(&self.sql.delete_blobs, &[&id.as_str()])
            .await
            .map_err(db_error(&op))?;
        let deleted = tx
            .execute(&self.sql.delete_record, &[&id.as_str()])
            .await
            .map_err(db_error(&op))?;
        if deleted > 0 {
            tx.execute(self.sql.notify, &[&self.channel, &id.as_str()])
                .await
                .map_err(db_error(&op))?;
        }
        tx.commit().await.map_err(db_error(&op))?;
        Ok(deleted > 0)
    }

    async fn put_blob(
        &self,
        id: &TenantId,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<(), CatalogError> {
        check_sha256(id, sha256)?;
        let op = self.op(format_args!("store blob {sha256} of tenant {id}"));
        // Hashing an upload of many MiB takes a while: not on the runtime.
        let bytes = bytes.to_vec();
        let (tenant, name) = (id.clone(), sha256.to_owned());
        let bytes = tokio::task::spawn_blocking(move || {
            check_blob_bytes(&tenant, &name, &bytes, "upload").map(|()| bytes)
        })
        .await
        .map_err(|e| CatalogError::Io {
            op: op.clone(),
            message: format!("hash the bytes: {e}"),
        })??;
        let client = self.client(&op).await?;
        client
            .execute(&self.sql.put_blob, &[&id.as_str(), &sha256, &bytes])
            .await
            .map_err(db_error(&op))?;
        Ok(())
    }

    async fn get_blob(&self, id: &TenantId, sha256: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        check_sha256(id, sha256)?;
        let op = self.op(format_args!("read blob {sha256} of tenant {id}"));
        let client = self.client(&op).await?;
        let row = client
            .query_opt(&self.sql.get_blob, &[&id.as_str(), &sha256])
            .await
            .map_err(db_error(&op))?;
        drop(client);
        let Some(row) = row else {
            return Ok(None);
        };
        let bytes: Vec<u8> = row.try_get(0).map_err(db_error(&op))?;
        let source = format!("PostgreSQL {}.plugin_blobs", self.schema);
        let (tenant, name) = (id.clone(), sha256.to_owned());
        tokio::task::spawn_blocking(move || {
            check_blob_bytes(&tenant, &name, &bytes, &source).map(|()| Some(bytes))
        })
        .await
        .map_err(|e| CatalogError::Io {
            op,
            message: format!("hash the bytes: {e}"),
        })?
    }

    async fn delete_blob(&self, id: &TenantId, sha256: &str) -> Result<(), CatalogError> {
        check_sha256(id, sha256)?;
        let op = self.op(format_args!("delete blob {sha256} of tenant {id}"));
        let client = self.client(&op).await?;
        client
            .execute(&self.sql.delete_blob, &[&id.as_str(), &sha256])
            .await
            .map_err(db_error(&op))?;
        Ok(())
    }

    fn changes(&self) -> Option<mpsc::Receiver<CatalogChange>> {
        Some(self.changes_with_capacity(CHANGES_CAPACITY))
    }
}

impl PostgresCatalog {
    /// The record stored as `json` in the row of `id`. Corrupt if it does
    /// not decode or is another tenant's record.
    fn decode(&self, id: &str, json: &str) -> Result<TenantRecord, CatalogError> {
        let what = || format!("tenant {id:?} in PostgreSQL schema {}", self.schema);
        let record: TenantRecord =
            serde_json::from_str(json).map_err(|e| CatalogError::Corrupt {
                what: what(),
                message: e.to_string(),
            })?;
        if record.id.as_str() != id {
            return Err(CatalogError::Corrupt {
                what: what(),
                message: format!("it is the record of tenant {}", record.id),
            });
        }
        Ok(record)
    }
}

/// One `changes()` receiver's listener: a dedicated connection that
/// `LISTEN`s on the channel and forwards what it hears.
struct Listener {
    /// How to connect.
    config: tokio_postgres::Config,
    /// The `LISTEN` statement.
    listen: String,
    /// The channel (for logs).
    channel: String,
    /// Where changes go; the task ends when its receiver is dropped.
    tx: mpsc::Sender<CatalogChange>,
}

impl Listener {
    /// Listen until the receiver is dropped, reconnecting with backoff
    /// whenever the connection fails.
    async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let reason = tokio::select! {
                reason = self.listen_once(&mut backoff) => reason,
                () = self.tx.closed() => return,
            };
            tracing::warn!(
                channel = %self.channel,
                %reason,
                retry_in_ms = backoff.as_millis() as u64,
                "catalog change listener lost its connection"
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.tx.closed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Connect, `LISTEN`, send `All`, then forward notifications until the
    /// connection fails; returns why. Resets `backoff` once listening.
    async fn listen_once(&self, backoff: &mut Duration) -> String {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(NoTls)).await;
        let (client, mut connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return format!("connect: {}", describe(&e)),
            Err(_) => return format!("connect: timed out after {} s", CONNECT_TIMEOUT.as_secs()),
        };
        let mut messages = pin!(futures_util::stream::poll_fn(move |cx| {
            connection.poll_message(cx)
        }));

        // The connection must be driven while LISTEN runs. Notifications
        // before it completes are covered by the `All` sent after it.
        let mut listen = pin!(client.batch_execute(&self.listen));
        loop {
            tokio::select! {
                result = &mut listen => match result {
                    Ok(()) => break,
                    Err(e) => return format!("LISTEN: {}", describe(&e)),
                },
                message = messages.next() => {
                    if let Err(reason) = check_message(message) {
                        return reason;
                    }
                }
            }
        }
        tracing::debug!(channel = %self.channel, "catalog change listener listening");
        *backoff = BACKOFF_MIN;

        // Owed an `All`: after every (re)connect, and whenever a change
        // was dropped because the channel was full. While owed, changes
        // are dropped too (the `All` covers them) and it goes out as soon
        // as there is room, so it always follows what it covers.
        let mut owe_all = true;
        loop {
            tokio::select! {
                permit = self.tx.reserve(), if owe_all => match permit {
                    Ok(permit) => {
                        permit.send(CatalogChange::All);
                        owe_all = false;
                    }
                    Err(_) => return "the receiver was dropped".to_owned(),
                },
                message = messages.next() => match check_message(message) {
                    Err(reason) => return reason,
                    Ok(None) => {}
                    Ok(Some(_)) if owe_all => {}
                    Ok(Some(payload)) => match TenantId::parse(&payload) {
                        Ok(id) => match self.tx.try_send(CatalogChange::Tenant(id)) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_)) => owe_all = true,
                            Err(TrySendError::Closed(_)) => {
                                return "the receiver was dropped".to_owned();
                            }
                        },
                        Err(e) => tracing::warn!(
                            channel = %self.channel,
                            error = %e,
                            "ignoring a catalog notification that is not a tenant id"
                        ),
                    },
                },
            }
        }
    }
}

/// What the listener's connection produced: `Ok(Some(payload))` for a
/// notification, `Ok(None)` for anything else to ignore, `Err(why)` when the
/// connection is gone.
fn check_message(
    message: Option<Result<AsyncMessage, tokio_postgres::Error>>,
) -> Result<Option<String>, String> {
    match message {
        Some(Ok(AsyncMessage::Notification(n))) => Ok(Some(n.payload().to_owned())),
        Some(Ok(AsyncMessage::Notice(notice))) => {
            tracing::debug!(notice = %notice, "notice on the catalog listener connection");
            Ok(None)
        }
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(format!("connection failed: {}", describe(&e))),
        None => Err("the server closed the connection".to_owned()),
    }
}

/// Refuse a schema name outside `[a-z_][a-z0-9_]{0,62}` (so it is a safe
/// identifier, and quoted besides).
fn check_schema(schema: &str) -> Result<(), CatalogError> {
    let b = schema.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_IDENTIFIER
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Io {
            op: format!("use PostgreSQL schema {schema:?}"),
            message: "not a schema name: expected [a-z_][a-z0-9_]{0,62}".to_owned(),
        })
    }
}

/// `<schema>_catalog`, cut to 63 bytes (PostgreSQL's identifier limit; all
/// ASCII). Two schemas of 56 bytes or more sharing their first 55 share a
/// channel: each then hears the other's changes, which costs re-reads only.
fn channel_name(schema: &str) -> String {
    let mut channel = format!("{schema}_catalog");
    channel.truncate(MAX_IDENTIFIER);
    channel
}

/// A database error while doing `op`, as a [`CatalogError::Io`].
fn db_error<E: std::error::Error>(op: &str) -> impl FnOnce(E) -> CatalogError + '_ {
    move |e| CatalogError::Io {
        op: op.to_owned(),
        message: describe(&e),
    }
}

/// The connection settings of `url`, with TCP keepalives (first probe after
/// 30 s idle, so a dead server is noticed within about a minute) and, unless
/// the URL sets one, a 5 s connect timeout. The error never repeats the URL
/// (it may hold a password).
pub(crate) fn client_config(url: &str) -> Result<tokio_postgres::Config, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| describe(&e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES);
    Ok(config)
}

/// A pool of at most `max_size` plain-TCP connections made with `config`,
/// waiting at most `wait` for a free one; opening and recycling a
/// connection are bounded by the connect timeout. Connections are recycled
/// the fast way (no query): callers that let others run SQL on them reset
/// the session themselves.
pub(crate) fn build_pool(
    config: tokio_postgres::Config,
    max_size: usize,
    wait: Duration,
) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| describe(&e))
}

/// `e` and its sources, `: `-separated (tokio-postgres puts the server's
/// message in the source).
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::conformance;
    use crate::catalog::sha256_hex;

    /// The test database; `TENANTRY_TEST_POSTGRES_URL` overrides it.
    fn base_url() -> String {
        std::env::var("TENANTRY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
    }

    /// A unique schema for one test, dropped (with everything in it) when
    /// the guard is. Connections made through [`TestSchema::url`] carry the
    /// schema as their `application_name`, so the drop can end them first.
    struct TestSchema {
        schema: String,
    }

    impl TestSchema {
        fn new() -> Self {
            Self {
                schema: format!("tenantry_test_{}", uuid::Uuid::new_v4().simple()),
            }
        }

        fn url(&self) -> String {
            let base = base_url();
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}application_name={}", self.schema)
        }

        async fn connect(&self) -> PostgresCatalog {
            PostgresCatalog::connect(&self.url(), &self.schema)
                .await
                .unwrap()
        }

        /// A plain connection to the test database, for tampering.
        async fn raw(&self) -> tokio_postgres::Client {
            let (client, connection) = tokio_postgres::connect(&base_url(), NoTls).await.unwrap();
            tokio::spawn(connection);
            client
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            // Async work in a destructor: on a thread with its own runtime.
            let schema = self.schema.clone();
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let (client, connection) = tokio_postgres::connect(&base_url(), NoTls).await?;
                    tokio::spawn(connection);
                    client
                        .batch_execute(&format!(
                            "SET lock_timeout = '5s';
                             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                             WHERE application_name = '{schema}' AND pid <> pg_backend_pid();
                             DROP SCHEMA IF EXISTS \"{schema}\" CASCADE;"
                        ))
                        .await
                })
            });
            match cleanup.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("could not drop schema {}: {e:?}", self.schema),
                Err(_) => eprintln!("could not drop schema {}: cleanup panicked", self.schema),
            }
        }
    }

    async fn make() -> (Box<dyn CatalogStore>, TestSchema) {
        let schema = TestSchema::new();
        let store = schema.connect().await;
        (Box::new(store), schema)
    }

    conformance::conformance_suite!(make);

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    /// The next change, waiting at most `secs` seconds.
    async fn next_change(rx: &mut mpsc::Receiver<CatalogChange>, secs: u64) -> CatalogChange {
        tokio::time::timeout(Duration::from_secs(secs), rx.recv())
            .await
            .expect("no change in time")
            .expect("the listener ended")
    }

    /// No change arrives within `millis` milliseconds.
    async fn assert_quiet(rx: &mut mpsc::Receiver<CatalogChange>, millis: u64) {
        let next = tokio::time::timeout(Duration::from_millis(millis), rx.recv()).await;
        assert!(next.is_err(), "unexpected {next:?}");
    }

    #[tokio::test]
    async fn the_whole_suite_runs_in_sequence_on_one_store() {
        let schema = TestSchema::new();
        conformance::run_all(&schema.connect().await).await;
    }

    #[tokio::test]
    async fn the_tables_are_the_documented_ones() {
        let schema = TestSchema::new();
        let store = schema.connect().await;
        let bytes = b"\0asm plugin".to_vec();
        let sha = sha256_hex(&bytes);
        store.put_blob(&id("acme"), &sha, &bytes).await.unwrap();
        let mut record = TenantRecord::new(id("acme"), "starter".into(), 1);
        record.revision = 7;
        store.put(&record).await.unwrap();

        let raw = schema.raw().await;
        let s = &schema.schema;
        let row = raw
            .query_one(
                &format!(
                    "SELECT record->>'plan', revision, updated_at IS NOT NULL
                     FROM \"{s}\".tenants WHERE id = 'acme'"
                ),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "starter");
        assert_eq!(row.get::<_, i64>(1), 7);
        assert!(row.get::<_, bool>(2));
        let row = raw
            .query_one(
                &format!("SELECT tenant, sha256, bytes FROM \"{s}\".plugin_blobs"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "acme");
        assert_eq!(row.get::<_, String>(1), sha);
        assert_eq!(row.get::<_, Vec<u8>>(2), bytes);
    }

    #[tokio::test]
    async fn a_corrupt_record_is_reported_while_the_others_load() {
        let schema = TestSchema::new();
        let store = schema.connect().await;
        for t in ["a", "b", "c"] {
            store
                .put(&TenantRecord::new(id(t), "starter".into(), 1))
                .await
                .unwrap();
        }
        let s = &schema.schema;
        schema
            .raw()
            .await
            .batch_execute(&format!(
                // Valid jsonb that is not a record; a record filed under
                // another tenant's id; a row whose id is not a tenant id.
                "UPDATE \"{s}\".tenants SET record = '{{\"id\": \"b\", \"plan\": 5}}' WHERE id = 'b';
                 INSERT INTO \"{s}\".tenants (id, record, revision)
                     SELECT 'd', record, revision FROM \"{s}\".tenants WHERE id = 'a';
                 INSERT INTO \"{s}\".tenants (id, record, revision)
                     VALUES ('Not_An_Id', '{{\"id\": \"Not_An_Id\", \"plan\": \"x\", \"created_at_ms\": 1}}', 0);"
            ))
            .await
            .unwrap();

        let (records, errors) = store.list().await.unwrap();
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        let bad: Vec<&str> = errors.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(bad, ["Not_An_Id", "b", "d"]);
        assert!(
            errors
                .iter()
                .all(|(_, e)| matches!(e, CatalogError::Corrupt { .. })),
            "{errors:?}"
        );
        assert!(matches!(
            store.get(&id("b")).await,
            Err(CatalogError::Corrupt { .. })
        ));
        assert!(matches!(
            store.get(&id("d")).await,
            Err(CatalogError::Corrupt { .. })
        ));
        // Replacing the corrupt record repairs it.
        store
            .put(&TenantRecord::new(id("b"), "pro".into(), 2))
            .await
            .unwrap();
        assert_eq!(store.get(&id("b")).await.unwrap().unwrap().plan, "pro");
    }

    #[tokio::test]
    async fn a_damaged_blob_is_an_error_and_a_reupload_repairs_it() {
        let schema = TestSchema::new();
        let store = schema.connect().await;
        let bytes = vec![7u8; 4096];
        let sha = sha256_hex(&bytes);
        store.put_blob(&id("acme"), &sha, &bytes).await.unwrap();
        let s = &schema.schema;
        schema
            .raw()
            .await
            .batch_execute(&format!(
                "UPDATE \"{s}\".plugin_blobs SET bytes = set_byte(bytes, 1000, 6)"
            ))
            .await
            .unwrap();
        let err = store.get_blob(&id("acme"), &sha).await.unwrap_err();
        assert!(matches!(err, CatalogError::Corrupt { .. }), "{err}");
        store.put_blob(&id("acme"), &sha, &bytes).await.unwrap();
        assert_eq!(
            store.get_blob(&id("acme"), &sha).await.unwrap(),
            Some(bytes)
        );
    }

    #[tokio::test]
    async fn a_second_handle_sees_puts_and_deletes_within_a_second() {
        let schema = TestSchema::new();
        let (writer, reader) = (schema.connect().await, schema.connect().await);
        let mut changes = reader.changes().unwrap();
        assert_eq!(next_change(&mut changes, 5).await, CatalogChange::All);

        let record = TenantRecord::new(id("acme"), "starter".into(), 1);
        writer.put(&record).await.unwrap();
        assert_eq!(
            next_change(&mut changes, 1).await,
            CatalogChange::Tenant(id("acme"))
        );
        assert_eq!(reader.get(&id("acme")).await.unwrap(), Some(record));

        assert!(writer.delete(&id("acme")).await.unwrap());
        assert_eq!(
            next_change(&mut changes, 1).await,
            CatalogChange::Tenant(id("acme"))
        );
        assert_eq!(reader.get(&id("acme")).await.unwrap(), None);

        // Blob writes and deleting nothing change no record: no notification.
        let bytes = b"plugin".as_slice();
        writer
            .put_blob(&id("acme"), &sha256_hex(bytes), bytes)
            .await
            .unwrap();
        assert!(!writer.delete(&id("nobody")).await.unwrap());
        assert_quiet(&mut changes, 300).await;
    }

    #[tokio::test]
    async fn every_receiver_starts_with_all_and_hears_its_own_handle() {
        let schema = TestSchema::new();
        let store = schema.connect().await;
        let (mut one, mut two) = (store.changes().unwrap(), store.changes().unwrap());
        assert_eq!(next_change(&mut one, 5).await, CatalogChange::All);
        assert_eq!(next_change(&mut two, 5).await, CatalogChange::All);
        store
            .put(&TenantRecord::new(id("acme"), "starter".into(), 1))
            .await
            .unwrap();
        for rx in [&mut one, &mut two] {
            assert_eq!(next_change(rx, 1).await, CatalogChange::Tenant(id("acme")));
        }
    }

    #[tokio::test]
    async fn other_schemas_are_not_heard_and_bad_payloads_are_ignored() {
        let (schema, other) = (TestSchema::new(), TestSchema::new());
        let store = schema.connect().await;
        let other_store = other.connect().await;
        let mut changes = store.changes().unwrap();
        assert_eq!(next_change(&mut changes, 5).await, CatalogChange::All);
        other_store
            .put(&TenantRecord::new(id("acme"), "starter".into(), 1))
            .await
            .unwrap();
        schema
            .raw()
            .await
            .execute("SELECT pg_notify($1, 'Not An Id')", &[&store.channel()])
            .await
            .unwrap();
        assert_quiet(&mut changes, 300).await;
    }

    #[tokio::test]
    async fn the_listener_reconnects_and_then_sends_all() {
        let schema = TestSchema::new();
        let store = schema.connect().await;
        let mut changes = store.changes().unwrap();
        assert_eq!(next_change(&mut changes, 5).await, CatalogChange::All);

        let killed = schema
            .raw()
            .await
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                &[&schema.schema],
            )
            .await
            .unwrap();
        assert_eq!(killed.len(), 1);
        assert_eq!(next_change(&mut changes, 5).await, CatalogChange::All);

        store
            .put(&TenantRecord::new(id("acme"), "starter".into(), 1))
            .await
            .unwrap();
        assert_eq!(
            next_change(&mut changes, 1).await,
            CatalogChange::Tenant(id("acme"))
        );
    }

    #[tokio::test]
    async fn a_full_channel_drops_changes_and_then_sends_all_once() {
        let schema = TestSchema::new();
        let store = schema.connect().await;
        let mut changes = store.changes_with_capacity(2);
        assert_eq!(next_change(&mut changes, 5).await, CatalogChange::All);
        for t in ["t0", "t1", "t2", "t3", "t4"] {
            store
                .put(&TenantRecord::new(id(t), "starter".into(), 1))
                .await
                .unwrap();
        }
        // Let every notification reach the (full) channel.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            next_change(&mut changes, 1).await,
            CatalogChange::Tenant(id("t0"))
        );
        assert_eq!(
            next_change(&mut changes, 1).await,
            CatalogChange::Tenant(id("t1"))
        );
        assert_eq!(next_change(&mut changes, 1).await, CatalogChange::All);
        assert_quiet(&mut changes, 300).await;
    }

    #[tokio::test]
    async fn the_listener_ends_when_the_receiver_is_dropped() {
        let schema = TestSchema::new();
        let store = schema.connect().await;
        let mut changes = store.changes().unwrap();
        assert_eq!(next_change(&mut changes, 5).await, CatalogChange::All);
        drop(changes);
        let raw = schema.raw().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let listening: i64 = raw
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                    &[&schema.schema],
                )
                .await
                .unwrap()
                .get(0);
            if listening == 0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "still listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn connecting_twice_at_once_and_again_keeps_the_data() {
        let schema = TestSchema::new();
        let url = schema.url();
        let (a, b) = tokio::join!(
            PostgresCatalog::connect(&url, &schema.schema),
            PostgresCatalog::connect(&url, &schema.schema),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        a.put(&TenantRecord::new(id("acme"), "starter".into(), 1))
            .await
            .unwrap();
        drop((a, b));
        let again = schema.connect().await;
        assert_eq!(
            again.get(&id("acme")).await.unwrap().map(|r| r.plan),
            Some("starter".into())
        );
    }

    #[tokio::test]
    async fn an_unreachable_database_is_an_error_not_a_hang() {
        let schema = TestSchema::new();
        // A server that accepts connections and never answers: only the
        // timeout ends the start-up.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_url = format!("postgres://root@{}/test", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                sockets.push(socket);
            }
        });
        for url in [
            "postgres://root@127.0.0.1:1/test",
            "postgres://root@127.0.0.1:5432/no_such_database_here",
            "not a url at all ===",
            silent_url.as_str(),
        ] {
            let result = tokio::time::timeout(
                Duration::from_secs(15),
                PostgresCatalog::connect(url, &schema.schema),
            )
            .await
            .unwrap_or_else(|_| panic!("connect to {url} hung"));
            let err = result.unwrap_err();
            assert!(matches!(err, CatalogError::Io { .. }), "{url}: {err}");
            if url.contains("no_such_database") {
                // The server's own message, not just "db error".
                assert!(err.to_string().contains("does not exist"), "{err}");
            }
        }
        held.abort();
    }

    #[tokio::test]
    async fn bad_schema_names_are_refused() {
        let long = "a".repeat(64);
        for bad in ["", "Tenantry", "1abc", "a-b", "a\"b", "a b", long.as_str()] {
            let err = PostgresCatalog::connect(&base_url(), bad)
                .await
                .unwrap_err();
            assert!(matches!(err, CatalogError::Io { .. }), "{bad:?}: {err}");
        }
        for good in ["_", "a", "tenantry_9", &"b".repeat(63)] {
            assert!(check_schema(good).is_ok(), "{good:?}");
        }
        assert_eq!(channel_name("tenantry"), "tenantry_catalog");
        assert_eq!(channel_name(&"b".repeat(63)).len(), 63);
    }

    #[tokio::test]
    async fn the_longest_schema_name_works_with_notifications() {
        let mut schema = TestSchema::new();
        schema.schema = format!("{}{}", schema.schema, "x".repeat(63 - schema.schema.len()));
        let store = schema.connect().await;
        let mut changes = store.changes().unwrap();
        assert_eq!(next_change(&mut changes, 5).await, CatalogChange::All);
        store
            .put(&TenantRecord::new(id("acme"), "starter".into(), 1))
            .await
            .unwrap();
        assert_eq!(
            next_change(&mut changes, 1).await,
            CatalogChange::Tenant(id("acme"))
        );
    }
}
