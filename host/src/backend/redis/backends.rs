//! The Redis backends of one Redis server, as `[redis]` asks for them, and
//! how a host's [`Backends`] are made from the shared server plus the
//! servers of tenants with a Redis of their own (`[redis.tenant_urls]`,
//! routed per tenant by [`crate::backend::routed`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use redis::aio::ConnectionManager;

use super::bus::RedisBus;
use super::kv::RedisKv;
use super::sharded_bus::RedisShardedBus;
use crate::backend::breaker::{self, BreakerConfig, CircuitBreaker};
use crate::backend::cursor::CursorStore;
use crate::backend::cursor::redis::RedisCursors;
use crate::backend::groups::GroupStore;
use crate::backend::groups::memory::MemoryGroups;
use crate::backend::groups::redis::RedisGroups;
use crate::backend::idempotency::IdempotencyStore;
use crate::backend::idempotency::redis::RedisIdempotency;
use crate::backend::lock::DistributedLock;
use crate::backend::lock::redis::RedisLock;
use crate::backend::presence::PresenceStore;
use crate::backend::presence::redis::RedisPresence;
use crate::backend::presence_events::PresenceOutbox;
use crate::backend::presence_events::redis::RedisPresenceOutbox;
use crate::backend::publish_rate::redis::RedisRateBoard;
use crate::backend::publish_rate::{PublishRates, RateBoard};
use crate::backend::ratelimit::RateLimiter;
use crate::backend::ratelimit::redis::RedisRateLimiter;
use crate::backend::replay::redis::RedisReplay;
use crate::backend::replay::{DurableReplay, ReplayBuffer, ReplaySettings};
use crate::backend::routed::Routed;
use crate::backend::{BackendError, Backends, Bus, Kv};
use crate::config::{BusMode, RedisSettings};
use crate::groups::Groups;
use crate::hub::Hub;
use crate::tenant::{TenantId, TenantScope};

/// The Redis-backed extensions on one Redis server: those `[redis]`
/// enables (the others are `None` and stay in memory), sharing one
/// connection and one circuit breaker.
pub struct RedisBackends {
    /// The breaker every command to this server goes through (probed with
    /// `PING` while broken).
    pub breaker: Arc<CircuitBreaker>,
    bus: Option<(Arc<dyn Bus>, Arc<dyn ReplayBuffer>)>,
    kv: Option<Arc<dyn Kv>>,
    ratelimit: Option<Arc<dyn RateLimiter>>,
    lock: Option<Arc<dyn DistributedLock>>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    presence: Option<(Arc<dyn PresenceStore>, Arc<dyn PresenceOutbox>)>,
    groups: Option<Arc<dyn GroupStore>>,
    cursors: Option<Arc<dyn CursorStore>>,
    publish_rates: Option<Arc<dyn RateBoard>>,
}

