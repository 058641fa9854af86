//! The in-process rate limiter: the memory twin of
//! [`super::redis::RedisRateLimiter`], with the same bucket arithmetic
//! (see [`super`]) on a process-local millisecond clock.
//!
//! # Bound
//!
//! At most [`MemoryRateLimiter::max_keys`] keys (default
//! [`DEFAULT_MAX_KEYS`]) are stored across all tenants. A stored key is a
//! bucket that is not full or a ban that has not ended; it expires (is as
//! good as absent) once its bucket is full again and its ban over. Each
//! operation removes up to [`SWEEP_PER_OP`] expired keys; a new key at the
//! bound first removes every expired key and then, if still at the bound,
//! evicts the key that would expire soonest (the bucket closest to full).
//! An evicted key starts over with a full bucket.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Consume, NEVER, RateDecision, RateLimitRule, RateLimiter, check_ban, check_key};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Default bound on stored keys per process.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Expired keys each operation removes.
pub const SWEEP_PER_OP: usize = 32;

/// The stored state of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    /// Units in the bucket at `ts`; `None` for a ban on a key with a full
    /// bucket (created by `ban`).
    level: Option<u64>,
    /// When `level` was computed (ms on the store's clock).
    ts: u64,
    /// The rule `level` was computed with: points and interval in ms.
    points: u64,
    interval_ms: u64,
    /// When the ban ends (ms; 0 or past = not banned).
    banned_until: u64,
    /// When the key is as good as absent (bucket full, ban over).
    expires_at: u64,
}

/// The level of a bucket at `now` under a rule of `points` per
/// `interval_ms` (units: one token = `interval_ms`). `stored` is the
/// bucket's level, its time and the rule it was computed with; `None` is a
/// full bucket. The Redis script computes exactly the same.
pub(crate) fn level_at(
    stored: Option<(u64, u64, u64, u64)>,
    points: u64,
    interval_ms: u64,
    now: u64,
) -> u64 {
    let cap = points * interval_ms;
    let Some((level, ts, _, stored_interval)) = stored else {
        return cap;
    };
    let level = if stored_interval == interval_ms || stored_interval == 0 {
        level
    } else {
        // The interval changed: keep the tokens, in the new units (doubles,
        // in the same order of operations as the script).
        ((level as f64) / (stored_interval as f64) * (interval_ms as f64)).floor() as u64
    };
    let elapsed = now.saturating_sub(ts).min(interval_ms);
    level.min(cap).saturating_add(elapsed * points).min(cap)
}

/// Milliseconds until a bucket at `level` is full.
pub(crate) fn full_in(level: u64, points: u64, interval_ms: u64) -> u64 {
    (points * interval_ms)
        .saturating_sub(level)
        .div_ceil(points)
}

/// One consume on a bucket (not banned) at `level`: the decision, the new
/// level and the new ban end (0 = none).
pub(crate) fn decide(level: u64, c: &Consume, now: u64) -> (RateDecision, u64, u64) {
    let tokens = |level: u64| u32::try_from(level / c.interval_ms).unwrap_or(u32::MAX);
    if c.cost > c.points {
        let decision = RateDecision {
            allowed: false,
            remaining: tokens(level),
            retry_after_ms: NEVER,
            reset_ms: full_in(level, c.points, c.interval_ms),
        };
        return (decision, level, 0);
    }
    let need = c.cost * c.interval_ms;
    if level >= need {
        let level = level - need;
        let decision = RateDecision {
            allowed: true,
            remaining: tokens(level),
            retry_after_ms: 0,
            reset_ms: full_in(level, c.points, c.interval_ms),
        };
        return (decision, level, 0);
    }
    if c.block_ms > 0 {
        let decision = RateDecision {
            allowed: false,
            remaining: 0,
            retry_after_ms: c.block_ms,
            reset_ms: c.block_ms,
        };
        return (decision, level, now + c.block_ms);
    }
    let decision = RateDecision {
        allowed: false,
        remaining: tokens(level),
        retry_after_ms: (need - level).div_ceil(c.points),
        reset_ms: full_in(level, c.points, c.interval_ms),
    };
    (decision, level, 0)
}

