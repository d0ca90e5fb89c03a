//! Regression tests for the two stalls of issue 14, with the real agent binary and the real
//! reference server: executor work (a hung `nft`, kills waiting out their grace period) must
//! not delay heartbeats, policy updates or another action.
//!
//! Before the fix, a fake `nft` hanging on one block gave a 25 s heartbeat gap and applied the
//! next policy 23.7 s late, and four approved kills of processes ignoring SIGTERM spaced
//! heartbeats 5-6 s apart. Here every delay is asserted against a deadline far below those
//! figures, and the measured values are printed (`--nocapture`) for the record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent_common::*;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Heartbeats every 200 ms: a gap of a second means a stall.
const HEARTBEAT: &str = "0.2";
/// What the tests allow for a policy apply, another action and a heartbeat gap; the target is
/// 100 ms of delay, the margin is for a loaded CI machine.
const LIMIT: Duration = Duration::from_secs(1);

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Blocks on `brute_force` at once, kills on `malware`, kills on `miner` after approval.
fn policy(threshold: u32) -> Value {
    json!({
        "name": format!("stalls {threshold}"),
        "rules": [
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": threshold,
             "duration": "1h", "scope": "host"}},
            {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
             "minConfidence": 0.5}},
            {"type": "auto_respond", "config": {"trigger": "miner", "action": "kill_process",
             "minConfidence": 0.5, "requireApproval": true}}
        ]
    })
}

/// A child process run by `sh -c script`, killed and reaped on drop.
struct Process(Child);

