//! `blocks`: fleet blocks per org and address.

use std::net::IpAddr;

use policy_engine::policy::Limit;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::Result;
use super::audit;
use super::changes;
use super::rows::{parsed, parsed_opt, time_at, time_text, unsigned_opt};
use crate::clock;
use crate::store::records::merge_block;
use crate::store::{ChangeKind, FleetBlock, NewBlock, NewEntry, Pushed, Upserted};

/// Merges a reported block into the one in force and writes the report's audit entry (noting
/// `detail.fleet`), and its change when it is new or later, in one transaction.
pub fn upsert(
    conn: &mut Connection,
    new: &NewBlock,
    mut entry: NewEntry,
) -> Result<Pushed<Upserted>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let ip = new.ip.to_string();
    let existing = tx
        .query_row(
            &format!("{BLOCK_COLUMNS} WHERE org_id = ?1 AND ip = ?2"),
            params![new.org_id, ip],
            block_row,
        )
        .optional()?;
    let upserted = merge_block(existing, new);
    let block = &upserted.block;
    if upserted.changed {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO blocks (org_id, ip, duration, expires_ms, agent_id, rule,
                policy_version, reports, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            block.org_id,
            ip,
            block.duration.to_string(),
            block.expires_ms,
            block.agent_id,
            block.rule.and_then(|r| i64::try_from(r).ok()),
            block.policy_version.map(|v| v.to_string()),
            block.reports,
            time_text(&block.created_at),
            time_text(&block.updated_at)
        ])?;
    } else {
        tx.prepare_cached("UPDATE blocks SET reports = ?3 WHERE org_id = ?1 AND ip = ?2")?
            .execute(params![block.org_id, ip, block.reports])?;
    }
    if let Some(detail) = entry.detail.as_mut().and_then(|d| d.as_object_mut()) {
        let fleet = if upserted.changed {
            "stored"
        } else {
            "duplicate"
        };
        detail.insert("fleet".to_owned(), serde_json::json!(fleet));
    }
    audit::insert(&tx, clock::from_ms(new.now_ms), &entry)?;
    let seq = if upserted.changed {
        let kind = ChangeKind::Block {
            ip: new.ip,
            reporter: new.agent_id.clone(),
        };
        Some(changes::record(&tx, &new.org_id, &kind, new.now_ms)?)
    } else {
        None
    };
    tx.commit()?;
    Ok(Pushed {
        value: upserted,
        seq,
    })
}

/// The block on `ip` of `org_id`, in force or not.
pub fn one(conn: &Connection, org_id: &str, ip: IpAddr) -> Result<Option<FleetBlock>> {
    Ok(conn
        .query_row(
            &format!("{BLOCK_COLUMNS} WHERE org_id = ?1 AND ip = ?2"),
            params![org_id, ip.to_string()],
            block_row,
        )
        .optional()?)
}

/// Blocks of `org_id` in force at `now_ms`, by address; expired rows are deleted.
pub fn active(conn: &mut Connection, org_id: &str, now_ms: i64) -> Result<Vec<FleetBlock>> {
    conn.prepare_cached(
        "DELETE FROM blocks WHERE org_id = ?1 AND expires_ms IS NOT NULL AND expires_ms <= ?2",
    )?
    .execute(params![org_id, now_ms])?;
    in_force(conn, org_id, now_ms)
}

/// Blocks of `org_id` in force at `now_ms`, by address (a read: expired rows stay).
pub fn in_force(conn: &Connection, org_id: &str, now_ms: i64) -> Result<Vec<FleetBlock>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{BLOCK_COLUMNS} WHERE org_id = ?1 AND (expires_ms IS NULL OR expires_ms > ?2) ORDER BY ip"
    ))?;
    let rows = stmt.query_map(params![org_id, now_ms], block_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Lifts a block; `None` when `org_id` has no block in force on `ip`. The audit entry and the
/// change (lifted by `entry.actor`) are written in the same transaction.
pub fn remove(
    conn: &mut Connection,
    org_id: &str,
    ip: IpAddr,
    now_ms: i64,
    entry: &NewEntry,
) -> Result<Pushed<Option<FleetBlock>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let address = ip;
    let ip = ip.to_string();
    let existing = tx
        .query_row(
            &format!("{BLOCK_COLUMNS} WHERE org_id = ?1 AND ip = ?2"),
            params![org_id, ip],
            block_row,
        )
        .optional()?;
    tx.prepare_cached("DELETE FROM blocks WHERE org_id = ?1 AND ip = ?2")?
        .execute(params![org_id, ip])?;
    let active = existing.filter(|b| b.in_force(now_ms));
    let mut seq = None;
    if active.is_some() {
        audit::insert(&tx, clock::from_ms(now_ms), entry)?;
        let kind = ChangeKind::Unblock {
            ip: address,
            by: entry.actor.clone(),
        };
        seq = Some(changes::record(&tx, org_id, &kind, now_ms)?);
    }
    tx.commit()?;
    Ok(Pushed { value: active, seq })
}

const BLOCK_COLUMNS: &str = "SELECT org_id, ip, duration, expires_ms, agent_id, rule, \
                             policy_version, reports, created_at, updated_at FROM blocks";

fn block_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FleetBlock> {
    Ok(FleetBlock {
        org_id: row.get(0)?,
        ip: parsed(row, 1)?,
        duration: parsed(row, 2)?,
        expires_ms: row.get(3)?,
        agent_id: row.get(4)?,
        rule: unsigned_opt(row, 5)?,
        policy_version: parsed_opt(row, 6)?,
        reports: row.get(7)?,
        created_at: time_at(row, 8)?,
        updated_at: time_at(row, 9)?,
    })
}

/// Admits a fleet block on `ip` under the org's fleet-block budget ([`Store::admit_fleet_block`](crate::store::Store::admit_fleet_block)).
pub fn admit_budget(
    conn: &mut Connection,
    org_id: &str,
    ip: IpAddr,
    limit: Limit,
    now_ms: i64,
) -> Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let since = now_ms.saturating_sub(clock::millis(limit.window));
    tx.prepare_cached("DELETE FROM fleet_budget WHERE org_id = ?1 AND admitted_ms <= ?2")?
        .execute(params![org_id, since])?;
    let ip = ip.to_canonical().to_string();
    let seen = tx
        .prepare_cached("SELECT 1 FROM fleet_budget WHERE org_id = ?1 AND ip = ?2")?
        .query_row(params![org_id, ip], |_| Ok(()))
        .optional()?
        .is_some();
    let admitted = seen || {
        let count: i64 = tx
            .prepare_cached("SELECT count(*) FROM fleet_budget WHERE org_id = ?1")?
            .query_row(params![org_id], |row| row.get(0))?;
        count < i64::from(limit.max)
    };
    if admitted && !seen {
        tx.prepare_cached(
            "INSERT INTO fleet_budget (org_id, ip, admitted_ms) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![org_id, ip, now_ms])?;
    }
    tx.commit()?;
    Ok(admitted)
}
