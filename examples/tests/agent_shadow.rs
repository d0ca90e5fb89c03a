//! Shadow, with real agent binaries against the real server over TLS: a rule in shadow mode
//! inside the enforced version and a shadow run of the next version are evaluated on the same
//! events as the enforced version and execute nothing; the server's difference per rule is
//! what enforcement then does: after the shadow run's document is promoted to the enforced
//! version, replaying the same events makes the enforced counts per rule equal the shadow
//! run's earlier would-be counts, and the agents' acks count the same actions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent_common::*;
use serde_json::{Value, json};

/// The enforced version: rule 2 runs in shadow mode.
fn enforced() -> Value {
    json!({"name": "enforced", "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5, "duration": "1h", "scope": "host"}},
        {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.9}},
        {"type": "auto_respond", "mode": "shadow", "config": {"trigger": "ransomware", "action": "kill_process", "minConfidence": 0.5}}
    ]})
}

/// The candidate: lower thresholds, and rule 2 enforced.
fn candidate() -> Value {
    json!({"name": "candidate", "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 3, "duration": "1h", "scope": "host"}},
        {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.5}},
        {"type": "auto_respond", "config": {"trigger": "ransomware", "action": "kill_process", "minConfidence": 0.5}}
    ]})
}

fn brute_force(ip: &str, times: usize) -> String {
    format!("{{\"type\":\"brute_force\",\"srcIp\":\"{ip}\"}}\n").repeat(times)
}

/// The events of agent A, and of agent B.
fn events_a() -> String {
    let mut events = brute_force("203.0.113.7", 6);
    events.push_str(&brute_force("203.0.113.8", 3));
    events.push_str("{\"type\":\"malware\",\"confidence\":0.95,\"pid\":100}\n");
    events.push_str("{\"type\":\"malware\",\"confidence\":0.6,\"pid\":101}\n");
    events.push_str("{\"type\":\"ransomware\",\"confidence\":0.7,\"pid\":200}\n");
    events
}

