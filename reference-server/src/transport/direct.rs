//! A lean event stream's connection once its stream is attached ([`Direct`]): broadcasts
//! write their frames to it themselves, from whatever thread runs them, and the stream's task
//! is woken only when there is something for it to do: bytes the socket did not take at once,
//! a keep-alive comment after a silence, the client leaving, or the stream's end.
//!
//! Whoever holds the lock writes, so chunks never interleave and go out in the order they
//! were written. A write from a broadcast never waits: what the socket does not take is held
//! back (bounded: past the hub's queue size the stream is dropped, as a full queue drops it)
//! and the task writes it on, within the write deadline. While anything is held back, later
//! frames join it instead of being written, so only the task polls the socket for writing
//! then (a broadcast polls with a no-op waker, which would otherwise replace the task's).

use std::collections::VecDeque;
use std::future::Future as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::Stream;
use futures_util::task::{AtomicWaker, noop_waker_ref};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::chunked::{CHUNK_END, Ended, LAST_CHUNK, SizeLine, write_timed_out};
use super::events::EventBody;
use super::events::KEEP_ALIVE;
use super::hub::Direct;

/// Pieces a held-back chunk takes (size line, data, CRLF): the hold's bound counts frames.
const PIECES_PER_CHUNK: usize = 3;

/// Pieces written in one vectored write while writing held-back bytes on.
const PIECES_PER_WRITE: usize = 16;

/// The connection of an attached stream, shared by its task and the broadcasts.
pub struct Connection<IO> {
    state: Mutex<State<IO>>,
    /// The stream's task, woken when bytes are held back or the connection failed.
    task: AtomicWaker,
}

struct State<IO> {
    /// `None` once the task took it back to close it: writes are refused from then on.
    io: Option<IO>,
    /// Bytes the socket did not take yet, in order, chunk framing included.
    held: VecDeque<Bytes>,
    /// `io` took bytes it may not have sent yet (TLS records rustls still holds).
    unflushed: bool,
    /// Since when bytes are held back or unflushed: they must be written within the deadline.
    since: Option<Instant>,
    /// When the last chunk was written or held back (a keep-alive follows each silence).
    last: Instant,
    /// The connection failed: the error, for the task.
    failed: Option<io::Error>,
}

impl<IO> State<IO> {
    fn busy(&self) -> bool {
        !self.held.is_empty() || self.unflushed
    }

    fn fail(&mut self, error: io::Error) {
        if self.failed.is_none() {
            self.failed = Some(error);
        }
    }

    /// Holds back the chunk of `data` (after its size `line`) from byte `skip` on (what the
    /// socket did not take).
    fn hold(&mut self, line: &[u8], data: &Bytes, mut skip: usize) {
        let pieces: [Bytes; PIECES_PER_CHUNK] = [
            Bytes::copy_from_slice(line),
            data.clone(),
            Bytes::from_static(CHUNK_END),
        ];
        for piece in pieces {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            self.held.push_back(piece.slice(skip..));
            skip = 0;
        }
        self.since.get_or_insert_with(Instant::now);
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> State<IO> {
    /// Writes one chunk of `data` without waiting: at once when nothing is held back and the
    /// socket takes it, held back otherwise. `true` when the task must write held bytes on.
    fn write_chunk(&mut self, data: &Bytes) -> bool {
        let line = SizeLine::of(data.len());
        if self.busy() {
            self.hold(&line, data, 0);
            return false;
        }
        let Some(io) = self.io.as_mut() else {
            return false;
        };
        let total = line.len() + data.len() + CHUNK_END.len();
        let slices = [
            IoSlice::new(&line),
            IoSlice::new(data),
            IoSlice::new(CHUNK_END),
        ];
        // A no-op waker: if the socket is not writable, the task is woken instead and polls
        // it with its own.
        let mut cx = Context::from_waker(noop_waker_ref());
        let written = match Pin::new(&mut *io).poll_write_vectored(&mut cx, &slices) {
            Poll::Ready(Ok(0)) => {
                self.fail(io::ErrorKind::WriteZero.into());
                return true;
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(error)) => {
                self.fail(error);
                return true;
            }
            Poll::Pending => 0,
        };
        if written < total {
            self.hold(&line, data, written);
            self.unflushed = true;
            return true;
        }
        match Pin::new(io).poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => false,
            Poll::Ready(Err(error)) => {
                self.fail(error);
                true
            }
            Poll::Pending => {
                self.unflushed = true;
                self.since.get_or_insert_with(Instant::now);
                true
            }
        }
    }

    /// Writes the held bytes on and flushes, with the task's waker.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !self.held.is_empty() {
            let mut slices = [IoSlice::new(&[]); PIECES_PER_WRITE];
            let mut count = 0;
            for (slot, piece) in slices.iter_mut().zip(&self.held) {
                *slot = IoSlice::new(piece);
                count += 1;
            }
            let mut written = match Pin::new(&mut *io)
                .poll_write_vectored(cx, slices.get(..count).unwrap_or_default())
            {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            };
            while written > 0 {
                let Some(front) = self.held.front_mut() else {
                    break;
                };
                if written >= front.len() {
                    written -= front.len();
                    self.held.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
            self.unflushed = true;
        }
        if self.unflushed {
            match Pin::new(io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.since = None;
        Poll::Ready(Ok(()))
    }

    /// The client's side: it leaving ends the stream, and so does any byte it sends (an SSE
    /// client sends nothing after its request; a pipelined request is not served).
    fn poll_peer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Ended>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(Ended::Done));
        };
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match Pin::new(io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(Ended::PeerClosed)),
            Poll::Ready(Ok(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the client sent bytes during its event stream",
            ))),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO> Connection<IO> {
    fn lock(&self) -> MutexGuard<'_, State<IO>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Direct for Connection<IO> {
    fn write(&self, wire: &Bytes, limit: usize) -> bool {
        let mut state = self.lock();
        if state.failed.is_some() || state.io.is_none() {
            return false;
        }
        // Empty data is no chunk (an empty chunk would end the body).
        if wire.is_empty() {
            return true;
        }
        if state.held.len() >= limit.saturating_mul(PIECES_PER_CHUNK) {
            return false;
        }
        state.last = Instant::now();
        let wake = state.write_chunk(wire);
        let failed = state.failed.is_some();
        drop(state);
        if wake {
            self.task.wake();
        }
        !failed
    }
}

/// Serves an attached stream on `io` (its head already written) until it ends: the hub drops
/// it (replaced, too slow, shutdown; the last chunk is written then), the client leaves or
/// sends a byte, or a write does not finish within `write_within`. Returns how it ended and
/// `io`, for the caller to close.
pub async fn serve<IO>(
    io: IO,
    mut events: EventBody,
    write_within: Duration,
) -> (io::Result<Ended>, Option<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let keep_alive = events.keep_alive();
    let now = Instant::now();
    let connection = Arc::new(Connection {
        state: Mutex::new(State {
            io: Some(io),
            held: VecDeque::new(),
            unflushed: false,
            since: None,
            last: now,
            failed: None,
        }),
        task: AtomicWaker::new(),
    });
    let ended = match events.attach(connection.clone()) {
        Some(true) => run(&connection, &mut events, keep_alive, write_within).await,
        // A queued frame was refused: the connection failed.
        Some(false) => Err(connection.lock().failed.take().unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the event stream's connection failed",
            )
        })),
        None => Err(io::Error::other("not a hub event stream")),
    };
    // The stream leaves the hub before the connection is taken back.
    drop(events);
    let io = connection.lock().io.take();
    (ended, io)
}

