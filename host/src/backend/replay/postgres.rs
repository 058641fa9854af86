//! The durable replay buffers (`[replay] store = "postgres"`): rows in the
//! host schema ([`HostTables`]), shared by every host on the same database
//! and surviving restarts of all of them. They are also the seq source of
//! the bus in front ([`SeqSource`], see the module docs of [`super`]).
//!
//! # Layout
//!
//! - `{schema}.replay_seq (tenant, topic, seq, updated_at)`, primary key
//!   `(tenant, topic)`: each topic's seq and its last publish.
//! - `{schema}.replay (tenant, topic, seq, event, data, created_at)`,
//!   primary key `(tenant, topic, seq)`: the buffered events.
//!
//! Times are the database's clock, so hosts agree on expiry.
//!
//! # Append (one statement)
//!
//! `INSERT INTO replay_seq … ON CONFLICT DO UPDATE SET seq = seq + 1
//! RETURNING seq` (or 1 when the topic was idle past the TTL: it is
//! forgotten, seq included), the event inserted with that seq, and, in the
//! same statement, the topic's events older than `seq - size` (and those of
//! a forgotten earlier life above the new seq) deleted. The upsert locks the
//! topic's seq row, so concurrent appends of one topic (on any host) get
//! consecutive seqs, one after the other. [`SeqSource::append_then`] runs
//! that statement in a transaction, calls `deliver` with the seq and then
//! commits: the row lock is held while the event is delivered, so the next
//! event of the topic gets its seq only after this one was handed to the
//! subscribers (the hub, or Redis `PUBLISH`), and every host delivers a
//! topic's events in seq order. Before that, a host's appends to one topic
//! take turns locally ([`TURNS`] fair locks striped by tenant and topic),
//! so only one of its connections at a time waits on a hot topic's row
//! (many waiters on one row are slow in Postgres). A publish costs three round trips to
//! Postgres (`BEGIN`, `SET LOCAL`, the append, `COMMIT`) plus the delivery; publishes of
//! one topic are serialized across the fleet by the row lock, publishes of
//! different topics run side by side (up to the pool's connections). The
//! lock is held through the `COMMIT`, so one topic's publish rate is
//! bounded by those round trips and the delivery (see BENCHMARKS.md).
//!
//! # Durability
//!
//! The append transaction commits with `synchronous_commit = off`: COMMIT
//! returns before the WAL is flushed to disk, so the topic's row lock is
//! released after a round trip instead of a disk write. The events are
//! already delivered live when they commit; what a crash of the *database
//! server* (not of a host, not a clean shutdown) can lose is the last
//! fraction of a second of buffered events and seqs (at most three times
//! `wal_writer_delay`, 600 ms by default). A client resuming with a seq
//! the buffer no longer has is told its replay is truncated, as after any
//! gap.
//!
//! # Reads
//!
//! A topic whose `updated_at` is older than the TTL reads as forgotten
//! (seq 0, no events) even before the cleanup deleted it, and only events
//! with a seq in `(seq - size, seq]` are read: an append running while
//! another appended to the same topic may not see (so not trim) the
//! other's event, which then stays until the cleanup, unseen by readers.
//! Reads use the shared [`page`] rules.
//!
//! # Cleanup
//!
//! Every cleanup interval (the seeds' `cleanupInterval`, default
//! [`DEFAULT_CLEANUP_INTERVAL`]) each host deletes, database by database,
//! the topics idle past the TTL (seq rows and events), each tenant's least
//! recently published topics past `max_topics_per_tenant` (seq rows and
//! events, as the memory buffers forget them) and the events no reader
//! sees any more (trimmed leftovers), at most [`CLEANUP_BATCH`] topics or
//! events per statement.
//!
//! # Bounds
//!
//! [`ReplaySettings::size`] and [`ReplaySettings::ttl`] apply at once.
//! [`ReplaySettings::max_topics_per_tenant`] applies at each cleanup (a
//! tenant can exceed it in between). `max_bytes_per_tenant` does **not**
//! apply: the buffers are on disk, at most `size` events per topic and at
//! most `max_topics_per_tenant` topics per tenant (after a cleanup).
//!
//! # Failures
//!
//! Every statement is bounded by [`STATEMENT_TIMEOUT`] (then `Timeout`);
//! Postgres down is `Unavailable`. A failed append delivers nothing (the
//! publish fails with the error). If the `COMMIT` fails after the event was
//! delivered, the event is not buffered and the next publish of the topic
//! gets the same seq again (rare: the connection died in between).
//! Between the delivery and the commit (one Redis round trip with the Redis
//! bus) a reader does not see the event yet.
//!
//! [`STATEMENT_TIMEOUT`]: crate::backend::postgres::stores::STATEMENT_TIMEOUT

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Deliver, ReplayBuffer, ReplayEvent, ReplayPage, ReplaySettings, SeqSource, page};
use crate::backend::BackendError;
use crate::backend::postgres::host_tables::HostTables;
use crate::backend::postgres::stores::{backend_error, bounded, pg_error, spawn_cleanup};
use crate::tenant::TenantId;

