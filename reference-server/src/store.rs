//! SQLite persistence on a dedicated thread: schema migrations, policies with per-org versions,
//! agents, hashed tokens, overrides and heartbeats. The fleet tables (blocks, approvals, audit)
//! are created here; their queries live in [`crate::blocks`], [`crate::approvals`] and
//! [`crate::audit`].
//!
//! Invariant: rusqlite is only ever called on the store's own thread, never on an async worker.
//! Every write commits (WAL, `synchronous=FULL`) before its future resolves, so a request is
//! answered only once its change is durable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use policy_engine::protocol::time::{self, TimeError};
use policy_engine::protocol::{ReportId, ReportKind};
use policy_engine::{Policy, PolicyVersion};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use crate::auth::{Principal, TokenHash};

/// A store failure: the database failed or the store is closed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored document is not valid JSON (the file was edited by hand).
    #[error("stored JSON is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// A stored policy no longer validates (the file was edited by hand).
    #[error("stored policy is invalid: {0}")]
    Invalid(#[from] policy_engine::PolicyError),
    /// The store thread is gone.
    #[error("the database is closed")]
    Closed,
    /// The store thread could not be started.
    #[error("cannot start the database thread: {0}")]
    Thread(#[from] std::io::Error),
    /// A stored time is not RFC 3339 (the file was edited by hand).
    #[error("stored time is corrupt: {0}")]
    Time(#[from] TimeError),
    /// The agent already sent a report with this id (it was acted on once; its answer stands).
    #[error("report `{report_id}` of agent `{agent_id}` was already received")]
    DuplicateReport {
        /// The reporting agent.
        agent_id: String,
        /// The report's id.
        report_id: String,
    },
}

/// A stored policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    /// `pol_...`
    pub id: String,
    /// Org the policy belongs to.
    pub org_id: String,
    /// Version within the org.
    pub version: PolicyVersion,
    /// The validated policy.
    pub policy: Arc<Policy>,
    /// When the version was created.
    pub created_at: DateTime<Utc>,
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// `agent-...`
    pub id: String,
    /// Org the agent belongs to.
    pub org_id: String,
    /// Hostname given at enrollment.
    pub hostname: String,
    /// When it was enrolled.
    pub enrolled_at: String,
    /// Last heartbeat, if any.
    pub last_seen: Option<String>,
    /// Version reported in the last heartbeat.
    pub policy_version: Option<String>,
    /// Error reported in the last heartbeat.
    pub last_error: Option<String>,
}

/// The overrides of one agent, as last stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOverrides {
    /// The normalized override list.
    pub list: Value,
    /// When it was stored.
    pub updated_at: DateTime<Utc>,
}

/// What the server remembers of a report with a `reportId`: what it did, and its answer once
/// sent (a report answered again gets it instead of being acted on twice).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportReceipt {
    /// The reporting agent.
    pub agent_id: String,
    /// The report's id.
    pub report_id: ReportId,
    /// What the server did with it.
    pub kind: ReportKind,
    /// The answer, stored after the report's effect (absent only if the server stopped in
    /// between).
    pub answer: Option<Value>,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle to the database thread.
