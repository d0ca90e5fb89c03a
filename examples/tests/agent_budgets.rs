//! Action budgets, with the real agent binary against the real server over TLS: with a
//! `kill_process` budget of 3 the fourth kill becomes an approval request (in
//! `GET /api/approvals`), runs once approved, and in `drop` mode a kill beyond the budget is
//! not executed but reported (`refused`, with why) and counted in the agent's metrics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::agent_common::*;
use serde_json::{Value, json};

/// Kills `malware` processes, at most 3 per hour (`onExceed` as given).
fn policy(on_exceed: &str) -> Value {
    json!({
        "name": format!("budgets {on_exceed}"),
        "rules": [
            {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
             "minConfidence": 0.5}}
        ],
        "budgets": {"kill_process": {"max": 3, "window": "1h", "onExceed": on_exceed}}
    })
}

/// A `sleep` the test owns, killed and reaped on drop.
struct Victim(Child);

impl Victim {
    fn spawn() -> Self {
        Self(Command::new("sleep").arg("600").spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it exited (reaping it).
    fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn malware(id: &str, pid: u32) -> String {
    format!("{{\"id\":\"{id}\",\"type\":\"malware\",\"confidence\":0.9,\"pid\":{pid}}}\n")
}

/// `GET path` as the admin until `ready` holds for its `data`.
async fn get_until(admin: &Admin, path: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = admin.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{body}");
        if ready(&body["data"]) {
            return body["data"].clone();
        }
        assert!(Instant::now() < deadline, "no {what}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent's metrics text once it holds `line`.
async fn metrics_until(addr: SocketAddr, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await {
            let text = response.text().await.unwrap();
            if text.lines().any(|l| l == line) {
                return text;
            }
            assert!(Instant::now() < deadline, "no `{line}` in {text}");
        }
        assert!(Instant::now() < deadline, "no metrics on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_three_turns_the_fourth_kill_into_an_approval_and_drop_mode_reports_it() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, token) = admin.enroll("budgets").await;
    admin.post_policy(policy("approval")).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let metrics: SocketAddr = listen.parse().unwrap();
    let ca = ca_file(data.path());
    let nft = FakeNft::new();
    let mut agent = AgentProcess::spawn_with(
        &[
            "--server",
            &base,
            "--ca-cert",
            ca.to_str().unwrap(),
            "--state-dir",
            state.path().to_str().unwrap(),
            "--agent-id",
            &agent_id,
            "--token",
            &token,
            "--heartbeat-secs",
            "0.2",
            "--metrics-listen",
            &listen,
        ],
        &nft.env(),
    );
    admin
        .wait_agent(&agent_id, "v1 running", |a| a["policyVersion"] == "v1")
        .await;

    // Four kills within the hour: three run, the fourth waits for an operator.
    let mut victims: Vec<Victim> = (0..4).map(|_| Victim::spawn()).collect();
    for (i, victim) in victims.iter().enumerate() {
        agent.send(&malware(&format!("m-{i}"), victim.pid()));
        assert!(agent.next_line().await.contains("kill_process"));
    }
    let pending = get_until(
        &admin,
        "/api/approvals?status=pending",
        "pending approval",
        |d| d.as_array().is_some_and(|a| a.len() == 1),
    )
    .await;
    let approval = &pending[0];
    assert_eq!(approval["agentId"], agent_id.as_str(), "{approval}");
    assert_eq!(approval["action"]["action"], "kill_process", "{approval}");
    assert_eq!(approval["action"]["pid"], victims[3].pid(), "{approval}");
    wait_for("the first three kills", Duration::from_secs(10), || {
        victims[..3].iter_mut().all(Victim::exited)
    })
    .await;
    assert!(!victims[3].exited(), "the fourth kill ran without approval");
    let requests = admin.audit("?action=approval_request").await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0]["detail"]["detail"],
        "budget of `kill_process` exceeded (3 per 1h)"
    );
    metrics_until(
        metrics,
        r#"policy_agent_budget_exceeded_total{action="kill_process",on_exceed="approval"} 1"#,
    )
    .await;

    // Approved, it runs (an approved action is not budgeted) and the approval closes.
    let (status, body) = admin.approve(approval["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    wait_for("the approved kill", Duration::from_secs(10), || {
        victims[3].exited()
    })
    .await;
    get_until(
        &admin,
        "/api/approvals?status=executed",
        "executed approval",
        |d| d.as_array().is_some_and(|a| a.len() == 1),
    )
    .await;

    // Drop mode: the budget (still spent in this hour, across versions) drops the next kill;
    // it is reported `refused` with why, and counted.
    admin.post_policy(policy("drop")).await;
    admin
        .wait_agent(&agent_id, "v2 running", |a| a["policyVersion"] == "v2")
        .await;
    let mut fifth = Victim::spawn();
    agent.send(&malware("m-4", fifth.pid()));
    assert!(agent.next_line().await.contains("kill_process"));
    let refused = refused_kill(&admin).await;
    assert_eq!(
        refused["detail"]["detail"],
        "budget of `kill_process` exceeded (3 per 1h)"
    );
    assert_eq!(refused["detail"]["record"]["pid"], fifth.pid());
    assert_eq!(refused["policyVersion"], "v2");
    let text = metrics_until(
        metrics,
        r#"policy_agent_budget_exceeded_total{action="kill_process",on_exceed="drop"} 1"#,
    )
    .await;
    assert!(
        text.lines().any(|l| l
            == r#"policy_agent_actions_total{action="kill_process",outcome="skipped",origin="budget"} 1"#),
        "{text}"
    );
    assert!(!fifth.exited(), "a dropped kill ran");
    // Still one approval in all: drop mode asked for nothing.
    let (_, all) = admin
        .call(reqwest::Method::GET, "/api/approvals", None)
        .await;
    assert_eq!(all["data"].as_array().unwrap().len(), 1, "{all}");
}

/// The audit entry of the refused (dropped) kill, once there is one.
async fn refused_kill(admin: &Admin) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entries = admin.audit("?action=kill_process").await;
        if let Some(entry) = entries.iter().find(|e| e["outcome"] == "refused") {
            return entry.clone();
        }
        assert!(Instant::now() < deadline, "no refused kill: {entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
