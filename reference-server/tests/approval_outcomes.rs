//! An agent's report with `approvalId` (the outcome of an approved action) over real TLS:
//! accepted only for an approval of that agent that is approved, not expired and for exactly
//! the reported action; refused otherwise (422 at `approvalId`, audited `refused_by_server`,
//! nothing else changed). Copies of one report racing all get the first copy's answer.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use crate::common::*;
use reference_server::ServerConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Rule 0: a fleet block; rule 1: a kill that needs approval; rule 2: one that does not.
fn policy(org: &str) -> Value {
    json!({"name": "approvals", "org_id": org, "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5,
         "duration": "24h", "scope": "fleet"}},
        {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
         "minConfidence": 0.9, "requireApproval": true}},
        {"type": "auto_respond", "config": {"trigger": "miner", "action": "kill_process",
         "minConfidence": 0.9}},
    ]})
}

fn request(pid: u32) -> Value {
    json!({"action": "approval_request", "request": {"action": "kill_process", "pid": pid},
           "rule": 1, "policyVersion": "v1", "eventId": format!("e-{pid}")})
}

fn kill(pid: u32, approval_id: &str) -> Value {
    json!({"action": "kill_process", "pid": pid, "rule": 1, "policyVersion": "v1",
           "eventId": format!("e-{pid}"), "outcome": "executed", "approvalId": approval_id})
}

async fn send(t: &TestServer, agent: &str, token: &str, body: Value) -> (StatusCode, Value) {
    t.post(&format!("/api/agents/{agent}/reports"), token, body)
        .await
}