#[derive(Debug)]
pub struct Store {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The latest policy of each org read or written so far: reads of the active policy
    /// (heartbeats, stream connects) need no database round trip or re-validation.
    latest: Mutex<HashMap<String, StoredPolicy>>,
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
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
];

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode, and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("policy-store".to_owned())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            latest: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` on the database thread and waits for its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        {
            let jobs = self.jobs.lock().map_err(|_| StoreError::Closed)?;
            let sender = jobs.as_ref().ok_or(StoreError::Closed)?;
            sender.send(job).map_err(|_| StoreError::Closed)?;
        }
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Finishes queued work, closes the connection and joins the thread.
    pub async fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Stores a new policy version of `org`: the next number, in one immediate transaction, so
    /// concurrent posts never share or skip a version.
    pub async fn insert_policy(
        &self,
        org_id: String,
        policy: Arc<Policy>,
        id: String,
        created_at: DateTime<Utc>,
    ) -> Result<StoredPolicy, StoreError> {
        let stored = self
            .call(move |conn| {
                let text = serde_json::to_string(&policy.to_json_value())?;
                let created = time::format(&created_at);
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let next: i64 = tx.query_row(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM policies WHERE org_id = ?1",
                    params![org_id],
                    |row| row.get(0),
                )?;
                tx.execute(
                    "INSERT INTO policies (org_id, version, id, document, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![org_id, next, id, text, created],
                )?;
                tx.commit()?;
                Ok(StoredPolicy {
                    id,
                    org_id,
                    version: PolicyVersion::new(u64::try_from(next).unwrap_or_default()),
                    policy,
                    created_at,
                })
            })
            .await?;
        self.remember(&stored);
        Ok(stored)
    }

    fn remember(&self, policy: &StoredPolicy) {
        if let Ok(mut latest) = self.latest.lock() {
            let newer = latest
                .get(&policy.org_id)
                .is_none_or(|known| known.version < policy.version);
            if newer {
                latest.insert(policy.org_id.clone(), policy.clone());
            }
        }
    }

    /// The latest policy of `org`.
    pub async fn latest_policy(&self, org_id: String) -> Result<Option<StoredPolicy>, StoreError> {
        if let Some(known) = self
            .latest
            .lock()
            .ok()
            .and_then(|l| l.get(&org_id).cloned())
        {
            return Ok(Some(known));
        }
        let found = self
            .call(move |conn| {
                let row = conn
                    .query_row(
                        "SELECT id, version, document, created_at FROM policies
                     WHERE org_id = ?1 ORDER BY version DESC LIMIT 1",
                        params![org_id],
                        |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, i64>(1)?,
                                row.get::<_, String>(2)?,
                                row.get::<_, String>(3)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((id, version, document, created_at)) = row else {
                    return Ok(None);
                };
                Ok(Some(StoredPolicy {
                    id,
                    org_id,
                    version: PolicyVersion::new(u64::try_from(version).unwrap_or_default()),
                    policy: Arc::new(Policy::from_value(&serde_json::from_str(&document)?)?),
                    created_at: time::parse(&created_at)?,
                }))
            })
            .await?;
        if let Some(policy) = &found {
            self.remember(policy);
        }
        Ok(found)
    }

    /// Enrolls an agent and stores its token hash, in one transaction.
    pub async fn insert_agent(
        &self,
        agent: AgentRecord,
        token: TokenHash,
    ) -> Result<AgentRecord, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO agents (id, org_id, hostname, enrolled_at) VALUES (?1, ?2, ?3, ?4)",
                params![agent.id, agent.org_id, agent.hostname, agent.enrolled_at],
            )?;
            tx.execute(
                "INSERT INTO tokens (hash, role, org_id, agent_id, created_at)
                 VALUES (?1, 'agent', ?2, ?3, ?4)",
                params![
                    token.as_bytes().as_slice(),
                    agent.org_id,
                    agent.id,
                    agent.enrolled_at
                ],
            )?;
            tx.commit()?;
            Ok(agent)
        })
        .await
    }

    /// One agent by id.
    pub async fn agent(&self, id: String) -> Result<Option<AgentRecord>, StoreError> {
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    &format!("{AGENT_COLUMNS} WHERE id = ?1"),
                    params![id],
                    agent_row,
                )
                .optional()?)
        })
        .await
    }

    /// Every agent of `org`, by id.
    pub async fn agents(&self, org_id: String) -> Result<Vec<AgentRecord>, StoreError> {
        self.call(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("{AGENT_COLUMNS} WHERE org_id = ?1 ORDER BY id"))?;
            let rows = stmt.query_map(params![org_id], agent_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Records a heartbeat.
    pub async fn heartbeat(
        &self,
        id: String,
        policy_version: Option<String>,
        last_error: Option<String>,
        now: String,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE agents SET last_seen = ?2, policy_version = ?3, last_error = ?4
                 WHERE id = ?1",
                params![id, now, policy_version, last_error],
            )?;
            Ok(())
        })
        .await
    }

    /// Stores a token hash for `principal` (an admin; agent tokens come with enrollment).
    pub async fn insert_token(
        &self,
        token: TokenHash,
        principal: Principal,
        now: String,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let (role, org, agent) = principal.columns();
            conn.execute(
                "INSERT OR IGNORE INTO tokens (hash, role, org_id, agent_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token.as_bytes().as_slice(), role, org, agent, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Makes `token` the only global admin token (the operator set `POLICY_ADMIN_TOKEN`):
    /// earlier global admin tokens, generated or configured, stop working.
    pub async fn set_global_admin(&self, token: TokenHash, now: String) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM tokens WHERE role = 'admin' AND org_id IS NULL AND hash != ?1",
                params![token.as_bytes().as_slice()],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO tokens (hash, role, org_id, agent_id, created_at)
                 VALUES (?1, 'admin', NULL, NULL, ?2)",
                params![token.as_bytes().as_slice(), now],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Every stored token hash with its principal.
    pub async fn tokens(&self) -> Result<Vec<(TokenHash, Principal)>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare("SELECT hash, role, org_id, agent_id FROM tokens")?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            })?;
            let mut tokens = Vec::new();
            for row in rows {
                let (hash, role, org, agent) = row?;
                let (Some(hash), Some(principal)) = (
                    TokenHash::from_slice(&hash),
                    Principal::from_columns(&role, org, agent),
                ) else {
                    tracing::warn!("skipping a malformed token row");
                    continue;
                };
                tokens.push((hash, principal));
            }
            Ok(tokens)
        })
        .await
    }

    /// Whether any global admin token exists (false on a fresh data dir).
    pub async fn has_global_admin(&self) -> Result<bool, StoreError> {
        self.call(|conn| {
            Ok(conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM tokens WHERE role = 'admin' AND org_id IS NULL)",
                [],
                |row| row.get(0),
            )?)
        })
        .await
    }

    /// The overrides of an agent.
    pub async fn overrides(&self, agent_id: String) -> Result<Option<StoredOverrides>, StoreError> {
        self.call(move |conn| {
            let row = conn
                .query_row(
                    "SELECT list, updated_at FROM overrides WHERE agent_id = ?1",
                    params![agent_id],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()?;
            match row {
                Some((list, updated_at)) => Ok(Some(StoredOverrides {
                    list: serde_json::from_str(&list)?,
                    updated_at: time::parse(&updated_at)?,
                })),
                None => Ok(None),
            }
        })
        .await
    }

    /// Replaces the overrides of an agent.
    pub async fn set_overrides(
        &self,
        agent_id: String,
        overrides: StoredOverrides,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let text = serde_json::to_string(&overrides.list)?;
            conn.execute(
                "INSERT INTO overrides (agent_id, list, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (agent_id) DO UPDATE SET list = ?2, updated_at = ?3",
                params![agent_id, text, time::format(&overrides.updated_at)],
            )?;
            Ok(())
        })
        .await
    }

    /// The receipt of report `report_id` of `agent_id`, if the server acted on it.
    pub async fn report_receipt(
        &self,
        agent_id: String,
        report_id: ReportId,
    ) -> Result<Option<ReportReceipt>, StoreError> {
        self.call(move |conn| {
            let row = conn
                .query_row(
                    "SELECT kind, answer FROM report_receipts WHERE agent_id = ?1 AND report_id = ?2",
                    params![agent_id, report_id.as_str()],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?)),
                )
                .optional()?;
            let Some((kind, answer)) = row else {
                return Ok(None);
            };
            let Some(kind) = ReportKind::parse(&kind) else {
                tracing::warn!(agent = %agent_id, report = %report_id, "malformed report receipt");
                return Ok(None);
            };
            Ok(Some(ReportReceipt {
                agent_id,
                report_id,
                kind,
                answer: answer.map(|a| serde_json::from_str(&a)).transpose()?,
            }))
        })
        .await
    }

    /// Stores the answer of a report whose receipt was written with its effect.
    pub async fn set_report_answer(
        &self,
        agent_id: String,
        report_id: ReportId,
        answer: Value,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE report_receipts SET answer = ?3 WHERE agent_id = ?1 AND report_id = ?2",
                params![
                    agent_id,
                    report_id.as_str(),
                    serde_json::to_string(&answer)?
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Forgets report receipts older than `before_ms`; returns how many.
    pub async fn prune_report_receipts(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.call(move |conn| {
            Ok(conn.execute(
                "DELETE FROM report_receipts WHERE created_ms < ?1",
                params![before_ms],
            )?)
        })
        .await
    }
}

/// Writes the receipt of a report inside the transaction of its effect: a report already
/// received (the same agent and id) makes the insert, and with it the whole transaction, fail
/// with [`StoreError::DuplicateReport`], so the effect never happens twice.
pub(crate) fn insert_receipt(conn: &Connection, receipt: &ReportReceipt) -> Result<(), StoreError> {
    let now_ms = Utc::now().timestamp_millis();
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO report_receipts (agent_id, report_id, kind, created_ms)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            receipt.agent_id,
            receipt.report_id.as_str(),
            receipt.kind.as_str(),
            now_ms
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::DuplicateReport {
            agent_id: receipt.agent_id.clone(),
            report_id: receipt.report_id.to_string(),
        });
    }
    Ok(())
}

const AGENT_COLUMNS: &str = "SELECT id, org_id, hostname, enrolled_at, last_seen, policy_version, \
                             last_error FROM agents";

fn agent_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRecord> {
    Ok(AgentRecord {
        id: row.get(0)?,
        org_id: row.get(1)?,
        hostname: row.get(2)?,
        enrolled_at: row.get(3)?,
        last_seen: row.get(4)?,
        policy_version: row.get(5)?,
        last_error: row.get(6)?,
    })
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
