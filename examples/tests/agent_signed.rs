//! The reference agent pinned to operator keys, against the real server over TLS: an unsigned
//! version is refused (lastError at the server, nothing runs), a signed one runs, a restart keeps
//! it, a rotation accepts the new key, and a missing org or a bad key file stops the agent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;

use crate::agent_common::*;
use policy_engine::signing::SigningKey;
use policy_engine::{Policy, PolicyVersion};
use serde_json::{Value, json};

const MALWARE: &str = "{\"id\":\"evt-1\",\"type\":\"malware\",\"confidence\":0.9,\"pid\":4242}\n";

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn signed(key: &SigningKey, version: u64, document: &Value) -> Value {
    let policy = Policy::from_value(document).unwrap();
    json!({
        "orgId": "default",
        "version": format!("v{version}"),
        "policy": document,
        "signature": key.sign("default", PolicyVersion::new(version), &policy),
    })
}

fn write_key(dir: &Path, name: &str, key: &SigningKey) -> String {
    let file = dir.join(name);
    std::fs::write(&file, key.public_key().to_pem().unwrap()).unwrap();
    path(&file).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_agent_runs_only_what_the_operator_signed() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let ca = ca_file(data.path());
    let old = SigningKey::generate().unwrap();
    let new = SigningKey::generate().unwrap();
    let old_pub = write_key(keys.path(), "old.pub", &old);
    let new_pub = write_key(keys.path(), "new.pub", &new);

    let common = [
        "--server",
        base.as_str(),
        "--ca-cert",
        path(&ca),
        "--state-dir",
        path(state.path()),
        "--dry-run",
        "--heartbeat-secs",
        "0.2",
        "--first-policy-wait-secs",
        "0.2",
    ];
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        "--enroll",
        "--admin-token",
        ADMIN_TOKEN,
        "--hostname",
        "pinned",
        "--policy-key",
        &old_pub,
    ]);
    let mut agent = AgentProcess::spawn(&args);
    let credentials: Value = {
        let file = state.path().join("agent.json");
        wait_for("credentials", PROCESS_DEADLINE, || file.exists()).await;
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap()
    };
    assert_eq!(credentials["orgId"], "default");
    let agent_id = credentials["agentId"].as_str().unwrap().to_owned();

    // Unsigned v1: refused, nothing runs, the server sees why.
    admin.post_policy(policy(5)).await;
    let listed = admin
        .wait_agent(&agent_id, "the refusal", |a| {
            a["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("not signed"))
        })
        .await;
    assert_eq!(
        listed["lastError"],
        "policy v1 is not signed, and this agent accepts only signed policies"
    );
    assert!(listed["policyVersion"].is_null(), "{listed}");

    // Signed v2 runs.
    admin.post_policy(signed(&old, 2, &policy(6))).await;
    admin
        .wait_agent(&agent_id, "v2 running", |a| {
            a["policyVersion"] == "v2" && a["lastError"].is_null()
        })
        .await;
    agent.send(MALWARE);
    assert_eq!(
        agent.next_line().await,
        r#"{"action":"kill_process","pid":4242,"rule":0,"policyVersion":"v2","eventId":"evt-1"}"#
    );
    agent.kill_hard();

    // Restart pinned to both keys (a rotation): v2 from disk, then v3 by the new key.
    let mut args: Vec<&str> = common.to_vec();
    args.extend(["--policy-key", &old_pub, "--policy-key", &new_pub]);
    let mut agent = AgentProcess::spawn(&args);
    admin.post_policy(signed(&new, 3, &policy(7))).await;
    admin
        .wait_agent(&agent_id, "v3 running", |a| a["policyVersion"] == "v3")
        .await;
    agent.send(MALWARE);
    assert!(agent.next_line().await.contains(r#""policyVersion":"v3""#));
    agent.kill_hard();

    // Only the new key: an old-key signature is refused after the old key is revoked.
    let mut args: Vec<&str> = common.to_vec();
    args.extend(["--policy-key", &new_pub]);
    let _agent = AgentProcess::spawn(&args);
    admin.post_policy(signed(&old, 4, &policy(8))).await;
    let listed = admin
        .wait_agent(&agent_id, "the old key refused", |a| {
            a["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("not one of the pinned keys"))
        })
        .await;
    assert_eq!(listed["policyVersion"], "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_agent_without_an_org_or_with_a_bad_key_does_not_start() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (_, token) = admin.enroll("no-org").await;
    let key = SigningKey::generate().unwrap();
    let pub_file = write_key(state.path(), "operator.pub", &key);
    let ca = ca_file(data.path());
    let base_args = [
        "--server",
        base.as_str(),
        "--ca-cert",
        path(&ca),
        "--state-dir",
        path(state.path()),
        "--dry-run",
        "--token",
        &token,
    ];

    // A token given on the command line says nothing about the org.
    let mut args = base_args.to_vec();
    args.extend(["--policy-key", &pub_file]);
    let (code, stderr) = AgentProcess::spawn(&args).finish().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("agent: error: pinned signing keys need the agent's org: enroll with this state dir (the org is stored with the credentials) or give it (--policy-org)"), "{stderr}");

    // A private key where the public key belongs.
    let private = state.path().join("operator.key");
    std::fs::write(&private, key.to_pem().unwrap()).unwrap();
    let mut args = base_args.to_vec();
    args.extend(["--policy-key", path(&private), "--policy-org", "default"]);
    let (code, stderr) = AgentProcess::spawn(&args).finish().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "agent: error: {}: not an Ed25519 public key in PEM (",
            private.display()
        )),
        "{stderr}"
    );
}
