//! A circuit breaker for a shared backend (one per Redis of the process,
//! shared by the Redis KV and the Redis bus), with the seeds' semantics.
//!
//! # States
//!
//! - **healthy**: every call goes through. [`CircuitBreaker::failure`]
//!   counts consecutive failures; [`CircuitBreaker::success`] resets the
//!   count. At [`BreakerConfig::failure_threshold`] failures in a row the
//!   breaker goes **broken**.
//! - **broken**: [`CircuitBreaker::guard`] fails fast with [`BreakerOpen`]
//!   (no call reaches the backend) until [`BreakerConfig::reset_timeout`]
//!   has passed. The first `guard` after that is let through as the
//!   **probe** and the breaker goes **probing**.
//! - **probing**: exactly one call (the probe) is in flight; every other
//!   `guard` fails fast. The probe's success makes the breaker healthy, its
//!   failure broken again for another reset timeout. A probe that never
//!   reports (its future was dropped) is replaced by a new one after a
//!   further reset timeout, so the breaker cannot stick in probing.
//!
//! What counts: a call that timed out or could not reach the backend
//! ([`BackendError::Timeout`], [`BackendError::Unavailable`]) is a failure;
//! any answer, including a refusal (quota, invalid argument), is a success
//! ([`CircuitBreaker::record`]).
//!
//! Transitions are published on a [`tokio::sync::watch`] channel
//! ([`CircuitBreaker::subscribe`]) and logged. Without traffic nothing
//! probes; [`spawn_redis_prober`] probes a Redis with `PING` as soon as
//! each reset timeout has passed, so the breaker (and `recovered` on the
//! bus) comes back even when nobody calls.
//!
//! The state is a tiny mutex held only for a few field updates, never
//! across an `.await`. Time is [`tokio::time::Instant`], so tests can pause it.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::BackendError;
use crate::backend::redis::COMMAND_TIMEOUT;

/// Consecutive failures that break the circuit by default (the seeds' value).
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// How long a broken circuit fails fast before a probe, by default (the
/// seeds use 30 s; a shorter wait brings a fleet back sooner).
pub const DEFAULT_RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// The message of [`BreakerOpen`] (and of the `Unavailable` it becomes).
pub const OPEN_MESSAGE: &str = "Redis circuit breaker open";

/// Settings of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that break the circuit (at least 1).
    pub failure_threshold: u32,
    /// How long the circuit stays broken before one probe is let through.
    pub reset_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            reset_timeout: DEFAULT_RESET_TIMEOUT,
        }
    }
}

/// The observable state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Healthy,
    /// Calls fail fast until the reset timeout has passed.
    Broken,
    /// One probe call is in flight; other calls fail fast.
    Probing,
}

/// A call refused because the circuit is broken (or probing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{OPEN_MESSAGE}")]
pub struct BreakerOpen;

impl From<BreakerOpen> for BackendError {
    fn from(_: BreakerOpen) -> Self {
        BackendError::Unavailable(OPEN_MESSAGE.into())
    }
}

/// The state behind the mutex.
#[derive(Debug)]
enum Phase {
    Healthy,
    /// Broken until this instant.
    Broken {
        until: Instant,
    },
    /// Probing since this instant.
    Probing {
        since: Instant,
    },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    failures: u32,
}

/// A circuit breaker (see the module docs). Share it as `Arc<CircuitBreaker>`.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: Arc<str>,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    state: watch::Sender<BreakerState>,
}

impl CircuitBreaker {
    /// A healthy breaker; `name` identifies it in logs and metrics (e.g.
    /// `"redis"`). A `failure_threshold` of 0 is taken as 1.
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Self {
        let config = BreakerConfig {
            failure_threshold: config.failure_threshold.max(1),
            ..config
        };
        Self {
            name: name.into(),
            config,
            inner: Mutex::new(Inner {
                phase: Phase::Healthy,
                failures: 0,
            }),
            state: watch::Sender::new(BreakerState::Healthy),
        }
    }

