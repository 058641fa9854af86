//! Quota enforcement: lock-free token buckets and counters that check a
//! tenant's (or a connection's) use against its current [`Plan`].
//!
//! Every check is one or a few atomic operations: no lock is held across an
//! await, and a refusal costs as little as an admission. Limits are read
//! from the plan on each check, so a plan change applies at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio::sync::Semaphore;

use crate::plan::Plan;

/// A token bucket in its GCRA form: one atomic "theoretical arrival time".
/// `rate` tokens per second refill a bucket of `burst` tokens.
#[derive(Debug)]
pub struct RateLimiter {
    origin: Instant,
    /// Nanoseconds after `origin` at which the bucket is full again.
    tat: AtomicU64,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    /// A full bucket.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            tat: AtomicU64::new(0),
        }
    }

    /// Take `cost` tokens now. `Err(retry_after)`: refused, and the same
    /// request would succeed after that long. A cost above `burst` is charged
    /// as `burst` (a batch larger than the bucket still gets through once
    /// the bucket is full).
    pub fn try_acquire(&self, cost: u64, rate_per_sec: u64, burst: u64) -> Result<(), Duration> {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.try_acquire_at(now, cost, rate_per_sec, burst)
    }

    /// Whether one token could be taken now, without taking it:
    /// `Err(retry_after)` when not.
    pub fn check(&self, rate_per_sec: u64, burst: u64) -> Result<(), Duration> {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.check_at(now, rate_per_sec, burst)
    }

    /// [`RateLimiter::check`] at a given time, for tests.
    pub fn check_at(&self, now: u64, rate_per_sec: u64, burst: u64) -> Result<(), Duration> {
        let (interval, tolerance) = gcra(rate_per_sec, burst);
        let new_tat = self
            .tat
            .load(Ordering::Relaxed)
            .max(now)
            .saturating_add(interval);
        let limit = now.saturating_add(tolerance);
        if new_tat > limit {
            return Err(Duration::from_nanos(new_tat - limit));
        }
        Ok(())
    }

    /// Take one token now even if the bucket is empty (for something that
    /// already happened), owing at most one token past empty: the bucket
    /// is usable again one interval after it refills that far.
    pub fn charge(&self, rate_per_sec: u64, burst: u64) {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.charge_at(now, rate_per_sec, burst);
    }

    /// [`RateLimiter::charge`] at a given time, for tests.
    pub fn charge_at(&self, now: u64, rate_per_sec: u64, burst: u64) {
        let (interval, tolerance) = gcra(rate_per_sec, burst);
        let cap = now.saturating_add(tolerance).saturating_add(interval);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |tat| {
                Some(tat.max(now).saturating_add(interval).min(cap))
            });
    }

    /// [`RateLimiter::try_acquire`] at a given time (nanoseconds after the
    /// limiter was created), for tests.
    pub fn try_acquire_at(
        &self,
        now: u64,
        cost: u64,
        rate_per_sec: u64,
        burst: u64,
    ) -> Result<(), Duration> {
        let (interval, tolerance) = gcra(rate_per_sec, burst);
        let cost = cost.clamp(1, burst.max(1));
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(interval.saturating_mul(cost));
            let limit = now.saturating_add(tolerance);
            if new_tat > limit {
                return Err(Duration::from_nanos(new_tat - limit));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

/// The emission interval and the tolerance (both ns) of a bucket of
/// `burst` tokens refilled at `rate_per_sec`.
fn gcra(rate_per_sec: u64, burst: u64) -> (u64, u64) {
    let interval = (1_000_000_000 / rate_per_sec.max(1)).max(1);
    (interval, interval.saturating_mul(burst.max(1)))
}

/// Why a quota check refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A rate is exceeded; the same request succeeds after `retry_after`.
    #[error("rate limit exceeded; retry after {retry_after:?}")]
    RateLimited {
        /// When to retry.
        retry_after: Duration,
    },
    /// A count limit (connections, concurrent calls) is reached.
    #[error("limit reached")]
    Full,
}

impl Refusal {
    /// The retry hint in milliseconds (at least 1) for `RATE_LIMITED`, `None` for `Full`.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            // Rounded up: waiting exactly this long must be enough.
            Refusal::RateLimited { retry_after } => Some(
                u64::try_from(retry_after.as_nanos().div_ceil(1_000_000))
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
            Refusal::Full => None,
        }
    }
}

