//! The `agent` example as a user runs it: enrollment by flag, events on stdin, actions on
//! stdout, bad lines reported with their numbers, and enforcement from disk when the server is
//! unreachable.

// The process guard below is test code too: it fails loudly like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent_common::*;
use policy_engine::PolicyVersion;
use policy_engine::sync::{StateStore, StoredPolicy};

const MALWARE: &str = r#"{"id":"evt-1","type":"malware","confidence":0.9,"pid":4242}"#;

fn kill_line(version: &str) -> String {
    format!(
        r#"{{"action":"kill_process","pid":4242,"rule":0,"policyVersion":"{version}","eventId":"evt-1"}}"#
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_follows_policies_and_skips_bad_lines() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let ca = ca_file(data.path());
    let mut agent = AgentProcess::spawn(&[
        "--server",
        &base,
        "--ca-cert",
        path(&ca),
        "--state-dir",
        path(state.path()),
        "--enroll",
        "--admin-token",
        ADMIN_TOKEN,
        "--hostname",
        "cli-host",
        "--dry-run",
        "--heartbeat-secs",
        "0.2",
    ]);

    // Enrollment stored the credentials; the agent reports the policy once it runs it.
    let credentials = state.path().join("agent.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !credentials.exists() {
        assert!(Instant::now() < deadline, "no credentials file");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&credentials).unwrap()).unwrap();
    let agent_id = stored["agentId"].as_str().unwrap().to_owned();
    let listed = admin.agent(&agent_id).await;
    assert_eq!(listed["hostname"], "cli-host");
    admin.post_policy(policy(1)).await;
    admin
        .wait_agent(&agent_id, "v1 running", |a| a["policyVersion"] == "v1")
        .await;

    agent.send("not json\n\n");
    agent.send(&format!("{MALWARE}\n"));
    assert_eq!(agent.next_line().await, kill_line("v1"));
    agent.send("{\"type\":\"malware\",\"pid\":-1}\n");

    admin.post_policy(policy(2)).await;
    admin
        .wait_agent(&agent_id, "v2 running", |a| a["policyVersion"] == "v2")
        .await;
    agent.send(&format!("{MALWARE}\n"));
    assert_eq!(agent.next_line().await, kill_line("v2"));

    let (code, stderr) = agent.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("event line 1: expected ident at line 1 column 2; skipped"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "event line 4: field `pid`: expected an integer from 0 to 4294967295, found `-1` at line 1 column 26; skipped"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("event line 3"), "{stderr}");
    server.shutdown().await;
}

#[tokio::test]
async fn unreachable_server_still_enforces_the_policy_on_disk() {
    let state = tempfile::tempdir().unwrap();
    let policy = policy_engine::Policy::from_value(&policy(3)).unwrap();
    StateStore::new(state.path())
        .save(&StoredPolicy {
            version: PolicyVersion::new(7),
            policy,
            signature: None,
        })
        .unwrap();
    // Port 1 on loopback: nothing listens, connections are refused.
    let mut agent = AgentProcess::spawn(&[
        "--server",
        "https://127.0.0.1:1",
        "--insecure",
        "--agent-id",
        "agent-offline",
        "--token",
        "agt_offline",
        "--state-dir",
        path(state.path()),
        "--dry-run",
        "--max-backoff-secs",
        "0.2",
    ]);
    agent.send(&format!("{MALWARE}\n"));
    assert_eq!(agent.next_line().await, kill_line("v7"));
    let (code, stderr) = agent.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("enforcing the last known good policy from disk version=v7"),
        "{stderr}"
    );
}

#[tokio::test]
async fn unreadable_ca_file_is_a_clear_error() {
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("missing-ca.pem");
    let agent = AgentProcess::spawn(&[
        "--server",
        "https://127.0.0.1:1",
        "--ca-cert",
        path(&missing),
        "--agent-id",
        "a",
        "--token",
        "t",
        "--state-dir",
        path(state.path()),
        "--dry-run",
    ]);
    let (code, stderr) = agent.finish().await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "agent: error: cannot read CA certificate `{}`: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sshd_log_is_one_more_event_source() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, token) = admin.enroll("ssh-host").await;
    admin.post_policy(policy(3)).await;
    // The log does not exist yet: the agent waits for it, as `tail -F` does.
    let log = state.path().join("auth.log");
    let ca = ca_file(data.path());
    let agent = AgentProcess::spawn(&[
        "--server",
        &base,
        "--ca-cert",
        path(&ca),
        "--state-dir",
        path(state.path()),
        "--agent-id",
        &agent_id,
        "--token",
        &token,
        "--sshd-log",
        path(&log),
        "--from-start",
        "--dry-run",
    ]);
    admin
        .wait_agent(&agent_id, "v1 running", |a| a["policyVersion"] == "v1")
        .await;
    // Three failed attempts from one address (the first is one attempt over two lines, the
    // last in IPv4-mapped notation), two from another: only the first reaches the threshold.
    std::fs::write(
        &log,
        "Mar  7 12:00:01 web1 sshd[101]: Invalid user admin from 203.0.113.9 port 50001\n\
         Mar  7 12:00:02 web1 sshd[101]: Failed password for invalid user admin from 203.0.113.9 port 50001 ssh2\n\
         Mar  7 12:00:03 web1 sshd[101]: Failed password for invalid user admin from 203.0.113.9 port 50001 ssh2\n\
         Mar  7 12:00:04 web1 sshd[102]: Failed password for root from 198.51.100.4 port 40000 ssh2\n\
         Mar  7 12:00:05 web1 sshd[102]: Failed password for root from 198.51.100.4 port 40000 ssh2\n\
         Mar  7 12:00:06 web1 sshd[103]: Failed password for root from ::ffff:203.0.113.9 port 50002 ssh2\n",
    )
    .unwrap();
    let line = agent.next_line().await;
    let action: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(action["action"], "block_ip", "{line}");
    assert_eq!(action["ip"], "203.0.113.9", "{line}");
    assert_eq!(action["policyVersion"], "v1", "{line}");
    assert!(
        agent.stdout.try_recv().is_err(),
        "a second action, but 198.51.100.4 is below the threshold"
    );
    drop(agent);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_waits_for_the_policy_before_reading_events() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, token) = admin.enroll("first-start").await;
    let ca = ca_file(data.path());
    let mut agent = AgentProcess::spawn(&[
        "--server",
        &base,
        "--ca-cert",
        path(&ca),
        "--state-dir",
        path(state.path()),
        "--agent-id",
        &agent_id,
        "--token",
        &token,
        "--dry-run",
    ]);
    // The events are all there, and the input ends, before the org has any policy.
    agent.send(&format!("{MALWARE}\n"));
    drop(agent.stdin.take());
    admin.post_policy(policy(1)).await;
    // Without the wait the agent would have read the event against no rules and exited.
    assert_eq!(agent.next_line().await, kill_line("v1"));
    let (code, stderr) = agent.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    server.shutdown().await;
}
