//! The `simulate` example as an operator runs it: actions on stdout, summary on stderr,
//! bad lines reported by number and skipped.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use examples::example_bin;

const POLICY: &str = r#"{"name":"t","rules":[
  {"type":"block_ip","config":{"trigger":"brute_force","threshold":3,"duration":"1h","scope":"host","window":"10m"}},
  {"type":"custom","config":{"condition":"dstPort == 4444","action":"isolate_host"}}]}"#;

const EVENTS: &str = r#"{"id":"a1","timestamp":"2026-03-07T12:00:00Z","type":"brute_force","srcIp":"203.0.113.7"}
not json
{"id":"a2","timestamp":"2026-03-07T12:00:01Z","type":"brute_force","srcIp":"::ffff:203.0.113.7"}
{"id":"a3","timestamp":"2026-03-07T12:00:02Z","type":"brute_force","srcIp":"203.0.113.7"}
{"id":"a4","timestamp":"2026-03-07T12:00:03Z","type":"brute_force","srcIp":"203.0.113.7"}
{"id":"c2","timestamp":"2026-03-07T12:00:05Z","type":"x","dstPort":4444,"host":"web-1"}
"#;

#[test]
fn replays_events_and_prints_actions_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&policy, POLICY).unwrap();
    std::fs::write(&events, EVENTS).unwrap();
    let output = Command::new(example_bin("simulate"))
        .arg("--policy")
        .arg(&policy)
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    // The mapped address counts as the IPv4 one; the fourth event is ignored while blocked.
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        concat!(
            r#"{"action":"block_ip","ip":"203.0.113.7","duration":"1h","scope":"host","rule":0,"policyVersion":"v1","eventId":"a3"}"#,
            "\n",
            r#"{"action":"isolate_host","host":"web-1","rule":1,"policyVersion":"v1","eventId":"c2"}"#,
            "\n"
        )
    );
    let summary = String::from_utf8(output.stderr).unwrap();
    for line in [
        "events read: 5",
        "skipped lines: 1 (2)",
        "actions: 2 (block_ip 1, isolate_host 1)",
        "condition errors: 4",
    ] {
        assert!(
            summary.lines().any(|l| l == line),
            "{line:?} not in\n{summary}"
        );
    }
}

#[test]
fn an_invalid_policy_is_refused_with_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"name":"t","rules":[{"type":"block_ip","config":{}}]}"#,
    )
    .unwrap();
    let output = Command::new(example_bin("simulate"))
        .arg("--policy")
        .arg(&policy)
        .args(["--events", "-"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("rules[0].config.trigger: missing required field `trigger`"),
        "{stderr}"
    );
}

/// A key cap of 0 cannot hold the key being counted: refused before anything is read (it
/// acted as 1 before).
#[test]
fn a_key_cap_of_zero_is_refused() {
    let output = Command::new(example_bin("simulate"))
        .args(["--max-keys", "0", "--policy", "-", "--events", "-"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("invalid value '0' for '--max-keys <MAX_KEYS>': 0 is not in 1.."),
        "{stderr}"
    );
}

/// A rule in shadow mode: its actions are counted in the summary, never printed as actions.
#[test]
fn shadow_rules_are_counted_not_acted_on() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &policy,
        POLICY.replace(
            r#"{"type":"custom","config""#,
            r#"{"type":"custom","mode":"shadow","config""#,
        ),
    )
    .unwrap();
    std::fs::write(&events, EVENTS).unwrap();
    let output = Command::new(example_bin("simulate"))
        .arg("--policy")
        .arg(&policy)
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(r#""action":"block_ip""#), "{stdout}");
    let summary = String::from_utf8(output.stderr).unwrap();
    for line in [
        "actions: 1 (block_ip 1)",
        "shadow actions (would-be, not taken): 1 (isolate_host 1)",
    ] {
        assert!(
            summary.lines().any(|l| l == line),
            "{line:?} not in\n{summary}"
        );
    }
}
