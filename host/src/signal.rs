//! A signal many tasks wait for: the server's shutdown, a tenant's
//! eviction. Every open connection waits on one of each, so the wait is
//! small (a `Notified`, no channel receiver) and the "may it have fired?"
//! check is one atomic load.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A value that can be raised (waking every waiter) and lowered again.
#[derive(Debug)]
pub struct Signal<T> {
    value: Mutex<Option<T>>,
    /// Whether the signal was ever raised; lowering it does not clear this.
    ever: AtomicBool,
    /// Wakes everyone in [`Signal::wait`] when the signal is raised.
    raised: Notify,
}

impl<T> Default for Signal<T> {
    fn default() -> Self {
        Self {
            value: Mutex::new(None),
            ever: AtomicBool::new(false),
            raised: Notify::new(),
        }
    }
}

impl<T: Clone> Signal<T> {
    /// A signal that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raise the signal with `value` and wake every waiter.
    pub fn raise(&self, value: T) {
        *self.value.lock() = Some(value);
        self.ever.store(true, Ordering::SeqCst);
        self.raised.notify_waiters();
    }

    /// Lower the signal: later waits wait for the next [`Signal::raise`].
    pub fn lower(&self) {
        *self.value.lock() = None;
    }

    /// The value, if the signal is raised.
    pub fn get(&self) -> Option<T> {
        self.value.lock().clone()
    }

    /// Whether the signal was ever raised (lowering it does not clear
    /// this). One atomic load. A poll loop that polls its [`Signal::wait`]
    /// only when its waker changed or this is set must rely on it staying
    /// set: a raise that was lowered again before the loop looked has
    /// already used up that wait's wake-up.
    pub fn ever_raised(&self) -> bool {
        self.ever.load(Ordering::SeqCst)
    }

    /// Wait until the signal is raised and return its value; at once if it
    /// is raised now. (A plain fn returning an `async move` block: an
    /// `async fn` would keep `self` twice in a future that every open
    /// connection holds.)
    #[allow(clippy::manual_async_fn)]
    pub fn wait(&self) -> impl Future<Output = T> + Send + '_
    where
        T: Send,
    {
        async move {
            loop {
                let mut notified = std::pin::pin!(self.raised.notified());
                // Enabled before looking, so a raise after the look still wakes it.
                notified.as_mut().enable();
                if let Some(value) = self.get() {
                    return value;
                }
                notified.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_raise_wakes_every_waiter_and_holds_until_lowered() {
        let s = Arc::new(Signal::new());
        assert!(!s.ever_raised());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = Arc::clone(&s);
                tokio::spawn(async move { s.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "not raised yet");
        s.raise(7);
        for w in waiters {
            let v = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("every waiter is woken")
                .unwrap();
            assert_eq!(v, 7);
        }
        assert_eq!(s.wait().await, 7, "a later wait sees it at once");
        s.lower();
        assert_eq!(s.get(), None);
        assert!(s.ever_raised(), "stays set");
        let later = tokio::time::timeout(Duration::from_millis(50), s.wait()).await;
        assert!(later.is_err(), "lowered: nothing to see");
        s.raise(8);
        assert_eq!(s.wait().await, 8);
    }
}
