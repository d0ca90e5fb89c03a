//! `agents` (enrollment, heartbeats) and `tokens` (hashes and who they speak for); a stored
//! token is announced to the other replicas on [`TOKENS_CHANNEL`].

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::Result;
use super::rows::{get, json_opt, parsed_opt, stored};
use crate::auth::{Principal, TokenHash};
use crate::store::{AgentRecord, Heartbeat};

/// The channel token notices go out on: payload the hash in hex, or `*` when tokens were
/// revoked (every replica reloads them all).
pub const TOKENS_CHANNEL: &str = "policy_tokens";

/// Enrolls an agent and stores its token hash, in the caller's transaction.
pub async fn insert(tx: &impl GenericClient, agent: &AgentRecord, token: &TokenHash) -> Result<()> {
    let enrolled_at = stored(&agent.enrolled_at);
    let statement = tx
        .prepare_cached(
            "INSERT INTO agents (id, org_id, hostname, enrolled_at) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    tx.execute(
        &statement,
        &[&agent.id, &agent.org_id, &agent.hostname, &enrolled_at],
    )
    .await?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO tokens (hash, role, org_id, agent_id, created_at)
             VALUES ($1, 'agent', $2, $3, $4)",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &token.as_bytes().as_slice(),
            &agent.org_id,
            &agent.id,
            &enrolled_at,
        ],
    )
    .await?;
    announce(tx, &hex::encode(token.as_bytes())).await
}

/// One agent by id.
pub async fn one(client: &impl GenericClient, id: &str) -> Result<Option<AgentRecord>> {
    let statement = client
        .prepare_cached(&format!("{AGENT_COLUMNS} WHERE id = $1"))
        .await?;
    client
        .query_opt(&statement, &[&id])
        .await?
        .map(|row| agent_row(&row))
        .transpose()
}

/// Every agent of `org_id`, by id.
pub async fn of_org(client: &impl GenericClient, org_id: &str) -> Result<Vec<AgentRecord>> {
    let statement = client
        .prepare_cached(&format!("{AGENT_COLUMNS} WHERE org_id = $1 ORDER BY id"))
        .await?;
    client
        .query(&statement, &[&org_id])
        .await?
        .iter()
        .map(agent_row)
        .collect()
}

/// Every agent, by org and id.
pub async fn all(client: &impl GenericClient) -> Result<Vec<AgentRecord>> {
    let statement = client
        .prepare_cached(&format!("{AGENT_COLUMNS} ORDER BY org_id, id"))
        .await?;
    client
        .query(&statement, &[])
        .await?
        .iter()
        .map(agent_row)
        .collect()
}

/// Records a heartbeat; one without an ack (or without a shadow report) keeps the stored one.
pub async fn heartbeat(client: &impl GenericClient, heartbeat: &Heartbeat) -> Result<()> {
    let ack = heartbeat
        .ack
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let shadow = heartbeat
        .shadow
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let statement = client
        .prepare_cached(
            "UPDATE agents SET last_seen = $2, policy_version = $3, last_error = $4,
                               ack = COALESCE($5, ack), shadow = COALESCE($6, shadow)
             WHERE id = $1",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &heartbeat.agent_id,
                &stored(&heartbeat.at),
                &heartbeat.policy_version.map(|v| v.to_string()),
                &heartbeat.last_error,
                &ack,
                &shadow,
            ],
        )
        .await?;
    Ok(())
}

/// Stores an admin token hash (a repeated one is kept as is), in the caller's transaction.
pub async fn insert_token(
    tx: &impl GenericClient,
    token: &TokenHash,
    principal: &Principal,
    now: DateTime<Utc>,
) -> Result<()> {
    let (role, org, agent) = columns(principal);
    let statement = tx
        .prepare_cached(
            "INSERT INTO tokens (hash, role, org_id, agent_id, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &token.as_bytes().as_slice(),
            &role,
            &org,
            &agent,
            &stored(&now),
        ],
    )
    .await?;
    announce(tx, &hex::encode(token.as_bytes())).await
}

