//! The lean HTTP/1.1 path of agent event streams: the first request head of an HTTP/1.1
//! connection is read here (httparse, a small buffer); `GET /api/events` is answered without
//! hyper, anything else goes to hyper with the bytes already read replayed first ([`Rewind`]).
//!
//! Why: an open event stream is an idle connection for hours, and hyper's HTTP/1 connection
//! keeps an 8 KiB read buffer, an 8 KiB write buffer and its dispatcher for the whole of it.
//! Here a stream keeps its TLS session, the response body and nothing else: each event is
//! written as one chunk and flushed, and the peer's leaving is noticed by a one-byte read.
//! The request itself still goes through the one warp service (auth, limits, admission,
//! logging, metrics); only the HTTP/1.1 framing of its answer is written here, as hyper wrote
//! it (status line, headers, `transfer-encoding: chunked`, `date`, uppercase chunk sizes), with
//! `connection: close`: the connection ends with the stream, so a client must not put it back
//! in its pool once the stream ended (hyper kept it open; a pooled client reusing it here got
//! its next request cut off).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use warp::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

pub use super::chunked::Ended;
use super::chunked::{CHUNK_END, LAST_CHUNK, SizeLine, write_timed_out};
use super::direct;
use super::events::{EventBody, EventReply};

/// The one path served on the lean path (any query string goes along to the route).
pub const EVENTS_PATH: &str = "/api/events";

/// The first read of a connection: request heads of agents are a few hundred bytes.
const FIRST_READ: usize = 1024;

/// Longest head read here; a longer one goes to hyper as it is (with hyper's own limits).
pub const HEAD_CAP: usize = 4096;

/// Most headers of a lean request; more go to hyper.
const MAX_HEADERS: usize = 32;

/// The body of a lean request: stream requests have none.
pub type NoBody = Empty<Bytes>;

/// What the first bytes of an HTTP/1 connection were.
#[derive(Debug)]
pub enum First {
    /// A whole `GET /api/events` head (HTTP/1.1, no body, nothing after it).
    Events(Request<NoBody>),
    /// Anything else (another request, a head longer than [`HEAD_CAP`], bytes that do not
    /// parse, a body): the bytes read, for hyper.
    Other(Bytes),
    /// Bytes that are not an HTTP/1 request head (what is wrong): answered with a 400 in the
    /// API's error envelope, not hyper's empty one.
    Malformed(&'static str),
    /// The peer closed before sending a byte.
    Closed,
}

/// Reads the first request head of `io`, up to [`HEAD_CAP`] bytes.
pub async fn read_first<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<First> {
    let mut buf = vec![0u8; FIRST_READ];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= HEAD_CAP {
                return Ok(First::Other(Bytes::from(buf)));
            }
            buf.resize(HEAD_CAP, 0);
        }
        let free = buf.get_mut(filled..).unwrap_or_default();
        let read = io.read(free).await?;
        if read == 0 {
            buf.truncate(filled);
            return Ok(if filled == 0 {
                First::Closed
            } else {
                First::Other(Bytes::from(buf))
            });
        }
        filled += read;
        match parse(buf.get(..filled).unwrap_or_default()) {
            Parsed::Partial => {}
            Parsed::Events(request) => return Ok(First::Events(*request)),
            Parsed::Malformed(why) => return Ok(First::Malformed(why)),
            Parsed::Other => {
                buf.truncate(filled);
                return Ok(First::Other(Bytes::from(buf)));
            }
        }
    }
}

enum Parsed {
    Partial,
    Events(Box<Request<NoBody>>),
    Malformed(&'static str),
    Other,
}

/// The start of HTTP/2's connection preface (`h2c` with prior knowledge): hyper's to serve.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(bytes) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Ok(httparse::Status::Complete(_)) if !content_length_valid(&head) => {
            Parsed::Malformed("invalid Content-Length header")
        }
        // Bytes after the head (a body, a pipelined request) are hyper's to handle.
        Ok(httparse::Status::Complete(length)) if length == bytes.len() => {
            events_request(&head).map_or(Parsed::Other, |r| Parsed::Events(Box::new(r)))
        }
        Ok(httparse::Status::Complete(_)) => Parsed::Other,
        // More headers than read here: hyper reads them with its own limit.
        Err(httparse::Error::TooManyHeaders) => Parsed::Other,
        Err(_) if H2_PREFACE.starts_with(bytes) || bytes.starts_with(H2_PREFACE) => Parsed::Other,
        Err(httparse::Error::Version) => Parsed::Malformed("unsupported HTTP version"),
        Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
            Parsed::Malformed("invalid header line")
        }
        Err(_) => Parsed::Malformed("invalid request line"),
    }
}

/// Whether every `Content-Length` of `head` is a number, and all the same (what hyper
/// requires; it would answer a 400 without a body).
fn content_length_valid(head: &httparse::Request<'_, '_>) -> bool {
    let mut lengths = head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value);
    let Some(first) = lengths.next() else {
        return true;
    };
    let number = |value: &[u8]| {
        !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit)
    };
    number(first) && lengths.all(|other| other == first)
}

