//! Fleet-wide blocks: stored per org and address with an expiry, duplicates collapsed (the later
//! expiry wins), and the `block` / `unblock` event payloads pushed to agents.

use std::net::IpAddr;

use policy_engine::{Action, ActionRecord, PolicyDuration, PolicyVersion, Scope};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::audit::{self, NewEntry};
use crate::store::{Store, StoreError};

/// A block in force for a whole org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetBlock {
    /// Org.
    pub org_id: String,
    /// Address, normalized.
    pub ip: String,
    /// Duration as reported by the agent whose report set the expiry.
    pub duration: String,
    /// Expiry in milliseconds since the epoch; `None` is permanent.
    pub expires_ms: Option<i64>,
    /// The agent whose report set the expiry.
    pub agent_id: String,
    /// That report's rule index.
    pub rule: Option<u64>,
    /// That report's policy version.
    pub policy_version: Option<String>,
    /// Reports collapsed into this block.
    pub reports: u32,
    /// First report.
    pub created_at: String,
    /// Last change of the expiry.
    pub updated_at: String,
}

/// A fleet block reported by an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBlock {
    /// Org of the reporting agent.
    pub org_id: String,
    /// Address.
    pub ip: IpAddr,
    /// Duration of the block.
    pub duration: PolicyDuration,
    /// The reporting agent.
    pub agent_id: String,
    /// Rule index.
    pub rule: u64,
    /// Policy version.
    pub policy_version: PolicyVersion,
    /// Receipt time, milliseconds since the epoch.
    pub now_ms: i64,
}

/// What storing a reported block did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upserted {
    /// The block now in force.
    pub block: FleetBlock,
    /// Whether the report created the block or extended its expiry (then it is pushed to the
    /// other agents); `false` when an equal or later block was already in force.
    pub changed: bool,
}

/// `GET /api/blocks` entry and the `block` of a report's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockView {
    /// Address.
    pub ip: String,
    /// Duration of the report that set the expiry.
    pub duration: String,
    /// Expiry (RFC 3339, UTC); `null` when permanent.
    pub expires_at: Option<String>,
    /// Never expires.
    pub permanent: bool,
    /// Agent whose report set the expiry.
    pub agent_id: String,
    /// Its rule index.
    pub rule: Option<u64>,
    /// Its policy version.
    pub policy_version: Option<String>,
    /// Reports collapsed into this block.
    pub reports: u32,
    /// First report.
    pub created_at: String,
    /// Last extension.
    pub updated_at: String,
}

impl BlockView {
    /// The view of a stored block.
    pub fn of(block: &FleetBlock) -> Self {
        Self {
            ip: block.ip.clone(),
            duration: block.duration.clone(),
            expires_at: block.expires_ms.map(ms_to_rfc3339),
            permanent: block.expires_ms.is_none(),
            agent_id: block.agent_id.clone(),
            rule: block.rule,
            policy_version: block.policy_version.clone(),
            reports: block.reports,
            created_at: block.created_at.clone(),
            updated_at: block.updated_at.clone(),
        }
    }
}

/// The `data` of an SSE `block` event.
///
/// `action` is ready for the agent's executor: a host-scope `block_ip` for the time left
/// (whole seconds, rounded up), so every agent's block ends when the fleet block does, whatever
/// its clock says; `expiresAt` is the absolute expiry for display.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockEventData {
    /// Address.
    pub ip: String,
    /// Expiry, `null` when permanent.
    pub expires_at: Option<String>,
    /// The agent that reported it.
    pub source_agent: String,
    /// The action to execute.
    pub action: ActionRecord,
}

impl BlockEventData {
    /// The payload for `block` at `now_ms`; `None` when it has expired or is malformed.
    pub fn of(block: &FleetBlock, now_ms: i64) -> Option<Self> {
        let ip: IpAddr = block.ip.parse().ok()?;
        let duration = match block.expires_ms {
            None => PolicyDuration::Permanent,
            Some(expires) if expires > now_ms => {
                let left_ms = u64::try_from(expires - now_ms).ok()?;
                PolicyDuration::from_secs(left_ms.div_ceil(1000))
            }
            Some(_) => return None,
        };
        let version = block
            .policy_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        Some(Self {
            ip: block.ip.clone(),
            expires_at: block.expires_ms.map(ms_to_rfc3339),
            source_agent: block.agent_id.clone(),
            action: ActionRecord {
                action: Action::BlockIp {
                    ip,
                    duration,
                    scope: Scope::Host,
                },
                rule: block
                    .rule
                    .and_then(|r| usize::try_from(r).ok())
                    .unwrap_or_default(),
                policy_version: version,
                event_id: None,
            },
        })
    }
}

