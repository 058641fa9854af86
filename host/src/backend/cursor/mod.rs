//! Shared cursor state: ephemeral positions (cursors, selections, drawing
//! strokes) per tenant and topic, visible across the fleet (the seeds'
//! `createCursor`: `throttle`, `ttl`, snapshot on attach, cross-instance
//! relay).
//!
//! # Model
//!
//! Per tenant and topic, a map from an entry **key** (the caller's user or
//! connection key) to the latest JSON **data** (position plus whatever the
//! caller's `select` added). [`CursorStore::update`] replaces the entry
//! (latest position wins) and gives it a deadline `ttl` from now (the
//! seeds' `ttl` is 30 s, refreshed by every write); an entry past its
//! deadline is gone: never in a [`CursorStore::snapshot`] (stale entries of
//! a crashed instance disappear individually, even while other instances
//! keep writing to the topic). Nothing reports expiries: cursors are
//! best-effort, and a client drops a cursor it has not heard of for its
//! `maxAge`.
//!
//! The store holds state only; the host relays `__cursor:{topic}` frames
//! over the bus and throttles each key locally with [`Throttle`] (the
//! seeds' leading plus trailing edge) before writing and broadcasting.
//!
//! # Names and sizes
//!
//! Topics and keys are strings of 1 to [`MAX_NAME_BYTES`] bytes without
//! `'\n'`; data is JSON text (not parsed here) of at most
//! [`MAX_DATA_BYTES`]; TTLs are 1 ms to [`MAX_TTL`].
//!
//! # Bounds
//!
//! [`CursorLimits`]: live entries per topic (also the most a snapshot
//! returns) and live topics per tenant; a tenant holds at most their
//! product. Expired entries are dropped by the next write to their topic,
//! expired topics by the next write of their tenant (in Redis also by key
//! expiry).
//!
//! Implementations: [`memory::MemoryCursors`] (one process) and
//! [`redis::RedisCursors`] (a fleet sharing one Redis); both pass
//! `conformance::suite` (test builds).

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod redis;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Longest topic or entry key, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Largest entry data, in bytes.
pub const MAX_DATA_BYTES: usize = 16 * 1024;

/// Longest TTL an entry may be given.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The seeds' `ttl` of an entry: 30 s, refreshed by every write.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The seeds' `throttle`: at most one broadcast per key and topic every
/// 50 ms (plus the trailing one).
pub const DEFAULT_THROTTLE: Duration = Duration::from_millis(50);

/// What a [`CursorStore`] holds at most; over a bound `update` fails with
/// `QuotaExceeded` and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorLimits {
    /// Live entries per topic; also the most a snapshot returns. Default
    /// 10 000.
    pub max_entries_per_topic: usize,
    /// Topics with live entries per tenant. Default 1 000.
    pub max_topics_per_tenant: usize,
}

impl Default for CursorLimits {
    fn default() -> Self {
        Self {
            max_entries_per_topic: 10_000,
            max_topics_per_tenant: 1_000,
        }
    }
}

/// One live entry of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorEntry {
    /// The entry key (user or connection key).
    pub key: String,
    /// Its latest JSON data.
    pub data: String,
}

/// Per-tenant, per-topic cursor state (see the module docs). Every method
/// takes the tenant first.
#[async_trait]
pub trait CursorStore: Send + Sync + 'static {
    /// Set the entry `key` of `topic` to `data` with a deadline `ttl` from
    /// now, replacing any earlier data and deadline. `QuotaExceeded` over a
    /// [`CursorLimits`] bound (a key already live never is);
    /// `Invalid`/`TooLarge` for bad names, data or ttl.
    async fn update(
        &self,
        tenant: &TenantId,
        topic: &str,
        key: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<(), BackendError>;

    /// Remove the entry `key` of `topic`; `true` if it was live.
    async fn remove(&self, tenant: &TenantId, topic: &str, key: &str)
    -> Result<bool, BackendError>;

    /// The live entries of `topic`, sorted by key; at most
    /// [`CursorLimits::max_entries_per_topic`].
    async fn snapshot(
        &self,
        tenant: &TenantId,
        topic: &str,
    ) -> Result<Vec<CursorEntry>, BackendError>;

    /// Remove every entry of `tenant` (the tenant is being deleted);
    /// returns how many live entries were removed.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
}

