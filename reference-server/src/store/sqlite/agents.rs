//! `agents` (enrollment, heartbeats) and `tokens` (hashes and who they speak for).

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::Result;
use super::rows::{json_opt, parsed_opt, time_at, time_opt, time_text};
use crate::auth::{Principal, TokenHash};
use crate::store::{AgentRecord, Heartbeat, StoreError};

/// Enrolls an agent and stores its token hash in one transaction.
pub fn insert(conn: &mut Connection, agent: AgentRecord, token: TokenHash) -> Result<AgentRecord> {
    let enrolled_at = time_text(&agent.enrolled_at);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached(
        "INSERT INTO agents (id, org_id, hostname, enrolled_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![agent.id, agent.org_id, agent.hostname, enrolled_at])?;
    tx.prepare_cached(
        "INSERT INTO tokens (hash, role, org_id, agent_id, created_at)
         VALUES (?1, 'agent', ?2, ?3, ?4)",
    )?
    .execute(params![
        token.as_bytes().as_slice(),
        agent.org_id,
        agent.id,
        enrolled_at
    ])?;
    tx.commit()?;
    Ok(agent)
}

/// One agent by id.
pub fn one(conn: &mut Connection, id: &str) -> Result<Option<AgentRecord>> {
    Ok(conn
        .query_row(
            &format!("{AGENT_COLUMNS} WHERE id = ?1"),
            params![id],
            agent_row,
        )
        .optional()?)
}

/// Every agent of `org_id`, by id.
pub fn of_org(conn: &mut Connection, org_id: &str) -> Result<Vec<AgentRecord>> {
    let mut stmt =
        conn.prepare_cached(&format!("{AGENT_COLUMNS} WHERE org_id = ?1 ORDER BY id"))?;
    let rows = stmt.query_map(params![org_id], agent_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Every agent, by org and id.
pub fn all(conn: &Connection) -> Result<Vec<AgentRecord>> {
    let mut stmt = conn.prepare_cached(&format!("{AGENT_COLUMNS} ORDER BY org_id, id"))?;
    let rows = stmt.query_map([], agent_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Records a heartbeat (one without an ack, e.g. a shadow report only, keeps the stored ack), committed without waiting
/// for the disk (`synchronous=NORMAL` for this one statement): a heartbeat is soft state that
/// the next one replaces, and fsyncing each of them serializes the store behind the disk
/// (10,000 agents every 30 s are 333 commits a second; one fsync takes milliseconds). In WAL
/// mode such a commit survives a crash of the server, and the next durable commit syncs it;
/// only a power loss may lose the last ones.
pub fn heartbeat(conn: &mut Connection, heartbeat: &Heartbeat) -> Result<()> {
    // Prepared once and cached, as the update is: 333 heartbeats a second parsed these two
    // statements 666 times a second.
    conn.prepare_cached("PRAGMA synchronous = NORMAL")?
        .execute([])?;
    let written = update_heartbeat(conn, heartbeat);
    let restored = conn
        .prepare_cached("PRAGMA synchronous = FULL")
        .and_then(|mut full| full.execute([]));
    written?;
    restored?;
    Ok(())
}

fn update_heartbeat(conn: &Connection, heartbeat: &Heartbeat) -> Result<()> {
    let ack = heartbeat
        .ack
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    let shadow = heartbeat
        .shadow
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    conn.prepare_cached(
        "UPDATE agents SET last_seen = ?2, policy_version = ?3, last_error = ?4,
                           ack = COALESCE(?5, ack), shadow = COALESCE(?6, shadow)
         WHERE id = ?1",
    )?
    .execute(params![
        heartbeat.agent_id,
        time_text(&heartbeat.at),
        heartbeat.policy_version.map(|v| v.to_string()),
        heartbeat.last_error,
        ack,
        shadow
    ])?;
    Ok(())
}

/// Stores an admin token hash (a repeated one is kept as is).
pub fn insert_token(
    conn: &mut Connection,
    token: TokenHash,
    principal: &Principal,
    now: DateTime<Utc>,
) -> Result<()> {
    let (role, org, agent) = columns(principal);
    conn.prepare_cached(
        "INSERT OR IGNORE INTO tokens (hash, role, org_id, agent_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        token.as_bytes().as_slice(),
        role,
        org,
        agent,
        time_text(&now)
    ])?;
    Ok(())
}

/// Makes `token` the only global admin token.
pub fn set_global_admin(conn: &mut Connection, token: TokenHash, now: DateTime<Utc>) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached("DELETE FROM tokens WHERE role = 'admin' AND org_id IS NULL AND hash != ?1")?
        .execute(params![token.as_bytes().as_slice()])?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO tokens (hash, role, org_id, agent_id, created_at)
         VALUES (?1, 'admin', NULL, NULL, ?2)",
    )?
    .execute(params![token.as_bytes().as_slice(), time_text(&now)])?;
    tx.commit()?;
    Ok(())
}

/// Every token hash with its principal; malformed rows are skipped with a warning.
pub fn tokens(conn: &mut Connection) -> Result<Vec<(TokenHash, Principal)>> {
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
            from_columns(&role, org, agent),
        ) else {
            tracing::warn!("skipping a malformed token row");
            continue;
        };
        tokens.push((hash, principal));
    }
    Ok(tokens)
}

