//! The wire protocol against its golden files (`tests/data/protocol/*.json`): every shape reads
//! and writes back exactly as pinned; what the agent reads tolerates fields a newer server adds;
//! what the server reads refuses unknown fields with their path. The reference server's tests
//! check its real answers against the same files.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;

use policy_engine::protocol::{
    AckStatus, AgentIdentity, AgentPolicyView, ApprovalEvent, ApprovalStatus, BlockEvent,
    EnrollAnswer, EnrollRequest, ErrorEnvelope, FleetEvent, HeartbeatAnswer, HeartbeatRequest,
    MAX_SHADOW_SAMPLES_PER_RULE, MAX_SHADOW_TARGET_CHARS, Outcome, PolicyEvent, PolicyView, Report,
    ReportAnswer, ReportKind, ReportOutcome, SHADOW_END_EVENT, SHADOW_EVENT, ShadowEndEvent,
    ShadowEvent, SignedPolicy, UnblockEvent,
};
use policy_engine::{Action, PolicyVersion, ValidationError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn golden(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/protocol")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A shape the agent (or any client) reads: it reads the golden file, writes it back exactly,
/// and reads it the same with a field it does not know added at the top level.
fn check_read<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(name: &str) -> T {
    let value = golden(name);
    let parsed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(serde_json::to_value(&parsed).unwrap(), value, "{name}");
    let mut newer = value;
    newer
        .as_object_mut()
        .unwrap()
        .insert("addedByANewerServer".to_owned(), json!({"x": 1}));
    let tolerant: T = serde_json::from_value(newer).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(tolerant, parsed, "{name}");
    parsed
}

/// A shape the server reads: its strict reader reads the golden file, which writes back exactly;
/// an unknown field is refused at its path.
fn check_request<T: Serialize + PartialEq + std::fmt::Debug>(
    name: &str,
    read: fn(&Value) -> Result<T, Vec<ValidationError>>,
) -> T {
    let value = golden(name);
    let parsed = read(&value).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    assert_eq!(serde_json::to_value(&parsed).unwrap(), value, "{name}");
    let mut newer = value;
    newer
        .as_object_mut()
        .unwrap()
        .insert("addedLater".to_owned(), json!(1));
    let errors = read(&newer).unwrap_err();
    assert_eq!(errors.len(), 1, "{name}: {errors:?}");
    assert_eq!(errors[0].path, "addedLater", "{name}");
    assert!(
        errors[0].message.starts_with("unknown field `addedLater`"),
        "{name}: {}",
        errors[0].message
    );
    parsed
}

#[test]
fn stream_events_match_their_golden_files() {
    let policy: PolicyEvent = check_read("policy_event.json");
    assert_eq!(policy.version, PolicyVersion::new(3));
    assert_eq!(policy.rules.len(), 3);
    assert!(policy.signed.is_none());
    let signed: PolicyEvent = check_read("policy_event_signed.json");
    let part = signed.signed.as_ref().unwrap();
    assert_eq!(part.disabled_rules, [2]);
    assert_eq!(part.rules.len(), 3);
    assert_eq!(part.signature.key_id.len(), 16);
    let block: BlockEvent = check_read("block_event.json");
    assert_eq!(block.ip.to_string(), "203.0.113.7");
    assert!(block.expires_at.is_some());
    let permanent: BlockEvent = check_read("block_event_permanent.json");
    assert_eq!(permanent.expires_at, None);
    let unblock: UnblockEvent = check_read("unblock_event.json");
    assert_eq!(unblock.by, "admin:acme");
    let approval: ApprovalEvent = check_read("approval_event.json");
    assert_eq!(approval.approval_id, "apr_0123456789abcdef");
    let shadow: ShadowEvent = check_read("shadow_event.json");
    assert_eq!(shadow.shadow, 2);
    let document = shadow.into_document();
    let policy = policy_engine::Policy::from_value(&document).unwrap();
    assert_eq!(policy.rules[1].mode, policy_engine::RuleMode::Shadow);
    let end: ShadowEndEvent = check_read("shadow_end_event.json");
    assert_eq!(end.shadow, 2);
    // Fleet events are not shadow events: an agent that knows only fleet events ignores them.
    for name in [SHADOW_EVENT, SHADOW_END_EVENT] {
        assert!(FleetEvent::parse(name, "{}").unwrap().is_none(), "{name}");
    }

    for (name, file) in [
        ("block", "block_event.json"),
        ("unblock", "unblock_event.json"),
        ("approval", "approval_event.json"),
    ] {
        let data = golden(file).to_string();
        let event = FleetEvent::parse(name, &data).unwrap().unwrap();
        assert_eq!(event.name(), name);
        assert_eq!(
            serde_json::from_str::<Value>(&event.data()).unwrap(),
            golden(file)
        );
    }
}

#[test]
fn agent_endpoints_match_their_golden_files() {
    let file = check_request("signed_policy.json", SignedPolicy::from_value);
    assert_eq!(file.org_id, "acme");
    assert_eq!(file.version, PolicyVersion::new(4));
    let request = check_request("enroll_request.json", EnrollRequest::from_value);
    assert_eq!(request.org_id.as_deref(), Some("acme"));
    let answer: EnrollAnswer = check_read("enroll_answer.json");
    assert_eq!(answer.agent_id, "agent-1a2b3c4d5e6f");
    let identity: AgentIdentity = check_read("agent_identity.json");
    assert_eq!(identity.agent_id, answer.agent_id);
    let heartbeat = check_request("heartbeat_request.json", HeartbeatRequest::from_value);
    assert_eq!(heartbeat.policy_version, Some(PolicyVersion::new(2)));
    let reply: HeartbeatAnswer = check_read("heartbeat_answer.json");
    assert!(reply.outdated);
    assert!(reply.accepts_acks);
    let older: HeartbeatAnswer = serde_json::from_value(json!({"agentId": "a",
        "policyVersion": null, "currentPolicyVersion": null, "outdated": false}))
    .unwrap();
    assert!(!older.accepts_acks, "an older server announces no acks");
    let acked = check_request("heartbeat_request_ack.json", HeartbeatRequest::from_value);
    let ack = acked.ack.unwrap();
    assert_eq!(ack.status, AckStatus::Applied);
    assert_eq!(ack.actions["kill_process"], 1);
    assert!(reply.accepts_shadow);
    assert!(
        !older.accepts_shadow,
        "an older server announces no shadow reports"
    );
    let shadowed = check_request(
        "heartbeat_request_shadow.json",
        HeartbeatRequest::from_value,
    );
    let report = shadowed.shadow.unwrap();
    assert_eq!(report.enforced.version, PolicyVersion::new(3));
    let candidate = report.candidate.unwrap();
    assert_eq!((candidate.shadow, candidate.rules.len()), (2, 2));
    assert_eq!(candidate.rules[1].samples[0].target, "4242 (nc)");
}

#[test]
fn shadow_reports_are_bounded_and_say_where() {
    let sample =
        json!({"action": "block_ip", "target": "203.0.113.7", "at": "2026-03-07T12:00:00.000Z"});
    let too_many = vec![sample.clone(); MAX_SHADOW_SAMPLES_PER_RULE + 1];
    let long_target = json!({"action": "block_ip", "target": "x".repeat(MAX_SHADOW_TARGET_CHARS + 1),
        "at": "2026-03-07T12:00:00.000Z"});
    let body = json!({"shadow": {
        "since": "yesterday",
        "enforced": {"rules": [
            {"rule": 0, "actions": {"block_ip": 1}, "samples": too_many},
            {"rule": 0, "actions": {"block_ip": -1}},
            {"rule": 1, "actions": {}, "samples": [long_target], "extra": true}
        ]},
        "candidate": {"shadow": "one", "rules": {}}
    }});
    assert_eq!(
        errors(HeartbeatRequest::from_value(&body)),
        [
            "shadow.since: expected an RFC 3339 time like `2026-03-07T12:00:00.000Z`, found `yesterday`",
            "shadow.enforced.version: missing required field `version`",
            "shadow.enforced.rules[0].samples: expected at most 5 samples, found 6",
            "shadow.enforced.rules[1].rule: rule 0 is listed twice",
            "shadow.enforced.rules[1].actions.block_ip: expected a non-negative integer, found `-1`",
            "shadow.enforced.rules[2].extra: unknown field `extra`, expected one of `rule`, `actions`, `samples`",
            "shadow.enforced.rules[2].samples[0].target: expected at most 256 characters",
            "shadow.candidate.shadow: expected a non-negative integer, found the string `one`",
            "shadow.candidate.rules: expected an array, found an object",
        ]
    );
    // At most MAX_SHADOW_SAMPLES in all, over every rule and both sides.
    let rules: Vec<Value> = (0..41)
        .map(|rule| {
            json!({"rule": rule, "actions": {"block_ip": 5},
            "samples": vec![sample.clone(); MAX_SHADOW_SAMPLES_PER_RULE]})
        })
        .collect();
    let body = json!({"shadow": {"since": "2026-03-07T12:00:00.000Z",
        "enforced": {"version": "v1", "rules": rules}}});
    assert_eq!(
        errors(HeartbeatRequest::from_value(&body)),
        ["shadow: expected at most 200 samples in all, found 205"]
    );
}

#[test]
fn reports_and_their_answers_match_their_golden_files() {
    let block = check_request("report_fleet_block.json", Report::from_value);
    assert_eq!(block.outcome(), ReportOutcome::Executed);
    assert_eq!(
        block.report_id.as_ref().map(|id| id.as_str()),
        Some("rpt_5d0c1a2b3c4d5e6f")
    );
    let request = check_request("report_approval_request.json", Report::from_value);
    assert!(matches!(
        request.record.action,
        Action::ApprovalRequest { .. }
    ));
    let outcome = check_request("report_approval_outcome.json", Report::from_value);
    assert_eq!(outcome.approval_id.as_deref(), Some("apr_0123456789abcdef"));

    let answer: ReportAnswer = check_read("report_answer_fleet_block.json");
    assert_eq!(answer.kind, ReportKind::FleetBlock);
    assert_eq!(answer.report_id, block.report_id);
    let answer: ReportAnswer = check_read("report_answer_approval_request.json");
    assert_eq!(
        answer.approval.map(|a| a.status),
        Some(ApprovalStatus::Pending)
    );
    let answer: ReportAnswer = check_read("report_answer_alert.json");
    assert_eq!(
        answer.notified,
        Some(vec!["ops".to_owned(), "telegram".to_owned()])
    );
}

#[test]
fn views_and_the_error_envelope_match_their_golden_files() {
    let policy: PolicyView = check_read("policy_view.json");
    assert_eq!(policy.broadcasted_to, Some(8));
    let agent: AgentPolicyView = check_read("agent_policy_view.json");
    assert_eq!(agent.policy_version, PolicyVersion::new(3));
    let error: ErrorEnvelope = check_read("error_envelope.json");
    assert_eq!(error.error.path.as_deref(), Some("scpoe"));
}

#[test]
fn executor_outcomes_keep_their_shape() {
    let outcomes: Vec<Outcome> = serde_json::from_value(golden("outcomes.json")).unwrap();
    assert_eq!(
        outcomes,
        [
            Outcome::done("blocked `203.0.113.7` for 24h"),
            Outcome::skipped("`10.0.0.1` is on the allowlist"),
            Outcome::failed("nft: command timed out after 5s"),
        ]
    );
    assert_eq!(
        serde_json::to_value(&outcomes).unwrap(),
        golden("outcomes.json")
    );
    let reported: Vec<ReportOutcome> = outcomes.iter().map(ReportOutcome::from).collect();
    assert_eq!(
        reported,
        [
            ReportOutcome::Executed,
            ReportOutcome::Skipped,
            ReportOutcome::Failed
        ]
    );
}

#[test]
fn bad_requests_say_what_and_where() {
    let cases: [(Value, Reader, &[&str]); 8] = [
        (
            json!({"hostname": "", "orgId": "a b"}),
            |v| errors(EnrollRequest::from_value(v)),
            &[
                "hostname: expected a non-empty string, found an empty one",
                "orgId: expected 1 to 64 letters, digits, `-`, `_` or `.`, found `a b`",
            ],
        ),
        (
            json!({"policyVersion": "3", "lastError": 7}),
            |v| errors(HeartbeatRequest::from_value(v)),
            &[
                "policyVersion: expected a policy version like `v3`, found `3`",
                "lastError: expected a string, found `7`",
            ],
        ),
        (
            json!({"action": "block_ip", "ip": "203.0.113.7", "duration": "1h", "scpoe": "fleet",
                   "rule": 0, "policyVersion": "v1"}),
            |v| errors(Report::from_value(v)),
            &["scope: invalid action record: missing field `scope`"],
        ),
        (
            json!({"action": "kill_process", "pid": 1, "rule": 0, "policyVersion": "v1",
                   "outcome": "done", "reportId": "has space", "approvalId": "", "extra": 1}),
            |v| errors(Report::from_value(v)),
            &[
                "outcome: unknown outcome `done`, expected one of `executed`, `failed`, `refused`, `skipped`, `requested`",
                "approvalId: expected 1 to 64 letters, digits, `-`, `_`, `.` or `:`, found ``",
                "reportId: expected 1 to 64 letters, digits, `-`, `_`, `.` or `:`, found `has space`",
                "extra: unknown field `extra`",
            ],
        ),
        (
            json!({"action": "kill_process", "pid": 1, "rule": 0, "policyVersion": "v1",
                   "reportId": "r".repeat(65)}),
            |v| errors(Report::from_value(v)),
            &[
                "reportId: expected 1 to 64 letters, digits, `-`, `_`, `.` or `:`, found `rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr`",
            ],
        ),
        // Bad values inside the action record: each at its field, all of them (the typed
        // reader named none and stopped at the first).
        (
            json!({"action": "block_ip", "ip": "1.2.3.4x", "duration": "2x", "scope": "planet",
                   "rule": -1, "policyVersion": "v1", "outcome": "done"}),
            |v| errors(Report::from_value(v)),
            &[
                "outcome: unknown outcome `done`, expected one of `executed`, `failed`, `refused`, `skipped`, `requested`",
                "duration: expected a duration like `30s`, `15m`, `24h`, `7d`, `2w` or `permanent`, found `2x`",
                "ip: expected an IP address, found the string `1.2.3.4x`",
                "rule: expected a rule index (a non-negative integer), found `-1`",
                "scope: unknown variant `planet`, expected `host` or `fleet`",
            ],
        ),
        (
            json!({"action": "nuke", "pid": -1, "rule": 0, "policyVersion": "v01"}),
            |v| errors(Report::from_value(v)),
            &[
                "action: unknown action `nuke`, expected one of `block_ip`, `alert`, `kill_process`, `quarantine_file`, `isolate_host`, `approval_request`, `custom`",
                "pid: expected a process id from 0 to 4294967295, found `-1`",
                "policyVersion: expected a policy version like `v3`, found `v01`",
            ],
        ),
        (
            json!({"action": "approval_request", "request": {"action": "kill_process", "pid": "x"},
                   "rule": 0, "policyVersion": "v1"}),
            |v| errors(Report::from_value(v)),
            &["request.pid: expected a process id from 0 to 4294967295, found the string `x`"],
        ),
    ];
    for (body, read, expected) in cases {
        assert_eq!(read(&body), expected, "{body}");
    }
}

/// A strict reader with its errors as `path: message` lines.
type Reader = fn(&Value) -> Vec<String>;

fn errors<T>(result: Result<T, Vec<ValidationError>>) -> Vec<String> {
    match result {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// The agent's side of the same files: what it writes is what the server's golden requests
/// hold, and what it reads parses.
#[cfg(feature = "sync")]
mod agent {
    use super::*;
    use policy_engine::sync::{Enrollment, HeartbeatReply, PolicyUpdate};

    #[test]
    fn the_agent_reads_the_servers_golden_answers_and_events() {
        let update = PolicyUpdate::from_event(&golden("policy_event.json").to_string()).unwrap();
        assert_eq!(update.version, PolicyVersion::new(3));
        assert!(policy_engine::Policy::from_value(&update.document).is_ok());
        let enrollment: Enrollment = serde_json::from_value(golden("enroll_answer.json")).unwrap();
        assert_eq!(enrollment.token.len(), 68);
        let reply: HeartbeatReply =
            serde_json::from_value(golden("heartbeat_answer.json")).unwrap();
        assert_eq!(reply.current_policy_version, Some(PolicyVersion::new(3)));
    }

    #[test]
    fn the_agent_writes_reports_as_pinned() {
        let golden_report = golden("report_fleet_block.json");
        let parsed = Report::from_value(&golden_report).unwrap();
        let mut local = Report::local(
            parsed.record.clone(),
            &Outcome::done("blocked `203.0.113.7` for 24h"),
        );
        local.report_id = parsed.report_id.clone();
        assert_eq!(serde_json::to_value(&local).unwrap(), golden_report);
    }
}

#[test]
fn reported_addresses_are_read_in_their_canonical_form() {
    // `::ffff:a.b.c.d` is a.b.c.d (CONTRACT section 2): one block, one audit trail.
    let ip = |body: Value| match Report::from_value(&body).unwrap().record.action {
        policy_engine::Action::BlockIp { ip, .. } => ip,
        policy_engine::Action::ApprovalRequest { request } => match *request {
            policy_engine::Action::BlockIp { ip, .. } => ip,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let block = |address: &str| {
        json!({"action": "block_ip", "ip": address, "duration": "1h", "scope": "fleet",
               "rule": 0, "policyVersion": "v1"})
    };
    let v4: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    assert_eq!(ip(block("::ffff:10.0.0.1")), v4);
    assert_eq!(ip(block("::ffff:a00:1")), v4);
    assert_eq!(ip(block("10.0.0.1")), v4);
    assert_eq!(ip(block("2001:db8::1")).to_string(), "2001:db8::1");
    let request = json!({"action": "approval_request", "rule": 0, "policyVersion": "v1",
        "request": {"action": "block_ip", "ip": "::ffff:10.0.0.1", "duration": "1h", "scope": "host"}});
    assert_eq!(ip(request), v4);
}