/// The request, when `head` is a stream request the lean path serves.
fn events_request(head: &httparse::Request<'_, '_>) -> Option<Request<NoBody>> {
    let path = head.path?;
    if head.method? != "GET" || head.version? != 1 || path.split('?').next()? != EVENTS_PATH {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for header in head.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        // A body, an upgrade or an expectation: not a plain stream request.
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "upgrade" | "expect"
        ) {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(header.value).ok()?);
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path.parse::<Uri>().ok()?)
        .version(Version::HTTP_11)
        .body(NoBody::new())
        .ok()?;
    *request.headers_mut() = headers;
    Some(request)
}

/// Writes `response` to `io`: an event stream (a response carrying an [`EventReply`]) chunk by
/// chunk until its body ends or the peer leaves; anything else whole, with `connection: close`.
/// Each write must finish within `write_within`. Bytes from the client during a stream end it
/// (an SSE client sends nothing after its request; a pipelined request is not served). A hub
/// stream is attached to the connection (`direct.rs`): broadcasts write its frames themselves.
/// Returns how it ended and `io` (unless the stream lost it), for the caller to close.
pub async fn respond<IO, B>(
    mut io: IO,
    mut response: warp::http::Response<B>,
    write_within: Duration,
) -> (io::Result<Ended>, Option<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let events = EventReply::take(&mut response);
    let (parts, body) = response.into_parts();
    // Owned from here on: the futures below hold no borrow of the response.
    let head = head(parts.status, &parts.headers);
    drop(parts);
    match events {
        Some(events) => stream(io, head, events, write_within).await,
        None => {
            let ended = whole(&mut io, head, body, write_within).await;
            (ended, Some(io))
        }
    }
}

async fn stream<IO>(
    mut io: IO,
    mut head: Vec<u8>,
    events: EventBody,
    write_within: Duration,
) -> (io::Result<Ended>, Option<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The connection ends with the stream: said up front, so that a client does not reuse it
    // for another request once the stream ended (a newer stream replaced it, the server stops).
    head.extend_from_slice(b"connection: close\r\ntransfer-encoding: chunked\r\n");
    end_head(&mut head);
    if let Err(error) = write(&mut io, Bytes::from(head), write_within).await {
        return (Err(error), Some(io));
    }
    if events.attachable() {
        return direct::serve(io, events, write_within).await;
    }
    let ended = polled(&mut io, events, write_within).await;
    (ended, Some(io))
}

/// An event stream whose frames are not a hub stream's: its task polls the body and writes.
async fn polled<IO>(io: &mut IO, mut events: EventBody, write_within: Duration) -> io::Result<Ended>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let mut byte = [0u8; 1];
        tokio::select! {
            data = events.next() => match data {
                // Empty data is no chunk (an empty chunk would end the body).
                Some(data) => {
                    if data.has_remaining() {
                        write_chunk(io, data, write_within).await?;
                    }
                }
                None => {
                    write(io, Bytes::from_static(LAST_CHUNK), write_within).await?;
                    return Ok(Ended::Done);
                }
            },
            read = io.read(&mut byte) => match read? {
                0 => return Ok(Ended::PeerClosed),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the client sent bytes during its event stream",
                    ));
                }
            },
        }
    }
}

async fn whole<IO, B>(
    io: &mut IO,
    mut answer: Vec<u8>,
    body: B,
    write_within: Duration,
) -> io::Result<Ended>
where
    IO: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    // The answers of the stream route besides the stream itself are small JSON errors.
    let body = body
        .collect()
        .await
        .map_err(|error| io::Error::other(error.to_string()))?
        .to_bytes();
    answer.extend_from_slice(b"content-length: ");
    answer.extend_from_slice(body.len().to_string().as_bytes());
    answer.extend_from_slice(b"\r\nconnection: close\r\n");
    end_head(&mut answer);
    answer.extend_from_slice(&body);
    write(io, Bytes::from(answer), write_within).await?;
    Ok(Ended::Done)
}

/// The status line and the response's own headers (framing headers are written by the
/// caller).
fn head(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(192);
    if status == StatusCode::OK {
        head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(status.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding"
        ) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head
}

/// The `date` header and the blank line ending the head.
fn end_head(head: &mut Vec<u8>) {
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    head.extend_from_slice(format!("date: {date}\r\n\r\n").as_bytes());
}

/// Writes `data` as one chunk of a chunked body, and flushes, within `within`. The size line,
/// the data and the CRLF go out in one vectored write: the data (a frame shared by every
/// stream) is not copied.
async fn write_chunk<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    data: Bytes,
    within: Duration,
) -> io::Result<()> {
    let line = SizeLine::of(data.len());
    let chunk = Buf::chain(Buf::chain(&line[..], data), CHUNK_END);
    write(io, chunk, within).await
}

