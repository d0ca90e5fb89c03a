//! The fleet loop end to end: the TLS reference server and three enrolled agents, each with its
//! own nftables firewall in its own network namespace. A fleet block from one agent reaches the
//! other two agents' sets within a second; an approval round trip executes once (a replay after
//! a restart does nothing); the audit log answers who blocked what; lifting the block clears
//! every set.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod agent_common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_common::{ADMIN_TOKEN, ca_file, wait_version};
use chrono::Utc;
use policy_engine::executor::{Firewall, FirewallConfig, Outcome};
use policy_engine::sync::fleet::Report;
use policy_engine::sync::{
    ApiClient, BackoffConfig, FleetEvents, FleetExecutor, FleetHandler, FleetOutcome, LiveEngine,
    PolicySync, Reporter, SyncConfig, TlsTrust,
};
use policy_engine::{Action, ActionRecord, EngineConfig, ThreatEvent};
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

/// The nftables firewall of one agent, counting what it executed.
struct FirewallExecutor {
    firewall: Firewall,
    executed: Arc<Mutex<Vec<ActionRecord>>>,
}

fn fleet_outcome(outcome: Outcome) -> FleetOutcome {
    match outcome {
        Outcome::Done { detail } => FleetOutcome::Executed(detail),
        Outcome::Skipped { reason } => FleetOutcome::Skipped(reason),
        Outcome::Failed { error } => FleetOutcome::Failed(error),
    }
}

impl FleetExecutor for FirewallExecutor {
    fn execute(&mut self, record: &ActionRecord) -> FleetOutcome {
        self.executed.lock().unwrap().push(record.clone());
        match &record.action {
            Action::BlockIp { ip, duration, .. } => {
                fleet_outcome(self.firewall.block(*ip, *duration))
            }
            other => FleetOutcome::Skipped(format!("`{}` is not supported here", other.name())),
        }
    }

    fn unblock(&mut self, ip: IpAddr) -> FleetOutcome {
        match self.firewall.unblock(ip) {
            Ok(true) => FleetOutcome::Executed(format!("unblocked `{ip}`")),
            Ok(false) => FleetOutcome::Skipped(format!("`{ip}` was not blocked")),
            Err(err) => FleetOutcome::Failed(err.to_string()),
        }
    }
}

/// One agent: sync, engine, firewall in its namespace, fleet handler, reporter.
struct Agent {
    id: String,
    ns: Netns,
    live: LiveEngine,
    sync: Option<PolicySync>,
    handler: Option<tokio::task::JoinHandle<()>>,
    events: FleetEvents,
    executor: Arc<Mutex<FirewallExecutor>>,
    executed: Arc<Mutex<Vec<ActionRecord>>>,
    reporter: Reporter,
    state: tempfile::TempDir,
}

impl Agent {
    async fn start(index: usize, server: &str, data_dir: &Path, id: String, token: String) -> Self {
        let ns = Netns::new(index);
        let state = tempfile::Builder::new()
            .prefix(&format!("pe-fleet-agent-{}-{index}-", std::process::id()))
            .tempdir()
            .unwrap();
        let mut config = FirewallConfig::new(state.path());
        config.table = TABLE.to_owned();
        config.command = ["ip", "netns", "exec", &ns.0, "nft"]
            .map(str::to_owned)
            .to_vec();
        let executed: Arc<Mutex<Vec<ActionRecord>>> = Arc::default();
        let executor = Arc::new(Mutex::new(FirewallExecutor {
            firewall: Firewall::open(config).unwrap(),
            executed: executed.clone(),
        }));
        let trust = TlsTrust::CaFile(ca_file(data_dir));
        let reporter = Reporter::new(ApiClient::new(server, &trust).unwrap(), &id, &token);
        let live = LiveEngine::new(EngineConfig::default());
        let mut agent = Self {
            id,
            ns,
            live,
            sync: None,
            handler: None,
            events: FleetEvents::channel(1).0,
            executor,
            executed,
            reporter,
            state,
        };
        agent.connect(server, data_dir, &token).await;
        agent
    }

