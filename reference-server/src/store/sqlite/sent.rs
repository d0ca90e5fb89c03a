//! `agent_policies` and `sent_broadcasts`: which policy versions (with which overrides) were
//! sent to each agent, one row per agent for a send to few agents, one row per broadcast for
//! a send to many ([`split_sent`]); the newest ones (see [`MAX_SENT_PER_AGENT`]).

use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::Value;

use super::Result;
use crate::store::{MAX_SENT_PER_AGENT, SentPolicy, newest_lists, sent_agent_needle, split_sent};

/// Records `sent` in one transaction; a row sent again gets its time refreshed. Each agent
/// keeps its newest [`MAX_SENT_PER_AGENT`] rows of its own, each org the broadcasts of its
/// newest [`MAX_SENT_PER_AGENT`] versions.
pub fn record(conn: &mut Connection, sent: &[SentPolicy]) -> Result<()> {
    let keep = i64::try_from(MAX_SENT_PER_AGENT).unwrap_or(i64::MAX);
    let split = split_sent(sent)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO agent_policies (agent_id, version, overrides, sent_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (agent_id, version, overrides)
             DO UPDATE SET sent_ms = MAX(sent_ms, excluded.sent_ms)",
        )?;
        let mut prune_count = tx.prepare_cached(
            "DELETE FROM agent_policies WHERE agent_id = ?1 AND rowid NOT IN (
                 SELECT rowid FROM agent_policies WHERE agent_id = ?1
                 ORDER BY sent_ms DESC, rowid DESC LIMIT ?2)",
        )?;
        for (index, (row, overrides)) in split.single.iter().enumerate() {
            let version = i64::try_from(row.version.number()).unwrap_or(i64::MAX);
            upsert.execute(params![row.agent_id, version, overrides, row.sent_ms])?;
            // Once per agent, after its last row.
            let next = split
                .single
                .get(index + 1)
                .map(|(next, _)| next.agent_id.as_str());
            if next != Some(row.agent_id.as_str()) {
                prune_count.execute(params![row.agent_id, keep])?;
            }
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO sent_broadcasts (org_id, version, overrides, sent_ms, agents)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for broadcast in &split.broadcasts {
            insert.execute(params![
                broadcast.org_id,
                broadcast.version,
                broadcast.overrides,
                broadcast.sent_ms,
                broadcast.agents
            ])?;
        }
        let mut prune_broadcasts =
            tx.prepare_cached("DELETE FROM sent_broadcasts WHERE org_id = ?1 AND version <= ?2")?;
        for (org_id, cut) in &split.broadcast_cuts {
            prune_broadcasts.execute(params![org_id, cut])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The override lists `version` of `org_id` was sent to `agent_id` with, newest first (empty:
/// never sent).
pub fn overrides(
    conn: &mut Connection,
    org_id: &str,
    agent_id: &str,
    version: u64,
) -> Result<Vec<Value>> {
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT overrides, sent_ms FROM agent_policies WHERE agent_id = ?1 AND version = ?2
         UNION ALL
         SELECT overrides, sent_ms FROM sent_broadcasts
         WHERE org_id = ?3 AND version = ?2 AND instr(agents, ?4) > 0
         ORDER BY sent_ms DESC",
    )?;
    let rows = stmt.query_map(
        params![agent_id, version, org_id, sent_agent_needle(agent_id)],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
    )?;
    let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(newest_lists(rows)?)
}