/// The live quota state of one tenant, shared by its connections and its
/// plugin's store: the current plan, counters and rate buckets.
#[derive(Debug)]
pub struct TenantQuota {
    plan: RwLock<Arc<Plan>>,
    connections: AtomicU64,
    calls: AtomicU64,
    messages: RateLimiter,
    connects: RateLimiter,
    publishes: RateLimiter,
    logs: RateLimiter,
    logs_dropped: AtomicU64,
    /// The plugin's faulted calls (see [`TenantQuota::check_fault_budget`]).
    faults: RateLimiter,
    /// Worker threads this tenant's long-running guest code may occupy at once.
    cpu_slots: Arc<Semaphore>,
    /// What the tenant used on this host (calls, CPU, bytes, SQL time).
    pub usage: crate::usage::TenantUsage,
}

/// Holds one of a tenant's connection slots until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    quota: Arc<TenantQuota>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.quota.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds one of a tenant's concurrent-call slots until dropped.
#[derive(Debug)]
pub struct CallSlot {
    quota: Arc<TenantQuota>,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.quota.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TenantQuota {
    /// Fresh state for a tenant on `plan`, whose long-running calls may use
    /// at most `cpu_slots` worker threads at once.
    pub fn new(plan: Plan, cpu_slots: usize) -> Arc<Self> {
        Arc::new(Self {
            plan: RwLock::new(Arc::new(plan)),
            connections: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            messages: RateLimiter::new(),
            connects: RateLimiter::new(),
            publishes: RateLimiter::new(),
            logs: RateLimiter::new(),
            logs_dropped: AtomicU64::new(0),
            faults: RateLimiter::new(),
            cpu_slots: Arc::new(Semaphore::new(cpu_slots.max(1))),
            usage: crate::usage::TenantUsage::default(),
        })
    }

    /// The current plan (cheap: one read lock and an `Arc` clone).
    pub fn plan(&self) -> Arc<Plan> {
        Arc::clone(&self.plan.read())
    }

    /// Replace the plan; applies to every later check. Connections keep the
    /// frame size and subscription limits they were opened with.
    pub fn set_plan(&self, plan: Plan) {
        *self.plan.write() = Arc::new(plan);
    }

    /// Open connections now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// Plugin calls running now.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Acquire)
    }

    /// Admit a new connection: `RateLimited` over `connects_per_sec`,
    /// `Full` at `max_connections`.
    pub fn try_connect(self: &Arc<Self>) -> Result<ConnectionSlot, Refusal> {
        let plan = self.plan();
        take(&self.connects, 1, plan.connects_per_sec, plan.connect_burst)?;
        try_increment(&self.connections, plan.max_connections)?;
        Ok(ConnectionSlot {
            quota: Arc::clone(self),
        })
    }

    /// Admit a plugin call if the tenant is under `max_concurrent_calls`.
    pub fn try_begin_call(self: &Arc<Self>) -> Result<CallSlot, Refusal> {
        let max = self.plan.read().max_concurrent_calls;
        try_increment(&self.calls, max)?;
        Ok(CallSlot {
            quota: Arc::clone(self),
        })
    }

    /// Count one publish against the tenant's publish rate.
    pub fn check_publish(&self) -> Result<(), Refusal> {
        let (rate, burst) = {
            let p = self.plan.read();
            (p.publishes_per_sec, p.publish_burst)
        };
        take(&self.publishes, 1, rate, burst)
    }

