//! How an agent comes back to its server after a reconnect storm sheds it or its stream ends:
//! a scripted fake server on loopback answers the first stream request 503 with
//! `Retry-After`, streams one policy on the second and ends it, and records the third. The agent
//! waits at least what the server asked, and reconnects with `Last-Event-ID` (the version it
//! runs) so that the server need not send that version again.

// Test code throughout (the fake server included): it fails loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent_common::wait_version;
use policy_engine::sync::{BackoffConfig, LiveEngine, PolicySync, SyncConfig};
use policy_engine::{EngineConfig, PolicyVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request for the event stream: when it came and its `Last-Event-ID`.
#[derive(Debug, Clone)]
struct StreamRequest {
    at: Instant,
    last_event_id: Option<String>,
}

const POLICY: &str = r#"{"policyId":"pol_1","version":"v1","name":"p1","rules":[{"type":"auto_respond","config":{"trigger":"malware","action":"kill_process","minConfidence":0.5}}],"createdAt":"2026-03-07T12:00:00.000Z"}"#;

/// Reads a request head; `(path, headers in lower case)`.
async fn read_head(socket: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((path, head.to_ascii_lowercase()))
}

/// Serves the script: stream request 1 -> 503 `Retry-After: 1`; 2 -> one policy, then the
/// stream ends; 3 and later -> held open. Heartbeats get a minimal answer.
async fn serve(mut socket: TcpStream, requests: Arc<Mutex<Vec<StreamRequest>>>) {
    let Some((path, head)) = read_head(&mut socket).await else {
        return;
    };
    if path != "/api/events" {
        let body = r#"{"ok":true,"data":{"agentId":"agent-x","policyVersion":null,"currentPolicyVersion":null,"outdated":false}}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(reply.as_bytes()).await;
        return;
    }
    let last_event_id = head
        .lines()
        .find_map(|l| l.strip_prefix("last-event-id:"))
        .map(|v| v.trim().to_owned());
    let number = {
        let mut requests = requests.lock().unwrap();
        requests.push(StreamRequest {
            at: Instant::now(),
            last_event_id,
        });
        requests.len()
    };
    let sse = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    match number {
        1 => {
            let body = r#"{"ok":false,"error":{"code":"unavailable","message":"too many new streams; retry later"}}"#;
            let reply = format!(
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
        2 => {
            let frame = format!("event: policy\nid: 1\ndata: {POLICY}\n\n");
            let _ = socket.write_all(sse.as_bytes()).await;
            let _ = socket.write_all(frame.as_bytes()).await;
            let _ = socket.flush().await;
            // Held until the agent has read it, then the stream ends (a server restart).
            let mut rest = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_millis(500), socket.read(&mut rest)).await;
        }
        _ => {
            let _ = socket.write_all(sse.as_bytes()).await;
            let mut rest = [0u8; 1];
            let _ = socket.read(&mut rest).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_is_waited_for_and_a_reconnect_names_the_version_the_agent_runs() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests: Arc<Mutex<Vec<StreamRequest>>> = Arc::default();
    let log = requests.clone();
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, log.clone()));
        }
    });

    let state = tempfile::tempdir().unwrap();
    let mut config = SyncConfig::new(&url, "agent-x", "agt_x", state.path());
    config.heartbeat_interval = Duration::from_secs(60);
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_secs(2),
    };
    let live = LiveEngine::new(EngineConfig::default());
    let sync = PolicySync::start(config, live.clone()).await.unwrap();
    wait_version(&live, PolicyVersion::new(1)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while requests.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the agent did not reconnect");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sync.shutdown().await;
    server.abort();

    let requests = requests.lock().unwrap().clone();
    // The 503 asked for a second; the agent waited at least that (`Retry-After` is honoured up
    // to the backoff ceiling, 2 s here).
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    let ids: Vec<Option<&str>> = requests
        .iter()
        .take(3)
        .map(|r| r.last_event_id.as_deref())
        .collect();
    assert_eq!(ids, [None, None, Some("1")]);
}
