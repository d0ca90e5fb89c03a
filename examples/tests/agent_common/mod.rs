//! Shared by the agent tests: an in-process reference server over TLS, an admin client that
//! trusts its self-signed certificate, agents built on `policy_engine::sync`, and waiting for a
//! condition with a deadline.

// Each test file uses a different part; test helpers fail loudly like the tests themselves.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use examples::example_bin;

use chrono::Utc;
use policy_engine::sync::{BackoffConfig, LiveEngine, PolicySync, SyncConfig, TlsTrust};
use policy_engine::{ActionRecord, EngineConfig, PolicyVersion, ThreatEvent};
use reference_server::{RunningServer, ServerConfig, TlsMode};
use serde_json::{Value, json};

/// The global admin token of every test server.
pub const ADMIN_TOKEN: &str = "admin-token-of-the-agent-tests";

/// Starts the reference server over TLS (self-signed certificate in `data_dir/tls`).
pub async fn start_server(data_dir: &Path, listen: SocketAddr) -> RunningServer {
    reference_server::start(ServerConfig {
        listen,
        data_dir: data_dir.to_path_buf(),
        tls: TlsMode::SelfSigned,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        shutdown_grace: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await
    .unwrap()
}

/// The certificate agents must trust: the server's self-signed one.
pub fn ca_file(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("cert.pem")
}

/// An admin talking to the server the way an operator's script would.
pub struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    pub fn new(base: &str, data_dir: &Path) -> Self {
        let pem = std::fs::read(ca_file(data_dir)).unwrap();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        Self {
            http,
            base: base.to_owned(),
        }
    }

    /// Any admin request: `(status, body)`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Enrolls an agent: `(agentId, token)`.
    pub async fn enroll(&self, hostname: &str) -> (String, String) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/agents/enroll",
                Some(json!({ "hostname": hostname })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let data = &body["data"];
        (
            data["agentId"].as_str().unwrap().to_owned(),
            data["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Posts a policy and returns its version.
    pub async fn post_policy(&self, document: Value) -> PolicyVersion {
        let (status, body) = self
            .call(reqwest::Method::POST, "/api/policy", Some(document))
            .await;
        assert_eq!(status, 201, "{body}");
        body["data"]["version"].as_str().unwrap().parse().unwrap()
    }

    /// `GET /api/audit{query}`: the entries of the first page, newest first.
    pub async fn audit(&self, query: &str) -> Vec<Value> {
        let (status, body) = self
            .call(reqwest::Method::GET, &format!("/api/audit{query}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["entries"].as_array().unwrap().clone()
    }

    /// `POST /api/approvals/:id/approve`: `(status, body)`.
    pub async fn approve(&self, approval_id: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/approvals/{approval_id}/approve"),
            None,
        )
        .await
    }

    /// `GET /api/agents`, the entry of `agent_id`.
    pub async fn agent(&self, agent_id: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, "/api/agents", None).await;
        assert_eq!(status, 200, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agentId"] == agent_id)
            .cloned()
            .unwrap_or_else(|| panic!("agent {agent_id} not listed: {body}"))
    }

    /// Waits until `GET /api/agents` shows `agent_id` with `check` true.
    pub async fn wait_agent(
        &self,
        agent_id: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let agent = self.agent(agent_id).await;
            if check(&agent) {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {agent}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A policy whose version shows in the actions: `auto_respond` kills malware processes and a
/// `block_ip` rule whose threshold is `n` (so that each `n` makes a distinct document).
pub fn policy(n: u32) -> Value {
    json!({
        "name": format!("policy {n}"),
        "rules": [
            {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.5}},
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": n, "duration": "1h", "scope": "host"}}
        ]
    })
}

/// Sync settings for tests: quick heartbeats and reconnects.
pub fn sync_config(
    server: &str,
    agent_id: &str,
    token: &str,
    state_dir: &Path,
    ca: &Path,
) -> SyncConfig {
    let mut config = SyncConfig::new(server, agent_id, token, state_dir);
    config.trust = TlsTrust::CaFile(ca.to_path_buf());
    config.heartbeat_interval = Duration::from_millis(200);
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    config
}

/// Starts an agent's sync on a fresh engine.
pub async fn start_agent(config: SyncConfig) -> PolicySync {
    PolicySync::start(config, LiveEngine::new(EngineConfig::default()))
        .await
        .unwrap()
}

/// Runs a malware event through the engine: the `kill_process` action it causes, tagged with
/// the version of the policy that decided it.
pub fn enforce(live: &LiveEngine) -> Vec<ActionRecord> {
    let event =
        ThreatEvent::from_json(br#"{"id":"evt-1","type":"malware","confidence":0.9,"pid":4242}"#)
            .unwrap();
    live.process(&event, Utc::now()).actions
}

/// The version that enforced a malware event, or `None` when nothing happened.
pub fn enforcing_version(live: &LiveEngine) -> Option<PolicyVersion> {
    let actions = enforce(live);
    assert!(actions.len() <= 1, "{actions:?}");
    actions.first().map(|a| a.policy_version)
}

/// Waits until `live` runs `version`; returns how long it took.
pub async fn wait_version(live: &LiveEngine, version: PolicyVersion) -> Duration {
    let started = Instant::now();
    let mut status = live.subscribe();
    let reached = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.applied == Some(version)),
    )
    .await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "agent did not reach {version}: {:?}",
        live.status()
    );
    started.elapsed()
}

/// Waits until the status satisfies `check`.
pub async fn wait_status(
    live: &LiveEngine,
    what: &str,
    check: impl Fn(&policy_engine::sync::SyncStatus) -> bool,
) {
    let mut status = live.subscribe();
    let reached =
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| check(s))).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "timed out waiting for {what}: {:?}",
        live.status()
    );
}

/// Waits until the state dir holds `version` (it is written before the engine runs it).
pub async fn wait_stored(state_dir: &Path, version: PolicyVersion) {
    let store = policy_engine::sync::StateStore::new(state_dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let loaded = store.load().ok().flatten().map(|p| p.version);
        if loaded == Some(version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "state dir holds {loaded:?}, not {version}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How long a test waits for the agent binary to print or exit.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(10);

/// The arguments of a reference agent in dry run against `base` (trusting `ca`), with its
/// token and state dir, heartbeats every 0.2 s and a short wait for its first policy.
pub fn agent_args(base: &str, ca: &Path, token: &str, state: &Path) -> Vec<String> {
    [
        "--server",
        base,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--token",
        token,
        "--dry-run",
        "--heartbeat-secs",
        "0.2",
        "--first-policy-wait-secs",
        "0.2",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// A running agent process; killed on drop so a failing test leaves nothing behind.
pub struct AgentProcess {
    child: Child,
    /// Its standard input; `None` once closed.
    pub stdin: Option<ChildStdin>,
    /// Its standard output, line by line.
    pub stdout: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl AgentProcess {
    /// [`spawn`](Self::spawn) with owned arguments (as [`agent_args`] makes them).
    pub fn spawn_owned(args: &[String]) -> Self {
        Self::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(args, &[])
    }

    /// Like `spawn`, with more environment variables (e.g. a `PATH` with a stand-in `nft`
    /// first).
    pub fn spawn_with(args: &[&str], env: &[(&str, String)]) -> Self {
        let mut child = Command::new(example_bin("agent"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("POLICY_ADMIN_TOKEN")
            .env_remove("POLICY_AGENT_TOKEN")
            .env_remove("POLICY_SERVER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        Self {
            child,
            stdin,
            stdout,
            stderr: Some(stderr),
        }
    }

    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The next action line, polled without blocking the runtime the server runs on.
    pub async fn next_line(&self) -> String {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            match self.stdout.try_recv() {
                Ok(line) => return line,
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    panic!("agent stdout closed before an action line")
                }
            }
            assert!(
                Instant::now() < deadline,
                "no action line from the agent within {PROCESS_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes stdin and waits for the agent to exit: `(exit code, stderr)`.
    pub async fn finish(mut self) -> (Option<i32>, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + PROCESS_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit at the end of stdin"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(self.stdout.try_recv().is_err(), "unexpected extra output");
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status.code(), stderr)
    }
}

impl AgentProcess {
    /// Kills the agent with SIGKILL (no shutdown at all) and reaps it.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the agent said.
        if std::thread::panicking() {
            if let Some(stderr) = self.stderr.take().and_then(|t| t.join().ok()) {
                eprintln!("--- agent stderr ---\n{stderr}--- end of agent stderr ---");
            }
        }
    }
}

/// A fake `nft` first on `PATH`: it appends every script it gets to `scripts` (one run's script
/// after another), answers success, and hangs (`exec sleep 600`, its pid in `hung`) when the
/// script names [`FakeNft::HANG_IP`].
pub struct FakeNft {
    pub dir: tempfile::TempDir,
}

impl FakeNft {
    /// A block of this address makes `nft` hang.
    pub const HANG_IP: &'static str = "203.0.113.66";

    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(&format!("fake-nft-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let script = format!(
            "#!/bin/sh\n\
             script=$(cat)\n\
             printf '%s\\n' \"$script\" >> '{dir}/scripts'\n\
             case \"$script\" in *{hang}*) echo $$ > '{dir}/hung.tmp'; mv '{dir}/hung.tmp' '{dir}/hung'; exec sleep 600;; esac\n\
             exit 0\n",
            dir = dir.path().display(),
            hang = Self::HANG_IP,
        );
        let nft = dir.path().join("nft");
        std::fs::write(&nft, script).unwrap();
        std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    /// The environment that puts it first on `PATH`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        vec![("PATH", format!("{}:{path}", self.dir.path().display()))]
    }

    /// Every script it was given so far.
    pub fn scripts(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("scripts")).unwrap_or_default()
    }

    /// The pid of the hanging `nft`, once one hangs.
    pub fn hung(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("hung"))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
    }
}

/// Whether process `pid` is gone (or a zombie).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Waits (polling every 10 ms, at most `limit`) until `done` holds; panics naming `what`
/// otherwise. Returns how long it took.
pub async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}