/// Check a topic or entry key (`what` names it in the error): empty or
/// containing `'\n'` is `Invalid`, longer than [`MAX_NAME_BYTES`] is
/// `TooLarge`.
pub fn check_name(what: &str, name: &str) -> Result<(), BackendError> {
    if name.is_empty() {
        return Err(BackendError::Invalid(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(BackendError::TooLarge(format!(
            "{what} is {} bytes, the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.contains('\n') {
        return Err(BackendError::Invalid(format!(
            "{what} must not contain a newline"
        )));
    }
    Ok(())
}

/// Check the arguments of [`CursorStore::update`]; the TTL in whole
/// milliseconds, rounded up (the Redis store's resolution).
pub fn check_update(
    topic: &str,
    key: &str,
    data: &str,
    ttl: Duration,
) -> Result<u64, BackendError> {
    check_name("topic", topic)?;
    check_name("cursor key", key)?;
    if data.len() > MAX_DATA_BYTES {
        return Err(BackendError::TooLarge(format!(
            "cursor data is {} bytes, the limit is {MAX_DATA_BYTES}",
            data.len()
        )));
    }
    if ttl.is_zero() {
        return Err(BackendError::Invalid("ttl must be positive".into()));
    }
    if ttl > MAX_TTL {
        return Err(BackendError::Invalid(format!(
            "ttl is over the limit of {} s",
            MAX_TTL.as_secs()
        )));
    }
    // At most MAX_TTL in ms: fits in u64.
    Ok(ttl.as_nanos().div_ceil(1_000_000) as u64)
}

/// The refusal of an update over [`CursorLimits::max_entries_per_topic`].
pub(crate) fn too_many_entries(limits: &CursorLimits) -> BackendError {
    BackendError::QuotaExceeded(format!(
        "a topic may hold {} cursors",
        limits.max_entries_per_topic
    ))
}

/// The refusal of an update over [`CursorLimits::max_topics_per_tenant`].
pub(crate) fn too_many_topics(limits: &CursorLimits) -> BackendError {
    BackendError::QuotaExceeded(format!(
        "a tenant may hold cursors on {} topics",
        limits.max_topics_per_tenant
    ))
}

/// What [`Throttle::update`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Throttled<V> {
    /// Leading edge: send this value now.
    Send(V),
    /// Inside the key's window: the value is kept as the key's trailing
    /// send (replacing an earlier one), due at this instant; the caller
    /// calls [`Throttle::take_due`] then (or at [`Throttle::next_due`]).
    Deferred(Instant),
    /// The throttle tracks [`Throttle::max_keys`] keys already: the value
    /// was dropped (cursors are best-effort).
    Dropped,
}

/// One tracked key: its window ends at `until` (the last send plus the
/// interval); `pending` is the trailing send, if any.
struct Slot<V> {
    until: Instant,
    pending: Option<V>,
}

/// The seeds' per-key cursor throttle, without I/O or timers: the caller
/// passes the time and drives the trailing sends.
///
/// For each key: an update outside the key's window is sent at once (the
/// leading edge) and opens a window of `interval`; updates inside the
/// window are not sent, but the latest of them is sent once when the window
/// ends (the trailing edge, so the final position always arrives), which
/// opens the next window. So a key sends at most once per `interval`, and
/// its last value is always sent. An update that arrives after its window
/// ended while a trailing send was not taken yet replaces it and is sent at
/// once (the late timer is cancelled). An interval of zero sends every
/// update.
///
/// Bounded: at most `max_keys` keys are tracked (a key is tracked from its
/// send until its window ends, or until its trailing send is taken); an
/// update of a new key beyond it is [`Throttled::Dropped`]. Keys whose
/// window ended with nothing pending are forgotten by `take_due` and by
/// updates of new keys.
pub struct Throttle<K, V> {
    interval: Duration,
    max_keys: usize,
    slots: BTreeMap<K, Slot<V>>,
    /// `(until, key)` of every slot with a trailing send.
    pending: BTreeSet<(Instant, K)>,
    /// `(until, key)` of every slot without one.
    idle: BTreeSet<(Instant, K)>,
}

impl<K: Ord + Clone, V> Throttle<K, V> {
    /// A throttle of `interval` per key (the seeds' `throttle`, default
    /// [`DEFAULT_THROTTLE`]) tracking at most `max_keys` keys.
    pub fn new(interval: Duration, max_keys: usize) -> Self {
        Self {
            interval,
            max_keys,
            slots: BTreeMap::new(),
            pending: BTreeSet::new(),
            idle: BTreeSet::new(),
        }
    }

    /// The interval per key.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The most keys tracked at once.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// When the earliest trailing send is due, if any (when the caller
    /// should next call [`Throttle::take_due`]).
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.first().map(|(at, _)| *at)
    }

    /// An update of `key` to `value` at `now` (see the type docs).
    pub fn update(&mut self, key: K, value: V, now: Instant) -> Throttled<V> {
        if self.interval.is_zero() {
            return Throttled::Send(value);
        }
        if let Some(slot) = self.slots.get_mut(&key) {
            if now < slot.until {
                if slot.pending.is_none() {
                    self.idle.remove(&(slot.until, key.clone()));
                    self.pending.insert((slot.until, key));
                }
                slot.pending = Some(value);
                return Throttled::Deferred(slot.until);
            }
            // The window is over: a leading send (dropping a late trailing one).
            let old = (slot.until, key.clone());
            if slot.pending.take().is_some() {
                self.pending.remove(&old);
            } else {
                self.idle.remove(&old);
            }
            slot.until = now + self.interval;
            self.idle.insert((slot.until, key));
            return Throttled::Send(value);
        }
        self.forget_idle(now);
        if self.slots.len() >= self.max_keys {
            return Throttled::Dropped;
        }
        let until = now + self.interval;
        self.slots.insert(
            key.clone(),
            Slot {
                until,
                pending: None,
            },
        );
        self.idle.insert((until, key));
        Throttled::Send(value)
    }

    /// The trailing sends due at `now`, earliest first: send each value
    /// now. Each opens the key's next window from `now`. Also forgets keys
    /// whose window ended with nothing pending.
    pub fn take_due(&mut self, now: Instant) -> Vec<(K, V)> {
        let mut out = Vec::new();
        while let Some(first) = self.pending.first() {
            if first.0 > now {
                break;
            }
            let Some((_, key)) = self.pending.pop_first() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            if let Some(value) = slot.pending.take() {
                slot.until = now + self.interval;
                self.idle.insert((slot.until, key.clone()));
                out.push((key, value));
            }
        }
        self.forget_idle(now);
        out
    }

    /// Stop tracking `key`, dropping its trailing send (the cursor was
    /// removed); `true` if it was tracked.
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(slot) = self.slots.remove(key) else {
            return false;
        };
        let entry = (slot.until, key.clone());
        if slot.pending.is_some() {
            self.pending.remove(&entry);
        } else {
            self.idle.remove(&entry);
        }
        true
    }

    /// Forget the keys whose window ended by `now` with nothing pending
    /// (they behave exactly like untracked keys).
    fn forget_idle(&mut self, now: Instant) {
        while let Some(first) = self.idle.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, key)) = self.idle.pop_first() {
                self.slots.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn arguments_are_checked() {
        let ttl = DEFAULT_TTL;
        assert_eq!(check_update("canvas", "u1", "{}", ttl), Ok(30_000));
        assert_eq!(
            check_update("t", "k", "", Duration::from_micros(1500)),
            Ok(2)
        );
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let big = "x".repeat(MAX_DATA_BYTES + 1);
        assert!(check_update(&long[1..], &long[1..], &big[1..], MAX_TTL).is_ok());
        for (topic, key, data, ttl, too_large) in [
            ("", "k", "{}", ttl, false),
            ("a\nb", "k", "{}", ttl, false),
            (&long[..], "k", "{}", ttl, true),
            ("t", "", "{}", ttl, false),
            ("t", "k\n", "{}", ttl, false),
            ("t", &long[..], "{}", ttl, true),
            ("t", "k", &big[..], ttl, true),
            ("t", "k", "{}", Duration::ZERO, false),
            ("t", "k", "{}", MAX_TTL + Duration::from_nanos(1), false),
        ] {
            let r = check_update(topic, key, data, ttl);
            if too_large {
                assert!(matches!(r, Err(BackendError::TooLarge(_))), "{r:?}");
            } else {
                assert!(matches!(r, Err(BackendError::Invalid(_))), "{r:?}");
            }
        }
    }

    /// Leading edge, one trailing send with the latest value at the end of
    /// the window, and windows restarting at each send.
    #[test]
    fn leading_and_trailing_edges() {
        let t0 = Instant::now();
        let mut th: Throttle<&str, u32> = Throttle::new(ms(50), 100);
        assert_eq!(th.update("a", 1, t0), Throttled::Send(1), "leading edge");
        assert_eq!(th.next_due(), None, "nothing pending");
        assert_eq!(
            th.update("a", 2, t0 + ms(10)),
            Throttled::Deferred(t0 + ms(50))
        );
        assert_eq!(
            th.update("a", 3, t0 + ms(20)),
            Throttled::Deferred(t0 + ms(50))
        );
        assert_eq!(th.next_due(), Some(t0 + ms(50)));
        assert_eq!(th.take_due(t0 + ms(49)), vec![], "not yet");
        assert_eq!(
            th.take_due(t0 + ms(52)),
            vec![("a", 3)],
            "one trailing send, the latest value"
        );
        assert_eq!(th.take_due(t0 + ms(53)), vec![], "only once");
        // The trailing send opened a window from when it was sent.
        assert_eq!(
            th.update("a", 4, t0 + ms(60)),
            Throttled::Deferred(t0 + ms(102))
        );
        assert_eq!(th.take_due(t0 + ms(102)), vec![("a", 4)]);
        // A window that ends with nothing pending: the next update leads.
        assert_eq!(th.take_due(t0 + ms(200)), vec![]);
        assert!(th.is_empty(), "idle keys are forgotten");
        assert_eq!(th.update("a", 5, t0 + ms(200)), Throttled::Send(5));
        // Keys are independent.
        assert_eq!(th.update("b", 1, t0 + ms(210)), Throttled::Send(1));
        assert_eq!(
            th.update("a", 6, t0 + ms(210)),
            Throttled::Deferred(t0 + ms(250))
        );
        assert_eq!(
            th.update("b", 2, t0 + ms(220)),
            Throttled::Deferred(t0 + ms(260))
        );
        assert_eq!(th.take_due(t0 + ms(300)), vec![("a", 6), ("b", 2)]);
        assert_eq!(th.len(), 2);
    }

    /// An update after its window ended, before the trailing send was
    /// taken, is sent at once and replaces the trailing send.
    #[test]
    fn a_late_trailing_send_is_replaced_by_a_leading_one() {
        let t0 = Instant::now();
        let mut th: Throttle<u8, &str> = Throttle::new(ms(50), 10);
        assert_eq!(th.update(1, "x", t0), Throttled::Send("x"));
        assert!(matches!(
            th.update(1, "y", t0 + ms(5)),
            Throttled::Deferred(_)
        ));
        assert_eq!(th.update(1, "z", t0 + ms(70)), Throttled::Send("z"));
        assert_eq!(th.next_due(), None);
        assert_eq!(th.take_due(t0 + ms(100)), vec![], "y is never sent");
        assert_eq!(
            th.update(1, "w", t0 + ms(100)),
            Throttled::Deferred(t0 + ms(120))
        );
    }

    /// A steady stream: at most one send per interval, the last value
    /// always sent.
    #[test]
    fn a_stream_is_thinned_and_its_last_value_arrives() {
        let t0 = Instant::now();
        let mut th: Throttle<&str, u32> = Throttle::new(ms(50), 10);
        let mut sent: Vec<(Duration, u32)> = Vec::new();
        for i in 0..1000u32 {
            let now = t0 + ms(u64::from(i));
            for (_, v) in th.take_due(now) {
                sent.push((now - t0, v));
            }
            if let Throttled::Send(v) = th.update("k", i, now) {
                sent.push((now - t0, v));
            }
        }
        let end = t0 + ms(2000);
        for (_, v) in th.take_due(end) {
            sent.push((ms(1000), v));
        }
        // t = 0 (leading), 50, 100, ..., 950 (trailing), then the last one.
        assert_eq!(sent.len(), 21, "{sent:?}");
        assert!(
            sent.windows(2).all(|w| w[1].0 - w[0].0 >= ms(50)),
            "{sent:?}"
        );
        assert_eq!(sent.last().map(|s| s.1), Some(999), "the final position");
    }

    #[test]
    fn zero_interval_sends_everything_and_tracks_nothing() {
        let t0 = Instant::now();
        let mut th: Throttle<&str, u32> = Throttle::new(Duration::ZERO, 1);
        for i in 0..5 {
            assert_eq!(th.update("a", i, t0), Throttled::Send(i));
            assert_eq!(th.update("b", i, t0), Throttled::Send(i));
        }
        assert!(th.is_empty());
    }

    #[test]
    fn removing_a_key_drops_its_trailing_send() {
        let t0 = Instant::now();
        let mut th: Throttle<&str, u32> = Throttle::new(ms(50), 10);
        th.update("a", 1, t0);
        th.update("a", 2, t0 + ms(1));
        th.update("b", 1, t0);
        assert!(th.remove(&"a"));
        assert!(!th.remove(&"a"));
        assert!(th.remove(&"b"));
        assert_eq!(th.next_due(), None);
        assert_eq!(th.take_due(t0 + ms(100)), vec![]);
        assert_eq!(
            th.update("a", 3, t0 + ms(2)),
            Throttled::Send(3),
            "untracked again"
        );
    }

    #[test]
    fn tracked_keys_are_bounded() {
        let t0 = Instant::now();
        let mut th: Throttle<u32, u32> = Throttle::new(ms(50), 3);
        for k in 0..3 {
            assert_eq!(th.update(k, 0, t0), Throttled::Send(0));
        }
        assert_eq!(th.update(3, 0, t0 + ms(10)), Throttled::Dropped);
        assert!(
            matches!(th.update(0, 1, t0 + ms(10)), Throttled::Deferred(_)),
            "known keys go on"
        );
        // Keys 1 and 2 end their windows idle and make room; key 0 has a
        // trailing send and stays until it is taken.
        assert_eq!(th.update(3, 0, t0 + ms(50)), Throttled::Send(0));
        assert_eq!(th.update(4, 0, t0 + ms(50)), Throttled::Send(0));
        assert_eq!(th.update(5, 0, t0 + ms(50)), Throttled::Dropped);
        assert_eq!(th.len(), 3);
        assert_eq!(th.take_due(t0 + ms(50)), vec![(0, 1)]);
        assert_eq!(th.take_due(t0 + ms(100)), vec![]);
        assert!(th.is_empty());
    }
}
