//! `POST /api/policy?dryRun=true` over real TLS with a real event stream open: the answer is
//! the plan (validated policy, next version, diff to the active version, agents reached), and
//! nothing changes: no version stored, no event on the stream, no audit entry.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn a_dry_run_answers_the_plan_and_changes_nothing() {
    let t = TestServer::start(true).await;
    let (agent, token) = t.enroll(ADMIN, "web-dry").await;
    let (idle, _) = t.enroll(ADMIN, "db-dry").await;
    let mut stream = t.stream(&token, "default").await;
    t.post_policy(ADMIN, block_ip_policy("base", 50)).await;
    assert_eq!(stream.next_policy().await.id, "1");
    let (_, audit_before) = t.get("/api/audit", ADMIN).await;

    let mut next = block_ip_policy("tighter", 5);
    next["rules"].as_array_mut().unwrap().remove(1);
    next["rules"].as_array_mut().unwrap().push(json!(
        {"type": "custom", "config": {"condition": "severityLevel >= 4", "action": "alert"}}));
    next["rules"].as_array_mut().unwrap().push(json!(
        {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
         "minConfidence": 0.9}}));
    let (status, body) = t
        .call(
            Method::POST,
            "/api/policy?dryRun=true",
            Some(ADMIN),
            Some(next.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plan = &body["data"];
    assert_eq!(plan["dryRun"], json!(true));
    assert_eq!(plan["orgId"], json!("default"));
    assert_eq!(plan["version"], json!("v2"));
    assert_eq!(plan["activeVersion"], json!("v1"));
    assert_eq!(plan["signedBy"], json!(null));
    assert_eq!(plan["policy"]["name"], json!("tighter"));
    assert_eq!(
        plan["policy"]["rules"][2]["config"]["requireApproval"],
        json!(false),
        "the policy is answered normalized"
    );
    assert_eq!(
        plan["diff"],
        json!({
            "document": [{"field": "name", "from": "base", "to": "tighter"}],
            "added": [{"rule": 2, "type": "auto_respond", "definition":
                {"type": "auto_respond", "config": {"trigger": "malware",
                 "action": "kill_process", "minConfidence": 0.9, "requireApproval": false},
                 "enabled": true}}],
            "removed": [],
            "changed": [
                {"rule": 0, "type": "block_ip", "changes": [
                    {"field": "config.threshold", "from": 50, "to": 5}]},
                {"rule": 1, "type": "custom", "changes": [
                    {"field": "config.action", "from": null, "to": "alert"},
                    {"field": "config.condition", "from": null, "to": "severityLevel >= 4"},
                    {"field": "config.countPerHour", "from": 5, "to": null},
                    {"field": "config.notifyChannels", "from": ["telegram", "email"], "to": null},
                    {"field": "config.severity", "from": "critical", "to": null},
                    {"field": "type", "from": "alert_threshold", "to": "custom"}]}
            ],
            "unchanged": 0
        })
    );
    assert_eq!(plan["wouldReach"]["total"], json!(2));
    assert_eq!(plan["wouldReach"]["online"], json!(1));
    let reached: Vec<(String, bool)> = plan["wouldReach"]["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["agentId"].as_str().unwrap().to_owned(),
                a["online"].as_bool().unwrap(),
            )
        })
        .collect();
    let mut expected = vec![(agent.clone(), true), (idle.clone(), false)];
    expected.sort();
    assert_eq!(reached, expected);

    // Nothing changed: still v1, the same audit trail, and the next event on the stream is the
    // real v2 posted below (had the dry run pushed anything, it would come first).
    let (_, active) = t.get("/api/policy/active", ADMIN).await;
    assert_eq!(active["data"]["version"], json!("v1"));
    assert_eq!(active["data"]["name"], json!("base"));
    let (_, audit_after) = t.get("/api/audit", ADMIN).await;
    assert_eq!(audit_after, audit_before);
    let posted = t.post_policy(ADMIN, next).await;
    assert_eq!(posted["version"], json!("v2"));
    let event = stream.next_policy().await;
    assert_eq!(
        (event.id.as_str(), &event.data["name"]),
        ("2", &json!("tighter"))
    );
}