/// How often each host deletes expired topics and trimmed events, by
/// default (the seeds' `cleanupInterval`).
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Most rows one cleanup statement deletes.
pub const CLEANUP_BATCH: i64 = 1000;
/// Local turns (striped by tenant and topic, a power of two): a host's
/// appends to one topic take turns here before Postgres, so at most one
/// of its connections waits on the topic's row lock.
const TURNS: usize = 256;

/// The host-table migration steps of the durable replay buffers (see
/// [`crate::backend::postgres::host_tables::MIGRATIONS`]).
pub const MIGRATION: &[&str] = &["CREATE TABLE {schema}.replay_seq ( \
        tenant text NOT NULL, \
        topic text NOT NULL, \
        seq bigint NOT NULL, \
        updated_at timestamptz NOT NULL, \
        PRIMARY KEY (tenant, topic)); \
     CREATE INDEX replay_seq_updated_at ON {schema}.replay_seq (updated_at); \
     CREATE TABLE {schema}.replay ( \
        tenant text NOT NULL, \
        topic text NOT NULL, \
        seq bigint NOT NULL, \
        event text NOT NULL, \
        data text NOT NULL, \
        created_at timestamptz NOT NULL, \
        PRIMARY KEY (tenant, topic, seq))"];

/// The statements, with the schema filled in. Parameters: `$1` tenant, `$2`
/// topic; the TTL in ms (0: none) and the size are bigints.
struct Statements {
    append: String,
    seq: String,
    since: String,
    purge: String,
    cleanup_expired: String,
    cleanup_trimmed: String,
    cleanup_topics: String,
}

/// `updated_at` of `alias` is recent enough for the TTL in `ttl` (ms, 0:
/// none).
fn live(alias: &str, ttl: &str) -> String {
    format!(
        "({ttl}::bigint = 0 OR {alias}.updated_at > clock_timestamp() - {ttl}::bigint * interval '1 millisecond')"
    )
}

