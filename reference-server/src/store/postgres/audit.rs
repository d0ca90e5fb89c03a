//! `audit` (the append-only trail and its filtered, paged reads) and `report_receipts` (the
//! report ids acted on, and their answers).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use policy_engine::protocol::{ReportId, ReportKind};
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::Result;
use super::rows::{get, stored, unsigned_opt};
use crate::store::{AuditEntry, AuditFilter, AuditPage, NewEntry, ReportReceipt, StoreError};

/// Writes one entry inside the caller's transaction, its report receipt first (a report already
/// received fails the transaction before anything is written).
pub async fn insert(tx: &impl GenericClient, at: DateTime<Utc>, entry: &NewEntry) -> Result<i64> {
    if let Some(receipt) = &entry.receipt {
        insert_receipt(tx, receipt, at.timestamp_millis()).await?;
    }
    let detail = entry
        .detail
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO audit (time, org_id, agent_id, actor, rule, policy_version, action, ip,
                                outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .await?;
    let row = tx
        .query_one(
            &statement,
            &[
                &stored(&at),
                &entry.org_id,
                &entry.agent_id,
                &entry.actor,
                &entry.rule.and_then(|r| i64::try_from(r).ok()),
                &entry.policy_version.map(|v| v.to_string()),
                &entry.action,
                &entry.ip.map(|ip| ip.to_string()),
                &entry.outcome,
                &detail,
            ],
        )
        .await?;
    get(&row, "id")
}

/// One page of entries matching `filter`, newest first.
pub async fn query(client: &impl GenericClient, filter: &AuditFilter) -> Result<AuditPage> {
    let mut sql = String::from(
        "SELECT id, time, org_id, agent_id, actor, rule, policy_version, action, ip,
                outcome, detail FROM audit WHERE org_id = $1",
    );
    let ip = filter.ip.map(|ip| ip.to_string());
    let from = filter.from.as_ref().map(stored);
    let to = filter.to.as_ref().map(stored);
    let limit = i64::from(filter.limit.saturating_add(1));
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&filter.org_id];
    let mut clause = |column: &str, value: &'static str, arg| {
        args.push(arg);
        sql.push_str(&format!(" AND {column} {value} ${}", args.len()));
    };
    if let Some(agent) = &filter.agent_id {
        clause("agent_id", "=", agent);
    }
    if let Some(ip) = &ip {
        clause("ip", "=", ip);
    }
    if let Some(action) = &filter.action {
        clause("action", "=", action);
    }
    if let Some(from) = &from {
        clause("time", ">=", from);
    }
    if let Some(to) = &to {
        clause("time", "<", to);
    }
    if let Some(before) = &filter.before_id {
        clause("id", "<", before);
    }
    // One more than the page tells whether there is a next page.
    args.push(&limit);
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len()));
    let rows = client.query(sql.as_str(), &args).await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let detail: Option<String> = get(row, "detail")?;
        entries.push(AuditEntry {
            id: get(row, "id")?,
            time: get(row, "time")?,
            org_id: get(row, "org_id")?,
            agent_id: get(row, "agent_id")?,
            actor: get(row, "actor")?,
            rule: unsigned_opt(row, "rule")?,
            policy_version: get(row, "policy_version")?,
            action: get(row, "action")?,
            ip: get(row, "ip")?,
            outcome: get(row, "outcome")?,
            detail: detail.map(|d| serde_json::from_str(&d)).transpose()?,
        });
    }
    let limit = usize::try_from(filter.limit).unwrap_or(usize::MAX);
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next_cursor = if more {
        entries.last().map(|e| e.id)
    } else {
        None
    };
    Ok(AuditPage {
        entries,
        next_cursor,
    })
}

/// Writes a receipt (with its answer, when known before the effect) inside the transaction of
/// the report's effect: a report already received
/// (the same agent and id, on any replica) fails it with [`StoreError::DuplicateReport`], so
/// the transaction rolls back and the effect never happens twice. A copy racing on another
/// replica waits for the first one's commit, then finds the receipt.
async fn insert_receipt(
    tx: &impl GenericClient,
    receipt: &ReportReceipt,
    now_ms: i64,
) -> Result<()> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO report_receipts (agent_id, report_id, kind, answer, created_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agent_id, report_id) DO NOTHING",
        )
        .await?;
    let answer = receipt
        .answer
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let inserted = tx
        .execute(
            &statement,
            &[
                &receipt.agent_id,
                &receipt.report_id.as_str(),
                &receipt.kind.as_str(),
                &answer,
                &now_ms,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::DuplicateReport {
            agent_id: receipt.agent_id.clone(),
            report_id: receipt.report_id.to_string(),
        });
    }
    Ok(())
}

/// The receipt of `report_id` of `agent_id`.
pub async fn receipt(
    client: &impl GenericClient,
    agent_id: String,
    report_id: ReportId,
) -> Result<Option<ReportReceipt>> {
    let statement = client
        .prepare_cached(
            "SELECT kind, answer FROM report_receipts WHERE agent_id = $1 AND report_id = $2",
        )
        .await?;
    let Some(row) = client
        .query_opt(&statement, &[&agent_id, &report_id.as_str()])
        .await?
    else {
        return Ok(None);
    };
    let kind: String = get(&row, "kind")?;
    let answer: Option<String> = get(&row, "answer")?;
    let kind = ReportKind::parse(&kind)
        .ok_or_else(|| StoreError::Corrupt(format!("report receipt kind `{kind}`")))?;
    Ok(Some(ReportReceipt {
        agent_id,
        report_id,
        kind,
        answer: answer.map(|a| serde_json::from_str(&a)).transpose()?,
    }))
}

/// Stores the answer of a received report.
pub async fn set_answer(
    client: &impl GenericClient,
    agent_id: &str,
    report_id: &ReportId,
    answer: &Value,
) -> Result<()> {
    let statement = client
        .prepare_cached(
            "UPDATE report_receipts SET answer = $3 WHERE agent_id = $1 AND report_id = $2",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &agent_id,
                &report_id.as_str(),
                &serde_json::to_string(answer)?,
            ],
        )
        .await?;
    Ok(())
}

/// Forgets receipts older than `before_ms`.
pub async fn prune(client: &impl GenericClient, before_ms: i64) -> Result<usize> {
    let statement = client
        .prepare_cached("DELETE FROM report_receipts WHERE created_ms < $1")
        .await?;
    let deleted = client.execute(&statement, &[&before_ms]).await?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}