/// Asks for the kill of `pid` as `agent`; returns the approval's id.
async fn ask(t: &TestServer, agent: &str, token: &str, pid: u32) -> String {
    let (status, answer) = send(t, agent, token, request(pid)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["data"]["approval"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn decide(t: &TestServer, id: &str, verb: &str) -> Value {
    let (status, body) = t
        .post(&format!("/api/approvals/{id}/{verb}"), ADMIN, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

async fn approval(t: &TestServer, id: &str) -> Value {
    let (status, list) = t.get("/api/approvals?status=all&limit=1000", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("no approval `{id}`: {list}"))
        .clone()
}

/// Refused with this message at `approvalId`.
fn assert_refused(status: StatusCode, body: &Value, message: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"],
        json!({"code": "validation_failed", "path": "approvalId", "message": message,
               "errors": [{"path": "approvalId", "message": message}]})
    );
}

async fn audit(t: &TestServer, query: &str) -> Vec<Value> {
    let (status, body) = t.get(&format!("/api/audit{query}"), ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["entries"].as_array().unwrap().clone()
}

/// Probe 2, findings 2 and 6: any `approvalId` made an approval-only kill pass, and closed
/// the approval `executed` even for another pid; executing overwrote `decidedAt`.
#[tokio::test]
async fn probe2_an_approval_id_must_name_this_agents_approved_request_for_that_action() {
    let t = TestServer::start(true).await;
    t.post_policy(ADMIN, policy("default")).await;
    t.post_policy(ADMIN, policy("acme")).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (b, b_token) = t.enroll(ADMIN, "host-b").await;
    let (status, enrolled) = t
        .post(
            "/api/agents/enroll",
            ADMIN,
            json!({"hostname": "host-c", "org_id": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let c = enrolled["data"]["agentId"].as_str().unwrap().to_owned();
    let c_token = enrolled["data"]["token"].as_str().unwrap().to_owned();
    let mut streams = Vec::new();
    for token in [&a_token, &b_token, &c_token] {
        let mut stream = t.stream(token, "").await;
        assert_eq!(stream.next_event().await.event, "policy");
        streams.push(stream);
    }

    let approved = ask(&t, &a, &a_token, 4242).await;
    let decision = decide(&t, &approved, "approve").await;
    assert_eq!(streams[0].next_event().await.event, "approval");
    let pending = ask(&t, &a, &a_token, 4343).await;
    let denied = ask(&t, &a, &a_token, 4444).await;
    decide(&t, &denied, "deny").await;

    // Without an approval the kill is refused by the rule check, as before.
    let mut bare = kill(4242, "");
    bare.as_object_mut().unwrap().remove("approvalId");
    let (status, body) = send(&t, &a, &a_token, bare).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], "action");

    let refusals = [
        (
            &a,
            &a_token,
            kill(4242, "apr_0000"),
            "unknown approval `apr_0000`".to_owned(),
        ),
        (
            &b,
            &b_token,
            kill(4242, &approved),
            format!("approval `{approved}` is not this agent's"),
        ),
        (
            &c,
            &c_token,
            kill(4242, &approved),
            format!("approval `{approved}` is not this agent's"),
        ),
        (
            &a,
            &a_token,
            kill(4343, &pending),
            format!("approval `{pending}` is not approved: it is pending"),
        ),
        (
            &a,
            &a_token,
            kill(4444, &denied),
            format!("approval `{denied}` is not approved: it is denied"),
        ),
        (
            &a,
            &a_token,
            kill(1, &approved),
            format!(
                "the action differs from the approved one: approval `{approved}` is for \
                 `{{\"action\":\"kill_process\",\"pid\":4242,\"rule\":1,\"policyVersion\":\"v1\"}}`, \
                 the report is \
                 `{{\"action\":\"kill_process\",\"pid\":1,\"rule\":1,\"policyVersion\":\"v1\"}}`"
            ),
        ),
        (
            &a,
            &a_token,
            {
                let mut body = kill(4242, &approved);
                body["rule"] = json!(2);
                body
            },
            format!(
                "the action differs from the approved one: approval `{approved}` is for \
                 `{{\"action\":\"kill_process\",\"pid\":4242,\"rule\":1,\"policyVersion\":\"v1\"}}`, \
                 the report is \
                 `{{\"action\":\"kill_process\",\"pid\":4242,\"rule\":2,\"policyVersion\":\"v1\"}}`"
            ),
        ),
        (
            &a,
            &a_token,
            {
                let mut body = request(4242);
                body["approvalId"] = json!(approved);
                body
            },
            "an `approval_request` cannot carry `approvalId`: it asks for an approval".to_owned(),
        ),
    ];
    for (agent, token, body, message) in &refusals {
        let (status, answer) = send(&t, agent, token, body.clone()).await;
        assert_refused(status, &answer, message);
    }
    // Nothing changed but one `refused_by_server` entry per refusal.
    let still = approval(&t, &approved).await;
    assert_eq!(still["status"], "approved");
    assert_eq!(still["decidedAt"], decision["decidedAt"]);
    assert_eq!(approval(&t, &pending).await["status"], "pending");
    let mut refused: Vec<(String, String)> = Vec::new();
    for org in ["default", "acme"] {
        for entry in audit(&t, &format!("?org_id={org}&limit=1000")).await {
            if entry["action"] == "kill_process" || entry["action"] == "approval_request" {
                if entry["outcome"] != "refused_by_server" {
                    assert_eq!(entry["outcome"], "requested", "{entry}");
                    continue;
                }
                if entry["detail"]["path"] == "approvalId" {
                    refused.push((
                        entry["agentId"].as_str().unwrap().to_owned(),
                        entry["detail"]["message"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    refused.sort();
    let mut expected: Vec<(String, String)> = refusals
        .iter()
        .map(|(agent, _, _, message)| ((*agent).clone(), message.clone()))
        .collect();
    expected.sort();
    assert_eq!(refused, expected);

    // The right report closes it; its copy gets the same answer; another report of it is
    // refused. The decision time stays the admin's.
    let mut done = kill(4242, &approved);
    done["reportId"] = json!("rpt-done-1");
    let (status, first) = send(&t, &a, &a_token, done.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(
        first["data"],
        json!({"kind": "approval_outcome", "reportId": "rpt-done-1"})
    );
    let (status, again) = send(&t, &a, &a_token, done.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["data"], first["data"]);
    done["reportId"] = json!("rpt-done-2");
    let (status, body) = send(&t, &a, &a_token, done).await;
    assert_refused(
        status,
        &body,
        &format!("approval `{approved}` is not approved: it is executed"),
    );
    let executed = approval(&t, &approved).await;
    assert_eq!(executed["status"], "executed");
    assert_eq!(executed["decidedAt"], decision["decidedAt"]);
    assert_eq!(executed["decidedBy"], "admin");
    let kills: Vec<Value> = audit(&t, "?action=kill_process&limit=1000")
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "executed")
        .collect();
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0]["detail"]["approvalId"], approved.as_str());
    assert_eq!(kills[0]["detail"]["record"]["pid"], 4242);
}

/// Probe 2, finding 2: an approved request past its deadline (the sweeper not yet by) is
/// refused as expired, not closed.
#[tokio::test]
async fn probe2_an_expired_approval_closes_nothing() {
    let ttl = Duration::from_millis(800);
    let t = TestServer::start_in(tempdir(), |dir| ServerConfig {
        approval_ttl: ttl,
        approval_sweep: Duration::from_secs(3600),
        ..config(dir, true)
    })
    .await;
    t.post_policy(ADMIN, policy("default")).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let mut stream = t.stream(&a_token, "default").await;
    assert_eq!(stream.next_event().await.event, "policy");
    let asked = Instant::now();
    let id = ask(&t, &a, &a_token, 4242).await;
    decide(&t, &id, "approve").await;
    // Past the deadline (measured from before the request was sent).
    let deadline = asked + ttl + Duration::from_millis(50);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = send(&t, &a, &a_token, kill(4242, &id)).await;
    assert_refused(
        status,
        &body,
        &format!("approval `{id}` is not approved: it is expired"),
    );
    let (status, body) = t
        .call(
            Method::GET,
            "/api/audit?action=kill_process",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entries = body["data"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{body}");
    assert_eq!(entries[0]["outcome"], "refused_by_server");
}

/// Probe 2, finding 5: copies of one report sent at once got a stub answer
/// (`{"kind","reportId"}`) instead of the first copy's. Every copy now gets the same body.
#[tokio::test]
async fn probe2_racing_copies_of_a_report_all_get_the_first_answer() {
    let t = TestServer::start(true).await;
    t.post_policy(ADMIN, policy("default")).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (_b, b_token) = t.enroll(ADMIN, "host-b").await;
    let mut streams = Vec::new();
    for token in [&a_token, &b_token] {
        let mut stream = t.stream(token, "default").await;
        assert_eq!(stream.next_event().await.event, "policy");
        streams.push(stream);
    }
    const COPIES: usize = 12;
    for round in 0..8 {
        let mut block = json!({"action": "block_ip", "ip": format!("203.0.113.{}", 100 + round),
                               "duration": "24h", "scope": "fleet", "rule": 0,
                               "policyVersion": "v1"});
        block["reportId"] = json!(format!("race-block-{round}"));
        let mut ask = request(5000 + round);
        ask["reportId"] = json!(format!("race-apr-{round}"));
        for (body, key) in [(block, "block"), (ask, "approval")] {
            let copies = (0..COPIES).map(|_| send(&t, &a, &a_token, body.clone()));
            let answers = futures_util::future::join_all(copies).await;
            let first = &answers[0].1;
            assert!(first["data"][key].is_object(), "{first}");
            for (status, answer) in &answers {
                assert_eq!(*status, StatusCode::CREATED, "{answer}");
                assert_eq!(answer, first, "round {round}");
            }
        }
    }
    let (_, list) = t
        .get("/api/approvals?status=pending&limit=1000", ADMIN)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 8, "{list}");
}

/// Copies of one approval outcome racing: the first closes the approval, the others get its
/// answer (not "approval is not approved: it is executed", which is what they found).
#[tokio::test]
async fn racing_copies_of_an_approval_outcome_all_get_the_first_answer() {
    let t = TestServer::start(true).await;
    t.post_policy(ADMIN, policy("default")).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let mut stream = t.stream(&a_token, "default").await;
    assert_eq!(stream.next_event().await.event, "policy");
    for round in 0..6 {
        let pid = 6000 + round;
        let id = ask(&t, &a, &a_token, pid).await;
        decide(&t, &id, "approve").await;
        assert_eq!(stream.next_event().await.event, "approval");
        let mut body = kill(pid, &id);
        body["reportId"] = json!(format!("race-outcome-{round}"));
        let copies = (0..12).map(|_| send(&t, &a, &a_token, body.clone()));
        let answers = futures_util::future::join_all(copies).await;
        for (status, answer) in &answers {
            assert_eq!(*status, StatusCode::CREATED, "round {round}: {answer}");
            assert_eq!(
                answer["data"],
                json!({"kind": "approval_outcome", "reportId": format!("race-outcome-{round}")})
            );
        }
        assert_eq!(approval(&t, &id).await["status"], "executed");
    }
    let refused: Vec<Value> = audit(&t, "?action=kill_process&limit=1000")
        .await
        .into_iter()
        .filter(|e| e["outcome"] != "executed")
        .collect();
    assert_eq!(refused, Vec::<Value>::new());
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("policy-approval-outcomes-{}-", std::process::id()))
        .tempdir()
        .unwrap()
}
