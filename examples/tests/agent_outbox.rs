//! The durable outbox with the real agent binary and the real reference server: actions taken
//! while the server is down reach the audit after it is back, exactly once, even across a
//! `kill -9` of the agent and a resend of reports the server already has; a fleet block taken
//! during the outage reaches the other agents.
//!
//! Agent A starts with its token only and learns its id from the server.
//!
//! Regression test for issue 14: reports were retried for about 1.4 s and then dropped, so the
//! audit never learned of an outage's actions and its fleet blocks never spread.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::agent_common::*;
use serde_json::{Value, json};

const ATTACKER: &str = "198.51.100.23";
const DEADLINE: Duration = Duration::from_secs(15);

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The report files waiting in an agent's outbox.
fn outbox(state: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("outbox"))
        .map(|dir| {
            dir.map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name().unwrap().to_str().unwrap().ends_with(".json")
                        && !p.ends_with("dropped.json")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// An enforcing agent (fake `nft`) reading events from stdin. Given only its token, it learns
/// its id from the server.
fn spawn_agent(
    base: &str,
    ca: &Path,
    state: &Path,
    id: Option<&str>,
    token: &str,
    nft: &FakeNft,
) -> AgentProcess {
    let mut args = vec![
        "--server",
        base,
        "--ca-cert",
        path(ca),
        "--state-dir",
        path(state),
        "--token",
        token,
        "--heartbeat-secs",
        "0.2",
        "--max-backoff-secs",
        "0.2",
    ];
    if let Some(id) = id {
        args.extend(["--agent-id", id]);
    }
    AgentProcess::spawn_with(&args, &nft.env())
}

/// Entries of the audit written by `agent_id` for `action` (`block_ip`: only fleet-scope ones,
/// not the host-scope blocks a reconnecting agent applies from the server's fleet list).
async fn audit_of(admin: &Admin, agent_id: &str, action: &str) -> Vec<Value> {
    admin
        .audit(&format!("?agent={agent_id}&action={action}"))
        .await
        .into_iter()
        .filter(|e| action != "block_ip" || e["detail"]["record"]["scope"] == "fleet")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outages_actions_reach_the_audit_once_and_its_fleet_block_the_fleet() {
    let data = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (nft_a, nft_b) = (FakeNft::new(), FakeNft::new());
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let addr = server.local_addr();
    let base = server.base_url();
    let ca = ca_file(data.path());
    let admin = Admin::new(&base, data.path());
    let (id_a, token_a) = admin.enroll("host-a").await;
    let (id_b, token_b) = admin.enroll("host-b").await;
    admin
        .post_policy(json!({
            "name": "outage",
            "rules": [
                {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 1,
                 "duration": "1h", "scope": "fleet"}},
                {"type": "auto_respond", "config": {"trigger": "malware",
                 "action": "kill_process", "minConfidence": 0.5}}
            ]
        }))
        .await;
    let mut agent_a = spawn_agent(&base, &ca, state_a.path(), None, &token_a, &nft_a);
    let agent_b = spawn_agent(&base, &ca, state_b.path(), Some(&id_b), &token_b, &nft_b);
    for id in [&id_a, &id_b] {
        admin
            .wait_agent(id, "v1 running", |a| a["policyVersion"] == "v1")
            .await;
    }

    // The server goes away; agent A blocks an attacker (fleet scope) and kills a process.
    server.shutdown().await;
    let mut victim: Child = Command::new("sleep").arg("600").spawn().unwrap();
    agent_a.send(&format!(
        "{{\"id\":\"b-1\",\"type\":\"brute_force\",\"srcIp\":\"{ATTACKER}\"}}\n\
         {{\"id\":\"m-1\",\"type\":\"malware\",\"confidence\":0.9,\"pid\":{}}}\n",
        victim.id()
    ));
    wait_for("the block and the kill", DEADLINE, || {
        nft_a.scripts().contains(ATTACKER) && victim.try_wait().unwrap().is_some()
    })
    .await;
    // Both reports are on disk before anything could send them; then the agent dies hard.
    wait_for("two reports in the outbox", DEADLINE, || {
        outbox(state_a.path()).len() == 2
    })
    .await;
    let saved: Vec<(PathBuf, Vec<u8>)> = outbox(state_a.path())
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    for (_, bytes) in &saved {
        let report: Value = serde_json::from_slice(bytes).unwrap();
        assert!(
            report["reportId"].as_str().unwrap().starts_with("rpt_"),
            "{report}"
        );
    }
    agent_a.kill_hard();

    // The server comes back on the same address; agent A restarts over the same state dir.
    let server = start_server(data.path(), addr).await;
    let agent_a = spawn_agent(&base, &ca, state_a.path(), None, &token_a, &nft_a);
    let blocks = loop {
        let entries = audit_of(&admin, &id_a, "block_ip").await;
        let kills = audit_of(&admin, &id_a, "kill_process").await;
        if !entries.is_empty() && !kills.is_empty() {
            break (entries, kills);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (entries, kills) = blocks;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["outcome"], "executed");
    assert_eq!(entries[0]["detail"]["record"]["scope"], "fleet");
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0]["outcome"], "executed");
    wait_for("an empty outbox", DEADLINE, || {
        outbox(state_a.path()).is_empty()
    })
    .await;

    // The fleet block taken during the outage reaches agent B.
    wait_for("the fleet block on agent B", DEADLINE, || {
        nft_b.scripts().contains(ATTACKER)
    })
    .await;

    // A lost acknowledgement: the same reports again, as if the agent had died before it could
    // delete them. The server answers them without recording them twice.
    agent_a.kill_hard();
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    let agent_a = spawn_agent(&base, &ca, state_a.path(), None, &token_a, &nft_a);
    wait_for("the resent reports to be acknowledged", DEADLINE, || {
        outbox(state_a.path()).is_empty()
    })
    .await;
    assert_eq!(audit_of(&admin, &id_a, "block_ip").await.len(), 1);
    assert_eq!(audit_of(&admin, &id_a, "kill_process").await.len(), 1);

    let (code, stderr) = agent_a.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    drop(agent_b);
    server.shutdown().await;
}

/// A `kill -9` while the agent files a burst of reports leaves only whole reports: every file
/// in the outbox is a complete report, and a restart finds them all.
#[tokio::test]
async fn a_kill_during_a_burst_of_reports_leaves_only_whole_reports() {
    let state = tempfile::tempdir().unwrap();
    // A budget that lets the whole burst through (the default is 20 kills a minute).
    let policy = policy_engine::Policy::from_value(&json!({
        "name": "kills",
        "rules": [{"type": "auto_respond", "config": {"trigger": "malware",
                   "action": "kill_process", "minConfidence": 0.5}}],
        "budgets": {"kill_process": {"max": 10000, "window": "1m"}}
    }))
    .unwrap();
    policy_engine::sync::StateStore::new(state.path())
        .save(&policy_engine::sync::StoredPolicy {
            version: policy_engine::PolicyVersion::new(1),
            policy,
            signature: None,
        })
        .unwrap();
    // Nothing listens on port 1: every report stays in the outbox. A dry run files them fast.
    let mut agent = AgentProcess::spawn(&[
        "--server",
        "https://127.0.0.1:1",
        "--insecure",
        "--token",
        "agt_offline",
        "--state-dir",
        path(state.path()),
        "--dry-run",
    ]);
    let burst: String = (0..5000)
        .map(|n| {
            format!(
                "{{\"id\":\"m-{n}\",\"type\":\"malware\",\"confidence\":0.9,\"pid\":{}}}\n",
                100_000 + n
            )
        })
        .collect();
    agent.send(&burst);
    wait_for("the filing to be under way", DEADLINE, || {
        outbox(state.path()).len() >= 50
    })
    .await;
    agent.kill_hard();
    let files = outbox(state.path());
    assert!(files.len() >= 50 && files.len() < 5000, "{}", files.len());
    for file in &files {
        let report: Value = serde_json::from_slice(&std::fs::read(file).unwrap())
            .unwrap_or_else(|err| panic!("{}: {err}", file.display()));
        let report = policy_engine::protocol::Report::from_value(&report).unwrap();
        assert_eq!(report.record.action.name(), "kill_process");
    }
    let reopened = policy_engine::agent::Outbox::open(
        &state.path().join("outbox"),
        policy_engine::agent::OutboxLimits::default(),
    )
    .unwrap();
    assert_eq!(reopened.len(), files.len());
    let names: Vec<String> = std::fs::read_dir(state.path().join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".json") && !n.starts_with('.')),
        "temp files of interrupted writes are cleaned up on open: {names:?}"
    );
}

