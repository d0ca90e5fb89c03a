//! Request bodies answered before they were read.
//!
//! Many answers come before the body: a missing token (401), a token of the wrong role (403),
//! an unknown query parameter (400), an unknown path (404), a body over the limit (413). Over
//! HTTP/2, once the answer is sent and nobody holds the request body any more, the stream is
//! reset (`RST_STREAM` with `NO_ERROR`, as RFC 9113 §8.1 allows) while the client may still be
//! sending, and clients such as curl 7.88 then throw the whole answer away and report a
//! framing error instead of the 401. So a body dropped unread is handed to a task that reads
//! and discards the rest of it, bounded in bytes ([`DRAIN_BYTES`]) and time ([`DRAIN_TIME`]):
//! the client finishes sending, the stream ends cleanly, and the client reads the answer.
//! Anything larger or slower still gets the reset. HTTP/1.1 needs none of this: hyper reads or
//! closes an unread body after the answer itself.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// Most bytes of an unread request body read and thrown away after its answer.
pub const DRAIN_BYTES: usize = 16 * 1024 * 1024;

/// Longest time spent reading an unread request body after its answer.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// An HTTP/2 request body that, when dropped before its end, is read to its end (within the
/// bounds) by a task of its own instead of resetting the stream.
#[derive(Debug)]
pub struct DrainUnread {
    body: Option<Incoming>,
}

impl DrainUnread {
    /// Wraps the body of an HTTP/2 request.
    pub fn new(body: Incoming) -> Self {
        Self { body: Some(body) }
    }
}

impl Body for DrainUnread {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for DrainUnread {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Dropped outside a runtime (never in the server): the reset it is, then.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads and discards `body` up to [`DRAIN_BYTES`] and [`DRAIN_TIME`], then drops it.
async fn drain(mut body: Incoming) {
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.len());
                if seen > DRAIN_BYTES {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}
