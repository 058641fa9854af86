//! The Redis replay buffers: written by the Redis bus's publish script
//! ([`crate::backend::redis::bus`]), read here. Layout, per topic, both in
//! the tenant's slot: `{ns}:t:{<tenant>}:seq:<topic>` (the seq, a string)
//! and `{ns}:t:{<tenant>}:replay:<topic>` (sorted set scored by seq,
//! members `<seq>\n<event>\n<data>`); per tenant, the index the
//! per-tenant bounds (`max_topics_per_tenant`, `max_bytes_per_tenant`) are
//! kept with: `replay-index` (topic → last publish), `replay-sizes` (topic →
//! bytes) and `replay-total` (see the publish script in
//! [`crate::backend::redis::bus`]).

use std::sync::Arc;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{ReplayBuffer, ReplayEvent, ReplayPage, page};
use crate::backend::BackendError;
use crate::backend::breaker::CircuitBreaker;
use crate::backend::redis::RedisScope;
use crate::backend::redis::bus::{REPLAY_INDEX, REPLAY_SIZES, REPLAY_TOTAL};
use crate::tenant::TenantId;

/// `KEYS[1]` seq key, `KEYS[2]` buffer; `ARGV[1]` since. Returns the seq,
/// the oldest buffered seq (or `''`) and the members to replay, read
/// atomically so they agree.
const SINCE_SCRIPT: &str = r"
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local from = '(' .. ARGV[1]
if tonumber(ARGV[1]) > seq then
  from = '-inf'
end
local entries = redis.call('ZRANGEBYSCORE', KEYS[2], from, '+inf')
return {string.format('%d', seq), oldest[2] or '', entries}
";

/// Replay buffers in Redis, shared by every host on the same Redis and
/// namespace. Reads go through the Redis [`CircuitBreaker`]: while it is
/// open they fail fast with `Unavailable`.
pub struct RedisReplay {
    scope: RedisScope,
    since_script: Script,
}

impl RedisReplay {
    /// Buffers under `namespace` on `conn`, guarded by `breaker` (the one
    /// shared by every backend on this Redis).
    pub fn new(conn: ConnectionManager, namespace: String, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            scope: RedisScope::new(conn, namespace, breaker),
            since_script: Script::new(SINCE_SCRIPT),
        }
    }
}

/// Parse a buffer member `<seq>\n<event>\n<data>`.
fn parse_member(member: &str) -> Result<ReplayEvent, BackendError> {
    let bad = || BackendError::Other("malformed replay buffer entry in Redis".into());
    let (seq, rest) = member.split_once('\n').ok_or_else(bad)?;
    let (event, data) = rest.split_once('\n').ok_or_else(bad)?;
    Ok(ReplayEvent {
        seq: seq.parse().map_err(|_| bad())?,
        event: event.to_owned(),
        data: data.to_owned(),
    })
}

#[async_trait]
impl ReplayBuffer for RedisReplay {
    async fn seq(&self, tenant: &TenantId, topic: &str) -> Result<u64, BackendError> {
        let mut get = redis::cmd("GET");
        get.arg(self.scope.keys(tenant).name("seq", topic));
        let seq: Option<u64> = self.scope.cmd("replay seq", &get).await?;
        Ok(seq.unwrap_or(0))
    }

