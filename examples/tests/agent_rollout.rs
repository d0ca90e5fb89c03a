//! A staged rollout with real agents over TLS: a stage with an agent that refuses the version
//! (an agent pinned to an operator key, offered an unsigned version) fails the gate; the
//! rollout halts and its stage's agents are sent the previous version with `rollbackFrom`;
//! an agent outside the stage never gets the new version; everything is audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use crate::agent_common::*;
use policy_engine::signing::SigningKey;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_with_an_agent_that_refuses_the_version_halts_and_rolls_back() {
    let data = tempfile::tempdir().unwrap();
    let states = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let ca = ca_file(data.path());

    let (good, good_token) = admin.enroll("good").await;
    let (bad, bad_token) = admin.enroll("bad").await;
    let (outside, outside_token) = admin.enroll("outside").await;
    let key_file = states[1].path().join("operator.pub");
    let key = SigningKey::generate().unwrap();
    std::fs::write(&key_file, key.public_key().to_pem().unwrap()).unwrap();
    let mut bad_args = agent_args(&base, &ca, &bad_token, states[1].path());
    bad_args.extend(
        [
            "--policy-key",
            key_file.to_str().unwrap(),
            "--policy-org",
            "default",
        ]
        .map(str::to_owned),
    );
    let _good = AgentProcess::spawn_owned(&agent_args(&base, &ca, &good_token, states[0].path()));
    let _bad = AgentProcess::spawn_owned(&bad_args);
    let _outside =
        AgentProcess::spawn_owned(&agent_args(&base, &ca, &outside_token, states[2].path()));

    admin.post_policy(policy(5)).await;
    for agent in [&good, &outside] {
        admin
            .wait_agent(agent, "v1 running", |a| a["policyVersion"] == "v1")
            .await;
    }

    // A rollout of v2 whose first stage is the good and the bad agent.
    let (status, created) = admin
        .call(
            reqwest::Method::POST,
            "/api/rollouts",
            Some(json!({
                "policy": policy(6),
                "stages": [{"agents": [good, bad], "soakSecs": 3600}, {"percent": 100}],
                "gate": {"maxFailures": 0}
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let rollout = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["version"], "v2");
    assert_eq!(created["data"]["previous"], "v1");
    assert_eq!(created["data"]["state"], "running");

    // The bad agent refuses v2: the gate fails and the rollout is rolled back.
    let path = format!("/api/rollouts/{rollout}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let halted = loop {
        let (status, body) = admin.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        if body["data"]["state"] != "running" {
            break body["data"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(halted["state"], "rolled_back", "{halted}");
    assert_eq!(
        halted["reason"],
        format!(
            "1 agent(s) of stage 1 did not apply v2: `{bad}` refused it: policy v2 is not signed, and this agent accepts only signed policies"
        )
    );

    // The good agent is back on v1 (it accepted the rollback); the outside agent never got v2.
    let back = admin
        .wait_agent(&good, "the good agent back on v1", |a| {
            a["policyVersion"] == "v1" && a["ack"]["version"] == "v1"
        })
        .await;
    assert_eq!(back["assignedVersion"], "v1");
    assert_eq!(back["outdated"], false);
    let kept = admin.agent(&outside).await;
    assert_eq!(kept["policyVersion"], "v1");
    assert_eq!(kept["ack"]["version"], "v1", "{kept}");
    assert_eq!(kept["assignedVersion"], "v1");

    let (_, view) = admin
        .call(
            reqwest::Method::GET,
            &format!("/api/policy/agent/{good}"),
            None,
        )
        .await;
    assert_eq!(view["data"]["policyVersion"], "v1");
    assert_eq!(
        view["data"]["running"]["assignment"],
        format!("rollout `{rollout}` of v2 was rolled_back: back to v1")
    );

    // Audited: created, then rolled back by the server with the reason.
    let trail: Vec<(String, String)> = admin
        .audit("")
        .await
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("rollout_"))
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            ("rollout_rolled_back".to_owned(), "server".to_owned()),
            ("rollout_created".to_owned(), "admin".to_owned())
        ]
    );

    // A halted rollout takes no more operations; a new version may be posted again.
    let (status, body) = admin
        .call(reqwest::Method::POST, &format!("{path}/resume"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(admin.post_policy(policy(7)).await.to_string(), "v3");
}