#[derive(Default)]
struct State {
    tenants: HashMap<TenantId, HashMap<Box<str>, Bucket>>,
    /// Every stored key by expiry.
    expiry: BTreeSet<(u64, TenantId, Box<str>)>,
    /// Keys stored (expired or not).
    len: usize,
}

impl State {
    /// The live bucket of `key` (expired ones are removed here).
    fn live(&mut self, tenant: &TenantId, key: &str, now: u64) -> Option<Bucket> {
        let bucket = *self.tenants.get(tenant)?.get(key)?;
        if bucket.expires_at <= now {
            self.remove(tenant, key);
            return None;
        }
        Some(bucket)
    }

    /// Remove `key`; the removed bucket.
    fn remove(&mut self, tenant: &TenantId, key: &str) -> Option<Bucket> {
        let keys = self.tenants.get_mut(tenant)?;
        let (k, bucket) = keys.remove_entry(key)?;
        if keys.is_empty() {
            self.tenants.remove(tenant);
        }
        self.expiry.remove(&(bucket.expires_at, tenant.clone(), k));
        self.len -= 1;
        Some(bucket)
    }

    /// Store `bucket` at `key`, making room first if the key is new.
    fn put(&mut self, tenant: &TenantId, key: &str, bucket: Bucket, now: u64, max: usize) {
        if self.remove(tenant, key).is_none() && self.len >= max {
            self.sweep(now, usize::MAX);
            while self.len >= max.max(1) {
                let Some((_, t, k)) = self.expiry.first().cloned() else {
                    break;
                };
                self.remove(&t, &k);
            }
        }
        self.expiry
            .insert((bucket.expires_at, tenant.clone(), Box::from(key)));
        self.tenants
            .entry(tenant.clone())
            .or_default()
            .insert(Box::from(key), bucket);
        self.len += 1;
    }

    /// Remove up to `limit` expired keys.
    fn sweep(&mut self, now: u64, limit: usize) {
        for _ in 0..limit {
            let Some((at, t, k)) = self.expiry.first().cloned() else {
                return;
            };
            if at > now {
                return;
            }
            self.remove(&t, &k);
        }
    }
}

/// A [`RateLimiter`] in this process's memory (see the module docs).
pub struct MemoryRateLimiter {
    state: Mutex<State>,
    /// Zero of the millisecond clock.
    epoch: Instant,
    max_keys: usize,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }
}

impl std::fmt::Debug for MemoryRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRateLimiter")
            .field("max_keys", &self.max_keys)
            .field("stored", &self.stored())
            .finish()
    }
}