    async fn since(
        &self,
        tenant: &TenantId,
        topic: &str,
        since: u64,
    ) -> Result<ReplayPage, BackendError> {
        let keys = self.scope.keys(tenant);
        let mut invocation = self.since_script.prepare_invoke();
        invocation
            .key(keys.name("seq", topic))
            .key(keys.name("replay", topic))
            .arg(since);
        let (seq, oldest, members): (String, String, Vec<String>) =
            self.scope.script("replay since", &invocation).await?;
        let bad = || BackendError::Other("malformed replay answer from Redis".into());
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        let oldest = if oldest.is_empty() {
            None
        } else {
            Some(oldest.parse::<u64>().map_err(|_| bad())?)
        };
        let events = members
            .iter()
            .map(|m| parse_member(m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(since, seq, oldest, events))
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let keys = self.scope.keys(tenant);
        let topics = self
            .scope
            .delete_matching("replay purge", &keys.name("seq", ""))
            .await?;
        self.scope
            .delete_matching("replay purge", &keys.name("replay", ""))
            .await?;
        let mut del = redis::cmd("DEL");
        del.arg(keys.fixed(REPLAY_INDEX))
            .arg(keys.fixed(REPLAY_SIZES))
            .arg(keys.fixed(REPLAY_TOTAL));
        let _: u64 = self.scope.cmd("replay purge", &del).await?;
        Ok(topics)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::Bus;
    use crate::backend::redis::bus::RedisBus;
    use crate::backend::redis::test_support::{Namespace, breaker, redis_url};
    use crate::backend::replay::{ReplaySettings, conformance};
    use crate::hub::Hub;
    use crate::tenant::TenantScope;

    async fn pair(ns: &Namespace, settings: ReplaySettings) -> (Arc<RedisBus>, RedisReplay) {
        let breaker = breaker();
        let conn = ns.conn().await;
        let bus = RedisBus::start_configured(
            conn.clone(),
            &redis_url(),
            ns.name(),
            Hub::new(),
            Arc::clone(&breaker),
            settings,
            TenantScope::All,
        )
        .await
        .unwrap();
        (bus, RedisReplay::new(conn, ns.name(), breaker))
    }

    #[test]
    fn members_parse_with_newlines_in_the_data() {
        let e = parse_member("7\nmsg\n{\"a\":\"x\\ny\"}\nz").unwrap();
        assert_eq!(e.seq, 7);
        assert_eq!(e.event, "msg");
        assert_eq!(e.data, "{\"a\":\"x\\ny\"}\nz");
        assert!(parse_member("x\ny\nz").is_err());
        assert!(parse_member("7\nno-data").is_err());
    }

    #[tokio::test]
    async fn redis_replay_passes_the_bounds_suite() {
        let ns = Namespace::new();
        let (bus, replay) = pair(&ns, conformance::BOUNDS).await;
        conformance::bounds(&*bus, &replay).await;
        assert_eq!(ns.keys(), Vec::<String>::new(), "purge left nothing");
    }

    #[tokio::test]
    async fn redis_replay_passes_the_conformance_suite() {
        let ns = Namespace::new();
        let (bus, replay) = pair(
            &ns,
            ReplaySettings {
                size: conformance::SIZE,
                ..ReplaySettings::default()
            },
        )
        .await;
        conformance::suite(&*bus, &replay).await;
        assert_eq!(ns.keys(), Vec::<String>::new(), "purge left nothing");
    }

    #[tokio::test]
    async fn two_hosts_share_one_seq_and_buffer() {
        let ns = Namespace::new();
        let settings = ReplaySettings {
            size: 100,
            ..ReplaySettings::default()
        };
        let (bus_a, replay_a) = pair(&ns, settings).await;
        let (bus_b, replay_b) = pair(&ns, settings).await;
        let t = TenantId::parse("fleet-replay").unwrap();
        let publishes = (0..40).map(|i| {
            let bus: &RedisBus = if i % 2 == 0 { &bus_a } else { &bus_b };
            bus.publish(&t, "room:1", "m", "{}")
        });
        for r in futures_util::future::join_all(publishes).await {
            r.unwrap();
        }
        let a = replay_a.since(&t, "room:1", 0).await.unwrap();
        let b = replay_b.since(&t, "room:1", 30).await.unwrap();
        assert_eq!(a.seq, 40);
        assert_eq!(
            a.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<_>>()
        );
        assert_eq!(b.events.len(), 10);
        replay_a.purge_tenant(&t).await.unwrap();
    }

    #[tokio::test]
    async fn keys_expire_with_the_ttl_and_the_seq_restarts() {
        let ns = Namespace::new();
        let (bus, replay) = pair(
            &ns,
            ReplaySettings {
                size: 10,
                ttl: Some(std::time::Duration::from_millis(200)),
                ..ReplaySettings::default()
            },
        )
        .await;
        let t = TenantId::parse("ttl-replay").unwrap();
        bus.publish(&t, "x", "m", "1").await.unwrap();
        bus.publish(&t, "x", "m", "2").await.unwrap();
        assert_eq!(replay.seq(&t, "x").await.unwrap(), 2);
        for key in ns.keys() {
            assert!(
                key.starts_with(&format!("{}:t:{{ttl-replay}}:", ns.name())),
                "{key}"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let p = replay.since(&t, "x", 2).await.unwrap();
        assert_eq!(p.seq, 0);
        assert!(p.truncated);
        assert_eq!(ns.keys(), Vec::<String>::new(), "both keys expired");
    }

    #[tokio::test]
    async fn reads_fail_fast_while_the_breaker_is_open() {
        let ns = Namespace::new();
        let breaker = breaker();
        let replay = RedisReplay::new(ns.conn().await, ns.name(), Arc::clone(&breaker));
        for _ in 0..breaker.config().failure_threshold {
            breaker.failure();
        }
        let t = TenantId::parse("open-replay").unwrap();
        assert!(matches!(
            replay.since(&t, "x", 0).await,
            Err(BackendError::Unavailable(_))
        ));
    }
}
