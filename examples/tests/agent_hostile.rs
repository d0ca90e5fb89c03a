//! The sync side against a hostile or broken server: a small fake HTTP server on loopback
//! that streams whatever the test hands it (garbage, invalid policies, invalid UTF-8) or
//! rejects every token, and records what the agent sends.

// Test code throughout (the fake server included): it fails loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent_common::{enforcing_version, wait_status, wait_version};
use policy_engine::sync::{BackoffConfig, LiveEngine, PolicySync, SyncConfig};
use policy_engine::{EngineConfig, PolicyVersion};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

#[derive(Clone, Copy)]
enum Mode {
    /// Streams the frames the test sends; answers heartbeats.
    Stream,
    /// Answers 401 to everything.
    RejectToken,
}

/// A request the fake server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

struct FakeServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    frames: broadcast::Sender<Vec<u8>>,
    heartbeat_reply: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (frames, _) = broadcast::channel(64);
        let heartbeat_reply = Arc::new(Mutex::new(heartbeat_body(None, false)));
        let log = seen.clone();
        let sender = frames.clone();
        let reply = heartbeat_reply.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                // Subscribed before the request is logged: once a test sees a stream opened,
                // every frame it pushes reaches that stream.
                let rx = sender.subscribe();
                tokio::spawn(serve(socket, mode, log.clone(), rx, reply.clone()));
            }
        });
        Self {
            addr,
            seen,
            frames,
            heartbeat_reply,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn push(&self, frame: &[u8]) {
        self.frames.send(frame.to_vec()).unwrap();
    }

    /// What heartbeats answer from now on.
    fn set_current(&self, current: &str, outdated: bool) {
        *self.heartbeat_reply.lock().unwrap() = heartbeat_body(Some(current), outdated);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn streams_opened(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path == "/api/events")
            .count()
    }

    async fn wait_streams(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.streams_opened() < count {
            assert!(Instant::now() < deadline, "stream {count} was not opened");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn serve(
    mut socket: TcpStream,
    mode: Mode,
    log: Arc<Mutex<Vec<Seen>>>,
    mut frames: broadcast::Receiver<Vec<u8>>,
    heartbeat_reply: Arc<Mutex<String>>,
) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        body,
    });

    let reply = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match (mode, path.as_str()) {
        (Mode::RejectToken, _) => {
            let body = r#"{"ok":false,"error":{"code":"unauthorized","message":"unknown token"}}"#;
            let _ = socket
                .write_all(reply("401 Unauthorized", body).as_bytes())
                .await;
        }
        (Mode::Stream, "/api/events") => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while let Ok(frame) = frames.recv().await {
                if socket.write_all(&frame).await.is_err() {
                    return;
                }
                let _ = socket.flush().await;
            }
        }
        (Mode::Stream, _) => {
            let body = heartbeat_reply.lock().unwrap().clone();
            let _ = socket.write_all(reply("200 OK", &body).as_bytes()).await;
        }
    }
}

fn heartbeat_body(current: Option<&str>, outdated: bool) -> String {
    serde_json::json!({"ok": true, "data": {
        "agentId": "agent-x", "policyVersion": null,
        "currentPolicyVersion": current, "outdated": outdated,
    }})
    .to_string()
}

fn config(server: &str, state_dir: &std::path::Path) -> SyncConfig {
    let mut config = SyncConfig::new(server, "agent-x", "agt_x", state_dir);
    config.heartbeat_interval = Duration::from_millis(100);
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    config
}

fn policy_frame(id: u64, data: &str) -> Vec<u8> {
    format!("event: policy\nid: {id}\ndata: {data}\n\n").into_bytes()
}

