//! A connection's outbound queue: the bounded queue of frames its writer
//! sends. The hub offers events with [`Sender::try_send`] (a full queue
//! drops the frame, so one slow connection never holds up a publish); the
//! connection's own answers wait for room with [`Sender::send`].
//!
//! It behaves like a bounded `tokio::sync::mpsc` channel with one
//! receiver, and returns the same error types, but it costs nothing while
//! it is empty: the frames sit in a `VecDeque` that is allocated when the
//! first frame is queued and freed again once a burst has drained. (A
//! tokio channel allocates its first block of 32 slots, over 1.5 KiB with
//! its shared state, for every connection, idle or not.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;
pub use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};

/// A frame queued for one connection's writer ([`crate::server::writer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A text frame, shared between every receiver of the same publish.
    Text(Utf8Bytes),
}

/// Slots an emptied queue keeps; a queue that grew beyond them during a
/// burst gives its memory back when the burst has drained.
const KEEP_SLOTS: usize = 4;

/// Create a queue that holds at most `capacity` frames (at least 1).
pub fn queue(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            capacity: capacity.max(1),
            senders: 1,
            receiver: true,
        }),
        readable: AtomicWaker::new(),
        writable: Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the receiver (there is one): a frame was queued or the last
    /// sender went away.
    readable: AtomicWaker,
    /// Wakes one sender waiting for room: a frame was taken (or the
    /// receiver went away).
    writable: Notify,
}

struct State {
    frames: VecDeque<Outbound>,
    capacity: usize,
    senders: usize,
    receiver: bool,
}

/// The sending side; clone it freely. The queue closes for the receiver
/// when every sender is dropped.
pub struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    /// Queue `frame` if there is room: `Full` if the queue holds its
    /// capacity, `Closed` if the receiver is gone. Never waits.
    pub fn try_send(&self, frame: Outbound) -> Result<(), TrySendError<Outbound>> {
        let mut state = self.shared.state.lock();
        if !state.receiver {
            return Err(TrySendError::Closed(frame));
        }
        if state.frames.len() >= state.capacity {
            return Err(TrySendError::Full(frame));
        }
        state.frames.push_back(frame);
        drop(state);
        self.shared.readable.wake();
        Ok(())
    }

    /// Queue `frame`, waiting for room; an error (with the frame) if the
    /// receiver is gone. Cancel-safe: a cancelled send queued nothing.
    pub async fn send(&self, frame: Outbound) -> Result<(), SendError<Outbound>> {
        let mut frame = frame;
        loop {
            let room = self.shared.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(f)) => return Err(SendError(f)),
                Err(TrySendError::Full(f)) => frame = f,
            }
            room.await;
        }
    }

    /// Whether the receiver is gone (the connection has closed).
    pub fn is_closed(&self) -> bool {
        !self.shared.state.lock().receiver
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.state.lock().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            self.shared.readable.wake();
        }
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("outbound::Sender").finish_non_exhaustive()
    }
}

/// The receiving side (the connection's writer).
pub struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// The next frame, waiting for one; `None` once the queue is empty and
    /// every sender is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next frame if one is queued (`Ready(Some)`), `Ready(None)` once
    /// the queue is empty and every sender is gone; else `Pending`, and
    /// `cx` is woken when a frame is queued. For a writer that polls the
    /// queue from its own poll loop.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        // Registered before looking (one compare-and-swap), so a frame
        // queued after the look still wakes it, and the queue is locked
        // once per poll.
        self.shared.readable.register(cx.waker());
        match self.shared.pop() {
            Ok(frame) => Poll::Ready(Some(frame)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    /// The next frame if one is queued: `Empty` if none is, `Disconnected`
    /// if none is and every sender is gone.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        self.shared.pop()
    }
}