/// Makes `token` the only global admin token, in the caller's transaction.
pub async fn set_global_admin(
    tx: &impl GenericClient,
    token: &TokenHash,
    now: DateTime<Utc>,
) -> Result<()> {
    let statement = tx
        .prepare_cached("DELETE FROM tokens WHERE role = 'admin' AND org_id IS NULL AND hash != $1")
        .await?;
    let revoked = tx
        .execute(&statement, &[&token.as_bytes().as_slice()])
        .await?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO tokens (hash, role, org_id, agent_id, created_at)
             VALUES ($1, 'admin', NULL, NULL, $2) ON CONFLICT (hash) DO NOTHING",
        )
        .await?;
    tx.execute(&statement, &[&token.as_bytes().as_slice(), &stored(&now)])
        .await?;
    if revoked > 0 {
        announce(tx, "*").await
    } else {
        announce(tx, &hex::encode(token.as_bytes())).await
    }
}

/// Every token hash with its principal; malformed rows are skipped with a warning.
pub async fn tokens(client: &impl GenericClient) -> Result<Vec<(TokenHash, Principal)>> {
    let rows = client
        .query("SELECT hash, role, org_id, agent_id FROM tokens", &[])
        .await?;
    let mut tokens = Vec::with_capacity(rows.len());
    for row in rows {
        match token_row(&row)? {
            Some(token) => tokens.push(token),
            None => tracing::warn!("skipping a malformed token row"),
        }
    }
    Ok(tokens)
}

/// The principal of one token hash (`None` also for a malformed row, with a warning).
pub async fn token(client: &impl GenericClient, token: &TokenHash) -> Result<Option<Principal>> {
    let statement = client
        .prepare_cached("SELECT hash, role, org_id, agent_id FROM tokens WHERE hash = $1")
        .await?;
    let Some(row) = client
        .query_opt(&statement, &[&token.as_bytes().as_slice()])
        .await?
    else {
        return Ok(None);
    };
    let found = token_row(&row)?;
    if found.is_none() {
        tracing::warn!("skipping a malformed token row");
    }
    Ok(found.map(|(_, principal)| principal))
}

/// Whether any global admin token exists.
pub async fn has_global_admin(client: &impl GenericClient) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE role = 'admin' AND org_id IS NULL) AS any",
            &[],
        )
        .await?;
    get(&row, "any")
}

/// Tells the other replicas about a stored token when the transaction commits.
async fn announce(tx: &impl GenericClient, payload: &str) -> Result<()> {
    let statement = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    tx.query(&statement, &[&TOKENS_CHANNEL, &payload]).await?;
    Ok(())
}

fn token_row(row: &Row) -> Result<Option<(TokenHash, Principal)>> {
    let hash: Vec<u8> = get(row, "hash")?;
    let role: String = get(row, "role")?;
    let org: Option<String> = get(row, "org_id")?;
    let agent: Option<String> = get(row, "agent_id")?;
    Ok(TokenHash::from_slice(&hash).zip(from_columns(&role, org, agent)))
}

/// `(role, org_id, agent_id)` of a principal as stored.
fn columns(principal: &Principal) -> (&'static str, Option<&str>, Option<&str>) {
    match principal {
        Principal::GlobalAdmin => ("admin", None, None),
        Principal::OrgAdmin { org_id } => ("admin", Some(org_id), None),
        Principal::Agent { agent_id, org_id } => ("agent", Some(org_id), Some(agent_id)),
    }
}

/// The principal of a stored row.
fn from_columns(role: &str, org_id: Option<String>, agent_id: Option<String>) -> Option<Principal> {
    match (role, org_id, agent_id) {
        ("admin", None, None) => Some(Principal::GlobalAdmin),
        ("admin", Some(org_id), None) => Some(Principal::OrgAdmin { org_id }),
        ("agent", Some(org_id), Some(agent_id)) => Some(Principal::Agent { agent_id, org_id }),
        _ => None,
    }
}

const AGENT_COLUMNS: &str = "SELECT id, org_id, hostname, enrolled_at, last_seen, policy_version, \
                             last_error, ack, shadow FROM agents";

fn agent_row(row: &Row) -> Result<AgentRecord> {
    Ok(AgentRecord {
        id: get(row, "id")?,
        org_id: get(row, "org_id")?,
        hostname: get(row, "hostname")?,
        enrolled_at: get(row, "enrolled_at")?,
        last_seen: get(row, "last_seen")?,
        policy_version: parsed_opt(row, "policy_version")?,
        last_error: get(row, "last_error")?,
        ack: json_opt(row, "ack")?,
        shadow: json_opt(row, "shadow")?,
    })
}