const RULES: &str = r#"[{"type":"auto_respond","config":{"trigger":"malware","action":"kill_process","minConfidence":0.5}}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_invalid_policies_are_refused_and_reported() {
    let state = tempfile::tempdir().unwrap();
    let server = FakeServer::start(Mode::Stream).await;
    let live = LiveEngine::new(EngineConfig::default());
    let sync = PolicySync::start(config(&server.url(), state.path()), live.clone())
        .await
        .unwrap();

    server.wait_streams(1).await;
    server.push(&policy_frame(
        1,
        &format!(r#"{{"policyId":"pol_1","version":"v1","name":"p1","rules":{RULES},"createdAt":"2026-03-07T12:00:00.000Z"}}"#),
    ));
    wait_version(&live, PolicyVersion::new(1)).await;

    // Not JSON at all.
    server.push(&policy_frame(2, "not json"));
    let not_json = "policy event is not JSON: expected ident at line 1 column 2";
    wait_status(&live, "the garbage refused", |s| {
        s.last_error.as_deref() == Some(not_json)
    })
    .await;
    assert_eq!(enforcing_version(&live), Some(PolicyVersion::new(1)));

    // JSON, but not a valid policy: every error is reported, the old policy keeps running.
    server.push(&policy_frame(
        2,
        r#"{"version":"v2","name":"p2","rules":[{"type":"block_ip","config":{"trigger":"ssh","threshold":0,"duration":"1h","scope":"host"}}]}"#,
    ));
    let invalid = "policy v2 refused: rules[0].config.threshold: expected an integer from 1 to 1000000, found `0`";
    wait_status(&live, "the invalid policy refused", |s| {
        s.last_error.as_deref() == Some(invalid)
    })
    .await;
    assert_eq!(live.version(), Some(PolicyVersion::new(1)));
    assert_eq!(enforcing_version(&live), Some(PolicyVersion::new(1)));

    // The refusal goes out in the next heartbeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reported = server.seen().iter().any(|s| {
            s.method == "POST"
                && s.path == "/api/agents/agent-x/heartbeat"
                && serde_json::from_str::<Value>(&s.body).ok()
                    == Some(serde_json::json!({"policyVersion": "v1", "lastError": invalid}))
        });
        if reported {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat with the refusal: {:?}",
            server.seen()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Invalid UTF-8 on the stream: the SSE parser waits forever for the rest of a character
    // that never comes, and later events are stuck behind it. The server meanwhile reports v3
    // in heartbeats; the watchdog notices that nothing arrives and reconnects. v1 stays.
    assert_eq!(server.streams_opened(), 1);
    server.push(b"event: policy\ndata: \xff\xfe\n\n");
    server.push(&policy_frame(
        3,
        &format!(r#"{{"version":"v3","name":"p3","rules":{RULES}}}"#),
    ));
    server.set_current("v3", true);
    server.wait_streams(2).await;
    assert_eq!(enforcing_version(&live), Some(PolicyVersion::new(1)));

    // The new stream works: the server's first event (v3) is applied and clears the error.
    server.push(&policy_frame(
        3,
        &format!(r#"{{"version":"v3","name":"p3","rules":{RULES}}}"#),
    ));
    wait_version(&live, PolicyVersion::new(3)).await;
    assert_eq!(live.status().last_error, None);
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_waits_instead_of_looping() {
    let state = tempfile::tempdir().unwrap();
    let server = FakeServer::start(Mode::RejectToken).await;
    let mut config = config(&server.url(), state.path());
    // Reconnect delays would allow hundreds of attempts below; a rejected token must wait.
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(1),
    };
    config.heartbeat_interval = Duration::from_millis(1);
    config.unauthorized_retry = Duration::from_secs(600);
    let live = LiveEngine::new(EngineConfig::default());
    let sync = PolicySync::start(config, live.clone()).await.unwrap();
    let expected = format!(
        "`{}/api/events` refused the token (401): unknown token",
        server.url()
    );
    wait_status(&live, "the rejection", |s| {
        s.last_error.as_deref() == Some(expected.as_str())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.seen().len() < 2 {
        assert!(Instant::now() < deadline, "no heartbeat attempt");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Absence over a window is the property under test: one stream attempt and one heartbeat,
    // then quiet, where the 1 ms delays would otherwise make hundreds of requests.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(!live.status().connected);
    sync.shutdown().await;
}
