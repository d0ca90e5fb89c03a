//! Approval requests: stored with an expiry, listed, approved (pushed to the requesting agent)
//! or denied by an admin, expired by the sweeper, and closed by the agent's report of the
//! outcome (see [`super::reports`]), which [`check_outcome`] checks first. Every transition
//! writes its audit entry in the same transaction (the store's).

use policy_engine::protocol::{ApprovalStatus, ApprovalView, Report};
use policy_engine::{Action, ActionRecord};
use serde::Serialize;

use super::changes::Topic;
use super::checks::{CheckError, Refusal};
use super::streams::Publisher;
use super::views::approval_view;
use crate::auth::Principal;
use crate::clock;
use crate::error::ApiError;
use crate::store::{Approval, DecideError, Decision, Store};

/// The answer to the decision endpoints (admin only).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decided {
    /// The approval after the decision.
    #[serde(flatten)]
    pub approval: ApprovalView,
    /// Streams of the requesting agent the `approval` event was queued to (approve only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcasted_to: Option<usize>,
}

/// Approvals of `org`, newest first (expired ones marked first).
pub async fn list(
    store: &dyn Store,
    org: String,
    status: Option<ApprovalStatus>,
    limit: u32,
) -> Result<Vec<ApprovalView>, ApiError> {
    store.expire_approvals(clock::now_ms()).await?;
    let list = store.approvals(org, status, limit).await?;
    Ok(list.iter().map(approval_view).collect())
}

/// Approves or denies request `id` as `principal` (within org `scope` when the caller named
/// one); an approval is pushed to the requesting agent's streams. 404 unknown, 403 another org,
/// 409 not pending (decided, expired, executed).
pub async fn decide(
    store: &dyn Store,
    publisher: &Publisher,
    principal: &Principal,
    scope: Option<String>,
    id: String,
    approve: bool,
    reason: Option<String>,
) -> Result<Decided, ApiError> {
    let decision = Decision {
        id: id.clone(),
        org: scope.or_else(|| principal.confined_org().map(str::to_owned)),
        approve,
        by: principal.actor(),
        reason,
        now_ms: clock::now_ms(),
    };
    let pushed = match store.decide_approval(decision).await? {
        Ok(pushed) => pushed,
        Err(DecideError::NotFound) => {
            return Err(ApiError::not_found(format!("unknown approval `{id}`")));
        }
        Err(DecideError::OtherOrg(other)) => {
            return Err(principal
                .check_org(&other)
                .err()
                .unwrap_or_else(|| ApiError::forbidden("this approval belongs to another org")));
        }
        Err(DecideError::NotPending(approval)) => {
            return Err(ApiError::conflict(format!(
                "approval `{id}` is {}, not pending",
                approval.status.as_str()
            )));
        }
    };
    let approval = pushed.value;
    let delivery = if approve {
        Some(publisher.push(store, &approval.org_id, pushed.seq).await)
    } else {
        None
    };
    publisher.changed(&approval.org_id, &[Topic::Approvals, Topic::Audit]);
    tracing::info!(
        approval = approval.id.as_str(),
        agent = approval.agent_id.as_str(),
        status = approval.status.as_str(),
        "approval decided"
    );
    Ok(Decided {
        approval: approval_view(&approval),
        broadcasted_to: delivery.map(|d| d.queued),
    })
}

/// Checks a report's `approvalId` (none: nothing to check): an `approval_request` carries
/// none, and any other report may name only an approval of its agent (and org) that is
/// `approved`, not past its expiry, for the reported action ([`outcome_refusal`]). The
/// refusal's path is `approvalId`.
pub async fn check_outcome(
    store: &dyn Store,
    agent_id: &str,
    org_id: &str,
    report: &Report,
    now_ms: i64,
) -> Result<(), CheckError> {
    let Some(id) = report.approval_id.as_deref() else {
        return Ok(());
    };
    if let Action::ApprovalRequest { .. } = report.record.action {
        return Err(Refusal::new(
            "approvalId",
            "an `approval_request` cannot carry `approvalId`: it asks for an approval",
        )
        .into());
    }
    let approval = store.approval(id.to_owned()).await?;
    match outcome_refusal(
        id,
        approval.as_ref(),
        (agent_id, org_id),
        &report.record,
        now_ms,
    ) {
        Some(refusal) => Err(refusal.into()),
        None => Ok(()),
    }
}

/// Why `record`, reported by `(agent_id, org_id)` under approval `id` (as stored, if it is),
/// cannot close it at `now_ms`, if it cannot.
///
/// The action must be the approved one: the action with every field of it (the target: `pid`
/// and `process`, `path`, `ip` with `duration` and `scope`, `host`, a custom `name` and
/// `params`), the `rule` and the `policyVersion` are compared; `eventId` (where it came from,
/// not what was done) and the report's own fields (`outcome`, `detail`, `reportId`) are not.
pub fn outcome_refusal(
    id: &str,
    approval: Option<&Approval>,
    (agent_id, org_id): (&str, &str),
    record: &ActionRecord,
    now_ms: i64,
) -> Option<Refusal> {
    let Some(approval) = approval else {
        return Some(Refusal::new(
            "approvalId",
            format!("unknown approval `{id}`"),
        ));
    };
    // Another org's approval is "not this agent's" too: its existence is not told.
    if approval.agent_id != agent_id || approval.org_id != org_id {
        return Some(Refusal::new(
            "approvalId",
            format!("approval `{id}` is not this agent's"),
        ));
    }
    let status = if approval.status == ApprovalStatus::Approved && approval.expires_ms <= now_ms {
        ApprovalStatus::Expired
    } else {
        approval.status
    };
    if status != ApprovalStatus::Approved {
        return Some(Refusal::new(
            "approvalId",
            format!("approval `{id}` is not approved: it is {}", status.as_str()),
        ));
    }
    let approved = &approval.request;
    if approved.action != record.action
        || approved.rule != record.rule
        || approved.policy_version != record.policy_version
    {
        return Some(Refusal::new(
            "approvalId",
            format!(
                "the action differs from the approved one: approval `{id}` is for {}, the report is {}",
                brief(approved),
                brief(record)
            ),
        ));
    }
    None
}

/// `record` as compact JSON without its `eventId`, at most 200 characters.
fn brief(record: &ActionRecord) -> String {
    const MAX: usize = 200;
    let record = ActionRecord {
        event_id: None,
        ..record.clone()
    };
    let json = serde_json::to_string(&record).unwrap_or_default();
    if json.chars().count() <= MAX {
        return format!("`{json}`");
    }
    let cut: String = json.chars().take(MAX).collect();
    format!("`{cut}...`")
}
