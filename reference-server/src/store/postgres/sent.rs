//! `agent_policies`: which policy versions (with which overrides) were sent to each agent, the
//! newest ones per agent (see [`MAX_SENT_PER_AGENT`]); and the pending approvals of an agent (its quota).

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use serde_json::Value;

use super::Result;
use super::rows::{big, get};
use crate::store::{MAX_SENT_PER_AGENT, SentPolicy, version_cuts};

/// Records `sent` in the caller's transaction, in two statements whatever its size (a broadcast
/// to a whole org); a row sent again gets its time refreshed. Pruned as [`MAX_SENT_PER_AGENT`]
/// says, by count or by version ([`version_cuts`]).
pub async fn record(tx: &impl GenericClient, sent: &[SentPolicy]) -> Result<()> {
    // One row per key (an upsert may not touch a row twice), in key order (concurrent
    // transactions lock rows in the same order).
    let mut rows: BTreeMap<(String, i64, String), i64> = BTreeMap::new();
    for row in sent {
        let key = (
            row.agent_id.clone(),
            big(row.version.number()),
            serde_json::to_string(&row.overrides)?,
        );
        let at = rows.entry(key).or_insert(row.sent_ms);
        *at = (*at).max(row.sent_ms);
    }
    let mut agents = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut overrides = Vec::with_capacity(rows.len());
    let mut times = Vec::with_capacity(rows.len());
    for ((agent, version, list), at) in rows {
        agents.push(agent);
        versions.push(version);
        overrides.push(list);
        times.push(at);
    }
    let upsert = tx
        .prepare_cached(
            "INSERT INTO agent_policies (agent_id, version, overrides, sent_ms)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[])
             ON CONFLICT (agent_id, version, overrides) DO UPDATE SET sent_ms = excluded.sent_ms",
        )
        .await?;
    tx.execute(&upsert, &[&agents, &versions, &overrides, &times])
        .await?;
    if let Some(cuts) = version_cuts(sent) {
        let (agents, cuts): (Vec<&str>, Vec<i64>) = cuts.into_iter().unzip();
        let prune = tx
            .prepare_cached(
                "DELETE FROM agent_policies p USING unnest($1::text[], $2::bigint[]) AS c(agent_id, cut)
                 WHERE p.agent_id = c.agent_id AND p.version <= c.cut",
            )
            .await?;
        tx.execute(&prune, &[&agents, &cuts]).await?;
    } else {
        agents.dedup();
        let keep = i64::try_from(MAX_SENT_PER_AGENT).unwrap_or(i64::MAX);
        let prune = tx
            .prepare_cached(
                "DELETE FROM agent_policies WHERE id IN (
                     SELECT id FROM (
                         SELECT id, row_number() OVER (
                             PARTITION BY agent_id ORDER BY sent_ms DESC, id DESC) AS n
                         FROM agent_policies WHERE agent_id = ANY($1)) ranked
                     WHERE n > $2)",
            )
            .await?;
        tx.execute(&prune, &[&agents, &keep]).await?;
    }
    Ok(())
}

/// The override lists `version` was sent to `agent_id` with (empty: never sent), newest first.
pub async fn overrides(
    client: &impl GenericClient,
    agent_id: &str,
    version: u64,
) -> Result<Vec<Value>> {
    let statement = client
        .prepare_cached(
            "SELECT overrides FROM agent_policies WHERE agent_id = $1 AND version = $2
             ORDER BY sent_ms DESC, id DESC",
        )
        .await?;
    let rows = client
        .query(&statement, &[&agent_id, &big(version)])
        .await?;
    let mut lists = Vec::with_capacity(rows.len());
    for row in &rows {
        let text: String = get(row, "overrides")?;
        lists.push(serde_json::from_str(&text)?);
    }
    Ok(lists)
}

/// Pending requests of `agent_id`.
pub async fn pending_approvals(client: &impl GenericClient, agent_id: &str) -> Result<usize> {
    let statement = client
        .prepare_cached(
            "SELECT COUNT(*) AS pending FROM approvals WHERE agent_id = $1 AND status = 'pending'",
        )
        .await?;
    let row = client.query_one(&statement, &[&agent_id]).await?;
    let count: i64 = get(&row, "pending")?;
    Ok(usize::try_from(count).unwrap_or(usize::MAX))
}