    /// Whether one more plugin log line may be written now. A refused line
    /// is counted; [`TenantQuota::take_logs_dropped`] reports the count.
    pub fn allow_log_line(&self) -> bool {
        let (rate, burst) = {
            let p = self.plan.read();
            (p.log_lines_per_sec, p.log_line_burst)
        };
        let ok = take(&self.logs, 1, rate, burst).is_ok();
        if !ok {
            self.logs_dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Whether the tenant's plugin may start a call: `RateLimited` while
    /// its faulted calls have spent `faulted_call_burst` and not yet
    /// refilled at `faulted_calls_per_sec`. Takes nothing.
    pub fn check_fault_budget(&self) -> Result<(), Refusal> {
        let (rate, burst) = {
            let p = self.plan.read();
            (p.faulted_calls_per_sec, p.faulted_call_burst)
        };
        self.faults
            .check(rate, burst)
            .map_err(|retry_after| Refusal::RateLimited { retry_after })
    }

    /// Count one faulted call of the tenant's plugin against its budget.
    pub fn record_fault(&self) {
        let (rate, burst) = {
            let p = self.plan.read();
            (p.faulted_calls_per_sec, p.faulted_call_burst)
        };
        self.faults.charge(rate, burst);
    }

    /// Log lines dropped since the last call (resets the count).
    pub fn take_logs_dropped(&self) -> u64 {
        self.logs_dropped.swap(0, Ordering::Relaxed)
    }

    /// The semaphore bounding how many worker threads this tenant's
    /// long-running calls occupy at once.
    pub fn cpu_slots(&self) -> &Arc<Semaphore> {
        &self.cpu_slots
    }
}

/// Per-connection quota state: the connection's own message bucket, and a
/// second bucket of the same size that refusals draw from: a connection
/// refused faster than its own rate (it ignores `retryAfter`) is to be closed.
#[derive(Debug, Default)]
pub struct ConnectionQuota {
    messages: RateLimiter,
    refusals: RateLimiter,
}

/// The outcome of [`ConnectionQuota::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageVerdict {
    /// Handle the message.
    Allow,
    /// Refuse it with `RATE_LIMITED` and this retry hint.
    Refuse(Refusal),
    /// The connection kept sending while refused: close it with 4429.
    Close,
}

impl ConnectionQuota {
    /// A connection with a full bucket.
    pub fn new() -> Self {
        Self::default()
    }