impl Statements {
    fn new(schema: &str) -> Self {
        let seqs = format!("{schema}.replay_seq");
        let events = format!("{schema}.replay");
        Self {
            // $3 event, $4 data, $5 size, $6 ttl ms.
            append: format!(
                "WITH s AS ( \
                   INSERT INTO {seqs} AS cur (tenant, topic, seq, updated_at) \
                   VALUES ($1, $2, 1, clock_timestamp()) \
                   ON CONFLICT (tenant, topic) DO UPDATE \
                     SET seq = CASE WHEN NOT {live} THEN 1 ELSE cur.seq + 1 END, \
                         updated_at = clock_timestamp() \
                   RETURNING cur.seq), \
                 ins AS ( \
                   INSERT INTO {events} (tenant, topic, seq, event, data, created_at) \
                   SELECT $1, $2, s.seq, $3, $4, clock_timestamp() FROM s WHERE $5::bigint > 0 \
                   ON CONFLICT (tenant, topic, seq) DO UPDATE \
                     SET event = EXCLUDED.event, data = EXCLUDED.data, \
                         created_at = EXCLUDED.created_at \
                   RETURNING 1), \
                 trimmed AS ( \
                   DELETE FROM {events} r USING s \
                   WHERE r.tenant = $1 AND r.topic = $2 \
                     AND (r.seq > s.seq OR r.seq <= s.seq - $5::bigint) \
                   RETURNING 1) \
                 SELECT seq FROM s",
                live = live("cur", "$6"),
            ),
            // $3 ttl ms.
            seq: format!(
                "SELECT s.seq FROM {seqs} s WHERE s.tenant = $1 AND s.topic = $2 AND {}",
                live("s", "$3")
            ),
            // $3 since, $4 size, $5 ttl ms. One row per event (or one with
            // NULL event columns when none): seq, oldest, event seq, event,
            // data.
            since: format!(
                "WITH s AS ( \
                   SELECT cur.seq, \
                     (SELECT min(r.seq) FROM {events} r \
                       WHERE r.tenant = $1 AND r.topic = $2 \
                         AND r.seq <= cur.seq AND r.seq > cur.seq - $4::bigint) AS oldest \
                   FROM {seqs} cur WHERE cur.tenant = $1 AND cur.topic = $2 AND {live}) \
                 SELECT s.seq, s.oldest, e.seq, e.event, e.data FROM s \
                 LEFT JOIN LATERAL ( \
                   SELECT r.seq, r.event, r.data FROM {events} r \
                   WHERE r.tenant = $1 AND r.topic = $2 \
                     AND r.seq <= s.seq AND r.seq > s.seq - $4::bigint \
                     AND r.seq > CASE WHEN $3::bigint > s.seq THEN 0 ELSE $3::bigint END \
                   ORDER BY r.seq) e ON true \
                 ORDER BY e.seq",
                live = live("cur", "$5"),
            ),
            // $2 ttl ms: counts the topics that were live.
            purge: format!(
                "WITH e AS (DELETE FROM {events} WHERE tenant = $1 RETURNING 1), \
                 s AS (DELETE FROM {seqs} s WHERE tenant = $1 RETURNING {live} AS live) \
                 SELECT count(*) FILTER (WHERE live) FROM s",
                live = live("s", "$2"),
            ),
            // $1 ttl ms (> 0), $2 batch.
            cleanup_expired: format!(
                "WITH gone AS ( \
                   DELETE FROM {seqs} WHERE ctid = ANY (ARRAY( \
                     SELECT ctid FROM {seqs} \
                     WHERE updated_at <= clock_timestamp() - $1::bigint * interval '1 millisecond' \
                     LIMIT $2)) \
                   RETURNING tenant, topic), \
                 events AS ( \
                   DELETE FROM {events} r USING gone \
                   WHERE r.tenant = gone.tenant AND r.topic = gone.topic RETURNING 1) \
                 SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM events)"
            ),
            // $1 max topics per tenant, $2 batch: the least recently
            // published topics past the bound, with their events.
            cleanup_topics: format!(
                "WITH ranked AS ( \
                   SELECT tenant, topic, row_number() OVER ( \
                     PARTITION BY tenant ORDER BY updated_at DESC, topic) AS rank \
                   FROM {seqs}), \
                 gone AS ( \
                   DELETE FROM {seqs} s \
                   USING (SELECT tenant, topic FROM ranked WHERE rank > $1 LIMIT $2) v \
                   WHERE s.tenant = v.tenant AND s.topic = v.topic \
                   RETURNING s.tenant, s.topic), \
                 events AS ( \
                   DELETE FROM {events} r USING gone \
                   WHERE r.tenant = gone.tenant AND r.topic = gone.topic RETURNING 1) \
                 SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM events)"
            ),
            // $1 size, $2 batch: events no reader sees (trimmed leftovers,
            // events of topics that are gone).
            cleanup_trimmed: format!(
                "WITH gone AS ( \
                   DELETE FROM {events} WHERE ctid = ANY (ARRAY( \
                     SELECT r.ctid FROM {events} r \
                     LEFT JOIN {seqs} s ON s.tenant = r.tenant AND s.topic = r.topic \
                     WHERE s.seq IS NULL OR r.seq > s.seq OR r.seq <= s.seq - $1::bigint \
                     LIMIT $2)) \
                   RETURNING 1) \
                 SELECT count(*) FROM gone"
            ),
        }
    }
}

/// Replay buffers on Postgres (see the module docs).
pub struct PostgresReplay {
    tables: Arc<HostTables>,
    sql: Statements,
    /// See [`TURNS`]; fair (FIFO), so this host's appends of a topic get
    /// their seqs in the order they came.
    turns: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    size: i64,
    ttl_ms: i64,
    max_topics: i64,
}

impl PostgresReplay {
    /// Buffers in `tables`' host schema kept as `settings` says (its `size`
    /// and `ttl`), and their cleanup task (every `cleanup_interval`, until
    /// the buffers are dropped). Must run inside a tokio runtime.
    pub fn new(
        tables: Arc<HostTables>,
        settings: ReplaySettings,
        cleanup_interval: Duration,
    ) -> Arc<Self> {
        let replay = Arc::new(Self {
            sql: Statements::new(&tables.schema()),
            turns: (0..TURNS).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: Default::default(),
            tables,
            size: i64::try_from(settings.size).unwrap_or(i64::MAX),
            ttl_ms: settings.ttl.map_or(0, |t| {
                i64::try_from(t.as_millis()).unwrap_or(i64::MAX).max(1)
            }),
            max_topics: i64::try_from(settings.max_topics_per_tenant.max(1)).unwrap_or(i64::MAX),
        });
        spawn_cleanup(
            &replay,
            cleanup_interval.max(Duration::from_millis(10)),
            "replay buffers",
            |r: Arc<Self>| async move { r.cleanup().await },
        );
        replay
    }

