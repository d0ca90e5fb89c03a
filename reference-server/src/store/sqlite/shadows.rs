//! `shadow_runs`: an org's shadow runs, each kept whole as JSON beside its org and number.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::Result;
use super::audit;
use crate::clock;
use crate::store::{NewEntry, ShadowRun};

/// Stores `run` (insert or replace) and its audit entry in one transaction.
pub fn put(conn: &mut Connection, run: &ShadowRun, entry: &NewEntry) -> Result<()> {
    let text = serde_json::to_string(run)?;
    let shadow = i64::try_from(run.shadow).unwrap_or(i64::MAX);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO shadow_runs (org_id, shadow, record) VALUES (?1, ?2, ?3)
         ON CONFLICT (org_id, shadow) DO UPDATE SET record = ?3",
        params![run.org_id, shadow, text],
    )?;
    let at = run.ended_ms.unwrap_or(run.started_ms);
    audit::insert(&tx, clock::from_ms(at), entry)?;
    tx.commit()?;
    Ok(())
}

/// The shadow run of `org_id` with the highest number.
pub fn latest(conn: &mut Connection, org_id: &str) -> Result<Option<ShadowRun>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT record FROM shadow_runs WHERE org_id = ?1 ORDER BY shadow DESC LIMIT 1",
            params![org_id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}
