//! The body of an agent's event stream, and how a route hands it to the listener.
//!
//! A broadcast writes the same frame to thousands of streams, so what each stream does per
//! event is kept to the least: the frame's SSE text was encoded once ([`Frame`]) and is
//! written as it is, and the keep-alive timer is not re-armed per event (it is looked at only
//! when it fires). warp's `sse::reply` formatted every event again for every stream and reset a
//! timer per event, and warp's response body type cannot be built from a stream outside warp:
//! so a route answers with an empty 200 `text/event-stream` response carrying the body in its
//! extensions ([`EventReply`]), and the listener, hyper's connections and the lean path
//! alike, takes it from there ([`EventReply::take`]).
//!
//! [`Frame`]: super::Frame

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::{Body, Frame as BodyFrame, SizeHint};
use tokio::time::{Instant, Sleep};
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use super::hub::{Direct, Subscription};

/// The keep-alive comment (what warp's `sse::keep_alive()` wrote).
pub(super) const KEEP_ALIVE: &[u8] = b":\n\n";

/// An event stream's body: the SSE bytes of its frames, and a keep-alive comment after each
/// silence of `keep_alive`. Ends when its frames end.
pub struct EventBody {
    frames: Box<dyn Frames>,
    /// The frames go straight to the connection's writer ([`EventBody::attach`]): this body
    /// only tells when the stream ends, and the writer sends the keep-alive comments.
    attached: bool,
    keep_alive: Duration,
    /// When something was last written.
    last: Instant,
    /// Fires at `last + keep_alive` or later; re-armed only when it fires.
    timer: Pin<Box<Sleep>>,
    /// What lives as long as the stream ([`EventBody::holding`]).
    _held: Option<Box<dyn std::any::Any + Send>>,
}

impl std::fmt::Debug for EventBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBody")
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl EventBody {
    /// The body of `frames` (SSE text, one event per item), with a keep-alive comment after each
    /// `keep_alive` of silence.
    pub fn new(frames: impl Stream<Item = Bytes> + Send + 'static, keep_alive: Duration) -> Self {
        Self::of(Box::new(AnyFrames(Box::pin(frames))), keep_alive)
    }

    /// The body of a hub stream: as [`EventBody::new`], and a connection that can take writes
    /// from the broadcasting thread may [`attach`](EventBody::attach) to it.
    pub fn of_hub<V: Send + 'static>(frames: Subscription<V>, keep_alive: Duration) -> Self {
        Self::of(Box::new(frames), keep_alive)
    }

    fn of(frames: Box<dyn Frames>, keep_alive: Duration) -> Self {
        let last = Instant::now();
        Self {
            frames,
            attached: false,
            keep_alive,
            last,
            timer: Box::pin(tokio::time::sleep_until(last + keep_alive)),
            _held: None,
        }
    }

    /// This body, keeping `held` until the stream ends (dropped with the body).
    pub fn holding(mut self, held: impl Send + 'static) -> Self {
        self._held = Some(Box::new(held));
        self
    }

    /// Hands the frames to `writer` from now on (those queued so far first): a broadcast
    /// writes them to the connection instead of waking the task that polls this body, which
    /// then yields only its end (and no keep-alive comments: the writer's job now). `None`
    /// when these frames are not a hub stream's; `Some(false)` when `writer` refused a queued
    /// frame.
    pub fn attach(&mut self, writer: Arc<dyn Direct>) -> Option<bool> {
        let attached = self.frames.attach(writer)?;
        self.attached = true;
        Some(attached)
    }

    /// Whether [`EventBody::attach`] can hand these frames to a writer (a hub stream's).
    pub fn attachable(&self) -> bool {
        self.frames.attachable()
    }

    /// Longest silence before a keep-alive comment.
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// The 200 `text/event-stream` response of this body (the headers warp's `sse::reply`
    /// set); the body itself travels in the extensions ([`EventReply`]).
    pub fn into_response(self) -> Response {
        let mut response = Response::new(Bytes::new().into());
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
            .extensions_mut()
            .insert(EventReply(Arc::new(Mutex::new(Some(self)))));
        response
    }
}

