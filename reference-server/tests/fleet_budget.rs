//! Budgets on the server, over real TLS with real event streams: the org's fleet-block budget
//! (`budgets.fleet_block`) pushes at most `max` new addresses per window and records the rest
//! without pushing them; and an approval request for a budgeted action of a rule that does not
//! itself require approval is accepted exactly when the version's budget goes to approval.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A fleet block rule, a kill without approval; fleet blocks limited to 2 new addresses an
/// hour, kills beyond their budget dropped or asked for as given.
fn policy(kill_on_exceed: &str) -> Value {
    json!({"name": "budgets", "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5,
         "duration": "24h", "scope": "fleet"}},
        {"type": "auto_respond", "config": {"trigger": "miner", "action": "kill_process",
         "minConfidence": 0.9}},
    ], "budgets": {
        "fleet_block": {"max": 2, "window": "1h"},
        "kill_process": {"max": 3, "window": "1m", "onExceed": kill_on_exceed},
    }})
}

fn fleet_block(ip: &str, report_id: &str) -> Value {
    json!({"action": "block_ip", "ip": ip, "duration": "24h", "scope": "fleet",
           "rule": 0, "policyVersion": "v1", "eventId": "e-1", "reportId": report_id})
}

async fn report(t: &TestServer, agent: &str, token: &str, body: Value) -> (StatusCode, Value) {
    t.post(&format!("/api/agents/{agent}/reports"), token, body)
        .await
}

#[tokio::test]
async fn the_fleet_block_budget_pushes_two_new_addresses_an_hour_and_records_the_rest() {
    let t = TestServer::start(true).await;
    t.post_policy(ADMIN, policy("approval")).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (b, b_token) = t.enroll(ADMIN, "host-b").await;
    let mut a_stream = t.stream(&a_token, "default").await;
    let mut b_stream = t.stream(&b_token, "default").await;
    assert_eq!(a_stream.next_event().await.event, "policy");
    let first = b_stream.next_event().await;
    assert_eq!(first.event, "policy");
    // The agents get the budgets with the document.
    assert_eq!(
        first.data["budgets"],
        json!({"fleet_block": {"max": 2, "window": "1h"},
               "kill_process": {"max": 3, "window": "1m", "onExceed": "approval"}})
    );

    for (n, ip) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        let (status, answer) = report(&t, &a, &a_token, fleet_block(ip, &format!("r-{n}"))).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        assert_eq!(answer["data"]["kind"], "fleet_block", "{answer}");
        assert_eq!(answer["data"]["broadcastedTo"], 1, "{answer}");
        let event = b_stream.next_event().await;
        assert_eq!(
            (event.event.as_str(), &event.data["ip"]),
            ("block", &json!(ip))
        );
    }
    // Another agent reporting an address already spent in this window costs nothing (the
    // block is extended as before).
    let (status, answer) = report(&t, &b, &b_token, fleet_block("203.0.113.1", "r-b")).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["data"]["kind"], "fleet_block", "{answer}");
    assert_eq!(answer["data"]["block"]["reports"], 2, "{answer}");

    // A third new address: recorded, not stored, not pushed.
    let (status, answer) = report(&t, &a, &a_token, fleet_block("203.0.113.3", "r-3")).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(
        answer["data"],
        json!({"kind": "recorded", "reportId": "r-3"})
    );
    // The same report again gets the same answer and changes nothing.
    let (_, again) = report(&t, &a, &a_token, fleet_block("203.0.113.3", "r-3")).await;
    assert_eq!(again, answer);
    let (status, blocks) = t.get("/api/blocks", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{blocks}");
    let ips: Vec<&str> = blocks["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips.len(), 2, "{blocks}");
    assert!(!ips.contains(&"203.0.113.3"), "{blocks}");
    let (status, audit) = t
        .get("/api/audit?ip=203.0.113.3&action=block_ip", ADMIN)
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let entries = audit["data"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["outcome"], "fleet_budget_exceeded");
    assert_eq!(entries[0]["agentId"], a.as_str());
    assert_eq!(entries[0]["detail"]["fleetBudget"], "2 per 1h");
    // Nothing was pushed for it: b's next event is the unblock that follows.
    let (status, body) = t
        .call(Method::DELETE, "/api/blocks/203.0.113.1", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let next = b_stream.next_event().await;
    assert_eq!(
        (next.event.as_str(), &next.data["ip"]),
        ("unblock", &json!("203.0.113.1"))
    );
}

#[tokio::test]
async fn a_budgeted_kill_may_be_asked_for_only_when_its_budget_goes_to_approval() {
    let t = TestServer::start(true).await;
    t.post_policy(ADMIN, policy("approval")).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let mut stream = t.stream(&a_token, "default").await;
    assert_eq!(stream.next_event().await.event, "policy");
    let request = |version: &str| {
        json!({"action": "approval_request", "request": {"action": "kill_process", "pid": 42},
               "rule": 1, "policyVersion": version,
               "detail": "budget of `kill_process` exceeded (3 per 1m)"})
    };
    let (status, answer) = report(&t, &a, &a_token, request("v1")).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["data"]["kind"], "approval_request", "{answer}");
    let id = answer["data"]["approval"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, approved) = t
        .post(&format!("/api/approvals/{id}/approve"), ADMIN, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    // The approved kill, executed: accepted as the approval's outcome.
    let (status, outcome) = report(
        &t,
        &a,
        &a_token,
        json!({"action": "kill_process", "pid": 42, "rule": 1, "policyVersion": "v1",
               "outcome": "executed", "approvalId": id}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{outcome}");
    assert_eq!(outcome["data"]["kind"], "approval_outcome", "{outcome}");

    // v2 drops kills beyond the budget: an agent running it never asks.
    assert_eq!(stream.next_event().await.event, "approval");
    t.post_policy(ADMIN, policy("drop")).await;
    assert_eq!(stream.next_event().await.event, "policy");
    let (status, refused) = report(&t, &a, &a_token, request("v2")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let message = "rule 1 is `auto_respond` with action `kill_process`, which cannot produce \
                   an `approval_request` for `kill_process`";
    assert_eq!(
        refused["error"],
        json!({"code": "validation_failed", "path": "action", "message": message,
               "errors": [{"path": "action", "message": message}]})
    );
}
