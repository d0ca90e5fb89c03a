//! `policies` (versions per org, the list of versions, the orgs) and `overrides` (per agent).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use policy_engine::{Policy, PolicyVersion};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::Result;
use super::changes;
use super::rows::{time_at, time_text, unsigned_opt};
use crate::store::{
    ChangeKind, NewPolicy, PolicySummary, Pushed, StoreError, StoredOverrides, StoredPolicy,
};

/// Stores the next version of its org (a signed policy only as the version it was signed for)
/// with its change in one immediate transaction.
pub fn insert(conn: &mut Connection, new: NewPolicy) -> Result<Pushed<StoredPolicy>> {
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
    tx.prepare_cached(
        "INSERT INTO policies (org_id, version, id, document, created_at, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        org_id,
        next,
        id,
        text,
        time_text(&created_at),
        signature_text
    ])?;
    let seq = changes::record(
        &tx,
        &org_id,
        &ChangeKind::Policy { version },
        created_at.timestamp_millis(),
    )?;
    tx.commit()?;
    Ok(Pushed {
        value: StoredPolicy {
            id,
            org_id,
            version,
            policy,
            created_at,
            signature: signed.map(|(_, signature)| signature),
        },
        seq: Some(seq),
    })
}

/// A stored version as read, before its document is validated again.
#[derive(Debug)]
pub struct PolicyRow {
    id: String,
    org_id: String,
    version: i64,
    document: String,
    created_at: DateTime<Utc>,
    signature: Option<String>,
}

impl PolicyRow {
    /// Whether it is version `version`.
    pub fn version_is(&self, version: PolicyVersion) -> bool {
        u64::try_from(self.version).is_ok_and(|v| v == version.number())
    }

    /// The org.
    pub fn org_id(&self) -> &str {
        &self.org_id
    }

    /// The version number.
    pub fn version(&self) -> PolicyVersion {
        PolicyVersion::new(u64::try_from(self.version).unwrap_or_default())
    }

    /// The stored policy, validated again (the document is stored normalized).
    pub fn validate(self) -> Result<StoredPolicy> {
        let policy = Policy::from_value(&serde_json::from_str(&self.document)?)
            .map_err(|e| StoreError::Corrupt(format!("stored policy `{}`: {e}", self.id)))?;
        let version = self.version();
        let signature = self
            .signature
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| {
                StoreError::Corrupt(format!("signature of stored policy `{}`: {e}", self.id))
            })?;
        Ok(StoredPolicy {
            version,
            id: self.id,
            org_id: self.org_id,
            policy: Arc::new(policy),
            created_at: self.created_at,
            signature,
        })
    }
}

/// The latest version of `org_id`, not yet validated.
pub fn latest_row(conn: &Connection, org_id: &str) -> Result<Option<PolicyRow>> {
    row(
        conn,
        "WHERE org_id = ?1 ORDER BY version DESC LIMIT 1",
        params![org_id],
    )
}

/// Version `version` of `org_id`, not yet validated.
pub fn version_row(
    conn: &Connection,
    org_id: &str,
    version: PolicyVersion,
) -> Result<Option<PolicyRow>> {
    row(
        conn,
        "WHERE org_id = ?1 AND version = ?2",
        params![org_id, i64::try_from(version.number()).unwrap_or(i64::MAX)],
    )
}

fn row(conn: &Connection, filter: &str, args: impl rusqlite::Params) -> Result<Option<PolicyRow>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT id, org_id, version, document, created_at, signature FROM policies {filter}"
            ),
            args,
            |row| {
                Ok(PolicyRow {
                    id: row.get(0)?,
                    org_id: row.get(1)?,
                    version: row.get(2)?,
                    document: row.get(3)?,
                    created_at: time_at(row, 4)?,
                    signature: row.get(5)?,
                })
            },
        )
        .optional()?)
}

/// Versions of `org_id` older than `before` (all when `None`), newest first, at most `limit`:
/// names and counts read out of the stored documents by SQLite, without validating each.
pub fn versions(
    conn: &mut Connection,
    org_id: &str,
    before: Option<PolicyVersion>,
    limit: u32,
) -> Result<Vec<PolicySummary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, version, json_extract(document, '$.name'),
                json_extract(document, '$.description'),
                json_array_length(document, '$.rules'),
                (SELECT COUNT(*) FROM json_each(document, '$.rules')
                  WHERE json_extract(value, '$.enabled') = 1),
                created_at, json_extract(signature, '$.keyId')
         FROM policies WHERE org_id = ?1 AND version < ?2
         ORDER BY version DESC LIMIT ?3",
    )?;
    let below = before.map_or(i64::MAX, number);
    let rows = stmt.query_map(params![org_id, below, limit], |row| {
        Ok(PolicySummary {
            id: row.get(0)?,
            version: PolicyVersion::new(unsigned_opt(row, 1)?.unwrap_or_default()),
            name: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
            description: row.get(3)?,
            rule_count: unsigned_opt(row, 4)?.unwrap_or_default(),
            enabled_count: unsigned_opt(row, 5)?.unwrap_or_default(),
            created_at: time_at(row, 6)?,
            key_id: row.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Every org with a policy, an agent, an admin token or a shadow run, sorted.
pub fn orgs(conn: &mut Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT org_id FROM policies UNION SELECT org_id FROM agents
         UNION SELECT org_id FROM tokens WHERE org_id IS NOT NULL
         UNION SELECT org_id FROM shadow_runs ORDER BY 1",
    )?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// A version as stored (SQLite integers are signed; versions never come near the limit).
fn number(version: PolicyVersion) -> i64 {
    i64::try_from(version.number()).unwrap_or(i64::MAX)
}

/// The overrides of `agent_id`.
pub fn overrides(conn: &Connection, agent_id: &str) -> Result<Option<StoredOverrides>> {
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

/// Replaces the overrides of `agent_id` of `org_id`, with their change.
pub fn set_overrides(
    conn: &mut Connection,
    org_id: &str,
    agent_id: &str,
    overrides: &StoredOverrides,
) -> Result<Pushed<()>> {
    let text = serde_json::to_string(&overrides.list)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached(
        "INSERT INTO overrides (agent_id, list, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (agent_id) DO UPDATE SET list = ?2, updated_at = ?3",
    )?
    .execute(params![agent_id, text, time_text(&overrides.updated_at)])?;
    let seq = changes::record(
        &tx,
        org_id,
        &ChangeKind::Overrides {
            agent_id: agent_id.to_owned(),
        },
        overrides.updated_at.timestamp_millis(),
    )?;
    tx.commit()?;
    Ok(Pushed::change(seq))
}