impl MemoryRateLimiter {
    /// An empty limiter storing at most [`DEFAULT_MAX_KEYS`] keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty limiter storing at most `max_keys` keys (at least 1).
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            epoch: Instant::now(),
            max_keys: max_keys.max(1),
        }
    }

    /// The bound on stored keys.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Keys stored now, including expired ones not swept yet.
    pub fn stored(&self) -> usize {
        self.state.lock().len
    }

    /// Remove every expired key now; operations already sweep a few each.
    pub fn purge_expired(&self) {
        let now = self.now_ms();
        self.state.lock().sweep(now, usize::MAX);
    }

    /// Milliseconds on the store's monotonic clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn consume(
        &self,
        tenant: &TenantId,
        key: &str,
        rule: RateLimitRule,
        cost: u32,
    ) -> Result<RateDecision, BackendError> {
        let c = Consume::check(key, rule, cost)?;
        let now = self.now_ms();
        let mut state = self.state.lock();
        state.sweep(now, SWEEP_PER_OP);
        let stored = state.live(tenant, key, now);
        if let Some(b) = stored
            && b.banned_until > now
        {
            let left = b.banned_until - now;
            return Ok(RateDecision {
                allowed: false,
                remaining: 0,
                retry_after_ms: left,
                reset_ms: left,
            });
        }
        let previous = stored.and_then(|b| b.level.map(|l| (l, b.ts, b.points, b.interval_ms)));
        let level = level_at(previous, c.points, c.interval_ms, now);
        let (decision, level, banned_until) = decide(level, &c, now);
        let keep = full_in(level, c.points, c.interval_ms).max(banned_until.saturating_sub(now));
        if keep == 0 {
            state.remove(tenant, key);
        } else {
            let bucket = Bucket {
                level: Some(level),
                ts: now,
                points: c.points,
                interval_ms: c.interval_ms,
                banned_until,
                expires_at: now + keep,
            };
            state.put(tenant, key, bucket, now, self.max_keys);
        }
        Ok(decision)
    }

    async fn reset(&self, tenant: &TenantId, key: &str) -> Result<(), BackendError> {
        check_key(key)?;
        self.state.lock().remove(tenant, key);
        Ok(())
    }

    async fn ban(
        &self,
        tenant: &TenantId,
        key: &str,
        duration: Duration,
    ) -> Result<(), BackendError> {
        let ms = check_ban(key, duration)?;
        let now = self.now_ms();
        let mut state = self.state.lock();
        state.sweep(now, SWEEP_PER_OP);
        let until = now + ms;
        let bucket = match state.live(tenant, key, now) {
            Some(b) => Bucket {
                banned_until: until,
                expires_at: b.expires_at.max(until),
                ..b
            },
            None => Bucket {
                level: None,
                ts: now,
                points: 0,
                interval_ms: 0,
                banned_until: until,
                expires_at: until,
            },
        };
        state.put(tenant, key, bucket, now, self.max_keys);
        Ok(())
    }

    async fn unban(&self, tenant: &TenantId, key: &str) -> Result<(), BackendError> {
        check_key(key)?;
        let now = self.now_ms();
        let mut state = self.state.lock();
        state.sweep(now, SWEEP_PER_OP);
        let Some(b) = state.live(tenant, key, now) else {
            return Ok(());
        };
        let Some(level) = b.level else {
            state.remove(tenant, key);
            return Ok(());
        };
        let now_level = level_at(
            Some((level, b.ts, b.points, b.interval_ms)),
            b.points,
            b.interval_ms,
            now,
        );
        let keep = full_in(now_level, b.points, b.interval_ms);
        if keep == 0 {
            state.remove(tenant, key);
        } else {
            let bucket = Bucket {
                banned_until: 0,
                expires_at: now + keep,
                ..b
            };
            state.put(tenant, key, bucket, now, self.max_keys);
        }
        Ok(())
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError> {
        let now = self.now_ms();
        let mut state = self.state.lock();
        let Some(keys) = state.tenants.remove(tenant) else {
            return Ok(0);
        };
        let mut live = 0;
        for (k, b) in keys {
            state.expiry.remove(&(b.expires_at, tenant.clone(), k));
            state.len -= 1;
            if b.expires_at > now {
                live += 1;
            }
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ratelimit::conformance;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn consume(points: u64, interval_ms: u64, block_ms: u64, cost: u64) -> Consume {
        Consume {
            points,
            interval_ms,
            block_ms,
            cost,
        }
    }

    #[tokio::test]
    async fn memory_rate_limiter_passes_the_conformance_suite() {
        let rl = MemoryRateLimiter::new();
        conformance::suite(&rl).await;
        rl.purge_expired();
        assert_eq!(rl.stored(), 0, "the suite cleans up");
    }

    #[test]
    fn bucket_arithmetic() {
        // Absent = full.
        assert_eq!(level_at(None, 5, 1000, 7), 5000);
        // 5 points per 1000 ms: 5 units per ms, refill capped at full.
        assert_eq!(level_at(Some((0, 100, 5, 1000)), 5, 1000, 300), 1000);
        assert_eq!(level_at(Some((0, 100, 5, 1000)), 5, 1000, 99_999), 5000);
        assert_eq!(level_at(Some((4000, 100, 5, 1000)), 5, 1000, 400), 5000);
        // A clock behind the stored time refills nothing.
        assert_eq!(level_at(Some((10, 100, 5, 1000)), 5, 1000, 50), 10);
        // Changed interval: tokens kept (2 of 1000 ms → 2 of 500 ms).
        assert_eq!(level_at(Some((2000, 100, 5, 1000)), 5, 500, 100), 1000);
        // Fewer points: capped.
        assert_eq!(level_at(Some((5000, 100, 5, 1000)), 2, 1000, 100), 2000);
        assert_eq!(full_in(5000, 5, 1000), 0);
        assert_eq!(full_in(4999, 5, 1000), 1);
        assert_eq!(full_in(0, 5, 1000), 1000);
        assert_eq!(full_in(0, 3, 1000), 1000);
        assert_eq!(full_in(1, 3, 1000), 1000, "2999 units at 3/ms: 999.67 ms");

        let (d, level, ban) = decide(3000, &consume(5, 1000, 0, 2), 50);
        assert_eq!((d.allowed, d.remaining, d.retry_after_ms), (true, 1, 0));
        assert_eq!((level, ban, d.reset_ms), (1000, 0, 800));
        let (d, level, ban) = decide(1500, &consume(5, 1000, 0, 2), 50);
        assert_eq!((d.allowed, d.remaining, level, ban), (false, 1, 1500, 0));
        assert_eq!(d.retry_after_ms, 100, "500 units missing at 5/ms");
        let (d, _, ban) = decide(1500, &consume(5, 1000, 30, 2), 50);
        assert_eq!((d.allowed, d.remaining, ban), (false, 0, 80));
        assert_eq!((d.retry_after_ms, d.reset_ms), (30, 30));
        let (d, level, ban) = decide(5000, &consume(5, 1000, 30, 6), 50);
        assert_eq!((d.allowed, d.remaining, level, ban), (false, 5, 5000, 0));
        assert_eq!(d.retry_after_ms, NEVER);
    }

    #[tokio::test]
    async fn stays_within_the_key_bound_evicting_the_fullest_first() {
        let rl = MemoryRateLimiter::with_max_keys(3);
        let t = tid("acme");
        let rule = |points| RateLimitRule {
            points,
            interval: Duration::from_secs(60),
            block: Duration::ZERO,
        };
        // k0 ends up nearly full (1 of 10 used), k1 and k2 empty.
        rl.consume(&t, "k0", rule(10), 1).await.unwrap();
        rl.consume(&t, "k1", rule(1), 1).await.unwrap();
        rl.consume(&t, "k2", rule(1), 1).await.unwrap();
        assert_eq!(rl.stored(), 3);
        rl.consume(&t, "k3", rule(1), 1).await.unwrap();
        assert_eq!(rl.stored(), 3, "bounded");
        // k0 (closest to full) was evicted; k1 and k2 are still empty.
        for k in ["k1", "k2", "k3"] {
            assert!(!rl.consume(&t, k, rule(1), 1).await.unwrap().allowed, "{k}");
        }
        let d = rl.consume(&t, "k0", rule(10), 1).await.unwrap();
        assert_eq!(d.remaining, 9, "k0 starts over full");
        assert_eq!(rl.stored(), 3);
        rl.purge_tenant(&t).await.unwrap();
        assert_eq!(rl.stored(), 0);
    }

    #[tokio::test]
    async fn full_buckets_are_not_stored() {
        let rl = MemoryRateLimiter::new();
        let t = tid("acme");
        let rule = RateLimitRule {
            points: 1,
            interval: Duration::from_millis(20),
            block: Duration::ZERO,
        };
        rl.consume(&t, "k", rule, 1).await.unwrap();
        assert_eq!(rl.stored(), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        rl.purge_expired();
        assert_eq!(rl.stored(), 0, "refilled: gone");
        // A refused cost > points on a full bucket stores nothing.
        rl.consume(&t, "k", rule, 2).await.unwrap();
        assert_eq!(rl.stored(), 0);
    }
}
