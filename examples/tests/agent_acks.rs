//! Acks, with the real agent binary against the real server over TLS: every agent acks the
//! version it was offered in its heartbeats (applied with the actions since, or refused with
//! why), and `GET /api/agents` and `GET /api/policy/agent/:id` show it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;

use crate::agent_common::*;
use policy_engine::signing::SigningKey;
use serde_json::{Value, json};

const MALWARE: &str = "{\"id\":\"evt-1\",\"type\":\"malware\",\"confidence\":0.9,\"pid\":4242}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_ack_each_version_applied_or_refused_with_their_action_counts() {
    let data = tempfile::tempdir().unwrap();
    let plain_state = tempfile::tempdir().unwrap();
    let pinned_state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let ca = ca_file(data.path());
    let key_file = pinned_state.path().join("operator.pub");
    let key = SigningKey::generate().unwrap();
    std::fs::write(&key_file, key.public_key().to_pem().unwrap()).unwrap();

    let (plain_id, plain_token) = admin.enroll("plain").await;
    let (pinned_id, pinned_token) = admin.enroll("pinned").await;
    let args = |token: &str, state: &Path| agent_args(&base, &ca, token, state);
    let plain_args = args(&plain_token, plain_state.path());
    let mut pinned_args = args(&pinned_token, pinned_state.path());
    pinned_args.extend([
        "--policy-key".to_owned(),
        key_file.to_str().unwrap().to_owned(),
        "--policy-org".to_owned(),
        "default".to_owned(),
    ]);
    let mut plain = AgentProcess::spawn_owned(&plain_args);
    let _pinned = AgentProcess::spawn_owned(&pinned_args);

    admin.post_policy(policy(5)).await;
    let applied = admin
        .wait_agent(&plain_id, "the plain agent's ack", |a| {
            a["ack"]["version"] == "v1"
        })
        .await;
    assert_eq!(applied["ack"]["status"], "applied", "{applied}");
    assert!(applied["ack"].get("actions").is_none(), "{applied}");
    let refused = admin
        .wait_agent(&pinned_id, "the pinned agent's ack", |a| {
            a["ack"]["version"] == "v1"
        })
        .await;
    assert_eq!(refused["ack"]["status"], "refused", "{refused}");
    assert_eq!(
        refused["ack"]["error"],
        "policy v1 is not signed, and this agent accepts only signed policies"
    );
    assert_eq!(refused["policyVersion"], Value::Null);

    // Actions since the version was applied are counted in the ack.
    plain.send(MALWARE);
    assert!(plain.next_line().await.contains("kill_process"));
    plain.send(MALWARE);
    assert!(plain.next_line().await.contains("kill_process"));
    let counted = admin
        .wait_agent(&plain_id, "the action counts", |a| {
            a["ack"]["actions"]["kill_process"] == 2
        })
        .await;
    assert_eq!(counted["ack"]["actions"], json!({"kill_process": 2}));
    // And the events evaluated since, with those on which a condition failed (none here).
    assert_eq!(counted["ack"]["events"], 2, "{counted}");
    assert!(counted["ack"].get("conditionErrors").is_none(), "{counted}");

    // The agent's view says what it runs and why.
    let (status, view) = admin
        .call(
            reqwest::Method::GET,
            &format!("/api/policy/agent/{pinned_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{view}");
    let running = &view["data"]["running"];
    assert_eq!(running["policyVersion"], Value::Null);
    assert_eq!(running["ack"]["status"], "refused");
    assert_eq!(running["ack"]["version"], "v1");
    assert!(
        running["lastError"]
            .as_str()
            .unwrap()
            .contains("is not signed")
    );

    // A new version: the counts start again from zero.
    admin.post_policy(policy(6)).await;
    let reapplied = admin
        .wait_agent(&plain_id, "the ack of v2", |a| a["ack"]["version"] == "v2")
        .await;
    assert_eq!(reapplied["ack"]["status"], "applied");
    assert!(reapplied["ack"].get("actions").is_none(), "{reapplied}");
}
