//! `shadow_runs`: an org's shadow runs, each kept whole as JSON beside its org and number (as in
//! SQLite); a run's start or end is stored with its audit entry and its change, under the org's
//! lock.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::Result;
use super::audit;
use super::policies::{lock_org, record_change};
use super::rows::get;
use crate::clock;
use crate::store::{ChangeKind, NewEntry, ShadowRun, StoreError};

/// Stores `run` (insert or replace), its audit entry and its change (started, or ended), in
/// the caller's transaction; returns the change's number.
pub async fn put(tx: &impl GenericClient, run: &ShadowRun, entry: &NewEntry) -> Result<u64> {
    lock_org(tx, &run.org_id).await?;
    let text = serde_json::to_string(run)?;
    let shadow = i64::try_from(run.shadow).unwrap_or(i64::MAX);
    // A run's end replaces its record; a new run takes a free number only.
    let sql = match run.ended_ms {
        None => {
            "INSERT INTO shadow_runs (org_id, shadow, record) VALUES ($1, $2, $3)
             ON CONFLICT (org_id, shadow) DO NOTHING"
        }
        Some(_) => {
            "INSERT INTO shadow_runs (org_id, shadow, record) VALUES ($1, $2, $3)
             ON CONFLICT (org_id, shadow) DO UPDATE SET record = EXCLUDED.record"
        }
    };
    let statement = tx.prepare_cached(sql).await?;
    if tx
        .execute(&statement, &[&run.org_id, &shadow, &text])
        .await?
        == 0
    {
        return Err(StoreError::ShadowTaken {
            org_id: run.org_id.clone(),
            shadow: run.shadow,
        });
    }
    let at = run.ended_ms.unwrap_or(run.started_ms);
    audit::insert(tx, clock::from_ms(at), entry).await?;
    let kind = match run.ended_ms {
        None => ChangeKind::ShadowStarted { shadow: run.shadow },
        Some(_) => ChangeKind::ShadowEnded { shadow: run.shadow },
    };
    record_change(tx, &run.org_id, &kind, clock::now_ms()).await
}

/// The shadow run of `org_id` with the highest number.
pub async fn latest(client: &impl GenericClient, org_id: &str) -> Result<Option<ShadowRun>> {
    let statement = client
        .prepare_cached(
            "SELECT record FROM shadow_runs WHERE org_id = $1 ORDER BY shadow DESC LIMIT 1",
        )
        .await?;
    client
        .query_opt(&statement, &[&org_id])
        .await?
        .map(|row| record(&row))
        .transpose()
}

fn record(row: &Row) -> Result<ShadowRun> {
    let text: String = get(row, "record")?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("stored shadow run: {e}")))
}
