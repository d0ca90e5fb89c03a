//! `approvals`: approval requests and their transitions, each with its audit entry in the same
//! transaction.

use policy_engine::ActionRecord;
use policy_engine::protocol::ApprovalStatus;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::Result;
use super::audit;
use super::changes;
use crate::clock;
use crate::store::records::{Decided, decide as apply_decision};
use crate::store::{Approval, ChangeKind, DecideError, Decision, Finish, NewEntry, Pushed};

/// Stores a new request with its audit entry.
pub fn insert(conn: &mut Connection, approval: &Approval, entry: &NewEntry) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached(
        "INSERT INTO approvals (id, org_id, agent_id, request, status, created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        approval.id,
        approval.org_id,
        approval.agent_id,
        serde_json::to_string(&approval.request)?,
        approval.status.as_str(),
        approval.created_ms,
        approval.expires_ms
    ])?;
    audit::insert(&tx, clock::from_ms(approval.created_ms), entry)?;
    tx.commit()?;
    Ok(())
}

/// Pending requests of `agent_id`.
pub fn pending_count(conn: &mut Connection, agent_id: &str) -> Result<usize> {
    let count: i64 = conn.query_row(
        "SELECT COUNT(*) FROM approvals WHERE agent_id = ?1 AND status = 'pending'",
        params![agent_id],
        |row| row.get(0),
    )?;
    Ok(usize::try_from(count).unwrap_or(usize::MAX))
}

/// Marks pending and approved-but-unexecuted requests past their expiry `expired`, with an
/// audit entry each.
pub fn expire(conn: &mut Connection, now_ms: i64) -> Result<usize> {
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
        tx.prepare_cached(
            "UPDATE approvals SET status = 'expired', decided_ms = COALESCE(decided_ms, ?2),
                decided_by = COALESCE(decided_by, 'server') WHERE id = ?1",
        )?
        .execute(params![approval.id, now_ms])?;
        let mut entry = entry_for(approval, "server", "approval_expired", "expired");
        entry.detail = Some(serde_json::json!({
            "approvalId": approval.id,
            "was": approval.status.as_str(),
        }));
        audit::insert(&tx, clock::from_ms(now_ms), &entry)?;
    }
    tx.commit()?;
    Ok(stale.len())
}

/// Approvals of `org_id`, newest first, optionally only those with `status`.
pub fn list(
    conn: &mut Connection,
    org_id: &str,
    status: Option<ApprovalStatus>,
    limit: u32,
) -> Result<Vec<Approval>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{APPROVAL_COLUMNS} WHERE org_id = ?1 AND (?2 IS NULL OR status = ?2)
         ORDER BY created_ms DESC, id LIMIT ?3"
    ))?;
    let rows = stmt.query_map(
        params![org_id, status.map(ApprovalStatus::as_str), limit],
        approval_row,
    )?;
    Ok(rows
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// One request by id.
pub fn one(conn: &Connection, id: &str) -> Result<Option<Approval>> {
    Ok(conn
        .query_row(
            &format!("{APPROVAL_COLUMNS} WHERE id = ?1"),
            params![id],
            approval_row,
        )
        .optional()?
        .flatten())
}

/// Applies an admin's decision with its audit entry (and, for an approval, its change).
pub fn decide(
    conn: &mut Connection,
    decision: &Decision,
) -> Result<std::result::Result<Pushed<Approval>, DecideError>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = tx
        .query_row(
            &format!("{APPROVAL_COLUMNS} WHERE id = ?1"),
            params![decision.id],
            approval_row,
        )
        .optional()?
        .flatten();
    let Some(approval) = found else {
        return Ok(Err(DecideError::NotFound));
    };
    let at = clock::from_ms(decision.now_ms);
    match apply_decision(approval, decision) {
        Decided::Refused(refused) => Ok(Err(refused)),
        Decided::Expired(approval) => {
            // Expired before anyone swept it: record that, then refuse.
            tx.prepare_cached(
                "UPDATE approvals SET status = 'expired', decided_ms = ?2, decided_by = 'server'
                 WHERE id = ?1",
            )?
            .execute(params![approval.id, decision.now_ms])?;
            let entry = entry_for(&approval, "server", "approval_expired", "expired");
            audit::insert(&tx, at, &entry)?;
            tx.commit()?;
            Ok(Err(DecideError::NotPending(Box::new(approval))))
        }
        Decided::Changed(approval) => {
            tx.prepare_cached(
                "UPDATE approvals SET status = ?2, decided_ms = ?3, decided_by = ?4, reason = ?5
                 WHERE id = ?1",
            )?
            .execute(params![
                approval.id,
                approval.status.as_str(),
                approval.decided_ms,
                approval.decided_by,
                approval.reason
            ])?;
            let operation = if decision.approve {
                "approval_approved"
            } else {
                "approval_denied"
            };
            let mut entry = entry_for(&approval, &decision.by, operation, approval.status.as_str());
            entry.detail = Some(serde_json::json!({
                "approvalId": approval.id,
                "request": approval.request,
                "reason": approval.reason,
            }));
            audit::insert(&tx, at, &entry)?;
            let seq = if decision.approve {
                let kind = ChangeKind::Approved {
                    approval_id: approval.id.clone(),
                    agent_id: approval.agent_id.clone(),
                };
                Some(changes::record(
                    &tx,
                    &approval.org_id,
                    &kind,
                    decision.now_ms,
                )?)
            } else {
                None
            };
            tx.commit()?;
            Ok(Ok(Pushed {
                value: approval,
                seq,
            }))
        }
    }
}

/// Records the agent's outcome of an approved action with the report's audit entry; only the
/// requester's report of an `approved` request not past its expiry changes the approval (its
/// `decided_ms` stays the admin's decision). Anything else writes nothing: `false`.
pub fn finish(conn: &mut Connection, finish: &Finish, entry: &NewEntry) -> Result<bool> {
    let status = if finish.executed {
        ApprovalStatus::Executed
    } else {
        ApprovalStatus::Failed
    };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let changed = tx
        .prepare_cached(
            "UPDATE approvals SET status = ?3
             WHERE id = ?1 AND agent_id = ?2 AND status = 'approved' AND expires_ms > ?4",
        )?
        .execute(params![
            finish.id,
            finish.agent_id,
            status.as_str(),
            finish.now_ms
        ])?;
    if changed != 1 {
        return Ok(false);
    }
    audit::insert(&tx, clock::from_ms(finish.now_ms), entry)?;
    tx.commit()?;
    Ok(true)
}

/// Approved requests of `agent_id` not yet executed and not expired.
pub fn approved_for(conn: &Connection, agent_id: &str, now_ms: i64) -> Result<Vec<Approval>> {
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
}

fn entry_for(approval: &Approval, actor: &str, action: &str, outcome: &str) -> NewEntry {
    NewEntry {
        org_id: approval.org_id.clone(),
        agent_id: Some(approval.agent_id.clone()),
        actor: actor.to_owned(),
        rule: u64::try_from(approval.request.rule).ok(),
        policy_version: Some(approval.request.policy_version),
        action: action.to_owned(),
        ip: crate::store::records::target_ip(&approval.request),
        outcome: outcome.to_owned(),
        detail: Some(serde_json::json!({ "approvalId": approval.id })),
        receipt: None,
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
        ApprovalStatus::parse(&status),
    ) else {
        tracing::warn!(approval = id.as_str(), "skipping a malformed approval row");
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
