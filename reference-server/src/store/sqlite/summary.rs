//! The fleet summary the metrics report: every org's latest version, agents and approval
//! counts, read in one transaction.

use std::collections::BTreeMap;

use policy_engine::PolicyVersion;
use policy_engine::protocol::ApprovalStatus;
use rusqlite::{Connection, TransactionBehavior};

use super::Result;
use super::agents;
use crate::store::{OrgSummary, StoreError};

/// Every org with agents, policies or approval requests, by id.
pub fn fleet(conn: &mut Connection) -> Result<Vec<OrgSummary>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let mut orgs: BTreeMap<String, OrgSummary> = BTreeMap::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT org_id, MAX(version) FROM policies GROUP BY org_id ORDER BY org_id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (id, version) = row?;
            let version = u64::try_from(version)
                .map_err(|_| StoreError::Corrupt(format!("policy version {version} of `{id}`")))?;
            org(&mut orgs, &id).latest_version = Some(PolicyVersion::new(version));
        }
        let mut stmt = tx.prepare_cached(
            "SELECT org_id, status, COUNT(*) FROM approvals GROUP BY org_id, status
             ORDER BY org_id, status",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (id, status, count) = row?;
            let status = ApprovalStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("approval status `{status}`")))?;
            org(&mut orgs, &id)
                .approvals
                .push((status, u64::try_from(count).unwrap_or_default()));
        }
    }
    for agent in agents::all(&tx)? {
        org(&mut orgs, &agent.org_id.clone()).agents.push(agent);
    }
    tx.commit()?;
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
