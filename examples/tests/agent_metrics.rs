//! The agent's Prometheus metrics, scraped over a real socket while a real agent follows a real
//! server: the figures move as events are read and skipped, rules match, actions succeed or
//! fail, keys are evicted, conditions fail, a policy is refused and then replaced, and the
//! server goes away with reports waiting in the outbox. Once through the library
//! (`AgentBuilder::metrics_listen`), once through the reference agent's `--metrics-listen`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent_common::*;
use crate::metrics_docs;
use policy_engine::agent::{Agent, Settings, Source};
use policy_engine::executor::{Executor, Outcome};
use policy_engine::sync::{BackoffConfig, StateStore, StoredPolicy, TlsTrust};
use policy_engine::{Action, ActionRecord, Policy, PolicyVersion};
use serde_json::{Value, json};

/// One scrape: every sample by its series as the agent writes it, and the metrics it declares
/// with their types.
#[derive(Debug)]
struct Scrape(BTreeMap<String, f64>, BTreeMap<String, String>);

impl Scrape {
    fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no `{series}` in {self:#?}"))
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect(),
        metrics_docs::declared(&text),
    )
}

/// Scrapes until `condition` holds.
async fn scrape_until(addr: SocketAddr, what: &str, condition: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = scrape(addr).await;
        if condition(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "{what}: {scrape:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills succeed, blocks fail (no firewall here), anything else is done.
struct Host;

impl Executor for Host {
    fn execute(&self, record: &ActionRecord) -> Outcome {
        match record.action {
            Action::BlockIp { .. } => Outcome::failed("no firewall on this test host"),
            _ => Outcome::done("done"),
        }
    }

    fn unblock(&self, _ip: IpAddr) -> Outcome {
        Outcome::done("unblocked")
    }
}

fn rules() -> Value {
    json!([
        {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.5}},
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 2, "duration": "1h", "scope": "host"}},
        {"type": "custom", "config": {"condition": "dstPort > 1000", "action": "notify_soc"}}
    ])
}

