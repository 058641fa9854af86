//! The embedded default backends: everything in this process's memory, no
//! external service. [`MemoryBus`] fans out through the local [`Hub`];
//! [`MemoryKv`] is a per-tenant map with TTLs.
//!
//! `conformance` (test builds) holds the behavioural suites every implementation of a
//! backend trait (memory, Redis, ...) must pass.
//!
//! [`Hub`]: crate::hub::Hub

mod bus;
#[cfg(test)]
pub(crate) mod conformance;
mod kv;

pub use bus::MemoryBus;
pub use kv::{MemoryKv, MemoryKvLimits};

use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backends;
use crate::backend::cursor::memory::MemoryCursors;
use crate::backend::groups::DEFAULT_MEMBER_TTL;
use crate::backend::groups::memory::MemoryGroups;
use crate::backend::idempotency::memory::MemoryIdempotency;
use crate::backend::lock::memory::MemoryLock;
use crate::backend::presence::memory::MemoryPresence;
use crate::backend::presence_events::memory::MemoryPresenceOutbox;
use crate::backend::publish_rate::PublishRates;
use crate::backend::publish_rate::memory::MemoryRateBoard;
use crate::backend::ratelimit::memory::MemoryRateLimiter;
use crate::backend::replay::{DurableReplay, MemoryReplay, ReplayBuffer, ReplaySettings};
use crate::groups::Groups;
use crate::hub::Hub;

/// How often the KV sweeper started by [`backends`] purges expired keys.
pub const KV_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The embedded default [`Backends`], with replay buffers of default size
/// (see [`backends_with_replay`]).
pub fn backends(hub: Arc<Hub>) -> Backends {
    backends_with_replay(hub, ReplaySettings::default())
}

/// The memory [`Backends`]: a [`MemoryBus`] on `hub` buffering
/// in a [`MemoryReplay`] kept as `replay` says, and a [`MemoryKv`] with
/// default limits. Called inside a tokio runtime, it also
/// starts the KV's periodic sweeper (every [`KV_SWEEP_INTERVAL`]).
pub fn backends_with_replay(hub: Arc<Hub>, replay: ReplaySettings) -> Backends {
    backends_with_durable_replay(hub, replay, None)
}

/// As [`backends_with_replay`]; with `durable` (`[replay] store =
/// "postgres"`) the bus numbers and buffers in those replay buffers
/// instead, and they are the `replay` of the backends.
pub fn backends_with_durable_replay(
    hub: Arc<Hub>,
    replay: ReplaySettings,
    durable: Option<&DurableReplay>,
) -> Backends {
    let kv = Arc::new(MemoryKv::new());
    if tokio::runtime::Handle::try_current().is_ok() {
        kv.spawn_sweeper(KV_SWEEP_INTERVAL);
    }
    let (bus, replay): (Arc<dyn crate::backend::Bus>, Arc<dyn ReplayBuffer>) = match durable {
        Some(d) => (
            Arc::new(MemoryBus::with_seq_source(
                Arc::clone(&hub),
                Arc::clone(&d.seqs),
            )),
            Arc::clone(&d.buffer),
        ),
        None => {
            let replay = Arc::new(MemoryReplay::new(replay));
            (
                Arc::new(MemoryBus::with_replay(
                    Arc::clone(&hub),
                    Arc::clone(&replay),
                )),
                replay,
            )
        }
    };
    Backends {
        groups: Groups::new(
            Arc::new(MemoryGroups::new()),
            hub,
            Arc::clone(&bus),
            DEFAULT_MEMBER_TTL,
        ),
        bus,
        replay,
        kv,
        ratelimit: Arc::new(MemoryRateLimiter::new()),
        lock: Arc::new(MemoryLock::new()),
        idempotency: Arc::new(MemoryIdempotency::new()),
        presence: Arc::new(MemoryPresence::new()),
        publish_rates: Arc::new(PublishRates::new(Arc::new(MemoryRateBoard::new()))),
        cursors: Arc::new(MemoryCursors::new()),
        presence_events: Arc::new(MemoryPresenceOutbox::new()),
        breakers: Vec::new(),
        sql: None,
        host_tables: None,
        jobs: None,
        schedules: None,
        tasks: None,
    }
}
