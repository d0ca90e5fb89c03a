//! Which version the org runs around rollouts, on SQLite and on PostgreSQL: a rollout that was
//! aborted never comes back (as the next rollout's fallback, to the agents outside its stage,
//! or as the version a second abort goes back to); "active" everywhere (`GET
//! /api/policy/active`, the plan's `activeVersion` and diff, the shadow's `enforcedVersion`)
//! is what an agent outside every stage runs; overrides are checked against, and answered
//! with, the version their agent is assigned; a stage may name only enrolled agents of the
//! rollout's org.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use crate::common::postgres::TestDatabase;
use crate::common::*;
use reference_server::{Database, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A server on a PostgreSQL database of its own (plain HTTP on loopback).
async fn on_postgres(db: &TestDatabase) -> TestServer {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-rollout-versions-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let url = db.url.clone();
    TestServer::start_in(dir, move |dir| ServerConfig {
        database: Database::Postgres(url.clone()),
        ..config(dir, false)
    })
    .await
}

/// A one-rule version (`block_ip_policy` has two rules): an override of rule 1 fits only the
/// two-rule versions.
fn one_rule(name: &str, threshold: u32) -> Value {
    json!({"name": name, "rules": [{"type": "block_ip", "config": {"trigger": "bad",
           "threshold": threshold, "duration": "1h", "scope": "host"}, "enabled": true}]})
}

/// Starts a rollout of `policy` whose one stage is agent `canary`, soaking an hour (it never
/// advances on its own); returns the answer's `data`.
async fn start(t: &TestServer, policy: Value, canary: &str) -> Value {
    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": policy, "stages": [{"agents": [canary], "soakSecs": 3600}],
                   "gate": {"silentAfterSecs": 86400}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["data"].clone()
}

async fn abort(t: &TestServer, id: &str) -> Value {
    let (status, body) = t
        .post(&format!("/api/rollouts/{id}/abort"), ADMIN, json!(null))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["state"], "aborted", "{body}");
    body["data"].clone()
}

/// `assignedVersion` of `agent` in a rollout's answer.
fn assigned_in(rollout: &Value, agent: &str) -> Value {
    rollout["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agentId"] == agent)
        .unwrap_or_else(|| panic!("{agent} not in {rollout}"))["assignedVersion"]
        .clone()
}