/// The task of an attached stream.
async fn run<IO>(
    connection: &Connection<IO>,
    events: &mut EventBody,
    keep_alive: Duration,
    write_within: Duration,
) -> io::Result<Ended>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut timer = Box::pin(tokio::time::sleep(keep_alive));
    let mut ending = false;
    std::future::poll_fn(|cx| {
        connection.task.register(cx.waker());
        if !ending {
            match Pin::new(&mut *events).poll_next(cx) {
                Poll::Ready(None) => {
                    ending = true;
                    let mut state = connection.lock();
                    state.held.push_back(Bytes::from_static(LAST_CHUNK));
                    state.since.get_or_insert_with(Instant::now);
                }
                // Frames come through the connection once attached; one that still came this
                // way is written the same way.
                Poll::Ready(Some(data)) => {
                    let _ = Direct::write(connection, &data, usize::MAX);
                    cx.waker().wake_by_ref();
                }
                Poll::Pending => {}
            }
        }
        let mut state = connection.lock();
        if let Some(error) = state.failed.take() {
            return Poll::Ready(Err(error));
        }
        if state.busy() {
            if let Poll::Ready(Err(error)) = state.poll_drain(cx) {
                return Poll::Ready(Err(error));
            }
        }
        if ending && !state.busy() {
            return Poll::Ready(Ok(Ended::Done));
        }
        if !ending {
            if let Poll::Ready(ended) = state.poll_peer(cx) {
                return Poll::Ready(ended);
            }
        }
        let now = Instant::now();
        let due = match state.since {
            Some(since) if now >= since + write_within => {
                return Poll::Ready(Err(write_timed_out()));
            }
            Some(since) => since + write_within,
            None if now >= state.last + keep_alive => {
                state.last = now;
                state.write_chunk(&Bytes::from_static(KEEP_ALIVE));
                // Polled again at once: whatever the comment left held back is written on.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            None => state.last + keep_alive,
        };
        drop(state);
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        if timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::transport::{Frame, Hub};

    const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);
    const WRITE_WITHIN: Duration = Duration::from_secs(10);

    fn frame(data: &str) -> Frame {
        Frame::new("block", None, data)
    }

    fn chunk(frame: &Frame) -> Vec<u8> {
        let wire = frame.wire();
        [format!("{:X}\r\n", wire.len()).as_bytes(), wire, b"\r\n"].concat()
    }

    /// A hub with agent `a`'s stream (queue of `queue` frames, `initial` queued first) served
    /// attached on one end of a pipe of `pipe` bytes; the other end is the client's.
    async fn attached(
        queue: usize,
        initial: Vec<Frame>,
        pipe: usize,
    ) -> (
        Hub<()>,
        tokio::task::JoinHandle<(io::Result<Ended>, Option<DuplexStream>)>,
        DuplexStream,
    ) {
        let hub: Hub<()> = Hub::new(queue, KEEP_ALIVE_EVERY);
        let subscription = hub.subscribe("org", "a", (), initial).unwrap();
        let body = EventBody::of_hub(subscription, KEEP_ALIVE_EVERY);
        let (server, client) = tokio::io::duplex(pipe);
        let task = tokio::spawn(serve(server, body, WRITE_WITHIN));
        // The test runtime has one thread: the stream's task runs (and attaches) here.
        tokio::task::yield_now().await;
        (hub, task, client)
    }

    async fn read_exactly(client: &mut DuplexStream, len: usize) -> Vec<u8> {
        let mut read = vec![0; len];
        client.read_exact(&mut read).await.unwrap();
        read
    }

    #[tokio::test]
    async fn frames_go_out_as_chunks_in_order_queued_ones_first_and_the_end_is_the_last_chunk() {
        let first = frame("queued before the connection was attached");
        let (hub, task, mut client) = attached(4, vec![first.clone()], 1 << 16).await;
        assert_eq!(
            read_exactly(&mut client, chunk(&first).len()).await,
            chunk(&first)
        );
        let (x, y) = (frame("x"), frame("y"));
        assert_eq!(hub.visit_org("org", |_, _| Some(x.clone())).await.queued, 1);
        assert_eq!(hub.visit_org("org", |_, _| Some(y.clone())).await.queued, 1);
        let expected = [chunk(&x), chunk(&y)].concat();
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
        // The hub ends the stream (shutdown): the last chunk, and the connection back.
        hub.close();
        assert_eq!(
            read_exactly(&mut client, LAST_CHUNK.len()).await,
            LAST_CHUNK
        );
        let (ended, io) = task.await.unwrap();
        assert_eq!(ended.unwrap(), Ended::Done);
        assert!(io.is_some());
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_is_held_back_and_written_on_in_order() {
        // A pipe of 64 bytes: each 300-byte frame is taken in part, the rest held back.
        let (hub, _task, mut client) = attached(8, Vec::new(), 64).await;
        let frames: Vec<Frame> = (0..5).map(|i| frame(&format!("{i}").repeat(300))).collect();
        for f in &frames {
            let delivery = hub.visit_org("org", |_, _| Some(f.clone())).await;
            assert_eq!((delivery.queued, delivery.dropped), (1, 0));
        }
        let expected: Vec<u8> = frames.iter().flat_map(chunk).collect();
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
        assert_eq!(hub.stream_count("org"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_is_dropped_past_the_queue_then_timed_out() {
        let (hub, task, _client) = attached(2, Vec::new(), 64).await;
        let big = frame(&"z".repeat(1000));
        // The first is taken in part, then two are held back whole; the fourth is one too many.
        for expected in [(1, 0), (1, 0), (1, 0), (0, 1)] {
            let delivery = hub.visit_org("org", |_, _| Some(big.clone())).await;
            assert_eq!((delivery.queued, delivery.dropped), expected);
        }
        assert_eq!(hub.stream_count("org"), 0);
        // Dropped by the hub, the stream still owes its held bytes and the last chunk: the
        // write deadline ends it.
        let (ended, _) = task.await.unwrap();
        let error = ended.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            error.to_string(),
            "the client took nothing within the write timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_comment_follows_each_silence_and_frames_push_it_back() {
        let (hub, _task, mut client) = attached(4, Vec::new(), 1 << 16).await;
        let comment = [&b"3\r\n"[..], KEEP_ALIVE, b"\r\n"].concat();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let x = frame("x");
        hub.visit_org("org", |_, _| Some(x.clone())).await;
        assert_eq!(read_exactly(&mut client, chunk(&x).len()).await, chunk(&x));
        // The comment comes 15 s after the frame (at 25 s), not 15 s after the start.
        assert_eq!(read_exactly(&mut client, comment.len()).await, comment);
        let at = start.elapsed();
        assert!(
            at >= Duration::from_secs(25) && at < Duration::from_secs(26),
            "{at:?}"
        );
        assert_eq!(read_exactly(&mut client, comment.len()).await, comment);
        let at = start.elapsed();
        assert!(
            at >= Duration::from_secs(40) && at < Duration::from_secs(41),
            "{at:?}"
        );
    }

    #[tokio::test]
    async fn the_client_leaving_or_sending_a_byte_ends_the_stream() {
        let (_hub, task, client) = attached(4, Vec::new(), 1 << 16).await;
        drop(client);
        let (ended, _) = task.await.unwrap();
        assert_eq!(ended.unwrap(), Ended::PeerClosed);

        let (_hub, task, mut client) = attached(4, Vec::new(), 1 << 16).await;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let (ended, _) = task.await.unwrap();
        let error = ended.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            error.to_string(),
            "the client sent bytes during its event stream"
        );
    }
}
