//! Handler tests through `warp::test` (no socket), and the hub's slow-agent policy.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use policy_engine::{Policy, PolicyVersion};
use reference_server::fleet::streams::policy_frame;
use reference_server::fleet::{EventHub, EventHub as Hub, StreamView};
use reference_server::http as filters;
use reference_server::store::StoredPolicy;
use reference_server::transport::Delivery;
use reference_server::{AppState, ServerConfig, TlsMode};
use serde_json::{Value, json};

const ADMIN: &str = "handler-test-admin";

async fn state(dir: &tempfile::TempDir) -> Arc<AppState> {
    let config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        tls: TlsMode::Plain,
        admin_token: Some(ADMIN.to_owned()),
        ..ServerConfig::default()
    };
    AppState::open(&config).await.unwrap().0
}

fn temp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("policy-handlers-{}-", std::process::id()))
        .tempdir()
        .unwrap()
}

async fn send(state: &Arc<AppState>, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let routes = filters::routes(state.clone());
    let response = warp::test::request()
        .method(method)
        .path(path)
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(body)
        .reply(&routes)
        .await;
    let value = serde_json::from_slice(response.body()).unwrap();
    (response.status().as_u16(), value)
}

#[tokio::test]
async fn routing_errors_use_the_envelope() {
    let dir = temp();
    let state = state(&dir).await;
    assert_eq!(
        send(&state, "GET", "/api/agents/enroll", b"").await,
        (
            405,
            json!({"ok": false, "error": {"code": "method_not_allowed", "message": "method not allowed on this path"}})
        )
    );
    assert_eq!(
        send(&state, "GET", "/nope", b"").await,
        (
            404,
            json!({"ok": false, "error": {"code": "not_found", "message": "no such endpoint"}})
        )
    );
    assert_eq!(
        send(&state, "PATCH", "/api/policy/agent/x/overrides", b"")
            .await
            .0,
        405
    );
}

#[tokio::test]
async fn post_policy_stores_a_normalized_version() {
    let dir = temp();
    let state = state(&dir).await;
    let body = br#"{"name":"n","rules":[{"type":"auto_respond","config":{"trigger":"malware","action":"kill_process","minConfidence":0.9}}]}"#;
    let (status, created) = send(&state, "POST", "/api/policy", body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["data"]["rules"],
        json!([{"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
                "minConfidence": 0.9, "requireApproval": false}, "enabled": true}])
    );
    let stored = state
        .store
        .latest_policy("default".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, PolicyVersion::new(1));
    assert_eq!(stored.id, created["data"]["id"].as_str().unwrap());
}

#[tokio::test]
async fn every_validation_error_is_listed() {
    let dir = temp();
    let state = state(&dir).await;
    let body = br#"{"name":"","rules":[{"type":"block_ip","config":{"trigger":"x","threshold":0,"duration":"1y","scope":"host"}}]}"#;
    let (status, error) = send(&state, "POST", "/api/policy", body).await;
    assert_eq!(status, 422);
    let listed: Vec<(String, String)> = error["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(
        (listed[0].0.as_str(), error["error"]["path"].as_str()),
        ("name", Some("name"))
    );
    assert_eq!(listed[1].0, "rules[0].config.threshold");
    assert_eq!(listed[2].0, "rules[0].config.duration");
}

#[tokio::test]
async fn chunked_bodies_are_bounded_without_content_length() {
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, warp::Error>(Bytes::from_static(b"0123456789"))),
    );
    let error = reference_server::http::body::read_limited(None, chunks, 25)
        .await
        .unwrap_err();
    assert_eq!(
        (error.status.as_u16(), error.message.as_str()),
        (413, "request body is larger than the limit of 25 bytes")
    );
}

fn stored(version: u64) -> StoredPolicy {
    let policy = Policy::from_json(
        br#"{"name":"p","rules":[{"type":"custom","config":{"condition":"severityLevel >= 3","action":"alert"}}]}"#,
    )
    .unwrap();
    StoredPolicy {
        id: format!("pol_{version}"),
        org_id: "default".into(),
        version: PolicyVersion::new(version),
        policy: Arc::new(policy),
        created_at: "2026-03-07T12:00:00.000Z".parse().unwrap(),
        signature: None,
    }
}

/// Queues `policy` to every stream of its org, as a pushed policy change does.
async fn broadcast(hub: &EventHub, policy: &StoredPolicy) -> Delivery {
    let frame = policy_frame(policy, "", &[]);
    hub.visit_org(&policy.org_id, |_, _| Some(frame.clone()))
        .await
}

#[tokio::test]
async fn a_slow_agent_is_dropped_instead_of_buffered() {
    let hub = Hub::new(2, Duration::from_secs(15));
    let slow = hub.subscribe("default", "agent-slow", StreamView::default(), None);
    assert_eq!(hub.stream_count("default"), 1);
    assert_eq!(broadcast(&hub, &stored(1)).await.queued, 1);
    assert_eq!(broadcast(&hub, &stored(2)).await.queued, 1);
    let third = broadcast(&hub, &stored(3)).await;
    assert_eq!((third.queued, third.dropped), (0, 1));
    assert_eq!(hub.stream_count("default"), 0);
    // What was queued is still delivered, then the stream ends.
    let events: Vec<_> = futures_util::StreamExt::collect::<Vec<_>>(slow.unwrap()).await;
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn streams_without_overrides_get_the_same_payload() {
    let hub = Hub::new(4, Duration::from_secs(15));
    let mut a = hub
        .subscribe("default", "agent-a", StreamView::default(), None)
        .unwrap();
    let mut b = hub
        .subscribe("default", "agent-b", StreamView::default(), None)
        .unwrap();
    assert_eq!(broadcast(&hub, &stored(1)).await.queued, 2);
    let first = futures_util::StreamExt::next(&mut a).await.unwrap();
    let second = futures_util::StreamExt::next(&mut b).await.unwrap();
    // Encoded once: both streams write the very same bytes, not two copies.
    assert_eq!(first, second);
    assert_eq!(first.as_ptr(), second.as_ptr());
    assert!(first.starts_with(b"event: policy\n"));
}