impl RedisBackends {
    /// Connect to the Redis at `url` and build the extensions `settings`
    /// enables, with one breaker called `name` (its logs and metrics), for the tenants of `scope` (whose bus events this server
    /// carries, and who hear its breaker's notices), the bus delivering
    /// into `hub` and buffering as `replay` says — or, with `durable`,
    /// numbering and buffering there. `Unavailable` if the server cannot
    /// be reached.
    pub async fn connect(
        name: &str,
        url: &str,
        settings: &RedisSettings,
        hub: &Arc<Hub>,
        replay: ReplaySettings,
        scope: TenantScope,
        durable: Option<&DurableReplay>,
    ) -> Result<Self, BackendError> {
        let conn = super::connect(url).await?;
        let breaker = Arc::new(CircuitBreaker::new(name, BreakerConfig::default()));
        breaker::spawn_redis_prober(&breaker, conn.clone());
        let ns = &settings.namespace;
        let store = |conn: &ConnectionManager| (conn.clone(), ns.clone(), Arc::clone(&breaker));
        let bus = if settings.bus {
            // The replay buffers follow the bus: its publish script numbers
            // and buffers each event in one step (one seq source).
            // With durable buffers, those number and buffer instead.
            let (c, n, b) = store(&conn);
            let seqs = durable.map(|d| Arc::clone(&d.seqs));
            let bus: Arc<dyn Bus> = match settings.bus_mode {
                BusMode::Pubsub => {
                    RedisBus::start_with_seqs(c, url, n, Arc::clone(hub), b, replay, scope, seqs)
                        .await?
                }
                BusMode::Sharded => {
                    RedisShardedBus::start_with_seqs(
                        c,
                        url,
                        n,
                        Arc::clone(hub),
                        b,
                        replay,
                        scope,
                        seqs,
                    )
                    .await?
                }
            };
            let (c, n, b) = store(&conn);
            let buffer = match durable {
                Some(d) => Arc::clone(&d.buffer),
                None => Arc::new(RedisReplay::new(c, n, b)) as Arc<dyn ReplayBuffer>,
            };
            Some((bus, buffer))
        } else {
            None
        };
        let on = |enabled: bool| enabled.then(|| store(&conn));
        Ok(Self {
            bus,
            kv: on(settings.kv)
                .map(|(c, n, b)| Arc::new(RedisKv::new(c, n).with_breaker(b)) as Arc<dyn Kv>),
            ratelimit: on(settings.ratelimit)
                .map(|(c, n, b)| Arc::new(RedisRateLimiter::new(c, n, b)) as Arc<dyn RateLimiter>),
            lock: on(settings.lock)
                .map(|(c, n, b)| Arc::new(RedisLock::new(c, n, b)) as Arc<dyn DistributedLock>),
            idempotency: on(settings.idempotency).map(|(c, n, b)| {
                Arc::new(RedisIdempotency::new(c, n, b)) as Arc<dyn IdempotencyStore>
            }),
            presence: on(settings.presence).map(|(c, n, b)| {
                let outbox = RedisPresenceOutbox::new(c.clone(), n.clone(), Arc::clone(&b));
                (
                    Arc::new(RedisPresence::new(c, n, b)) as Arc<dyn PresenceStore>,
                    Arc::new(outbox) as Arc<dyn PresenceOutbox>,
                )
            }),
            groups: on(settings.groups)
                .map(|(c, n, b)| Arc::new(RedisGroups::new(c, n, b)) as Arc<dyn GroupStore>),
            cursors: on(settings.cursors)
                .map(|(c, n, b)| Arc::new(RedisCursors::new(c, n, b)) as Arc<dyn CursorStore>),
            publish_rates: on(settings.publish_rates)
                .map(|(c, n, b)| Arc::new(RedisRateBoard::new(c, n, b)) as Arc<dyn RateBoard>),
            breaker,
        })
    }
}

