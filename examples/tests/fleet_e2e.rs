//! The fleet loop end to end: the TLS reference server and three enrolled agents, each with its
//! own nftables firewall in its own network namespace. A fleet block from one agent reaches the
//! other two agents' sets within a second; an approval round trip executes once (a replay after
//! a restart does nothing); the audit log answers who blocked what; lifting the block clears
//! every set.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent_common;
use crate::agent_common::{ADMIN_TOKEN, ca_file, wait_version};
use policy_engine::agent::{Agent, AgentHandle, RunSummary, Settings};
use policy_engine::executor::{Executor, HostConfig, HostExecutor, Outcome};
use policy_engine::protocol::{ApprovalEvent, BlockEvent, FleetEvent};
use policy_engine::sync::{BackoffConfig, TlsTrust};
use policy_engine::{Action, ActionRecord, ThreatEvent};
use reference_server::{ServerConfig, TlsMode};
use serde_json::{Value, json};

const TABLE: &str = "policy_engine_fleet";

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(index: usize) -> Self {
        let name = format!("pe-fleet-{}-{index}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    /// The addresses in the firewall's IPv4 set.
    fn blocked(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "nft",
                "-j",
                "list",
                "set",
                "inet",
                TABLE,
                "blocked_v4",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut ips = Vec::new();
        for item in json["nftables"].as_array().unwrap() {
            for e in item["set"]["elem"].as_array().into_iter().flatten() {
                match e {
                    Value::String(ip) => ips.push(ip.clone()),
                    _ => ips.push(e["elem"]["val"].as_str().unwrap().to_owned()),
                }
            }
        }
        ips
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The host executor of one agent (nftables in its namespace), counting what it executed.
struct Counting {
    host: HostExecutor,
    executed: Arc<Mutex<Vec<ActionRecord>>>,
}

impl Executor for Counting {
    fn execute(&self, record: &ActionRecord) -> Outcome {
        self.executed.lock().unwrap().push(record.clone());
        self.host.execute(record)
    }

    fn unblock(&self, ip: IpAddr) -> Outcome {
        self.host.unblock(ip)
    }
}

/// One agent: the library's agent runtime with its firewall in its own namespace.
struct FleetAgent {
    id: String,
    token: String,
    ns: Netns,
    handle: AgentHandle,
    run: Option<tokio::task::JoinHandle<RunSummary>>,
    executed: Arc<Mutex<Vec<ActionRecord>>>,
    state: tempfile::TempDir,
}

impl FleetAgent {
    async fn start(index: usize, server: &str, data_dir: &Path, id: String, token: String) -> Self {
        let ns = Netns::new(index);
        let state = tempfile::Builder::new()
            .prefix(&format!("pe-fleet-agent-{}-{index}-", std::process::id()))
            .tempdir()
            .unwrap();
        let executed: Arc<Mutex<Vec<ActionRecord>>> = Arc::default();
        let (handle, run) = launch(server, data_dir, &ns, &token, state.path(), &executed).await;
        Self {
            id,
            token,
            ns,
            handle,
            run: Some(run),
            executed,
            state,
        }
    }

    /// Stops the agent gracefully; `restart` starts it again over the same state dir.
    async fn stop(&mut self) {
        self.handle.shutdown();
        if let Some(run) = self.run.take() {
            let summary = run.await.unwrap();
            assert_eq!(summary.reports_left, 0, "{summary:?}");
        }
    }

    async fn restart(&mut self, server: &str, data_dir: &Path) {
        let (handle, run) = launch(
            server,
            data_dir,
            &self.ns,
            &self.token,
            self.state.path(),
            &self.executed,
        )
        .await;
        self.handle = handle;
        self.run = Some(run);
    }

    /// Runs `event` through the agent's engine; its actions execute and are reported.
    fn observe(&self, event: Value) -> Vec<ActionRecord> {
        let event = ThreatEvent::from_json(event.to_string().as_bytes()).unwrap();
        self.handle.process(&event)
    }

    fn executions_on(&self, ip: &str) -> usize {
        self.executed
            .lock()
            .unwrap()
            .iter()
            .filter(|r| matches!(&r.action, Action::BlockIp { ip: a, .. } if a.to_string() == ip))
            .count()
    }
}

/// Starts an agent (only its token: it learns its id from the server) with no event source:
/// events come through its handle.
async fn launch(
    server: &str,
    data_dir: &Path,
    ns: &Netns,
    token: &str,
    state: &Path,
    executed: &Arc<Mutex<Vec<ActionRecord>>>,
) -> (AgentHandle, tokio::task::JoinHandle<RunSummary>) {
    let mut config = HostConfig::new(state.join("host"), vec![]).with_nft_command(
        ["ip", "netns", "exec", &ns.0, "nft"]
            .map(str::to_owned)
            .to_vec(),
    );
    config.firewall.table = TABLE.to_owned();
    let host = tokio::task::spawn_blocking(move || HostExecutor::open(config))
        .await
        .unwrap()
        .unwrap();
    let settings = Settings {
        heartbeat_interval: Duration::from_millis(200),
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..Settings::default()
    };
    let agent = Agent::builder(server, state)
        .token(token)
        .trust(TlsTrust::CaFile(ca_file(data_dir)))
        .settings(settings)
        .executor(Counting {
            host,
            executed: executed.clone(),
        })
        .start()
        .await
        .unwrap();
    let handle = agent.handle();
    let run = tokio::spawn(async move { agent.run().await.unwrap() });
    (handle, run)
}

async fn admin(client: &reqwest::Client, method: reqwest::Method, url: String) -> (u16, Value) {
    let response = client
        .request(method, url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_fleet_blocks_and_run_an_approval_once() {
    let data = tempfile::Builder::new()
        .prefix(&format!("pe-fleet-server-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let server = reference_server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        tls: TlsMode::SelfSigned,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        shutdown_grace: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let base = server.base_url();
    let admin_client = agent_common::Admin::new(&base, data.path());
    let pem = std::fs::read(ca_file(data.path())).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();

    let version = admin_client
        .post_policy(json!({
            "name": "fleet",
            "rules": [
                {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 3,
                 "duration": "1h", "scope": "fleet"}},
                {"type": "auto_respond", "config": {"trigger": "port_scan", "action": "block_ip",
                 "minConfidence": 0.5, "requireApproval": true}}
            ]
        }))
        .await;
    let mut agents = Vec::new();
    for i in 0..3 {
        let (id, token) = admin_client.enroll(&format!("host-{i}")).await;
        agents.push(FleetAgent::start(i, &base, data.path(), id, token).await);
    }
    for agent in &agents {
        wait_version(agent.handle.live(), version).await;
    }
    wait_until("three streams", Duration::from_secs(10), || {
        server.state().hub.stream_count("default") == 3
    })
    .await;

    // Agent 0 sees a brute force and blocks the source here and across the fleet: the report
    // of its block goes through its outbox to the server, which pushes the block to the others.
    let attacker = "203.0.113.7";
    let mut actions = Vec::new();
    let observed = Instant::now();
    for n in 0..3 {
        actions
            .extend(agents[0].observe(
                json!({"id": format!("e-{n}"), "type": "brute_force", "srcIp": attacker}),
            ));
    }
    assert_eq!(actions.len(), 1, "{actions:?}");
    for agent in &agents {
        while !agent.ns.blocked().contains(&attacker.to_owned()) {
            assert!(
                observed.elapsed() < Duration::from_secs(1),
                "{} did not block {attacker} within a second",
                agent.id
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let spread = observed.elapsed();
    eprintln!("fleet block in all three agents' nftables sets {spread:?} after the event");
    let (status, body) = admin(&http, reqwest::Method::GET, format!("{base}/api/blocks")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["ip"], attacker, "{body}");
    assert_eq!(body["data"][0]["agentId"], agents[0].id.as_str(), "{body}");

    // Who blocked it? The first entry is agent 0's fleet block; the others applied it.
    wait_until("every agent's execution", Duration::from_secs(10), || {
        agents.iter().all(|a| a.executions_on(attacker) == 1)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let (status, body) = admin(
            &http,
            reqwest::Method::GET,
            format!("{base}/api/audit?ip={attacker}&action=block_ip"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let entries = body["data"]["entries"].as_array().unwrap().clone();
        if entries.len() == 3 {
            break entries;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let first = entries.last().unwrap();
    assert_eq!(first["agentId"], agents[0].id.as_str());
    assert_eq!(first["detail"]["record"]["scope"], "fleet");
    assert_eq!(first["detail"]["fleet"], "stored");
    assert_eq!(first["rule"], 0);
    assert_eq!(first["policyVersion"], "v1");
    let mut appliers: Vec<&str> = entries[..2]
        .iter()
        .map(|e| {
            assert_eq!(e["outcome"], "executed");
            assert_eq!(e["detail"]["record"]["scope"], "host");
            e["agentId"].as_str().unwrap()
        })
        .collect();
    appliers.sort_unstable();
    let mut others = vec![agents[1].id.as_str(), agents[2].id.as_str()];
    others.sort_unstable();
    assert_eq!(appliers, others);

    // Approval round trip: agent 1 asks, the admin approves, agent 1 executes it once.
    let scanner = "198.51.100.9";
    let actions = agents[1]
        .observe(json!({"id": "scan-1", "type": "port_scan", "confidence": 0.9, "srcIp": scanner}));
    assert_eq!(actions[0].action.name(), "approval_request");
    let deadline = Instant::now() + Duration::from_secs(10);
    let approval_id = loop {
        let (_, body) = admin(
            &http,
            reqwest::Method::GET,
            format!("{base}/api/approvals?status=pending"),
        )
        .await;
        if let Some(id) = body["data"][0]["id"].as_str() {
            assert_eq!(body["data"][0]["agentId"], agents[1].id.as_str(), "{body}");
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "no approval request: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(agents[1].executions_on(scanner), 0);
    assert!(!agents[1].ns.blocked().contains(&scanner.to_owned()));
    let (status, body) = admin(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/approvals/{approval_id}/approve"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["broadcastedTo"], 1);
    wait_until("approved block", Duration::from_secs(5), || {
        agents[1].ns.blocked().contains(&scanner.to_owned())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let executed = loop {
        let (_, body) = admin(
            &http,
            reqwest::Method::GET,
            format!("{base}/api/approvals?status=executed"),
        )
        .await;
        if body["data"][0]["id"] == approval_id.as_str() {
            break body["data"][0].clone();
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A replay after a restart of the agent does nothing: the ledger on disk remembers it.
    agents[1].stop().await;
    agents[1].restart(&base, data.path()).await;
    wait_version(agents[1].handle.live(), version).await;
    let replay: ApprovalEvent = serde_json::from_value(json!({
        "approvalId": approval_id,
        "expiresAt": executed["expiresAt"],
        "action": executed["action"],
    }))
    .unwrap();
    assert!(agents[1].handle.fleet_event(FleetEvent::Approval(replay)));
    // A block queued after the replay is handled after it (one queue, in order): once it is
    // in the set, the replay has been looked at.
    let marker = "192.0.2.99";
    let block: BlockEvent = serde_json::from_value(json!({
        "ip": marker, "expiresAt": null, "sourceAgent": agents[0].id,
        "action": {"action": "block_ip", "ip": marker, "duration": "1h", "scope": "host",
                   "rule": 0, "policyVersion": "v1"}
    }))
    .unwrap();
    assert!(agents[1].handle.fleet_event(FleetEvent::Block(block)));
    wait_until("marker block", Duration::from_secs(5), || {
        agents[1].ns.blocked().contains(&marker.to_owned())
    })
    .await;
    assert_eq!(agents[1].executions_on(scanner), 1);

    // Lifting the fleet block clears it everywhere.
    let (status, body) = admin(
        &http,
        reqwest::Method::DELETE,
        format!("{base}/api/blocks/{attacker}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for agent in &agents {
        wait_until("unblock", Duration::from_secs(5), || {
            !agent.ns.blocked().contains(&attacker.to_owned())
        })
        .await;
    }

    for agent in &mut agents {
        agent.stop().await;
    }
    server.shutdown().await;
}