    /// The name given at creation (the `backend` label of its metrics).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state as the `breaker_state` metric shows it: 0 healthy, 1
    /// probing, 2 broken.
    pub fn state_code(&self) -> i64 {
        match self.state() {
            BreakerState::Healthy => 0,
            BreakerState::Probing => 1,
            BreakerState::Broken => 2,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// The current state. A broken breaker whose reset timeout has passed
    /// still reads `Broken` until a call (or a prober) takes the probe.
    pub fn state(&self) -> BreakerState {
        *self.state.borrow()
    }

    /// Whether the breaker is healthy.
    pub fn is_healthy(&self) -> bool {
        self.state() == BreakerState::Healthy
    }

    /// Consecutive failures counted (capped at the threshold).
    pub fn failures(&self) -> u32 {
        self.inner.lock().failures
    }

    /// Observe the state: the receiver sees every change (intermediate
    /// states of quick successions may be skipped, the last one never is).
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.state.subscribe()
    }

    /// When the current broken period ends, or `None` if not broken.
    pub fn broken_until(&self) -> Option<Instant> {
        match self.inner.lock().phase {
            Phase::Broken { until } => Some(until),
            _ => None,
        }
    }

    /// Ask to make a call: `Ok` to go ahead (then report it with
    /// [`CircuitBreaker::success`] / [`CircuitBreaker::failure`] or
    /// [`CircuitBreaker::record`]), `Err` to fail fast without calling.
    pub fn guard(&self) -> Result<(), BreakerOpen> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        match inner.phase {
            Phase::Healthy => Ok(()),
            Phase::Broken { until } if now >= until => {
                inner.phase = Phase::Probing { since: now };
                drop(inner);
                self.transition(BreakerState::Probing);
                Ok(())
            }
            Phase::Probing { since } if now >= since + self.config.reset_timeout => {
                // The previous probe never reported: let another through.
                inner.phase = Phase::Probing { since: now };
                Ok(())
            }
            Phase::Broken { .. } | Phase::Probing { .. } => Err(BreakerOpen),
        }
    }

    /// Report a call that got an answer: resets the failure count, and
    /// makes a broken or probing breaker healthy (the backend answered).
    pub fn success(&self) {
        let mut inner = self.inner.lock();
        inner.failures = 0;
        if matches!(inner.phase, Phase::Healthy) {
            return;
        }
        inner.phase = Phase::Healthy;
        drop(inner);
        self.transition(BreakerState::Healthy);
    }

    /// Report a call that timed out or could not reach the backend.
    pub fn failure(&self) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.failures = (inner.failures + 1).min(self.config.failure_threshold);
        let break_now = match inner.phase {
            Phase::Healthy => inner.failures >= self.config.failure_threshold,
            Phase::Probing { .. } => true,
            // A call started before the break: already failing fast.
            Phase::Broken { .. } => false,
        };
        if !break_now {
            return;
        }
        inner.phase = Phase::Broken {
            until: now + self.config.reset_timeout,
        };
        drop(inner);
        self.transition(BreakerState::Broken);
    }

    /// Report the outcome of a call: `Timeout` and `Unavailable` are
    /// failures, anything else (including refusals) a success.
    pub fn record<T>(&self, result: &Result<T, BackendError>) {
        match result {
            Err(BackendError::Timeout | BackendError::Unavailable(_)) => self.failure(),
            _ => self.success(),
        }
    }

    /// Run `call` through the breaker: fail fast with `Unavailable` while
    /// broken, otherwise await it and [`record`](CircuitBreaker::record)
    /// its outcome.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        self.guard()?;
        let started = std::time::Instant::now();
        let result = call.await;
        crate::metrics::backend_command(&self.name, started.elapsed());
        self.record(&result);
        result
    }

    /// Back to healthy with no failures counted (operator or test action).
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.failures = 0;
        inner.phase = Phase::Healthy;
        drop(inner);
        self.transition(BreakerState::Healthy);
    }

    /// Publish and log a new state (no-op if unchanged).
    fn transition(&self, to: BreakerState) {
        let changed = self.state.send_if_modified(|s| {
            let changed = *s != to;
            *s = to;
            changed
        });
        if !changed {
            return;
        }
        match to {
            BreakerState::Broken => tracing::warn!(
                breaker = &*self.name,
                retry_in_ms = self.config.reset_timeout.as_millis() as u64,
                "circuit breaker broken: calls fail fast"
            ),
            BreakerState::Probing => {
                tracing::info!(breaker = &*self.name, "circuit breaker probing")
            }
            BreakerState::Healthy => {
                tracing::info!(breaker = &*self.name, "circuit breaker healthy again")
            }
        }
    }
}

/// Probe with `probe` whenever `breaker` is broken and its reset timeout has
/// passed (if no call took the probe first): `true` is a success, `false` a
/// failure. The task ends when the breaker is dropped.
pub fn spawn_prober<F, Fut>(breaker: &Arc<CircuitBreaker>, probe: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let weak: Weak<CircuitBreaker> = Arc::downgrade(breaker);
    let mut states = breaker.subscribe();
    tokio::spawn(async move {
        loop {
            // Wait for a broken period (or the breaker to go away).
            if states
                .wait_for(|s| *s == BreakerState::Broken)
                .await
                .is_err()
            {
                return;
            }
            let Some(breaker) = weak.upgrade() else {
                return;
            };
            let until = breaker.broken_until();
            drop(breaker);
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
            let Some(breaker) = weak.upgrade() else {
                return;
            };
            if breaker.guard().is_ok() {
                drop(breaker);
                let ok = probe().await;
                let Some(breaker) = weak.upgrade() else {
                    return;
                };
                if ok {
                    breaker.success();
                } else {
                    breaker.failure();
                }
            } else {
                // A call holds the probe: wait for its outcome (bounded, in
                // case it never reports).
                let reset = breaker.config().reset_timeout;
                drop(breaker);
                let _ = tokio::time::timeout(reset, states.changed()).await;
            }
            states.mark_changed();
        }
    })
}