/// Writes and flushes `bytes` within `within` (a client that takes nothing for that long is
/// gone: its connection is not kept for it).
async fn write<IO: AsyncWrite + Unpin, B: Buf>(
    io: &mut IO,
    mut bytes: B,
    within: Duration,
) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    tokio::time::timeout_at(deadline, io.write_all_buf(&mut bytes))
        .await
        .map_err(|_| write_timed_out())??;
    tokio::time::timeout_at(deadline, io.flush())
        .await
        .map_err(|_| write_timed_out())?
}

/// Ends `io` (TLS: close_notify, then the TCP write side), waiting at most `within`.
pub async fn close<IO: AsyncWrite + Unpin>(io: &mut IO, within: Duration) {
    let _ = tokio::time::timeout(within, io.shutdown()).await;
}

/// An IO whose first reads return `prefix` (the bytes read while looking at the first head),
/// then read from `inner`; writes go to `inner`.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            let replayed = self.prefix.split_to(n);
            buf.put_slice(&replayed);
            if !self.prefix.has_remaining() {
                // Free the replayed bytes for good, not only their view.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(bytes: &[u8]) -> String {
        match parse(bytes) {
            Parsed::Partial => "partial".to_owned(),
            Parsed::Other => "other".to_owned(),
            Parsed::Malformed(why) => format!("malformed: {why}"),
            Parsed::Events(request) => format!(
                "{} {} {:?}",
                request.method(),
                request.uri(),
                request.headers().get("authorization")
            ),
        }
    }

    #[test]
    fn only_whole_bodyless_http11_event_stream_heads_take_the_lean_path() {
        let get = b"GET /api/events?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n";
        assert_eq!(first(get), r#"GET /api/events?x=1 Some("Bearer t")"#);
        assert_eq!(first(&get[..20]), "partial");
        let mut pipelined = get.to_vec();
        pipelined.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(first(&pipelined), "other");
        for other in [
            &b"GET /api/eventsx HTTP/1.1\r\n\r\n"[..],
            b"GET /api/events/x HTTP/1.1\r\n\r\n",
            b"HEAD /api/events HTTP/1.1\r\n\r\n",
            b"GET /api/events HTTP/1.0\r\n\r\n",
            b"GET /api/events HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"GET /api/events HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"PRI * HTTP/2",
        ] {
            assert_eq!(first(other), "other", "{}", String::from_utf8_lossy(other));
        }
        // Not HTTP/1 at all: answered here in the API's envelope (hyper's 400 has no body).
        for (malformed, why) in [
            (
                &b"GET /api/events HTTP/1.1\r\nbad header\r\n\r\n"[..],
                "invalid header line",
            ),
            (b"GARBAGE\r\n\r\n", "invalid request line"),
            (b"GET / HTTP/9.9\r\n\r\n", "unsupported HTTP version"),
            (
                b"GET / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
                "invalid Content-Length header",
            ),
        ] {
            assert_eq!(
                first(malformed),
                format!("malformed: {why}"),
                "{}",
                String::from_utf8_lossy(malformed)
            );
        }
        assert_eq!(
            first(b"POST / HTTP/1.1\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\n{}"),
            "other"
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let many = format!("GET /api/events HTTP/1.1\r\n{many}\r\n");
        assert_eq!(first(many.as_bytes()), "other");
    }

    #[tokio::test]
    async fn a_head_longer_than_the_cap_and_a_partial_head_go_to_hyper_whole() {
        let long = format!(
            "GET /api/events HTTP/1.1\r\nx-pad: {}\r\n\r\n",
            "p".repeat(HEAD_CAP)
        );
        let mut io = long.as_bytes();
        let First::Other(read) = read_first(&mut io).await.unwrap() else {
            panic!("not handed over")
        };
        assert_eq!(read.len(), HEAD_CAP);
        let mut rewound = Rewind::new(read, io);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, long.as_bytes());

        let mut partial = &b"GET /api/ev"[..];
        let First::Other(read) = read_first(&mut partial).await.unwrap() else {
            panic!("not handed over")
        };
        assert_eq!(&read[..], b"GET /api/ev");
        let mut empty = &b""[..];
        assert!(matches!(
            read_first(&mut empty).await.unwrap(),
            First::Closed
        ));
    }

    #[tokio::test]
    async fn heads_and_chunks_are_framed_as_hyper_frames_them() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("retry-after", HeaderValue::from_static("1"));
        headers.insert("content-length", HeaderValue::from_static("9"));
        let head = head(StatusCode::SERVICE_UNAVAILABLE, &headers);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\n"
        );
        let data = Bytes::from(vec![b'x'; 26]);
        let mut written = Vec::new();
        write_chunk(&mut written, data.clone(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(written, [&b"1A\r\n"[..], &data, b"\r\n"].concat());
    }
}
