//! Stored records as the protocol shows them: policies (resolved for an agent), blocks and
//! their `block` events, approvals and their `approval` events. Pure conversions.

use chrono::{DateTime, Utc};
use policy_engine::policy::wire::RuleDocument;
use policy_engine::protocol::{
    ApprovalEvent, ApprovalView, BlockEvent, BlockView, PolicyEvent, PolicyView, ShadowEvent,
    SignedRules,
};
use policy_engine::{Action, ActionRecord, Policy, PolicyDuration, Scope};

use super::overrides::{self, Override};
use crate::clock;
use crate::store::{Approval, FleetBlock, ShadowRun, StoredOverrides, StoredPolicy};

/// A stored policy as `GET /api/policy/active` shows it; `POST /api/policy` adds
/// `broadcastedTo`.
pub fn policy_view(
    policy: &StoredPolicy,
    broadcasted_to: Option<usize>,
) -> PolicyView<RuleDocument> {
    PolicyView {
        id: policy.id.clone(),
        name: policy.policy.name.clone(),
        description: policy.policy.description.clone(),
        version: policy.version,
        rules: policy.policy.to_document().rules,
        budgets: budgets(policy),
        broadcasted_to,
        created_at: policy.created_at,
        signature: policy.signature.clone(),
    }
}

/// The `policy` event of `policy` for an agent with overrides `list`: the resolved rules, and
/// for a signed version the rules as signed with the ones `list` disables.
pub fn policy_event(
    policy: &StoredPolicy,
    agent_id: &str,
    list: &[Override],
) -> PolicyEvent<RuleDocument> {
    let signed = policy.signature.as_ref().map(|signature| SignedRules {
        rules: policy.policy.to_document().rules,
        signature: signature.clone(),
        disabled_rules: overrides::disabled_rules(list),
    });
    PolicyEvent {
        policy_id: Some(policy.id.clone()),
        version: policy.version,
        name: policy.policy.name.clone(),
        description: policy.policy.description.clone(),
        rules: resolved_rules(policy, agent_id, list),
        budgets: budgets(policy),
        created_at: Some(policy.created_at),
        signed,
        rollback_from: None,
    }
}

/// The policy's `budgets` as written, when it has some.
fn budgets(policy: &StoredPolicy) -> Option<serde_json::Value> {
    policy
        .policy
        .to_document()
        .budgets
        .and_then(|b| serde_json::to_value(b).ok())
}

/// The rules `agent_id` runs: `policy`'s with its overrides applied. Overrides that no longer
/// fit the version (a rule index gone, a value now invalid) are ignored with a warning: the
/// agent gets the version unmodified.
pub fn resolved_rules(
    policy: &StoredPolicy,
    agent_id: &str,
    list: &[Override],
) -> Vec<RuleDocument> {
    if !list.is_empty() {
        match overrides::resolve_rules(&policy.policy, list) {
            Ok(resolved) => return resolved,
            Err(error) => tracing::warn!(
                agent = agent_id,
                version = %policy.version,
                %error,
                "overrides do not fit this policy version; using it unmodified"
            ),
        }
    }
    policy.policy.to_document().rules
}

/// When an agent's resolved rules last changed: the later of the policy's creation and the
/// agent's last override change.
pub fn applied_at(policy: &StoredPolicy, overrides: Option<&StoredOverrides>) -> DateTime<Utc> {
    match overrides {
        Some(o) if o.updated_at > policy.created_at => o.updated_at,
        _ => policy.created_at,
    }
}

/// A stored block as `GET /api/blocks` and report answers show it.
pub fn block_view(block: &FleetBlock) -> BlockView {
    BlockView {
        ip: block.ip,
        duration: block.duration,
        expires_at: block.expires_ms.map(clock::from_ms),
        permanent: block.expires_ms.is_none(),
        agent_id: block.agent_id.clone(),
        rule: block.rule,
        policy_version: block.policy_version,
        reports: block.reports,
        created_at: block.created_at,
        updated_at: block.updated_at,
    }
}

/// The `block` event of `block` at `now_ms`: a host-scope `block_ip` for the time left (whole
/// seconds, rounded up), so every agent's block ends when the fleet block does whatever its
/// clock says; `None` when it has expired.
pub fn block_event(block: &FleetBlock, now_ms: i64) -> Option<BlockEvent> {
    let duration = match block.expires_ms {
        None => PolicyDuration::Permanent,
        Some(expires) if expires > now_ms => {
            let left_ms = u64::try_from(expires - now_ms).ok()?;
            PolicyDuration::from_secs(left_ms.div_ceil(1000))
        }
        Some(_) => return None,
    };
    Some(BlockEvent {
        ip: block.ip,
        expires_at: block.expires_ms.map(clock::from_ms),
        source_agent: block.agent_id.clone(),
        action: ActionRecord {
            action: Action::BlockIp {
                ip: block.ip,
                duration,
                scope: Scope::Host,
            },
            rule: block
                .rule
                .and_then(|r| usize::try_from(r).ok())
                .unwrap_or_default(),
            policy_version: block.policy_version.unwrap_or_default(),
            event_id: None,
        },
    })
}

/// A stored approval as the approval endpoints and report answers show it.
pub fn approval_view(approval: &Approval) -> ApprovalView {
    ApprovalView {
        id: approval.id.clone(),
        agent_id: approval.agent_id.clone(),
        status: approval.status,
        action: approval.request.clone(),
        created_at: clock::from_ms(approval.created_ms),
        expires_at: clock::from_ms(approval.expires_ms),
        decided_at: approval.decided_ms.map(clock::from_ms),
        decided_by: approval.decided_by.clone(),
        reason: approval.reason.clone(),
    }
}

/// The `approval` event of an approved request: execute it once, before its expiry.
pub fn approval_event(approval: &Approval) -> ApprovalEvent {
    ApprovalEvent {
        approval_id: approval.id.clone(),
        expires_at: clock::from_ms(approval.expires_ms),
        action: approval.request.clone(),
    }
}

/// The `shadow` event of a shadow run: its normalized document (without `org_id`), the rules
/// in the API page's field order as the `policy` event writes them.
pub fn shadow_event(run: &ShadowRun) -> ShadowEvent<RuleDocument> {
    let policy = shadow_policy(run);
    ShadowEvent {
        shadow: run.shadow,
        rules: policy.to_document().rules,
        name: policy.name,
        description: policy.description,
        created_at: Some(clock::from_ms(run.started_ms)),
    }
}

/// A shadow run's document as a policy: validated when the run started; a document that no
/// longer validates, after an upgrade, counts as a policy without rules (its name kept).
pub fn shadow_policy(run: &ShadowRun) -> Policy {
    Policy::from_value(&run.document).unwrap_or_else(|errors| {
        tracing::warn!(
            org = run.org_id.as_str(),
            shadow = run.shadow,
            %errors,
            "a shadow run's stored document no longer validates; it counts as no rules"
        );
        let text = |field: &str| {
            run.document
                .get(field)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        Policy {
            name: text("name").unwrap_or_default(),
            description: text("description"),
            org_id: None,
            rules: Vec::new(),
            budgets: Default::default(),
        }
    })
}
