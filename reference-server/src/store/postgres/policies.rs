//! `policies` (versions per org), `overrides` (per agent) and `changes` (numbered per org, with
//! the per-org lock that orders them).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use policy_engine::{Policy, PolicyVersion};
use tokio_postgres::Row;

use super::Result;
use super::rows::{big, get, stored};
use crate::store::records::{ChangeColumns, ChangeKind};
use crate::store::{Change, StoreError, StoredOverrides, StoredPolicy};

/// The channel change notices go out on: payload `<seq> <org_id>`.
pub const CHANGES_CHANNEL: &str = "policy_changes";

/// Takes the lock of `org_id` until the caller's transaction ends: writes whose changes go to
/// the org's streams (on any replica) commit one at a time, so change numbers and policy
/// versions are assigned in commit order, without gaps.
pub async fn lock_org(tx: &impl GenericClient, org_id: &str) -> Result<()> {
    let statement = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended('policy-org:' || $1, 0))")
        .await?;
    tx.query(&statement, &[&org_id]).await?;
    Ok(())
}

/// Records `kind` as the next change of `org_id` in the caller's transaction (which holds the
/// org's lock) and queues its notice, sent when the transaction commits; returns its number.
pub async fn record_change(
    tx: &impl GenericClient,
    org_id: &str,
    kind: &ChangeKind,
    now_ms: i64,
) -> Result<u64> {
    let next = tx
        .prepare_cached(
            "INSERT INTO org_changes (org_id, seq) VALUES ($1, 1)
             ON CONFLICT (org_id) DO UPDATE SET seq = org_changes.seq + 1 RETURNING seq",
        )
        .await?;
    let seq: i64 = get(&tx.query_one(&next, &[&org_id]).await?, "seq")?;
    let columns = kind.columns();
    let insert = tx
        .prepare_cached(
            "INSERT INTO changes (org_id, seq, kind, agent_id, ip, reference, version, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &org_id,
            &seq,
            &columns.kind,
            &columns.agent_id,
            &columns.ip,
            &columns.reference,
            &columns.version,
            &now_ms,
        ],
    )
    .await?;
    let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    tx.query(&notify, &[&CHANGES_CHANNEL, &format!("{seq} {org_id}")])
        .await?;
    u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("change number {seq}")))
}

/// A policy version to insert, as stored.
#[derive(Debug)]
pub struct NewRow<'a> {
    /// The org.
    pub org_id: &'a str,
    /// The normalized document (JSON).
    pub document: &'a str,
    /// `pol_...`
    pub id: &'a str,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
    /// The version a signature was made for, and the signature (JSON).
    pub signed: Option<(PolicyVersion, String)>,
}

/// Stores the next version of its org with its change, in the caller's transaction; a signed
/// one only if it was signed for that version ([`StoreError::VersionTaken`]).
pub async fn insert(tx: &impl GenericClient, new: &NewRow<'_>) -> Result<(PolicyVersion, u64)> {
    let NewRow {
        org_id,
        document,
        id,
        created_at,
        ref signed,
    } = *new;
    lock_org(tx, org_id).await?;
    let next = tx
        .prepare_cached(
            "SELECT COALESCE(MAX(version), 0) + 1 AS next FROM policies WHERE org_id = $1",
        )
        .await?;
    let number: i64 = get(&tx.query_one(&next, &[&org_id]).await?, "next")?;
    let version = PolicyVersion::new(u64::try_from(number).unwrap_or_default());
    if let Some((signed_version, _)) = signed {
        if *signed_version != version {
            return Err(StoreError::VersionTaken {
                org_id: org_id.to_owned(),
                signed: *signed_version,
                next: version,
            });
        }
    }
    let signature = signed.as_ref().map(|(_, text)| text.as_str());
    let insert = tx
        .prepare_cached(
            "INSERT INTO policies (org_id, version, id, document, created_at, signature)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &org_id,
            &number,
            &id,
            &document,
            &stored(&created_at),
            &signature,
        ],
    )
    .await?;
    let seq = record_change(
        tx,
        org_id,
        &ChangeKind::Policy { version },
        created_at.timestamp_millis(),
    )
    .await?;
    Ok((version, seq))
}