#[tokio::test]
async fn a_dry_run_refuses_what_the_post_would_refuse_and_typos_stay_400() {
    let t = TestServer::start(false).await;
    let (status, body) = t
        .call(
            Method::POST,
            "/api/policy?dryRun=true",
            Some(ADMIN),
            Some(
                json!({"name": "bad", "rules": [{"type": "block_ip", "config": {
                "trigger": "brute_force", "treshold": 5, "duration": "1h", "scope": "host"}}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], json!("rules[0].config.treshold"));

    // A first version: everything is added, nobody is reached.
    let (status, body) = t
        .call(
            Method::POST,
            "/api/policy?dryRun=true",
            Some(ADMIN),
            Some(block_ip_policy("first", 3)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["activeVersion"], json!(null));
    assert_eq!(body["data"]["version"], json!("v1"));
    assert_eq!(body["data"]["diff"]["added"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["data"]["wouldReach"],
        json!({"total": 0, "online": 0, "agents": []})
    );

    for (query, message) in [
        (
            "dryrun=true",
            "unknown query parameter `dryrun`, expected one of `dryRun`, `shadow`, `org_id`",
        ),
        (
            "dryRun=yes",
            "query parameter `dryRun` must be `true` or `false`, found `yes`",
        ),
    ] {
        let (status, body) = t
            .call(
                Method::POST,
                &format!("/api/policy?{query}"),
                Some(ADMIN),
                Some(block_ip_policy("typo", 3)),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(
            body["error"],
            json!({"code": "bad_request", "message": message})
        );
    }
    let (status, _) = t.get("/api/policy/active", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, trail) = t.get("/api/audit", ADMIN).await;
    assert_eq!(trail["data"]["entries"], json!([]));

    // `dryRun=false` publishes.
    let (status, body) = t
        .call(
            Method::POST,
            "/api/policy?dryRun=false",
            Some(ADMIN),
            Some(block_ip_policy("real", 3)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["version"], json!("v1"));
}

/// A probe found the plan blind to `budgets` (no change listed when they were added, changed
/// or removed) and answering a plan while a rollout ran, where the post is a 409.
#[tokio::test]
async fn a_dry_run_lists_budget_changes_and_refuses_while_a_rollout_runs() {
    let t = TestServer::start(false).await;
    let mut base = block_ip_policy("base", 5);
    base["budgets"] = json!({"fleet_block": {"max": 1, "window": "1h"}});
    t.post_policy(ADMIN, base.clone()).await;
    let mut next = base.clone();
    next["budgets"] = json!({"fleet_block": {"max": 3, "window": "1h"},
                             "kill_process": {"max": 0, "window": "1h"}});
    let plan = |body: Value| async {
        let (status, answer) = t
            .call(
                Method::POST,
                "/api/policy?dryRun=true",
                Some(ADMIN),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["data"]["diff"]["document"].clone()
    };
    assert_eq!(
        plan(next).await,
        json!([
            {"field": "budgets.fleet_block.max", "from": 1, "to": 3},
            {"field": "budgets.kill_process", "from": null,
             "to": {"max": 0, "window": "1h"}}
        ])
    );
    assert_eq!(
        plan(block_ip_policy("base", 5)).await,
        json!([{"field": "budgets", "from": {"fleet_block": {"max": 1, "window": "1h"}},
                "to": null}])
    );

    let (status, started) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": block_ip_policy("staged", 6), "stages": [{"percent": 50}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let (status, planned) = t
        .call(
            Method::POST,
            "/api/policy?dryRun=true",
            Some(ADMIN),
            Some(base.clone()),
        )
        .await;
    let (_, posted) = t.post("/api/policy", ADMIN, base).await;
    assert_eq!(status, StatusCode::CONFLICT, "{planned}");
    assert_eq!(planned["error"], posted["error"]);
}