/// The version `GET /api/policy/active` answers with `token`.
async fn active(t: &TestServer, token: &str) -> Value {
    let (status, body) = t.get("/api/policy/active", token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["version"].clone()
}

/// Every view of "the version the org runs" says `version`: the active policy (admin and
/// agent tokens), the plan's base and the shadow's enforced version. While a rollout runs
/// (`rolling`) the plan is the post's 409, as a plain post is refused then.
async fn org_runs(t: &TestServer, agent_token: &str, version: &str, next: &str, rolling: bool) {
    assert_eq!(active(t, ADMIN).await, version);
    assert_eq!(active(t, agent_token).await, version);
    let (status, shadow) = t.get("/api/policy/shadow", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{shadow}");
    assert_eq!(shadow["data"]["enforcedVersion"], version, "{shadow}");
    // v1 has two rules with threshold 5; the rollouts' versions have one: a diff against one
    // of them would add rule 1.
    let (status, plan) = t
        .post("/api/policy?dryRun=true", ADMIN, block_ip_policy("plan", 7))
        .await;
    if rolling {
        assert_eq!(status, StatusCode::CONFLICT, "{plan}");
        assert!(
            plan["error"]["message"]
                .as_str()
                .unwrap()
                .contains("is running"),
            "{plan}"
        );
        return;
    }
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["data"]["activeVersion"], version, "{plan}");
    assert_eq!(plan["data"]["version"], next, "{plan}");
    assert_eq!(plan["data"]["diff"]["added"], json!([]), "{plan}");
    assert_eq!(plan["data"]["diff"]["removed"], json!([]), "{plan}");
    assert_eq!(
        plan["data"]["diff"]["changed"],
        json!([{"rule": 0, "type": "block_ip", "changes": [
            {"field": "config.threshold", "from": 5, "to": 7}]}]),
        "{plan}"
    );
}

/// Regression (probe findings 1 and 2). v1 runs; the rollout of v2 to the canary is aborted;
/// the next rollout (v3) fell back to v2, the aborted version: the agent outside its stage was
/// pushed v2, and aborting v3 "rolled back" to v2. Meanwhile the active policy, the plan and
/// the shadow view named v2, and an override of v1's rule 1 was refused against v2's one rule.
async fn an_aborted_version_never_comes_back(t: &TestServer) {
    let (canary, _) = t.enroll(ADMIN, "canary").await;
    let (fleet, fleet_token) = t.enroll(ADMIN, "fleet").await;
    let mut fleet_stream = t.stream(&fleet_token, "default").await;
    t.post_policy(ADMIN, block_ip_policy("v1", 5)).await;
    assert_eq!(fleet_stream.next_policy().await.id, "1");

    let first = start(t, one_rule("v2-bad", 1), &canary).await;
    assert_eq!(
        (&first["version"], &first["previous"]),
        (&json!("v2"), &json!("v1"))
    );
    // While it runs, the org runs v1, and overrides go against each agent's own version.
    org_runs(t, &fleet_token, "v1", "v3", true).await;
    let (status, body) = t
        .put(
            &format!("/api/policy/agent/{fleet}/overrides"),
            ADMIN,
            json!([{"rule": 1, "enabled": false}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["policyVersion"], "v1", "{body}");
    assert_eq!(body["data"]["rules"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["data"]["rules"][1]["enabled"], false, "{body}");
    let (_, view) = t.get(&format!("/api/policy/agent/{fleet}"), ADMIN).await;
    assert_eq!(view["data"]["policyVersion"], "v1");
    assert_eq!(view["data"]["rules"], body["data"]["rules"]);
    let pushed = fleet_stream.next_policy().await;
    assert_eq!(pushed.id, "1");
    assert_eq!(
        pushed.data["rules"][1]["enabled"], false,
        "{:?}",
        pushed.data
    );
    // The canary runs v2, which has no rule 1.
    let (status, body) = t
        .put(
            &format!("/api/policy/agent/{canary}/overrides"),
            ADMIN,
            json!([{"rule": 1, "enabled": false}]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        error_list(&body),
        [("[0].rule", "expected a rule index from 0 to 0, found `1`")]
    );

    abort(t, first["id"].as_str().unwrap()).await;
    org_runs(t, &fleet_token, "v1", "v3", false).await;
    let (status, body) = t
        .put(
            &format!("/api/policy/agent/{canary}/overrides"),
            ADMIN,
            json!([{"rule": 0, "config": {"threshold": 9}}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["policyVersion"], "v1", "{body}");
    assert_eq!(body["data"]["rules"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["data"]["rules"][0]["config"]["threshold"], 9, "{body}");
    assert_eq!(body["data"]["rules"][0]["config"]["trigger"], "brute_force");

    // The next rollout falls back to v1, which the fleet keeps.
    let second = start(t, one_rule("v3", 2), &canary).await;
    assert_eq!(
        (&second["version"], &second["previous"]),
        (&json!("v3"), &json!("v1"))
    );
    assert_eq!(assigned_in(&second, &fleet), "v1");
    assert_eq!(assigned_in(&second, &canary), "v3");
    org_runs(t, &fleet_token, "v1", "v4", true).await;
    let (status, beat) = t
        .post(
            &format!("/api/agents/{fleet}/heartbeat"),
            &fleet_token,
            json!({"policyVersion": "v1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    assert_eq!(
        (
            &beat["data"]["currentPolicyVersion"],
            &beat["data"]["outdated"]
        ),
        (&json!("v1"), &json!(false))
    );
    let (_, agents) = t.get("/api/agents", ADMIN).await;
    let row = agents["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agentId"] == fleet)
        .unwrap()
        .clone();
    assert_eq!(row["assignedVersion"], "v1", "{row}");

    // Aborting it goes back to v1 as well.
    let back = abort(t, second["id"].as_str().unwrap()).await;
    assert_eq!(assigned_in(&back, &canary), "v1");
    assert_eq!(assigned_in(&back, &fleet), "v1");
    let (_, view) = t.get(&format!("/api/policy/agent/{canary}"), ADMIN).await;
    assert_eq!(view["data"]["policyVersion"], "v1");
    let reason = view["data"]["running"]["assignment"].as_str().unwrap();
    assert!(reason.ends_with("was aborted: back to v1"), "{reason}");
    org_runs(t, &fleet_token, "v1", "v4", false).await;

    // A plain version as a fence: the fleet's stream got nothing before it (v2 was pushed).
    t.post_policy(ADMIN, block_ip_policy("v4", 6)).await;
    let next = fleet_stream.next_policy().await;
    assert_eq!(next.id, "4", "{:?}", next.data);
    assert_eq!(active(t, ADMIN).await, "v4");
}

#[tokio::test]
async fn an_aborted_version_never_comes_back_on_sqlite() {
    an_aborted_version_never_comes_back(&TestServer::start(true).await).await;
}

#[tokio::test]
async fn an_aborted_version_never_comes_back_on_postgres() {
    let db = TestDatabase::create().await;
    an_aborted_version_never_comes_back(&on_postgres(&db).await).await;
}

/// Regression (probe finding 3): a stage naming only unknown agents was accepted, counted as
/// acked at once (it had no agents) and completed, pushing the version to the whole org.
async fn stages_name_only_enrolled_agents_of_the_org(t: &TestServer) {
    let (agent, _) = t.enroll(ADMIN, "web-1").await;
    let (status, body) = t
        .post(
            "/api/agents/enroll",
            ADMIN,
            json!({"hostname": "beta-1", "org_id": "beta"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let other_org = body["data"]["agentId"].as_str().unwrap().to_owned();
    t.post_policy(ADMIN, block_ip_policy("v1", 5)).await;

    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": one_rule("typo", 3), "stages": [{"agents": ["agent-nope"]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(body["error"]["path"], "stages[0].agents[0]");
    assert_eq!(
        body["error"]["message"],
        "`agent-nope` is not an enrolled agent of org `default`"
    );
    assert_eq!(
        error_list(&body),
        [(
            "stages[0].agents[0]",
            "`agent-nope` is not an enrolled agent of org `default`"
        )]
    );

    // With the body's other errors, in the body's order; another org's agent is unknown here.
    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": one_rule("typo", 3),
                   "stages": [{"agents": [agent, other_org, 7], "soakSecs": -1},
                              {"percent": 101, "agents": ["agent-typo"]}],
                   "gate": {"maxSilnet": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let other = format!("`{other_org}` is not an enrolled agent of org `default`");
    assert_eq!(
        error_list(&body),
        [
            (
                "stages[0].agents[2]",
                "expected an agent id (1 to 128 characters)"
            ),
            (
                "stages[0].soakSecs",
                "expected whole seconds from 0 to 2592000 (30 days)"
            ),
            ("stages[0].agents[1]", other.as_str()),
            ("stages[1].percent", "expected an integer from 0 to 100"),
            (
                "stages[1].agents[0]",
                "`agent-typo` is not an enrolled agent of org `default`"
            ),
            (
                "gate.maxSilnet",
                "unknown field `maxSilnet`, expected one of `maxFailures`, `maxSilent`, `silentAfterSecs`, `maxConditionErrorPercent`, `maxActionRatePercent`, `minEvents`"
            ),
        ]
    );

    // Nothing was stored: no rollout, no version, the org still runs v1.
    let (status, body) = t.get("/api/rollouts", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["rollouts"], json!([]));
    let (_, versions) = t.get("/api/policy/versions", ADMIN).await;
    assert_eq!(versions["data"]["versions"].as_array().unwrap().len(), 1);
    assert_eq!(active(t, ADMIN).await, "v1");

    // The enrolled agent alone is a stage.
    let rollout = start(t, one_rule("v2", 3), &agent).await;
    assert_eq!(rollout["state"], "running");
    assert_eq!(assigned_in(&rollout, &agent), "v2");
}

#[tokio::test]
async fn stages_name_only_enrolled_agents_of_the_org_on_sqlite() {
    stages_name_only_enrolled_agents_of_the_org(&TestServer::start(true).await).await;
}

#[tokio::test]
async fn stages_name_only_enrolled_agents_of_the_org_on_postgres() {
    let db = TestDatabase::create().await;
    stages_name_only_enrolled_agents_of_the_org(&on_postgres(&db).await).await;
}
