//! Overrides naming notification channels the server does not have (`--notify-config`): refused
//! with 422 at the path inside the override body, nothing stored, nothing pushed; a channel the
//! override did not set (inherited from the policy, since removed from the config) keeps the
//! policy's path. Every error of a list is reported, in the order of the overrides, each at the
//! override it is in.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use crate::common::*;
use reference_server::ServerConfig;
use reference_server::notify::NotifyConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn notify(names: &[&str]) -> NotifyConfig {
    let channels: serde_json::Map<String, Value> = names
        .iter()
        .map(|name| {
            (
                (*name).to_owned(),
                // Never called: these tests deliver nothing.
                json!({"type": "webhook", "url": "http://127.0.0.1:9/hook?key=WEBHOOK-SECRET"}),
            )
        })
        .collect();
    serde_json::from_value(json!({ "channels": channels })).unwrap()
}

fn with_notify(names: &'static [&'static str]) -> impl Fn(&std::path::Path) -> ServerConfig {
    move |dir| ServerConfig {
        notify: Some(notify(names)),
        ..config(dir, true)
    }
}

fn policy() -> Value {
    let mut policy = block_ip_policy("ssh", 5);
    policy["rules"][1]["config"]["notifyChannels"] = json!(["email"]);
    policy
}

async fn put_overrides(t: &TestServer, agent: &str, list: Value) -> (StatusCode, Value) {
    t.put(&format!("/api/policy/agent/{agent}/overrides"), ADMIN, list)
        .await
}

