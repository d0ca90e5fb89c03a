//! The lean path of HTTP/1.1 event streams, over a real socket and real TLS, read byte by byte:
//! `GET /api/events` gets the status line, headers, chunked framing, events and keep-alive
//! comments hyper sent before the path existed, plus `connection: close`; refused streams get
//! the same status, headers and whole body (then `connection: close`); every other request, on
//! a fresh connection and with a body larger than the head the listener reads first, is still
//! served by hyper after the replay; HTTP/2 is untouched; shutdown ends a lean stream within
//! the grace period.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use reference_server::ServerConfig;
use reference_server::transport::AdmissionConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// An HTTP/1.1 client that reads the raw bytes of the answer.
struct Raw<S> {
    io: S,
    buf: Vec<u8>,
}

/// A response head: the status line and the headers in the order they came, `date`'s value
/// replaced by `<date>` once checked to be an HTTP date.
#[derive(Debug, PartialEq)]
struct Head {
    status: String,
    headers: Vec<String>,
}

impl Head {
    /// The `content-length` header's value.
    fn content_length(&self) -> usize {
        self.headers
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap()
    }
}

async fn tls(t: &TestServer, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(t.dir.path().join("tls/cert.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(t.server().local_addr()).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

async fn raw(t: &TestServer) -> Raw<TlsStream<TcpStream>> {
    Raw {
        io: tls(t, &[b"http/1.1"]).await,
        buf: Vec::new(),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Reads until `buf` holds at least `n` bytes.
    async fn fill(&mut self, n: usize) {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(DEADLINE, self.io.read(&mut chunk))
                .await
                .expect("no bytes within the deadline")
                .unwrap();
            assert!(read > 0, "connection closed; so far: {:?}", self.text());
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    fn find(&self, needle: &[u8]) -> Option<usize> {
        self.buf.windows(needle.len()).position(|w| w == needle)
    }

    /// Reads bytes up to and including `needle`, returns them.
    async fn until(&mut self, needle: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self.find(needle) {
                return self.buf.drain(..at + needle.len()).collect();
            }
            let want = self.buf.len() + 1;
            self.fill(want).await;
        }
    }

    async fn head(&mut self) -> Head {
        let bytes = self.until(b"\r\n\r\n").await;
        let text = String::from_utf8(bytes).unwrap();
        let mut lines = text.trim_end().split("\r\n");
        let status = lines.next().unwrap().to_owned();
        let headers = lines
            .map(|line| match line.strip_prefix("date: ") {
                Some(date) => {
                    chrono::NaiveDateTime::parse_from_str(date, "%a, %d %b %Y %H:%M:%S GMT")
                        .unwrap_or_else(|e| panic!("bad date `{date}`: {e}"));
                    "date: <date>".to_owned()
                }
                None => line.to_owned(),
            })
            .collect();
        Head { status, headers }
    }

    /// One chunk of a chunked body, checking its framing (uppercase hex size, CRLFs); empty
    /// for the last chunk (`0\r\n\r\n`).
    async fn chunk(&mut self) -> String {
        let size_line = self.until(b"\r\n").await;
        let size_text = std::str::from_utf8(&size_line[..size_line.len() - 2]).unwrap();
        assert_eq!(
            size_text,
            size_text.to_uppercase(),
            "chunk size `{size_text}`"
        );
        let size = usize::from_str_radix(size_text, 16).unwrap();
        self.fill(size + 2).await;
        let data: Vec<u8> = self.buf.drain(..size).collect();
        let crlf: Vec<u8> = self.buf.drain(..2).collect();
        assert_eq!(crlf, b"\r\n", "chunk not ended by CRLF");
        String::from_utf8(data).unwrap()
    }

    async fn body(&mut self, length: usize) -> String {
        self.fill(length).await;
        String::from_utf8(self.buf.drain(..length).collect()).unwrap()
    }

    /// The peer closed the connection cleanly (TLS: after close_notify).
    async fn closed(&mut self) {
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.text());
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(DEADLINE, self.io.read(&mut byte))
            .await
            .expect("connection not closed within the deadline")
            .unwrap();
        assert_eq!(read, 0, "more bytes after the answer");
    }
}

fn events_request(token: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET /api/events{extra} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\
         authorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

fn stream_head() -> Head {
    Head {
        status: "HTTP/1.1 200 OK".to_owned(),
        headers: vec![
            "content-type: text/event-stream".to_owned(),
            "cache-control: no-cache".to_owned(),
            // The connection ends with the stream (hyper kept it open): no client may pool it.
            "connection: close".to_owned(),
            "transfer-encoding: chunked".to_owned(),
            "date: <date>".to_owned(),
        ],
    }
}

/// The policy event of `version` as one chunk: `event`, `id`, `data`, blank line.
fn assert_policy_event(chunk: &str, version: u64) {
    let data = chunk
        .strip_prefix(&format!("event: policy\nid: {version}\ndata: "))
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not a policy event {version}: {chunk:?}"));
    let data: Value = serde_json::from_str(data).unwrap();
    assert_eq!(data["version"], json!(format!("v{version}")), "{data}");
}

fn short_keep_alive(dir: &std::path::Path) -> ServerConfig {
    ServerConfig {
        keep_alive: Duration::from_millis(300),
        ..config(dir, true)
    }
}

async fn start(make: impl Fn(&std::path::Path) -> ServerConfig) -> TestServer {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-lean-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    TestServer::start_in(dir, make).await
}

#[tokio::test]
async fn an_event_stream_gets_the_bytes_hyper_sent() {
    let t = start(short_keep_alive).await;
    t.post_policy(ADMIN, block_ip_policy("p", 5)).await;
    let (_, token) = t.enroll(ADMIN, "host-1").await;
    let mut client = raw(&t).await;
    client.send(&events_request(&token, "")).await;
    assert_eq!(client.head().await, stream_head());
    assert_policy_event(&client.chunk().await, 1);
    // Silence: the keep-alive comment, a chunk of its own.
    assert_eq!(client.chunk().await, ":\n\n");
    wait_for(|| t.server().state().hub.stream_count("default") == 1).await;
    // The test's own client keeps its connection: the stream's is one more.
    let others = t.server().open_connections() - 1;
    t.post_policy(ADMIN, block_ip_policy("p", 6)).await;
    let mut next = client.chunk().await;
    while next == ":\n\n" {
        next = client.chunk().await;
    }
    assert_policy_event(&next, 2);
    // The client goes away: the stream and the connection are released.
    drop(client);
    wait_for(|| t.server().state().hub.stream_count("default") == 0).await;
    wait_for(|| t.server().open_connections() == others).await;
}

#[tokio::test]
async fn an_event_stream_over_plain_http_gets_the_same_bytes() {
    let t = start(|dir| ServerConfig {
        keep_alive: Duration::from_millis(300),
        ..config(dir, false)
    })
    .await;
    t.post_policy(ADMIN, block_ip_policy("p", 5)).await;
    let (_, token) = t.enroll(ADMIN, "host-1").await;
    let tcp = TcpStream::connect(t.server().local_addr()).await.unwrap();
    let mut client = Raw {
        io: tcp,
        buf: Vec::new(),
    };
    // `Last-Event-ID` is the version the agent runs: no policy event, the keep-alive first.
    let request = String::from_utf8(events_request(&token, "")).unwrap();
    let request = request.replace("\r\n\r\n", "\r\nlast-event-id: 1\r\n\r\n");
    client.send(request.as_bytes()).await;
    assert_eq!(client.head().await, stream_head());
    assert_eq!(client.chunk().await, ":\n\n");
}

/// A refused stream request: the status, the headers and the whole body hyper sent, then
/// `connection: close` and the end of the connection.
async fn assert_refused(
    t: &TestServer,
    request: &[u8],
    status: &str,
    extra_headers: &[&str],
    body: Value,
) {
    let mut client = raw(t).await;
    client.send(request).await;
    let head = client.head().await;
    let text = serde_json::to_string(&body).unwrap();
    let mut headers = vec!["content-type: application/json".to_owned()];
    headers.extend(extra_headers.iter().map(|h| (*h).to_owned()));
    headers.push(format!("content-length: {}", text.len()));
    headers.push("connection: close".to_owned());
    headers.push("date: <date>".to_owned());
    assert_eq!(
        head,
        Head {
            status: status.to_owned(),
            headers
        }
    );
    let got: Value = serde_json::from_str(&client.body(text.len()).await).unwrap();
    assert_eq!(got, body);
    client.closed().await;
}

#[tokio::test]
async fn refused_event_streams_get_the_same_answers() {
    let t = start(|dir| ServerConfig {
        admission: AdmissionConfig {
            opening: 100,
            per_second: 2,
        },
        ..config(dir, true)
    })
    .await;
    let mut tokens = Vec::new();
    for i in 0..3 {
        tokens.push(t.enroll(ADMIN, &format!("host-{i}")).await.1);
    }
    let token = &tokens[0];
    assert_refused(
        &t,
        &events_request("not-a-token", ""),
        "HTTP/1.1 401 Unauthorized",
        &[],
        json!({"ok": false, "error": {"code": "unauthorized",
            "message": "unknown token"}}),
    )
    .await;
    assert_refused(
        &t,
        &events_request(token, "?since=3"),
        "HTTP/1.1 400 Bad Request",
        &[],
        json!({"ok": false, "error": {"code": "bad_request",
            "message": "unknown query parameter `since`: this endpoint takes no query parameters"}}),
    )
    .await;
    // Two streams a second: two are admitted, the next one is busy.
    let mut open = Vec::new();
    for token in &tokens[..2] {
        let mut client = raw(&t).await;
        client.send(&events_request(token, "")).await;
        assert_eq!(client.head().await, stream_head());
        open.push(client);
    }
    assert_refused(
        &t,
        &events_request(&tokens[2], ""),
        "HTTP/1.1 503 Service Unavailable",
        &["retry-after: 1"],
        json!({"ok": false, "error": {"code": "busy",
            "message": "too many event streams opening; retry in 1 s"}}),
    )
    .await;
}

#[tokio::test]
async fn other_requests_are_served_by_hyper_after_the_replay() {
    let t = start(|dir| config(dir, true)).await;
    let mut client = raw(&t).await;
    // A body far larger than the head read first, sent with the head in one write.
    let name = "x".repeat(100);
    let mut policy = block_ip_policy("big", 5);
    policy["description"] = json!("d".repeat(20_000));
    policy["name"] = json!(name);
    let body = serde_json::to_string(&policy).unwrap();
    let request = format!(
        "POST /api/policy HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ADMIN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).await;
    let head = client.head().await;
    assert_eq!(head.status, "HTTP/1.1 201 Created", "{head:?}");
    let length = head.content_length();
    let created: Value = serde_json::from_str(&client.body(length).await).unwrap();
    assert_eq!(created["data"]["version"], json!("v1"));
    assert_eq!(created["data"]["description"], policy["description"]);
    // Keep-alive still works: a second request on the same connection, a head larger than
    // the first read (a long header), served by hyper.
    let request = format!(
        "GET /api/policy/versions/v1 HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ADMIN}\r\n\
         x-padding: {}\r\n\r\n",
        "p".repeat(6_000)
    );
    client.send(request.as_bytes()).await;
    let head = client.head().await;
    assert_eq!(head.status, "HTTP/1.1 200 OK", "{head:?}");
    assert!(
        !head.headers.iter().any(|h| h == "connection: close"),
        "{head:?}"
    );
    let length = head.content_length();
    let current: Value = serde_json::from_str(&client.body(length).await).unwrap();
    assert_eq!(current["data"]["name"], json!(name));

    // A fresh connection whose first head is larger than the first read: hyper serves it.
    let mut fresh = raw(&t).await;
    fresh.send(request.as_bytes()).await;
    assert_eq!(fresh.head().await.status, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn http2_streams_and_requests_are_served_as_before() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let t = start(short_keep_alive).await;
    t.post_policy(ADMIN, block_ip_policy("p", 5)).await;
    let (_, token) = t.enroll(ADMIN, "host-1").await;
    let io = tls(&t, &[b"h2"]).await;
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("{}/api/events", t.base))
        .header("authorization", format!("Bearer {token}"))
        .body(String::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let frame = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert_policy_event(&text, 1);
    // A plain request multiplexed beside the open stream.
    let request = hyper::Request::get(format!("{}/api/policy/versions/v1", t.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(String::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let current: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(current["data"]["version"], json!("v1"), "{current}");
}

#[tokio::test]
async fn shutdown_ends_a_lean_stream_within_the_grace_period() {
    let grace = Duration::from_secs(10);
    let mut t = start(|dir| ServerConfig {
        shutdown_grace: grace,
        ..config(dir, true)
    })
    .await;
    t.post_policy(ADMIN, block_ip_policy("p", 5)).await;
    let (_, token) = t.enroll(ADMIN, "host-1").await;
    let mut client = raw(&t).await;
    client.send(&events_request(&token, "")).await;
    assert_eq!(client.head().await, stream_head());
    assert_policy_event(&client.chunk().await, 1);
    // An idle connection that never sent a request is closed at shutdown, not waited for.
    let before = t.server().open_connections();
    let mut silent = raw(&t).await;
    wait_for(|| t.server().open_connections() == before + 1).await;

    let server = t.server.take().unwrap();
    let started = Instant::now();
    let stopping = tokio::spawn(server.shutdown());
    // The stream ends with the last chunk and a clean TLS close.
    assert_eq!(client.chunk().await, "");
    client.closed().await;
    silent.closed().await;
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .unwrap()
        .unwrap();
    // Well within the grace period: nothing was waited for until it ran out.
    assert!(
        started.elapsed() < grace / 2,
        "shutdown took {:?}",
        started.elapsed()
    );
}
