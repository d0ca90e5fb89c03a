//! Rollout operations over a real socket with heartbeats sent by hand: a stage reaches only
//! its agents, a plain post is refused while a rollout runs, pause/resume/advance move it, a
//! stage whose agents all acked advances on its own after its soak, abort sends the previous
//! version with `rollbackFrom`, bad bodies are refused at their path.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn ack(t: &TestServer, agent: &str, token: &str, version: &str) -> Value {
    let (status, body) = t
        .post(
            &format!("/api/agents/{agent}/heartbeat"),
            token,
            json!({"policyVersion": version, "ack": {"version": version, "status": "applied",
                   "at": "2026-03-07T12:00:00.000Z"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

#[tokio::test]
async fn operators_pause_resume_advance_and_abort_and_stages_reach_only_their_agents() {
    let t = TestServer::start(false).await;
    let (a, a_token) = t.enroll(ADMIN, "a").await;
    let (b, b_token) = t.enroll(ADMIN, "b").await;
    let mut a_stream = t.stream(&a_token, "default").await;
    let mut b_stream = t.stream(&b_token, "default").await;
    t.post_policy(ADMIN, block_ip_policy("one", 5)).await;
    assert_eq!(a_stream.next_policy().await.id, "1");
    assert_eq!(b_stream.next_policy().await.id, "1");

    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": {"name": "x", "rules": [{"type": "block_ip", "config": {
                "trigger": "t", "threshold": 0, "duration": "1h", "scope": "host"}}]},
                   "stages": [{"percent": 0}], "gate": {"maxSilnet": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let paths: Vec<&str> = body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    // The document's errors with the body's own (a bad gate used to hide them).
    assert_eq!(
        paths,
        [
            "stages[0]",
            "gate.maxSilnet",
            "policy.rules[0].config.threshold"
        ]
    );

    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": block_ip_policy("two", 6),
                   "stages": [{"agents": [a], "soakSecs": 0}, {"agents": [b], "soakSecs": 3600}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    // Only a's stream gets v2.
    assert_eq!(a_stream.next_policy().await.id, "2");
    let (status, refused) = t
        .post("/api/policy", ADMIN, block_ip_policy("three", 7))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (_, view) = t.get(&format!("/api/policy/agent/{b}"), ADMIN).await;
    assert_eq!(view["data"]["policyVersion"], "v1");

    // Pause holds stage 1 although a acked and the soak is 0; resume lets it advance on a's
    // next heartbeat, and b's stream gets v2.
    let op = |name: &str| format!("/api/rollouts/{id}/{name}");
    let (status, body) = t.post(&op("pause"), ADMIN, json!(null)).await;
    assert_eq!(
        (status, &body["data"]["state"]),
        (StatusCode::OK, &json!("paused"))
    );
    assert_eq!(
        ack(&t, &a, &a_token, "v2").await["currentPolicyVersion"],
        "v2"
    );
    let (_, body) = t.get(&format!("/api/rollouts/{id}"), ADMIN).await;
    assert_eq!(body["data"]["stage"], 0);
    let (status, body) = t.post(&op("pause"), ADMIN, json!(null)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    t.post(&op("resume"), ADMIN, json!(null)).await;
    ack(&t, &a, &a_token, "v2").await;
    let (_, body) = t.get(&format!("/api/rollouts/{id}"), ADMIN).await;
    assert_eq!(body["data"]["stage"], 1, "{body}");
    assert_eq!(b_stream.next_policy().await.id, "2");

    // Stage 2 soaks an hour: advance by hand completes it; abort then is refused.
    let (status, body) = t.post(&op("advance"), ADMIN, json!(null)).await;
    assert_eq!(
        (status, &body["data"]["state"]),
        (StatusCode::OK, &json!("completed"))
    );
    let (status, _) = t.post(&op("abort"), ADMIN, json!(null)).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A second rollout, aborted: its stage gets v2 back with rollbackFrom v3.
    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": block_ip_policy("three", 7), "stages": [{"agents": [a]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let second = body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(a_stream.next_policy().await.id, "3");
    let (status, body) = t
        .post(&format!("/api/rollouts/{second}/abort"), ADMIN, json!(null))
        .await;
    assert_eq!(
        (status, &body["data"]["state"]),
        (StatusCode::OK, &json!("aborted"))
    );
    let back = a_stream.next_policy().await;
    assert_eq!(
        (back.id.as_str(), &back.data["rollbackFrom"]),
        ("2", &json!("v3"))
    );
    let (_, trail) = t.get("/api/audit?action=rollout_aborted", ADMIN).await;
    assert_eq!(trail["data"]["entries"][0]["actor"], "admin");
    let (status, body) = t
        .post(
            &format!("/api/rollouts/{second}/explode"),
            ADMIN,
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
