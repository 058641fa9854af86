//! The host imports, behind plain functions.
//!
//! On `wasm32` these call the WIT imports of the Tenantry host. On any other
//! target (unit tests of the SDK and of plugins, run natively) they use a
//! small in-memory stand-in, one per thread, that behaves like the embedded
//! default backends; see [`crate::testing`].

use crate::error::Error;
use crate::log::Level;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Error, Level};
    use crate::bindings::tenantry::plugin::{
        groups, idempotency, kv, lock, log, presence, pubsub, ratelimit, replay, types::HostError,
    };
    use crate::groups::{GroupInfo, GroupMember, Joined, Role};
    use crate::idempotency::State;
    use crate::replay::{ReplayEvent, ReplayPage};

    fn convert(e: HostError) -> Error {
        match e {
            HostError::AccessDenied => Error::AccessDenied,
            HostError::QuotaExceeded => Error::QuotaExceeded,
            HostError::Timeout => Error::Timeout,
            HostError::Unavailable => Error::Unavailable,
            HostError::TooLarge => Error::TooLarge,
            HostError::Invalid => Error::Invalid,
            HostError::RateLimited(retry_after_ms) => Error::RateLimited { retry_after_ms },
            HostError::Other(message) => Error::Other(message),
        }
    }

    pub fn publish(topic: &str, event: &str, data: &str) -> Result<(), Error> {
        pubsub::publish(topic, event, data).map_err(convert)
    }

    pub fn kv_get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        kv::get(key).map_err(convert)
    }

    pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), Error> {
        kv::set(key, value, ttl_ms).map_err(convert)
    }

    pub fn kv_delete(key: &str) -> Result<bool, Error> {
        kv::delete(key).map_err(convert)
    }

    pub fn kv_incr(key: &str, delta: i64) -> Result<i64, Error> {
        kv::incr(key, delta).map_err(convert)
    }

    pub fn replay_seq(topic: &str) -> Result<u64, Error> {
        replay::seq(topic).map_err(convert)
    }

    pub fn replay_since(topic: &str, since: u64) -> Result<ReplayPage, Error> {
        let page = replay::since(topic, since).map_err(convert)?;
        let events = page
            .events
            .into_iter()
            .map(|e| {
                Ok(ReplayEvent {
                    seq: e.seq,
                    event: e.event,
                    data: serde_json::from_str(&e.data)
                        .map_err(|err| Error::Decode(err.to_string()))?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(ReplayPage {
            truncated: page.truncated,
            events,
            seq: page.seq,
        })
    }

    pub fn ratelimit_consume(
        key: &str,
        points: u32,
        interval_ms: u64,
        block_ms: u64,
        cost: u32,
    ) -> Result<(bool, u32, u64, u64), Error> {
        let rule = ratelimit::RateRule {
            points,
            interval_ms,
            block_ms,
        };
        let d = ratelimit::consume(key, rule, cost).map_err(convert)?;
        Ok((d.allowed, d.remaining, d.retry_after_ms, d.reset_ms))
    }

    pub fn ratelimit_reset(key: &str) -> Result<(), Error> {
        ratelimit::reset(key).map_err(convert)
    }

    pub fn ratelimit_ban(key: &str, duration_ms: u64) -> Result<(), Error> {
        ratelimit::ban(key, duration_ms).map_err(convert)
    }

    pub fn ratelimit_unban(key: &str) -> Result<(), Error> {
        ratelimit::unban(key).map_err(convert)
    }

    pub fn lock_acquire(key: &str, ttl_ms: u64, wait_ms: u64) -> Result<Option<u64>, Error> {
        lock::acquire(key, ttl_ms, wait_ms).map_err(convert)
    }

    pub fn lock_refresh(key: &str, token: u64, ttl_ms: u64) -> Result<bool, Error> {
        lock::refresh(key, token, ttl_ms).map_err(convert)
    }

    pub fn lock_release(key: &str, token: u64) -> Result<bool, Error> {
        lock::release(key, token).map_err(convert)
    }

    pub fn idempotency_acquire(key: &str, pending_ttl_ms: u64) -> Result<State, Error> {
        Ok(
            match idempotency::acquire(key, pending_ttl_ms).map_err(convert)? {
                idempotency::IdemState::Acquired => State::Acquired,
                idempotency::IdemState::Pending => State::Pending,
                idempotency::IdemState::Done(json) => State::Done(json),
            },
        )
    }

    pub fn idempotency_commit(key: &str, value: &str, ttl_ms: u64) -> Result<(), Error> {
        idempotency::commit(key, value, ttl_ms).map_err(convert)
    }

    pub fn idempotency_abort(key: &str) -> Result<(), Error> {
        idempotency::abort(key).map_err(convert)
    }

    pub fn presence_join(topic: &str, data: &str) -> Result<(), Error> {
        presence::join(topic, data).map_err(convert)
    }

    pub fn presence_leave(topic: &str) -> Result<(), Error> {
        presence::leave(topic).map_err(convert)
    }

    pub fn presence_members(topic: &str) -> Result<Vec<crate::presence::Member>, Error> {
        presence::members(topic)
            .map_err(convert)?
            .into_iter()
            .map(|m| {
                Ok(crate::presence::Member {
                    key: m.key,
                    data: serde_json::from_str(&m.data)
                        .map_err(|err| Error::Decode(err.to_string()))?,
                })
            })
            .collect()
    }

    fn role_to_wit(role: Role) -> groups::Role {
        match role {
            Role::Member => groups::Role::Member,
            Role::Admin => groups::Role::Admin,
            Role::Viewer => groups::Role::Viewer,
        }
    }

    fn role_from_wit(role: groups::Role) -> Role {
        match role {
            groups::Role::Member => Role::Member,
            groups::Role::Admin => Role::Admin,
            groups::Role::Viewer => Role::Viewer,
        }
    }

    fn decode(json: &str) -> Result<serde_json::Value, Error> {
        serde_json::from_str(json).map_err(|err| Error::Decode(err.to_string()))
    }

    pub fn groups_create(
        name: &str,
        max_members: Option<u32>,
        meta: &str,
    ) -> Result<GroupInfo, Error> {
        let info = groups::create(name, max_members, meta).map_err(convert)?;
        Ok(GroupInfo {
            created: info.created,
            max_members: info.max_members,
            meta: decode(&info.meta)?,
            closed: info.closed,
        })
    }

    pub fn groups_join(name: &str, role: Role) -> Result<Joined, Error> {
        let joined = groups::join(name, role_to_wit(role)).map_err(convert)?;
        Ok(Joined {
            new: joined.new,
            role: role_from_wit(joined.role),
            count: joined.count,
        })
    }

    pub fn groups_leave(name: &str) -> Result<bool, Error> {
        groups::leave(name).map_err(convert)
    }

    pub fn groups_publish(
        name: &str,
        event: &str,
        data: &str,
        role: Option<Role>,
    ) -> Result<(), Error> {
        groups::publish(name, event, data, role.map(role_to_wit)).map_err(convert)
    }

    pub fn groups_members(name: &str) -> Result<Vec<GroupMember>, Error> {
        Ok(groups::members(name)
            .map_err(convert)?
            .into_iter()
            .map(|m| GroupMember {
                connection_id: m.connection_id,
                role: role_from_wit(m.role),
            })
            .collect())
    }

    pub fn groups_count(name: &str) -> Result<u64, Error> {
        groups::count(name).map_err(convert)
    }

    pub fn groups_get_meta(name: &str) -> Result<Option<serde_json::Value>, Error> {
        groups::get_meta(name)
            .map_err(convert)?
            .map(|meta| decode(&meta))
            .transpose()
    }

    pub fn groups_set_meta(name: &str, meta: &str) -> Result<(), Error> {
        groups::set_meta(name, meta).map_err(convert)
    }

    pub fn groups_close(name: &str) -> Result<u32, Error> {
        groups::close(name).map_err(convert)
    }

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log(level, message);
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use super::{Error, Level};
    use crate::groups::{GroupInfo, GroupMember, Joined, Role};
    use crate::idempotency::State as IdemState;
    use crate::replay::{ReplayEvent, ReplayPage};
    use crate::testing::{GroupPublished, Published};
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    // The host's default limits, mirrored so native tests fail the same way.
    const MAX_VALUE_BYTES: usize = 1 << 20;
    const MAX_PUBLISH_BYTES: usize = 1 << 20;
    const MAX_KEY_BYTES: usize = 1024;
    const MAX_TOPIC_BYTES: usize = 256;
    const MAX_EVENT_BYTES: usize = 256;
    const MAX_GROUP_NAME_BYTES: usize = 200;
    const MAX_GROUP_META_BYTES: usize = 16 * 1024;
    const MAX_GROUPS: usize = 10_000;
    const MAX_GROUP_MEMBERS: usize = 10_000;
    const MAX_GROUPS_PER_CONNECTION: usize = 64;
    /// The event names the host sends on `__group:{name}`.
    const RESERVED_GROUP_EVENTS: [&str; 4] = ["join", "leave", "members", "close"];
    /// The calling connection's id (as in [`crate::testing::ctx`]).
    const TEST_CONNECTION: &str = "test-connection";

    /// Stored values with their expiry.
    type Store = BTreeMap<String, (Vec<u8>, Option<Instant>)>;

    /// One thread's stand-in host state.
    /// Events kept per topic by the stand-in's replay buffers (the host's
    /// default `replay.size`).
    const REPLAY_SIZE: usize = 1000;

    /// One topic's seq and buffered events.
    #[derive(Default)]
    pub struct TopicBuffer {
        pub seq: u64,
        pub events: std::collections::VecDeque<ReplayEvent>,
    }

    /// A token bucket: tokens (fractional) as of `at`, and a ban end.
    pub struct Bucket {
        pub tokens: f64,
        pub at: Instant,
        pub banned_until: Option<Instant>,
    }

    /// An idempotency record: pending until, or done with a result.
    pub enum Idem {
        Pending(Instant),
        Done(String, Instant),
    }

    /// A broadcast group.
    pub struct Group {
        pub max_members: Option<u32>,
        pub meta: serde_json::Value,
        pub closed: bool,
        /// Members: connection id → role.
        pub members: BTreeMap<String, Role>,
    }

    #[derive(Default)]
    pub struct State {
        pub kv: Store,
        pub published: Vec<Published>,
        pub replay: BTreeMap<String, TopicBuffer>,
        pub buckets: BTreeMap<String, Bucket>,
        /// Held locks: key → (token, expiry).
        pub locks: BTreeMap<String, (u64, Instant)>,
        pub lock_seq: u64,
        pub idem: BTreeMap<String, Idem>,
        /// Presence joins (`Some(data)`) and leaves (`None`) asked for.
        pub presence: Vec<(String, Option<serde_json::Value>)>,
        /// Broadcast groups by name.
        pub groups: BTreeMap<String, Group>,
        /// Events published to groups.
        pub group_published: Vec<GroupPublished>,
        pub logs: Vec<(Level, String)>,
    }

    thread_local! {
        pub static STATE: RefCell<State> = RefCell::new(State::default());
    }

    /// The wire topic rules (the `__` prefix is checked by the caller).
    fn valid_topic(topic: &str) -> bool {
        !topic.is_empty()
            && topic.len() <= MAX_TOPIC_BYTES
            && topic
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    }

    /// 1-256 bytes, no quote, backslash or control character.
    fn valid_event(event: &str) -> bool {
        !event.is_empty()
            && event.len() <= MAX_EVENT_BYTES
            && !event
                .bytes()
                .any(|b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\')
    }

    fn check_key(key: &str) -> Result<(), Error> {
        if key.is_empty() {
            Err(Error::Invalid)
        } else if key.len() > MAX_KEY_BYTES {
            Err(Error::TooLarge)
        } else {
            Ok(())
        }
    }

    /// The value at `key`, dropping it first if it has expired.
    fn live_value(kv: &mut Store, key: &str) -> Option<Vec<u8>> {
        let expired = matches!(kv.get(key), Some((_, Some(at))) if *at <= Instant::now());
        if expired {
            kv.remove(key);
        }
        kv.get(key).map(|(v, _)| v.clone())
    }

    pub fn publish(topic: &str, event: &str, data: &str) -> Result<(), Error> {
        if topic.starts_with("__") {
            return Err(Error::AccessDenied);
        }
        if !valid_topic(topic) || !valid_event(event) {
            return Err(Error::Invalid);
        }
        if data.len() > MAX_PUBLISH_BYTES {
            return Err(Error::TooLarge);
        }
        let data: serde_json::Value = serde_json::from_str(data).map_err(|_| Error::Invalid)?;
        STATE.with_borrow_mut(|s| {
            let buffer = s.replay.entry(topic.to_owned()).or_default();
            buffer.seq += 1;
            buffer.events.push_back(ReplayEvent {
                seq: buffer.seq,
                event: event.to_owned(),
                data: data.clone(),
            });
            if buffer.events.len() > REPLAY_SIZE {
                buffer.events.pop_front();
            }
            s.published.push(Published {
                topic: topic.to_owned(),
                event: event.to_owned(),
                data,
            })
        });
        Ok(())
    }

    fn check_replay_topic(topic: &str) -> Result<(), Error> {
        if topic.starts_with("__") {
            Err(Error::AccessDenied)
        } else if !valid_topic(topic) {
            Err(Error::Invalid)
        } else {
            Ok(())
        }
    }

    pub fn replay_seq(topic: &str) -> Result<u64, Error> {
        check_replay_topic(topic)?;
        Ok(STATE.with_borrow(|s| s.replay.get(topic).map_or(0, |b| b.seq)))
    }

    pub fn replay_since(topic: &str, since: u64) -> Result<ReplayPage, Error> {
        check_replay_topic(topic)?;
        Ok(STATE.with_borrow(|s| {
            let Some(b) = s.replay.get(topic) else {
                return ReplayPage {
                    truncated: since > 0,
                    events: Vec::new(),
                    seq: 0,
                };
            };
            let oldest = b.events.front().map(|e| e.seq);
            let truncated = since > 0
                && (since > b.seq
                    || match oldest {
                        Some(oldest) => since + 1 < oldest,
                        None => b.seq > since,
                    });
            let events = b
                .events
                .iter()
                .filter(|e| since > b.seq || e.seq > since)
                .cloned()
                .collect();
            ReplayPage {
                truncated,
                events,
                seq: b.seq,
            }
        }))
    }

    pub fn kv_get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        check_key(key)?;
        Ok(STATE.with_borrow_mut(|s| live_value(&mut s.kv, key)))
    }

    pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), Error> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(Error::TooLarge);
        }
        if ttl_ms == Some(0) {
            return Err(Error::Invalid);
        }
        let expires = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        STATE.with_borrow_mut(|s| s.kv.insert(key.to_owned(), (value.to_vec(), expires)));
        Ok(())
    }

    pub fn kv_delete(key: &str) -> Result<bool, Error> {
        check_key(key)?;
        Ok(STATE.with_borrow_mut(|s| {
            let existed = live_value(&mut s.kv, key).is_some();
            s.kv.remove(key);
            existed
        }))
    }

    pub fn kv_incr(key: &str, delta: i64) -> Result<i64, Error> {
        check_key(key)?;
        STATE.with_borrow_mut(|s| {
            let current = match live_value(&mut s.kv, key) {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|t| t.trim().parse::<i64>().ok())
                    .ok_or(Error::Invalid)?,
            };
            let next = current.checked_add(delta).ok_or(Error::Invalid)?;
            let expires = s.kv.get(key).and_then(|(_, at)| *at);
            s.kv.insert(key.to_owned(), (next.to_string().into_bytes(), expires));
            Ok(next)
        })
    }

    pub fn ratelimit_consume(
        key: &str,
        points: u32,
        interval_ms: u64,
        block_ms: u64,
        cost: u32,
    ) -> Result<(bool, u32, u64, u64), Error> {
        check_key(key)?;
        if points == 0 || interval_ms == 0 || cost == 0 {
            return Err(Error::Invalid);
        }
        let now = Instant::now();
        let per_ms = f64::from(points) / interval_ms as f64;
        STATE.with_borrow_mut(|s| {
            let b = s.buckets.entry(key.to_owned()).or_insert(Bucket {
                tokens: f64::from(points),
                at: now,
                banned_until: None,
            });
            let elapsed = now.duration_since(b.at).as_millis() as f64;
            b.tokens = (b.tokens + elapsed * per_ms).min(f64::from(points));
            b.at = now;
            let ms_until = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
            if let Some(until) = b.banned_until.filter(|u| *u > now) {
                return Ok((false, b.tokens as u32, ms_until(until), ms_until(until)));
            }
            let full_in = |tokens: f64| ((f64::from(points) - tokens) / per_ms).ceil() as u64;
            if cost > points {
                return Ok((false, b.tokens as u32, u64::MAX, full_in(b.tokens)));
            }
            if b.tokens >= f64::from(cost) {
                b.tokens -= f64::from(cost);
                return Ok((true, b.tokens as u32, 0, full_in(b.tokens)));
            }
            if block_ms > 0 {
                b.banned_until = Some(now + Duration::from_millis(block_ms));
                return Ok((false, b.tokens as u32, block_ms, block_ms));
            }
            let wait = ((f64::from(cost) - b.tokens) / per_ms).ceil() as u64;
            Ok((false, b.tokens as u32, wait.max(1), full_in(b.tokens)))
        })
    }

    pub fn ratelimit_reset(key: &str) -> Result<(), Error> {
        check_key(key)?;
        STATE.with_borrow_mut(|s| s.buckets.remove(key));
        Ok(())
    }

    pub fn ratelimit_ban(key: &str, duration_ms: u64) -> Result<(), Error> {
        check_key(key)?;
        if duration_ms == 0 {
            return Err(Error::Invalid);
        }
        let now = Instant::now();
        STATE.with_borrow_mut(|s| {
            let b = s.buckets.entry(key.to_owned()).or_insert(Bucket {
                tokens: f64::MAX,
                at: now,
                banned_until: None,
            });
            b.banned_until = Some(now + Duration::from_millis(duration_ms));
        });
        Ok(())
    }

    pub fn ratelimit_unban(key: &str) -> Result<(), Error> {
        check_key(key)?;
        STATE.with_borrow_mut(|s| {
            if let Some(b) = s.buckets.get_mut(key) {
                b.banned_until = None;
            }
        });
        Ok(())
    }

    pub fn lock_acquire(key: &str, ttl_ms: u64, _wait_ms: u64) -> Result<Option<u64>, Error> {
        check_key(key)?;
        if ttl_ms == 0 {
            return Err(Error::Invalid);
        }
        // One thread, nobody else to wait for: a held lock stays held.
        let now = Instant::now();
        Ok(STATE.with_borrow_mut(|s| {
            if s.locks.get(key).is_some_and(|(_, until)| *until > now) {
                return None;
            }
            s.lock_seq += 1;
            let token = s.lock_seq;
            s.locks
                .insert(key.to_owned(), (token, now + Duration::from_millis(ttl_ms)));
            Some(token)
        }))
    }

    pub fn lock_refresh(key: &str, token: u64, ttl_ms: u64) -> Result<bool, Error> {
        check_key(key)?;
        let now = Instant::now();
        Ok(STATE.with_borrow_mut(|s| match s.locks.get_mut(key) {
            Some((t, until)) if *t == token && *until > now => {
                *until = now + Duration::from_millis(ttl_ms);
                true
            }
            _ => false,
        }))
    }

    pub fn lock_release(key: &str, token: u64) -> Result<bool, Error> {
        check_key(key)?;
        let now = Instant::now();
        Ok(STATE.with_borrow_mut(|s| {
            let held = s
                .locks
                .get(key)
                .is_some_and(|(t, until)| *t == token && *until > now);
            if held {
                s.locks.remove(key);
            }
            held
        }))
    }

    pub fn idempotency_acquire(key: &str, pending_ttl_ms: u64) -> Result<IdemState, Error> {
        check_key(key)?;
        let now = Instant::now();
        Ok(STATE.with_borrow_mut(|s| {
            match s.idem.get(key) {
                Some(Idem::Pending(until)) if *until > now => return IdemState::Pending,
                Some(Idem::Done(result, until)) if *until > now => {
                    return IdemState::Done(result.clone());
                }
                _ => {}
            }
            s.idem.insert(
                key.to_owned(),
                Idem::Pending(now + Duration::from_millis(pending_ttl_ms)),
            );
            IdemState::Acquired
        }))
    }

    pub fn idempotency_commit(key: &str, value: &str, ttl_ms: u64) -> Result<(), Error> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(Error::TooLarge);
        }
        serde_json::from_str::<serde_json::Value>(value).map_err(|_| Error::Invalid)?;
        let until = Instant::now() + Duration::from_millis(ttl_ms);
        STATE.with_borrow_mut(|s| {
            s.idem
                .insert(key.to_owned(), Idem::Done(value.to_owned(), until))
        });
        Ok(())
    }

    pub fn idempotency_abort(key: &str) -> Result<(), Error> {
        check_key(key)?;
        STATE.with_borrow_mut(|s| {
            if matches!(s.idem.get(key), Some(Idem::Pending(_))) {
                s.idem.remove(key);
            }
        });
        Ok(())
    }

    pub fn presence_join(topic: &str, data: &str) -> Result<(), Error> {
        check_replay_topic(topic)?;
        let data: serde_json::Value = serde_json::from_str(data).map_err(|_| Error::Invalid)?;
        STATE.with_borrow_mut(|s| s.presence.push((topic.to_owned(), Some(data))));
        Ok(())
    }

    pub fn presence_leave(topic: &str) -> Result<(), Error> {
        check_replay_topic(topic)?;
        STATE.with_borrow_mut(|s| s.presence.push((topic.to_owned(), None)));
        Ok(())
    }

    pub fn presence_members(topic: &str) -> Result<Vec<crate::presence::Member>, Error> {
        // The stand-in has no other connections: nobody is present.
        check_replay_topic(topic)?;
        Ok(Vec::new())
    }

    /// 1-200 bytes of printable ASCII without `"` or `\`.
    fn check_group_name(name: &str) -> Result<(), Error> {
        if name.len() > MAX_GROUP_NAME_BYTES {
            Err(Error::TooLarge)
        } else if name.is_empty()
            || !name
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        {
            Err(Error::Invalid)
        } else {
            Ok(())
        }
    }

    /// One JSON value within the host's size bound.
    fn parse_group_meta(meta: &str) -> Result<serde_json::Value, Error> {
        if meta.len() > MAX_GROUP_META_BYTES {
            return Err(Error::TooLarge);
        }
        serde_json::from_str(meta).map_err(|_| Error::Invalid)
    }

    pub fn groups_create(
        name: &str,
        max_members: Option<u32>,
        meta: &str,
    ) -> Result<GroupInfo, Error> {
        let meta = parse_group_meta(meta)?;
        check_group_name(name)?;
        if max_members == Some(0) {
            return Err(Error::Invalid);
        }
        STATE.with_borrow_mut(|s| {
            if let Some(g) = s.groups.get(name) {
                return Ok(GroupInfo {
                    created: false,
                    max_members: g.max_members,
                    meta: g.meta.clone(),
                    closed: g.closed,
                });
            }
            if s.groups.len() >= MAX_GROUPS {
                return Err(Error::QuotaExceeded);
            }
            s.groups.insert(
                name.to_owned(),
                Group {
                    max_members,
                    meta: meta.clone(),
                    closed: false,
                    members: BTreeMap::new(),
                },
            );
            Ok(GroupInfo {
                created: true,
                max_members,
                meta,
                closed: false,
            })
        })
    }

    /// Make `connection` a member of `name` (the stand-in's `join`, for
    /// any connection).
    pub fn groups_join_as(connection: &str, name: &str, role: Role) -> Result<Joined, Error> {
        check_group_name(name)?;
        if connection.is_empty() {
            return Err(Error::Invalid);
        }
        STATE.with_borrow_mut(|s| {
            // Like the host: the per-connection bound first, then the group.
            let member_of = |g: &Group| g.members.contains_key(connection);
            let already = s.groups.get(name).is_some_and(member_of);
            if !already
                && s.groups.values().filter(|g| member_of(g)).count() >= MAX_GROUPS_PER_CONNECTION
            {
                return Err(Error::QuotaExceeded);
            }
            let g = s.groups.get_mut(name).ok_or(Error::Invalid)?;
            if g.closed {
                return Err(Error::AccessDenied);
            }
            let count = g.members.len() as u64;
            if let Some(role) = g.members.get(connection) {
                return Ok(Joined {
                    new: false,
                    role: *role,
                    count,
                });
            }
            let max = g.max_members.map_or(MAX_GROUP_MEMBERS, |m| {
                usize::try_from(m).map_or(MAX_GROUP_MEMBERS, |m| m.min(MAX_GROUP_MEMBERS))
            });
            if g.members.len() >= max {
                return Err(Error::QuotaExceeded);
            }
            g.members.insert(connection.to_owned(), role);
            Ok(Joined {
                new: true,
                role,
                count: count + 1,
            })
        })
    }

    pub fn groups_join(name: &str, role: Role) -> Result<Joined, Error> {
        groups_join_as(TEST_CONNECTION, name, role)
    }

    pub fn groups_leave(name: &str) -> Result<bool, Error> {
        check_group_name(name)?;
        Ok(STATE.with_borrow_mut(|s| {
            s.groups
                .get_mut(name)
                .is_some_and(|g| g.members.remove(TEST_CONNECTION).is_some())
        }))
    }

    pub fn groups_publish(
        name: &str,
        event: &str,
        data: &str,
        role: Option<Role>,
    ) -> Result<(), Error> {
        check_group_name(name)?;
        if !valid_event(event) {
            return Err(Error::Invalid);
        }
        if data.len() > MAX_PUBLISH_BYTES {
            return Err(Error::TooLarge);
        }
        let data: serde_json::Value = serde_json::from_str(data).map_err(|_| Error::Invalid)?;
        if RESERVED_GROUP_EVENTS.contains(&event) {
            return Err(Error::Invalid);
        }
        STATE.with_borrow_mut(|s| {
            s.group_published.push(GroupPublished {
                group: name.to_owned(),
                event: event.to_owned(),
                data,
                role,
            })
        });
        Ok(())
    }

    pub fn groups_members(name: &str) -> Result<Vec<GroupMember>, Error> {
        check_group_name(name)?;
        // A BTreeMap: already sorted by connection id.
        Ok(STATE.with_borrow(|s| {
            s.groups
                .get(name)
                .map(|g| {
                    g.members
                        .iter()
                        .map(|(id, role)| GroupMember {
                            connection_id: id.clone(),
                            role: *role,
                        })
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    pub fn groups_count(name: &str) -> Result<u64, Error> {
        check_group_name(name)?;
        Ok(STATE.with_borrow(|s| s.groups.get(name).map_or(0, |g| g.members.len() as u64)))
    }

    pub fn groups_get_meta(name: &str) -> Result<Option<serde_json::Value>, Error> {
        check_group_name(name)?;
        Ok(STATE.with_borrow(|s| s.groups.get(name).map(|g| g.meta.clone())))
    }

    pub fn groups_set_meta(name: &str, meta: &str) -> Result<(), Error> {
        check_group_name(name)?;
        let meta = parse_group_meta(meta)?;
        STATE.with_borrow_mut(|s| {
            let g = s.groups.get_mut(name).ok_or(Error::Invalid)?;
            g.meta = meta;
            Ok(())
        })
    }

    pub fn groups_close(name: &str) -> Result<u32, Error> {
        check_group_name(name)?;
        STATE.with_borrow_mut(|s| {
            let g = s.groups.get_mut(name).ok_or(Error::Invalid)?;
            g.closed = true;
            let n = std::mem::take(&mut g.members).len();
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    pub fn log(level: Level, message: &str) {
        STATE.with_borrow_mut(|s| s.logs.push((level, message.to_owned())));
    }
}

/// Publish raw JSON text `data` as `event` on `topic`.
pub(crate) fn publish(topic: &str, event: &str, data: &str) -> Result<(), Error> {
    imp::publish(topic, event, data)
}

/// The raw bytes at `key`.
pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    imp::kv_get(key)
}

/// Store raw bytes at `key`.
pub(crate) fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), Error> {
    imp::kv_set(key, value, ttl_ms)
}

/// Remove `key`.
pub(crate) fn kv_delete(key: &str) -> Result<bool, Error> {
    imp::kv_delete(key)
}

/// Add `delta` to the integer at `key`.
pub(crate) fn kv_incr(key: &str, delta: i64) -> Result<i64, Error> {
    imp::kv_incr(key, delta)
}

/// The replay seq of `topic`.
pub(crate) fn replay_seq(topic: &str) -> Result<u64, Error> {
    imp::replay_seq(topic)
}

/// The buffered events of `topic` after `since`.
pub(crate) fn replay_since(topic: &str, since: u64) -> Result<crate::replay::ReplayPage, Error> {
    imp::replay_since(topic, since)
}

/// Take tokens from a rate-limit bucket: (allowed, remaining, retry after
/// ms, reset ms).
pub(crate) fn ratelimit_consume(
    key: &str,
    points: u32,
    interval_ms: u64,
    block_ms: u64,
    cost: u32,
) -> Result<(bool, u32, u64, u64), Error> {
    imp::ratelimit_consume(key, points, interval_ms, block_ms, cost)
}

/// Forget a rate-limit bucket.
pub(crate) fn ratelimit_reset(key: &str) -> Result<(), Error> {
    imp::ratelimit_reset(key)
}

/// Ban a rate-limit key.
pub(crate) fn ratelimit_ban(key: &str, duration_ms: u64) -> Result<(), Error> {
    imp::ratelimit_ban(key, duration_ms)
}

/// Lift a rate-limit ban.
pub(crate) fn ratelimit_unban(key: &str) -> Result<(), Error> {
    imp::ratelimit_unban(key)
}

/// Take a lock; its fencing token.
pub(crate) fn lock_acquire(key: &str, ttl_ms: u64, wait_ms: u64) -> Result<Option<u64>, Error> {
    imp::lock_acquire(key, ttl_ms, wait_ms)
}

/// Extend a held lock.
pub(crate) fn lock_refresh(key: &str, token: u64, ttl_ms: u64) -> Result<bool, Error> {
    imp::lock_refresh(key, token, ttl_ms)
}

/// Release a held lock.
pub(crate) fn lock_release(key: &str, token: u64) -> Result<bool, Error> {
    imp::lock_release(key, token)
}

/// Claim an idempotency key.
pub(crate) fn idempotency_acquire(
    key: &str,
    pending_ttl_ms: u64,
) -> Result<crate::idempotency::State, Error> {
    imp::idempotency_acquire(key, pending_ttl_ms)
}

/// Commit an idempotency key's result.
pub(crate) fn idempotency_commit(key: &str, value: &str, ttl_ms: u64) -> Result<(), Error> {
    imp::idempotency_commit(key, value, ttl_ms)
}

/// Give an idempotency key up.
pub(crate) fn idempotency_abort(key: &str) -> Result<(), Error> {
    imp::idempotency_abort(key)
}

/// Join a topic's presence (when the hook returns).
pub(crate) fn presence_join(topic: &str, data: &str) -> Result<(), Error> {
    imp::presence_join(topic, data)
}

/// Leave a topic's presence (when the hook returns).
pub(crate) fn presence_leave(topic: &str) -> Result<(), Error> {
    imp::presence_leave(topic)
}

/// Who is present on a topic.
pub(crate) fn presence_members(topic: &str) -> Result<Vec<crate::presence::Member>, Error> {
    imp::presence_members(topic)
}

/// Create a group or get the existing one.
pub(crate) fn groups_create(
    name: &str,
    max_members: Option<u32>,
    meta: &str,
) -> Result<crate::groups::GroupInfo, Error> {
    imp::groups_create(name, max_members, meta)
}

/// Make the calling connection a member of a group.
pub(crate) fn groups_join(
    name: &str,
    role: crate::groups::Role,
) -> Result<crate::groups::Joined, Error> {
    imp::groups_join(name, role)
}

/// Make the calling connection leave a group.
pub(crate) fn groups_leave(name: &str) -> Result<bool, Error> {
    imp::groups_leave(name)
}

/// Send raw JSON text `data` as `event` to a group's members.
pub(crate) fn groups_publish(
    name: &str,
    event: &str,
    data: &str,
    role: Option<crate::groups::Role>,
) -> Result<(), Error> {
    imp::groups_publish(name, event, data, role)
}

/// A group's live members.
pub(crate) fn groups_members(name: &str) -> Result<Vec<crate::groups::GroupMember>, Error> {
    imp::groups_members(name)
}

/// How many live members a group has.
pub(crate) fn groups_count(name: &str) -> Result<u64, Error> {
    imp::groups_count(name)
}

/// A group's metadata.
pub(crate) fn groups_get_meta(name: &str) -> Result<Option<serde_json::Value>, Error> {
    imp::groups_get_meta(name)
}

/// Replace a group's metadata (raw JSON text).
pub(crate) fn groups_set_meta(name: &str, meta: &str) -> Result<(), Error> {
    imp::groups_set_meta(name, meta)
}

/// Close a group; how many members it had.
pub(crate) fn groups_close(name: &str) -> Result<u32, Error> {
    imp::groups_close(name)
}

/// Write a log entry.
pub(crate) fn log(level: Level, message: &str) {
    imp::log(level, message)
}
