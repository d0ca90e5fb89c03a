//! Several server replicas on one PostgreSQL database: a policy, overrides, a fleet block, an
//! unblock or an approval written on one replica reaches the event streams of the other, each
//! once and in order; a staged rollout's stages and its rollback, moved on either replica,
//! reach the stage's agents on the other; a notice lost while a replica's listening connection
//! is down is caught up when it reconnects (rollout stages too, each version once); a replica
//! killed (SIGKILL) during a broadcast loses no version for its agents once they reconnect to
//! another replica.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::http_sink::HttpSink;
use crate::common::postgres::{TestDatabase, admin_sql, with_database};
use crate::common::*;
use futures_util::StreamExt;
use reference_server::notify::NotifyConfig;
use reference_server::{Database, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A replica on `url` (plain HTTP on loopback: TLS is tested elsewhere).
async fn replica(url: &str, resync: Duration) -> TestServer {
    replica_notifying(url, resync, None).await
}

/// A replica on `url` with alert channels `notify`.
async fn replica_notifying(
    url: &str,
    resync: Duration,
    notify: Option<NotifyConfig>,
) -> TestServer {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-replica-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let url = url.to_owned();
    TestServer::start_in(dir, move |dir| ServerConfig {
        database: Database::Postgres(url.clone()),
        resync,
        notify: notify.clone(),
        ..config(dir, false)
    })
    .await
}

/// A replica that connects as a role of its own (`replica_<name>_<pid>`), so that a test can
/// keep its listener out, and with no periodic resync: only a reconnect catches it up.
async fn replica_of_own_role(db: &TestDatabase, name: &str) -> (String, TestServer) {
    let role = format!("replica_{name}_{}", std::process::id());
    admin_sql(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} SUPERUSER LOGIN"
    ))
    .await;
    let url = with_database(
        &db.url.replacen("postgres@", &format!("{role}@"), 1),
        &db.name,
    );
    let server = replica(&url, Duration::from_secs(3600)).await;
    (role, server)
}

/// Drops the listening connection of `role`'s replica and keeps it from coming back.
async fn cut_listener(role: &str) {
    admin_sql(&format!(
        "ALTER ROLE {role} NOLOGIN;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE usename = '{role}' AND application_name = 'policy-server-listen'"
    ))
    .await;
}

/// Lets `role`'s replica listen again.
async fn restore_listener(role: &str) {
    admin_sql(&format!("ALTER ROLE {role} LOGIN")).await;
}

/// Waits until `t` knows `token` (tokens created on another replica arrive with a notice).
async fn knows(t: &TestServer, token: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, _) = t.get("/api/agents/me", token).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never learned the token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A policy whose rule 0 blocks fleet-wide for 1 h and rule 2 kills a process after approval:
/// the rules the reports below name (reports are checked against the version the agent got).
fn fleet_policy(name: &str, threshold: u32) -> Value {
    json!({
        "name": name,
        "rules": [
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": threshold,
             "duration": "1h", "scope": "fleet"}, "enabled": true},
            {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
             "notifyChannels": ["telegram"]}, "enabled": true},
            {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
             "minConfidence": 0.9, "requireApproval": true}, "enabled": true}
        ]
    })
}

fn fleet_block(ip: &str) -> Value {
    json!({"action": "block_ip", "ip": ip, "duration": "1h", "scope": "fleet",
           "rule": 0, "policyVersion": "v1", "eventId": "e-1"})
}

/// `(event, id, data["version"] or data["ip"] or data["approvalId"])` of the next event.
async fn next(stream: &mut Stream) -> (String, String, Value) {
    let event = stream.next_event().await;
    let key = match event.event.as_str() {
        "policy" => event.data["version"].clone(),
        "approval" => event.data["approvalId"].clone(),
        _ => event.data["ip"].clone(),
    };
    (event.event, event.id, key)
}