fn events_b() -> String {
    brute_force("198.51.100.9", 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_difference_is_what_enforcement_then_does_on_the_same_events() {
    let data = tempfile::tempdir().unwrap();
    let state_a = tempfile::tempdir().unwrap();
    let state_b = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = server.base_url();
    let admin = Admin::new(&base, data.path());
    let ca = ca_file(data.path());
    let (id_a, token_a) = admin.enroll("a").await;
    let (id_b, token_b) = admin.enroll("b").await;
    let args = |token: &str, state: &Path| agent_args(&base, &ca, token, state);
    let args_a = args(&token_a, state_a.path());
    let args_b = args(&token_b, state_b.path());
    let mut agent_a = AgentProcess::spawn_owned(&args_a);
    let mut agent_b = AgentProcess::spawn_owned(&args_b);

    admin.post_policy(enforced()).await;
    for id in [&id_a, &id_b] {
        admin
            .wait_agent(id, "v1 applied", |a| {
                a["ack"]["version"] == "v1" && a["ack"]["status"] == "applied"
            })
            .await;
    }

    // The shadow run of the candidate: both agents report it before any event is sent.
    let (status, run) = admin
        .call(
            reqwest::Method::POST,
            "/api/policy?shadow=true",
            Some(candidate()),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["data"]["shadow"], 1);
    assert_eq!(run["data"]["sentTo"], 2);
    let before = wait_diff(&admin, "both agents on shadow run 1", |d| {
        d["agents"]["reporting"] == 2 && d["run"]["shadow"] == 1
    })
    .await;
    assert_eq!(before["enforcedVersion"], "v1");

    // Phase 1: the enforced version acts (a block after five attempts, the confident kill);
    // the shadow-mode rule and the shadow run only count.
    agent_a.send(&events_a());
    agent_b.send(&events_b());
    let line = agent_a.next_line().await;
    assert!(
        line.contains("\"block_ip\"") && line.contains("203.0.113.7"),
        "{line}"
    );
    let line = agent_a.next_line().await;
    assert!(
        line.contains("\"kill_process\"") && line.contains("\"pid\":100"),
        "{line}"
    );
    let shadow = wait_diff(&admin, "the phase 1 counts", |d| {
        rule(d, 0)["shadow"]["block_ip"] == 3 && rule(d, 2)["shadow"]["kill_process"] == 1
    })
    .await;
    assert_eq!(
        counts(&shadow, "shadow"),
        json!([{"block_ip": 3}, {"kill_process": 2}, {"kill_process": 1}])
    );
    assert_eq!(
        counts(&shadow, "enforced"),
        json!([{"block_ip": 1}, {"kill_process": 1}, {}])
    );
    assert_eq!(
        counts(&shadow, "added"),
        json!([{"block_ip": 2}, {"kill_process": 1}, {"kill_process": 1}])
    );
    assert_eq!(counts(&shadow, "removed"), json!([{}, {}, {}]));
    let mut by_agent = rule(&shadow, 0)["byAgent"].as_array().unwrap().clone();
    by_agent.sort_by_key(|a| a["agentId"].as_str().unwrap().to_owned());
    let mut expected = vec![
        json!({"agentId": id_a, "shadow": 2, "enforced": 1}),
        json!({"agentId": id_b, "shadow": 1, "enforced": 0}),
    ];
    expected.sort_by_key(|a| a["agentId"].as_str().unwrap().to_owned());
    assert_eq!(by_agent, expected);
    let targets: Vec<&str> = rule(&shadow, 0)["topTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["198.51.100.9", "203.0.113.7", "203.0.113.8"]);
    assert_eq!(
        shadow["shadowRules"],
        json!([{"rule": 2, "type": "auto_respond", "wouldBe": {"kill_process": 1},
                "topTargets": [{"action": "kill_process", "target": "200", "count": 1}],
                "byAgent": [{"agentId": id_a, "wouldBe": 1}]}]),
        "the shadow-mode rule of the enforced version, by agent"
    );

    // Phase 2: the candidate becomes the enforced version; the same events again.
    admin.post_policy(candidate()).await;
    for id in [&id_a, &id_b] {
        admin
            .wait_agent(id, "v2 applied", |a| {
                a["ack"]["version"] == "v2" && a["ack"]["status"] == "applied"
            })
            .await;
    }
    wait_diff(&admin, "both agents report about v2", |d| {
        d["enforcedVersion"] == "v2" && d["agents"]["reporting"] == 2
    })
    .await;
    agent_a.send(&events_a());
    agent_b.send(&events_b());
    let enforced_now = wait_diff(&admin, "the phase 2 counts", |d| {
        rule(d, 0)["enforced"]["block_ip"] == 3 && rule(d, 2)["enforced"]["kill_process"] == 1
    })
    .await;
    assert_eq!(
        counts(&enforced_now, "enforced"),
        counts(&shadow, "shadow"),
        "what enforcement did per rule is what the shadow run said it would do"
    );
    // The acks count the executed actions independently of the shadow reports.
    let acked_a = admin
        .wait_agent(&id_a, "a's actions under v2", |a| {
            a["ack"]["actions"] == json!({"block_ip": 2, "kill_process": 3})
        })
        .await;
    assert_eq!(acked_a["ack"]["version"], "v2");
    admin
        .wait_agent(&id_b, "b's actions under v2", |a| {
            a["ack"]["actions"] == json!({"block_ip": 1})
        })
        .await;
    let mut executed = Vec::new();
    for _ in 0..5 {
        let line: Value = serde_json::from_str(&agent_a.next_line().await).unwrap();
        executed.push((line["action"].clone(), line["rule"].clone()));
    }
    executed.sort_by_key(|(a, r)| format!("{a}{r}"));
    assert_eq!(
        executed,
        [
            (json!("block_ip"), json!(0)),
            (json!("block_ip"), json!(0)),
            (json!("kill_process"), json!(1)),
            (json!("kill_process"), json!(1)),
            (json!("kill_process"), json!(2)),
        ]
    );

    // Ending the run: agents stop it; the start and the end are audited.
    let (status, ended) = admin
        .call(reqwest::Method::DELETE, "/api/policy/shadow", None)
        .await;
    assert_eq!(status, 200, "{ended}");
    assert!(ended["data"]["endedAt"].is_string(), "{ended}");
    let (status, again) = admin
        .call(reqwest::Method::DELETE, "/api/policy/shadow", None)
        .await;
    assert_eq!(
        (status, again["error"]["message"].clone()),
        (404, json!("no shadow run in org `default`"))
    );
    let actions: Vec<String> = admin
        .audit("?limit=200")
        .await
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("shadow"))
        .map(str::to_owned)
        .collect();
    assert_eq!(actions, ["shadow_ended", "shadow_started"]);

    let line = agent_b.next_line().await;
    assert!(
        line.contains("\"block_ip\"") && line.contains("198.51.100.9"),
        "{line}"
    );

    let (code, _) = agent_a.finish().await;
    assert_eq!(code, Some(0));
    let (code, _) = agent_b.finish().await;
    assert_eq!(code, Some(0));
}

/// Rule `index` of the diff's `rules`.
fn rule(diff: &Value, index: u64) -> &Value {
    diff["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["rule"] == index))
        .unwrap_or(&Value::Null)
}

/// `field` of rules 0, 1 and 2 of the diff.
fn counts(diff: &Value, field: &str) -> Value {
    Value::Array((0..3).map(|i| rule(diff, i)[field].clone()).collect())
}

/// Waits until `GET /api/policy/shadow` answers a difference with `check` true.
async fn wait_diff(admin: &Admin, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = admin
            .call(reqwest::Method::GET, "/api/policy/shadow", None)
            .await;
        assert_eq!(status, 200, "{body}");
        if check(&body["data"]) {
            return body["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
