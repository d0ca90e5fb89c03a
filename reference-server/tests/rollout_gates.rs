//! The rollout gate's rate criteria and its timer, over real TLS with real event streams and
//! heartbeats sent by hand: a stage whose actions per event run far above the previous
//! version's on the agents outside it is rolled back; a stage whose agent goes silent is rolled
//! back on the timer, with no heartbeat and no read of the rollout.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use crate::common::*;
use reference_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn heartbeat(t: &TestServer, agent: &str, token: &str, ack: Value) {
    let (status, body) = t
        .post(
            &format!("/api/agents/{agent}/heartbeat"),
            token,
            json!({"policyVersion": ack["version"], "ack": ack}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn server(gate_every: Duration) -> TestServer {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-gates-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    TestServer::start_in(dir, move |d| ServerConfig {
        rollout_gate_interval: gate_every,
        ..config(d, true)
    })
    .await
}

#[tokio::test]
async fn a_stage_emitting_far_more_actions_per_event_than_the_previous_version_rolls_back() {
    // A timer of an hour: only the heartbeats evaluate the gate here.
    let t = server(Duration::from_secs(3600)).await;
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
            json!({"policy": block_ip_policy("two", 1),
                   "stages": [{"agents": [a], "soakSecs": 0}, {"percent": 100}],
                   "gate": {"maxActionRatePercent": 300, "maxConditionErrorPercent": 5,
                            "minEvents": 100}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["data"]["gate"]["minEvents"], 100, "{body}");
    assert_eq!(a_stream.next_policy().await.id, "2");

    // b still runs v1: 10 blocks on 1000 events. a applied v2 but has seen too few events to
    // judge: the stage holds although its soak is 0.
    heartbeat(
        &t,
        &b,
        &b_token,
        json!({"version": "v1", "status": "applied",
        "at": "2026-03-07T12:00:00.000Z", "actions": {"block_ip": 10}, "events": 1000}),
    )
    .await;
    heartbeat(
        &t,
        &a,
        &a_token,
        json!({"version": "v2", "status": "applied",
        "at": "2026-03-07T12:00:00.000Z", "actions": {"block_ip": 5}, "events": 50,
        "conditionErrors": 0}),
    )
    .await;
    let (_, view) = t.get(&format!("/api/rollouts/{id}"), ADMIN).await;
    assert_eq!(
        (&view["data"]["state"], &view["data"]["stage"]),
        (&json!("running"), &json!(0)),
        "{view}"
    );
    let (_, agents) = t.get("/api/agents", ADMIN).await;
    let listed = agents["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["agentId"] == a.as_str())
        .unwrap();
    assert_eq!(listed["ack"]["events"], 50, "{listed}");

    // 40 blocks on 200 events: 0.2 per event against 0.01, 2000 % of v1's rate.
    heartbeat(
        &t,
        &a,
        &a_token,
        json!({"version": "v2", "status": "applied",
        "at": "2026-03-07T12:00:00.000Z", "actions": {"block_ip": 40}, "events": 200,
        "conditionErrors": 2}),
    )
    .await;
    let (_, view) = t.get(&format!("/api/rollouts/{id}"), ADMIN).await;
    assert_eq!(view["data"]["state"], "rolled_back", "{view}");
    assert_eq!(
        view["data"]["reason"],
        "stage 1 emitted 40 actions on 200 events (0.200 per event) against 10 on 1000 events \
         (0.010 per event) for v1 outside it: above 300% of v1's rate"
    );
    let back = a_stream.next_policy().await;
    assert_eq!(
        (back.id.as_str(), &back.data["rollbackFrom"]),
        ("1", &json!("v2"))
    );
    let (_, trail) = t.get("/api/audit?action=rollout_rolled_back", ADMIN).await;
    assert_eq!(trail["data"]["entries"][0]["actor"], "server");

    // Bad gate values are refused at their path.
    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": block_ip_policy("three", 2), "stages": [{"percent": 10}],
                   "gate": {"maxActionRatePercent": 0, "maxConditionErrorPercent": 101,
                            "minEvents": 0}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let errors: Vec<(String, String)> = body["error"]["errors"]
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
    assert_eq!(
        errors,
        [
            (
                "gate.maxConditionErrorPercent".to_owned(),
                "expected an integer from 0 to 100".to_owned()
            ),
            (
                "gate.maxActionRatePercent".to_owned(),
                "expected an integer from 1 to 1000000".to_owned()
            ),
            (
                "gate.minEvents".to_owned(),
                "expected an integer from 1 to 1000000000".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn the_timer_rolls_back_a_stage_whose_agent_went_silent_with_nobody_looking() {
    let t = server(Duration::from_millis(100)).await;
    let (a, a_token) = t.enroll(ADMIN, "a").await;
    let mut a_stream = t.stream(&a_token, "default").await;
    t.post_policy(ADMIN, block_ip_policy("one", 5)).await;
    assert_eq!(a_stream.next_policy().await.id, "1");
    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": block_ip_policy("two", 1),
                   "stages": [{"agents": [a], "soakSecs": 3600}],
                   "gate": {"silentAfterSecs": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(a_stream.next_policy().await.id, "2");
    // No heartbeat, no read: after a second the timer finds a silent and rolls back.
    let back = a_stream.next_policy().await;
    assert_eq!(
        (back.id.as_str(), &back.data["rollbackFrom"]),
        ("1", &json!("v2"))
    );
    let (_, view) = t.get(&format!("/api/rollouts/{id}"), ADMIN).await;
    assert_eq!(view["data"]["state"], "rolled_back", "{view}");
    assert_eq!(
        view["data"]["reason"],
        format!("1 agent(s) of stage 1 silent for 1 s or more: {a}")
    );
}
