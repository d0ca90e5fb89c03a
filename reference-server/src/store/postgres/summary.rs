//! What the console and the metrics read across tables: the org's versions as a list (names
//! and counts read out of the stored documents by PostgreSQL), every org, and the fleet
//! summary (every org's latest version, agents and approval counts, in one snapshot).

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use policy_engine::PolicyVersion;
use policy_engine::protocol::ApprovalStatus;

use super::Result;
use super::agents;
use super::rows::{big, get};
use crate::store::{OrgSummary, PolicySummary, StoreError};

/// Versions of `org_id` older than `before` (all when `None`), newest first, at most `limit`,
/// without validating each document.
pub async fn versions(
    client: &impl GenericClient,
    org_id: &str,
    before: Option<PolicyVersion>,
    limit: u32,
) -> Result<Vec<PolicySummary>> {
    let statement = client
        .prepare_cached(
            "SELECT p.id, p.version, d.doc ->> 'name' AS name,
                    d.doc ->> 'description' AS description,
                    jsonb_array_length(COALESCE(d.doc -> 'rules', '[]'::jsonb))::bigint
                        AS rule_count,
                    (SELECT COUNT(*) FROM jsonb_array_elements(COALESCE(d.doc -> 'rules', '[]'::jsonb)) r
                      WHERE r -> 'enabled' = 'true'::jsonb) AS enabled_count,
                    p.created_at, p.signature::jsonb ->> 'keyId' AS key_id
             FROM policies p, LATERAL (SELECT p.document::jsonb AS doc) d
             WHERE p.org_id = $1 AND p.version < $2
             ORDER BY p.version DESC LIMIT $3",
        )
        .await?;
    let below = before.map_or(i64::MAX, |v| big(v.number()));
    let rows = client
        .query(&statement, &[&org_id, &below, &i64::from(limit)])
        .await?;
    rows.iter()
        .map(|row| {
            let version: i64 = get(row, "version")?;
            let rule_count: i64 = get(row, "rule_count")?;
            let enabled_count: i64 = get(row, "enabled_count")?;
            Ok(PolicySummary {
                id: get(row, "id")?,
                version: PolicyVersion::new(u64::try_from(version).unwrap_or_default()),
                name: get::<Option<String>>(row, "name")?.unwrap_or_default(),
                description: get(row, "description")?,
                rule_count: u64::try_from(rule_count).unwrap_or_default(),
                enabled_count: u64::try_from(enabled_count).unwrap_or_default(),
                created_at: get(row, "created_at")?,
                key_id: get(row, "key_id")?,
            })
        })
        .collect()
}

/// Every org with a policy, an agent, an admin token or a shadow run, sorted.
pub async fn orgs(client: &impl GenericClient) -> Result<Vec<String>> {
    let statement = client
        .prepare_cached(
            "SELECT org_id FROM policies UNION SELECT org_id FROM agents
             UNION SELECT org_id FROM tokens WHERE org_id IS NOT NULL
             UNION SELECT org_id FROM shadow_runs ORDER BY 1",
        )
        .await?;
    client
        .query(&statement, &[])
        .await?
        .iter()
        .map(|row| get(row, "org_id"))
        .collect()
}

/// Every org with agents, policies or approval requests, by id, read in the caller's
/// transaction (one snapshot).
pub async fn fleet(tx: &impl GenericClient) -> Result<Vec<OrgSummary>> {
    let mut orgs: BTreeMap<String, OrgSummary> = BTreeMap::new();
    let rows = tx
        .query(
            "SELECT org_id, MAX(version) AS version FROM policies GROUP BY org_id",
            &[],
        )
        .await?;
    for row in &rows {
        let id: String = get(row, "org_id")?;
        let version: i64 = get(row, "version")?;
        let version = u64::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("policy version {version} of `{id}`")))?;
        org(&mut orgs, &id).latest_version = Some(PolicyVersion::new(version));
    }
    let rows = tx
        .query(
            "SELECT org_id, status, COUNT(*) AS count FROM approvals GROUP BY org_id, status
             ORDER BY org_id, status",
            &[],
        )
        .await?;
    for row in &rows {
        let id: String = get(row, "org_id")?;
        let status: String = get(row, "status")?;
        let count: i64 = get(row, "count")?;
        let status = ApprovalStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("approval status `{status}`")))?;
        org(&mut orgs, &id)
            .approvals
            .push((status, u64::try_from(count).unwrap_or_default()));
    }
    for agent in agents::all(tx).await? {
        org(&mut orgs, &agent.org_id.clone()).agents.push(agent);
    }
    Ok(orgs.into_values().collect())
}

fn org<'a>(orgs: &'a mut BTreeMap<String, OrgSummary>, id: &str) -> &'a mut OrgSummary {
    orgs.entry(id.to_owned()).or_insert_with(|| OrgSummary {
        org_id: id.to_owned(),
        latest_version: None,
        agents: Vec::new(),
        approvals: Vec::new(),
    })
}
