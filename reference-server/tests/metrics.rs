//! The server's Prometheus metrics, scraped from a real `--metrics-listen` socket while a real
//! fleet works: each figure moves as policies, agents, streams, heartbeats, reports, approvals
//! and deliveries happen.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::time::Instant;

use crate::common::{ADMIN, DEADLINE, TestServer, config};
use crate::metrics_docs;
use reference_server::ServerConfig;
use reference_server::notify::NotifyConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One scrape: every sample by its series (`name{label="value",...}` as the server writes it),
/// and the metrics it declares with their types.
#[derive(Debug)]
struct Scrape(BTreeMap<String, f64>, BTreeMap<String, String>);

impl Scrape {
    /// The sample of `name` with `labels` (in the order the server writes them); 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(&series(name, labels)).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.contains_key(&series(name, labels))
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// Parses the OpenMetrics text: every sample line (`series value`), `# EOF` last.
fn parse(text: &str) -> Scrape {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        samples.insert(series.to_owned(), value.parse::<f64>().unwrap());
    }
    Scrape(samples, metrics_docs::declared(text))
}

async fn scrape(url: &str) -> Scrape {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    parse(&response.text().await.unwrap())
}

/// Scrapes until `condition` holds (background work: deliveries, stream registration).
async fn scrape_until(url: &str, what: &str, condition: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let scrape = scrape(url).await;
        if condition(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {DEADLINE:?}: {scrape:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A webhook receiver: `/ok` answers 200, anything else 503.
async fn webhook_sink() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let ok = line.split_whitespace().nth(1) == Some("/ok");
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).await.unwrap();
                        if header.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    let status = if ok {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn start() -> (TestServer, String) {
    let sink = webhook_sink().await;
    let notify: NotifyConfig = serde_json::from_value(json!({
        "channels": {
            "ops": {"type": "webhook", "url": format!("http://{sink}/ok")},
            "down": {"type": "webhook", "url": format!("http://{sink}/down")}
        },
        "retry": {"attempts": 1, "initialBackoffMs": 10, "maxBackoffMs": 10, "timeoutMs": 5000}
    }))
    .unwrap();
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-metrics-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let server = TestServer::start_in(dir, move |dir| ServerConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        notify: Some(notify.clone()),
        ..config(dir, false)
    })
    .await;
    let url = format!("http://{}/metrics", server.server().metrics_addr().unwrap());
    (server, url)
}

fn policy(name: &str) -> Value {
    json!({"name": name, "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5, "duration": "1h", "scope": "host"}},
        {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5, "notifyChannels": ["ops", "down"]}},
        {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.9, "requireApproval": true}}
    ]})
}

const ORG: &[(&str, &str)] = &[("org", "default")];