/// The principal of one token hash (`None` also for a malformed row, with a warning).
pub fn token(conn: &Connection, token: &TokenHash) -> Result<Option<Principal>> {
    let row = conn
        .query_row(
            "SELECT role, org_id, agent_id FROM tokens WHERE hash = ?1",
            params![token.as_bytes().as_slice()],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            },
        )
        .optional()?;
    Ok(row.and_then(|(role, org, agent)| {
        let principal = from_columns(&role, org, agent);
        if principal.is_none() {
            tracing::warn!("skipping a malformed token row");
        }
        principal
    }))
}

/// Whether any global admin token exists.
pub fn has_global_admin(conn: &mut Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM tokens WHERE role = 'admin' AND org_id IS NULL)",
        [],
        |row| row.get(0),
    )?)
}

/// `(role, org_id, agent_id)` of a principal as stored.
fn columns(principal: &Principal) -> (&'static str, Option<&str>, Option<&str>) {
    match principal {
        Principal::GlobalAdmin => ("admin", None, None),
        Principal::OrgAdmin { org_id } => ("admin", Some(org_id), None),
        Principal::Agent { agent_id, org_id } => ("agent", Some(org_id), Some(agent_id)),
    }
}

/// The principal of a stored row.
fn from_columns(role: &str, org_id: Option<String>, agent_id: Option<String>) -> Option<Principal> {
    match (role, org_id, agent_id) {
        ("admin", None, None) => Some(Principal::GlobalAdmin),
        ("admin", Some(org_id), None) => Some(Principal::OrgAdmin { org_id }),
        ("agent", Some(org_id), Some(agent_id)) => Some(Principal::Agent { agent_id, org_id }),
        _ => None,
    }
}

const AGENT_COLUMNS: &str = "SELECT id, org_id, hostname, enrolled_at, last_seen, policy_version, \
                             last_error, ack, shadow FROM agents";

fn agent_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRecord> {
    Ok(AgentRecord {
        id: row.get(0)?,
        org_id: row.get(1)?,
        hostname: row.get(2)?,
        enrolled_at: time_at(row, 3)?,
        last_seen: time_opt(row, 4)?,
        policy_version: parsed_opt(row, 5)?,
        last_error: row.get(6)?,
        ack: json_opt(row, 7)?,
        shadow: json_opt(row, 8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_heartbeat_is_written_and_later_writes_are_durable_again() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut conn).unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute(
            "INSERT INTO agents (id, org_id, hostname, enrolled_at) VALUES ('agent-1', 'acme', 'h', '2026-01-01T00:00:00Z')",
            [],
        )
        .unwrap();
        let at = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        heartbeat(
            &mut conn,
            &Heartbeat {
                agent_id: "agent-1".to_owned(),
                policy_version: Some(policy_engine::PolicyVersion::new(3)),
                last_error: None,
                ack: None,
                shadow: None,
                at,
            },
        )
        .unwrap();
        let stored: (Option<String>, Option<String>) = conn
            .query_row(
                "SELECT last_seen, policy_version FROM agents WHERE id = 'agent-1'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(stored, (Some(time_text(&at)), Some("v3".to_owned())));
        // 2 = FULL: only the heartbeat's own statement skipped the fsync.
        assert_eq!(synchronous(&conn), 2);
    }
}
