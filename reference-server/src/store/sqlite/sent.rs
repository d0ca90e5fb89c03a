//! `agent_policies`: which policy versions (with which overrides) were sent to each agent, the
//! newest ones per agent (see [`MAX_SENT_PER_AGENT`]).

use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::Value;

use super::Result;
use crate::store::{MAX_SENT_PER_AGENT, SentPolicy, version_cuts};

/// Records `sent` in one transaction; a row sent again gets its time refreshed. Pruned as
/// [`MAX_SENT_PER_AGENT`] says, by count or by version ([`version_cuts`]).
pub fn record(conn: &mut Connection, sent: &[SentPolicy]) -> Result<()> {
    let keep = i64::try_from(MAX_SENT_PER_AGENT).unwrap_or(i64::MAX);
    let cuts = version_cuts(sent);
    // By agent: a broadcast's rows then touch each page of the indexes once, in turn,
    // instead of at random (10,000 agents in hash order thrashed the page cache). The sort
    // is stable, so one agent's rows keep their order (and the prune its outcome).
    let mut sorted: Vec<&SentPolicy> = sent.iter().collect();
    sorted.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
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
            if cuts.is_none() {
                prune_count.execute(params![row.agent_id, keep])?;
            }
        }
        for (agent, cut) in cuts.into_iter().flatten() {
            prune_versions.execute(params![agent, cut])?;
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