    /// Starts (or restarts) the sync and the fleet handler over the same state dir.
    async fn connect(&mut self, server: &str, data_dir: &Path, token: &str) {
        let (events, queue) = FleetEvents::channel(64);
        let mut config = SyncConfig::new(server, &self.id, token, self.state.path());
        config.trust = TlsTrust::CaFile(ca_file(data_dir));
        config.heartbeat_interval = Duration::from_millis(200);
        config.backoff = BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        };
        config.fleet = Some(events.clone());
        let shared: Arc<Mutex<dyn FleetExecutor>> = self.executor.clone();
        let handler = FleetHandler::new(shared, self.state.path(), self.reporter.clone());
        self.handler = Some(handler.spawn(queue));
        self.events = events;
        self.sync = Some(PolicySync::start(config, self.live.clone()).await.unwrap());
    }

    async fn stop(&mut self) {
        if let Some(sync) = self.sync.take() {
            sync.shutdown().await;
        }
        if let Some(handler) = self.handler.take() {
            handler.abort();
        }
    }

    /// Runs `event` through the engine, executes the actions locally and reports each.
    async fn observe(&self, event: Value) -> Vec<Value> {
        let event = ThreatEvent::from_json(event.to_string().as_bytes()).unwrap();
        let actions = self.live.process(&event, Utc::now()).actions;
        let mut answers = Vec::new();
        for record in actions {
            let outcome = match record.action {
                Action::ApprovalRequest { .. } => FleetOutcome::Skipped("awaiting approval".into()),
                _ => self.executor.lock().unwrap().execute(&record),
            };
            answers.push(
                self.reporter
                    .send(&Report::local(record, &outcome))
                    .await
                    .unwrap(),
            );
        }
        answers
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
    let mut tokens = Vec::new();
    for i in 0..3 {
        let (id, token) = admin_client.enroll(&format!("host-{i}")).await;
        tokens.push(token.clone());
        agents.push(Agent::start(i, &base, data.path(), id, token).await);
    }
    for agent in &agents {
        wait_version(&agent.live, version).await;
    }
    wait_until("three streams", Duration::from_secs(10), || {
        server.state().hub.stream_count("default") == 3
    })
    .await;

    // Agent 0 sees a brute force and blocks the source across the fleet.
    let attacker = "203.0.113.7";
    let mut answers = Vec::new();
    for n in 0..3 {
        answers.extend(
            agents[0]
                .observe(json!({"id": format!("e-{n}"), "type": "brute_force", "srcIp": attacker}))
                .await,
        );
    }
    let reported = Instant::now();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["kind"], "fleet_block");
    assert_eq!(answers[0]["broadcastedTo"], 2);
    assert!(agents[0].ns.blocked().contains(&attacker.to_owned()));
    for agent in &agents[1..] {
        while !agent.ns.blocked().contains(&attacker.to_owned()) {
            assert!(
                reported.elapsed() < Duration::from_secs(1),
                "{} did not block {attacker} within a second",
                agent.id
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let spread = reported.elapsed();
    assert!(spread < Duration::from_secs(1), "{spread:?}");
    eprintln!("fleet block in the other two agents' nftables sets after {spread:?}");

    // Who blocked it? The first entry is agent 0's fleet block; the others applied it.
    wait_until("every agent's report", Duration::from_secs(10), || {
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
    let answers = agents[1]
        .observe(json!({"id": "scan-1", "type": "port_scan", "confidence": 0.9, "srcIp": scanner}))
        .await;
    assert_eq!(answers[0]["kind"], "approval_request");
    assert_eq!(agents[1].executions_on(scanner), 0);
    assert!(!agents[1].ns.blocked().contains(&scanner.to_owned()));
    let approval_id = answers[0]["approval"]["id"].as_str().unwrap().to_owned();
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
    agents[1].connect(&base, data.path(), &tokens[1]).await;
    wait_version(&agents[1].live, version).await;
    let replay = json!({
        "approvalId": approval_id,
        "expiresAt": executed["expiresAt"],
        "action": executed["action"],
    });
    assert!(agents[1].events.dispatch("approval", &replay.to_string()));
    // A block pushed after the replay is handled after it (one queue, in order): once it is
    // in the set, the replay has been looked at.
    let marker = "192.0.2.99";
    agents[0]
        .reporter
        .send(&Report::local(
            ActionRecord {
                action: Action::BlockIp {
                    ip: marker.parse().unwrap(),
                    duration: "1h".parse().unwrap(),
                    scope: policy_engine::Scope::Fleet,
                },
                rule: 0,
                policy_version: version,
                event_id: None,
            },
            &FleetOutcome::Executed("test marker".into()),
        ))
        .await
        .unwrap();
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
