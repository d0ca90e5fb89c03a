//! A reconnect storm meets the admission of new event streams: beyond the streams allowed per
//! second, a stream request is answered 503 `busy` with `Retry-After` (and nothing opened);
//! once the bucket refills, the same agent gets its stream.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use crate::common::*;
use reference_server::ServerConfig;
use reference_server::transport::AdmissionConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn streams_beyond_the_rate_are_refused_with_retry_after_and_admitted_later() {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-admission-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let t = TestServer::start_in(dir, |dir| ServerConfig {
        admission: AdmissionConfig {
            opening: 100,
            per_second: 2,
        },
        ..config(dir, true)
    })
    .await;
    t.post_policy(ADMIN, block_ip_policy("p", 5)).await;
    let mut tokens = Vec::new();
    for i in 0..3 {
        tokens.push(t.enroll(ADMIN, &format!("host-{i}")).await.1);
    }
    let mut first = t.stream(&tokens[0], "default").await;
    let mut second = t.stream(&tokens[1], "default").await;
    assert_eq!(first.next_policy().await.id, "1");
    assert_eq!(second.next_policy().await.id, "1");

    let refused = t
        .client
        .get(format!("{}/api/events", t.base))
        .bearer_auth(&tokens[2])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body,
        json!({"ok": false, "error": {"code": "busy",
            "message": "too many event streams opening; retry in 1 s"}})
    );
    assert_eq!(t.server().state().hub.stream_count("default"), 2);

    // The bucket refills at 2 a second: within the deadline the agent gets its stream.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let response = t
            .client
            .get(format!("{}/api/events", t.base))
            .bearer_auth(&tokens[2])
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "never admitted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(t.server().state().hub.stream_count("default"), 3);
}
