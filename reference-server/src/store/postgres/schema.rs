//! The schema: the same tables as the SQLite backend in PostgreSQL types, migrations applied in
//! order under an advisory lock (replicas starting together migrate once), `schema_migrations`
//! counting those applied.

use deadpool_postgres::Client;

use super::Result;

/// The lock every replica takes to migrate (an arbitrary constant, "policy" in ASCII).
const MIGRATION_LOCK: i64 = 0x706f_6c69_6379;

/// Schema migrations, applied in order; the SQLite backend's, numbered alike.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE policies (
    org_id     text        NOT NULL,
    version    bigint      NOT NULL,
    id         text        NOT NULL UNIQUE,
    document   text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, version)
);
CREATE TABLE agents (
    id             text PRIMARY KEY,
    org_id         text        NOT NULL,
    hostname       text        NOT NULL,
    enrolled_at    timestamptz NOT NULL,
    last_seen      timestamptz,
    policy_version text,
    last_error     text
);
CREATE INDEX agents_by_org ON agents (org_id, id);
CREATE TABLE tokens (
    hash       bytea PRIMARY KEY,
    role       text        NOT NULL CHECK (role IN ('admin', 'agent')),
    org_id     text,
    agent_id   text REFERENCES agents (id),
    created_at timestamptz NOT NULL
);
CREATE TABLE overrides (
    agent_id   text PRIMARY KEY REFERENCES agents (id),
    list       text        NOT NULL,
    updated_at timestamptz NOT NULL
);
"#,
    // 2: the fleet loop (fleet blocks, approvals, audit trail).
    r#"
CREATE TABLE blocks (
    org_id         text        NOT NULL,
    ip             text        NOT NULL,
    duration       text        NOT NULL,
    expires_ms     bigint,
    agent_id       text        NOT NULL,
    rule           bigint,
    policy_version text,
    reports        bigint      NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (org_id, ip)
);
CREATE TABLE approvals (
    id             text PRIMARY KEY,
    org_id         text   NOT NULL,
    agent_id       text   NOT NULL,
    request        text   NOT NULL,
    status         text   NOT NULL,
    created_ms     bigint NOT NULL,
    expires_ms     bigint NOT NULL,
    decided_ms     bigint,
    decided_by     text,
    reason         text
);
CREATE INDEX approvals_by_org ON approvals (org_id, status, created_ms);
CREATE INDEX approvals_by_expiry ON approvals (expires_ms) WHERE status IN ('pending', 'approved');
CREATE TABLE audit (
    id             bigserial PRIMARY KEY,
    time           timestamptz NOT NULL,
    org_id         text        NOT NULL,
    agent_id       text,
    actor          text        NOT NULL,
    rule           bigint,
    policy_version text,
    action         text        NOT NULL,
    ip             text,
    outcome        text        NOT NULL,
    detail         text
);
CREATE INDEX audit_by_org ON audit (org_id, id);
CREATE INDEX audit_by_ip ON audit (org_id, ip, id);
CREATE INDEX audit_by_agent ON audit (org_id, agent_id, id);
"#,
    // 3: report ids, so that a repeated report is answered instead of acted on twice.
    r#"
CREATE TABLE report_receipts (
    agent_id   text   NOT NULL,
    report_id  text   NOT NULL,
    kind       text   NOT NULL,
    answer     text,
    created_ms bigint NOT NULL,
    PRIMARY KEY (agent_id, report_id)
);
CREATE INDEX report_receipts_by_time ON report_receipts (created_ms);
"#,
    // 4: the operator's signature of a signed policy version (JSON), NULL when unsigned.
    r#"
ALTER TABLE policies ADD COLUMN signature text;
"#,
    // 5: the policy versions (with the overrides applied) sent to each agent, so that a report
    // can be checked against a version the agent really got; and an index for the pending
    // approvals of one agent (its quota).
    r#"
