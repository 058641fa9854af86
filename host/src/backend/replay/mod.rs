//! Replay buffers: the last events of every topic, kept so a client that
//! missed some (a dropped connection, a reconnect to another host) can
//! catch up: the `replay` frame, the `resume` frame after a reconnect, and
//! the plugin's `replay` import.
//!
//! **One seq source.** A topic's seq is assigned where its events are
//! buffered, in the same step: the memory bus appends to [`MemoryReplay`]
//! and delivers with the seq it got; the Redis bus's publish script does
//! `INCR` + `ZADD` + trim + `PUBLISH` in one `EVAL`
//! ([`crate::backend::redis::bus`]), read back by [`RedisReplay`]. So the
//! seq a subscriber sees on the wire is the seq the buffer knows, on every
//! host, and a client's `lastSeenSeqs` mean the same thing everywhere.
//!
//! Every publish through the bus is buffered (there is no per-publish
//! opt-in as in the seeds): [`ReplaySettings::size`] events per topic, and
//! a topic idle for [`ReplaySettings::ttl`] is forgotten (seq included, so
//! it starts again at 1). The host's own notices on `__realtime` are not
//! buffered. Topics are the tenant's: equal names in two tenants are two
//! buffers.
//!
//! **Truncation** (the seeds' gap detection): a client asking for the
//! events after `since` gets [`ReplayPage::truncated`] when some of them
//! are gone — `since` is older than the oldest buffered event, or the
//! buffer is empty (expired) while the seq has moved past `since`, or
//! `since` is ahead of the topic's seq (the seq restarted after the topic
//! was forgotten). `since == 0` means "everything you have" and is never
//! truncated.
//!
//! **Durable buffers** (`[replay] store = "postgres"`): [`PostgresReplay`]
//! keeps the buffers in the host's Postgres tables and is then the seq
//! source of whichever bus is in front of it, through [`SeqSource`]: the
//! memory bus appends there and delivers with the seq it got, the Redis
//! buses append there and `PUBLISH` the event with that seq (instead of
//! their script's `INCR` + `ZADD`). The rule stays one seq source.

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod postgres;
pub mod redis;

pub use memory::MemoryReplay;
pub use postgres::PostgresReplay;
pub use redis::RedisReplay;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Default [`ReplaySettings::size`] (the seeds' default).
pub const DEFAULT_SIZE: usize = 1000;
/// Default [`ReplaySettings::ttl`]: a day. The seeds default to "never";
/// a finite default keeps Redis from growing with every topic ever used.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default [`ReplaySettings::max_bytes_per_tenant`].
pub const DEFAULT_MAX_BYTES_PER_TENANT: usize = 8 << 20;
/// Default [`ReplaySettings::max_topics_per_tenant`].
pub const DEFAULT_MAX_TOPICS_PER_TENANT: usize = 10_000;

/// How much the replay buffers keep (the `[replay]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySettings {
    /// Events kept per topic (the newest); 0 keeps none (seqs still count).
    pub size: usize,
    /// A topic with no publish for this long is forgotten; `None`: never.
    pub ttl: Option<Duration>,
    /// Bytes of buffered events one tenant may hold (memory and Redis); over
    /// it, the oldest events of the least recently published topics go.
    pub max_bytes_per_tenant: usize,
    /// Topics one tenant may buffer (memory and Redis; Postgres at each
    /// cleanup); over it, the least recently published topic is forgotten
    /// (seq included).
    pub max_topics_per_tenant: usize,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            size: DEFAULT_SIZE,
            ttl: Some(DEFAULT_TTL),
            max_bytes_per_tenant: DEFAULT_MAX_BYTES_PER_TENANT,
            max_topics_per_tenant: DEFAULT_MAX_TOPICS_PER_TENANT,
        }
    }
}

/// One buffered event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayEvent {
    /// Its seq on the topic.
    pub seq: u64,
    /// The event name.
    pub event: String,
    /// The data, JSON text.
    pub data: String,
}

/// The answer to [`ReplayBuffer::since`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayPage {
    /// Some events after `since` are no longer buffered (see the module docs).
    pub truncated: bool,
    /// The buffered events after `since` (all of them when truncated because
    /// `since` was ahead), oldest first.
    pub events: Vec<ReplayEvent>,
    /// The topic's current seq (0: nothing published, or forgotten).
    pub seq: u64,
}

