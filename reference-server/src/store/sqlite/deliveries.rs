//! `alert_deliveries`: alert deliveries queued with their alert report and removed once done,
//! so that none is lost between acknowledging the report and delivering it.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::Result;
use super::audit;
use crate::store::{NewDelivery, NewEntry, PendingDelivery};

/// The alert report's audit entries (its receipt with the first) and its queued deliveries, in
/// one transaction.
pub fn insert_alert(
    conn: &mut Connection,
    entries: &[NewEntry],
    deliveries: &[NewDelivery],
    at: DateTime<Utc>,
) -> Result<()> {
    let tx = conn.transaction()?;
    for entry in entries {
        audit::insert(&tx, at, entry)?;
    }
    for delivery in deliveries {
        tx.prepare_cached(
            "INSERT INTO alert_deliveries (org_id, channel, alert, created_ms)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            delivery.org_id,
            delivery.channel,
            serde_json::to_string(&delivery.alert)?,
            at.timestamp_millis()
        ])?;
    }
    tx.commit()?;
    Ok(())
}

/// Queued deliveries after `after_id`, oldest first.
pub fn pending(conn: &mut Connection, after_id: i64, limit: u32) -> Result<Vec<PendingDelivery>> {
    let mut stmt = conn.prepare(
        "SELECT id, channel, alert FROM alert_deliveries WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_id, limit], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut pending = Vec::new();
    for row in rows {
        let (id, channel, alert) = row?;
        pending.push(PendingDelivery {
            id,
            channel,
            alert: serde_json::from_str(&alert)?,
        });
    }
    Ok(pending)
}

/// Removes delivery `id` and writes its outcome's audit entry, together; nothing when it is
/// gone already (finished before: it has its one audit entry).
pub fn finish(conn: &mut Connection, id: i64, entry: &NewEntry, at: DateTime<Utc>) -> Result<()> {
    let tx = conn.transaction()?;
    if tx
        .prepare_cached("DELETE FROM alert_deliveries WHERE id = ?1")?
        .execute(params![id])?
        == 0
    {
        return Ok(());
    }
    audit::insert(&tx, at, entry)?;
    tx.commit()?;
    Ok(())
}