    /// Check `cost` inbound messages against the connection's own rate,
    /// then the tenant's. Refusals are themselves limited to the
    /// connection's rate and burst: a connection that keeps sending while
    /// refused (more than `connection_message_burst` refusals, then more
    /// than `connection_messages_per_sec` a second) is to be closed. This
    /// also bounds the work spent answering refusals.
    pub fn check(&self, tenant: &TenantQuota, plan: &Plan, cost: u64) -> MessageVerdict {
        let own = take(
            &self.messages,
            cost,
            plan.connection_messages_per_sec,
            plan.connection_message_burst,
        );
        let tenant_wide = || {
            take(
                &tenant.messages,
                cost,
                plan.tenant_messages_per_sec,
                plan.tenant_message_burst,
            )
        };
        match own.and_then(|()| tenant_wide()) {
            Ok(()) => MessageVerdict::Allow,
            Err(refusal) => {
                let tolerated = self.refusals.try_acquire(
                    1,
                    plan.connection_messages_per_sec,
                    plan.connection_message_burst,
                );
                match tolerated {
                    Ok(()) => MessageVerdict::Refuse(refusal),
                    Err(_) => MessageVerdict::Close,
                }
            }
        }
    }
}

/// Take `cost` tokens from `bucket` at `rate`/`burst`, as a [`Refusal`].
fn take(bucket: &RateLimiter, cost: u64, rate: u64, burst: u64) -> Result<(), Refusal> {
    bucket
        .try_acquire(cost, rate, burst)
        .map_err(|retry_after| Refusal::RateLimited { retry_after })
}

/// Add one to `counter` unless it is at `max`.
fn try_increment(counter: &AtomicU64, max: u64) -> Result<(), Refusal> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .map(|_| ())
        .map_err(|_| Refusal::Full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    fn plan() -> Plan {
        Plan::built_in("starter").unwrap()
    }

    #[test]
    fn charges_spend_the_burst_checks_take_nothing_and_debt_is_bounded() {
        let l = RateLimiter::new();
        // rate 10/s, burst 3.
        for _ in 0..3 {
            assert!(l.check_at(0, 10, 3).is_ok(), "checking takes nothing");
            l.charge_at(0, 10, 3);
        }
        assert_eq!(l.check_at(0, 10, 3), Err(Duration::from_millis(100)));
        // Charges past empty (calls that were already running) owe at most
        // one more token: usable again 200 ms later, not 100 s later.
        for _ in 0..1000 {
            l.charge_at(0, 10, 3);
        }
        assert!(l.check_at(SEC / 5 - 1, 10, 3).is_err());
        assert!(l.check_at(SEC / 5, 10, 3).is_ok());
        // Refilled after a pause: the whole burst again.
        for _ in 0..3 {
            assert!(l.check_at(10 * SEC, 10, 3).is_ok());
            l.charge_at(10 * SEC, 10, 3);
        }
        assert!(l.check_at(10 * SEC, 10, 3).is_err());
    }

    #[test]
    fn a_tenant_over_its_fault_budget_is_refused_until_it_refills() {
        let mut p = plan();
        p.faulted_calls_per_sec = 1;
        p.faulted_call_burst = 2;
        let q = TenantQuota::new(p, 1);
        let other = TenantQuota::new(plan(), 1);
        assert!(q.check_fault_budget().is_ok());
        q.record_fault();
        assert!(
            q.check_fault_budget().is_ok(),
            "one fault of a burst of two"
        );
        q.record_fault();
        let refusal = q.check_fault_budget().unwrap_err();
        let ms = refusal.retry_after_ms().unwrap();
        assert!((900..=1000).contains(&ms), "retry after {ms} ms");
        assert!(
            other.check_fault_budget().is_ok(),
            "other tenants are untouched"
        );
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let l = RateLimiter::new();
        // rate 10/s, burst 5: five at once, then one every 100 ms.
        for _ in 0..5 {
            assert!(l.try_acquire_at(0, 1, 10, 5).is_ok());
        }
        let retry = l.try_acquire_at(0, 1, 10, 5).unwrap_err();
        assert_eq!(retry, Duration::from_millis(100));
        assert!(l.try_acquire_at(SEC / 10 - 1, 1, 10, 5).is_err());
        assert!(l.try_acquire_at(SEC / 10, 1, 10, 5).is_ok());
        // After a long pause the bucket is full again, not over-full.
        let later = 100 * SEC;
        for _ in 0..5 {
            assert!(l.try_acquire_at(later, 1, 10, 5).is_ok());
        }
        assert!(l.try_acquire_at(later, 1, 10, 5).is_err());
    }

    #[test]
    fn retry_hints_round_up_to_whole_milliseconds() {
        let r = |ns| Refusal::RateLimited {
            retry_after: Duration::from_nanos(ns),
        };
        assert_eq!(r(1).retry_after_ms(), Some(1));
        assert_eq!(r(1_000_000).retry_after_ms(), Some(1));
        assert_eq!(r(154_000_001).retry_after_ms(), Some(155));
        assert_eq!(Refusal::Full.retry_after_ms(), None);
    }

    #[test]
    fn costs_above_the_burst_are_charged_as_the_burst() {
        let l = RateLimiter::new();
        assert!(l.try_acquire_at(0, 100, 10, 5).is_ok());
        assert!(l.try_acquire_at(0, 1, 10, 5).is_err());
    }

    proptest! {
        /// Over any window, no more than burst + rate × window tokens are granted,
        /// and a refusal's retry hint is exact: retrying then succeeds.
        #[test]
        fn never_grants_more_than_burst_plus_rate(
            rate in 1u64..1000,
            burst in 1u64..100,
            steps in proptest::collection::vec((0u64..SEC / 10, 1u64..5), 1..300),
        ) {
            let l = RateLimiter::new();
            let mut now = 0;
            let mut granted = 0;
            for (dt, cost) in steps {
                now += dt;
                match l.try_acquire_at(now, cost, rate, burst) {
                    Ok(()) => granted += cost.min(burst),
                    Err(retry) => {
                        let probe = RateLimiter { origin: l.origin, tat: AtomicU64::new(l.tat.load(Ordering::Relaxed)) };
                        let at = now + u64::try_from(retry.as_nanos()).unwrap();
                        prop_assert!(probe.try_acquire_at(at, cost, rate, burst).is_ok());
                    }
                }
                let interval = (SEC / rate).max(1);
                let allowed = burst + now / interval;
                prop_assert!(granted <= allowed, "granted {granted} > {allowed}");
            }
        }
    }

    #[test]
    fn connections_and_calls_are_counted_and_released() {
        let mut p = plan();
        p.max_connections = 2;
        p.max_concurrent_calls = 1;
        p.connect_burst = 100;
        let q = TenantQuota::new(p, 1);
        let a = q.try_connect().unwrap();
        let _b = q.try_connect().unwrap();
        assert_eq!(q.try_connect().unwrap_err(), Refusal::Full);
        drop(a);
        assert!(q.try_connect().is_ok());
        let c = q.try_begin_call().unwrap();
        assert!(q.try_begin_call().is_err());
        assert_eq!(q.calls(), 1);
        drop(c);
        assert!(q.try_begin_call().is_ok());
    }

    #[test]
    fn a_plan_change_applies_to_the_next_check() {
        let mut p = plan();
        p.max_connections = 1;
        let q = TenantQuota::new(p.clone(), 1);
        let _a = q.try_connect().unwrap();
        assert!(q.try_connect().is_err());
        p.max_connections = 2;
        q.set_plan(p);
        assert!(q.try_connect().is_ok());
    }

    #[test]
    fn a_connection_ignoring_refusals_is_closed() {
        let mut p = plan();
        p.connection_messages_per_sec = 1;
        p.connection_message_burst = 3;
        let t = TenantQuota::new(p.clone(), 1);
        let c = ConnectionQuota::new();
        for _ in 0..3 {
            assert_eq!(c.check(&t, &p, 1), MessageVerdict::Allow);
        }
        for _ in 0..3 {
            match c.check(&t, &p, 1) {
                MessageVerdict::Refuse(r) => assert!(r.retry_after_ms().unwrap() >= 1),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        assert_eq!(c.check(&t, &p, 1), MessageVerdict::Close);
    }

    #[test]
    fn the_tenant_rate_is_shared_by_its_connections() {
        let mut p = plan();
        p.tenant_messages_per_sec = 1;
        p.tenant_message_burst = 2;
        let t = TenantQuota::new(p.clone(), 1);
        let (a, b) = (ConnectionQuota::new(), ConnectionQuota::new());
        assert_eq!(a.check(&t, &p, 1), MessageVerdict::Allow);
        assert_eq!(b.check(&t, &p, 1), MessageVerdict::Allow);
        assert!(matches!(a.check(&t, &p, 1), MessageVerdict::Refuse(_)));
        assert!(matches!(b.check(&t, &p, 1), MessageVerdict::Refuse(_)));
    }

    #[test]
    fn log_lines_over_the_rate_are_dropped_and_counted() {
        let mut p = plan();
        p.log_lines_per_sec = 1;
        p.log_line_burst = 2;
        let t = TenantQuota::new(p, 1);
        let kept = (0..10).filter(|_| t.allow_log_line()).count();
        assert_eq!(kept, 2);
        assert_eq!(t.take_logs_dropped(), 8);
        assert_eq!(t.take_logs_dropped(), 0);
    }
}