#[tokio::test]
async fn every_change_on_one_replica_reaches_the_streams_of_the_other_once_in_order() {
    let db = TestDatabase::create().await;
    let a = replica(&db.url, Duration::from_secs(5)).await;
    let b = replica(&db.url, Duration::from_secs(5)).await;
    a.post_policy(ADMIN, fleet_policy("v1", 5)).await;
    let (one, one_token) = a.enroll(ADMIN, "host-1").await;
    let (two, two_token) = b.enroll(ADMIN, "host-2").await;
    knows(&b, &one_token).await;
    knows(&a, &two_token).await;
    // Agent one streams from B, agent two from A.
    let mut on_b = b.stream(&one_token, "default").await;
    let mut on_a = a.stream(&two_token, "default").await;
    assert_eq!(
        next(&mut on_b).await,
        ("policy".into(), "1".into(), json!("v1"))
    );
    assert_eq!(
        next(&mut on_a).await,
        ("policy".into(), "1".into(), json!("v1"))
    );

    // A policy posted to A; overrides of agent one set on A.
    let posted = a.post_policy(ADMIN, fleet_policy("v2", 7)).await;
    assert_eq!(posted["version"], "v2");
    let (status, body) = a
        .put(
            &format!("/api/policy/agent/{one}/overrides"),
            ADMIN,
            json!([{"rule": 0, "config": {"threshold": 3}}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Agent two reports a fleet block to B; the admin lifts it on A.
    let (status, body) = b
        .post(
            &format!("/api/agents/{two}/reports"),
            &two_token,
            fleet_block("203.0.113.7"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = a
        .call(
            reqwest::Method::DELETE,
            "/api/blocks/203.0.113.7",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Agent one asks B for approval; the admin approves on A.
    let (status, body) = b
        .post(
            &format!("/api/agents/{one}/reports"),
            &one_token,
            json!({"action": "approval_request", "request": {"action": "kill_process", "pid": 42},
                   "rule": 2, "policyVersion": "v2", "eventId": "e-42"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let approval = body["data"]["approval"]["id"].as_str().unwrap().to_owned();
    let (status, body) = a
        .post(
            &format!("/api/approvals/{approval}/approve"),
            ADMIN,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A last version as a fence: nothing else arrives before it.
    a.post_policy(ADMIN, fleet_policy("v3", 9)).await;

    let mut seen_on_b = Vec::new();
    while seen_on_b
        .last()
        .is_none_or(|(_, _, key)| *key != json!("v3"))
    {
        seen_on_b.push(next(&mut on_b).await);
    }
    assert_eq!(
        seen_on_b,
        [
            ("policy".into(), "2".into(), json!("v2")),
            ("policy".into(), "2".into(), json!("v2")),
            // Fleet events carry no id: the stream's last event id stays the version.
            ("block".into(), "2".into(), json!("203.0.113.7")),
            ("unblock".into(), "2".into(), json!("203.0.113.7")),
            ("approval".into(), "2".into(), json!(approval)),
            ("policy".into(), "3".into(), json!("v3")),
        ]
    );
    let mut seen_on_a = Vec::new();
    while seen_on_a
        .last()
        .is_none_or(|(_, _, key)| *key != json!("v3"))
    {
        seen_on_a.push(next(&mut on_a).await);
    }
    // The reporter does not get its own block back; the overrides and the approval are agent
    // one's.
    assert_eq!(
        seen_on_a,
        [
            ("policy".into(), "2".into(), json!("v2")),
            ("unblock".into(), "2".into(), json!("203.0.113.7")),
            ("policy".into(), "3".into(), json!("v3")),
        ]
    );
    // The resolved policy of agent one on B carries the override made on A.
    let (status, rules) = b.get(&format!("/api/policy/agent/{one}"), ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{rules}");
    assert_eq!(rules["data"]["rules"][0]["config"]["threshold"], 3);
    assert_eq!(rules["data"]["policyVersion"], "v3");
}

/// `(id, rollbackFrom)` of the next event, which must be a policy.
async fn next_version(stream: &mut Stream) -> (String, Value) {
    let event = stream.next_event().await;
    assert_eq!(event.event, "policy", "{:?}", event.data);
    (event.id, event.data["rollbackFrom"].clone())
}

/// The admin event stream of the global admin on `t` (org `default`), past its `ready` event.
async fn admin_events(t: &TestServer) -> reqwest_eventsource::EventSource {
    let request = t
        .client
        .get(format!("{}/api/admin/events", t.base))
        .bearer_auth(ADMIN);
    let mut source = reqwest_eventsource::EventSource::new(request).unwrap();
    loop {
        match tokio::time::timeout(DEADLINE, source.next()).await {
            Ok(Some(Ok(reqwest_eventsource::Event::Open))) => continue,
            Ok(Some(Ok(reqwest_eventsource::Event::Message(m)))) => {
                assert_eq!(m.event, "ready", "{}", m.data);
                return source;
            }
            other => panic!("expected the admin stream to open, got {other:?}"),
        }
    }
}

/// Reads `changed` events until one names `topic`.
async fn changed_until(source: &mut reqwest_eventsource::EventSource, topic: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, source.next()).await {
            Ok(Some(Ok(reqwest_eventsource::Event::Message(m)))) => {
                assert_eq!(m.event, "changed");
                let data: Value = serde_json::from_str(&m.data).unwrap();
                if data["topics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t == topic)
                {
                    return;
                }
            }
            other => panic!("expected a `changed` event naming `{topic}`, got {other:?}"),
        }
    }
}

/// Starts a rollout of `name` on `t`: stage 1 agent `first`, stage 2 agent `second` (soaking
/// an hour, so it never advances on its own), stage 3 everyone; returns its id.
async fn start_rollout(t: &TestServer, name: &str, first: &str, second: &str) -> String {
    let (status, body) = t
        .post(
            "/api/rollouts",
            ADMIN,
            json!({"policy": fleet_policy(name, 8),
                   "stages": [{"agents": [first], "soakSecs": 3600},
                              {"agents": [second], "soakSecs": 3600},
                              {"percent": 100}],
                   "gate": {"silentAfterSecs": 86400}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["data"]["id"].as_str().unwrap().to_owned()
}

async fn operate(t: &TestServer, id: &str, operation: &str, state: &str) {
    let (status, body) = t
        .post(
            &format!("/api/rollouts/{id}/{operation}"),
            ADMIN,
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["state"], state, "{body}");
}

/// A rollout started on A reaches its stage's agent streaming from B, and nobody else; the next
/// stage, advanced on B, reaches its agent; an abort on A sends both the previous version with
/// `rollbackFrom`, and the agent never in a stage gets nothing until the next version.
#[tokio::test]
async fn a_rollout_moved_on_either_replica_reaches_the_stage_agents_of_the_other() {
    let db = TestDatabase::create().await;
    let a = replica(&db.url, Duration::from_secs(5)).await;
    let b = replica(&db.url, Duration::from_secs(5)).await;
    a.post_policy(ADMIN, fleet_policy("v1", 5)).await;
    let (_, outside_token) = a.enroll(ADMIN, "host-outside").await;
    let (first, first_token) = a.enroll(ADMIN, "host-first").await;
    let (second, second_token) = a.enroll(ADMIN, "host-second").await;
    for token in [&first_token, &second_token] {
        knows(&b, token).await;
    }
    let mut outside = a.stream(&outside_token, "default").await;
    let mut on_b_first = b.stream(&first_token, "default").await;
    let mut on_b_second = b.stream(&second_token, "default").await;
    for stream in [&mut outside, &mut on_b_first, &mut on_b_second] {
        assert_eq!(next_version(stream).await, ("1".into(), Value::Null));
    }

    let id = start_rollout(&a, "v2", &first, &second).await;
    assert_eq!(
        next_version(&mut on_b_first).await,
        ("2".into(), Value::Null)
    );
    operate(&b, &id, "advance", "running").await;
    assert_eq!(
        next_version(&mut on_b_second).await,
        ("2".into(), Value::Null)
    );
    // The console's admin stream on B hears of what A does to the org's policies.
    let mut console = admin_events(&b).await;
    operate(&a, &id, "abort", "aborted").await;
    for stream in [&mut on_b_first, &mut on_b_second] {
        assert_eq!(next_version(stream).await, ("1".into(), json!("v2")));
    }
    changed_until(&mut console, "policies").await;
    // A plain version as a fence: nothing else came before it.
    a.post_policy(ADMIN, fleet_policy("v3", 9)).await;
    for stream in [&mut outside, &mut on_b_first, &mut on_b_second] {
        assert_eq!(next_version(stream).await, ("3".into(), Value::Null));
    }
    // Both replicas say the same of each agent.
    for t in [&a, &b] {
        let (status, body) = t.get(&format!("/api/policy/agent/{first}"), ADMIN).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["policyVersion"], "v3");
    }
}

/// Changes B has no notice of (its listening connection is down and cannot come back while
/// they are written) reach B's streams once it listens again: it reads what it missed.
#[tokio::test]
async fn changes_made_while_a_replica_cannot_listen_reach_it_when_it_reconnects() {
    let db = TestDatabase::create().await;
    let a = replica(&db.url, Duration::from_secs(5)).await;
    let (role, b) = replica_of_own_role(&db, "b").await;
    a.post_policy(ADMIN, fleet_policy("v1", 5)).await;
    let (_, token) = a.enroll(ADMIN, "host-1").await;
    knows(&b, &token).await;
    let mut on_b = b.stream(&token, "default").await;
    assert_eq!(next(&mut on_b).await.2, json!("v1"));

    cut_listener(&role).await;
    a.post_policy(ADMIN, fleet_policy("v2", 6)).await;
    a.post_policy(ADMIN, fleet_policy("v3", 7)).await;
    restore_listener(&role).await;
    // B missed both notices; it reads the changes and pushes them in order.
    assert_eq!(
        next(&mut on_b).await,
        ("policy".into(), "2".into(), json!("v2"))
    );
    assert_eq!(
        next(&mut on_b).await,
        ("policy".into(), "3".into(), json!("v3"))
    );
    drop(a);
    drop(b);
    admin_sql(&format!("DROP ROLE IF EXISTS {role}")).await;
}

/// A token stored on one replica is known on the other as soon as it is answered, not only
/// once the notice arrives (probe 5, finding 2: about 1 in 50 first uses on another replica got
/// `401 unknown token` for a moment). B's listener is cut, so no notice tells it.
#[tokio::test]
async fn a_token_stored_on_one_replica_is_known_on_the_other_at_once() {
    let db = TestDatabase::create().await;
    let a = replica(&db.url, Duration::from_secs(3600)).await;
    let (role, b) = replica_of_own_role(&db, "tokens").await;
    // A request first, so B's pool holds a connection once its role may not log in.
    let (status, _) = b.get("/api/admin/me", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    cut_listener(&role).await;

    let (agent, token) = a.enroll(ADMIN, "host-1").await;
    let (status, me) = b.get("/api/agents/me", &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["data"]["agentId"], agent.as_str());
    let (status, created) = a
        .post(
            "/api/tokens",
            ADMIN,
            json!({"role": "admin", "org_id": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let acme = created["data"]["token"].as_str().unwrap();
    let (status, me) = b.get("/api/admin/me", acme).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    // A token no replica stored is still refused.
    let (status, refused) = b
        .get("/api/agents/me", &format!("agt_{}", "0".repeat(64)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert_eq!(refused["error"]["message"], "unknown token");

    restore_listener(&role).await;
    drop(a);
    drop(b);
    admin_sql(&format!("DROP ROLE IF EXISTS {role}")).await;
}

/// An agent has one live stream across the replicas: a stream opened on B ends its stream on
/// A (probe 5, finding 3: a token held a live stream on every replica at once).
#[tokio::test]
async fn a_stream_opened_on_one_replica_ends_the_agents_stream_on_the_other() {
    let db = TestDatabase::create().await;
    let a = replica(&db.url, Duration::from_secs(3600)).await;
    let b = replica(&db.url, Duration::from_secs(3600)).await;
    a.post_policy(ADMIN, fleet_policy("v1", 5)).await;
    let (_, token) = a.enroll(ADMIN, "host-1").await;
    let (_, other) = a.enroll(ADMIN, "host-2").await;
    knows(&b, &token).await;
    let mut on_a = a.stream(&token, "default").await;
    assert_eq!(next(&mut on_a).await.2, json!("v1"));
    let mut other_on_a = a.stream(&other, "default").await;
    assert_eq!(next(&mut other_on_a).await.2, json!("v1"));
    let online = |t: &TestServer| t.server().state().hub.online_agents("default").len();
    assert_eq!(online(&a), 2);

    let mut on_b = b.stream(&token, "default").await;
    assert_eq!(next(&mut on_b).await.2, json!("v1"));
    let deadline = Instant::now() + DEADLINE;
    while online(&a) != 1 {
        assert!(Instant::now() < deadline, "the stream on A never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The other agent's stream on A stays; the agent's stream on A has ended.
    match tokio::time::timeout(DEADLINE, on_a.source.next()).await {
        Ok(Some(Err(_)) | None) => {}
        other => panic!("expected the stream on A to end, got {other:?}"),
    }
    let data = a.post_policy(ADMIN, fleet_policy("v2", 6)).await;
    assert_eq!(
        data["broadcastedTo"], 1,
        "only the other agent streams on A"
    );
    assert_eq!(
        next(&mut on_b).await,
        ("policy".into(), "2".into(), json!("v2"))
    );
    assert_eq!(next(&mut other_on_a).await.2, json!("v2"));
    drop(a);
    drop(b);
}

/// A TCP proxy to the PostgreSQL of a URL, which a test cuts (every connection through it
/// closed, new ones refused) and restores on the same port: a database host that goes away
/// and comes back.
struct DatabaseProxy {
    port: u16,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DatabaseProxy {
    async fn start(url: &str) -> Self {
        let authority = url.split('@').nth(1).unwrap().split('/').next().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Self {
            port,
            target: authority.to_owned(),
            task: None,
        };
        proxy.serve(listener);
        proxy
    }

    /// `url` through the proxy.
    fn url(&self, url: &str) -> String {
        url.replacen(&self.target, &format!("127.0.0.1:{}", self.port), 1)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // The connections live in the accept task's set: aborting it closes them all.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }
}

/// A database that cannot be reached is answered `503 unavailable` with `Retry-After`, not a
/// bare 500, and stores nothing; once it is back, the same requests succeed (probe 5,
/// finding 8).
#[tokio::test]
async fn a_database_out_of_reach_is_answered_503_with_retry_after_and_the_server_recovers() {
    let db = TestDatabase::create().await;
    let mut proxy = DatabaseProxy::start(&db.url).await;
    let t = replica(&proxy.url(&db.url), Duration::from_secs(3600)).await;
    t.post_policy(ADMIN, fleet_policy("v1", 5)).await;

    proxy.cut().await;
    for (method, path, body) in [
        (Method::POST, "/api/policy", Some(fleet_policy("v2", 6))),
        (Method::GET, "/api/agents", None),
        (Method::GET, "/api/policy/versions", None),
    ] {
        let mut request = t
            .client
            .request(method.clone(), format!("{}{path}", t.base))
            .bearer_auth(ADMIN);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        assert_eq!(
            response.headers()["retry-after"].to_str().unwrap(),
            "5",
            "{method} {path}"
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["error"],
            json!({"code": "unavailable", "message": "the database is unavailable; retry in 5 s"}),
            "{method} {path}"
        );
    }

    proxy.restore().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = t.post("/api/policy", ADMIN, fleet_policy("v2", 6)).await;
        if status == StatusCode::CREATED {
            // The refused post stored nothing: this one is v2.
            assert_eq!(body["data"]["version"], "v2", "{body}");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            Instant::now() < deadline,
            "the server never recovered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, versions) = t.get("/api/policy/versions", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{versions}");
    let names: Vec<&str> = versions["data"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["v2", "v1"]);
    drop(t);
}

/// A replica as a process of its own (the real binary), to be killed with SIGKILL.
struct ReplicaProcess {
    child: tokio::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

async fn replica_process(url: &str) -> ReplicaProcess {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-replica-proc-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_reference-server"))
        .args(["--listen", "127.0.0.1:0", "--plain-http", "--database", url])
        .arg("--data-dir")
        .arg(dir.path())
        .env("POLICY_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(base) = line.strip_prefix("listening on ") {
                return base.to_owned();
            }
        }
        panic!("the replica exited before listening");
    })
    .await
    .unwrap();
    ReplicaProcess {
        child,
        base,
        _dir: dir,
    }
}

/// Waits until the replica at `base` knows `token`.
async fn wait_until_known(client: &reqwest::Client, base: &str, token: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let response = client
            .get(format!("{base}/api/agents/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never learned the token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What one simulated agent saw: the versions of the `policy` events it got, in order, over
/// all its connections.
type Seen = Arc<Mutex<HashMap<usize, Vec<u64>>>>;

/// An agent following its stream on the first of `bases` that answers, reconnecting (with
/// `Last-Event-ID`, the version it runs) to the next one when a connection fails.
fn follow(
    index: usize,
    token: String,
    bases: Vec<String>,
    seen: Seen,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut last: Option<u64> = None;
        for attempt in 0.. {
            let base = &bases[attempt % bases.len()];
            let mut request = client.get(format!("{base}/api/events")).bearer_auth(&token);
            if let Some(version) = last {
                request = request.header("Last-Event-ID", version.to_string());
            }
            let Ok(mut response) = request.send().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if !response.status().is_success() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let mut pending = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find("\n\n") {
                    let frame: String = pending.drain(..end + 2).collect();
                    if !frame.lines().any(|l| l == "event: policy") {
                        continue;
                    }
                    let id = frame.lines().find_map(|l| l.strip_prefix("id:"));
                    let version: u64 = id.unwrap().trim().parse().unwrap();
                    last = Some(version);
                    seen.lock().unwrap().entry(index).or_default().push(version);
                }
            }
        }
    })
}

#[tokio::test]
async fn a_replica_killed_during_a_broadcast_loses_no_version_for_its_agents() {
    const AGENTS: usize = 40;
    const VERSIONS: u64 = 12;
    let db = TestDatabase::create().await;
    let a = replica(&db.url, Duration::from_secs(5)).await;
    let mut b = replica_process(&db.url).await;
    a.post_policy(ADMIN, fleet_policy("v1", 1)).await;
    let mut tokens = Vec::new();
    for index in 0..AGENTS {
        tokens.push(a.enroll(ADMIN, &format!("host-{index}")).await.1);
    }
    let on_b = reqwest::Client::new();
    for token in &tokens {
        wait_until_known(&on_b, &b.base, token).await;
    }
    let seen: Seen = Arc::default();
    let mut agents = Vec::new();
    for (index, token) in tokens.into_iter().enumerate() {
        // Every agent prefers B and fails over to A.
        let bases = vec![b.base.clone(), a.base.clone()];
        agents.push(follow(index, token, bases, seen.clone()));
    }
    let everyone_has = |version: u64| {
        let seen = seen.lock().unwrap();
        seen.len() == AGENTS && seen.values().all(|v| v.last() == Some(&version))
    };
    wait_for(|| everyone_has(1)).await;
    assert_eq!(
        a.server().state().hub.stream_count("default"),
        0,
        "all on B"
    );

    const KILLED_AT: u64 = 6;
    for version in 2..=VERSIONS {
        a.post_policy(ADMIN, fleet_policy(&format!("v{version}"), version as u32))
            .await;
        if version == KILLED_AT {
            // B is pushing this version to its streams right now.
            b.child.start_kill().unwrap();
            b.child.wait().await.unwrap();
            // Every agent reconnects to A with the version it runs: those that got the last
            // one from B do not get it again, the others get it now.
            wait_for(|| a.server().state().hub.stream_count("default") == AGENTS).await;
            wait_for(|| everyone_has(KILLED_AT)).await;
        }
    }
    wait_for(|| everyone_has(VERSIONS)).await;
    for agent in &agents {
        agent.abort();
    }
    let seen = seen.lock().unwrap();
    for (agent, versions) in seen.iter() {
        // Never the same version twice, never an older one after a newer.
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "agent {agent} saw {versions:?}"
        );
        assert_eq!(versions.last(), Some(&VERSIONS), "agent {agent}");
    }
    assert_eq!(a.server().state().hub.stream_count("default"), AGENTS);
}

/// A rollout's start and its next stage, made while B cannot listen, reach B's streams when it
/// listens again: each stage agent gets the version once, the agent outside gets nothing; the
/// abort after that reaches both with `rollbackFrom`.
#[tokio::test]
async fn rollout_stages_made_while_a_replica_cannot_listen_reach_it_once_when_it_reconnects() {
    let db = TestDatabase::create().await;
    let a = replica(&db.url, Duration::from_secs(5)).await;
    let (role, b) = replica_of_own_role(&db, "r").await;
    a.post_policy(ADMIN, fleet_policy("v1", 5)).await;
    let (_, outside_token) = a.enroll(ADMIN, "host-outside").await;
    let (first, first_token) = a.enroll(ADMIN, "host-first").await;
    let (second, second_token) = a.enroll(ADMIN, "host-second").await;
    for token in [&outside_token, &first_token, &second_token] {
        knows(&b, token).await;
    }
    let mut outside = b.stream(&outside_token, "default").await;
    let mut first_stream = b.stream(&first_token, "default").await;
    let mut second_stream = b.stream(&second_token, "default").await;
    for stream in [&mut outside, &mut first_stream, &mut second_stream] {
        assert_eq!(next_version(stream).await, ("1".into(), Value::Null));
    }

    cut_listener(&role).await;
    let id = start_rollout(&a, "v2", &first, &second).await;
    operate(&a, &id, "advance", "running").await;
    restore_listener(&role).await;
    assert_eq!(
        next_version(&mut first_stream).await,
        ("2".into(), Value::Null)
    );
    assert_eq!(
        next_version(&mut second_stream).await,
        ("2".into(), Value::Null)
    );
    operate(&a, &id, "abort", "aborted").await;
    for stream in [&mut first_stream, &mut second_stream] {
        assert_eq!(next_version(stream).await, ("1".into(), json!("v2")));
    }
    a.post_policy(ADMIN, fleet_policy("v3", 9)).await;
    for stream in [&mut outside, &mut first_stream, &mut second_stream] {
        assert_eq!(next_version(stream).await, ("3".into(), Value::Null));
    }
    drop(a);
    drop(b);
    admin_sql(&format!("DROP ROLE IF EXISTS {role}")).await;
}

/// A shadow run started on A reaches the agent streaming from B (and a stream opened on B
/// while it runs starts with it); its end, on B, reaches the agent streaming from A; both
/// replicas show the same run; nothing is sent twice (a plain version is the next event).
#[tokio::test]
async fn a_shadow_run_started_on_one_replica_and_ended_on_the_other_reaches_both() {
    let db = TestDatabase::create().await;
    let a = replica(&db.url, Duration::from_secs(5)).await;
    let b = replica(&db.url, Duration::from_secs(5)).await;
    a.post_policy(ADMIN, fleet_policy("v1", 5)).await;
    let (_, on_a_token) = a.enroll(ADMIN, "host-a").await;
    let (_, on_b_token) = a.enroll(ADMIN, "host-b").await;
    knows(&b, &on_b_token).await;
    let mut on_a = a.stream(&on_a_token, "default").await;
    let mut on_b = b.stream(&on_b_token, "default").await;
    for stream in [&mut on_a, &mut on_b] {
        assert_eq!(next_version(stream).await, ("1".into(), Value::Null));
    }

    let (status, body) = a
        .call(
            Method::POST,
            "/api/policy?shadow=true",
            Some(ADMIN),
            Some(fleet_policy("candidate", 3)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["shadow"], 1, "{body}");
    for stream in [&mut on_a, &mut on_b] {
        let event = stream.next_event().await;
        assert_eq!(event.event, "shadow", "{:?}", event.data);
        assert_eq!(event.data["shadow"], 1);
        assert_eq!(event.data["name"], "candidate");
    }
    // A stream opened on B now starts with its version, then the run.
    on_b.close();
    let mut on_b = b.stream(&on_b_token, "default").await;
    assert_eq!(next_version(&mut on_b).await, ("1".into(), Value::Null));
    let event = on_b.next_event().await;
    assert_eq!(
        (event.event.as_str(), &event.data["shadow"]),
        ("shadow", &json!(1))
    );

    let (status, body) = b
        .call(Method::DELETE, "/api/policy/shadow", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["data"]["endedAt"].is_string(), "{body}");
    for stream in [&mut on_a, &mut on_b] {
        let event = stream.next_event().await;
        assert_eq!(event.event, "shadow_end", "{:?}", event.data);
        assert_eq!(event.data, json!({"shadow": 1}));
    }
    for t in [&a, &b] {
        let (status, body) = t.get("/api/policy/shadow", ADMIN).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["run"]["shadow"], 1, "{body}");
        assert_eq!(body["data"]["run"]["name"], "candidate", "{body}");
        assert!(body["data"]["run"]["endedAt"].is_string(), "{body}");
    }
    // A plain version as a fence: nothing else came before it.
    b.post_policy(ADMIN, fleet_policy("v2", 6)).await;
    for stream in [&mut on_a, &mut on_b] {
        assert_eq!(next_version(stream).await, ("2".into(), Value::Null));
    }
}

/// An alert report sent to A and resent (same `reportId`, as an agent's outbox does when it
/// did not see the answer) to B notifies the webhook once: both answers are the first one,
/// and B queued no delivery of its own. A different alert sent to B afterwards is the fence:
/// once its delivery arrived, the webhook got exactly two, one per report.
#[tokio::test]
async fn an_alert_resent_to_the_other_replica_notifies_once() {
    let db = TestDatabase::create().await;
    let sink = HttpSink::start(0).await;
    let notify: NotifyConfig = serde_json::from_value(json!({
        "channels": {"telegram": {"type": "webhook", "url": format!("http://{}/hook", sink.addr)}},
        "retry": {"attempts": 3, "initialBackoffMs": 10, "maxBackoffMs": 50, "timeoutMs": 5000}
    }))
    .unwrap();
    let a = replica_notifying(&db.url, Duration::from_secs(5), Some(notify.clone())).await;
    let b = replica_notifying(&db.url, Duration::from_secs(5), Some(notify)).await;
    a.post_policy(ADMIN, fleet_policy("v1", 5)).await;
    let (agent, token) = a.enroll(ADMIN, "host-1").await;
    knows(&b, &token).await;
    // The report is checked against the version sent to the agent: it streams first.
    let mut stream = a.stream(&token, "default").await;
    assert_eq!(next_version(&mut stream).await, ("1".into(), Value::Null));

    let alert = |count: u32, id: &str| {
        json!({"action": "alert", "severity": "critical", "count": count,
               "channels": ["telegram"], "rule": 1, "policyVersion": "v1", "reportId": id})
    };
    let path = format!("/api/agents/{agent}/reports");
    let (status, first) = a.post(&path, &token, alert(6, "rpt-alert-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["data"]["notified"], json!(["telegram"]), "{first}");
    let (status, again) = b.post(&path, &token, alert(6, "rpt-alert-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["data"], first["data"]);
    let (status, fence) = b.post(&path, &token, alert(9, "rpt-alert-2")).await;
    assert_eq!(status, StatusCode::CREATED, "{fence}");

    wait_for(|| sink.requests().len() >= 2).await;
    let counts: Vec<Value> = sink
        .requests()
        .iter()
        .map(|(path, body)| {
            assert_eq!(path, "/hook");
            body["alert"]["count"].clone()
        })
        .collect();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(
        counts.contains(&json!(6)) && counts.contains(&json!(9)),
        "{counts:?}"
    );
    stream.close();
}