/// A host's backends on Redis: the extensions `settings` enables on the
/// shared Redis (`settings.url`), except for the tenants of
/// `settings.tenant_urls`, whose extensions use their own Redis; the
/// others in memory. Every Redis is connected before this returns. With
/// `durable` (`[replay] store = "postgres"`) every bus, Redis or memory,
/// numbers and buffers its events there, and those are the replay buffers.
pub async fn fleet_backends(
    settings: &RedisSettings,
    hub: &Arc<Hub>,
    replay: ReplaySettings,
    group_member_ttl: std::time::Duration,
    durable: Option<&DurableReplay>,
) -> Result<Backends, BackendError> {
    // One route per distinct URL; tenants naming the same URL share it.
    let mut urls: Vec<&str> = Vec::new();
    let mut tenants: HashMap<TenantId, usize> = HashMap::new();
    for (tenant, url) in &settings.tenant_urls {
        let index = match urls.iter().position(|u| u == url) {
            Some(i) => i,
            None => {
                urls.push(url);
                urls.len() - 1
            }
        };
        tenants.insert(tenant.clone(), index);
    }
    let own: Arc<HashSet<TenantId>> = Arc::new(tenants.keys().cloned().collect());
    let shared_scope = if own.is_empty() {
        TenantScope::All
    } else {
        TenantScope::AllBut(own)
    };
    let shared = RedisBackends::connect(
        "redis",
        &settings.url,
        settings,
        hub,
        replay,
        shared_scope,
        durable,
    )
    .await?;
    let mut dedicated = Vec::with_capacity(urls.len());
    for (index, url) in urls.iter().enumerate() {
        let served: HashSet<TenantId> = tenants
            .iter()
            .filter(|&(_, &i)| i == index)
            .map(|(t, _)| t.clone())
            .collect();
        let mut names: Vec<&str> = served.iter().map(TenantId::as_str).collect();
        names.sort_unstable();
        let name = format!("redis:{}", names.join(","));
        let scope = TenantScope::Only(Arc::new(served.clone()));
        let set = RedisBackends::connect(&name, url, settings, hub, replay, scope, durable)
            .await
            .map_err(|e| BackendError::Unavailable(format!("the Redis of {name}: {e}")))?;
        tracing::info!(tenants = ?names, "Redis of their own connected");
        dedicated.push((set, served.into_iter().collect()));
    }
    let mut backends =
        crate::backend::memory::backends_with_durable_replay(Arc::clone(hub), replay, durable);
    backends.breakers = std::iter::once(&shared)
        .chain(dedicated.iter().map(|(set, _)| set))
        .map(|set| Arc::clone(&set.breaker))
        .collect();
    let routes = Routes {
        shared: &shared,
        dedicated: &dedicated,
    };
    if let Some(bus) = routes.pick(
        |s| s.bus.as_ref().map(|b| Arc::clone(&b.0)),
        |r| Arc::new(r),
    ) {
        backends.bus = bus;
    }
    if let Some(replay) = routes.pick(
        |s| s.bus.as_ref().map(|b| Arc::clone(&b.1)),
        |r| Arc::new(r),
    ) {
        backends.replay = replay;
    }
    if let Some(kv) = routes.pick(|s| s.kv.clone(), |r| Arc::new(r)) {
        backends.kv = kv;
    }
    if let Some(ratelimit) = routes.pick(|s| s.ratelimit.clone(), |r| Arc::new(r)) {
        backends.ratelimit = ratelimit;
    }
    if let Some(lock) = routes.pick(|s| s.lock.clone(), |r| Arc::new(r)) {
        backends.lock = lock;
    }
    if let Some(idempotency) = routes.pick(|s| s.idempotency.clone(), |r| Arc::new(r)) {
        backends.idempotency = idempotency;
    }
    if let Some(presence) = routes.pick(
        |s| s.presence.as_ref().map(|p| Arc::clone(&p.0)),
        |r| Arc::new(r),
    ) {
        backends.presence = presence;
    }
    if let Some(outbox) = routes.pick(
        |s| s.presence.as_ref().map(|p| Arc::clone(&p.1)),
        |r| Arc::new(r),
    ) {
        backends.presence_events = outbox;
    }
    if let Some(cursors) = routes.pick(|s| s.cursors.clone(), |r| Arc::new(r)) {
        backends.cursors = cursors;
    }
    if let Some(board) = routes.pick(|s| s.publish_rates.clone(), |r| Arc::new(r)) {
        backends.publish_rates = Arc::new(PublishRates::new(board));
    }
    let group_store = routes
        .pick(|s| s.groups.clone(), |r| Arc::new(r))
        .unwrap_or_else(|| Arc::new(MemoryGroups::new()));
    backends.groups = Groups::new(
        group_store,
        Arc::clone(hub),
        Arc::clone(&backends.bus),
        group_member_ttl,
    );
    Ok(backends)
}

/// The Redis servers of a host and which tenants use which.
struct Routes<'a> {
    shared: &'a RedisBackends,
    /// Each server of tenants' own and the tenants it serves.
    dedicated: &'a [(RedisBackends, Vec<TenantId>)],
}

impl Routes<'_> {
    /// The extension `get` takes from a server: the shared server's alone
    /// when no tenant has its own, else a [`Routed`] over every server
    /// (made into the trait object by `wrap`). `None` when the extension
    /// is not on Redis.
    fn pick<T: ?Sized>(
        &self,
        get: impl Fn(&RedisBackends) -> Option<Arc<T>>,
        wrap: impl FnOnce(Routed<T>) -> Arc<T>,
    ) -> Option<Arc<T>> {
        let shared = get(self.shared)?;
        if self.dedicated.is_empty() {
            return Some(shared);
        }
        let mut own = HashMap::new();
        for (server, tenants) in self.dedicated {
            let backend = get(server)?;
            own.extend(tenants.iter().map(|t| (t.clone(), Arc::clone(&backend))));
        }
        Some(wrap(Routed::new(shared, own)))
    }
}