async fn agent_policy(t: &TestServer, agent: &str) -> Value {
    let (status, body) = t.get(&format!("/api/policy/agent/{agent}"), ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

async fn overrides_set(t: &TestServer) -> Vec<Value> {
    let (status, body) = t.get("/api/audit?action=overrides_set", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_override_naming_an_unknown_channel_is_refused_inside_the_override_body() {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-fleet-overrides-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let t = TestServer::start_in(dir, with_notify(&["email", "ops", "telegram"])).await;
    t.post_policy(ADMIN, policy()).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;

    // A valid override is stored: the state the refused ones must leave alone.
    let (status, body) = put_overrides(
        &t,
        &a,
        json!([{"rule": 1, "config": {"notifyChannels": ["ops"]}}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["rules"][1]["config"]["notifyChannels"],
        json!(["ops"])
    );
    let before = agent_policy(&t, &a).await;
    assert_eq!(
        before["rules"][1]["config"]["notifyChannels"],
        json!(["ops"])
    );
    assert_eq!(overrides_set(&t).await.len(), 1);
    let mut stream = t.stream(&a_token, "default").await;
    assert_eq!(stream.next_event().await.event, "policy");

    // Override 0 targets rule 1: the path is `[0]...`, not `rules[1]...`.
    let (status, body) = put_overrides(
        &t,
        &a,
        json!([{"rule": 1, "config": {"notifyChannels": ["ops", "pager"]}},
               {"rule": 0, "config": {"threshold": 3}}]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body,
        json!({"ok": false, "error": {
            "code": "validation_failed",
            "message": "unknown notification channel `pager`; configured channels: `email`, `ops`, `telegram`",
            "path": "[0].config.notifyChannels[1]",
            "errors": [{
                "path": "[0].config.notifyChannels[1]",
                "message": "unknown notification channel `pager`; configured channels: `email`, `ops`, `telegram`"
            }]
        }})
    );

    // Override 1 targets rule 1; every unknown name is listed, each at its own index.
    let (status, body) = put_overrides(
        &t,
        &a,
        json!([{"rule": 0, "enabled": false},
               {"rule": 1, "config": {"notifyChannels": ["sms", "ops", "pager"]}}]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(body["error"]["path"], "[1].config.notifyChannels[0]");
    assert_eq!(
        body["error"]["message"],
        "unknown notification channel `sms`; configured channels: `email`, `ops`, `telegram`"
    );
    let paths: Vec<&str> = body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "[1].config.notifyChannels[0]",
            "[1].config.notifyChannels[2]"
        ]
    );
    assert!(!body.to_string().contains("SECRET"), "{body}");

    // Nothing was stored, audited or pushed: the agent's policy is unchanged, and the next
    // event on its stream is the one of the next valid override.
    assert_eq!(agent_policy(&t, &a).await, before);
    assert_eq!(overrides_set(&t).await.len(), 1);
    let (status, body) = put_overrides(
        &t,
        &a,
        json!([{"rule": 1, "config": {"notifyChannels": ["telegram"]}}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event = stream.next_policy().await;
    assert_eq!(
        event.data["rules"][1]["config"]["notifyChannels"],
        json!(["telegram"])
    );
    assert_eq!(event.data["rules"][0]["config"]["threshold"], 5);
    assert_eq!(event.data["rules"][0]["enabled"], true);
}

#[tokio::test]
async fn an_inherited_unknown_channel_keeps_the_policy_path() {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-fleet-overrides-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let t = TestServer::start_in(dir, with_notify(&["email", "ops"])).await;
    t.post_policy(ADMIN, policy()).await;
    let (a, _a_token) = t.enroll(ADMIN, "host-a").await;

    // Restarted with `email` gone from the config: an override that does not touch the
    // channels cannot fix them, so the error names the policy's rule.
    let mut t = t;
    t.server.take().unwrap().shutdown().await;
    let t = TestServer::start_in(t.dir, with_notify(&["ops"])).await;
    let before = agent_policy(&t, &a).await;
    let (status, body) = put_overrides(&t, &a, json!([{"rule": 1, "enabled": false}])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(
        body["error"]["message"],
        "unknown notification channel `email`; configured channels: `ops`"
    );
    assert_eq!(body["error"]["path"], "rules[1].config.notifyChannels[0]");
    assert_eq!(agent_policy(&t, &a).await, before);

    // Replacing the channels in the override fixes it.
    let (status, body) = put_overrides(
        &t,
        &a,
        json!([{"rule": 1, "config": {"notifyChannels": ["ops"]}}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(overrides_set(&t).await.len(), 1);
}

#[tokio::test]
async fn every_error_of_an_override_list_is_reported_in_the_order_of_the_overrides() {
    let t = TestServer::start(true).await;
    t.post_policy(ADMIN, policy()).await;
    let (a, _) = t.enroll(ADMIN, "host-a").await;
    let before = agent_policy(&t, &a).await;

    // A wrong rule index in one override does not hide the config errors of the others, and
    // an override's shape error comes before its config's.
    let (status, body) = put_overrides(
        &t,
        &a,
        json!([{"rule": 5, "enabled": false},
               {"rule": 0, "config": {"threshold": -1}},
               {"rule": 1, "enabled": "no", "config": {"severity": "urgent"}}]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(body["error"]["path"], "[0].rule");
    assert_eq!(
        body["error"]["message"],
        "expected a rule index from 0 to 1, found `5`"
    );
    let errors = error_list(&body);
    assert_eq!(
        errors,
        [
            ("[0].rule", "expected a rule index from 0 to 1, found `5`"),
            (
                "[1].config.threshold",
                "expected an integer from 1 to 1000000, found `-1`"
            ),
            (
                "[2].enabled",
                "expected `true` or `false`, found the string `no`"
            ),
            (
                "[2].config.severity",
                "expected one of `info`, `low`, `medium`, `high`, `critical`, found `urgent`"
            ),
        ]
    );
    assert_eq!(agent_policy(&t, &a).await, before);
    assert!(overrides_set(&t).await.is_empty());
}

/// Regression (probe finding 5): with two overrides of one rule, the config error of the first
/// was reported at the second (`[1].config.threshold`; with three, at `[2]`), which has no
/// config at all.
#[tokio::test]
async fn a_config_error_points_into_its_override_when_another_names_the_same_rule() {
    let t = TestServer::start(true).await;
    t.post_policy(ADMIN, policy()).await;
    let (a, _) = t.enroll(ADMIN, "host-a").await;
    let before = agent_policy(&t, &a).await;

    for list in [
        json!([{"rule": 0, "config": {"threshold": 0}}, {"rule": 0, "enabled": false}]),
        json!([{"rule": 0, "config": {"threshold": 0}}, {"rule": 0, "enabled": false},
               {"rule": 1, "enabled": false}]),
        json!([{"rule": 0, "config": {"threshold": 0}}, {"rule": 1, "enabled": false},
               {"rule": 0, "enabled": false}]),
    ] {
        let (status, body) = put_overrides(&t, &a, list.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{list}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
        assert_eq!(body["error"]["path"], "[0].config.threshold", "{list}");
        assert_eq!(
            body["error"]["message"],
            "expected an integer from 1 to 1000000, found `0`"
        );
        let duplicate = if list[1]["rule"] == 0 {
            "[1].rule"
        } else {
            "[2].rule"
        };
        assert_eq!(
            error_list(&body),
            [
                (
                    "[0].config.threshold",
                    "expected an integer from 1 to 1000000, found `0`"
                ),
                (duplicate, "rule 0 already has an override at `[0]`"),
            ],
            "{list}"
        );
    }
    assert_eq!(agent_policy(&t, &a).await, before);
    assert!(overrides_set(&t).await.is_empty());
}
