//! The schema: migrations applied in order, `PRAGMA user_version` counting those applied.

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError;

/// Schema migrations, applied in order.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE policies (
    org_id     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    id         TEXT    NOT NULL UNIQUE,
    document   TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (org_id, version)
);
CREATE TABLE agents (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL,
    hostname       TEXT NOT NULL,
    enrolled_at    TEXT NOT NULL,
    last_seen      TEXT,
    policy_version TEXT,
    last_error     TEXT
);
CREATE INDEX agents_by_org ON agents (org_id, id);
CREATE TABLE tokens (
    hash       BLOB PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'agent')),
    org_id     TEXT,
    agent_id   TEXT REFERENCES agents (id),
    created_at TEXT NOT NULL
);
CREATE TABLE overrides (
    agent_id   TEXT PRIMARY KEY REFERENCES agents (id),
    list       TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"#,
    // 2: the fleet loop (fleet blocks, approvals, audit trail).
    r#"
CREATE TABLE blocks (
    org_id         TEXT    NOT NULL,
    ip             TEXT    NOT NULL,
    duration       TEXT    NOT NULL,
    expires_ms     INTEGER,
    agent_id       TEXT    NOT NULL,
    rule           INTEGER,
    policy_version TEXT,
    reports        INTEGER NOT NULL,
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL,
    PRIMARY KEY (org_id, ip)
);
CREATE TABLE approvals (
    id             TEXT    PRIMARY KEY,
    org_id         TEXT    NOT NULL,
    agent_id       TEXT    NOT NULL,
    request        TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    created_ms     INTEGER NOT NULL,
    expires_ms     INTEGER NOT NULL,
    decided_ms     INTEGER,
    decided_by     TEXT,
    reason         TEXT
);
CREATE INDEX approvals_by_org ON approvals (org_id, status, created_ms);
CREATE TABLE audit (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    time           TEXT    NOT NULL,
    org_id         TEXT    NOT NULL,
    agent_id       TEXT,
    actor          TEXT    NOT NULL,
    rule           INTEGER,
    policy_version TEXT,
    action         TEXT    NOT NULL,
    ip             TEXT,
    outcome        TEXT    NOT NULL,
    detail         TEXT
);
CREATE INDEX audit_by_org ON audit (org_id, id);
CREATE INDEX audit_by_ip ON audit (org_id, ip, id);
CREATE INDEX audit_by_agent ON audit (org_id, agent_id, id);
"#,
    // 3: report ids, so that a repeated report is answered instead of acted on twice.
    r#"
CREATE TABLE report_receipts (
    agent_id   TEXT    NOT NULL,
    report_id  TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    answer     TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (agent_id, report_id)
);
CREATE INDEX report_receipts_by_time ON report_receipts (created_ms);
"#,
    // 4: the operator's signature of a signed policy version (JSON), NULL when unsigned.
    r#"
ALTER TABLE policies ADD COLUMN signature TEXT;
"#,
    // 5: the policy versions (with the overrides applied) sent to each agent, so that a report
    // can be checked against a version the agent really got; and an index for the pending
    // approvals of one agent (its quota).
    r#"
CREATE TABLE agent_policies (
    agent_id   TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    overrides  TEXT    NOT NULL,
    sent_ms    INTEGER NOT NULL,
    PRIMARY KEY (agent_id, version, overrides)
);
CREATE INDEX agent_policies_by_time ON agent_policies (agent_id, sent_ms);
CREATE INDEX approvals_by_agent ON approvals (agent_id, status);
"#,
    // 6: alert deliveries queued with the alert report, done after it is acknowledged (a
    // disconnect or a crash in between no longer loses them).
    r#"
CREATE TABLE alert_deliveries (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id     TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    alert      TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);
"#,
    // 7: the ack of an agent's last offered version (protocol `VersionAck` JSON).
    r#"
ALTER TABLE agents ADD COLUMN ack TEXT;
"#,
    // 8: staged rollouts (the record as JSON).
    r#"
CREATE TABLE rollouts (
    id         TEXT    PRIMARY KEY,
    org_id     TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    record     TEXT    NOT NULL
);
CREATE INDEX rollouts_by_org ON rollouts (org_id, created_ms);
"#,
    // 9: an agent's last shadow report (`StoredShadowReport` JSON).
    r#"
ALTER TABLE agents ADD COLUMN shadow TEXT;
"#,
    // 10: shadow runs (the record as JSON), numbered per org.
    r#"
CREATE TABLE shadow_runs (
    org_id TEXT    NOT NULL,
    shadow INTEGER NOT NULL,
    record TEXT    NOT NULL,
    PRIMARY KEY (org_id, shadow)
);
"#,
    // 11: numbered changes per org, what event streams are pushed (see `store::records::Change`).
    r#"
CREATE TABLE org_changes (
    org_id TEXT    PRIMARY KEY,
    seq    INTEGER NOT NULL
);
CREATE TABLE changes (
    org_id     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    agent_id   TEXT,
    ip         TEXT,
    reference  TEXT,
    version    INTEGER,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (org_id, seq)
);
"#,
    // 12: what a broadcast sent: one row per version and override list sent to many agents at
    // once, naming them (newline-separated), instead of one `agent_policies` row per agent.
    r#"
CREATE TABLE sent_broadcasts (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id    TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    overrides TEXT    NOT NULL,
    sent_ms   INTEGER NOT NULL,
    agents    TEXT    NOT NULL
);
CREATE INDEX sent_broadcasts_by_version ON sent_broadcasts (org_id, version);
"#,
    // 13: the fleet-block budget's window per org: the addresses admitted and when (shared by
    // every server on the database; at most the budget's `max` rows per org).
    r#"
CREATE TABLE fleet_budget (
    org_id      TEXT    NOT NULL,
    ip          TEXT    NOT NULL,
    admitted_ms INTEGER NOT NULL,
    PRIMARY KEY (org_id, ip)
);
"#,
];

/// Applies the migrations `conn` lacks, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or_default();
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(index + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
        tracing::info!(migration = index + 1, "applied database migration");
    }
    Ok(())
}
