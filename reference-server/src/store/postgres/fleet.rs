//! `blocks` (fleet blocks per org and address) and `approvals` (requests and their
//! transitions), each change with its audit entry (and, when it goes to the streams, its
//! numbered change) in the caller's transaction.

use std::net::IpAddr;

use deadpool_postgres::GenericClient;
use policy_engine::ActionRecord;
use policy_engine::policy::Limit;
use policy_engine::protocol::ApprovalStatus;
use tokio_postgres::Row;

use super::Result;
use super::audit;
use super::policies::{lock_org, record_change};
use super::rows::{get, parsed, parsed_opt, stored, unsigned_opt};
use crate::clock;
use crate::store::records::{Decided, decide as apply_decision, merge_block, target_ip};
use crate::store::{
    Approval, ChangeKind, DecideError, Decision, Finish, FleetBlock, NewBlock, NewEntry, Upserted,
};

/// Merges a reported block into the one in force and writes the report's audit entry (noting
/// `detail.fleet`), and its change when it is new or later. Holds the org's lock, so reports
/// of one address on two replicas merge one after the other.
pub async fn upsert_block(
    tx: &impl GenericClient,
    new: &NewBlock,
    mut entry: NewEntry,
) -> Result<(Upserted, Option<u64>)> {
    lock_org(tx, &new.org_id).await?;
    let existing = block(tx, &new.org_id, new.ip).await?;
    let upserted = merge_block(existing, new);
    let block = &upserted.block;
    let ip = new.ip.to_string();
    let reports = i64::from(block.reports);
    if upserted.changed {
        let statement = tx
            .prepare_cached(
                "INSERT INTO blocks (org_id, ip, duration, expires_ms, agent_id, rule,
                    policy_version, reports, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (org_id, ip) DO UPDATE SET duration = $3, expires_ms = $4,
                    agent_id = $5, rule = $6, policy_version = $7, reports = $8,
                    created_at = $9, updated_at = $10",
            )
            .await?;
        tx.execute(
            &statement,
            &[
                &block.org_id,
                &ip,
                &block.duration.to_string(),
                &block.expires_ms,
                &block.agent_id,
                &block.rule.and_then(|r| i64::try_from(r).ok()),
                &block.policy_version.map(|v| v.to_string()),
                &reports,
                &stored(&block.created_at),
                &stored(&block.updated_at),
            ],
        )
        .await?;
    } else {
        let statement = tx
            .prepare_cached("UPDATE blocks SET reports = $3 WHERE org_id = $1 AND ip = $2")
            .await?;
        tx.execute(&statement, &[&block.org_id, &ip, &reports])
            .await?;
    }
    if let Some(detail) = entry.detail.as_mut().and_then(|d| d.as_object_mut()) {
        let fleet = if upserted.changed {
            "stored"
        } else {
            "duplicate"
        };
        detail.insert("fleet".to_owned(), serde_json::json!(fleet));
    }
    audit::insert(tx, clock::from_ms(new.now_ms), &entry).await?;
    let seq = if upserted.changed {
        let kind = ChangeKind::Block {
            ip: new.ip,
            reporter: new.agent_id.clone(),
        };
        Some(record_change(tx, &new.org_id, &kind, new.now_ms).await?)
    } else {
        None
    };
    Ok((upserted, seq))
}

/// The block on `ip` of `org_id`, in force or not.
pub async fn block(
    client: &impl GenericClient,
    org_id: &str,
    ip: IpAddr,
) -> Result<Option<FleetBlock>> {
    let statement = client
        .prepare_cached(&format!("{BLOCK_COLUMNS} WHERE org_id = $1 AND ip = $2"))
        .await?;
    client
        .query_opt(&statement, &[&org_id, &ip.to_string()])
        .await?
        .map(|row| block_row(&row))
        .transpose()
}

/// Deletes the blocks of `org_id` expired at `now_ms`.
pub async fn delete_expired_blocks(
    client: &impl GenericClient,
    org_id: &str,
    now_ms: i64,
) -> Result<()> {
    let statement = client
        .prepare_cached(
            "DELETE FROM blocks WHERE org_id = $1 AND expires_ms IS NOT NULL AND expires_ms <= $2",
        )
        .await?;
    client.execute(&statement, &[&org_id, &now_ms]).await?;
    Ok(())
}

