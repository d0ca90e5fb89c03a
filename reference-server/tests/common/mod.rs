//! Shared helpers of the end-to-end tests: a real server on a loopback port with a temporary
//! data dir, an HTTPS client that trusts its self-signed certificate, and an SSE reader.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod http_sink;
pub mod postgres;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reference_server::{RunningServer, ServerConfig, TlsMode};
use reqwest::{Method, StatusCode};
use reqwest_eventsource::{Event, EventSource};
use serde_json::{Value, json};

pub const ADMIN: &str = "test-admin-token";
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    pub base: String,
}

pub fn config(dir: &Path, tls: bool) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        tls: if tls {
            TlsMode::SelfSigned
        } else {
            TlsMode::Plain
        },
        admin_token: Some(ADMIN.to_owned()),
        stream_queue: 64,
        ..ServerConfig::default()
    }
}

/// A client for `server`: HTTPS ones trust the data dir's self-signed certificate (no
/// `danger_accept_invalid_certs`: the test checks the certificate really is valid for 127.0.0.1).
pub fn client_for(dir: &Path, tls: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if tls {
        let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
        builder = builder
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .https_only(true);
    }
    builder.build().unwrap()
}

impl TestServer {
    pub async fn start(tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("policy-server-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        Self::start_in(dir, config_fn(tls)).await
    }

    pub async fn start_in(dir: tempfile::TempDir, make: impl Fn(&Path) -> ServerConfig) -> Self {
        let config = make(dir.path());
        let tls = config.tls != TlsMode::Plain;
        let server = reference_server::start(config).await.unwrap();
        let client = client_for(dir.path(), tls);
        let base = server.base_url();
        Self {
            server: Some(server),
            dir,
            client,
            base,
        }
    }

    /// Shuts down and starts again on the same data dir (a new port).
    pub async fn restart(mut self) -> Self {
        self.server.take().unwrap().shutdown().await;
        let tls = self.base.starts_with("https");
        Self::start_in(self.dir, config_fn(tls)).await
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
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

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    /// Enrolls an agent; returns `(agentId, token)`.
    pub async fn enroll(&self, admin: &str, hostname: &str) -> (String, String) {
        let (status, body) = self
            .post("/api/agents/enroll", admin, json!({"hostname": hostname}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["data"]["agentId"].as_str().unwrap().to_owned(),
            body["data"]["token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn post_policy(&self, admin: &str, policy: Value) -> Value {
        let (status, body) = self.post("/api/policy", admin, policy).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    /// Opens an agent's event stream and waits until the server has registered it (an agent
    /// has one stream: a second one replaces the first).
    pub async fn stream(&self, token: &str, _org: &str) -> Stream {
        let before = self.server().state().hub.streams_opened();
        let request = self
            .client
            .get(format!("{}/api/events", self.base))
            .bearer_auth(token);
        let mut source = EventSource::new(request).unwrap();
        match tokio::time::timeout(DEADLINE, source.next()).await {
            Ok(Some(Ok(Event::Open))) => {}
            other => panic!("event stream did not open: {other:?}"),
        }
        wait_for(|| self.server().state().hub.streams_opened() > before).await;
        Stream { source }
    }
}

fn config_fn(tls: bool) -> impl Fn(&Path) -> ServerConfig {
    move |dir| config(dir, tls)
}

pub struct Stream {
    pub source: EventSource,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AnyEvent {
    pub event: String,
    pub id: String,
    pub data: Value,
    /// The `data:` text as sent (its key order).
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyEvent {
    pub id: String,
    pub data: Value,
}

impl Stream {
    /// The next `policy` event, within the deadline.
    pub async fn next_policy(&mut self) -> PolicyEvent {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.source.next()).await {
                Ok(Some(Ok(Event::Message(m)))) => {
                    assert_eq!(m.event, "policy");
                    return PolicyEvent {
                        id: m.id,
                        data: serde_json::from_str(&m.data).unwrap(),
                    };
                }
                Ok(Some(Ok(Event::Open))) => continue,
                other => panic!("expected a policy event, got {other:?}"),
            }
        }
    }

    /// The next event of any kind (`policy`, `block`, `unblock`, `approval`), within the
    /// deadline.
    pub async fn next_event(&mut self) -> AnyEvent {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.source.next()).await {
                Ok(Some(Ok(Event::Message(m)))) => {
                    return AnyEvent {
                        event: m.event,
                        id: m.id,
                        data: serde_json::from_str(&m.data).unwrap(),
                        raw: m.data,
                    };
                }
                Ok(Some(Ok(Event::Open))) => continue,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// Asserts that no event arrives before `fence` is done: used with a later event that must
    /// come first.
    pub fn close(mut self) {
        self.source.close();
    }
}

/// Polls `condition` until it holds or the deadline passes.
pub async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {DEADLINE:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn block_ip_policy(name: &str, threshold: u32) -> Value {
    json!({
        "name": name,
        "rules": [
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": threshold,
             "duration": "24h", "scope": "host"}, "enabled": true},
            {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
             "notifyChannels": ["telegram", "email"]}, "enabled": true}
        ]
    })
}

/// The `(path, message)` of every error of a 422 envelope, in order.
pub fn error_list(body: &Value) -> Vec<(&str, &str)> {
    body["error"]["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no error list in {body}"))
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect()
}

/// RFC 3339 with milliseconds, UTC: `2026-03-07T12:00:00.000Z`.
pub fn assert_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    let bytes = text.as_bytes();
    assert_eq!(bytes.len(), 24, "{text}");
    assert!(text.ends_with('Z') && bytes[19] == b'.', "{text}");
    assert!(chrono::DateTime::parse_from_rfc3339(text).is_ok(), "{text}");
}
