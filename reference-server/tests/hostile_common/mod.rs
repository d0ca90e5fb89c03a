//! The real binary under attack: start `reference-server` on a loopback port with TLS (its
//! self-signed certificate, verified), collect its log lines, and talk to it as an attacker
//! would: raw sockets from chosen loopback addresses, raw TLS, an SSE reader over a plain
//! streaming response (no reconnecting client).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_reference-server");
pub const ADMIN: &str = "hostile-test-admin-token";
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running binary; killed when dropped.
pub struct Server {
    child: Child,
    /// The data dir (shared: a test may start another server on it after killing this one).
    pub dir: Arc<tempfile::TempDir>,
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the binary with the admin token and `args` on `127.0.0.1:0`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_under(&[], args)
    }

    /// Starts it through `wrapper` (e.g. `prlimit --nofile=96:96`).
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("policy-hostile-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        Self::start_in(Arc::new(dir), wrapper, args)
    }

    /// Starts it on an existing data dir (after another server on it was killed).
    pub fn start_in(dir: Arc<tempfile::TempDir>, wrapper: &[&str], args: &[&str]) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--admin-token", ADMIN])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("POLICY_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the server did not start: {:?}", logs.lock().unwrap()));
        let base = line.strip_prefix("listening on ").unwrap().to_owned();
        let addr: SocketAddr = base.strip_prefix("https://").unwrap().parse().unwrap();
        let client = client_from(dir.path(), None);
        Self {
            child,
            dir,
            addr,
            base,
            client,
            logs,
        }
    }

    /// A client whose connections come from `local` (another loopback address).
    pub fn client_from(&self, local: IpAddr) -> reqwest::Client {
        client_from(self.dir.path(), Some(local))
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`; returns it.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with `{needle}`: {:?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        send(
            self.client.request(method, format!("{}{path}", self.base)),
            token,
            body,
        )
        .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    /// Enrolls an agent: `(agentId, token)`.
    pub async fn enroll(&self, hostname: &str) -> (String, String) {
        let (status, body) = self
            .post("/api/agents/enroll", ADMIN, json!({"hostname": hostname}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["data"]["agentId"].as_str().unwrap().to_owned(),
            body["data"]["token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn post_policy(&self, policy: Value) -> Value {
        let (status, body) = self.post("/api/policy", ADMIN, policy).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    /// Posts a report of `agent`: status and body.
    pub async fn report(&self, agent: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/api/agents/{agent}/reports"), token, body)
            .await
    }

    /// Opens an event stream (a plain streaming response: it does not reconnect).
    pub async fn events(&self, token: &str) -> Sse {
        let response = self
            .client
            .get(format!("{}/api/events", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Sse {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// Audit entries matching `query` (admin, default org).
    pub async fn audit(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/audit?{query}"), ADMIN).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"]["entries"].as_array().unwrap().clone()
    }

    /// A TLS connection from `local` to the server, after the handshake, offering `alpn`
    /// (`http/1.1` or `h2`).
    pub async fn tls_from(
        &self,
        local: IpAddr,
        alpn: &str,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = tcp_from(local, self.addr).await;
        tls_connector(self.dir.path(), alpn)
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap()
    }
}

/// A loopback HTTP/1.1 webhook receiver: answers 200 to every request and keeps the JSON
/// bodies.
pub struct WebhookSink {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookSink {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&data).into_owned();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|n| n.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() < length {
                            continue;
                        }
                        record
                            .lock()
                            .unwrap()
                            .push(serde_json::from_str(body).unwrap_or(Value::Null));
                        let _ = socket
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                            )
                            .await;
                        return;
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    /// The bodies received so far.
    pub fn received(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` bodies arrived; returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} webhooks: {received:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn send(
    request: reqwest::RequestBuilder,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = request;
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("response is not JSON ({e}): {text}"));
    (status, value)
}

fn client_from(dir: &std::path::Path, local: Option<IpAddr>) -> reqwest::Client {
    let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .https_only(true)
        .local_address(local)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn tls_connector(dir: &std::path::Path, alpn: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("tls/cert.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TCP connection from `local` (any 127.0.0.0/8 address works on loopback).
pub async fn tcp_from(local: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Reads until the peer closes (EOF or reset); the time it took, or `None` past `within`.
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether a plain socket is still open (no EOF, no data) right now.
pub fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Writes `request` and reads the response head and body (HTTP/1.1, `Content-Length`).
pub async fn http1_exchange<S>(stream: &mut S, request: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|n| n.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer within {DEADLINE:?}"))
            .unwrap();
        assert!(n > 0, "closed before the answer: {text}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Server-sent events read off a plain response body.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Sse {
    /// The next event as `(event, data)`; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..at + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim().to_owned();
                    } else if let Some(text) = line.strip_prefix("data:") {
                        data.push_str(text.trim());
                    }
                }
                if event.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((event, serde_json::from_str(&data).unwrap()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.body.next()).await {
                Err(_) => panic!("no event within {DEADLINE:?}"),
                Ok(None | Some(Err(_))) => return None,
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
            }
        }
    }
}
