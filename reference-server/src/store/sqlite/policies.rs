//! `policies` (versions per org) and `overrides` (per agent).

use std::sync::Arc;

use policy_engine::{Policy, PolicyVersion};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::Result;
use super::rows::{time_at, time_text};
use crate::store::{NewPolicy, StoreError, StoredOverrides, StoredPolicy};

/// Stores the next version of its org in one immediate transaction (a signed policy only as
/// the version it was signed for).
pub fn insert(conn: &mut Connection, new: NewPolicy) -> Result<StoredPolicy> {
    let NewPolicy {
        org_id,
        policy,
        id,
        created_at,
        signed,
    } = new;
    let text = serde_json::to_string(&policy.to_json_value())?;
    let signature_text = signed
        .as_ref()
        .map(|(_, signature)| serde_json::to_string(signature))
        .transpose()?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let next: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM policies WHERE org_id = ?1",
        params![org_id],
        |row| row.get(0),
    )?;
    let version = PolicyVersion::new(u64::try_from(next).unwrap_or_default());
    if let Some((signed_version, _)) = &signed {
        if *signed_version != version {
            return Err(StoreError::VersionTaken {
                org_id,
                signed: *signed_version,
                next: version,
            });
        }
    }
    tx.execute(
        "INSERT INTO policies (org_id, version, id, document, created_at, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            org_id,
            next,
            id,
            text,
            time_text(&created_at),
            signature_text
        ],
    )?;
    tx.commit()?;
    Ok(StoredPolicy {
        id,
        org_id,
        version,
        policy,
        created_at,
        signature: signed.map(|(_, signature)| signature),
    })
}

/// The latest version of `org_id`, validated again (the document is stored normalized).
pub fn latest(conn: &mut Connection, org_id: String) -> Result<Option<StoredPolicy>> {
    read(conn, org_id, None)
}

/// Version `version` of `org_id`.
pub fn version(
    conn: &mut Connection,
    org_id: String,
    version: u64,
) -> Result<Option<StoredPolicy>> {
    read(
        conn,
        org_id,
        Some(i64::try_from(version).unwrap_or(i64::MAX)),
    )
}

fn read(
    conn: &mut Connection,
    org_id: String,
    version: Option<i64>,
) -> Result<Option<StoredPolicy>> {
    let row = conn
        .query_row(
            "SELECT id, version, document, created_at, signature FROM policies
             WHERE org_id = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
            params![org_id, version],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    time_at(row, 3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((id, version, document, created_at, signature)) = row else {
        return Ok(None);
    };
    let policy = Policy::from_value(&serde_json::from_str(&document)?)
        .map_err(|e| StoreError::Corrupt(format!("stored policy `{id}`: {e}")))?;
    let signature = signature
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("signature of stored policy `{id}`: {e}")))?;
    Ok(Some(StoredPolicy {
        id,
        org_id,
        version: PolicyVersion::new(u64::try_from(version).unwrap_or_default()),
        policy: Arc::new(policy),
        created_at,
        signature,
    }))
}

/// The overrides of `agent_id`.
pub fn overrides(conn: &mut Connection, agent_id: &str) -> Result<Option<StoredOverrides>> {
    let row = conn
        .query_row(
            "SELECT list, updated_at FROM overrides WHERE agent_id = ?1",
            params![agent_id],
            |row| Ok((row.get::<_, String>(0)?, time_at(row, 1)?)),
        )
        .optional()?;
    row.map(|(list, updated_at)| {
        Ok(StoredOverrides {
            list: serde_json::from_str(&list)?,
            updated_at,
        })
    })
    .transpose()
}

/// Replaces the overrides of `agent_id`.
pub fn set_overrides(
    conn: &mut Connection,
    agent_id: &str,
    overrides: &StoredOverrides,
) -> Result<()> {
    let text = serde_json::to_string(&overrides.list)?;
    conn.execute(
        "INSERT INTO overrides (agent_id, list, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (agent_id) DO UPDATE SET list = ?2, updated_at = ?3",
        params![agent_id, text, time_text(&overrides.updated_at)],
    )?;
    Ok(())
}
