//! Approval requests: stored with an expiry, listed, approved (pushed to the requesting agent)
//! or denied by an admin, expired by the sweeper, and closed by the agent's report of the
//! outcome (see [`super::reports`]). Every transition writes its audit entry in the same
//! transaction (the store's).

use policy_engine::protocol::{ApprovalStatus, ApprovalView};
use serde::Serialize;

use super::changes::Topic;
use super::streams::Publisher;
use super::views::approval_view;
use crate::auth::Principal;
use crate::clock;
use crate::error::ApiError;
use crate::store::{DecideError, Decision, Store};

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
