//! Approval requests: stored with an expiry, listed, approved or denied by an admin, expired by
//! the clock, and marked executed when the agent reports the outcome. Every transition writes
//! its audit entry in the same transaction.

use chrono::{DateTime, Utc};
use policy_engine::ActionRecord;
use policy_engine::protocol::{ApprovalEvent, ApprovalStatus, ApprovalView, time};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::audit::{self, NewEntry};
use crate::blocks::ms_to_rfc3339;
use crate::store::{Store, StoreError};

/// Where an approval request stands (the protocol's [`ApprovalStatus`]).
pub type Status = ApprovalStatus;

/// A stored approval request.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    /// `apr_...`
    pub id: String,
    /// Org.
    pub org_id: String,
    /// The requesting agent.
    pub agent_id: String,
    /// The action awaiting approval, with the rule, version and event of the request.
    pub request: ActionRecord,
    /// Where it stands.
    pub status: Status,
    /// Received, ms since the epoch.
    pub created_ms: i64,
    /// Deadline to approve and execute, ms since the epoch.
    pub expires_ms: i64,
    /// Decided (or expired, or executed), ms since the epoch.
    pub decided_ms: Option<i64>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// The admin's reason, if given.
    pub reason: Option<String>,
}

/// The view of a stored approval (`GET /api/approvals`, the decision endpoints, a report's
/// answer).
pub fn view(approval: &Approval) -> ApprovalView {
    ApprovalView {
        id: approval.id.clone(),
        agent_id: approval.agent_id.clone(),
        status: approval.status,
        action: approval.request.clone(),
        created_at: at(approval.created_ms),
        expires_at: at(approval.expires_ms),
        decided_at: approval.decided_ms.map(at),
        decided_by: approval.decided_by.clone(),
        reason: approval.reason.clone(),
    }
}

/// The `approval` event of an approved request: execute it once, before its expiry.
pub fn event(approval: &Approval) -> ApprovalEvent {
    ApprovalEvent {
        approval_id: approval.id.clone(),
        expires_at: at(approval.expires_ms),
        action: approval.request.clone(),
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    time::from_millis(ms).unwrap_or_default()
}

/// Why a decision was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum DecideError {
    /// No such approval in a visible org.
    NotFound,
    /// It belongs to another org.
    OtherOrg(String),
    /// Already decided, expired or executed.
    NotPending(Box<Approval>),
}

/// Stores a new request with its audit entry.
pub async fn insert(store: &Store, approval: Approval, entry: NewEntry) -> Result<(), StoreError> {
    store
        .call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO approvals (id, org_id, agent_id, request, status, created_ms,
                                        expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    approval.id,
                    approval.org_id,
                    approval.agent_id,
                    serde_json::to_string(&approval.request)?,
                    approval.status.as_str(),
                    approval.created_ms,
                    approval.expires_ms
                ],
            )?;
            audit::insert(&tx, &ms_to_rfc3339(approval.created_ms), &entry)?;
            tx.commit()?;
            Ok(())
        })
        .await
}

/// Marks pending (and approved but never executed) requests past their expiry as expired, with
/// an audit entry each; returns how many.
pub async fn expire(store: &Store, now_ms: i64) -> Result<usize, StoreError> {
    store
        .call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stale: Vec<Approval> = {
                let mut stmt = tx.prepare(&format!(
                    "{APPROVAL_COLUMNS} WHERE status IN ('pending', 'approved') AND expires_ms <= ?1"
                ))?;
                let rows = stmt.query_map(params![now_ms], approval_row)?;
                rows.collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .flatten()
                    .collect()
            };
            for approval in &stale {
                tx.execute(
                    "UPDATE approvals SET status = 'expired', decided_ms = ?2,
                        decided_by = COALESCE(decided_by, 'server') WHERE id = ?1",
                    params![approval.id, now_ms],
                )?;
                let mut entry = entry_for(approval, "server", "approval_expired", "expired");
                entry.detail = Some(serde_json::json!({
                    "approvalId": approval.id,
                    "was": approval.status.as_str(),
                }));
                audit::insert(&tx, &ms_to_rfc3339(now_ms), &entry)?;
            }
            tx.commit()?;
            Ok(stale.len())
        })
        .await
}

/// Approvals of `org`, newest first, optionally only those with `status`.
pub async fn list(
    store: &Store,
    org_id: String,
    status: Option<Status>,
    limit: u32,
) -> Result<Vec<Approval>, StoreError> {
    store
        .call(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{APPROVAL_COLUMNS} WHERE org_id = ?1 AND (?2 IS NULL OR status = ?2)
                 ORDER BY created_ms DESC, id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![org_id, status.map(Status::as_str), limit],
                approval_row,
            )?;
            Ok(rows
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect())
        })
        .await
}