/// Blocks of `org_id` in force at `now_ms`, by address.
pub async fn blocks_in_force(
    client: &impl GenericClient,
    org_id: &str,
    now_ms: i64,
) -> Result<Vec<FleetBlock>> {
    let statement = client
        .prepare_cached(&format!(
            "{BLOCK_COLUMNS} WHERE org_id = $1 AND (expires_ms IS NULL OR expires_ms > $2)
             ORDER BY ip"
        ))
        .await?;
    client
        .query(&statement, &[&org_id, &now_ms])
        .await?
        .iter()
        .map(block_row)
        .collect()
}

/// Lifts a block; `None` when `org_id` has no block in force on `ip`. The audit entry and the
/// change (lifted by `entry.actor`) are written in the caller's transaction.
pub async fn remove_block(
    tx: &impl GenericClient,
    org_id: &str,
    ip: IpAddr,
    now_ms: i64,
    entry: &NewEntry,
) -> Result<(Option<FleetBlock>, Option<u64>)> {
    lock_org(tx, org_id).await?;
    let existing = block(tx, org_id, ip).await?;
    let statement = tx
        .prepare_cached("DELETE FROM blocks WHERE org_id = $1 AND ip = $2")
        .await?;
    tx.execute(&statement, &[&org_id, &ip.to_string()]).await?;
    let active = existing.filter(|b| b.in_force(now_ms));
    let mut seq = None;
    if active.is_some() {
        audit::insert(tx, clock::from_ms(now_ms), entry).await?;
        let kind = ChangeKind::Unblock {
            ip,
            by: entry.actor.clone(),
        };
        seq = Some(record_change(tx, org_id, &kind, now_ms).await?);
    }
    Ok((active, seq))
}

/// Stores a new request with its audit entry.
pub async fn insert_approval(
    tx: &impl GenericClient,
    approval: &Approval,
    entry: &NewEntry,
) -> Result<()> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO approvals (id, org_id, agent_id, request, status, created_ms, expires_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &approval.id,
            &approval.org_id,
            &approval.agent_id,
            &serde_json::to_string(&approval.request)?,
            &approval.status.as_str(),
            &approval.created_ms,
            &approval.expires_ms,
        ],
    )
    .await?;
    audit::insert(tx, clock::from_ms(approval.created_ms), entry).await?;
    Ok(())
}

/// Marks pending and approved-but-unexecuted requests past their expiry `expired`, with an
/// audit entry each. Rows another replica's sweep (or a decision) holds are skipped: that one
/// expires them, so each expires once.
pub async fn expire(tx: &impl GenericClient, now_ms: i64) -> Result<usize> {
    let statement = tx
        .prepare_cached(&format!(
            "{APPROVAL_COLUMNS} WHERE status IN ('pending', 'approved') AND expires_ms <= $1
             ORDER BY expires_ms LIMIT 1000 FOR UPDATE SKIP LOCKED"
        ))
        .await?;
    let rows = tx.query(&statement, &[&now_ms]).await?;
    let update = tx
        .prepare_cached(
            "UPDATE approvals SET status = 'expired', decided_ms = COALESCE(decided_ms, $2),
                decided_by = COALESCE(decided_by, 'server') WHERE id = $1",
        )
        .await?;
    let mut expired = 0;
    for row in &rows {
        let Some(approval) = approval_row(row)? else {
            continue;
        };
        tx.execute(&update, &[&approval.id, &now_ms]).await?;
        let mut entry = entry_for(&approval, "server", "approval_expired", "expired");
        entry.detail = Some(serde_json::json!({
            "approvalId": approval.id,
            "was": approval.status.as_str(),
        }));
        audit::insert(tx, clock::from_ms(now_ms), &entry).await?;
        expired += 1;
    }
    Ok(expired)
}

/// One request by id.
pub async fn approval(client: &impl GenericClient, id: &str) -> Result<Option<Approval>> {
    let statement = client
        .prepare_cached(&format!("{APPROVAL_COLUMNS} WHERE id = $1"))
        .await?;
    match client.query_opt(&statement, &[&id]).await? {
        Some(row) => approval_row(&row),
        None => Ok(None),
    }
}