/// The number of the latest version of `org_id`.
pub async fn latest_version(
    client: &impl GenericClient,
    org_id: &str,
) -> Result<Option<PolicyVersion>> {
    let statement = client
        .prepare_cached("SELECT MAX(version) AS version FROM policies WHERE org_id = $1")
        .await?;
    let version: Option<i64> = get(&client.query_one(&statement, &[&org_id]).await?, "version")?;
    Ok(version
        .and_then(|v| u64::try_from(v).ok())
        .map(PolicyVersion::new))
}

/// Version `version` of `org_id`, validated again (the document is stored normalized).
pub async fn version(
    client: &impl GenericClient,
    org_id: &str,
    version: PolicyVersion,
) -> Result<Option<StoredPolicy>> {
    let statement = client
        .prepare_cached(
            "SELECT id, org_id, version, document, created_at, signature FROM policies
             WHERE org_id = $1 AND version = $2",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&org_id, &big(version.number())])
        .await?;
    row.map(|row| policy_row(&row)).transpose()
}

fn policy_row(row: &Row) -> Result<StoredPolicy> {
    let id: String = get(row, "id")?;
    let document: String = get(row, "document")?;
    let version: i64 = get(row, "version")?;
    let policy = Policy::from_value(&serde_json::from_str(&document)?)
        .map_err(|e| StoreError::Corrupt(format!("stored policy `{id}`: {e}")))?;
    let signature: Option<String> = get(row, "signature")?;
    let signature = signature
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("signature of stored policy `{id}`: {e}")))?;
    Ok(StoredPolicy {
        signature,
        id,
        org_id: get(row, "org_id")?,
        version: PolicyVersion::new(u64::try_from(version).unwrap_or_default()),
        policy: Arc::new(policy),
        created_at: get(row, "created_at")?,
    })
}

/// The overrides of `agent_id`.
pub async fn overrides(
    client: &impl GenericClient,
    agent_id: &str,
) -> Result<Option<StoredOverrides>> {
    let statement = client
        .prepare_cached("SELECT list, updated_at FROM overrides WHERE agent_id = $1")
        .await?;
    let Some(row) = client.query_opt(&statement, &[&agent_id]).await? else {
        return Ok(None);
    };
    let list: String = get(&row, "list")?;
    Ok(Some(StoredOverrides {
        list: serde_json::from_str(&list)?,
        updated_at: get(&row, "updated_at")?,
    }))
}

/// Replaces the overrides of `agent_id` of `org_id` with their change, in the caller's
/// transaction.
pub async fn set_overrides(
    tx: &impl GenericClient,
    org_id: &str,
    agent_id: &str,
    overrides: &StoredOverrides,
) -> Result<u64> {
    lock_org(tx, org_id).await?;
    let text = serde_json::to_string(&overrides.list)?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO overrides (agent_id, list, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (agent_id) DO UPDATE SET list = $2, updated_at = $3",
        )
        .await?;
    tx.execute(
        &statement,
        &[&agent_id, &text, &stored(&overrides.updated_at)],
    )
    .await?;
    let kind = ChangeKind::Overrides {
        agent_id: agent_id.to_owned(),
    };
    record_change(tx, org_id, &kind, overrides.updated_at.timestamp_millis()).await
}

/// The number of the last change of `org_id` (0 before the first).
pub async fn last_change(client: &impl GenericClient, org_id: &str) -> Result<u64> {
    let statement = client
        .prepare_cached("SELECT seq FROM org_changes WHERE org_id = $1")
        .await?;
    let row = client.query_opt(&statement, &[&org_id]).await?;
    let seq: Option<i64> = row.map(|row| get(&row, "seq")).transpose()?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

/// The changes of `org_id` after `after`, in order, at most `limit`; rows that no longer read
/// are skipped with a warning.
pub async fn changes_after(
    client: &impl GenericClient,
    org_id: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<Change>> {
    let statement = client
        .prepare_cached(
            "SELECT seq, kind, agent_id, ip, reference, version FROM changes
             WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .await?;
    let rows = client
        .query(&statement, &[&org_id, &big(after), &i64::from(limit)])
        .await?;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = get(&row, "seq")?;
        let seq = u64::try_from(seq).unwrap_or_default();
        let columns = ChangeColumns {
            kind: get(&row, "kind")?,
            agent_id: get(&row, "agent_id")?,
            ip: get(&row, "ip")?,
            reference: get(&row, "reference")?,
            version: get(&row, "version")?,
        };
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