impl Process {
    fn spawn(script: &str) -> Self {
        Self(Command::new("sh").args(["-c", script]).spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it exited (reaping it).
    fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Watches the agent's `lastSeen` on the server (polled every 10 ms) and keeps each distinct
/// value: the gaps between them are the gaps between heartbeats, as the server saw them.
struct HeartbeatWatch {
    seen: Arc<Mutex<Vec<DateTime<Utc>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HeartbeatWatch {
    fn start(admin: Arc<Admin>, agent_id: String) -> Self {
        let seen: Arc<Mutex<Vec<DateTime<Utc>>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let agent = admin.agent(&agent_id).await;
                if let Some(at) = agent["lastSeen"].as_str() {
                    let at: DateTime<Utc> = at.parse().unwrap();
                    let mut seen = record.lock().unwrap();
                    if seen.last() != Some(&at) {
                        seen.push(at);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self { seen, task }
    }

    /// The longest gap between heartbeats so far, and how many there were.
    fn stop(self) -> (Duration, usize) {
        self.task.abort();
        let seen = self.seen.lock().unwrap();
        let worst = seen
            .windows(2)
            .map(|w| (w[1] - w[0]).to_std().unwrap())
            .max()
            .unwrap_or_default();
        (worst, seen.len())
    }
}

/// Posts `document` and returns how long the agent took to report running it.
async fn policy_apply_delay(admin: &Admin, agent_id: &str, document: Value) -> Duration {
    let posted = Instant::now();
    let version = admin.post_policy(document).await.to_string();
    admin
        .wait_agent(agent_id, "the new policy", |a| {
            a["policyVersion"] == version.as_str()
        })
        .await;
    posted.elapsed()
}

/// Sends a `malware` event naming a fresh cooperative process and returns how long until it
/// was killed.
async fn kill_delay(agent: &mut AgentProcess, id: &str) -> Duration {
    let mut victim = Process::spawn("exec sleep 600");
    let pid = victim.pid();
    let sent = Instant::now();
    agent.send(&format!(
        "{{\"id\":\"{id}\",\"type\":\"malware\",\"confidence\":0.9,\"pid\":{pid}}}\n"
    ));
    wait_for("the kill of a cooperative process", LIMIT * 5, || {
        victim.exited()
    })
    .await;
    sent.elapsed()
}

/// The audit's entries for `query`, once `ready` holds for them.
async fn audit_until(
    admin: &Admin,
    query: &str,
    what: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entries = admin.audit(query).await;
        if ready(&entries) {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the audit: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Setup {
    server: reference_server::RunningServer,
    admin: Arc<Admin>,
    agent_id: String,
    agent: AgentProcess,
    _data: tempfile::TempDir,
    _state: tempfile::TempDir,
}

/// The server with policy v1, and an enforcing agent (not a dry run) on a fake `nft`.
async fn setup(nft: &FakeNft, extra: &[&str]) -> Setup {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Arc::new(Admin::new(&base, data.path()));
    let (agent_id, token) = admin.enroll("stalls").await;
    admin.post_policy(policy(1)).await;
    let ca = ca_file(data.path());
    let mut args = vec![
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
        "--heartbeat-secs",
        HEARTBEAT,
    ];
    args.extend_from_slice(extra);
    let agent = AgentProcess::spawn_with(&args, &nft.env());
    admin
        .wait_agent(&agent_id, "v1 running", |a| a["policyVersion"] == "v1")
        .await;
    Setup {
        server,
        admin,
        agent_id,
        agent,
        _data: data,
        _state: state,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_nft_delays_no_heartbeat_policy_or_other_action_and_is_killed_at_its_timeout() {
    let nft = FakeNft::new();
    let Setup {
        server,
        admin,
        agent_id,
        mut agent,
        _data,
        _state,
    } = setup(&nft, &["--command-timeout-secs", "3"]).await;

    // A block whose `nft` hangs.
    let heartbeats = HeartbeatWatch::start(admin.clone(), agent_id.clone());
    agent.send(&format!(
        "{{\"id\":\"b-1\",\"type\":\"brute_force\",\"srcIp\":\"{}\"}}\n",
        FakeNft::HANG_IP
    ));
    wait_for("the hanging nft", LIMIT * 5, || nft.hung().is_some()).await;
    let hung_at = Instant::now();
    let hung = nft.hung().unwrap();

    // While it hangs: a new policy and a kill go through at once.
    let apply = policy_apply_delay(&admin, &agent_id, policy(2)).await;
    let kill = kill_delay(&mut agent, "m-1").await;
    assert!(apply < LIMIT, "policy v2 applied {apply:?} after the POST");
    assert!(kill < LIMIT, "the kill took {kill:?}");
    assert!(
        !process_gone(hung),
        "the nft should still hang at this point"
    );

    // The hung nft is killed at its timeout (3 s) and the block reported as failed.
    wait_for("the hung nft to be killed", Duration::from_secs(10), || {
        process_gone(hung)
    })
    .await;
    let killed = hung_at.elapsed();
    let entries = audit_until(&admin, "?action=block_ip", "failed block", |e| {
        !e.is_empty()
    })
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["outcome"], "failed", "{entries:?}");
    let detail = entries[0]["detail"]["detail"].as_str().unwrap();
    assert!(
        detail.ends_with("nft -f -` did not finish within 3s: killed"),
        "{detail}"
    );
    let (worst_gap, count) = heartbeats.stop();
    assert!(
        worst_gap < LIMIT,
        "heartbeats {worst_gap:?} apart while nft hung"
    );
    assert!(
        count >= 10,
        "only {count} heartbeats in {:?}",
        hung_at.elapsed()
    );
    assert!(
        killed < Duration::from_secs(5),
        "the hung nft lived {killed:?} after it was seen hanging (timeout 3 s)"
    );
    eprintln!(
        "hung nft: policy v2 live {apply:?} after the POST, another kill done in {kill:?}, \
         worst heartbeat gap {worst_gap:?} over {count} heartbeats, nft killed ~{killed:?} after \
         it was seen hanging (timeout 3 s)"
    );
    drop(agent);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_waiting_out_their_grace_period_delay_no_heartbeat_policy_or_other_action() {
    let nft = FakeNft::new();
    let Setup {
        server,
        admin,
        agent_id,
        mut agent,
        _data,
        _state: state,
    } = setup(&nft, &[]).await;
    let marks = state.path().join("term");
    std::fs::create_dir(&marks).unwrap();

    // Four processes that note SIGTERM and go on: the agent needs its 5 s grace period and
    // SIGKILL for each.
    let mut stubborn: Vec<Process> = (0..4)
        .map(|i| {
            Process::spawn(&format!(
                "trap 'touch {}/{i}' TERM; while :; do sleep 0.05; done",
                marks.display()
            ))
        })
        .collect();
    for (i, process) in stubborn.iter().enumerate() {
        agent.send(&format!(
            "{{\"id\":\"s-{i}\",\"type\":\"miner\",\"confidence\":0.9,\"pid\":{}}}\n",
            process.pid()
        ));
    }
    let requests = audit_until(
        &admin,
        "?action=approval_request",
        "4 approval requests",
        |e| e.len() == 4,
    )
    .await;
    let heartbeats = HeartbeatWatch::start(admin.clone(), agent_id.clone());
    let approved = Instant::now();
    for request in &requests {
        let id = request["detail"]["approvalId"].as_str().unwrap();
        let (status, body) = admin.approve(id).await;
        assert_eq!(status, 200, "{body}");
    }
    wait_for("SIGTERM to all four", LIMIT * 5, || {
        (0..4).all(|i| marks.join(i.to_string()).exists())
    })
    .await;

    // While the four kills wait out their grace periods: a policy, another kill and a block go
    // through.
    let apply = policy_apply_delay(&admin, &agent_id, policy(2)).await;
    let kill = kill_delay(&mut agent, "m-1").await;
    let sent = Instant::now();
    // v2 blocks on the second event from an address.
    agent.send(
        "{\"id\":\"b-1\",\"type\":\"brute_force\",\"srcIp\":\"198.51.100.4\"}\n\
         {\"id\":\"b-2\",\"type\":\"brute_force\",\"srcIp\":\"198.51.100.4\"}\n",
    );
    let block = wait_for("the block in nft", LIMIT * 5, || {
        nft.scripts().contains("198.51.100.4 timeout")
    })
    .await;
    assert!(apply < LIMIT, "policy v2 applied {apply:?} after the POST");
    assert!(kill < LIMIT, "the kill took {kill:?}");
    assert!(block < LIMIT, "the block took {:?}", sent.elapsed());
    assert!(
        !stubborn.iter_mut().any(Process::exited),
        "the grace period (5 s) is not over yet"
    );

    // The four kills run side by side: all done in about one grace period, not four.
    wait_for(
        "the four stubborn processes to die",
        Duration::from_secs(15),
        || stubborn.iter_mut().all(Process::exited),
    )
    .await;
    let took = approved.elapsed();
    assert!(took < Duration::from_secs(9), "four kills took {took:?}");
    let outcomes = audit_until(&admin, "?action=kill_process", "5 kill reports", |e| {
        e.len() == 5
    })
    .await;
    let sigkills = outcomes
        .iter()
        .filter(|e| {
            e["detail"]["detail"]
                .as_str()
                .unwrap()
                .ends_with("killed with SIGKILL after a 5000ms grace period")
        })
        .count();
    assert_eq!(sigkills, 4, "{outcomes:?}");
    let (worst_gap, count) = heartbeats.stop();
    assert!(
        worst_gap < LIMIT,
        "heartbeats {worst_gap:?} apart during the kills"
    );
    eprintln!(
        "4 kills in grace: policy v2 live {apply:?} after the POST, another kill done in \
         {kill:?}, a block in nft after {block:?}, worst heartbeat gap {worst_gap:?} over {count} heartbeats, all four dead \
         {took:?} after approval"
    );
    drop(agent);
    server.shutdown().await;
}
