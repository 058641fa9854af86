//! The writing side of one connection: it moves frames from the
//! connection's outbound queue ([`crate::outbound`]) to the socket, a batch
//! per flush, and sends the pings the idle check asks for.
//!
//! It is not a task of its own. The connection's one poll loop
//! ([`super::ws`]) polls it next to the socket's read side, so a connection
//! needs no second task, no lock around a split socket and no channels to
//! reach its writer: that is most of what an idle connection would
//! otherwise cost.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::ws::Message;
use bytes::Bytes;
use futures_util::Sink;

use crate::outbound::{Outbound, Receiver};

/// At most this many queued frames are written before one flush.
pub const WRITE_BATCH: usize = 64;

/// The write state of one connection (what is fed but not yet flushed).
#[derive(Debug, Default)]
pub struct Writer {
    /// Bytes of text frames fed to the socket since the last flush.
    unflushed_bytes: u64,
    /// Something was fed since the last flush.
    dirty: bool,
    /// A ping is to be sent.
    ping: bool,
}

impl Writer {
    /// Send a ping before the next queued frame.
    pub fn ping(&mut self) {
        self.ping = true;
    }

    /// Write what is queued on `rx` to `sink`, flushing after each batch of
    /// at most [`WRITE_BATCH`] frames; `flushed` is told the text bytes of
    /// each flushed batch. `Pending` when the queue is empty (or the socket
    /// cannot take more): `cx` is woken when a frame is queued or the
    /// socket can be written again. `Ready(Ok)` once the queue is closed
    /// and drained, `Ready(Err)` when the socket failed.
    pub fn poll_write<S>(
        &mut self,
        sink: &mut S,
        rx: &mut Receiver,
        cx: &mut Context<'_>,
        mut flushed: impl FnMut(u64),
    ) -> Poll<Result<(), S::Error>>
    where
        S: Sink<Message> + Unpin,
    {
        loop {
            if self.ping {
                ready!(Pin::new(&mut *sink).poll_ready(cx))?;
                Pin::new(&mut *sink).start_send(Message::Ping(Bytes::new()))?;
                self.ping = false;
                self.dirty = true;
            }
            let mut fed = 0;
            let mut closed = false;
            while fed < WRITE_BATCH {
                ready!(Pin::new(&mut *sink).poll_ready(cx))?;
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(Outbound::Text(text))) => {
                        self.unflushed_bytes += text.len() as u64;
                        self.dirty = true;
                        fed += 1;
                        Pin::new(&mut *sink).start_send(Message::Text(text))?;
                    }
                    Poll::Ready(None) => {
                        closed = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if self.dirty {
                ready!(Pin::new(&mut *sink).poll_flush(cx))?;
                self.dirty = false;
                let bytes = std::mem::take(&mut self.unflushed_bytes);
                if bytes > 0 {
                    flushed(bytes);
                }
            }
            if closed {
                return Poll::Ready(Ok(()));
            }
            if fed < WRITE_BATCH {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound;
    use axum::extract::ws::Utf8Bytes;
    use futures_channel::mpsc;
    use futures_util::StreamExt;
    use std::future::poll_fn;

    fn text(s: &str) -> Outbound {
        Outbound::Text(Utf8Bytes::from(s))
    }

    /// Poll the writer once; what it returned and the bytes it reported flushed.
    fn poll_once(
        writer: &mut Writer,
        sink: &mut mpsc::Sender<Message>,
        rx: &mut Receiver,
    ) -> (Poll<Result<(), mpsc::SendError>>, Vec<u64>) {
        let mut reported = Vec::new();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let poll = writer.poll_write(sink, rx, &mut cx, |b| reported.push(b));
        (poll, reported)
    }

    #[test]
    fn queued_frames_are_written_in_order_and_their_bytes_reported_once_flushed() {
        let (tx, mut rx) = outbound::queue(200);
        let (mut sink, mut out) = mpsc::channel::<Message>(1000);
        let mut writer = Writer::default();
        assert!(poll_once(&mut writer, &mut sink, &mut rx).0.is_pending());
        for i in 0..100 {
            tx.try_send(text(&format!("f{i:02}"))).unwrap();
        }
        let (poll, reported) = poll_once(&mut writer, &mut sink, &mut rx);
        assert!(poll.is_pending(), "the queue is empty again, not closed");
        // 100 frames of 3 bytes: one full batch, then the rest.
        assert_eq!(reported, vec![64 * 3, 36 * 3]);
        let written: Vec<Message> = (0..100).map(|_| out.try_recv().unwrap()).collect();
        let expected: Vec<Message> = (0..100)
            .map(|i| Message::Text(Utf8Bytes::from(format!("f{i:02}"))))
            .collect();
        assert_eq!(written, expected);
        assert!(out.try_recv().is_err(), "nothing else was written");
    }

    #[test]
    fn a_ping_goes_before_the_next_frame_and_counts_no_text_bytes() {
        let (tx, mut rx) = outbound::queue(8);
        let (mut sink, mut out) = mpsc::channel::<Message>(8);
        let mut writer = Writer::default();
        writer.ping();
        tx.try_send(text("hello")).unwrap();
        let (poll, reported) = poll_once(&mut writer, &mut sink, &mut rx);
        assert!(poll.is_pending());
        assert_eq!(reported, vec![5]);
        assert_eq!(out.try_recv().ok(), Some(Message::Ping(Bytes::new())));
        assert_eq!(
            out.try_recv().ok(),
            Some(Message::Text(Utf8Bytes::from("hello")))
        );
        writer.ping();
        let (_, reported) = poll_once(&mut writer, &mut sink, &mut rx);
        assert!(reported.is_empty(), "a ping alone reports no bytes");
        assert_eq!(out.try_recv().ok(), Some(Message::Ping(Bytes::new())));
    }

    #[test]
    fn a_full_socket_holds_the_frames_back_until_it_has_room() {
        let (tx, mut rx) = outbound::queue(8);
        // Room for one message at a time (the channel's buffer plus its one sender slot).
        let (mut sink, mut out) = mpsc::channel::<Message>(0);
        let mut writer = Writer::default();
        for f in ["a", "b", "c"] {
            tx.try_send(text(f)).unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..10 {
            let _ = poll_once(&mut writer, &mut sink, &mut rx);
            while let Ok(m) = out.try_recv() {
                got.push(m);
            }
        }
        let expected: Vec<Message> = ["a", "b", "c"]
            .iter()
            .map(|f| Message::Text(Utf8Bytes::from(*f)))
            .collect();
        assert_eq!(got, expected, "every frame arrives once, in order");
    }

    #[test]
    fn a_closed_socket_is_an_error_and_a_closed_queue_ends_the_writer() {
        let (tx, mut rx) = outbound::queue(8);
        let (mut sink, out) = mpsc::channel::<Message>(8);
        let mut writer = Writer::default();
        drop(out);
        tx.try_send(text("lost")).unwrap();
        assert!(matches!(
            poll_once(&mut writer, &mut sink, &mut rx).0,
            Poll::Ready(Err(_))
        ));

        let (tx, mut rx) = outbound::queue(8);
        let (mut sink, mut out) = mpsc::channel::<Message>(8);
        tx.try_send(text("last")).unwrap();
        drop(tx);
        let mut writer = Writer::default();
        assert!(matches!(
            poll_once(&mut writer, &mut sink, &mut rx).0,
            Poll::Ready(Ok(()))
        ));
        assert_eq!(
            out.try_recv().ok(),
            Some(Message::Text(Utf8Bytes::from("last")))
        );
    }

    #[tokio::test]
    async fn a_frame_queued_later_wakes_the_writer() {
        let (tx, mut rx) = outbound::queue(8);
        let (mut sink, mut out) = mpsc::channel::<Message>(8);
        let mut writer = Writer::default();
        let sending = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            tx.send(text("late")).await.unwrap();
            tx
        });
        let mut first = true;
        poll_fn(|cx| {
            let poll = writer.poll_write(&mut sink, &mut rx, cx, |_| {});
            assert!(poll.is_pending());
            if first {
                first = false;
                return Poll::Pending;
            }
            Poll::Ready(())
        })
        .await;
        assert_eq!(
            out.next().await,
            Some(Message::Text(Utf8Bytes::from("late")))
        );
        drop(sending.await.unwrap());
    }
}