fn append(file: &Path, lines: &[&str]) {
    let mut out = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    for line in lines {
        writeln!(out, "{line}").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_figures_move_as_the_agent_works() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, token) = admin.enroll("metrics-host").await;
    admin
        .post_policy(json!({"name": "server v1", "rules": rules()}))
        .await;
    // The agent's disk holds a newer version than the server (a server restored from an old
    // backup): it refuses v1 and says so.
    let document = json!({"name": "disk v2", "rules": rules()});
    StateStore::new(state.path())
        .save(&StoredPolicy {
            version: PolicyVersion::new(2),
            policy: Policy::from_value(&document).unwrap(),
            signature: None,
        })
        .unwrap();
    let events = state.path().join("events.jsonl");
    std::fs::write(&events, "").unwrap();

    let agent = Agent::builder(&base, state.path())
        .token(token)
        .agent_id(&agent_id)
        .trust(TlsTrust::CaFile(ca_file(data.path())))
        .executor(Host)
        .source(Source::json_lines(&events, true))
        .max_keys_per_rule(2)
        .settings(Settings {
            heartbeat_interval: Duration::from_millis(200),
            backoff: BackoffConfig {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
            },
            upkeep_interval: Duration::from_millis(50),
            ..Settings::default()
        })
        .metrics_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .start()
        .await
        .unwrap();
    let handle = agent.handle();
    let addr = handle.metrics_addr().unwrap();
    let running = tokio::spawn(agent.run());

    let refused =
        r#"policy_agent_sync_last_error{message="policy v1 refused: older than the applied v2"}"#;
    let start = scrape_until(addr, "connected, v1 refused", |s| {
        s.get("policy_agent_sync_connected") == Some(1.0) && s.get(refused) == Some(1.0)
    })
    .await;
    assert_eq!(start.value("policy_agent_policy_version"), 2.0);
    assert_eq!(start.value("policy_agent_events_total"), 0.0);
    assert!(start.value("policy_agent_sync_seconds_since_contact") < 10.0);

    append(
        &events,
        &[
            r#"{"id":"m1","type":"malware","confidence":0.9,"pid":4242}"#,
            "not json",
            r#"{"id":"b1","type":"brute_force","srcIp":"10.0.0.1"}"#,
            r#"{"id":"b2","type":"brute_force","srcIp":"10.0.0.1"}"#,
            r#"{"id":"b3","type":"brute_force","srcIp":"10.0.0.2"}"#,
            r#"{"id":"b4","type":"brute_force","srcIp":"10.0.0.3"}"#,
            r#"{"id":"p1","type":"scan","dstPort":2222}"#,
        ],
    );
    // The executor runs actions on its own lanes, each counted once its report is filed. The
    // server refuses the three reports for good (422: they are about v2, which it never sent
    // to this agent), so they leave the outbox as dropped.
    let worked = scrape_until(addr, "seven lines, three actions reported", |s| {
        s.get("policy_agent_event_lines_total") == Some(7.0)
            && s.get("policy_agent_outbox_reports") == Some(0.0)
            && s.get("policy_agent_outbox_dropped_reports_total") == Some(3.0)
            && [
                r#"policy_agent_actions_total{action="custom",outcome="done",origin="local"}"#,
                r#"policy_agent_actions_total{action="kill_process",outcome="done",origin="local"}"#,
                r#"policy_agent_actions_total{action="block_ip",outcome="failed",origin="local"}"#,
            ]
            .iter()
            .all(|series| s.get(series) == Some(1.0))
    })
    .await;
    for (series, expected) in [
        ("policy_agent_events_total", 6.0),
        ("policy_agent_event_lines_skipped_total", 1.0),
        ("policy_agent_engine_evaluation_duration_seconds_count", 6.0),
        (r#"policy_agent_rule_matches_total{rule="0"}"#, 1.0),
        (r#"policy_agent_rule_matches_total{rule="1"}"#, 1.0),
        (r#"policy_agent_rule_matches_total{rule="2"}"#, 1.0),
        (
            r#"policy_agent_actions_total{action="kill_process",outcome="done",origin="local"}"#,
            1.0,
        ),
        (
            r#"policy_agent_actions_total{action="block_ip",outcome="failed",origin="local"}"#,
            1.0,
        ),
        // Every event but the scan lacks `dstPort`: the custom rule's condition fails on it.
        ("policy_agent_engine_condition_errors_total", 5.0),
        // Three addresses under a cap of two: one evicted, two tracked.
        ("policy_agent_engine_evictions_total", 1.0),
        ("policy_agent_engine_tracked_keys", 2.0),
    ] {
        assert_eq!(worked.value(series), expected, "{series}");
    }

    // Between them, these two scrapes show every metric of a running agent (the last error
    // only while it stands): the README documents exactly those, and the dashboard queries
    // nothing else.
    let mut declared = start.1.clone();
    declared.extend(worked.1.clone());
    // No action goes past a budget here: that family has no series yet.
    metrics_docs::check(
        "policy_agent_",
        &declared,
        &["policy_agent_budget_exceeded_total"],
    );

    // A newer version from the server replaces the disk's: the refusal is gone (a note of the
    // dropped reports may stand in its place).
    admin
        .post_policy(json!({"name": "server v2", "rules": rules()}))
        .await;
    admin
        .post_policy(json!({"name": "server v3", "rules": rules()}))
        .await;
    let updated = scrape_until(addr, "v3 applied", |s| {
        s.get("policy_agent_policy_version") == Some(3.0)
    })
    .await;
    assert_eq!(updated.get(refused), None, "{updated:#?}");
    for series in updated.0.keys() {
        if series.starts_with("policy_agent_sync_last_error") {
            // (The note may be from before the last drop.)
            assert!(
                series.starts_with(r#"policy_agent_sync_last_error{message="outbox: "#)
                    && series.contains(" action reports dropped, the last at "),
                "{updated:#?}"
            );
        }
    }

    // The server goes away: disconnected, and the next report waits in the outbox.
    server.shutdown().await;
    scrape_until(addr, "disconnected", |s| {
        s.get("policy_agent_sync_connected") == Some(0.0)
    })
    .await;
    append(
        &events,
        &[r#"{"id":"m2","type":"malware","confidence":0.9,"pid":4243}"#],
    );
    let waiting = scrape_until(addr, "the kill counted", |s| {
        s.get(r#"policy_agent_actions_total{action="kill_process",outcome="done",origin="local"}"#)
            == Some(2.0)
    })
    .await;
    assert_eq!(
        waiting.value("policy_agent_outbox_reports"),
        1.0,
        "{waiting:#?}"
    );

    handle.shutdown();
    let summary = running.await.unwrap().unwrap();
    // The report the server never got stays on disk for the next start.
    assert_eq!(summary.reports_left, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_agent_serves_its_metrics_with_metrics_listen() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let (agent_id, token) = admin.enroll("cli-metrics").await;
    admin.post_policy(policy(1)).await;
    // A free port for the agent (the agent binds it right after).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let ca = ca_file(data.path());
    let mut agent = AgentProcess::spawn(&[
        "--server",
        &base,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--state-dir",
        state.path().to_str().unwrap(),
        "--token",
        &token,
        "--agent-id",
        &agent_id,
        "--dry-run",
        "--metrics-listen",
        &listen,
    ]);
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("http://{addr}/metrics"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "no metrics on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    scrape_until(addr, "v1 running", |s| {
        s.get("policy_agent_policy_version") == Some(1.0)
    })
    .await;
    agent.send("{\"id\":\"e1\",\"type\":\"malware\",\"confidence\":0.9,\"pid\":7}\n");
    agent.next_line().await;
    let after = scrape_until(addr, "the dry run reported", |s| {
        s.get(
            r#"policy_agent_actions_total{action="kill_process",outcome="skipped",origin="local"}"#,
        ) == Some(1.0)
    })
    .await;
    assert_eq!(after.value("policy_agent_events_total"), 1.0);
    // Only `GET /metrics` without a query.
    let client = reqwest::Client::new();
    for (request, status) in [
        (client.get(format!("http://{addr}/other")), 404),
        (client.post(format!("http://{addr}/metrics")), 405),
        (client.get(format!("http://{addr}/metrics?debug=1")), 400),
    ] {
        assert_eq!(request.send().await.unwrap().status(), status);
    }
    let (code, stderr) = agent.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("metrics on http://{addr}/metrics")),
        "{stderr}"
    );
    server.shutdown().await;
}