/// Approves or denies a pending request. `org` confines an org admin (`None`: the global
/// admin, any org).
pub async fn decide(
    store: &Store,
    id: String,
    org: Option<String>,
    approve: bool,
    by: String,
    reason: Option<String>,
    now_ms: i64,
) -> Result<Result<Approval, DecideError>, StoreError> {
    store
        .call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let found = tx
                .query_row(
                    &format!("{APPROVAL_COLUMNS} WHERE id = ?1"),
                    params![id],
                    approval_row,
                )
                .optional()?
                .flatten();
            let Some(mut approval) = found else {
                return Ok(Err(DecideError::NotFound));
            };
            if let Some(org) = &org {
                if *org != approval.org_id {
                    return Ok(Err(DecideError::OtherOrg(approval.org_id)));
                }
            }
            if approval.status == Status::Pending && approval.expires_ms <= now_ms {
                // Expired before anyone swept it: record that, then refuse.
                tx.execute(
                    "UPDATE approvals SET status = 'expired', decided_ms = ?2,
                        decided_by = 'server' WHERE id = ?1",
                    params![approval.id, now_ms],
                )?;
                let entry = entry_for(&approval, "server", "approval_expired", "expired");
                audit::insert(&tx, &ms_to_rfc3339(now_ms), &entry)?;
                tx.commit()?;
                approval.status = Status::Expired;
                approval.decided_ms = Some(now_ms);
                approval.decided_by = Some("server".to_owned());
                return Ok(Err(DecideError::NotPending(Box::new(approval))));
            }
            if approval.status != Status::Pending {
                return Ok(Err(DecideError::NotPending(Box::new(approval))));
            }
            let status = if approve {
                Status::Approved
            } else {
                Status::Denied
            };
            tx.execute(
                "UPDATE approvals SET status = ?2, decided_ms = ?3, decided_by = ?4, reason = ?5
                 WHERE id = ?1",
                params![approval.id, status.as_str(), now_ms, by, reason],
            )?;
            approval.status = status;
            approval.decided_ms = Some(now_ms);
            approval.decided_by = Some(by.clone());
            approval.reason = reason;
            let operation = if approve {
                "approval_approved"
            } else {
                "approval_denied"
            };
            let mut entry = entry_for(&approval, &by, operation, status.as_str());
            entry.detail = Some(serde_json::json!({
                "approvalId": approval.id,
                "request": approval.request,
                "reason": approval.reason,
            }));
            audit::insert(&tx, &ms_to_rfc3339(now_ms), &entry)?;
            tx.commit()?;
            Ok(Ok(approval))
        })
        .await
}

/// Records the agent's outcome of an approved action: `executed` or `failed`, with the report's
/// audit entry in the same transaction. Only the requesting agent's report of an `approved`
/// request changes the approval; returns whether it did.
pub async fn finish(
    store: &Store,
    id: String,
    agent_id: String,
    executed: bool,
    now_ms: i64,
    entry: NewEntry,
) -> Result<bool, StoreError> {
    store
        .call(move |conn| {
            let status = if executed {
                Status::Executed
            } else {
                Status::Failed
            };
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx.execute(
                "UPDATE approvals SET status = ?3, decided_ms = ?4
                 WHERE id = ?1 AND agent_id = ?2 AND status = 'approved'",
                params![id, agent_id, status.as_str(), now_ms],
            )?;
            audit::insert(&tx, &ms_to_rfc3339(now_ms), &entry)?;
            tx.commit()?;
            Ok(changed == 1)
        })
        .await
}

/// Approved requests of `agent` not yet executed and not expired: re-sent when its stream
/// connects (the agent ignores ids it already executed).
pub async fn approved_for(
    store: &Store,
    agent_id: String,
    now_ms: i64,
) -> Result<Vec<Approval>, StoreError> {
    store
        .call(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{APPROVAL_COLUMNS} WHERE agent_id = ?1 AND status = 'approved' AND expires_ms > ?2
                 ORDER BY created_ms"
            ))?;
            let rows = stmt.query_map(params![agent_id, now_ms], approval_row)?;
            Ok(rows
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect())
        })
        .await
}

fn entry_for(approval: &Approval, actor: &str, action: &str, outcome: &str) -> NewEntry {
    NewEntry {
        org_id: approval.org_id.clone(),
        agent_id: Some(approval.agent_id.clone()),
        actor: actor.to_owned(),
        rule: u64::try_from(approval.request.rule).ok(),
        policy_version: Some(approval.request.policy_version.to_string()),
        action: action.to_owned(),
        ip: target_ip(&approval.request),
        outcome: outcome.to_owned(),
        detail: Some(serde_json::json!({ "approvalId": approval.id })),
        receipt: None,
    }
}

/// The address an action is about, if any.
pub fn target_ip(record: &ActionRecord) -> Option<String> {
    match &record.action {
        policy_engine::Action::BlockIp { ip, .. } => Some(ip.to_string()),
        policy_engine::Action::ApprovalRequest { request } => match request.as_ref() {
            policy_engine::Action::BlockIp { ip, .. } => Some(ip.to_string()),
            _ => None,
        },
        _ => None,
    }
}

const APPROVAL_COLUMNS: &str = "SELECT id, org_id, agent_id, request, status, created_ms, \
                                expires_ms, decided_ms, decided_by, reason FROM approvals";

/// A row, or `None` (logged) when its request or status no longer parses.
fn approval_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Approval>> {
    let id: String = row.get(0)?;
    let request: String = row.get(3)?;
    let status: String = row.get(4)?;
    let (Ok(request), Some(status)) = (
        serde_json::from_str::<ActionRecord>(&request),
        Status::parse(&status),
    ) else {
        tracing::warn!(approval = %id, "skipping a malformed approval row");
        return Ok(None);
    };
    Ok(Some(Approval {
        id,
        org_id: row.get(1)?,
        agent_id: row.get(2)?,
        request,
        status,
        created_ms: row.get(5)?,
        expires_ms: row.get(6)?,
        decided_ms: row.get(7)?,
        decided_by: row.get(8)?,
        reason: row.get(9)?,
    }))
}