CREATE TABLE agent_policies (
    id         bigserial NOT NULL,
    agent_id   text      NOT NULL,
    version    bigint    NOT NULL,
    overrides  text      NOT NULL,
    sent_ms    bigint    NOT NULL,
    PRIMARY KEY (agent_id, version, overrides)
);
CREATE INDEX agent_policies_by_time ON agent_policies (agent_id, sent_ms);
CREATE INDEX approvals_by_agent ON approvals (agent_id, status);
"#,
    // 6: alert deliveries queued with the alert report, done after it is acknowledged (a
    // disconnect or a crash in between no longer loses them). A replica claims a delivery
    // (`claimed_ms`) before delivering it, so that one replica delivers each; a claim older
    // than the lease (a replica that died while delivering) may be taken by another.
    r#"
CREATE TABLE alert_deliveries (
    id         bigserial PRIMARY KEY,
    org_id     text   NOT NULL,
    channel    text   NOT NULL,
    alert      text   NOT NULL,
    created_ms bigint NOT NULL,
    claimed_ms bigint
);
"#,
    // 7: the ack of an agent's last offered version (protocol `VersionAck` JSON).
    r#"
ALTER TABLE agents ADD COLUMN ack text;
"#,
    // 8: staged rollouts (the record as JSON); `seq` orders rollouts created in the same
    // millisecond, as SQLite's rowid does.
    r#"
CREATE TABLE rollouts (
    id         text      PRIMARY KEY,
    seq        bigserial NOT NULL,
    org_id     text      NOT NULL,
    created_ms bigint    NOT NULL,
    record     text      NOT NULL
);
CREATE INDEX rollouts_by_org ON rollouts (org_id, created_ms, seq);
"#,
    // 9: an agent's last shadow report (`StoredShadowReport` JSON).
    r#"
ALTER TABLE agents ADD COLUMN shadow text;
"#,
    // 10: shadow runs (the record as JSON), numbered per org.
    r#"
CREATE TABLE shadow_runs (
    org_id text   NOT NULL,
    shadow bigint NOT NULL,
    record text   NOT NULL,
    PRIMARY KEY (org_id, shadow)
);
"#,
    // 11: numbered changes per org, what event streams are pushed (see `store::records::Change`).
    r#"
CREATE TABLE org_changes (
    org_id text   PRIMARY KEY,
    seq    bigint NOT NULL
);
CREATE TABLE changes (
    org_id     text   NOT NULL,
    seq        bigint NOT NULL,
    kind       text   NOT NULL,
    agent_id   text,
    ip         text,
    reference  text,
    version    bigint,
    created_ms bigint NOT NULL,
    PRIMARY KEY (org_id, seq)
);
"#,
    // 12: what a broadcast sent: one row per version and override list sent to many agents at
    // once, naming them (newline-separated), instead of one `agent_policies` row per agent.
    r#"
CREATE TABLE sent_broadcasts (
    id        bigserial PRIMARY KEY,
    org_id    text   NOT NULL,
    version   bigint NOT NULL,
    overrides text   NOT NULL,
    sent_ms   bigint NOT NULL,
    agents    text   NOT NULL
);
CREATE INDEX sent_broadcasts_by_version ON sent_broadcasts (org_id, version);
"#,
    // 13: the fleet-block budget's window per org: the addresses admitted and when (shared by
    // every replica, decided under the org's lock; at most the budget's `max` rows per org).
    r#"
CREATE TABLE fleet_budget (
    org_id      text   NOT NULL,
    ip          text   NOT NULL,
    admitted_ms bigint NOT NULL,
    PRIMARY KEY (org_id, ip)
);
"#,
];

/// Applies the migrations the database lacks, in one transaction, holding the migration lock.
pub async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    let applied = usize::try_from(applied).unwrap_or_default();
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(sql).await?;
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(migration = index + 1, "applied database migration");
    }
    tx.commit().await?;
    Ok(())
}
