//! The fleet loop with the real `agent` binary: a `--dry-run` agent fed two `critical` events
//! on stdin prints the `alert` of an `alert_threshold` rule, reports it, and the reference
//! server (over TLS, channels from a `--notify-config` file) delivers it to a local webhook
//! receiver and records it in the audit. Dry runs still deliver alerts: only what an executor
//! would do on the host is skipped.

// The process guard and the receiver are test code too: they fail loudly like the tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent_common::*;
use reference_server::notify::NotifyConfig;
use reference_server::{RunningServer, ServerConfig, TlsMode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(10);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    body: Value,
}

/// A loopback HTTP/1.1 webhook receiver: records every request and answers `200 {}`.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(socket);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut words = line.split_whitespace();
                        let method = words.next().unwrap_or("").to_owned();
                        let path = words.next().unwrap_or("").to_owned();
                        let mut length = 0;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if header == "\r\n" {
                                break;
                            }
                            let lower = header.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        record.lock().unwrap().push(Request {
                            method,
                            path,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        });
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                        if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least one request has arrived.
    async fn first(&self) -> Request {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(first) = self.requests().first() {
                return first.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the webhook receiver got nothing within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reference server over TLS with the channels of a `--notify-config` file.
async fn start_server_with_notify(data_dir: &Path, notify_file: &Path) -> RunningServer {
    let notify = NotifyConfig::load(notify_file).unwrap();
    reference_server::start(ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.to_path_buf(),
        tls: TlsMode::SelfSigned,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        shutdown_grace: Duration::from_millis(200),
        notify: Some(notify),
        ..ServerConfig::default()
    })
    .await
    .unwrap()
}

/// `GET /api/audit{query}` as the global admin: the page's entries.
async fn audit(base: &str, data_dir: &Path, query: &str) -> Vec<Value> {
    let pem = std::fs::read(ca_file(data_dir)).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let response = http
        .get(format!("{base}/api/audit{query}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    body["data"]["entries"].as_array().unwrap().clone()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_agents_alert_reaches_the_webhook_and_the_audit() {
    let receiver = Receiver::start().await;
    let data = tempfile::Builder::new()
        .prefix(&format!("fleet-agent-cli-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    // The file `--notify-config` names; the URL's key must never show anywhere.
    let notify_file = data.path().join("notify.toml");
    std::fs::write(
        &notify_file,
        format!(
            "[channels.ops]\n\
             type = \"webhook\"\n\
             url = \"http://{}/hooks/ops?key=HOOK-SECRET\"\n\
             \n\
             [retry]\n\
             attempts = 3\n\
             initialBackoffMs = 10\n\
             maxBackoffMs = 50\n\
             timeoutMs = 5000\n",
            receiver.addr
        ),
    )
    .unwrap();
    let server = start_server_with_notify(data.path(), &notify_file).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, token) = admin.enroll("alert-host").await;
    admin
        .post_policy(json!({
            "name": "alerts",
            "rules": [
                {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 1,
                 "notifyChannels": ["ops"]}}
            ]
        }))
        .await;

    let ca = ca_file(data.path());
    let mut agent = AgentProcess::spawn(&[
        "--server",
        &base,
        "--ca-cert",
        path(&ca),
        "--state-dir",
        path(state.path()),
        "--agent-id",
        &agent_id,
        "--token",
        &token,
        "--dry-run",
        "--heartbeat-secs",
        "0.2",
    ]);
    admin
        .wait_agent(&agent_id, "v1 running", |a| a["policyVersion"] == "v1")
        .await;

    // The second critical event makes the count exceed 1: one alert, printed and reported.
    agent.send(
        "{\"id\":\"evt-1\",\"type\":\"port_scan\",\"severity\":\"critical\",\"srcIp\":\"203.0.113.7\"}\n\
         {\"id\":\"evt-2\",\"type\":\"port_scan\",\"severity\":\"critical\",\"srcIp\":\"203.0.113.7\"}\n",
    );
    let expected = json!({"action": "alert", "severity": "critical", "count": 2,
                          "channels": ["ops"], "rule": 0, "policyVersion": "v1",
                          "eventId": "evt-2"});
    let line = agent.next_line().await;
    let printed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(printed, expected, "{line}");

    // End of input right after the events: the agent exits, but only after its queued
    // reports were sent (`ReportSender::finish`), so the alert still reaches the server.
    let (code, stderr) = agent.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("HOOK-SECRET"), "{stderr}");
    assert!(!stderr.contains("cannot report"), "{stderr}");

    // The server delivers it to the webhook named by the channel.
    let hook = receiver.first().await;
    assert_eq!(hook.method, "POST");
    assert_eq!(hook.path, "/hooks/ops?key=HOOK-SECRET");
    assert_eq!(hook.body["type"], "alert", "{}", hook.body);
    assert_eq!(hook.body["channel"], "ops");
    assert_eq!(hook.body["agentId"], agent_id.as_str());
    assert_eq!(hook.body["hostname"], "alert-host");
    assert_eq!(hook.body["orgId"], "default");
    assert_eq!(hook.body["alert"], expected);
    let text = hook.body["text"].as_str().unwrap();
    assert!(
        text.starts_with("policy alert: severity critical threshold exceeded (2 events"),
        "{text}"
    );
    assert!(text.contains(&agent_id), "{text}");

    // The audit has the agent's report (a dry run: `skipped`, the action as it was decided)
    // and, once the delivery task is done, the delivery.
    let reports = audit(
        &base,
        data.path(),
        &format!("?action=alert&agent={agent_id}"),
    )
    .await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!(report["action"], "alert");
    assert_eq!(report["agentId"], agent_id.as_str());
    assert_eq!(report["actor"], agent_id.as_str());
    assert_eq!(report["rule"], 0);
    assert_eq!(report["policyVersion"], "v1");
    assert_eq!(report["outcome"], "skipped");
    assert_eq!(report["detail"]["record"], expected);
    assert!(
        report["detail"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("dry run: "),
        "{report}"
    );
    let deadline = Instant::now() + DEADLINE;
    let delivery = loop {
        let entries = audit(&base, data.path(), "?action=notify").await;
        if let Some(entry) = entries.first() {
            break entry.clone();
        }
        assert!(Instant::now() < deadline, "no delivery in the audit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(delivery["outcome"], "delivered", "{delivery}");
    assert_eq!(delivery["detail"]["channel"], "ops");
    assert_eq!(delivery["detail"]["attempts"], 1);
    assert_eq!(delivery["agentId"], agent_id.as_str());
    let all = audit(&base, data.path(), "").await;
    assert!(
        !serde_json::to_string(&all).unwrap().contains("HOOK-SECRET"),
        "{all:?}"
    );
    // One alert, one delivery: the rule stays quiet for the hour after it.
    assert_eq!(receiver.requests().len(), 1, "{:?}", receiver.requests());
    server.shutdown().await;
}