impl Stream for EventBody {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        match Pin::new(&mut this.frames).poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                this.last = Instant::now();
                return Poll::Ready(Some(frame));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending if this.attached => return Poll::Pending,
            Poll::Pending => {}
        }
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = this.last + this.keep_alive;
            let now = Instant::now();
            if now >= due {
                this.last = now;
                this.timer.as_mut().reset(now + this.keep_alive);
                return Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE)));
            }
            // Something was written since the timer was armed: wait for the rest of the
            // silence (polled again to register the new deadline).
            this.timer.as_mut().reset(due);
        }
    }
}

/// What an event body takes its frames from: any stream of them, or a hub stream, which can
/// also hand them to the connection's writer.
trait Frames: Stream<Item = Bytes> + Unpin + Send {
    /// As [`EventBody::attach`]; `None`: not a hub stream.
    fn attach(&mut self, writer: Arc<dyn Direct>) -> Option<bool>;

    /// Whether [`Frames::attach`] can.
    fn attachable(&self) -> bool;
}

struct AnyFrames(Pin<Box<dyn Stream<Item = Bytes> + Send>>);

impl Stream for AnyFrames {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl Frames for AnyFrames {
    fn attach(&mut self, _writer: Arc<dyn Direct>) -> Option<bool> {
        None
    }

    fn attachable(&self) -> bool {
        false
    }
}

impl<V: Send + 'static> Frames for Subscription<V> {
    fn attach(&mut self, writer: Arc<dyn Direct>) -> Option<bool> {
        Some(Subscription::attach(self, writer))
    }

    fn attachable(&self) -> bool {
        true
    }
}

/// The hyper body of an event stream (HTTP/2, or HTTP/1.1 served by hyper): data frames only.
impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        self.poll_next(cx)
            .map(|frame| frame.map(|data| Ok(BodyFrame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The body of an event-stream response, in its extensions (a slot: extensions must be
/// `Clone`; the first [`EventReply::take`] gets the body).
#[derive(Clone)]
pub struct EventReply(Arc<Mutex<Option<EventBody>>>);

impl std::fmt::Debug for EventReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventReply")
    }
}

impl EventReply {
    /// The event body `response` carries, taken out of it.
    pub fn take<B>(response: &mut warp::http::Response<B>) -> Option<EventBody> {
        let slot = response.extensions_mut().remove::<EventReply>()?;
        let mut body = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        body.take()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::sync::mpsc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_comment_follows_each_silence_and_frames_push_it_back() {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let frames =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
            );
        let start = Instant::now();
        let mut body = EventBody::new(frames, Duration::from_secs(15));
        // 10 s in, a frame: the comment comes 15 s after it, not 15 s after the start.
        tokio::time::sleep(Duration::from_secs(10)).await;
        tx.send(Bytes::from_static(b"event:block\ndata:{}\n\n"))
            .unwrap();
        assert_eq!(&body.next().await.unwrap()[..], b"event:block\ndata:{}\n\n");
        assert_eq!(&body.next().await.unwrap()[..], KEEP_ALIVE);
        assert_eq!(Instant::now() - start, Duration::from_secs(25));
        assert_eq!(&body.next().await.unwrap()[..], KEEP_ALIVE);
        assert_eq!(Instant::now() - start, Duration::from_secs(40));
        drop(tx);
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn the_response_carries_the_body_once_with_the_sse_headers() {
        let frames = futures_util::stream::iter([Bytes::from_static(b"event:x\ndata:1\n\n")]);
        let mut response = EventBody::new(frames, Duration::from_secs(15)).into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/event-stream");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-cache");
        let mut body = EventReply::take(&mut response).expect("the body");
        assert!(EventReply::take(&mut response).is_none());
        assert_eq!(&body.next().await.unwrap()[..], b"event:x\ndata:1\n\n");
        assert!(body.next().await.is_none());
    }
}
