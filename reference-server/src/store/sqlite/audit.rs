//! `audit`: the append-only trail, and its filtered, paged reads.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params_from_iter};

use super::Result;
use super::receipts;
use super::rows::{time_at, time_text, unsigned_opt};
use crate::store::{AuditEntry, AuditFilter, AuditPage, NewEntry};

/// Writes one entry inside a caller's transaction, its report receipt first (a report already
/// received fails the transaction before anything is written).
pub fn insert(conn: &Connection, at: DateTime<Utc>, entry: &NewEntry) -> Result<i64> {
    if let Some(receipt) = &entry.receipt {
        receipts::insert(conn, receipt, at.timestamp_millis())?;
    }
    let detail = entry
        .detail
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    conn.prepare_cached(
        "INSERT INTO audit (time, org_id, agent_id, actor, rule, policy_version, action, ip,
                            outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(rusqlite::params![
        time_text(&at),
        entry.org_id,
        entry.agent_id,
        entry.actor,
        entry.rule.and_then(|r| i64::try_from(r).ok()),
        entry.policy_version.map(|v| v.to_string()),
        entry.action,
        entry.ip.map(|ip| ip.to_string()),
        entry.outcome,
        detail
    ])?;
    Ok(conn.last_insert_rowid())
}

/// One page of entries matching `filter`, newest first.
pub fn query(conn: &mut Connection, filter: &AuditFilter) -> Result<AuditPage> {
    let mut sql = String::from(
        "SELECT id, time, org_id, agent_id, actor, rule, policy_version, action, ip,
                outcome, detail FROM audit WHERE org_id = ?",
    );
    let mut args: Vec<rusqlite::types::Value> = vec![filter.org_id.clone().into()];
    let mut clause = |sql_part: &str, value: rusqlite::types::Value| {
        sql.push_str(sql_part);
        args.push(value);
    };
    if let Some(agent) = &filter.agent_id {
        clause(" AND agent_id = ?", agent.clone().into());
    }
    if let Some(ip) = &filter.ip {
        clause(" AND ip = ?", ip.to_string().into());
    }
    if let Some(action) = &filter.action {
        clause(" AND action = ?", action.clone().into());
    }
    if let Some(from) = &filter.from {
        clause(" AND time >= ?", time_text(from).into());
    }
    if let Some(to) = &filter.to {
        clause(" AND time < ?", time_text(to).into());
    }
    if let Some(before) = filter.before_id {
        clause(" AND id < ?", before.into());
    }
    // One more than the page tells whether there is a next page.
    clause(
        " ORDER BY id DESC LIMIT ?",
        i64::from(filter.limit.saturating_add(1)).into(),
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(args.iter()), |row| {
        Ok((
            AuditEntry {
                id: row.get(0)?,
                time: time_at(row, 1)?,
                org_id: row.get(2)?,
                agent_id: row.get(3)?,
                actor: row.get(4)?,
                rule: unsigned_opt(row, 5)?,
                policy_version: row.get(6)?,
                action: row.get(7)?,
                ip: row.get(8)?,
                outcome: row.get(9)?,
                detail: None,
            },
            row.get::<_, Option<String>>(10)?,
        ))
    })?;
    let mut entries = Vec::new();
    for row in rows {
        let (mut entry, detail) = row?;
        entry.detail = detail.map(|d| serde_json::from_str(&d)).transpose()?;
        entries.push(entry);
    }
    let limit = usize::try_from(filter.limit).unwrap_or(usize::MAX);
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next_cursor = if more {
        entries.last().map(|e| e.id)
    } else {
        None
    };
    Ok(AuditPage {
        entries,
        next_cursor,
    })
}
