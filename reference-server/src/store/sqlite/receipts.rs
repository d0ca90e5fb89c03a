//! `report_receipts`: the report ids an agent's reports were acted on under, and their answers.

use policy_engine::protocol::{ReportId, ReportKind};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::Result;
use crate::store::{ReportReceipt, StoreError};

/// Writes a receipt (with its answer, when known before the effect) inside the transaction of
/// the report's effect: a report already received (the same agent and id) fails it with
/// [`StoreError::DuplicateReport`], so the transaction rolls back and the effect never happens
/// twice.
pub fn insert(conn: &Connection, receipt: &ReportReceipt, now_ms: i64) -> Result<()> {
    let answer = receipt
        .answer
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO report_receipts (agent_id, report_id, kind, answer, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            receipt.agent_id,
            receipt.report_id.as_str(),
            receipt.kind.as_str(),
            answer,
            now_ms
        ])?;
    if inserted == 0 {
        return Err(StoreError::DuplicateReport {
            agent_id: receipt.agent_id.clone(),
            report_id: receipt.report_id.to_string(),
        });
    }
    Ok(())
}

/// The receipt of `report_id` of `agent_id`.
pub fn get(
    conn: &mut Connection,
    agent_id: String,
    report_id: ReportId,
) -> Result<Option<ReportReceipt>> {
    let row = conn
        .query_row(
            "SELECT kind, answer FROM report_receipts WHERE agent_id = ?1 AND report_id = ?2",
            params![agent_id, report_id.as_str()],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?)),
        )
        .optional()?;
    let Some((kind, answer)) = row else {
        return Ok(None);
    };
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
pub fn set_answer(
    conn: &mut Connection,
    agent_id: &str,
    report_id: &ReportId,
    answer: &Value,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE report_receipts SET answer = ?3 WHERE agent_id = ?1 AND report_id = ?2",
    )?
    .execute(params![
        agent_id,
        report_id.as_str(),
        serde_json::to_string(answer)?
    ])?;
    Ok(())
}

/// Forgets receipts older than `before_ms`.
pub fn prune(conn: &mut Connection, before_ms: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM report_receipts WHERE created_ms < ?1")?
        .execute(params![before_ms])?)
}