/// [`spawn_prober`] with a Redis `PING` on `conn` as the probe (two tries,
/// each bounded by [`COMMAND_TIMEOUT`]: the first command after Redis
/// returns may still meet the connection the manager is replacing).
pub fn spawn_redis_prober(
    breaker: &Arc<CircuitBreaker>,
    conn: ConnectionManager,
) -> JoinHandle<()> {
    spawn_prober(breaker, move || {
        let conn = conn.clone();
        async move {
            for _ in 0..2 {
                let mut c = conn.clone();
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut c);
                if let Ok(Ok(_)) = tokio::time::timeout(COMMAND_TIMEOUT, ping).await {
                    return true;
                }
            }
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    fn breaker(threshold: u32, reset_ms: u64) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(
            "test",
            BreakerConfig {
                failure_threshold: threshold,
                reset_timeout: Duration::from_millis(reset_ms),
            },
        ))
    }

    #[test]
    fn defaults() {
        let c = BreakerConfig::default();
        assert_eq!(c.failure_threshold, 5);
        assert_eq!(c.reset_timeout, Duration::from_secs(5));
        let b = CircuitBreaker::new(
            "t",
            BreakerConfig {
                failure_threshold: 0,
                ..c
            },
        );
        assert_eq!(b.config().failure_threshold, 1);
        assert_eq!(
            BackendError::from(BreakerOpen),
            BackendError::Unavailable("Redis circuit breaker open".into())
        );
    }

    // The `test-util` feature (paused time) is not enabled in this crate,
    // so these run on real time with short timeouts and wide margins.
    const RESET_MS: u64 = 200;

    async fn sleep_ms(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test]
    async fn breaks_at_the_threshold_and_fails_fast() {
        let b = breaker(3, RESET_MS);
        for n in 1..=2 {
            b.guard().unwrap();
            b.failure();
            assert_eq!((b.state(), b.failures()), (BreakerState::Healthy, n));
        }
        b.guard().unwrap();
        b.failure();
        assert_eq!(b.state(), BreakerState::Broken);
        assert_eq!(b.guard(), Err(BreakerOpen));
        // The count is capped; late failures while broken change nothing.
        b.failure();
        assert_eq!(b.failures(), 3);
        let until = b.broken_until().unwrap();
        assert!(until > Instant::now() + Duration::from_millis(RESET_MS / 2));
        sleep_ms(RESET_MS / 2).await;
        assert_eq!(b.guard(), Err(BreakerOpen), "still within the timeout");
        assert_eq!(b.state(), BreakerState::Broken);
    }

    #[tokio::test]
    async fn success_resets_the_count() {
        let b = breaker(3, RESET_MS);
        b.failure();
        b.failure();
        b.success();
        assert_eq!(b.failures(), 0);
        b.failure();
        b.failure();
        assert!(b.is_healthy(), "not three in a row");
        // Refusals are answers: successes.
        b.record(&Err::<(), _>(BackendError::QuotaExceeded("q".into())));
        b.record(&Err::<(), _>(BackendError::Invalid("i".into())));
        assert_eq!(b.failures(), 0);
        b.record(&Err::<(), _>(BackendError::Timeout));
        b.record(&Err::<(), _>(BackendError::Unavailable("down".into())));
        assert_eq!(b.failures(), 2);
        b.record(&Ok(()));
        assert_eq!(b.failures(), 0);
    }

    #[tokio::test]
    async fn one_probe_after_the_timeout_success_heals() {
        let b = breaker(1, RESET_MS);
        let mut rx = b.subscribe();
        b.failure();
        assert_eq!(*rx.borrow_and_update(), BreakerState::Broken);
        sleep_ms(RESET_MS + 20).await;
        assert_eq!(b.state(), BreakerState::Broken, "lazy until a call");
        assert_eq!(b.guard(), Ok(()), "the probe");
        assert_eq!(b.state(), BreakerState::Probing);
        assert_eq!(*rx.borrow_and_update(), BreakerState::Probing);
        assert_eq!(b.guard(), Err(BreakerOpen), "a single probe");
        assert_eq!(b.guard(), Err(BreakerOpen));
        b.success();
        assert_eq!(*rx.borrow_and_update(), BreakerState::Healthy);
        assert_eq!(b.guard(), Ok(()));
        assert_eq!(b.failures(), 0);
    }

    #[tokio::test]
    async fn failed_probe_breaks_again_for_a_full_timeout() {
        let b = breaker(2, RESET_MS);
        b.failure();
        b.failure();
        sleep_ms(RESET_MS + 20).await;
        b.guard().unwrap();
        b.failure();
        assert_eq!(b.state(), BreakerState::Broken);
        sleep_ms(RESET_MS / 2).await;
        assert_eq!(b.guard(), Err(BreakerOpen));
        sleep_ms(RESET_MS / 2 + 20).await;
        assert_eq!(b.guard(), Ok(()));
        b.success();
        assert!(b.is_healthy());
    }

    #[tokio::test]
    async fn a_lost_probe_is_replaced_after_a_timeout() {
        let b = breaker(1, RESET_MS);
        b.failure();
        sleep_ms(RESET_MS + 20).await;
        b.guard().unwrap(); // never reports
        sleep_ms(RESET_MS / 2).await;
        assert_eq!(b.guard(), Err(BreakerOpen));
        sleep_ms(RESET_MS / 2 + 20).await;
        assert_eq!(b.guard(), Ok(()), "a new probe");
        assert_eq!(b.guard(), Err(BreakerOpen));
        assert_eq!(b.state(), BreakerState::Probing);
    }

    #[tokio::test]
    async fn call_guards_and_records() {
        let b = breaker(2, RESET_MS);
        let ran = AtomicU32::new(0);
        let fail = || async {
            ran.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(BackendError::Timeout)
        };
        assert_eq!(b.call(fail()).await, Err(BackendError::Timeout));
        assert_eq!(b.call(fail()).await, Err(BackendError::Timeout));
        let err = b.call(fail()).await.unwrap_err();
        assert_eq!(err, BackendError::Unavailable(OPEN_MESSAGE.into()));
        assert_eq!(ran.load(Ordering::Relaxed), 2, "not called while broken");
        sleep_ms(RESET_MS + 20).await;
        assert_eq!(b.call(async { Ok(7) }).await, Ok(7));
        assert!(b.is_healthy());
    }

    #[tokio::test]
    async fn reset_heals() {
        let b = breaker(1, 60_000);
        b.failure();
        assert!(!b.is_healthy());
        b.reset();
        assert!(b.is_healthy());
        assert_eq!((b.failures(), b.guard()), (0, Ok(())));
    }

    #[tokio::test]
    async fn prober_probes_after_each_timeout() {
        let b = breaker(1, RESET_MS);
        let up = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(AtomicU32::new(0));
        let task = {
            let (up, probes) = (Arc::clone(&up), Arc::clone(&probes));
            spawn_prober(&b, move || {
                probes.fetch_add(1, Ordering::Relaxed);
                let ok = up.load(Ordering::Relaxed);
                async move { ok }
            })
        };
        let mut rx = b.subscribe();
        b.failure();
        sleep_ms(RESET_MS * 3 / 2).await;
        assert_eq!(probes.load(Ordering::Relaxed), 1);
        assert_eq!(b.state(), BreakerState::Broken, "the probe failed");
        up.store(true, Ordering::Relaxed);
        rx.borrow_and_update();
        tokio::time::timeout(
            Duration::from_secs(2),
            rx.wait_for(|s| *s == BreakerState::Healthy),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(probes.load(Ordering::Relaxed), 2);
        // Healthy: no probing.
        sleep_ms(RESET_MS * 3).await;
        assert_eq!(probes.load(Ordering::Relaxed), 2);
        // The task ends with the breaker.
        drop(rx);
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// A `redis-server` child process of one test, on a port of its own, that
/// the test can kill and restart (the shared test Redis is never touched).
#[cfg(test)]
pub(crate) mod test_redis {
    use std::time::Duration;

    use tokio::process::{Child, Command};

    /// A private `redis-server` (no persistence); killed when dropped.
    pub(crate) struct OwnRedis {
        port: u16,
        child: Option<Child>,
    }

    impl OwnRedis {
        /// Start one on a free port and wait until it answers.
        pub(crate) async fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut redis = Self { port, child: None };
            redis.restart().await;
            redis
        }

        /// `redis://127.0.0.1:<port>`.
        pub(crate) fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        /// Kill it (SIGKILL) and wait until it is gone.
        pub(crate) async fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill().await;
            }
        }

        /// Start it (again) on the same port; returns once it answers PING.
        pub(crate) async fn restart(&mut self) {
            self.kill().await;
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(std::env::temp_dir())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server");
            self.child = Some(child);
            let client = redis::Client::open(self.url()).unwrap();
            for _ in 0..100 {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    let pong: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
                    if pong.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("redis-server on port {} did not start", self.port);
        }
    }

    impl Drop for OwnRedis {
        fn drop(&mut self) {
            if let Some(child) = self.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}
