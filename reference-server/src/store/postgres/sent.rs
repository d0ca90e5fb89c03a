//! `agent_policies` and `sent_broadcasts`: which policy versions (with which overrides) were
//! sent to each agent, one row per agent for a send to few agents, one row per broadcast for
//! a send to many ([`split_sent`]); the newest ones (see [`MAX_SENT_PER_AGENT`]); and the
//! pending approvals of an agent (its quota).

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use serde_json::Value;

use super::Result;
use super::rows::{big, get};
use crate::store::{
    MAX_SENT_PER_AGENT, SentPolicy, SentRows, newest_lists, sent_agent_needle, split_sent,
};

/// Records the writes `writes` in the caller's transaction, each as it would be on its own
/// ([`split_sent`] per write: many opening streams recorded together stay rows of their
/// agents, not a broadcast row), in a few statements whatever their size (a broadcast to a
/// whole org); a row sent again gets its time refreshed. Each agent keeps its newest
/// [`MAX_SENT_PER_AGENT`] rows of its own, each org the broadcasts of its newest
/// [`MAX_SENT_PER_AGENT`] versions.
pub async fn record(tx: &impl GenericClient, writes: &[&[SentPolicy]]) -> Result<()> {
    let mut split = SentRows::default();
    for write in writes {
        let part = split_sent(write)?;
        split.single.extend(part.single);
        split.broadcasts.extend(part.broadcasts);
        split.broadcast_cuts.extend(part.broadcast_cuts);
    }
    if !split.single.is_empty() {
        // One row per key (an upsert may not touch a row twice), in key order (concurrent
        // transactions lock rows in the same order).
        let mut rows: BTreeMap<(String, i64, String), i64> = BTreeMap::new();
        for (row, overrides) in &split.single {
            let key = (
                row.agent_id.clone(),
                big(row.version.number()),
                overrides.clone(),
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
                 ON CONFLICT (agent_id, version, overrides)
                 DO UPDATE SET sent_ms = GREATEST(agent_policies.sent_ms, excluded.sent_ms)",
            )
            .await?;
        tx.execute(&upsert, &[&agents, &versions, &overrides, &times])
            .await?;
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
    if !split.broadcasts.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO sent_broadcasts (org_id, version, overrides, sent_ms, agents)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        for broadcast in &split.broadcasts {
            tx.execute(
                &insert,
                &[
                    &broadcast.org_id,
                    &broadcast.version,
                    &broadcast.overrides,
                    &broadcast.sent_ms,
                    &broadcast.agents,
                ],
            )
            .await?;
        }
        let prune = tx
            .prepare_cached("DELETE FROM sent_broadcasts WHERE org_id = $1 AND version <= $2")
            .await?;
        for (org_id, cut) in &split.broadcast_cuts {
            tx.execute(&prune, &[org_id, cut]).await?;
        }
    }
    Ok(())
}

/// The override lists `version` of `org_id` was sent to `agent_id` with, newest first (empty:
/// never sent).
pub async fn overrides(
    client: &impl GenericClient,
    org_id: &str,
    agent_id: &str,
    version: u64,
) -> Result<Vec<Value>> {
    let statement = client
        .prepare_cached(
            "SELECT overrides, sent_ms FROM agent_policies WHERE agent_id = $1 AND version = $2
             UNION ALL
             SELECT overrides, sent_ms FROM sent_broadcasts
             WHERE org_id = $3 AND version = $2 AND strpos(agents, $4) > 0
             ORDER BY sent_ms DESC",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &agent_id,
                &big(version),
                &org_id,
                &sent_agent_needle(agent_id),
            ],
        )
        .await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let text: String = get(row, "overrides")?;
        let at: i64 = get(row, "sent_ms")?;
        found.push((text, at));
    }
    Ok(newest_lists(found)?)
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
