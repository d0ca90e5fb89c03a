//! The server against the protocol's golden files (`policy-engine/tests/data/protocol/`): its
//! real answers and events over a real socket have exactly the golden shapes, the golden
//! requests are accepted; `GET /api/agents/me`; and reports with a `reportId` are answered, not
//! acted on twice (also across a restart and when resent concurrently).

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn golden(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../policy-engine/tests/data/protocol")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `actual` has the shape of the golden file `name`: the same keys at every level (no field
/// more, none less) and the same JSON types. Arrays of equal length compare element-wise,
/// others against the golden's first element.
fn assert_shape(name: &str, actual: &Value) {
    let mut problems = Vec::new();
    shape(&golden(name), actual, "", &mut problems);
    assert!(
        problems.is_empty(),
        "{name}: {problems:#?}\nactual: {actual}"
    );
}

fn shape(golden: &Value, actual: &Value, path: &str, problems: &mut Vec<String>) {
    match (golden, actual) {
        (Value::Object(g), Value::Object(a)) => {
            for key in g.keys().filter(|k| !a.contains_key(*k)) {
                problems.push(format!("{path}.{key}: missing"));
            }
            for key in a.keys().filter(|k| !g.contains_key(*k)) {
                problems.push(format!("{path}.{key}: not in the golden file"));
            }
            for (key, value) in a {
                if let Some(expected) = g.get(key) {
                    shape(expected, value, &format!("{path}.{key}"), problems);
                }
            }
        }
        (Value::Array(g), Value::Array(a)) => {
            for (i, value) in a.iter().enumerate() {
                let expected = if g.len() == a.len() {
                    g.get(i)
                } else {
                    g.first()
                };
                if let Some(expected) = expected {
                    shape(expected, value, &format!("{path}[{i}]"), problems);
                }
            }
        }
        (g, a) if kind(g) != kind(a) => {
            problems.push(format!(
                "{path}: {} in the golden file, {} here",
                kind(g),
                kind(a)
            ));
        }
        _ => {}
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[tokio::test]
async fn answers_and_events_have_the_golden_shapes_and_golden_requests_are_accepted() {
    let t = TestServer::start(true).await;
    let event = golden("policy_event.json");
    let policy = json!({"name": event["name"], "description": event["description"],
                        "rules": event["rules"], "org_id": "acme"});
    // Version 3, as the golden reports say (reports are checked against the version sent).
    let mut created = Value::Null;
    for _ in 0..3 {
        let (status, body) = t.post("/api/policy", ADMIN, policy.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        created = body;
    }
    let mut view = created["data"].clone();
    // The golden view shows a policy without a description.
    view.as_object_mut().unwrap().remove("description");
    assert_shape("policy_view.json", &view);

    let (status, enrolled) = t
        .post("/api/agents/enroll", ADMIN, golden("enroll_request.json"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    assert_shape("enroll_answer.json", &enrolled["data"]);
    let a = enrolled["data"]["agentId"].as_str().unwrap().to_owned();
    let a_token = enrolled["data"]["token"].as_str().unwrap().to_owned();
    let (b, b_token) = {
        let (status, body) = t
            .post(
                "/api/agents/enroll",
                ADMIN,
                json!({"hostname": "web-2", "orgId": "acme"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["data"]["agentId"].as_str().unwrap().to_owned(),
            body["data"]["token"].as_str().unwrap().to_owned(),
        )
    };

    let (status, me) = t.get("/api/agents/me", &a_token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_shape("agent_identity.json", &me["data"]);
    assert_eq!(
        me["data"],
        json!({"agentId": a, "orgId": "acme", "hostname": "web-1"})
    );

    let mut a_stream = t.stream(&a_token, "acme").await;
    let mut b_stream = t.stream(&b_token, "acme").await;
    let policy_event = a_stream.next_policy().await;
    assert_shape("policy_event.json", &policy_event.data);
    assert_eq!(policy_event.data["rules"], event["rules"]);
    assert_eq!(b_stream.next_policy().await.data, policy_event.data);
    // The golden approval request comes from rule 2, disabled in the golden policy: agent a
    // runs it enabled.
    let (status, body) = t
        .put(
            &format!("/api/policy/agent/{a}/overrides"),
            ADMIN,
            json!([{"rule": 2, "enabled": true}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        a_stream.next_policy().await.data["rules"][2]["enabled"],
        true
    );

    let (status, beat) = t
        .post(
            &format!("/api/agents/{a}/heartbeat"),
            &a_token,
            golden("heartbeat_request.json"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    assert_shape("heartbeat_answer.json", &beat["data"]);
    let (status, beat) = t
        .post(
            &format!("/api/agents/{a}/heartbeat"),
            &a_token,
            golden("heartbeat_request_ack.json"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    let (_, listed) = t.get("/api/agents?org_id=acme", ADMIN).await;
    let listed = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["agentId"] == json!(a))
        .unwrap()
        .clone();
    assert_eq!(listed["ack"], golden("heartbeat_request_ack.json")["ack"]);

    let reports = format!("/api/agents/{a}/reports");
    let (status, answer) = t
        .post(&reports, &a_token, golden("report_fleet_block.json"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_shape("report_answer_fleet_block.json", &answer["data"]);
    assert_eq!(answer["data"]["reportId"], "rpt_5d0c1a2b3c4d5e6f");
    let block = b_stream.next_event().await;
    assert_eq!(block.event, "block");
    assert_shape("block_event.json", &block.data);

    let (status, answer) = t
        .post(&reports, &a_token, golden("report_approval_request.json"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_shape("report_answer_approval_request.json", &answer["data"]);
    let approval_id = answer["data"]["approval"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, decided) = t
        .post(
            &format!("/api/approvals/{approval_id}/approve?org_id=acme"),
            ADMIN,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    let approval = a_stream.next_event().await;
    assert_eq!(approval.event, "approval");
    assert_shape("approval_event.json", &approval.data);

    let mut outcome = golden("report_approval_outcome.json");
    outcome["approvalId"] = json!(approval_id);
    let (status, answer) = t.post(&reports, &a_token, outcome).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(
        answer["data"],
        json!({"kind": "approval_outcome", "reportId": "rpt_5d0c1a2b3c4d5e71"})
    );

    let (status, lifted) = t
        .call(
            Method::DELETE,
            "/api/blocks/203.0.113.7?org_id=acme",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{lifted}");
    for stream in [&mut a_stream, &mut b_stream] {
        let unblock = stream.next_event().await;
        assert_eq!(unblock.event, "unblock");
        assert_shape("unblock_event.json", &unblock.data);
    }

    let mut typo = golden("report_fleet_block.json");
    typo["scpoe"] = json!("fleet");
    let (status, error) = t
        .post(&format!("/api/agents/{b}/reports"), &b_token, typo)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_shape("error_envelope.json", &error);
    assert_eq!(error, golden("error_envelope.json"));
}

#[tokio::test]
async fn agents_me_says_who_an_agent_token_is() {
    let t = TestServer::start(false).await;
    let (agent, token) = t.enroll(ADMIN, "db-7").await;
    let (status, me) = t.get("/api/agents/me", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me,
        json!({"ok": true, "data": {"agentId": agent, "orgId": "default", "hostname": "db-7"}})
    );
    let (status, error) = t.get("/api/agents/me", ADMIN).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        error["error"],
        json!({"code": "forbidden",
               "message": "this endpoint needs an agent token (it says which agent the token is)"})
    );
    let (status, error) = t.call(Method::GET, "/api/agents/me", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["error"]["message"], "missing bearer token");
    let (status, error) = t
        .call(Method::POST, "/api/agents/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{error}");
}

async fn audit_count(t: &TestServer, query: &str) -> usize {
    let (status, body) = t.get(&format!("/api/audit?{query}"), ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["entries"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_repeated_report_is_answered_again_not_acted_on_twice() {
    let t = TestServer::start(false).await;
    let respond = |action: &str, approval: bool| {
        json!({"type": "auto_respond", "config": {"trigger": "malware", "action": action,
               "minConfidence": 0.5, "requireApproval": approval}})
    };
    t.post_policy(
        ADMIN,
        json!({"name": "fleet", "rules": [
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5,
             "duration": "1h", "scope": "fleet"}},
            respond("kill_process", true),
            respond("quarantine_file", false),
        ]}),
    )
    .await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (b, b_token) = t.enroll(ADMIN, "host-b").await;
    let a_stream = t.stream(&a_token, "default").await;
    let mut b_stream = t.stream(&b_token, "default").await;
    assert_eq!(b_stream.next_event().await.event, "policy");

    let block = json!({"action": "block_ip", "ip": "198.51.100.9", "duration": "1h",
                       "scope": "fleet", "rule": 0, "policyVersion": "v1",
                       "outcome": "executed", "reportId": "a-1"});
    let reports = format!("/api/agents/{a}/reports");
    let (status, first) = t.post(&reports, &a_token, block.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["data"]["changed"], true);
    assert_eq!(first["data"]["block"]["reports"], 1);
    let (status, again) = t.post(&reports, &a_token, block.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again, first);
    let block_answer = first;

    // One block event reached the other agent: the next one is the unblock below.
    let (status, _) = t
        .call(
            Method::DELETE,
            "/api/blocks/198.51.100.9",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b_stream.next_event().await.event, "block");
    assert_eq!(b_stream.next_event().await.event, "unblock");
    assert_eq!(audit_count(&t, "ip=198.51.100.9&action=block_ip").await, 1);

    // The id is the agent's own: another agent's report with the same id is another report.
    let (status, other) = t
        .post(&format!("/api/agents/{b}/reports"), &b_token, block.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_eq!(other["data"]["block"]["agentId"], b.as_str());
    assert_eq!(audit_count(&t, "ip=198.51.100.9&action=block_ip").await, 2);

    // An approval request resent: one approval.
    let request = json!({"action": "approval_request",
                         "request": {"action": "kill_process", "pid": 77},
                         "rule": 1, "policyVersion": "v1", "reportId": "a-2"});
    let (_, first) = t.post(&reports, &a_token, request.clone()).await;
    let (_, again) = t.post(&reports, &a_token, request).await;
    assert_eq!(again, first);
    let (status, approvals) = t.get("/api/approvals", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        approvals["data"].as_array().unwrap().len(),
        1,
        "{approvals}"
    );

    // Resent concurrently (the agent timed out and retried while the first was handled).
    let kill = json!({"action": "quarantine_file", "path": "/tmp/x", "rule": 2,
                      "policyVersion": "v1", "outcome": "failed", "detail": "gone",
                      "reportId": "a-3"});
    let sends = (0..6).map(|_| t.post(&reports, &a_token, kill.clone()));
    let answers = futures_util::future::join_all(sends).await;
    for (status, answer) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{answer}");
        assert_eq!(
            answer["data"],
            json!({"kind": "recorded", "reportId": "a-3"})
        );
    }
    assert_eq!(
        audit_count(&t, &format!("agent={a}&action=quarantine_file")).await,
        1
    );

    // Remembered across a restart.
    a_stream.close();
    let t = t.restart().await;
    let (status, after) = t.post(&reports, &a_token, block).await;
    assert_eq!(status, StatusCode::CREATED, "{after}");
    assert_eq!(after, block_answer);
    assert_eq!(audit_count(&t, "ip=198.51.100.9&action=block_ip").await, 2);

    let (status, error) = t
        .post(
            &reports,
            &a_token,
            json!({"action": "isolate_host", "rule": 0, "policyVersion": "v1",
                   "reportId": "a b"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (&error["error"]["path"], &error["error"]["message"]),
        (
            &json!("reportId"),
            &json!("expected 1 to 64 letters, digits, `-`, `_`, `.` or `:`, found `a b`")
        )
    );
}
