//! `changes` and `org_changes`: the numbered changes per org that event streams are pushed.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::Result;
use crate::store::records::{ChangeColumns, ChangeKind};
use crate::store::{Change, StoreError};

/// Records `kind` as the next change of `org_id` inside the caller's transaction; returns its
/// number.
pub fn record(tx: &Transaction<'_>, org_id: &str, kind: &ChangeKind, now_ms: i64) -> Result<u64> {
    let seq: i64 = tx.query_row(
        "INSERT INTO org_changes (org_id, seq) VALUES (?1, 1)
         ON CONFLICT (org_id) DO UPDATE SET seq = seq + 1 RETURNING seq",
        params![org_id],
        |row| row.get(0),
    )?;
    let columns = kind.columns();
    tx.prepare_cached(
        "INSERT INTO changes (org_id, seq, kind, agent_id, ip, reference, version, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        org_id,
        seq,
        columns.kind,
        columns.agent_id,
        columns.ip,
        columns.reference,
        columns.version,
        now_ms
    ])?;
    u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("change number {seq}")))
}

/// The number of the last change of `org_id` (0 before the first).
pub fn last(conn: &Connection, org_id: &str) -> Result<u64> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM org_changes WHERE org_id = ?1",
            params![org_id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

/// The changes of `org_id` after `after`, in order, at most `limit`; rows that no longer read
/// are skipped with a warning.
pub fn after(conn: &Connection, org_id: &str, after: u64, limit: u32) -> Result<Vec<Change>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, kind, agent_id, ip, reference, version FROM changes
         WHERE org_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![org_id, i64::try_from(after).unwrap_or(i64::MAX), limit],
        |row| {
            Ok((
                row.get::<_, i64>(0)?,
                ChangeColumns {
                    kind: row.get(1)?,
                    agent_id: row.get(2)?,
                    ip: row.get(3)?,
                    reference: row.get(4)?,
                    version: row.get(5)?,
                },
            ))
        },
    )?;
    let mut changes = Vec::new();
    for row in rows {
        let (seq, columns) = row?;
        let seq = u64::try_from(seq).unwrap_or_default();
        match ChangeKind::from_columns(columns) {
            Some(kind) => changes.push(Change {
                org_id: org_id.to_owned(),
                seq,
                kind,
            }),
            None => tracing::warn!(org = org_id, seq, "skipping a malformed change row"),
        }
    }
    Ok(changes)
}