/// Reads a tenant's replay buffers (appending is the bus's job; see the
/// module docs).
#[async_trait]
pub trait ReplayBuffer: Send + Sync + 'static {
    /// The topic's current seq: the seq of its last event, 0 if none.
    async fn seq(&self, tenant: &TenantId, topic: &str) -> Result<u64, BackendError>;
    /// The buffered events of `topic` with a seq above `since`.
    async fn since(
        &self,
        tenant: &TenantId,
        topic: &str,
        since: u64,
    ) -> Result<ReplayPage, BackendError>;
    /// Forget every buffer of `tenant` (the tenant is being deleted);
    /// returns how many topics were removed. Other tenants are untouched.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
}

/// What a [`SeqSource`] does with an event once it has its seq: deliver it
/// (the memory bus: to the local hub; the Redis buses: `PUBLISH` it).
pub type Deliver<'a> = Box<dyn FnOnce(u64) -> BoxFuture<'a, ()> + Send + 'a>;

/// A seq source and replay buffer outside the bus (the durable buffers),
/// which a bus appends every replayable event to before delivering it with
/// the seq it got (see the module docs). The default buses do not use one:
/// the memory bus numbers in [`MemoryReplay`], the Redis buses in their
/// publish script.
#[async_trait]
pub trait SeqSource: Send + Sync + 'static {
    /// Assign `topic`'s next seq to the event, buffer it and call `deliver`
    /// with the seq before any later event of the topic (on any host
    /// sharing the buffer) gets its seq, so deliveries follow seq order.
    /// Returns the seq; on an error `deliver` was not called and nothing
    /// was buffered.
    async fn append_then(
        &self,
        tenant: &TenantId,
        topic: &str,
        event: &str,
        data: &str,
        deliver: Deliver<'_>,
    ) -> Result<u64, BackendError>;
}

/// A durable replay buffer: the [`SeqSource`] the bus appends to and the
/// [`ReplayBuffer`] clients read, one object behind both handles.
#[derive(Clone)]
pub struct DurableReplay {
    /// Where the bus appends.
    pub seqs: Arc<dyn SeqSource>,
    /// Where clients read (the same buffers).
    pub buffer: Arc<dyn ReplayBuffer>,
}

impl DurableReplay {
    /// Both handles of `replay`.
    pub fn new<R: SeqSource + ReplayBuffer>(replay: Arc<R>) -> Self {
        Self {
            seqs: Arc::clone(&replay) as Arc<dyn SeqSource>,
            buffer: replay,
        }
    }
}

/// Whether a client that saw up to `since` missed events no longer
/// buffered, given the topic's `seq` and its `oldest` buffered seq (`None`:
/// the buffer is empty). Shared by every implementation.
pub fn is_truncated(since: u64, seq: u64, oldest: Option<u64>) -> bool {
    if since == 0 {
        return false;
    }
    if since > seq {
        return true;
    }
    match oldest {
        Some(oldest) => since + 1 < oldest,
        None => seq > since,
    }
}

/// The page for `since`, given the topic's current `seq`, its `oldest`
/// buffered seq (`None`: empty buffer) and the buffered events with a seq
/// above `since` — or, when `since > seq`, all of them. Shared by every
/// implementation.
pub fn page(since: u64, seq: u64, oldest: Option<u64>, events: Vec<ReplayEvent>) -> ReplayPage {
    ReplayPage {
        truncated: is_truncated(since, seq, oldest),
        events,
        seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_rules() {
        // Nothing missed.
        assert!(!is_truncated(5, 5, Some(1)));
        assert!(!is_truncated(4, 5, Some(5)));
        assert!(
            !is_truncated(0, 500, Some(400)),
            "since 0 is never truncated"
        );
        assert!(!is_truncated(3, 3, None), "caught up, buffer expired");
        // Missed events that are gone.
        assert!(is_truncated(3, 10, Some(5)));
        assert!(is_truncated(3, 10, None), "buffer expired past since");
        assert!(is_truncated(12, 4, Some(1)), "seq restarted");
    }
}
