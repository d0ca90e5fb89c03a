//! The audit trail: one SQLite row per decision (agent reports, policy changes, overrides,
//! approval decisions, unblocks, notification deliveries) and the filtered, paged reads of
//! `GET /api/audit`.

use rusqlite::{Connection, params_from_iter};
use serde::Serialize;
use serde_json::Value;

use crate::store::{ReportReceipt, Store, StoreError, insert_receipt};

/// One audit entry as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEntry {
    /// Org the entry belongs to.
    pub org_id: String,
    /// The agent concerned (reporter, requester, or the target of an override).
    pub agent_id: Option<String>,
    /// Who did it: an agent id, `admin` (global admin), `admin:<org>` (org admin) or `server`.
    pub actor: String,
    /// Index of the rule that decided it.
    pub rule: Option<u64>,
    /// Policy version in force.
    pub policy_version: Option<String>,
    /// What: an action name (`block_ip`, `alert`, ...) or an admin operation (`policy_created`,
    /// `overrides_set`, `approval_approved`, `unblock`, `notify`, ...).
    pub action: String,
    /// The address concerned, normalized.
    pub ip: Option<String>,
    /// How it ended: `executed`, `failed`, `refused`, `requested`, `approved`, `denied`,
    /// `expired`, `delivered`, ...
    pub outcome: String,
    /// Anything else worth keeping (the action JSON, an error message, a channel name).
    pub detail: Option<Value>,
    /// For the entry of a report with a `reportId`: its receipt, written in the same
    /// transaction (a report already received fails it, see [`crate::store::insert_receipt`]).
    pub receipt: Option<ReportReceipt>,
}

/// One audit entry as `GET /api/audit` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Increasing id; also the paging cursor.
    pub id: i64,
    /// RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// Org.
    pub org_id: String,
    /// Agent concerned.
    pub agent_id: Option<String>,
    /// Who did it.
    pub actor: String,
    /// Rule index.
    pub rule: Option<u64>,
    /// Policy version.
    pub policy_version: Option<String>,
    /// Action or operation.
    pub action: String,
    /// Address.
    pub ip: Option<String>,
    /// Outcome.
    pub outcome: String,
    /// Extra detail.
    pub detail: Option<Value>,
}

/// The filters of `GET /api/audit`; all optional, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Org (always set by the handler from the token).
    pub org_id: String,
    /// `agent=`
    pub agent_id: Option<String>,
    /// `ip=` (normalized)
    pub ip: Option<String>,
    /// `action=`
    pub action: Option<String>,
    /// `from=` (inclusive, normalized RFC 3339)
    pub from: Option<String>,
    /// `to=` (exclusive, normalized RFC 3339)
    pub to: Option<String>,
    /// `cursor=`: only entries with a smaller id (the `nextCursor` of the previous page).
    pub before_id: Option<i64>,
    /// `limit=`: page size.
    pub limit: u32,
}

/// One page of entries, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Pass as `cursor=` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<i64>,
}

/// Writes one entry on the store thread's connection (inside a caller's transaction).
pub fn insert(conn: &Connection, time: &str, entry: &NewEntry) -> Result<i64, StoreError> {
    if let Some(receipt) = &entry.receipt {
        insert_receipt(conn, receipt)?;
    }
    let detail = entry
        .detail
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    conn.execute(
        "INSERT INTO audit (time, org_id, agent_id, actor, rule, policy_version, action, ip,
                            outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        rusqlite::params![
            time,
            entry.org_id,
            entry.agent_id,
            entry.actor,
            entry.rule.and_then(|r| i64::try_from(r).ok()),
            entry.policy_version,
            entry.action,
            entry.ip,
            entry.outcome,
            detail
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Records one entry; a failure is logged, never returned: the audit must not fail the request
/// whose effect already happened.
pub async fn record(store: &Store, entry: NewEntry) {
    let action = entry.action.clone();
    if let Err(error) = write(store, entry).await {
        tracing::error!(%error, action, "cannot write the audit entry");
    }
}

/// Writes one entry (in a transaction of its own, with its report receipt if it has one).
pub async fn write(store: &Store, entry: NewEntry) -> Result<(), StoreError> {
    let time = crate::models::now_rfc3339();
    store
        .call(move |conn| {
            let tx = conn.transaction()?;
            insert(&tx, &time, &entry)?;
            tx.commit()?;
            Ok(())
        })
        .await
}

/// One page of entries matching `filter`, newest first.
pub async fn query(store: &Store, filter: Filter) -> Result<Page, StoreError> {
    store
        .call(move |conn| {
            let mut sql = String::from(
                "SELECT id, time, org_id, agent_id, actor, rule, policy_version, action, ip,
                        outcome, detail FROM audit WHERE org_id = ?",
            );
            let mut args: Vec<rusqlite::types::Value> = vec![filter.org_id.clone().into()];
            let mut clause = |sql_part: &str, value: rusqlite::types::Value| {
                sql.push_str(sql_part);
                args.push(value);
            };
            if let Some(agent) = &filter.agent_id {
                clause(" AND agent_id = ?", agent.clone().into());
            }
            if let Some(ip) = &filter.ip {
                clause(" AND ip = ?", ip.clone().into());
            }
            if let Some(action) = &filter.action {
                clause(" AND action = ?", action.clone().into());
            }
            if let Some(from) = &filter.from {
                clause(" AND time >= ?", from.clone().into());
            }
            if let Some(to) = &filter.to {
                clause(" AND time < ?", to.clone().into());
            }
            if let Some(before) = filter.before_id {
                clause(" AND id < ?", before.into());
            }
            // One more than the page tells whether there is a next page.
            clause(
                " ORDER BY id DESC LIMIT ?",
                i64::from(filter.limit + 1).into(),
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(args.iter()), |row| {
                Ok((
                    Entry {
                        id: row.get(0)?,
                        time: row.get(1)?,
                        org_id: row.get(2)?,
                        agent_id: row.get(3)?,
                        actor: row.get(4)?,
                        rule: row
                            .get::<_, Option<i64>>(5)?
                            .and_then(|r| u64::try_from(r).ok()),
                        policy_version: row.get(6)?,
                        action: row.get(7)?,
                        ip: row.get(8)?,
                        outcome: row.get(9)?,
                        detail: None,
                    },
                    row.get::<_, Option<String>>(10)?,
                ))
            })?;
            let mut entries = Vec::new();
            for row in rows {
                let (mut entry, detail) = row?;
                entry.detail = detail.map(|d| serde_json::from_str(&d)).transpose()?;
                entries.push(entry);
            }
            let limit = usize::try_from(filter.limit).unwrap_or(usize::MAX);
            let more = entries.len() > limit;
            entries.truncate(limit);
            let next_cursor = if more {
                entries.last().map(|e| e.id)
            } else {
                None
            };
            Ok(Page {
                entries,
                next_cursor,
            })
        })
        .await
}
