//! `shadow_runs`: an org's shadow runs, each kept whole as JSON beside its org and number.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::Result;
use super::{audit, changes};
use crate::clock;
use crate::store::{ChangeKind, NewEntry, Pushed, ShadowRun, StoreError};

/// Stores `run` (insert or replace), its audit entry and its change (started, or ended) in one
/// transaction.
pub fn put(conn: &mut Connection, run: &ShadowRun, entry: &NewEntry) -> Result<Pushed<()>> {
    let text = serde_json::to_string(run)?;
    let shadow = i64::try_from(run.shadow).unwrap_or(i64::MAX);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A run's end replaces its record; a new run takes a free number only.
    let sql = match run.ended_ms {
        None => {
            "INSERT INTO shadow_runs (org_id, shadow, record) VALUES (?1, ?2, ?3)
             ON CONFLICT (org_id, shadow) DO NOTHING"
        }
        Some(_) => {
            "INSERT INTO shadow_runs (org_id, shadow, record) VALUES (?1, ?2, ?3)
             ON CONFLICT (org_id, shadow) DO UPDATE SET record = ?3"
        }
    };
    if tx.execute(sql, params![run.org_id, shadow, text])? == 0 {
        return Err(StoreError::ShadowTaken {
            org_id: run.org_id.clone(),
            shadow: run.shadow,
        });
    }
    let at = run.ended_ms.unwrap_or(run.started_ms);
    audit::insert(&tx, clock::from_ms(at), entry)?;
    let kind = match run.ended_ms {
        None => ChangeKind::ShadowStarted { shadow: run.shadow },
        Some(_) => ChangeKind::ShadowEnded { shadow: run.shadow },
    };
    let seq = changes::record(&tx, &run.org_id, &kind, clock::now_ms())?;
    tx.commit()?;
    Ok(Pushed::change(seq))
}

/// The shadow run of `org_id` with the highest number.
pub fn latest(conn: &Connection, org_id: &str) -> Result<Option<ShadowRun>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT record FROM shadow_runs WHERE org_id = ?1 ORDER BY shadow DESC LIMIT 1",
            params![org_id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}