#[tokio::test]
async fn the_figures_move_as_the_fleet_works() {
    let (t, url) = start().await;
    let before = scrape(&url).await;
    assert!(
        !before.has("policy_server_policy_version", ORG),
        "{before:?}"
    );
    assert_eq!(before.get("policy_server_sse_streams_open", ORG), 0.0);

    // A policy: its version, its request, its write and its fan-out.
    t.post_policy(ADMIN, policy("v1")).await;
    let after_policy = scrape(&url).await;
    assert_eq!(after_policy.get("policy_server_policy_version", ORG), 1.0);
    let created = [
        ("method", "POST"),
        ("route", "/api/policy"),
        ("status", "201"),
    ];
    assert_eq!(
        after_policy.get("policy_server_http_requests_total", &created),
        1.0
    );
    let route = [("method", "POST"), ("route", "/api/policy")];
    assert_eq!(
        after_policy.get("policy_server_http_request_duration_seconds_count", &route),
        1.0
    );
    let insert = [("operation", "insert_policy")];
    assert_eq!(
        after_policy.get("policy_server_db_operation_duration_seconds_count", &insert),
        1.0
    );
    assert_eq!(
        after_policy.get(
            "policy_server_broadcast_duration_seconds_count",
            &[("event", "policy")]
        ),
        1.0
    );

    // Two agents; one opens its stream (online), the other heartbeats with v1 (online too).
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (b, b_token) = t.enroll(ADMIN, "host-b").await;
    // The test's client holds its pooled connection; the stream opens another.
    let idle = scrape(&url)
        .await
        .get("policy_server_connections_open", &[]);
    assert!(idle >= 1.0);
    let stream = t.stream(&a_token, "default").await;
    let (status, _) = t
        .post(
            &format!("/api/agents/{b}/heartbeat"),
            &b_token,
            json!({"policyVersion": "v1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let fleet = scrape(&url).await;
    assert_eq!(fleet.get("policy_server_agents", ORG), 2.0);
    assert_eq!(fleet.get("policy_server_agents_online", ORG), 2.0);
    assert_eq!(fleet.get("policy_server_sse_streams_open", ORG), 1.0);
    // `a` has reported no version yet, so it does not run the latest.
    assert_eq!(fleet.get("policy_server_agents_outdated", ORG), 1.0);
    assert_eq!(fleet.get("policy_server_connections_open", &[]), idle + 1.0);
    assert!(fleet.get("policy_server_connections_accepted_total", &[]) >= 2.0);

    // v2: both are now outdated, and the open stream received it.
    t.post_policy(ADMIN, policy("v2")).await;
    let v2 = scrape(&url).await;
    assert_eq!(v2.get("policy_server_policy_version", ORG), 2.0);
    assert_eq!(v2.get("policy_server_agents_outdated", ORG), 2.0);
    let queued = [("event", "policy"), ("result", "queued")];
    assert_eq!(
        v2.get("policy_server_broadcast_deliveries_total", &queued),
        1.0
    );

    // An alert to its rule's two channels: one delivered, one failed.
    let (status, body) = t
        .post(
            &format!("/api/agents/{a}/reports"),
            &a_token,
            json!({"action": "alert", "severity": "critical", "count": 6,
                   "channels": ["ops", "down"], "rule": 1, "policyVersion": "v2"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let delivered = [("channel", "ops"), ("outcome", "delivered")];
    let failed = [("channel", "down"), ("outcome", "failed")];
    scrape_until(&url, "two deliveries", |s| {
        s.get("policy_server_notifications_total", &delivered) == 1.0
            && s.get("policy_server_notifications_total", &failed) == 1.0
    })
    .await;

    // An approval request, then its approval.
    let (status, body) = t
        .post(
            &format!("/api/agents/{a}/reports"),
            &a_token,
            json!({"action": "approval_request", "request": {"action": "kill_process", "pid": 42},
                   "rule": 2, "policyVersion": "v2"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["approval"]["id"].as_str().unwrap().to_owned();
    let pending = [("org", "default"), ("status", "pending")];
    let approved = [("org", "default"), ("status", "approved")];
    let requested = scrape(&url).await;
    assert_eq!(requested.get("policy_server_approvals", &pending), 1.0);
    assert_eq!(requested.get("policy_server_approvals", &approved), 0.0);
    assert!(requested.has("policy_server_approvals", &approved));
    let (status, _) = t
        .post(&format!("/api/approvals/{id}/approve"), ADMIN, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let decided = scrape(&url).await;
    assert_eq!(decided.get("policy_server_approvals", &pending), 0.0);
    assert_eq!(decided.get("policy_server_approvals", &approved), 1.0);
    let pushed = [("event", "approval"), ("result", "queued")];
    assert_eq!(
        decided.get("policy_server_broadcast_deliveries_total", &pushed),
        1.0
    );

    // A path the API does not have is one `unmatched` route, whatever the path.
    for path in ["/api/nothing", "/api/nothing/else", "/favicon.ico"] {
        let (status, _) = t.get(path, ADMIN).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let unmatched = [("method", "GET"), ("route", "unmatched"), ("status", "404")];
    let after = scrape(&url).await;
    assert_eq!(
        after.get("policy_server_http_requests_total", &unmatched),
        3.0
    );

    // The stream closes: fewer streams, and `a` stays online only through a heartbeat it
    // never sent.
    stream.close();
    let closed = scrape_until(&url, "the stream and its connection to close", |s| {
        s.get("policy_server_sse_streams_open", ORG) == 0.0
            && s.get("policy_server_connections_open", &[]) == idle
    })
    .await;
    assert_eq!(closed.get("policy_server_agents_online", ORG), 1.0);

    // A rollout of v3 to `a` only: `b`, on v2, runs what it is assigned and is not outdated (the
    // gauge compared with the latest version while `GET /api/agents` used the assignment).
    let (status, body) = t
        .post(
            &format!("/api/agents/{b}/heartbeat"),
            &b_token,
            json!({"policyVersion": "v2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": policy("v3"), "stages": [{"agents": [a]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let staged = scrape(&url).await;
    let (_, agents) = t.get("/api/agents", ADMIN).await;
    let listed = agents["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|agent| agent["outdated"] == true)
        .count();
    assert_eq!(
        (staged.get("policy_server_agents_outdated", ORG), listed),
        (1.0, 1)
    );

    // This fleet made every metric appear but database errors: the README documents exactly
    // those, and the dashboard queries nothing else.
    metrics_docs::check(
        "policy_server_",
        &closed.1,
        &["policy_server_db_operation_errors_total"],
    );
}

#[tokio::test]
async fn the_metrics_listener_serves_only_metrics_and_the_api_listener_none() {
    let (t, url) = start().await;
    let client = reqwest::Client::new();
    let status = |response: reqwest::Response| response.status();
    assert_eq!(
        status(client.get(format!("{url}?debug=1")).send().await.unwrap()),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status(client.post(&url).send().await.unwrap()),
        StatusCode::METHOD_NOT_ALLOWED
    );
    let other = url.replace("/metrics", "/api/policy/active");
    let response = client.get(other).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, body) = t.get("/metrics", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // A server without `--metrics-listen` has no metrics address.
    let plain = TestServer::start(false).await;
    assert_eq!(plain.server().metrics_addr(), None);
}
