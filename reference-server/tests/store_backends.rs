//! The two store backends decide alike: the same checks run on SQLite (one server) and on
//! PostgreSQL with two stores on one database (two replicas writing at once). Versions and
//! change numbers stay gap-free and unique under concurrent writers, every pushed write records
//! its change, a report is acted on once whichever replica gets it, an expired approval expires
//! once however many replicas sweep, an alert delivery is claimed by one replica, a replica
//! hears of the other's commits, and what the console, the metrics and rollouts read (version
//! lists, orgs, acks and shadow reports, rollouts and shadow runs with their changes, the fleet
//! summary) reads alike.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::postgres::TestDatabase;
use chrono::Utc;
use policy_engine::policy::{Limit, OnExceed};
use policy_engine::protocol::{
    AckStatus, ApprovalStatus, EnforcedTally, PolicySignature, ReportId, ReportKind, RolloutTerms,
    ShadowReport, SignatureAlgorithm, VersionAck,
};
use policy_engine::{Action, ActionRecord, Policy, PolicyVersion};
use reference_server::auth::{Principal, TokenHash};
use reference_server::store::postgres::PgStore;
use reference_server::store::sqlite::SqliteStore;
use reference_server::store::{
    AgentRecord, Approval, AuditFilter, ChangeKind, Decision, Finish, Heartbeat,
    MAX_SENT_PER_AGENT, NewBlock, NewDelivery, NewEntry, NewPolicy, Notice, ReportReceipt, Rollout,
    RolloutGate, RolloutStage, RolloutState, SMALL_SENT_BATCH, SentPolicy, ShadowRun, Store,
    StoreError, StoredOverrides, StoredShadowReport,
};
use serde_json::json;

/// Two handles on one database: the same SQLite store twice (it has one writer), or two
/// PostgreSQL stores (two replicas).
struct Pair {
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    /// Whether `a` and `b` are two servers on one database (PostgreSQL replicas).
    shared: bool,
    _keep: Box<dyn std::any::Any + Send>,
}