/// Approvals of `org_id`, newest first, optionally only those with `status`.
pub async fn approvals(
    client: &impl GenericClient,
    org_id: &str,
    status: Option<ApprovalStatus>,
    limit: u32,
) -> Result<Vec<Approval>> {
    let statement = client
        .prepare_cached(&format!(
            "{APPROVAL_COLUMNS} WHERE org_id = $1 AND ($2::text IS NULL OR status = $2)
             ORDER BY created_ms DESC, id LIMIT $3"
        ))
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &org_id,
                &status.map(ApprovalStatus::as_str),
                &i64::from(limit),
            ],
        )
        .await?;
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        list.extend(approval_row(row)?);
    }
    Ok(list)
}

/// Applies an admin's decision with its audit entry (and, for an approval, its change). The
/// request's row stays locked until the transaction ends, so a sweep or another decision on
/// another replica waits and then sees it decided.
pub async fn decide(
    tx: &impl GenericClient,
    decision: &Decision,
) -> Result<std::result::Result<(Approval, Option<u64>), DecideError>> {
    let statement = tx
        .prepare_cached(&format!("{APPROVAL_COLUMNS} WHERE id = $1 FOR UPDATE"))
        .await?;
    let found = match tx.query_opt(&statement, &[&decision.id]).await? {
        Some(row) => approval_row(&row)?,
        None => None,
    };
    let Some(approval) = found else {
        return Ok(Err(DecideError::NotFound));
    };
    let at = clock::from_ms(decision.now_ms);
    match apply_decision(approval, decision) {
        Decided::Refused(refused) => Ok(Err(refused)),
        Decided::Expired(approval) => {
            // Expired before anyone swept it: record that, then refuse.
            let statement = tx
                .prepare_cached(
                    "UPDATE approvals SET status = 'expired', decided_ms = $2,
                        decided_by = 'server' WHERE id = $1",
                )
                .await?;
            tx.execute(&statement, &[&approval.id, &decision.now_ms])
                .await?;
            let entry = entry_for(&approval, "server", "approval_expired", "expired");
            audit::insert(tx, at, &entry).await?;
            Ok(Err(DecideError::NotPending(Box::new(approval))))
        }
        Decided::Changed(approval) => {
            let statement = tx
                .prepare_cached(
                    "UPDATE approvals SET status = $2, decided_ms = $3, decided_by = $4,
                        reason = $5 WHERE id = $1",
                )
                .await?;
            tx.execute(
                &statement,
                &[
                    &approval.id,
                    &approval.status.as_str(),
                    &approval.decided_ms,
                    &approval.decided_by,
                    &approval.reason,
                ],
            )
            .await?;
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
            audit::insert(tx, at, &entry).await?;
            let seq = if decision.approve {
                lock_org(tx, &approval.org_id).await?;
                let kind = ChangeKind::Approved {
                    approval_id: approval.id.clone(),
                    agent_id: approval.agent_id.clone(),
                };
                Some(record_change(tx, &approval.org_id, &kind, decision.now_ms).await?)
            } else {
                None
            };
            Ok(Ok((approval, seq)))
        }
    }
}

/// Records the agent's outcome of an approved action with the report's audit entry; only the
/// requester's report of an `approved` request not past its expiry changes the approval (its
/// `decided_ms` stays the admin's decision). Anything else writes nothing: `false` (the
/// caller rolls back).
pub async fn finish(tx: &impl GenericClient, finish: &Finish, entry: &NewEntry) -> Result<bool> {
    let status = if finish.executed {
        ApprovalStatus::Executed
    } else {
        ApprovalStatus::Failed
    };
    let statement = tx
        .prepare_cached(
            "UPDATE approvals SET status = $3
             WHERE id = $1 AND agent_id = $2 AND status = 'approved' AND expires_ms > $4",
        )
        .await?;
    let changed = tx
        .execute(
            &statement,
            &[
                &finish.id,
                &finish.agent_id,
                &status.as_str(),
                &finish.now_ms,
            ],
        )
        .await?;
    if changed != 1 {
        return Ok(false);
    }
    audit::insert(tx, clock::from_ms(finish.now_ms), entry).await?;
    Ok(true)
}

/// Approved requests of `agent_id` not yet executed and not expired.
pub async fn approved_for(
    client: &impl GenericClient,
    agent_id: &str,
    now_ms: i64,
) -> Result<Vec<Approval>> {
    let statement = client
        .prepare_cached(&format!(
            "{APPROVAL_COLUMNS} WHERE agent_id = $1 AND status = 'approved' AND expires_ms > $2
             ORDER BY created_ms"
        ))
        .await?;
    let rows = client.query(&statement, &[&agent_id, &now_ms]).await?;
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        list.extend(approval_row(row)?);
    }
    Ok(list)
}

