//! `alert_deliveries`: alert deliveries queued with their alert report and removed once done.
//! Replicas share the queue: a replica claims what it delivers (`claimed_ms`, rows locked with
//! `FOR UPDATE SKIP LOCKED` while claimed), so each delivery is under way on one replica only.
//! A claim older than [`CLAIM_LEASE_MS`] (its replica died while delivering) may be taken by
//! another replica: delivery stays at least once, as on one server.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::Result;
use super::audit;
use super::rows::get;
use crate::store::{NewDelivery, NewEntry, PendingDelivery};

/// How long a claim holds: longer than a delivery with all its retries under any sensible
/// `retry` config (the default takes at most about a minute).
pub const CLAIM_LEASE_MS: i64 = 15 * 60 * 1000;

/// The database's clock in ms: the same for every replica, whatever their clocks say.
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// The alert report's audit entries (its receipt with the first) and its queued deliveries, in
/// the caller's transaction.
pub async fn insert_alert(
    tx: &impl GenericClient,
    entries: &[NewEntry],
    deliveries: &[NewDelivery],
    at: DateTime<Utc>,
) -> Result<()> {
    for entry in entries {
        audit::insert(tx, at, entry).await?;
    }
    let statement = tx
        .prepare_cached(
            "INSERT INTO alert_deliveries (org_id, channel, alert, created_ms)
             VALUES ($1, $2, $3, $4)",
        )
        .await?;
    for delivery in deliveries {
        let alert = serde_json::to_string(&delivery.alert)?;
        tx.execute(
            &statement,
            &[
                &delivery.org_id,
                &delivery.channel,
                &alert,
                &at.timestamp_millis(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Claims up to `limit` queued deliveries no replica holds (never claimed, or claimed longer
/// than the lease ago), oldest first. Rows another replica is claiming at the same moment are
/// skipped, not waited for: two replicas never claim the same delivery.
pub async fn claim(client: &impl GenericClient, limit: u32) -> Result<Vec<PendingDelivery>> {
    let statement = client
        .prepare_cached(&format!(
            "UPDATE alert_deliveries SET claimed_ms = {DB_NOW_MS}
             WHERE id IN (
                 SELECT id FROM alert_deliveries
                 WHERE claimed_ms IS NULL OR claimed_ms < {DB_NOW_MS} - $1
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, channel, alert"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&CLAIM_LEASE_MS, &i64::from(limit)])
        .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let alert: String = get(row, "alert")?;
        claimed.push(PendingDelivery {
            id: get(row, "id")?,
            channel: get(row, "channel")?,
            alert: serde_json::from_str(&alert)?,
        });
    }
    claimed.sort_by_key(|delivery| delivery.id);
    Ok(claimed)
}

/// Removes delivery `id` and writes its outcome's audit entry, in the caller's transaction.
/// When it is gone already (its claim lapsed and another replica finished it) nothing is
/// written: the delivery has its one audit entry. Returns whether it was still queued.
pub async fn finish(
    tx: &impl GenericClient,
    id: i64,
    entry: &NewEntry,
    at: DateTime<Utc>,
) -> Result<bool> {
    let statement = tx
        .prepare_cached("DELETE FROM alert_deliveries WHERE id = $1")
        .await?;
    if tx.execute(&statement, &[&id]).await? == 0 {
        return Ok(false);
    }
    audit::insert(tx, at, entry).await?;
    Ok(true)
}
