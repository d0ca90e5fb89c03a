//! `agent_policies`: which policy versions (with which overrides) were sent to each agent, the
//! newest ones per agent (see [`MAX_SENT_PER_AGENT`]).

use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::Value;

use super::Result;
use crate::store::{MAX_SENT_PER_AGENT, SMALL_SENT_BATCH, SentPolicy};

/// Records `sent` in one transaction; a row sent again gets its time refreshed. Pruned as
/// [`MAX_SENT_PER_AGENT`] says: by count when the write names at most [`SMALL_SENT_BATCH`]
/// agents, else by version.
pub fn record(conn: &mut Connection, sent: &[SentPolicy]) -> Result<()> {
    let keep = i64::try_from(MAX_SENT_PER_AGENT).unwrap_or(i64::MAX);
    // By agent: a broadcast's rows then touch each page of the indexes once, in turn,
    // instead of at random (10,000 agents in hash order thrashed the page cache). The sort
    // is stable, so one agent's rows keep their order (and the prune its outcome).
    let mut sorted: Vec<&SentPolicy> = sent.iter().collect();
    sorted.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    // Each agent with the newest version it gets here.
    let mut newest: Vec<(&str, i64)> = Vec::new();
    for row in &sorted {
        let version = i64::try_from(row.version.number()).unwrap_or(i64::MAX);
        match newest.last_mut() {
            Some((agent, max)) if *agent == row.agent_id.as_str() => *max = (*max).max(version),
            _ => newest.push((row.agent_id.as_str(), version)),
        }
    }
    let by_count = newest.len() <= SMALL_SENT_BATCH;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO agent_policies (agent_id, version, overrides, sent_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (agent_id, version, overrides) DO UPDATE SET sent_ms = excluded.sent_ms",
        )?;
        let mut prune_count = tx.prepare_cached(
            "DELETE FROM agent_policies WHERE agent_id = ?1 AND rowid NOT IN (
                 SELECT rowid FROM agent_policies WHERE agent_id = ?1
                 ORDER BY sent_ms DESC, rowid DESC LIMIT ?2)",
        )?;
        let mut prune_versions =
            tx.prepare_cached("DELETE FROM agent_policies WHERE agent_id = ?1 AND version <= ?2")?;
        for row in sorted {
            let overrides = serde_json::to_string(&row.overrides)?;
            let version = i64::try_from(row.version.number()).unwrap_or(i64::MAX);
            upsert.execute(params![row.agent_id, version, overrides, row.sent_ms])?;
            if by_count {
                prune_count.execute(params![row.agent_id, keep])?;
            }
        }
        if !by_count {
            for (agent, version) in newest {
                prune_versions.execute(params![agent, version.saturating_sub(keep)])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// The override lists `version` was sent to `agent_id` with (empty: never sent).
pub fn overrides(conn: &mut Connection, agent_id: &str, version: u64) -> Result<Vec<Value>> {
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT overrides FROM agent_policies WHERE agent_id = ?1 AND version = ?2
         ORDER BY sent_ms DESC",
    )?;
    let rows = stmt.query_map(params![agent_id, version], |row| row.get::<_, String>(0))?;
    let mut lists = Vec::new();
    for text in rows {
        lists.push(serde_json::from_str(&text?)?);
    }
    Ok(lists)
}