async fn sqlite() -> Pair {
    let dir = tempfile::Builder::new()
        .prefix(&format!("store-backends-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("policy.db"))
            .await
            .unwrap(),
    );
    Pair {
        a: store.clone(),
        b: store,
        shared: false,
        _keep: Box::new(dir),
    }
}

async fn postgres() -> Pair {
    let db = TestDatabase::create().await;
    let a: Arc<dyn Store> = Arc::new(PgStore::open(&db.url).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(PgStore::open(&db.url).await.unwrap());
    Pair {
        a,
        b,
        shared: true,
        _keep: Box::new(db),
    }
}

fn policy(name: &str) -> Arc<Policy> {
    Arc::new(
        Policy::from_json(
            json!({"name": name, "rules": [{"type": "custom",
                "config": {"condition": "severityLevel >= 3", "action": "alert"}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap(),
    )
}

/// An unsigned policy version of `acme` to store.
fn unsigned(policy: Arc<Policy>, id: String) -> NewPolicy {
    NewPolicy {
        org_id: "acme".to_owned(),
        policy,
        id,
        created_at: Utc::now(),
        signed: None,
    }
}

/// A signature as the server stores it (the store does not verify it; the server checks the
/// file's shape and agents verify).
fn signature(key_id: &str) -> PolicySignature {
    PolicySignature {
        key_id: key_id.to_owned(),
        algorithm: SignatureAlgorithm::Ed25519,
        value: "c2lnbmF0dXJl".to_owned(),
        rollout: Some(RolloutTerms {
            fallback: Some(PolicyVersion::new(1)),
        }),
    }
}

fn agent(id: &str, org: &str) -> AgentRecord {
    AgentRecord {
        id: id.to_owned(),
        org_id: org.to_owned(),
        hostname: format!("host-{id}"),
        enrolled_at: Utc::now(),
        last_seen: None,
        policy_version: None,
        last_error: None,
        ack: None,
        shadow: None,
    }
}

fn entry(org: &str, actor: &str, action: &str) -> NewEntry {
    NewEntry {
        org_id: org.to_owned(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        outcome: "stored".to_owned(),
        detail: Some(json!({})),
        ..NewEntry::default()
    }
}

fn approval(id: &str, org: &str, agent: &str, expires_ms: i64) -> Approval {
    Approval {
        id: id.to_owned(),
        org_id: org.to_owned(),
        agent_id: agent.to_owned(),
        request: ActionRecord {
            action: Action::IsolateHost { host: None },
            rule: 0,
            policy_version: PolicyVersion::new(1),
            event_id: None,
        },
        status: ApprovalStatus::Pending,
        created_ms: expires_ms - 1000,
        expires_ms,
        decided_ms: None,
        decided_by: None,
        reason: None,
    }
}

/// 20 versions written at once, half through each handle: numbers 1..=20, each once, and
/// their changes 1..=20 in the same order; both handles then read the latest.
async fn versions_are_gap_free_under_concurrent_writers(pair: Pair) {
    let writes = (0..20).map(|i| {
        let store = if i % 2 == 0 {
            pair.a.clone()
        } else {
            pair.b.clone()
        };
        tokio::spawn(async move {
            store
                .insert_policy(unsigned(policy(&format!("p{i}")), format!("pol_{i}")))
                .await
                .unwrap()
        })
    });
    let mut written: Vec<(u64, u64)> = Vec::new();
    for write in writes {
        let pushed = write.await.unwrap();
        written.push((pushed.value.version.number(), pushed.seq.unwrap()));
    }
    written.sort_unstable();
    let expected: Vec<(u64, u64)> = (1..=20).map(|n| (n, n)).collect();
    assert_eq!(written, expected);
    let changes = pair.a.changes("acme".to_owned(), 0, 100).await.unwrap();
    let read: Vec<(u64, ChangeKind)> = changes.into_iter().map(|c| (c.seq, c.kind)).collect();
    let expected: Vec<(u64, ChangeKind)> = (1..=20)
        .map(|n| {
            (
                n,
                ChangeKind::Policy {
                    version: PolicyVersion::new(n),
                },
            )
        })
        .collect();
    assert_eq!(read, expected);
    assert_eq!(pair.b.change_seq("acme".to_owned()).await.unwrap(), 20);
    assert_eq!(pair.b.change_seq("other".to_owned()).await.unwrap(), 0);
    let paged = pair.b.changes("acme".to_owned(), 15, 3).await.unwrap();
    assert_eq!(
        paged.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [16, 17, 18]
    );
    for store in [&pair.a, &pair.b] {
        let latest = store
            .latest_policy("acme".to_owned())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(latest.version, PolicyVersion::new(20));
    }
    // A newer version written through one handle is read at once through the other (each
    // caches the latest it validated).
    for (writer, reader) in [(&pair.a, &pair.b), (&pair.b, &pair.a)] {
        let pushed = writer
            .insert_policy(unsigned(
                policy("next"),
                format!("pol_next_{}", Utc::now().timestamp_micros()),
            ))
            .await
            .unwrap();
        let latest = reader
            .latest_policy("acme".to_owned())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (latest.version, latest.policy.name.as_str()),
            (pushed.value.version, "next")
        );
        let old = reader
            .policy("acme".to_owned(), PolicyVersion::new(3))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((old.policy.name.as_str(), old.id.as_str()), ("p2", "pol_2"));
    }
}

/// Every write whose effect goes to streams records the change that names it; writes that push
/// nothing record none; a stream's snapshot is the state as of its last change.
async fn pushed_writes_record_their_changes(pair: Pair) {
    let (a, b) = (&pair.a, &pair.b);
    a.insert_agent(agent("agent-1", "acme"), TokenHash::of("t1"))
        .await
        .unwrap();
    a.insert_agent(agent("agent-2", "acme"), TokenHash::of("t2"))
        .await
        .unwrap();
    let first = a
        .insert_policy(unsigned(policy("p"), "pol_1".to_owned()))
        .await
        .unwrap();
    let overrides = StoredOverrides {
        list: json!([{"rule": 0, "enabled": false}]),
        updated_at: Utc::now(),
    };
    let set = b
        .set_overrides("acme".to_owned(), "agent-1".to_owned(), overrides.clone())
        .await
        .unwrap();
    let now = Utc::now().timestamp_millis();
    let new_block = |agent: &str, duration: &str, now_ms: i64| NewBlock {
        org_id: "acme".to_owned(),
        ip: "203.0.113.7".parse().unwrap(),
        duration: duration.parse().unwrap(),
        agent_id: agent.to_owned(),
        rule: 0,
        policy_version: PolicyVersion::new(1),
        now_ms,
    };
    let block = a
        .upsert_block(
            new_block("agent-2", "1h", now),
            entry("acme", "agent-2", "block_ip"),
        )
        .await
        .unwrap();
    assert!(block.value.changed);
    let duplicate = b
        .upsert_block(
            new_block("agent-1", "10m", now + 1),
            entry("acme", "agent-1", "block_ip"),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            duplicate.value.changed,
            duplicate.seq,
            duplicate.value.block.reports
        ),
        (false, None, 2)
    );
    a.insert_approval(
        approval("apr_1", "acme", "agent-2", now + 60_000),
        entry("acme", "agent-2", "approval_request"),
    )
    .await
    .unwrap();
    a.insert_approval(
        approval("apr_2", "acme", "agent-2", now + 60_000),
        entry("acme", "agent-2", "approval_request"),
    )
    .await
    .unwrap();
    let decide = |id: &str, approve: bool| Decision {
        id: id.to_owned(),
        org: None,
        approve,
        by: "admin".to_owned(),
        reason: None,
        now_ms: now + 10,
    };
    let approved = b
        .decide_approval(decide("apr_1", true))
        .await
        .unwrap()
        .unwrap();
    let denied = a
        .decide_approval(decide("apr_2", false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(denied.seq, None);
    let snapshot = b
        .stream_snapshot("acme".to_owned(), "agent-2".to_owned(), now + 20)
        .await
        .unwrap();
    assert_eq!(snapshot.seq, 4);
    assert_eq!(snapshot.policy.map(|p| p.version.number()), Some(1));
    assert_eq!(snapshot.overrides, None);
    assert_eq!(snapshot.blocks.len(), 1);
    assert_eq!(
        snapshot
            .approved
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["apr_1"]
    );
    let of_agent_1 = a
        .stream_snapshot("acme".to_owned(), "agent-1".to_owned(), now + 20)
        .await
        .unwrap();
    assert_eq!(of_agent_1.overrides.map(|o| o.list), Some(overrides.list));
    assert!(of_agent_1.approved.is_empty());
    let listed = b.active_blocks("acme".to_owned(), now + 20).await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.ip.to_string()).collect::<Vec<_>>(),
        ["203.0.113.7"]
    );
    let mut lift = entry("acme", "admin:acme", "unblock");
    lift.ip = Some("203.0.113.7".parse().unwrap());
    let lifted = b
        .remove_block(
            "acme".to_owned(),
            "203.0.113.7".parse().unwrap(),
            now + 30,
            lift.clone(),
        )
        .await
        .unwrap();
    assert!(lifted.value.is_some());
    let again = a
        .remove_block(
            "acme".to_owned(),
            "203.0.113.7".parse().unwrap(),
            now + 40,
            lift,
        )
        .await
        .unwrap();
    assert_eq!((again.value, again.seq), (None, None));
    let seqs = [first.seq, set.seq, block.seq, approved.seq, lifted.seq];
    assert_eq!(seqs, [Some(1), Some(2), Some(3), Some(4), Some(5)]);
    let kinds: Vec<ChangeKind> = a
        .changes("acme".to_owned(), 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.kind)
        .collect();
    let ip = "203.0.113.7".parse().unwrap();
    assert_eq!(
        kinds,
        [
            ChangeKind::Policy {
                version: PolicyVersion::new(1)
            },
            ChangeKind::Overrides {
                agent_id: "agent-1".to_owned()
            },
            ChangeKind::Block {
                ip,
                reporter: "agent-2".to_owned()
            },
            ChangeKind::Approved {
                approval_id: "apr_1".to_owned(),
                agent_id: "agent-2".to_owned()
            },
            ChangeKind::Unblock {
                ip,
                by: "admin:acme".to_owned()
            },
        ]
    );
    let block = b.block("acme".to_owned(), ip).await.unwrap();
    assert_eq!(block, None);
    let read = b.approval("apr_1".to_owned()).await.unwrap().unwrap();
    assert_eq!(read.status, ApprovalStatus::Approved);
    assert_eq!(
        b.token(TokenHash::of("t2")).await.unwrap(),
        Some(Principal::Agent {
            agent_id: "agent-2".to_owned(),
            org_id: "acme".to_owned()
        })
    );
    assert_eq!(b.token(TokenHash::of("nope")).await.unwrap(), None);
    // The console's list leaves out, and deletes, a block whose time is up.
    let short: std::net::IpAddr = "198.51.100.9".parse().unwrap();
    a.upsert_block(
        NewBlock {
            ip: short,
            ..new_block("agent-2", "1m", now)
        },
        entry("acme", "agent-2", "block_ip"),
    )
    .await
    .unwrap();
    assert!(b.block("acme".to_owned(), short).await.unwrap().is_some());
    let later = now + 120_000;
    assert_eq!(b.active_blocks("acme".to_owned(), later).await.unwrap(), []);
    assert_eq!(a.block("acme".to_owned(), short).await.unwrap(), None);
}

/// The same report sent to both replicas at once: one acts on it, the other is told it is a
/// duplicate; both read the receipt.
async fn a_report_is_acted_on_once(pair: Pair) {
    pair.a
        .insert_agent(agent("agent-1", "acme"), TokenHash::of("t1"))
        .await
        .unwrap();
    let report_id: ReportId = "rep-1".parse().unwrap();
    let with_receipt = || {
        let mut entry = entry("acme", "agent-1", "alert");
        entry.receipt = Some(ReportReceipt {
            agent_id: "agent-1".to_owned(),
            report_id: report_id.clone(),
            kind: ReportKind::Alert,
            answer: None,
        });
        entry
    };
    let (first, second) = tokio::join!(
        pair.a.append_audit(with_receipt(), Utc::now()),
        pair.b.append_audit(with_receipt(), Utc::now()),
    );
    let outcomes = [first, second];
    let acted = outcomes.iter().filter(|r| r.is_ok()).count();
    let duplicates: Vec<String> = outcomes
        .iter()
        .filter_map(|r| match r {
            Err(e @ StoreError::DuplicateReport { .. }) => Some(e.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(acted, 1, "{outcomes:?}");
    assert_eq!(
        duplicates,
        ["report `rep-1` of agent `agent-1` was already received"]
    );
    pair.b
        .set_report_answer(
            "agent-1".to_owned(),
            report_id.clone(),
            json!({"kind": "alert"}),
        )
        .await
        .unwrap();
    let receipt = pair
        .a
        .report_receipt("agent-1".to_owned(), report_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (receipt.kind, receipt.answer),
        (ReportKind::Alert, Some(json!({"kind": "alert"})))
    );
    let page = pair
        .b
        .audit(AuditFilter {
            org_id: "acme".to_owned(),
            action: Some("alert".to_owned()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
}

/// Both replicas sweep at the same time: each expired request expires once, with one audit
/// entry.
async fn expired_approvals_expire_once(pair: Pair) {
    let now = Utc::now().timestamp_millis();
    for i in 0..30 {
        pair.a
            .insert_approval(
                approval(&format!("apr_{i}"), "acme", "agent-1", now - 10),
                entry("acme", "agent-1", "approval_request"),
            )
            .await
            .unwrap();
    }
    pair.a
        .insert_approval(
            approval("apr_live", "acme", "agent-1", now + 600_000),
            entry("acme", "agent-1", "approval_request"),
        )
        .await
        .unwrap();
    let (a, b) = tokio::join!(pair.a.expire_approvals(now), pair.b.expire_approvals(now));
    assert_eq!(a.unwrap() + b.unwrap(), 30);
    assert_eq!(pair.b.expire_approvals(now).await.unwrap(), 0);
    let page = pair
        .a
        .audit(AuditFilter {
            org_id: "acme".to_owned(),
            action: Some("approval_expired".to_owned()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 30);
    let pending = pair
        .b
        .approvals("acme".to_owned(), Some(ApprovalStatus::Pending), 100)
        .await
        .unwrap();
    assert_eq!(
        pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["apr_live"]
    );
}

/// Probe 2, findings 2 and 6: an approved request is closed once, by one of two outcome reports
/// racing on two replicas, and keeps the admin's `decided_ms`; an outcome of a request that is
/// not approved (pending, already executed, past its expiry, another agent's) writes nothing,
/// not even its audit entry; an approved request the sweeper expires keeps its decision time.
async fn an_approval_is_finished_once_and_keeps_its_decision(pair: Pair) {
    let now = Utc::now().timestamp_millis();
    for (id, expires_ms) in [
        ("apr_ok", now + 60_000),
        ("apr_pending", now + 60_000),
        ("apr_late", now + 30),
    ] {
        pair.a
            .insert_approval(
                approval(id, "acme", "agent-1", expires_ms),
                entry("acme", "agent-1", "approval_request"),
            )
            .await
            .unwrap();
    }
    for id in ["apr_ok", "apr_late"] {
        pair.b
            .decide_approval(Decision {
                id: id.to_owned(),
                org: None,
                approve: true,
                by: "admin".to_owned(),
                reason: None,
                now_ms: now + 10,
            })
            .await
            .unwrap()
            .unwrap();
    }
    let finish = |id: &str, agent: &str, now_ms: i64| {
        (
            Finish {
                id: id.to_owned(),
                agent_id: agent.to_owned(),
                executed: true,
                now_ms,
            },
            entry("acme", agent, "isolate_host"),
        )
    };
    let (f1, e1) = finish("apr_ok", "agent-1", now + 20);
    let (f2, e2) = finish("apr_ok", "agent-1", now + 20);
    let (a, b) = tokio::join!(
        pair.a.finish_approval(f1, e1),
        pair.b.finish_approval(f2, e2)
    );
    assert_eq!([a.unwrap(), b.unwrap()].iter().filter(|c| **c).count(), 1);
    for (id, agent, at) in [
        ("apr_ok", "agent-1", now + 30),
        ("apr_pending", "agent-1", now + 30),
        ("apr_late", "agent-1", now + 30),
        ("apr_ok", "agent-2", now + 30),
    ] {
        let (f, e) = finish(id, agent, at);
        assert!(!pair.a.finish_approval(f, e).await.unwrap(), "{id} {agent}");
    }
    let read = pair.b.approval("apr_ok".to_owned()).await.unwrap().unwrap();
    assert_eq!(read.status, ApprovalStatus::Executed);
    assert_eq!(read.decided_ms, Some(now + 10));
    let page = pair
        .a
        .audit(AuditFilter {
            org_id: "acme".to_owned(),
            action: Some("isolate_host".to_owned()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(pair.b.expire_approvals(now + 40).await.unwrap(), 1);
    let late = pair
        .a
        .approval("apr_late".to_owned())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late.status, ApprovalStatus::Expired);
    assert_eq!(late.decided_ms, Some(now + 10));
}

/// A signed version is stored only as the version it was signed for, with its signature, read
/// back alike through either handle; two replicas racing with a signature for the same next
/// version store it once, and the other is told which version is next; a refused one records
/// no change.
async fn signed_versions_are_taken_once(pair: Pair) {
    let v1 = pair
        .a
        .insert_policy(unsigned(policy("p1"), "pol_1".to_owned()))
        .await
        .unwrap();
    assert_eq!(v1.value.signature, None);
    let signed = |id: &str, version: u64, key: &str| NewPolicy {
        signed: Some((PolicyVersion::new(version), signature(key))),
        ..unsigned(policy(id), id.to_owned())
    };
    let (first, second) = tokio::join!(
        pair.a.insert_policy(signed("pol_a", 2, "aaaaaaaaaaaaaaaa")),
        pair.b.insert_policy(signed("pol_b", 2, "bbbbbbbbbbbbbbbb"))
    );
    let (stored, refused) = match (first, second) {
        (Ok(stored), Err(refused)) | (Err(refused), Ok(stored)) => (stored, refused),
        other => panic!("one of two writes signed for v2 must be stored: {other:?}"),
    };
    assert_eq!(
        (stored.value.version, stored.seq),
        (PolicyVersion::new(2), Some(2))
    );
    assert_eq!(
        refused.to_string(),
        "the policy is signed for v2, but the next version of org `acme` is v3"
    );
    assert!(
        matches!(refused, StoreError::VersionTaken { .. }),
        "{refused:?}"
    );
    let key = stored.value.signature.clone().unwrap().key_id;
    for store in [&pair.a, &pair.b] {
        let latest = store
            .latest_policy("acme".to_owned())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(latest.version, PolicyVersion::new(2));
        assert_eq!(latest.signature, Some(signature(&key)));
        let old = store
            .policy("acme".to_owned(), PolicyVersion::new(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(old.signature, None);
    }
    // Nothing of the refused write remains: the next unsigned version is v3, change 3.
    let next = pair
        .b
        .insert_policy(unsigned(policy("p3"), "pol_3".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        (next.value.version, next.seq),
        (PolicyVersion::new(3), Some(3))
    );
    assert_eq!(pair.a.change_seq("acme".to_owned()).await.unwrap(), 3);
}

/// Many writes at once (a fleet's streams reopening after a restart; PostgreSQL commits them
/// together) are each remembered as on their own: an agent's own row, which an org's newer
/// broadcasts do not prune (a broadcast row naming them all would be); and a failing write
/// fails alone.
async fn writes_at_once_keep_their_own_rows(pair: Pair) {
    let sent = |agent: String, version: u64, sent_ms: i64| SentPolicy {
        org_id: "acme".to_owned(),
        agent_id: agent,
        version: PolicyVersion::new(version),
        overrides: json!([]),
        sent_ms,
    };
    let opened: Vec<String> = (0..3 * SMALL_SENT_BATCH)
        .map(|i| format!("open-{i}"))
        .collect();
    let writes = opened.iter().enumerate().map(|(i, agent)| {
        let store = if i % 2 == 0 { &pair.a } else { &pair.b };
        store.record_sent(vec![sent(agent.clone(), 1, 1_000)])
    });
    for outcome in futures_util::future::join_all(writes).await {
        outcome.unwrap();
    }
    // A broadcast MAX_SENT_PER_AGENT versions later drops the org's broadcasts of version 1.
    let newer = 1 + u64::try_from(MAX_SENT_PER_AGENT).unwrap();
    let fleet = (0..=SMALL_SENT_BATCH).map(|i| sent(format!("fleet-{i}"), newer, 2_000));
    pair.a.record_sent(fleet.collect()).await.unwrap();
    for agent in &opened {
        assert_eq!(
            pair.b
                .sent_overrides("acme".to_owned(), agent.clone(), 1)
                .await
                .unwrap(),
            [json!([])],
            "{agent}"
        );
    }
    // A write PostgreSQL cannot store (text with a NUL byte) fails there, alone: the writes
    // committed with it are not lost. (SQLite stores it.)
    let together = [
        pair.a
            .record_sent(vec![sent("late-1".to_owned(), 2, 3_000)]),
        pair.a
            .record_sent(vec![sent("bad\0agent".to_owned(), 2, 3_000)]),
        pair.a
            .record_sent(vec![sent("late-2".to_owned(), 2, 3_000)]),
    ];
    let outcomes = futures_util::future::join_all(together).await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    if pair.shared {
        let error = outcomes[1].as_ref().unwrap_err().to_string();
        assert!(error.contains("0x00"), "{error}");
    } else {
        assert!(outcomes[1].is_ok(), "{outcomes:?}");
    }
    for agent in ["late-1", "late-2"] {
        assert_eq!(
            pair.b
                .sent_overrides("acme".to_owned(), agent.to_owned(), 2)
                .await
                .unwrap(),
            [json!([])]
        );
    }
}

/// What was sent to an agent is remembered on either handle, newest first, refreshed when sent
/// again, and bounded per agent; pending approvals are counted per agent.
async fn sent_policies_are_remembered_and_bounded(pair: Pair) {
    let sent = |agent: &str, version: u64, overrides: serde_json::Value, sent_ms: i64| SentPolicy {
        org_id: "acme".to_owned(),
        agent_id: agent.to_owned(),
        version: PolicyVersion::new(version),
        overrides,
        sent_ms,
    };
    let other = json!([{"rule": 0, "enabled": false}]);
    pair.a
        .record_sent(vec![
            sent("agent-1", 1, json!([]), 1_000),
            sent("agent-1", 1, other.clone(), 2_000),
            sent("agent-2", 1, json!([]), 1_000),
            // The same row twice in one call: one row, the later time.
            sent("agent-2", 2, json!([]), 1_000),
            sent("agent-2", 2, json!([]), 1_500),
        ])
        .await
        .unwrap();
    assert_eq!(
        pair.b
            .sent_overrides("acme".to_owned(), "agent-1".to_owned(), 1)
            .await
            .unwrap(),
        [other.clone(), json!([])]
    );
    // Sent again without overrides: that list is now the newest.
    pair.b
        .record_sent(vec![sent("agent-1", 1, json!([]), 3_000)])
        .await
        .unwrap();
    assert_eq!(
        pair.a
            .sent_overrides("acme".to_owned(), "agent-1".to_owned(), 1)
            .await
            .unwrap(),
        [json!([]), other.clone()]
    );
    assert_eq!(
        pair.a
            .sent_overrides("acme".to_owned(), "agent-1".to_owned(), 2)
            .await
            .unwrap(),
        Vec::<serde_json::Value>::new()
    );
    assert_eq!(
        pair.a
            .sent_overrides("acme".to_owned(), "agent-2".to_owned(), 2)
            .await
            .unwrap(),
        [json!([])]
    );
    // A long run of versions keeps the newest MAX_SENT_PER_AGENT rows of the agent only.
    let count = u64::try_from(MAX_SENT_PER_AGENT).unwrap() + 5;
    let run = (10..10 + count)
        .map(|v| sent("agent-1", v, json!([]), 10_000 + i64::try_from(v).unwrap()))
        .collect();
    pair.b.record_sent(run).await.unwrap();
    let mut kept = Vec::new();
    for version in [1, 2, 10, 14, 15, 9 + count] {
        let lists = pair
            .a
            .sent_overrides("acme".to_owned(), "agent-1".to_owned(), version)
            .await
            .unwrap();
        kept.push((version, lists.len()));
    }
    assert_eq!(
        kept,
        [(1, 0), (2, 0), (10, 0), (14, 0), (15, 1), (9 + count, 1)]
    );
    // Another agent's rows are not pruned with it.
    assert_eq!(
        pair.a
            .sent_overrides("acme".to_owned(), "agent-2".to_owned(), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    // A broadcast (more than SMALL_SENT_BATCH agents getting one version with one override
    // list) is one row naming them: it was sent to each of them, to no one else (not to an
    // agent whose id another's contains, nor to the same agent id of another org), and an
    // agent with other overrides in the same write keeps its own row. An org keeps the
    // broadcasts of its newest MAX_SENT_PER_AGENT versions.
    let fleet: Vec<String> = (0..=SMALL_SENT_BATCH)
        .map(|i| format!("fleet-{i:02}"))
        .collect();
    let last = 100 + u64::try_from(MAX_SENT_PER_AGENT).unwrap() + 2;
    for version in 100..=last {
        let mut broadcast: Vec<SentPolicy> = fleet
            .iter()
            .map(|agent| sent(agent, version, json!([]), i64::try_from(version).unwrap()))
            .collect();
        broadcast.push(sent("fleet-x", version, other.clone(), 7));
        pair.a.record_sent(broadcast).await.unwrap();
    }
    let window = u64::try_from(MAX_SENT_PER_AGENT).unwrap();
    let mut kept = Vec::new();
    for agent in [&fleet[0], &fleet[SMALL_SENT_BATCH]] {
        for version in [100, last - window, last - window + 1, last] {
            let lists = pair
                .b
                .sent_overrides("acme".to_owned(), agent.clone(), version)
                .await
                .unwrap();
            kept.push((version, lists.len()));
        }
    }
    let expected = [
        (100, 0),
        (last - window, 0),
        (last - window + 1, 1),
        (last, 1),
    ];
    assert_eq!(kept, [expected, expected].concat());
    assert_eq!(
        pair.b
            .sent_overrides("acme".to_owned(), "fleet-x".to_owned(), last)
            .await
            .unwrap(),
        [other]
    );
    for (org, agent) in [
        ("acme", "fleet-0"),
        ("acme", "leet-01"),
        ("other", "fleet-01"),
    ] {
        assert_eq!(
            pair.b
                .sent_overrides(org.to_owned(), agent.to_owned(), last)
                .await
                .unwrap(),
            Vec::<serde_json::Value>::new(),
            "{org}/{agent}"
        );
    }
    // The same version to the same agent alone later: both sends, newest first, one list.
    pair.a
        .record_sent(vec![sent(&fleet[1], last, json!([]), 1_000_000)])
        .await
        .unwrap();
    assert_eq!(
        pair.b
            .sent_overrides("acme".to_owned(), fleet[1].clone(), last)
            .await
            .unwrap(),
        [json!([])]
    );
    assert_eq!(
        pair.b
            .sent_overrides("acme".to_owned(), "agent-1".to_owned(), 9 + count)
            .await
            .unwrap()
            .len(),
        1
    );
    pair.a.record_sent(Vec::new()).await.unwrap();

    let far = Utc::now().timestamp_millis() + 3_600_000;
    for (id, agent) in [
        ("ap-1", "agent-1"),
        ("ap-2", "agent-1"),
        ("ap-3", "agent-2"),
    ] {
        pair.a
            .insert_approval(
                approval(id, "acme", agent, far),
                entry("acme", agent, "isolate"),
            )
            .await
            .unwrap();
    }
    pair.b
        .decide_approval(Decision {
            id: "ap-1".to_owned(),
            org: Some("acme".to_owned()),
            approve: false,
            by: "admin".to_owned(),
            reason: None,
            now_ms: Utc::now().timestamp_millis(),
        })
        .await
        .unwrap()
        .unwrap();
    let mut pending = Vec::new();
    for agent in ["agent-1", "agent-2", "agent-3"] {
        pending.push(pair.b.pending_approvals(agent.to_owned()).await.unwrap());
    }
    assert_eq!(pending, [1, 1, 0]);
}

/// A recording begun (`begin_record_sent`) is seen by every store call made after it, before
/// it is awaited: a broadcast queues its frames in between, and a report on one of them must
/// find its row. Then it commits.
async fn a_begun_recording_is_seen_by_later_calls(pair: Pair) {
    let rows: Vec<SentPolicy> = (0..2_000)
        .map(|i| SentPolicy {
            org_id: "acme".to_owned(),
            agent_id: format!("agent-{i:04}"),
            version: PolicyVersion::new(7),
            overrides: json!([]),
            sent_ms: 1_000,
        })
        .collect();
    let recording = pair.a.begin_record_sent(rows).await.unwrap();
    let before_commit = pair
        .b
        .sent_overrides("acme".to_owned(), "agent-1999".to_owned(), 7)
        .await
        .unwrap();
    recording.await.unwrap();
    assert_eq!(before_commit, [json!([])]);
    assert_eq!(
        pair.b
            .sent_overrides("acme".to_owned(), "agent-0000".to_owned(), 7)
            .await
            .unwrap(),
        [json!([])]
    );
    assert_eq!(
        pair.b
            .sent_overrides("acme".to_owned(), "agent-0000".to_owned(), 6)
            .await
            .unwrap(),
        Vec::<serde_json::Value>::new()
    );
    // Nothing to record: done at once.
    pair.a
        .begin_record_sent(Vec::new())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// An alert's audit entries (its receipt with its answer) and deliveries are stored together;
/// the same report again queues nothing; a delivery is handed out to one handle only (on two
/// replicas: to the one that claimed it) and ends once, with one audit entry.
async fn alert_deliveries_are_queued_and_finished_once(pair: Pair) {
    let report_id: ReportId = "alert-1".parse().unwrap();
    let alert_entries = || {
        let mut report = entry("acme", "agent-1", "alert");
        report.agent_id = Some("agent-1".to_owned());
        report.receipt = Some(ReportReceipt {
            agent_id: "agent-1".to_owned(),
            report_id: report_id.clone(),
            kind: ReportKind::Alert,
            answer: Some(json!({"queued": 2})),
        });
        let mut skipped = entry("acme", "server", "notify");
        skipped.outcome = "unknown_channel".to_owned();
        vec![report, skipped]
    };
    let deliveries = || {
        ["ops", "pager"]
            .map(|channel| NewDelivery {
                org_id: "acme".to_owned(),
                channel: channel.to_owned(),
                alert: json!({"channel": channel, "n": 1}),
            })
            .to_vec()
    };
    pair.a
        .insert_alert(alert_entries(), deliveries(), Utc::now())
        .await
        .unwrap();
    let again = pair
        .b
        .insert_alert(alert_entries(), deliveries(), Utc::now())
        .await
        .unwrap_err();
    assert_eq!(
        again.to_string(),
        "report `alert-1` of agent `agent-1` was already received"
    );
    let receipt = pair
        .b
        .report_receipt("agent-1".to_owned(), report_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.answer, Some(json!({"queued": 2})));

    let queued = pair.a.pending_deliveries(0, 10).await.unwrap();
    let channels: Vec<&str> = queued.iter().map(|d| d.channel.as_str()).collect();
    assert_eq!(channels, ["ops", "pager"], "queued once, oldest first");
    assert!(queued[0].id < queued[1].id);
    assert_eq!(queued[1].alert, json!({"channel": "pager", "n": 1}));
    let after = queued[1].id;
    if pair.shared {
        // Claimed by `a`: the other replica does not get them.
        assert_eq!(pair.b.pending_deliveries(0, 10).await.unwrap(), []);
    }
    // Handed out once to the handle that read them.
    assert_eq!(pair.a.pending_deliveries(after, 10).await.unwrap(), []);

    let mut done = entry("acme", "server", "notify");
    done.outcome = "delivered".to_owned();
    done.detail = Some(json!({"channel": "ops"}));
    pair.a
        .finish_delivery(queued[0].id, done.clone(), Utc::now())
        .await
        .unwrap();
    // Ended again (a claim that lapsed, finished by the other replica): no second entry.
    pair.b
        .finish_delivery(queued[0].id, done, Utc::now())
        .await
        .unwrap();
    let page = pair
        .b
        .audit(AuditFilter {
            org_id: "acme".to_owned(),
            action: Some("notify".to_owned()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let outcomes: Vec<&str> = page.entries.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["delivered", "unknown_channel"]);
    let alerts = pair
        .a
        .audit(AuditFilter {
            org_id: "acme".to_owned(),
            action: Some("alert".to_owned()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        alerts.entries.len(),
        1,
        "the duplicate report wrote nothing"
    );
}

/// Versions listed newest first with their names and counts (paged), every org known, an ack
/// kept by a heartbeat without one, rollouts stored with their audit entry and their change
/// and read back newest first, a stream snapshot with the rollout's previous version, and the
/// fleet summary, alike through either handle.
async fn console_rollout_and_summary_reads_agree(pair: Pair) {
    let two_rules = Arc::new(
        Policy::from_json(
            json!({"name": "two", "description": "second", "rules": [
                {"type": "custom", "config": {"condition": "severityLevel >= 3", "action": "alert"}},
                {"type": "custom", "config": {"condition": "severityLevel >= 5", "action": "alert"},
                 "enabled": false}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap(),
    );
    pair.a
        .insert_policy(unsigned(policy("one"), "pol_1".into()))
        .await
        .unwrap();
    pair.b
        .insert_policy(unsigned(two_rules, "pol_2".into()))
        .await
        .unwrap();
    pair.a
        .insert_policy(NewPolicy {
            org_id: "beta".into(),
            ..unsigned(policy("beta one"), "pol_b1".into())
        })
        .await
        .unwrap();
    let listed = pair
        .b
        .policy_versions("acme".into(), None, 10)
        .await
        .unwrap();
    let summary: Vec<_> = listed
        .iter()
        .map(|p| {
            (
                p.id.as_str(),
                p.version.number(),
                p.name.as_str(),
                p.description.as_deref(),
                p.rule_count,
                p.enabled_count,
                p.key_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("pol_2", 2, "two", Some("second"), 2, 1, None),
            ("pol_1", 1, "one", None, 1, 1, None),
        ]
    );
    let older = pair
        .a
        .policy_versions("acme".into(), Some(PolicyVersion::new(2)), 10)
        .await
        .unwrap();
    assert_eq!(
        older.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["pol_1"]
    );

    pair.a
        .insert_agent(agent("agent-g", "gamma"), TokenHash::of("agent-g-token"))
        .await
        .unwrap();
    pair.b
        .insert_agent(agent("agent-a", "acme"), TokenHash::of("agent-a-token"))
        .await
        .unwrap();
    pair.b
        .insert_token(
            TokenHash::of("delta-admin"),
            Principal::OrgAdmin {
                org_id: "delta".into(),
            },
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        pair.a.orgs().await.unwrap(),
        ["acme", "beta", "delta", "gamma"]
    );

    let ack = VersionAck {
        version: PolicyVersion::new(2),
        status: AckStatus::Refused,
        error: Some("unsigned".into()),
        at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
        actions: Default::default(),
        events: 40,
        condition_errors: 1,
    };
    let report = StoredShadowReport {
        received_ms: 1_700_000_000_500,
        report: ShadowReport {
            since: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            enforced: EnforcedTally {
                version: PolicyVersion::new(1),
                rules: vec![],
            },
            candidate: None,
        },
    };
    let beat = |ack: Option<VersionAck>, shadow: Option<StoredShadowReport>| Heartbeat {
        agent_id: "agent-a".into(),
        policy_version: Some(PolicyVersion::new(1)),
        last_error: None,
        ack,
        shadow,
        at: Utc::now(),
    };
    pair.a
        .heartbeat(beat(Some(ack.clone()), None))
        .await
        .unwrap();
    pair.b
        .heartbeat(beat(None, Some(report.clone())))
        .await
        .unwrap();
    pair.a.heartbeat(beat(None, None)).await.unwrap();
    // Each kept until one replaces it, whichever replica wrote it.
    let stored = pair.b.agent("agent-a".into()).await.unwrap().unwrap();
    assert_eq!(stored.ack, Some(ack));
    assert_eq!(stored.shadow, Some(report));

    let rollout = |id: &str, created_ms: i64, state: RolloutState| Rollout {
        id: id.into(),
        org_id: "acme".into(),
        version: PolicyVersion::new(2),
        previous: PolicyVersion::new(1),
        state,
        stage: 0,
        stages: vec![RolloutStage {
            percent: 10,
            agents: vec!["agent-a".into()],
            soak_secs: 60,
        }],
        gate: RolloutGate::default(),
        stage_started_ms: created_ms,
        created_ms,
        updated_ms: created_ms,
        reason: None,
    };
    let before = pair.a.change_seq("acme".into()).await.unwrap();
    let first = pair
        .a
        .put_rollout(
            rollout("ro_1", 1_000, RolloutState::Aborted),
            entry("acme", "admin", "rollout_created"),
        )
        .await
        .unwrap();
    pair.b
        .put_rollout(
            rollout("ro_2", 2_000, RolloutState::Running),
            entry("acme", "admin", "rollout_created"),
        )
        .await
        .unwrap();
    let moved = pair
        .a
        .put_rollout(
            rollout("ro_2", 2_000, RolloutState::Paused),
            entry("acme", "admin", "rollout_paused"),
        )
        .await
        .unwrap();
    assert_eq!(first.seq, Some(before + 1));
    assert_eq!(moved.seq, Some(before + 3));
    let changes = pair.b.changes("acme".into(), before, 10).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(),
        [
            ChangeKind::Rollout { id: "ro_1".into() },
            ChangeKind::Rollout { id: "ro_2".into() },
            ChangeKind::Rollout { id: "ro_2".into() },
        ]
    );
    let latest = pair.b.latest_rollout("acme".into()).await.unwrap().unwrap();
    assert_eq!(latest, rollout("ro_2", 2_000, RolloutState::Paused));
    assert_eq!(
        pair.a.rollout("ro_1".into()).await.unwrap(),
        Some(rollout("ro_1", 1_000, RolloutState::Aborted))
    );
    let ids: Vec<String> = pair
        .a
        .rollouts("acme".into(), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["ro_2", "ro_1"]);
    assert_eq!(pair.b.latest_rollout("beta".into()).await.unwrap(), None);
    let trail = pair
        .b
        .audit(AuditFilter {
            org_id: "acme".into(),
            action: Some("rollout_paused".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(trail.entries.len(), 1);

    // The rollout is of the latest version: a new stream's snapshot has its previous one.
    let snapshot = pair
        .b
        .stream_snapshot(
            "acme".into(),
            "agent-a".into(),
            Utc::now().timestamp_millis(),
        )
        .await
        .unwrap();
    assert_eq!(snapshot.seq, before + 3);
    assert_eq!(
        snapshot.policy.map(|p| p.version),
        Some(PolicyVersion::new(2))
    );
    assert_eq!(snapshot.rollout.map(|r| r.id), Some("ro_2".into()));
    assert_eq!(snapshot.fallback.map(|p| p.id), Some("pol_1".into()));

    // Shadow runs: started on one replica, ended on the other, each a change; a new stream's
    // snapshot has the latest run.
    let run = |shadow: u64, ended_ms: Option<i64>| ShadowRun {
        org_id: "acme".into(),
        shadow,
        document: json!({"name": format!("shadow {shadow}"), "rules": []}),
        started_by: "admin".into(),
        started_ms: 5_000,
        ended_ms,
    };
    assert_eq!(pair.b.shadow_run("acme".into()).await.unwrap(), None);
    let started = pair
        .a
        .put_shadow_run(run(1, None), entry("acme", "admin", "shadow_started"))
        .await
        .unwrap();
    assert_eq!(started.seq, Some(before + 4));
    assert_eq!(
        pair.b.shadow_run("acme".into()).await.unwrap(),
        Some(run(1, None))
    );
    let ended = pair
        .b
        .put_shadow_run(run(1, Some(6_000)), entry("acme", "admin", "shadow_ended"))
        .await
        .unwrap();
    pair.a
        .put_shadow_run(run(2, None), entry("acme", "admin", "shadow_started"))
        .await
        .unwrap();
    assert_eq!(ended.seq, Some(before + 5));
    // A new run under a number taken (another replica started one at once) writes nothing.
    let taken = pair
        .b
        .put_shadow_run(run(1, None), entry("acme", "admin", "shadow_started"))
        .await;
    assert_eq!(
        taken.map_err(|e| e.to_string()),
        Err("shadow run 1 of org `acme` was started meanwhile".to_owned())
    );
    assert_eq!(
        pair.a.shadow_run("acme".into()).await.unwrap(),
        Some(run(2, None))
    );
    let changes = pair.a.changes("acme".into(), before + 3, 10).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(),
        [
            ChangeKind::ShadowStarted { shadow: 1 },
            ChangeKind::ShadowEnded { shadow: 1 },
            ChangeKind::ShadowStarted { shadow: 2 },
        ]
    );
    let snapshot = pair
        .b
        .stream_snapshot(
            "acme".into(),
            "agent-a".into(),
            Utc::now().timestamp_millis(),
        )
        .await
        .unwrap();
    assert_eq!(snapshot.seq, before + 6);
    assert_eq!(snapshot.shadow, Some(run(2, None)));
    assert_eq!(pair.a.shadow_run("beta".into()).await.unwrap(), None);

    pair.a
        .insert_approval(
            approval("apr_1", "acme", "agent-a", 4_000_000_000_000),
            entry("acme", "agent-a", "approval_requested"),
        )
        .await
        .unwrap();
    let fleet = pair.b.fleet_summary().await.unwrap();
    let figures: Vec<_> = fleet
        .iter()
        .map(|o| {
            (
                o.org_id.as_str(),
                o.latest_version.map(|v| v.number()),
                o.agents.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
                o.approvals.clone(),
            )
        })
        .collect();
    assert_eq!(
        figures,
        [
            (
                "acme",
                Some(2),
                vec!["agent-a"],
                vec![(ApprovalStatus::Pending, 1)]
            ),
            ("beta", Some(1), vec![], vec![]),
            ("gamma", None, vec!["agent-g"], vec![]),
        ]
    );
}

/// The fleet-block budget's window is the database's: new addresses spend it, repeats (an
/// IPv4-mapped address too) do not, it slides, each org has its own, and two replicas admitting
/// at once admit `max` addresses in all (probe 5: each replica's window in memory admitted
/// `max` each).
async fn the_fleet_block_budget_is_one_window_per_org(pair: Pair) {
    let limit = Limit {
        max: 2,
        window: Duration::from_secs(3600),
        on_exceed: OnExceed::Drop,
    };
    let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
    let admit = |store: &Arc<dyn Store>, org: &str, address: &str, secs: i64| {
        let store = store.clone();
        let (org, address) = (org.to_owned(), ip(address));
        async move {
            store
                .admit_fleet_block(org, address, limit, 1_000_000 + secs * 1000)
                .await
                .unwrap()
        }
    };
    assert!(admit(&pair.a, "acme", "203.0.113.1", 0).await);
    assert!(admit(&pair.b, "acme", "203.0.113.2", 10).await);
    assert!(admit(&pair.b, "acme", "203.0.113.1", 20).await, "a repeat");
    assert!(
        admit(&pair.a, "acme", "::ffff:203.0.113.2", 20).await,
        "mapped"
    );
    assert!(!admit(&pair.a, "acme", "203.0.113.3", 30).await, "beyond 2");
    assert!(
        !admit(&pair.b, "acme", "203.0.113.3", 30).await,
        "on the other replica too"
    );
    assert!(
        admit(&pair.b, "other", "203.0.113.3", 30).await,
        "its own window"
    );
    assert!(
        admit(&pair.a, "acme", "203.0.113.3", 3600).await,
        "the first slid out"
    );
    assert!(!admit(&pair.b, "acme", "203.0.113.4", 3600).await);

    // Many new addresses at once on both handles: exactly `max` admitted.
    let mut racing = Vec::new();
    for n in 0..20 {
        let store = if n % 2 == 0 { &pair.a } else { &pair.b };
        racing.push(tokio::spawn(admit(
            store,
            "race",
            &format!("198.51.100.{n}"),
            0,
        )));
    }
    let mut admitted = 0;
    for task in racing {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 2);
}

#[tokio::test]
async fn sqlite_the_fleet_block_budget_is_one_window_per_org() {
    the_fleet_block_budget_is_one_window_per_org(sqlite().await).await;
}

#[tokio::test]
async fn postgres_the_fleet_block_budget_is_one_window_per_org_across_replicas() {
    the_fleet_block_budget_is_one_window_per_org(postgres().await).await;
}

#[tokio::test]
async fn sqlite_console_rollout_and_summary_reads_agree() {
    console_rollout_and_summary_reads_agree(sqlite().await).await;
}

#[tokio::test]
async fn postgres_console_rollout_and_summary_reads_agree_across_replicas() {
    console_rollout_and_summary_reads_agree(postgres().await).await;
}

#[tokio::test]
async fn sqlite_writes_at_once_keep_their_own_rows() {
    writes_at_once_keep_their_own_rows(sqlite().await).await;
}

#[tokio::test]
async fn postgres_writes_at_once_keep_their_own_rows_across_replicas() {
    writes_at_once_keep_their_own_rows(postgres().await).await;
}

#[tokio::test]
async fn sqlite_sent_policies_are_remembered_and_bounded() {
    sent_policies_are_remembered_and_bounded(sqlite().await).await;
}

#[tokio::test]
async fn postgres_sent_policies_are_remembered_and_bounded_across_replicas() {
    sent_policies_are_remembered_and_bounded(postgres().await).await;
}

#[tokio::test]
async fn sqlite_a_begun_recording_is_seen_by_later_calls() {
    a_begun_recording_is_seen_by_later_calls(sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_begun_recording_is_seen_by_later_calls_across_replicas() {
    a_begun_recording_is_seen_by_later_calls(postgres().await).await;
}

#[tokio::test]
async fn sqlite_alert_deliveries_are_queued_and_finished_once() {
    alert_deliveries_are_queued_and_finished_once(sqlite().await).await;
}

#[tokio::test]
async fn postgres_alert_deliveries_are_queued_and_finished_once_across_replicas() {
    alert_deliveries_are_queued_and_finished_once(postgres().await).await;
}

/// Two replicas claim at the same time from one queue: each delivery goes to one of them. A
/// claim older than the lease (its replica died while delivering) is taken by the other.
#[tokio::test]
async fn postgres_a_delivery_is_claimed_by_one_replica() {
    let db = TestDatabase::create().await;
    let a: Arc<dyn Store> = Arc::new(PgStore::open(&db.url).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(PgStore::open(&db.url).await.unwrap());
    let queued: Vec<NewDelivery> = (0..40)
        .map(|n| NewDelivery {
            org_id: "acme".to_owned(),
            channel: format!("channel-{n}"),
            alert: json!({"n": n}),
        })
        .collect();
    a.insert_alert(vec![entry("acme", "agent-1", "alert")], queued, Utc::now())
        .await
        .unwrap();
    let mut claimed = Vec::new();
    // Small batches, both replicas at once, until the queue is empty.
    loop {
        let (from_a, from_b) = tokio::join!(a.pending_deliveries(0, 7), b.pending_deliveries(0, 7));
        let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
        if from_a.is_empty() && from_b.is_empty() {
            break;
        }
        claimed.extend(from_a.into_iter().chain(from_b).map(|d| d.id));
        assert!(
            claimed.len() <= 40,
            "a delivery was handed out twice: {claimed:?}"
        );
    }
    claimed.sort_unstable();
    claimed.dedup();
    assert_eq!(claimed.len(), 40);

    // `a` died while delivering the first one: once its claim is older than the lease, `b`
    // takes it (and only it).
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE alert_deliveries SET claimed_ms = claimed_ms - 16 * 60 * 1000 WHERE id = $1",
            &[&claimed[0]],
        )
        .await
        .unwrap();
    let retaken: Vec<i64> = b
        .pending_deliveries(0, 64)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(retaken, [claimed[0]]);
    assert_eq!(a.pending_deliveries(0, 64).await.unwrap(), []);
}

#[tokio::test]
async fn sqlite_signed_versions_are_taken_once() {
    signed_versions_are_taken_once(sqlite().await).await;
}

#[tokio::test]
async fn postgres_signed_versions_are_taken_once_across_replicas() {
    signed_versions_are_taken_once(postgres().await).await;
}

#[tokio::test]
async fn sqlite_versions_are_gap_free() {
    versions_are_gap_free_under_concurrent_writers(sqlite().await).await;
}

#[tokio::test]
async fn postgres_versions_are_gap_free_under_two_replicas() {
    versions_are_gap_free_under_concurrent_writers(postgres().await).await;
}

#[tokio::test]
async fn sqlite_pushed_writes_record_their_changes() {
    pushed_writes_record_their_changes(sqlite().await).await;
}

#[tokio::test]
async fn postgres_pushed_writes_record_their_changes() {
    pushed_writes_record_their_changes(postgres().await).await;
}

#[tokio::test]
async fn sqlite_a_report_is_acted_on_once() {
    a_report_is_acted_on_once(sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_report_is_acted_on_once_across_replicas() {
    a_report_is_acted_on_once(postgres().await).await;
}

#[tokio::test]
async fn sqlite_an_approval_is_finished_once_and_keeps_its_decision() {
    an_approval_is_finished_once_and_keeps_its_decision(sqlite().await).await;
}

#[tokio::test]
async fn postgres_an_approval_is_finished_once_and_keeps_its_decision_across_replicas() {
    an_approval_is_finished_once_and_keeps_its_decision(postgres().await).await;
}

#[tokio::test]
async fn sqlite_expired_approvals_expire_once() {
    expired_approvals_expire_once(sqlite().await).await;
}

#[tokio::test]
async fn postgres_expired_approvals_expire_once_across_replicas() {
    expired_approvals_expire_once(postgres().await).await;
}

/// A replica hears of the other's commits: a change with its org and number, a token by hash.
#[tokio::test]
async fn postgres_a_replica_hears_of_the_others_commits() {
    let pair = postgres().await;
    let mut notices = pair.b.notices().unwrap();
    assert!(pair.b.notices().is_none(), "one receiver");
    pair.a
        .insert_agent(agent("agent-1", "acme"), TokenHash::of("t1"))
        .await
        .unwrap();
    pair.a
        .insert_policy(unsigned(policy("p"), "pol_1".to_owned()))
        .await
        .unwrap();
    let mut heard = Vec::new();
    while heard.len() < 2 {
        let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
            .await
            .unwrap()
            .unwrap();
        heard.push(notice);
    }
    assert_eq!(
        heard,
        [
            Notice::Token(TokenHash::of("t1")),
            Notice::Change {
                org_id: "acme".to_owned(),
                seq: 1
            },
        ]
    );
}

#[tokio::test]
async fn postgres_urls_that_cannot_work_are_refused_with_the_reason() {
    let db = TestDatabase::create().await;
    let require = format!("{}?sslmode=require", db.url);
    let error = PgStore::open(&require).await.unwrap_err().to_string();
    assert_eq!(
        error,
        "cannot open the database: sslmode=require: the server speaks to PostgreSQL without TLS; \
         use a unix socket, loopback or a private network, and sslmode=disable"
    );
    let error = PgStore::open("postgres://x@127.0.0.1:1/nothing")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "cannot open the database: PostgreSQL at 127.0.0.1:1/nothing: error connecting to server: \
         Connection refused (os error 111)"
    );
    let error = PgStore::open("postgres://x@127.0.0.1:port/db")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "cannot open the database: invalid PostgreSQL URL: invalid connection string: \
         invalid value for option `port`"
    );
}

/// Two decisions taken at once from the same read of a rollout (both replicas' gate timers
/// rolling it back, say) move it once: one is stored with its audit entry and change, the
/// other is refused with `RolloutMoved` and writes nothing; a decision from a stale read is
/// refused too.
async fn a_rollout_moves_once_from_one_state(pair: Pair) {
    let running = Rollout {
        id: "ro_once".into(),
        org_id: "acme".into(),
        version: PolicyVersion::new(2),
        previous: PolicyVersion::new(1),
        state: RolloutState::Running,
        stage: 0,
        stages: vec![RolloutStage {
            percent: 10,
            agents: vec![],
            soak_secs: 60,
        }],
        gate: RolloutGate::default(),
        stage_started_ms: 1_000,
        created_ms: 1_000,
        updated_ms: 1_000,
        reason: None,
    };
    pair.a
        .put_rollout(running.clone(), entry("acme", "admin", "rollout_created"))
        .await
        .unwrap();
    let before = pair.a.change_seq("acme".into()).await.unwrap();
    let rolled_back = |by: &str| Rollout {
        state: RolloutState::RolledBack,
        reason: Some(format!("gate failed on {by}")),
        updated_ms: 2_000,
        ..running.clone()
    };
    let (on_a, on_b) = tokio::join!(
        pair.a.move_rollout(
            running.clone(),
            rolled_back("a"),
            entry("acme", "server", "rollout_rolled_back"),
        ),
        pair.b.move_rollout(
            running.clone(),
            rolled_back("b"),
            entry("acme", "server", "rollout_rolled_back"),
        ),
    );
    let (won, lost) = match (on_a, on_b) {
        (Ok(pushed), Err(error)) => (("a", pushed), error),
        (Err(error), Ok(pushed)) => (("b", pushed), error),
        other => panic!("expected exactly one move, got {other:?}"),
    };
    assert_eq!(lost.to_string(), "rollout `ro_once` was changed meanwhile");
    assert!(matches!(lost, StoreError::RolloutMoved { ref id } if id == "ro_once"));
    assert_eq!(won.1.seq, Some(before + 1));
    assert_eq!(pair.a.change_seq("acme".into()).await.unwrap(), before + 1);
    assert_eq!(
        pair.b.rollout("ro_once".into()).await.unwrap(),
        Some(rolled_back(won.0))
    );
    let trail = pair
        .a
        .audit(AuditFilter {
            org_id: "acme".into(),
            action: Some("rollout_rolled_back".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(trail.entries.len(), 1);
    // A decision on the old read is refused; one on the stored state is taken.
    let paused = Rollout {
        state: RolloutState::Paused,
        ..running.clone()
    };
    let stale = pair
        .b
        .move_rollout(
            running.clone(),
            paused,
            entry("acme", "admin", "rollout_paused"),
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::RolloutMoved { .. })),
        "{stale:?}"
    );
    let aborted = Rollout {
        state: RolloutState::Aborted,
        updated_ms: 3_000,
        ..rolled_back(won.0)
    };
    pair.b
        .move_rollout(
            rolled_back(won.0),
            aborted.clone(),
            entry("acme", "admin", "rollout_aborted"),
        )
        .await
        .unwrap();
    assert_eq!(
        pair.a.latest_rollout("acme".into()).await.unwrap(),
        Some(aborted)
    );
}

#[tokio::test]
async fn sqlite_a_rollout_moves_once_from_one_state() {
    a_rollout_moves_once_from_one_state(sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_rollout_moves_once_from_one_state_across_replicas() {
    a_rollout_moves_once_from_one_state(postgres().await).await;
}