/// While the server is away a full outbox drops its oldest reports; once the server is back,
/// the heartbeat says how many were dropped, and the newest reports reach the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_and_the_heartbeat_says_so() {
    use policy_engine::agent::{Agent, OutboxLimits, Settings};
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let addr = server.local_addr();
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, token) = admin.enroll("small-outbox").await;
    admin
        .post_policy(json!({
            "name": "kills",
            "rules": [{"type": "auto_respond", "config": {"trigger": "malware",
                       "action": "kill_process", "minConfidence": 0.5}}]
        }))
        .await;
    let mut settings = Settings {
        heartbeat_interval: Duration::from_millis(100),
        upkeep_interval: Duration::from_millis(100),
        ..Settings::default()
    };
    settings.backoff.max = Duration::from_millis(200);
    let agent = Agent::builder(&base, state.path())
        .token(&token)
        .trust(policy_engine::sync::TlsTrust::CaFile(ca_file(data.path())))
        .settings(settings)
        .outbox_limits(OutboxLimits {
            max_reports: 3,
            max_bytes: 1 << 20,
        })
        .dry_run(true)
        .start()
        .await
        .unwrap();
    let handle = agent.handle();
    let run = tokio::spawn(agent.run());
    admin
        .wait_agent(&agent_id, "v1 running", |a| a["policyVersion"] == "v1")
        .await;
    server.shutdown().await;
    for n in 0..5 {
        let event = policy_engine::ThreatEvent::from_json(
            format!(
                "{{\"id\":\"m-{n}\",\"type\":\"malware\",\"confidence\":0.9,\"pid\":{}}}",
                200_000 + n
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(handle.process(&event).len(), 1);
    }
    assert!(handle.settled(DEADLINE).await);
    assert_eq!(handle.pending_reports(), 3);
    assert_eq!(handle.dropped_reports().count, 2);
    // Kills run side by side, so which three are the newest is the filing order: the files.
    let mut kept: Vec<String> = outbox(state.path())
        .iter()
        .map(|file| {
            let report: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
            report["eventId"].as_str().unwrap().to_owned()
        })
        .collect();
    kept.sort_unstable();

    let server = start_server(data.path(), addr).await;
    let seen = admin
        .wait_agent(&agent_id, "the drops in lastError", |a| {
            a["lastError"]
                .as_str()
                .is_some_and(|e| e.starts_with("outbox: 2 action reports dropped, the last at "))
        })
        .await;
    let error = seen["lastError"].as_str().unwrap();
    assert!(
        error.ends_with(
            ": 2 because the outbox was full (it keeps at most 3 reports and 1048576 bytes \
             while the server is unreachable); the audit misses them"
        ),
        "{error}"
    );
    wait_for("an empty outbox", DEADLINE, || {
        handle.pending_reports() == 0
    })
    .await;
    let kills = audit_of(&admin, &agent_id, "kill_process").await;
    let mut events: Vec<String> = kills
        .iter()
        .map(|e| {
            e["detail"]["record"]["eventId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    events.sort_unstable();
    assert_eq!(
        events, kept,
        "the three reports kept are the ones that arrive"
    );
    handle.shutdown();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.reports_left, 0);
    server.shutdown().await;
}
