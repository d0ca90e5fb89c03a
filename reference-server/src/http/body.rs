//! Request bodies: reading with the 1 MiB limit (chunked bodies too) and strict JSON
//! (duplicate keys, nesting and string limits) with the policy library's reader, the one
//! parser of the whole system.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use policy_engine::policy::json::{
    Collected, JsonError, JsonLimits, parse_collecting, parse_strict,
};
use serde_json::Value;

use crate::error::ApiError;
use crate::transport::unread::{DRAIN_BYTES, DRAIN_TIME};

/// Largest request body accepted, in bytes (1 MiB); larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Longest time a request body may take to arrive (a slow upload holds a connection and a
/// task; the header-read timeout does not cover bodies).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a whole body within [`BODY_READ_TIMEOUT`] (408 after), answering 413 as soon as it
/// grows past `limit` (whatever the `Content-Length` header says, so chunked bodies are
/// bounded too).
pub async fn read_limited<S, B>(
    content_length: Option<u64>,
    body: S,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    tokio::time::timeout(BODY_READ_TIMEOUT, read_within(content_length, body, limit))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::timeout(format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            )))
        })
}

async fn read_within<S, B>(
    content_length: Option<u64>,
    body: S,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    if content_length.is_some_and(|n| n > limit as u64) {
        if content_length.is_some_and(|n| n <= (limit + DRAIN_BYTES) as u64) {
            drain(body).await;
        }
        return Err(ApiError::too_large(limit));
    }
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::malformed(format!("cannot read the body: {e}")))?;
        if collected.len() + chunk.remaining() > limit {
            drain(body).await;
            return Err(ApiError::too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(collected.freeze())
}

/// Reads and discards the rest of an oversized body, up to [`DRAIN_BYTES`] and [`DRAIN_TIME`],
/// before the 413 is answered: a client still sending then reads the 413 (over HTTP/1.1 an
/// answer before the body ends is followed by the connection's close, which can reset what the
/// client has not read yet; over HTTP/2 by a reset of the stream, see
/// [`crate::transport::unread`]). Anything larger or slower is cut off.
async fn drain<S, B>(mut body: std::pin::Pin<&mut S>)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = body.next().await {
            seen = seen.saturating_add(chunk.remaining());
            if seen > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// Parses a JSON body strictly with the policy library's reader (one parser for the whole
/// system): syntax errors are 400 with line and column, duplicate keys and limit violations are
/// 422 with their path. The body size was already bounded by [`read_limited`].
pub fn parse_json(input: &[u8]) -> Result<Value, ApiError> {
    parse_strict(input, BODY_LIMITS).map_err(json_error)
}

/// [`parse_json`] that reads on past duplicate keys and returns them with the value, for a
/// policy document whose duplicates are reported together with its other errors
/// ([`ApiError::with_duplicates`]).
pub fn parse_json_collecting(input: &[u8]) -> Result<Collected, ApiError> {
    parse_collecting(input, BODY_LIMITS).map_err(json_error)
}

/// The JSON limits of a body (its size was bounded by [`read_limited`]).
const BODY_LIMITS: JsonLimits = JsonLimits {
    max_bytes: usize::MAX,
    ..JsonLimits::DEFAULT
};

fn json_error(err: JsonError) -> ApiError {
    match err {
        JsonError::Syntax(e) => ApiError::malformed(e.message),
        JsonError::Rejected(e) => ApiError::from_validation(vec![e]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that sends one byte and then nothing (a slow upload) is cut off with 408.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_gets_408() {
        let first = futures_util::stream::iter([Ok::<_, warp::Error>(Bytes::from_static(b"{"))]);
        let body = first.chain(futures_util::stream::pending());
        let error = read_limited(Some(100), body, MAX_BODY_BYTES).await;
        let error = error.map_err(|e| (e.status.as_u16(), e.code, e.message));
        assert_eq!(
            error,
            Err((
                408,
                "request_timeout",
                "the request body did not arrive within 30 s".to_owned()
            ))
        );
    }
}