fn entry_for(approval: &Approval, actor: &str, action: &str, outcome: &str) -> NewEntry {
    NewEntry {
        org_id: approval.org_id.clone(),
        agent_id: Some(approval.agent_id.clone()),
        actor: actor.to_owned(),
        rule: u64::try_from(approval.request.rule).ok(),
        policy_version: Some(approval.request.policy_version),
        action: action.to_owned(),
        ip: target_ip(&approval.request),
        outcome: outcome.to_owned(),
        detail: Some(serde_json::json!({ "approvalId": approval.id })),
        receipt: None,
    }
}

const BLOCK_COLUMNS: &str = "SELECT org_id, ip, duration, expires_ms, agent_id, rule, \
                             policy_version, reports, created_at, updated_at FROM blocks";

fn block_row(row: &Row) -> Result<FleetBlock> {
    let reports: i64 = get(row, "reports")?;
    Ok(FleetBlock {
        org_id: get(row, "org_id")?,
        ip: parsed(row, "ip")?,
        duration: parsed(row, "duration")?,
        expires_ms: get(row, "expires_ms")?,
        agent_id: get(row, "agent_id")?,
        rule: unsigned_opt(row, "rule")?,
        policy_version: parsed_opt(row, "policy_version")?,
        reports: u32::try_from(reports).unwrap_or(u32::MAX),
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

const APPROVAL_COLUMNS: &str = "SELECT id, org_id, agent_id, request, status, created_ms, \
                                expires_ms, decided_ms, decided_by, reason FROM approvals";

/// A row, or `None` (logged) when its request or status no longer parses.
fn approval_row(row: &Row) -> Result<Option<Approval>> {
    let id: String = get(row, "id")?;
    let request: String = get(row, "request")?;
    let status: String = get(row, "status")?;
    let (Ok(request), Some(status)) = (
        serde_json::from_str::<ActionRecord>(&request),
        ApprovalStatus::parse(&status),
    ) else {
        tracing::warn!(approval = %id, "skipping a malformed approval row");
        return Ok(None);
    };
    Ok(Some(Approval {
        id,
        org_id: get(row, "org_id")?,
        agent_id: get(row, "agent_id")?,
        request,
        status,
        created_ms: get(row, "created_ms")?,
        expires_ms: get(row, "expires_ms")?,
        decided_ms: get(row, "decided_ms")?,
        decided_by: get(row, "decided_by")?,
        reason: get(row, "reason")?,
    }))
}

/// Admits a fleet block on `ip` under the org's fleet-block budget, under the org's lock
/// ([`Store::admit_fleet_block`](crate::store::Store::admit_fleet_block)).
pub async fn admit_budget(
    tx: &impl GenericClient,
    org_id: &str,
    ip: IpAddr,
    limit: Limit,
    now_ms: i64,
) -> Result<bool> {
    lock_org(tx, org_id).await?;
    let since = now_ms.saturating_sub(clock::millis(limit.window));
    let prune = tx
        .prepare_cached("DELETE FROM fleet_budget WHERE org_id = $1 AND admitted_ms <= $2")
        .await?;
    tx.execute(&prune, &[&org_id, &since]).await?;
    let ip = ip.to_canonical().to_string();
    let seen = tx
        .prepare_cached("SELECT 1 FROM fleet_budget WHERE org_id = $1 AND ip = $2")
        .await?;
    let seen = tx.query_opt(&seen, &[&org_id, &ip]).await?.is_some();
    let admitted = seen || {
        let count = tx
            .prepare_cached("SELECT count(*) FROM fleet_budget WHERE org_id = $1")
            .await?;
        let count: i64 = tx.query_one(&count, &[&org_id]).await?.try_get(0)?;
        count < i64::from(limit.max)
    };
    if admitted && !seen {
        let insert = tx
            .prepare_cached(
                "INSERT INTO fleet_budget (org_id, ip, admitted_ms) VALUES ($1, $2, $3)",
            )
            .await?;
        tx.execute(&insert, &[&org_id, &ip, &now_ms]).await?;
    }
    Ok(admitted)
}
