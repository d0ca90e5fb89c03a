//! Fleet-wide blocks: stored per org and address with an expiry, duplicates collapsed (the later
//! expiry wins), and the `block` / `unblock` event payloads pushed to agents.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use policy_engine::protocol::{BlockEvent, BlockView, time};
use policy_engine::{Action, ActionRecord, PolicyDuration, PolicyVersion, Scope};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::audit::{self, NewEntry};
use crate::store::{Store, StoreError};

/// A block in force for a whole org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetBlock {
    /// Org.
    pub org_id: String,
    /// Address.
    pub ip: IpAddr,
    /// Duration as reported by the agent whose report set the expiry.
    pub duration: PolicyDuration,
    /// Expiry in milliseconds since the epoch; `None` is permanent.
    pub expires_ms: Option<i64>,
    /// The agent whose report set the expiry.
    pub agent_id: String,
    /// That report's rule index.
    pub rule: Option<u64>,
    /// That report's policy version.
    pub policy_version: Option<PolicyVersion>,
    /// Reports collapsed into this block.
    pub reports: u32,
    /// First report.
    pub created_at: DateTime<Utc>,
    /// Last change of the expiry.
    pub updated_at: DateTime<Utc>,
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

/// The view of a stored block (`GET /api/blocks`, the `block` of a report's answer).
pub fn view(block: &FleetBlock) -> BlockView {
    BlockView {
        ip: block.ip,
        duration: block.duration,
        expires_at: block.expires_ms.and_then(time::from_millis),
        permanent: block.expires_ms.is_none(),
        agent_id: block.agent_id.clone(),
        rule: block.rule,
        policy_version: block.policy_version,
        reports: block.reports,
        created_at: block.created_at,
        updated_at: block.updated_at,
    }
}

/// The `block` event for `block` at `now_ms`: a host-scope `block_ip` for the time left (whole
/// seconds, rounded up); `None` when it has expired.
pub fn event(block: &FleetBlock, now_ms: i64) -> Option<BlockEvent> {
    let duration = match block.expires_ms {
        None => PolicyDuration::Permanent,
        Some(expires) if expires > now_ms => {
            let left_ms = u64::try_from(expires - now_ms).ok()?;
            PolicyDuration::from_secs(left_ms.div_ceil(1000))
        }
        Some(_) => return None,
    };
    Some(BlockEvent {
        ip: block.ip,
        expires_at: block.expires_ms.and_then(time::from_millis),
        source_agent: block.agent_id.clone(),
        action: ActionRecord {
            action: Action::BlockIp {
                ip: block.ip,
                duration,
                scope: Scope::Host,
            },
            rule: block
                .rule
                .and_then(|r| usize::try_from(r).ok())
                .unwrap_or_default(),
            policy_version: block.policy_version.unwrap_or_default(),
            event_id: None,
        },
    })
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
            let now = time::from_millis(new.now_ms).unwrap_or_default();
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
                        ip: new.ip,
                        duration: new.duration,
                        expires_ms,
                        agent_id: new.agent_id.clone(),
                        rule: Some(new.rule),
                        policy_version: Some(new.policy_version),
                        reports: existing.as_ref().map_or(1, |b| b.reports.saturating_add(1)),
                        created_at: existing.as_ref().map_or(now, |b| b.created_at),
                        updated_at: now,
                    };
                    tx.execute(
                        "INSERT OR REPLACE INTO blocks (org_id, ip, duration, expires_ms,
                            agent_id, rule, policy_version, reports, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        params![
                            block.org_id,
                            ip,
                            block.duration.to_string(),
                            block.expires_ms,
                            block.agent_id,
                            block.rule.and_then(|r| i64::try_from(r).ok()),
                            block.policy_version.map(|v| v.to_string()),
                            block.reports,
                            time::format(&block.created_at),
                            time::format(&block.updated_at)
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
            audit::insert(&tx, &time::format(&now), &entry)?;
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
        ip: parsed(row, 1)?,
        duration: parsed(row, 2)?,
        expires_ms: row.get(3)?,
        agent_id: row.get(4)?,
        rule: row
            .get::<_, Option<i64>>(5)?
            .and_then(|r| u64::try_from(r).ok()),
        policy_version: row
            .get::<_, Option<String>>(6)?
            .map(|v| v.parse().map_err(|e| conversion(6, e)))
            .transpose()?,
        reports: row.get(7)?,
        created_at: time_column(row, 8)?,
        updated_at: time_column(row, 9)?,
    })
}

/// A text column parsed with `FromStr`; a value that does not parse is a conversion error.
fn parsed<T>(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    row.get::<_, String>(index)?
        .parse()
        .map_err(|e| conversion(index, e))
}

/// A stored RFC 3339 time.
pub(crate) fn time_column(
    row: &rusqlite::Row<'_>,
    index: usize,
) -> rusqlite::Result<DateTime<Utc>> {
    time::parse(&row.get::<_, String>(index)?).map_err(|e| conversion(index, e))
}

fn conversion(
    index: usize,
    error: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(error))
}
