//! `rollouts`: staged rollouts, each kept whole as JSON beside its org and id (as in SQLite);
//! a rollout's new state is stored with its audit entry and its change, under the org's lock.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::Result;
use super::audit;
use super::policies::{lock_org, record_change};
use super::rows::get;
use crate::clock;
use crate::store::{ChangeKind, NewEntry, Rollout, StoreError};

/// Stores `rollout` (insert or replace), its audit entry and its change, in the caller's
/// transaction; returns the change's number.
pub async fn put(tx: &impl GenericClient, rollout: &Rollout, entry: &NewEntry) -> Result<u64> {
    lock_org(tx, &rollout.org_id).await?;
    let text = serde_json::to_string(rollout)?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO rollouts (id, org_id, created_ms, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
        )
        .await?;
    tx.execute(
        &statement,
        &[&rollout.id, &rollout.org_id, &rollout.created_ms, &text],
    )
    .await?;
    audited(tx, rollout, entry).await
}

/// Stores `to` in place of `from` (same id), its audit entry and its change in the caller's
/// transaction, only if the stored record is still `from`'s (under the org's lock, so two
/// replicas deciding at once move it once); returns the change's number.
pub async fn move_to(
    tx: &impl GenericClient,
    from: &Rollout,
    to: &Rollout,
    entry: &NewEntry,
) -> Result<u64> {
    lock_org(tx, &from.org_id).await?;
    let expected = serde_json::to_string(from)?;
    let text = serde_json::to_string(to)?;
    let statement = tx
        .prepare_cached("UPDATE rollouts SET record = $3 WHERE id = $1 AND record = $2")
        .await?;
    let moved = tx
        .execute(&statement, &[&from.id, &expected, &text])
        .await?;
    if moved == 0 || from.id != to.id {
        return Err(StoreError::RolloutMoved {
            id: from.id.clone(),
        });
    }
    audited(tx, to, entry).await
}

/// Adds the audit entry and the change of `rollout`, just stored in `tx`; returns the change's
/// number.
async fn audited(tx: &impl GenericClient, rollout: &Rollout, entry: &NewEntry) -> Result<u64> {
    audit::insert(tx, clock::from_ms(rollout.updated_ms), entry).await?;
    let kind = ChangeKind::Rollout {
        id: rollout.id.clone(),
    };
    record_change(tx, &rollout.org_id, &kind, clock::now_ms()).await
}

/// The most recent rollout of `org_id`.
pub async fn latest(client: &impl GenericClient, org_id: &str) -> Result<Option<Rollout>> {
    let statement = client
        .prepare_cached(
            "SELECT record FROM rollouts WHERE org_id = $1
             ORDER BY created_ms DESC, seq DESC LIMIT 1",
        )
        .await?;
    client
        .query_opt(&statement, &[&org_id])
        .await?
        .map(|row| record(&row))
        .transpose()
}

/// One rollout by id.
pub async fn one(client: &impl GenericClient, id: &str) -> Result<Option<Rollout>> {
    let statement = client
        .prepare_cached("SELECT record FROM rollouts WHERE id = $1")
        .await?;
    client
        .query_opt(&statement, &[&id])
        .await?
        .map(|row| record(&row))
        .transpose()
}

/// The rollouts of `org_id`, newest first, at most `limit`.
pub async fn of_org(client: &impl GenericClient, org_id: &str, limit: u32) -> Result<Vec<Rollout>> {
    let statement = client
        .prepare_cached(
            "SELECT record FROM rollouts WHERE org_id = $1
             ORDER BY created_ms DESC, seq DESC LIMIT $2",
        )
        .await?;
    client
        .query(&statement, &[&org_id, &i64::from(limit)])
        .await?
        .iter()
        .map(record)
        .collect()
}

fn record(row: &Row) -> Result<Rollout> {
    let text: String = get(row, "record")?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("stored rollout: {e}")))
}