impl Shared {
    /// Take the oldest frame and let one waiting sender retry.
    fn pop(&self) -> Result<Outbound, TryRecvError> {
        let mut state = self.state.lock();
        let Some(frame) = state.frames.pop_front() else {
            return Err(if state.senders == 0 {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        };
        if state.frames.is_empty() && state.frames.capacity() > KEEP_SLOTS {
            state.frames = VecDeque::new();
        }
        drop(state);
        self.writable.notify_one();
        Ok(frame)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let frames = {
            let mut state = self.shared.state.lock();
            state.receiver = false;
            std::mem::take(&mut state.frames)
        };
        drop(frames);
        self.shared.writable.notify_waiters();
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("outbound::Receiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn text(s: &str) -> Outbound {
        Outbound::Text(Utf8Bytes::from(s))
    }

    fn body(frame: Outbound) -> String {
        let Outbound::Text(t) = frame;
        t.as_str().to_owned()
    }

    #[test]
    fn a_full_queue_refuses_and_an_emptied_one_takes_again() {
        let (tx, mut rx) = queue(2);
        assert!(tx.try_send(text("a")).is_ok());
        assert!(tx.try_send(text("b")).is_ok());
        assert!(matches!(tx.try_send(text("c")), Err(TrySendError::Full(_))));
        assert_eq!(body(rx.try_recv().unwrap()), "a");
        assert!(tx.try_send(text("c")).is_ok());
        assert_eq!(body(rx.try_recv().unwrap()), "b");
        assert_eq!(body(rx.try_recv().unwrap()), "c");
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = queue(100);
        for i in 0..50 {
            tx.try_send(text(&i.to_string())).unwrap();
        }
        assert!(rx.shared.state.lock().frames.capacity() >= 50);
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.state.lock().frames.capacity(), 0);
    }

    #[test]
    fn closing_either_side_is_seen_by_the_other() {
        let (tx, mut rx) = queue(4);
        let tx2 = tx.clone();
        tx.try_send(text("last")).unwrap();
        drop(tx);
        assert!(rx.try_recv().is_ok());
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        drop(tx2);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));

        let (tx, rx) = queue(4);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(
            tx.try_send(text("x")),
            Err(TrySendError::Closed(_))
        ));
    }

    #[tokio::test]
    async fn recv_waits_for_a_frame_and_ends_when_the_senders_go() {
        let (tx, mut rx) = queue(4);
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(text("late")).await.unwrap();
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.ok().flatten().map(body).as_deref(), Some("late"));
        writer.await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(end.ok(), Some(None));
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_when_the_receiver_goes() {
        let (tx, mut rx) = queue(1);
        tx.send(text("first")).await.unwrap();
        let tx2 = tx.clone();
        let blocked = tokio::spawn(async move { tx2.send(text("second")).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!blocked.is_finished());
        assert_eq!(body(rx.recv().await.unwrap()), "first");
        assert!(blocked.await.unwrap());
        assert_eq!(body(rx.recv().await.unwrap()), "second");

        tx.send(text("fill")).await.unwrap();
        let tx3 = tx.clone();
        let refused = tokio::spawn(async move { tx3.send(text("never")).await.is_err() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let refused = tokio::time::timeout(Duration::from_secs(5), refused).await;
        assert!(refused.unwrap().unwrap());
    }

    #[tokio::test]
    async fn many_waiting_senders_all_get_through_in_turn() {
        let (tx, mut rx) = queue(1);
        let mut senders = Vec::new();
        for i in 0..20 {
            let tx = tx.clone();
            senders.push(tokio::spawn(async move {
                tx.send(text(&i.to_string())).await.is_ok()
            }));
        }
        drop(tx);
        let mut got = Vec::new();
        while let Ok(Some(f)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            got.push(body(f).parse::<u32>().unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        for s in senders {
            assert!(s.await.unwrap());
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        TrySend,
        TryRecv,
    }

    proptest! {
        /// The queue is FIFO, never holds more than its capacity, and
        /// refuses exactly when it is full.
        #[test]
        fn behaves_like_a_bounded_fifo(
            capacity in 1usize..8,
            ops in proptest::collection::vec(prop_oneof![Just(Op::TrySend), Just(Op::TryRecv)], 0..200),
        ) {
            let (tx, mut rx) = queue(capacity);
            let mut model = VecDeque::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::TrySend => {
                        let r = tx.try_send(text(&next.to_string()));
                        if model.len() < capacity {
                            prop_assert!(r.is_ok());
                            model.push_back(next);
                        } else {
                            prop_assert!(matches!(r, Err(TrySendError::Full(_))), "expected Full");
                        }
                        next += 1;
                    }
                    Op::TryRecv => match (rx.try_recv(), model.pop_front()) {
                        (Ok(f), Some(want)) => prop_assert_eq!(body(f), want.to_string()),
                        (Err(TryRecvError::Empty), None) => {}
                        (got, want) => prop_assert!(false, "got {:?}, model {:?}", got, want),
                    },
                }
            }
        }
    }
}