/// The `data` of an SSE `unblock` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnblockEventData {
    /// Address to unblock.
    pub ip: String,
    /// Who lifted it (`admin` or `admin:<org>`).
    pub by: String,
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds, UTC.
pub fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Stores a reported fleet block: a new address creates it, a later expiry extends it, an equal
/// or earlier one only counts the report. The audit entry is written in the same transaction.
pub async fn upsert(
    store: &Store,
    new: NewBlock,
    audit_entry: NewEntry,
) -> Result<Upserted, StoreError> {
    store
        .call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ip = new.ip.to_string();
            let existing = tx
                .query_row(
                    &format!("{BLOCK_COLUMNS} WHERE org_id = ?1 AND ip = ?2"),
                    params![new.org_id, ip],
                    block_row,
                )
                .optional()?
                .filter(|b| b.expires_ms.is_none_or(|e| e > new.now_ms));
            let expires_ms = new.duration.as_duration().map(|d| {
                new.now_ms
                    .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            });
            let now = ms_to_rfc3339(new.now_ms);
            let later = |old: Option<i64>| match (old, expires_ms) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(old), Some(new)) => new > old,
            };
            let upserted = match existing {
                Some(mut block) if !later(block.expires_ms) => {
                    block.reports = block.reports.saturating_add(1);
                    tx.execute(
                        "UPDATE blocks SET reports = ?3 WHERE org_id = ?1 AND ip = ?2",
                        params![new.org_id, ip, block.reports],
                    )?;
                    Upserted {
                        block,
                        changed: false,
                    }
                }
                existing => {
                    let block = FleetBlock {
                        org_id: new.org_id.clone(),
                        ip: ip.clone(),
                        duration: new.duration.to_string(),
                        expires_ms,
                        agent_id: new.agent_id.clone(),
                        rule: Some(new.rule),
                        policy_version: Some(new.policy_version.to_string()),
                        reports: existing.as_ref().map_or(1, |b| b.reports.saturating_add(1)),
                        created_at: existing
                            .as_ref()
                            .map_or_else(|| now.clone(), |b| b.created_at.clone()),
                        updated_at: now.clone(),
                    };
                    tx.execute(
                        "INSERT OR REPLACE INTO blocks (org_id, ip, duration, expires_ms,
                            agent_id, rule, policy_version, reports, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        params![
                            block.org_id,
                            block.ip,
                            block.duration,
                            block.expires_ms,
                            block.agent_id,
                            block.rule.and_then(|r| i64::try_from(r).ok()),
                            block.policy_version,
                            block.reports,
                            block.created_at,
                            block.updated_at
                        ],
                    )?;
                    Upserted {
                        block,
                        changed: true,
                    }
                }
            };
            let mut entry = audit_entry;
            if let Some(detail) = entry.detail.as_mut().and_then(|d| d.as_object_mut()) {
                detail.insert(
                    "fleet".to_owned(),
                    serde_json::json!(if upserted.changed {
                        "stored"
                    } else {
                        "duplicate"
                    }),
                );
            }
            audit::insert(&tx, &now, &entry)?;
            tx.commit()?;
            Ok(upserted)
        })
        .await
}

/// Blocks of `org` still in force at `now_ms`, by address; expired rows are deleted.
pub async fn active(
    store: &Store,
    org_id: String,
    now_ms: i64,
) -> Result<Vec<FleetBlock>, StoreError> {
    store
        .call(move |conn| {
            conn.execute(
                "DELETE FROM blocks WHERE org_id = ?1 AND expires_ms IS NOT NULL AND expires_ms <= ?2",
                params![org_id, now_ms],
            )?;
            let mut stmt =
                conn.prepare_cached(&format!("{BLOCK_COLUMNS} WHERE org_id = ?1 ORDER BY ip"))?;
            let rows = stmt.query_map(params![org_id], block_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
}

/// Lifts a block; `None` when `org` has no block in force on that address. The audit entry is
/// written in the same transaction.
pub async fn remove(
    store: &Store,
    org_id: String,
    ip: IpAddr,
    now_ms: i64,
    audit_entry: NewEntry,
) -> Result<Option<FleetBlock>, StoreError> {
    store
        .call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ip = ip.to_string();
            let existing = tx
                .query_row(
                    &format!("{BLOCK_COLUMNS} WHERE org_id = ?1 AND ip = ?2"),
                    params![org_id, ip],
                    block_row,
                )
                .optional()?;
            tx.execute(
                "DELETE FROM blocks WHERE org_id = ?1 AND ip = ?2",
                params![org_id, ip],
            )?;
            let active = existing.filter(|b| b.expires_ms.is_none_or(|e| e > now_ms));
            if active.is_some() {
                audit::insert(&tx, &ms_to_rfc3339(now_ms), &audit_entry)?;
            }
            tx.commit()?;
            Ok(active)
        })
        .await
}

const BLOCK_COLUMNS: &str = "SELECT org_id, ip, duration, expires_ms, agent_id, rule, \
                             policy_version, reports, created_at, updated_at FROM blocks";

fn block_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FleetBlock> {
    Ok(FleetBlock {
        org_id: row.get(0)?,
        ip: row.get(1)?,
        duration: row.get(2)?,
        expires_ms: row.get(3)?,
        agent_id: row.get(4)?,
        rule: row
            .get::<_, Option<i64>>(5)?
            .and_then(|r| u64::try_from(r).ok()),
        policy_version: row.get(6)?,
        reports: row.get(7)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
    })
}