    /// Delete, in every database, the topics idle past the TTL, the least
    /// recently published topics of a tenant past
    /// [`ReplaySettings::max_topics_per_tenant`] and the events no reader
    /// sees any more; how many rows went.
    pub async fn cleanup(&self) -> Result<u64, BackendError> {
        let mut removed = 0;
        for db in self.tables.databases() {
            if self.ttl_ms > 0 {
                loop {
                    let n = self
                        .sweep(db.as_ref(), &self.sql.cleanup_expired, self.ttl_ms)
                        .await?;
                    removed += n;
                    if n < CLEANUP_BATCH as u64 {
                        break;
                    }
                }
            }
            loop {
                let n = self
                    .sweep(db.as_ref(), &self.sql.cleanup_topics, self.max_topics)
                    .await?;
                removed += n;
                if n < CLEANUP_BATCH as u64 {
                    break;
                }
            }
            loop {
                let n = self
                    .sweep(db.as_ref(), &self.sql.cleanup_trimmed, self.size)
                    .await?;
                removed += n;
                if n < CLEANUP_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// One cleanup statement (`arg`, then the batch) on one database.
    async fn sweep(
        &self,
        db: Option<&TenantId>,
        statement: &str,
        arg: i64,
    ) -> Result<u64, BackendError> {
        bounded(async {
            let client = self
                .tables
                .database_client(db)
                .await
                .map_err(backend_error)?;
            let row = client
                .query_one(statement, &[&arg, &CLEANUP_BATCH])
                .await
                .map_err(|e| pg_error(&e))?;
            let n: i64 = row.try_get(0).map_err(|e| pg_error(&e))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn client(&self, tenant: &TenantId) -> Result<deadpool_postgres::Object, BackendError> {
        self.tables.client(tenant).await.map_err(backend_error)
    }
}

/// A seq read from Postgres (a positive bigint) as `u64`.
fn seq_of(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// `since` as the bigint parameter (a client cannot be further ahead).
fn since_param(since: u64) -> i64 {
    i64::try_from(since).unwrap_or(i64::MAX)
}

#[async_trait]
impl SeqSource for PostgresReplay {
    async fn append_then(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
        deliver: Deliver<'_>,
    ) -> Result<u64, BackendError> {
        use std::hash::BuildHasher;
        let stripe = self.hasher.hash_one((tenant.as_str(), topic)) as usize & (TURNS - 1);
        let _turn = bounded(async { Ok(self.turns[stripe].lock().await) }).await?;
        let mut client = bounded(self.client(tenant)).await?;
        let client = &mut client;
        let (tx, seq) = bounded(async move {
            let tx = client.transaction().await.map_err(|e| pg_error(&e))?;
            // The row lock is held until COMMIT returns: without waiting
            // for the WAL flush, a hot topic is bounded by a round trip,
            // not by the disk (see the module docs, "Durability").
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await
                .map_err(|e| pg_error(&e))?;
            let append = tx
                .prepare_cached(&self.sql.append)
                .await
                .map_err(|e| pg_error(&e))?;
            let row = tx
                .query_one(
                    &append,
                    &[
                        &tenant.as_str(),
                        &topic,
                        &event,
                        &data,
                        &self.size,
                        &self.ttl_ms,
                    ],
                )
                .await
                .map_err(|e| pg_error(&e))?;
            let seq: i64 = row.try_get(0).map_err(|e| pg_error(&e))?;
            Ok((tx, seq_of(seq)))
        })
        .await?;
        // Still holding the topic's row lock: the next event waits for us.
        deliver(seq).await;
        bounded(async { tx.commit().await.map_err(|e| pg_error(&e)) }).await?;
        Ok(seq)
    }
}

#[async_trait]
impl ReplayBuffer for PostgresReplay {
    async fn seq(&self, tenant: &TenantId, topic: &str) -> Result<u64, BackendError> {
        bounded(async {
            let client = self.client(tenant).await?;
            let seq = client
                .prepare_cached(&self.sql.seq)
                .await
                .map_err(|e| pg_error(&e))?;
            let row = client
                .query_opt(&seq, &[&tenant.as_str(), &topic, &self.ttl_ms])
                .await
                .map_err(|e| pg_error(&e))?;
            match row {
                Some(row) => Ok(seq_of(row.try_get(0).map_err(|e| pg_error(&e))?)),
                None => Ok(0),
            }
        })
        .await
    }

    async fn since(
        &self,
        tenant: &TenantId,
        topic: &str,
        since: u64,
    ) -> Result<ReplayPage, BackendError> {
        bounded(async {
            let client = self.client(tenant).await?;
            let statement = client
                .prepare_cached(&self.sql.since)
                .await
                .map_err(|e| pg_error(&e))?;
            let rows = client
                .query(
                    &statement,
                    &[
                        &tenant.as_str(),
                        &topic,
                        &since_param(since),
                        &self.size,
                        &self.ttl_ms,
                    ],
                )
                .await
                .map_err(|e| pg_error(&e))?;
            let Some(first) = rows.first() else {
                return Ok(page(since, 0, None, Vec::new()));
            };
            let seq: i64 = first.try_get(0).map_err(|e| pg_error(&e))?;
            let oldest: Option<i64> = first.try_get(1).map_err(|e| pg_error(&e))?;
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                let event_seq: Option<i64> = row.try_get(2).map_err(|e| pg_error(&e))?;
                let Some(event_seq) = event_seq else { continue };
                events.push(ReplayEvent {
                    seq: seq_of(event_seq),
                    event: row.try_get(3).map_err(|e| pg_error(&e))?,
                    data: row.try_get(4).map_err(|e| pg_error(&e))?,
                });
            }
            Ok(page(since, seq_of(seq), oldest.map(seq_of), events))
        })
        .await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        bounded(async {
            let client = self.client(tenant).await?;
            let row = client
                .query_one(&self.sql.purge, &[&tenant.as_str(), &self.ttl_ms])
                .await
                .map_err(|e| pg_error(&e))?;
            let live: i64 = row.try_get(0).map_err(|e| pg_error(&e))?;
            Ok(u64::try_from(live).unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use futures_util::future::join_all;

    use super::*;
    use crate::backend::Bus;
    use crate::backend::memory::MemoryBus;
    use crate::backend::postgres::stores::test_support::TestTables;
    use crate::backend::redis::bus::RedisBus;
    use crate::backend::redis::bus::suite::{recv, subscriber};
    use crate::backend::redis::sharded_bus::RedisShardedBus;
    use crate::backend::redis::test_support::{Namespace, breaker, redis_url};
    use crate::backend::replay::conformance;
    use crate::hub::Hub;
    use crate::tenant::TenantScope;

    const LONG: Duration = Duration::from_secs(3600);

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn settings(size: usize, ttl: Option<Duration>) -> ReplaySettings {
        ReplaySettings {
            size,
            ttl,
            ..ReplaySettings::default()
        }
    }

    fn replay(db: &TestTables, settings: ReplaySettings) -> Arc<PostgresReplay> {
        PostgresReplay::new(db.tables(), settings, LONG)
    }

    async fn redis_bus(ns: &Namespace, seqs: Arc<PostgresReplay>, hub: Arc<Hub>) -> Arc<RedisBus> {
        RedisBus::start_with_seqs(
            ns.conn().await,
            &redis_url(),
            ns.name(),
            hub,
            breaker(),
            ReplaySettings::default(),
            TenantScope::All,
            Some(seqs as Arc<dyn SeqSource>),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn passes_the_conformance_suite_behind_the_memory_bus() {
        let db = TestTables::new("rpm");
        let r = replay(&db, settings(conformance::SIZE, Some(LONG)));
        let bus = MemoryBus::with_seq_source(Hub::new(), Arc::clone(&r) as Arc<dyn SeqSource>);
        conformance::suite(&bus, &*r).await;
        assert_eq!(db.count("replay").await, 0, "purges left nothing");
        assert_eq!(db.count("replay_seq").await, 0);
        db.drop_schema().await;
    }

    #[tokio::test]
    async fn passes_the_conformance_suite_behind_the_redis_bus() {
        let db = TestTables::new("rpr");
        let ns = Namespace::new();
        let r = replay(&db, settings(conformance::SIZE, None));
        let bus = redis_bus(&ns, Arc::clone(&r), Hub::new()).await;
        conformance::suite(&*bus, &*r).await;
        assert_eq!(db.count("replay").await, 0, "purges left nothing");
        assert_eq!(
            ns.keys(),
            Vec::<String>::new(),
            "no seq keys or buffers in Redis"
        );
        db.drop_schema().await;
    }

    #[tokio::test]
    async fn passes_the_conformance_suite_behind_the_sharded_bus() {
        let db = TestTables::new("rps");
        let ns = Namespace::new();
        let r = replay(&db, settings(conformance::SIZE, None));
        let bus = RedisShardedBus::start_with_seqs(
            ns.conn().await,
            &redis_url(),
            ns.name(),
            Hub::new(),
            breaker(),
            ReplaySettings::default(),
            TenantScope::All,
            Some(Arc::clone(&r) as Arc<dyn SeqSource>),
        )
        .await
        .unwrap();
        conformance::suite(&*bus, &*r).await;
        assert_eq!(ns.keys(), Vec::<String>::new());
        db.drop_schema().await;
    }

    /// Two hosts (pools of their own, Redis buses of their own) publishing
    /// at once into one topic: consecutive seqs from Postgres, and every
    /// subscriber on either host sees all of them once, in seq order.
    #[tokio::test]
    async fn two_hosts_share_one_seq_and_deliver_in_order() {
        let db = TestTables::new("rph");
        let ns = Namespace::new();
        let s = settings(100, Some(LONG));
        let (hub_a, hub_b) = (Hub::new(), Hub::new());
        let (ra, rb) = (replay(&db, s), replay(&db, s));
        let bus_a = redis_bus(&ns, Arc::clone(&ra), Arc::clone(&hub_a)).await;
        let bus_b = redis_bus(&ns, Arc::clone(&rb), Arc::clone(&hub_b)).await;
        let (_ca, mut rx_a) = subscriber(&hub_a, "fleet-pg", "room:1");
        let (_cb, mut rx_b) = subscriber(&hub_b, "fleet-pg", "room:1");
        let t = tid("fleet-pg");
        let publishes = (0..40).map(|i| {
            let bus: &RedisBus = if i % 2 == 0 { &bus_a } else { &bus_b };
            bus.publish(&t, "room:1", "m", "{}")
        });
        for r in join_all(publishes).await {
            r.unwrap();
        }
        for rx in [&mut rx_a, &mut rx_b] {
            let mut seen = Vec::new();
            for _ in 0..40 {
                seen.push(recv(rx).await["seq"].as_u64().unwrap());
            }
            assert_eq!(
                seen,
                (1..=40).collect::<Vec<_>>(),
                "in seq order, once each"
            );
        }
        let p = rb.since(&t, "room:1", 30).await.unwrap();
        assert_eq!(p.seq, 40);
        assert_eq!(
            p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (31..=40).collect::<Vec<_>>()
        );
        assert_eq!(ra.purge_tenant(&t).await, Ok(1));
        assert_eq!(ns.keys(), Vec::<String>::new());
        db.drop_schema().await;
    }

    /// Concurrent appends from two pools get distinct consecutive seqs,
    /// each delivered while the next waits.
    #[tokio::test]
    async fn concurrent_appends_get_consecutive_seqs() {
        let db = TestTables::new("rpc");
        let s = settings(1000, None);
        let (a, b) = (replay(&db, s), replay(&db, s));
        let t = tid("race-pg");
        let delivered = parking_lot::Mutex::new(Vec::new());
        let appends = (0..60).map(|i| {
            let r = if i % 2 == 0 { &a } else { &b };
            let delivered = &delivered;
            r.append_then(
                &t,
                "race",
                "e",
                "1",
                Box::new(move |seq| {
                    delivered.lock().push(seq);
                    let done: futures_util::future::BoxFuture<'_, ()> =
                        Box::pin(std::future::ready(()));
                    done
                }),
            )
        });
        let mut seqs: Vec<u64> = join_all(appends)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            *delivered.lock(),
            (1..=60).collect::<Vec<_>>(),
            "delivered in seq order"
        );
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
        assert_eq!(a.since(&t, "race", 0).await.unwrap().events.len(), 60);
        db.drop_schema().await;
    }

    /// A topic idle past the TTL reads as forgotten before the cleanup ran,
    /// starts again at 1, and the cleanup deletes the expired rows only.
    #[tokio::test]
    async fn an_idle_topic_is_forgotten_and_cleaned_up() {
        let db = TestTables::new("rpt");
        let r = replay(&db, settings(10, Some(Duration::from_millis(800))));
        let bus = MemoryBus::with_seq_source(Hub::new(), Arc::clone(&r) as Arc<dyn SeqSource>);
        let t = tid("ttl-pg");
        bus.publish(&t, "old", "m", "1").await.unwrap();
        bus.publish(&t, "old", "m", "2").await.unwrap();
        bus.publish(&t, "gone", "m", "1").await.unwrap();
        assert_eq!(r.seq(&t, "old").await, Ok(2));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        bus.publish(&t, "fresh", "m", "1").await.unwrap();
        let p = r.since(&t, "old", 2).await.unwrap();
        assert_eq!((p.seq, p.events.len()), (0, 0), "expired rows read as gone");
        assert!(p.truncated, "the client is ahead of a forgotten seq");
        assert_eq!(db.count("replay").await, 4, "not yet cleaned up");
        // The next publish starts again at 1, replacing the old life.
        bus.publish(&t, "old", "m", "3").await.unwrap();
        let p = r.since(&t, "old", 0).await.unwrap();
        assert_eq!(p.seq, 1);
        assert_eq!(
            p.events
                .iter()
                .map(|e| (e.seq, e.data.as_str()))
                .collect::<Vec<_>>(),
            [(1, "3")]
        );
        // `gone`: seq row and event; nothing of `old` or `fresh`.
        assert_eq!(r.cleanup().await, Ok(2));
        assert_eq!(db.count("replay_seq").await, 2);
        assert_eq!(db.count("replay").await, 2);
        assert_eq!(r.purge_tenant(&t).await, Ok(2));
        db.drop_schema().await;
    }

    /// Rows outside a topic's window (left by racing appends, or by a
    /// topic that is gone) are never read and the cleanup deletes them;
    /// the cleanup task runs by itself.
    #[tokio::test]
    async fn trimmed_leftovers_are_invisible_and_cleaned_up() {
        let db = TestTables::new("rpl");
        let r = replay(&db, settings(3, None));
        let bus = MemoryBus::with_seq_source(Hub::new(), Arc::clone(&r) as Arc<dyn SeqSource>);
        let t = tid("left-pg");
        for i in 0..5 {
            bus.publish(&t, "x", "m", &i.to_string()).await.unwrap();
        }
        let root = db.root().await;
        let table = format!("{}.replay", db.schema());
        let leave = |topic: &'static str, seq: i64| {
            let (root, table) = (&root, &table);
            async move {
                root.execute(
                    &format!(
                        "INSERT INTO {table} (tenant, topic, seq, event, data, created_at) \
                         VALUES ('left-pg', $1, $2, 'stale', '0', now())"
                    ),
                    &[&topic, &seq],
                )
                .await
                .unwrap();
            }
        };
        for (topic, seq) in [("x", 1), ("x", 9), ("nowhere", 1)] {
            leave(topic, seq).await;
        }
        let p = r.since(&t, "x", 0).await.unwrap();
        assert_eq!(
            p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(!p.truncated);
        assert!(r.since(&t, "x", 1).await.unwrap().truncated);
        assert_eq!(db.count("replay").await, 6);
        assert_eq!(r.cleanup().await, Ok(3));
        assert_eq!(db.count("replay").await, 3);
        // Another host's buffers with a short interval: the task runs.
        let _auto = PostgresReplay::new(db.tables(), settings(3, None), Duration::from_millis(200));
        leave("x", 1).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while db.count("replay").await != 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cleanup task did not run"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r.purge_tenant(&t).await.unwrap();
        db.drop_schema().await;
    }

    /// Past `max_topics_per_tenant` the cleanup forgets a tenant's least
    /// recently published topics (seq and events); other tenants keep
    /// their own budget.
    #[tokio::test]
    async fn the_cleanup_applies_the_topic_bound() {
        let db = TestTables::new("rpb");
        let r = replay(
            &db,
            ReplaySettings {
                max_topics_per_tenant: 3,
                ..settings(10, None)
            },
        );
        let bus = MemoryBus::with_seq_source(Hub::new(), Arc::clone(&r) as Arc<dyn SeqSource>);
        let (a, b) = (tid("bound-a"), tid("bound-b"));
        for topic in ["t1", "t2", "t3", "t4", "t5"] {
            bus.publish(&a, topic, "e", "1").await.unwrap();
        }
        bus.publish(&b, "t1", "e", "1").await.unwrap();
        assert_eq!(r.seq(&a, "t1").await, Ok(1), "bounded at the cleanup only");
        assert_eq!(r.cleanup().await, Ok(4), "two topics, two events");
        for topic in ["t1", "t2"] {
            assert_eq!(r.seq(&a, topic).await, Ok(0), "{topic} forgotten");
        }
        for topic in ["t3", "t4", "t5"] {
            assert_eq!(r.since(&a, topic, 0).await.unwrap().events.len(), 1);
        }
        assert_eq!(r.seq(&b, "t1").await, Ok(1), "b has its own budget");
        assert_eq!(r.purge_tenant(&a).await, Ok(3));
        assert_eq!(r.purge_tenant(&b).await, Ok(1));
        db.drop_schema().await;
    }

    /// Rows live in the host schema keyed by tenant; size 0 keeps no events
    /// but counts seqs; purging one tenant leaves the other's rows.
    #[tokio::test]
    async fn rows_per_tenant_in_the_host_schema() {
        let db = TestTables::new("rpi");
        let r = replay(&db, settings(0, None));
        let bus = MemoryBus::with_seq_source(Hub::new(), Arc::clone(&r) as Arc<dyn SeqSource>);
        let (a, b) = (tid("acme"), tid("beta"));
        let odd = "room:'; DROP TABLE x; --\u{1F600}";
        bus.publish(&a, odd, "m", "1").await.unwrap();
        bus.publish(&a, odd, "m", "2").await.unwrap();
        bus.publish(&b, odd, "m", "3").await.unwrap();
        assert_eq!(r.seq(&a, odd).await, Ok(2));
        assert_eq!(r.seq(&b, odd).await, Ok(1));
        let p = r.since(&a, odd, 1).await.unwrap();
        assert!(p.events.is_empty() && p.truncated, "size 0 keeps nothing");
        assert_eq!(db.count("replay").await, 0);
        let rows = db
            .root()
            .await
            .query(
                &format!(
                    "SELECT tenant, topic, seq FROM {}.replay_seq ORDER BY tenant",
                    db.schema()
                ),
                &[],
            )
            .await
            .unwrap();
        let seen: Vec<(String, String, i64)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(
            seen,
            [
                ("acme".into(), odd.into(), 2),
                ("beta".into(), odd.into(), 1)
            ]
        );
        assert_eq!(r.purge_tenant(&a).await, Ok(1));
        assert_eq!(r.seq(&b, odd).await, Ok(1), "beta untouched");
        assert_eq!(r.purge_tenant(&b).await, Ok(1));
        db.drop_schema().await;
    }

    /// Postgres down: appends, reads and publishes fail with `Unavailable`
    /// (bounded), nothing is delivered, no panic.
    #[tokio::test]
    async fn an_unreachable_database_is_unavailable() {
        let tables = HostTables::new(
            "postgres://root@127.0.0.1:1/test",
            "rpu",
            &BTreeMap::new(),
            1,
        )
        .unwrap();
        let r = PostgresReplay::new(tables, ReplaySettings::default(), LONG);
        let hub = Hub::new();
        let (_c, mut rx) = subscriber(&hub, "acme", "room");
        let bus =
            MemoryBus::with_seq_source(Arc::clone(&hub), Arc::clone(&r) as Arc<dyn SeqSource>);
        let t = tid("acme");
        assert!(matches!(
            bus.publish(&t, "room", "m", "1").await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(rx.try_recv().is_err(), "nothing delivered");
        assert!(matches!(
            r.seq(&t, "room").await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(matches!(
            r.since(&t, "room", 0).await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(matches!(
            r.purge_tenant(&t).await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(matches!(
            r.cleanup().await,
            Err(BackendError::Unavailable(_))
        ));
    }

    /// The Redis bus in front publishes with the Postgres seq and keeps no
    /// seq keys or buffers in Redis; the host's `__` channels stay on the
    /// script (numbered in Redis, not buffered anywhere).
    #[tokio::test]
    async fn the_redis_bus_publishes_the_postgres_seq() {
        let db = TestTables::new("rpw");
        let ns = Namespace::new();
        let r = replay(&db, settings(10, Some(LONG)));
        let hub = Hub::new();
        let bus = redis_bus(&ns, Arc::clone(&r), Arc::clone(&hub)).await;
        let t = tid("wire-pg");
        // A seq that Redis never saw: the wire must carry it.
        for _ in 0..3 {
            r.append_then(
                &t,
                "room",
                "m",
                "0",
                Box::new(|_| {
                    let done: futures_util::future::BoxFuture<'_, ()> =
                        Box::pin(std::future::ready(()));
                    done
                }),
            )
            .await
            .unwrap();
        }
        let (_c, mut rx) = subscriber(&hub, "wire-pg", "room");
        bus.publish(&t, "room", "chat", r#"{"a":1}"#).await.unwrap();
        let frame = recv(&mut rx).await;
        assert_eq!(frame["seq"], 4);
        assert_eq!(frame["event"], "chat");
        assert_eq!(frame["data"]["a"], 1);
        assert_eq!(r.seq(&t, "room").await, Ok(4));
        assert_eq!(ns.keys(), Vec::<String>::new(), "nothing buffered in Redis");
        bus.publish(&t, "__presence", "diff", "{}").await.unwrap();
        assert_eq!(r.seq(&t, "__presence").await, Ok(0), "not buffered");
        r.purge_tenant(&t).await.unwrap();
        db.drop_schema().await;
    }
}
