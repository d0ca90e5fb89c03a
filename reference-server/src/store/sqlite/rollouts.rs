//! `rollouts`: staged rollouts, each kept whole as JSON beside its org and id.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::Result;
use super::{audit, changes};
use crate::clock;
use crate::store::{ChangeKind, NewEntry, Pushed, Rollout, StoreError};

/// Stores `rollout` (insert or replace), its audit entry and its change in one transaction.
pub fn put(conn: &mut Connection, rollout: &Rollout, entry: &NewEntry) -> Result<Pushed<()>> {
    let text = serde_json::to_string(rollout)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached(
        "INSERT INTO rollouts (id, org_id, created_ms, record) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET record = ?4",
    )?
    .execute(params![
        rollout.id,
        rollout.org_id,
        rollout.created_ms,
        text
    ])?;
    audited(tx, rollout, entry)
}

/// Stores `to` in place of `from` (same id), its audit entry and its change in one
/// transaction, only if the stored record is still `from`'s.
pub fn move_to(
    conn: &mut Connection,
    from: &Rollout,
    to: &Rollout,
    entry: &NewEntry,
) -> Result<Pushed<()>> {
    let expected = serde_json::to_string(from)?;
    let text = serde_json::to_string(to)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let moved = tx
        .prepare_cached("UPDATE rollouts SET record = ?3 WHERE id = ?1 AND record = ?2")?
        .execute(params![from.id, expected, text])?;
    if moved == 0 || from.id != to.id {
        return Err(StoreError::RolloutMoved {
            id: from.id.clone(),
        });
    }
    audited(tx, to, entry)
}

/// Adds the audit entry and the change of `rollout`, just stored in `tx`, and commits.
fn audited(tx: Transaction<'_>, rollout: &Rollout, entry: &NewEntry) -> Result<Pushed<()>> {
    audit::insert(&tx, clock::from_ms(rollout.updated_ms), entry)?;
    let kind = ChangeKind::Rollout {
        id: rollout.id.clone(),
    };
    let seq = changes::record(&tx, &rollout.org_id, &kind, clock::now_ms())?;
    tx.commit()?;
    Ok(Pushed::change(seq))
}

/// The most recent rollout of `org_id`.
pub fn latest(conn: &Connection, org_id: &str) -> Result<Option<Rollout>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT record FROM rollouts WHERE org_id = ?1
             ORDER BY created_ms DESC, rowid DESC LIMIT 1",
            params![org_id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

/// One rollout by id.
pub fn one(conn: &mut Connection, id: &str) -> Result<Option<Rollout>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT record FROM rollouts WHERE id = ?1",
            params![id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

/// The rollouts of `org_id`, newest first, at most `limit`.
pub fn of_org(conn: &mut Connection, org_id: &str, limit: u32) -> Result<Vec<Rollout>> {
    let mut stmt = conn.prepare_cached(
        "SELECT record FROM rollouts WHERE org_id = ?1
         ORDER BY created_ms DESC, rowid DESC LIMIT ?2",
    )?;
    let texts = stmt
        .query_map(params![org_id, limit], |row| row.get::<_, String>(0))?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(texts
        .iter()
        .map(|t| serde_json::from_str(t))
        .collect::<std::result::Result<Vec<_>, _>>()?)
}
