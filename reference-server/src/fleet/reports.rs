//! Agent reports (`POST /api/agents/:id/reports`): what an agent did or requests, and what the
//! server does with it. One workflow per kind of report:
//!
//! - a fleet-scope `block_ip` executed -> `fleet_block`: a fleet block pushed to the others
//!   (within the org's fleet-block budget, [`super::budgets`]; beyond it only recorded);
//! - an `approval_request` -> `approval_request`: a stored request awaiting an admin;
//! - a report with `approvalId` -> `approval_outcome`: the approval closed;
//! - an `alert` -> `alert`: deliveries queued to its channels;
//! - anything else -> `recorded`: the audit entry only.
//!
//! Before any of them: a repeated `reportId` is answered at once (no quota, no check); then the
//! agent's quotas ([`super::quotas`]: 429), the report's `approvalId`
//! ([`approvals::check_outcome`]) and the checks of what the report claims ([`super::checks`]):
//! 422, with one audit entry for the refusal; an approval request also needs room under the
//! agent's pending-approvals quota.
//!
//! Each writes the report's audit entry; with a `reportId` the entry carries the report's
//! receipt, in the same transaction as the effect, so a repeated report (a retry, an outbox
//! resending after a restart, two copies racing) is answered with the first answer and never
//! acted on twice.

use std::sync::Arc;
use std::time::Duration;

use policy_engine::policy::Budgets;
use policy_engine::protocol::{
    ApprovalStatus, Report, ReportAnswer, ReportId, ReportKind, ReportOutcome, time,
};
use policy_engine::{Action, ActionRecord, Scope};
use serde_json::{Value, json};

use super::approvals;
use super::audit;
use super::blocks;
use super::budgets;
use super::checks::{self, CheckError, NeverBlock, Refusal};
use super::notify::{Alert, Notifier};
use super::quotas::Quotas;
use super::streams::Publisher;
use super::views::{approval_view, block_view};
use crate::auth::random_hex;
use crate::clock;
use crate::error::ApiError;
use crate::store::records::target_ip;
use crate::store::{Approval, Finish, NewBlock, NewEntry, ReportReceipt, Store, StoreError};

/// How long report ids are remembered (a report resent later is acted on again).
pub const REPORT_RECEIPT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What handling a report needs.
#[derive(Debug, Clone, Copy)]
pub struct ReportContext<'a> {
    /// The store.
    pub store: &'a dyn Store,
    /// Pushes fleet blocks.
    pub publisher: &'a Publisher,
    /// Delivers alerts.
    pub notifier: &'a Arc<Notifier>,
    /// Deadline to decide on and execute an approval request.
    pub approval_ttl: Duration,
    /// The agents' quotas.
    pub quotas: &'a Quotas,
    /// Addresses never blocked fleet-wide.
    pub never_block: &'a NeverBlock,
}

/// The agent a report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reporter<'a> {
    /// Its id.
    pub agent_id: &'a str,
    /// Its org.
    pub org_id: &'a str,
}

/// Handles one report and returns the answer (`data` of the 201). A report whose `reportId`
/// this agent already sent gets the stored answer and changes nothing.
pub async fn receive(
    ctx: ReportContext<'_>,
    reporter: Reporter<'_>,
    report: Report,
) -> Result<Value, ApiError> {
    if let Some(report_id) = &report.report_id {
        if let Some(answer) = replayed(ctx.store, reporter.agent_id, report_id).await? {
            return Ok(answer);
        }
    }
    let size = serde_json::to_vec(&report).map_or(0, |bytes| bytes.len());
    ctx.quotas.admit(reporter.agent_id, size)?;
    // The approval first: whether the action may be one that needs an approval depends on it.
    let checked = async {
        approvals::check_outcome(
            ctx.store,
            reporter.agent_id,
            reporter.org_id,
            &report,
            clock::now_ms(),
        )
        .await?;
        checks::check(
            ctx.store,
            ctx.never_block,
            reporter.agent_id,
            reporter.org_id,
            &report.record,
            report.approval_id.is_some(),
        )
        .await
    };
    match checked.await {
        Ok(()) => {}
        Err(CheckError::Store(error)) => return Err(error.into()),
        Err(CheckError::Refused(refusal)) => return refuse(ctx, reporter, &report, refusal).await,
    }
    if kind(&report) == ReportKind::ApprovalRequest {
        let pending = ctx
            .store
            .pending_approvals(reporter.agent_id.to_owned())
            .await?;
        ctx.quotas.admit_approval(reporter.agent_id, pending)?;
    }
    let Some(report_id) = report.report_id.clone() else {
        return match act(ctx, reporter, &report).await {
            Ok(answer) => Ok(to_json(&answer)),
            Err(Handled::Failed(error)) => Err(error),
            Err(Handled::Refused(refusal)) => refuse(ctx, reporter, &report, refusal).await,
            Err(Handled::Duplicate) => Err(ApiError::internal(
                "a report without an id was taken for a duplicate",
            )),
        };
    };
    match act(ctx, reporter, &report).await {
        Ok(answer) => {
            let answer = to_json(&answer);
            ctx.store
                .set_report_answer(reporter.agent_id.to_owned(), report_id, answer.clone())
                .await?;
            Ok(answer)
        }
        // The same report arrived meanwhile (the agent resent it while this copy was handled):
        // this copy's transaction rolled back, the first one's answer stands.
        Err(Handled::Duplicate) => replayed(ctx.store, reporter.agent_id, &report_id)
            .await?
            .ok_or_else(|| ApiError::internal("a duplicate report has no receipt")),
        Err(Handled::Refused(refusal)) => refuse(ctx, reporter, &report, refusal).await,
        Err(Handled::Failed(error)) => Err(error),
    }
}

/// Refuses `report`: one audit entry, whatever is wrong with it (its fields are not repeated:
/// the refusal's path and message say what was refused), and the 422. Unless a copy of it (the
/// same `reportId`) was acted on meanwhile: that copy's answer is the answer (the copy that
/// closed an approval made this one's approval look already executed).
async fn refuse(
    ctx: ReportContext<'_>,
    reporter: Reporter<'_>,
    report: &Report,
    refusal: Refusal,
) -> Result<Value, ApiError> {
    if let Some(report_id) = &report.report_id {
        if let Some(answer) = replayed(ctx.store, reporter.agent_id, report_id).await? {
            return Ok(answer);
        }
    }
    tracing::info!(
        agent = reporter.agent_id,
        path = refusal.path.as_str(),
        reason = refusal.message.as_str(),
        "report refused"
    );
    let detail = json!({
        "path": refusal.path,
        "message": refusal.message,
        "reportId": report.report_id,
    });
    audit::record(
        ctx.store,
        report_entry(reporter, report, "refused_by_server", detail),
    )
    .await;
    Err(refusal.into())
}

/// How long a repeated report waits for the first copy's answer when the first copy's effect
/// is committed but its answer not yet stored (two copies racing); past it (the server stopped
/// in between) the answer is rebuilt from the receipt.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// The answer to a report the agent already sent, if it did: the stored one, waiting up to
/// [`ANSWER_WAIT`] for it while the first copy is still being answered, or (when the server
/// stopped between the effect and storing its answer) what was done.
async fn replayed(
    store: &dyn Store,
    agent_id: &str,
    report_id: &ReportId,
) -> Result<Option<Value>, StoreError> {
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    let mut pause = Duration::from_millis(2);
    loop {
        let Some(receipt) = store
            .report_receipt(agent_id.to_owned(), report_id.clone())
            .await?
        else {
            return Ok(None);
        };
        let now = tokio::time::Instant::now();
        if receipt.answer.is_some() || now >= deadline {
            tracing::info!(
                agent = agent_id,
                report = report_id.as_str(),
                kind = receipt.kind.as_str(),
                stored = receipt.answer.is_some(),
                "repeated report answered again"
            );
            return Ok(Some(receipt.answer.unwrap_or_else(|| {
                to_json(&ReportAnswer::of(receipt.kind, Some(receipt.report_id)))
            })));
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(now))).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn to_json(answer: &ReportAnswer) -> Value {
    // A report answer holds no maps with non-string keys: serializing cannot fail.
    serde_json::to_value(answer).unwrap_or(Value::Null)
}

/// Why a report was not handled.
enum Handled {
    /// Its id was received meanwhile; nothing was done.
    Duplicate,
    /// Refused while acting (the approval it closes was closed or expired meanwhile); nothing
    /// was done.
    Refused(Refusal),
    /// Any other failure.
    Failed(ApiError),
}

impl From<StoreError> for Handled {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::DuplicateReport { .. } => Self::Duplicate,
            other => Self::Failed(other.into()),
        }
    }
}

/// What the server does with `report`, decided before acting (its receipt records it).
pub fn kind(report: &Report) -> ReportKind {
    if report.approval_id.is_some() {
        return ReportKind::ApprovalOutcome;
    }
    match (&report.record.action, report.outcome()) {
        (
            Action::BlockIp {
                scope: Scope::Fleet,
                ..
            },
            ReportOutcome::Executed,
        ) => ReportKind::FleetBlock,
        (Action::ApprovalRequest { .. }, ReportOutcome::Requested) => ReportKind::ApprovalRequest,
        (Action::Alert { .. }, _) => ReportKind::Alert,
        _ => ReportKind::Recorded,
    }
}

async fn act(
    ctx: ReportContext<'_>,
    reporter: Reporter<'_>,
    report: &Report,
) -> Result<ReportAnswer, Handled> {
    let kind = kind(report);
    let entry = audit_entry(reporter, report, kind);
    let answer = ReportAnswer::of(kind, report.report_id.clone());
    match kind {
        ReportKind::FleetBlock => fleet_block(ctx, reporter, report, entry, answer).await,
        ReportKind::ApprovalRequest => approval_request(ctx, reporter, report, entry, answer).await,
        ReportKind::ApprovalOutcome => {
            approval_outcome(ctx, reporter, report, entry).await?;
            Ok(answer)
        }
        ReportKind::Alert => alert(ctx, reporter, report, entry, answer).await,
        ReportKind::Recorded => {
            recorded(ctx, entry).await?;
            Ok(answer)
        }
    }
}

/// The report's audit entry: the action, the reported outcome, the record and detail.
fn audit_entry(reporter: Reporter<'_>, report: &Report, kind: ReportKind) -> NewEntry {
    let detail = json!({
        "record": report.record,
        "detail": report.detail,
        "approvalId": report.approval_id,
    });
    NewEntry {
        receipt: report.report_id.clone().map(|report_id| ReportReceipt {
            agent_id: reporter.agent_id.to_owned(),
            report_id,
            kind,
            answer: None,
        }),
        ..report_entry(reporter, report, report.outcome().as_str(), detail)
    }
}

/// An audit entry about `report` by its agent, with `outcome` and `detail` and no receipt.
fn report_entry(reporter: Reporter<'_>, report: &Report, outcome: &str, detail: Value) -> NewEntry {
    NewEntry {
        org_id: reporter.org_id.to_owned(),
        agent_id: Some(reporter.agent_id.to_owned()),
        actor: reporter.agent_id.to_owned(),
        rule: u64::try_from(report.record.rule).ok(),
        policy_version: Some(report.record.policy_version),
        action: report.record.action.name().to_owned(),
        ip: target_ip(&report.record),
        outcome: outcome.to_owned(),
        detail: Some(detail),
        receipt: None,
    }
}

/// The outcome of an approved action (checked by [`approvals::check_outcome`]): closes the
/// approval (`executed` or `failed`) with the report's audit entry. When it was closed or
/// expired since the check (another report of it, the sweeper), nothing is written and the
/// report is refused as the check would refuse it now.
async fn approval_outcome(
    ctx: ReportContext<'_>,
    reporter: Reporter<'_>,
    report: &Report,
    entry: NewEntry,
) -> Result<(), Handled> {
    let Some(approval_id) = report.approval_id.clone() else {
        return Ok(());
    };
    let now_ms = clock::now_ms();
    let finish = Finish {
        id: approval_id.clone(),
        agent_id: reporter.agent_id.to_owned(),
        executed: report.outcome() == ReportOutcome::Executed,
        now_ms,
    };
    if ctx.store.finish_approval(finish, entry).await? {
        return Ok(());
    }
    let approval = ctx.store.approval(approval_id.clone()).await?;
    Err(Handled::Refused(
        approvals::outcome_refusal(
            &approval_id,
            approval.as_ref(),
            (reporter.agent_id, reporter.org_id),
            &report.record,
            now_ms,
        )
        .unwrap_or_else(|| {
            Refusal::new(
                "approvalId",
                format!("approval `{approval_id}` is not approved"),
            )
        }),
    ))
}

/// A fleet-scope block executed by the reporter: stored (or collapsed into the one in force)
/// and pushed to the other agents when it is new or later; beyond the org's fleet-block
/// budget only recorded (`fleet_budget_exceeded`, answered as `recorded`).
async fn fleet_block(
    ctx: ReportContext<'_>,
    reporter: Reporter<'_>,
    report: &Report,
    mut entry: NewEntry,
    answer: ReportAnswer,
) -> Result<ReportAnswer, Handled> {
    let Action::BlockIp { ip, duration, .. } = &report.record.action else {
        return Err(Handled::Failed(ApiError::internal(
            "a fleet block report without a block",
        )));
    };
    let limit = ctx
        .store
        .policy(reporter.org_id.to_owned(), report.record.policy_version)
        .await?
        .map(|stored| stored.policy.budgets.fleet_limit())
        .unwrap_or_else(|| Budgets::default().fleet_limit());
    if let Err(exceeded) = budgets::admit(ctx.store, reporter.org_id, *ip, limit).await? {
        let budget = exceeded.limit.describe();
        tracing::warn!(
            org = reporter.org_id,
            agent = reporter.agent_id,
            %ip,
            budget = budget.as_str(),
            "fleet block beyond the org's budget: recorded, not pushed"
        );
        entry.outcome = "fleet_budget_exceeded".to_owned();
        if let Some(detail) = entry.detail.as_mut().and_then(Value::as_object_mut) {
            detail.insert("fleetBudget".to_owned(), json!(budget));
        }
        if let Some(receipt) = entry.receipt.as_mut() {
            receipt.kind = ReportKind::Recorded;
        }
        recorded(ctx, entry).await?;
        return Ok(ReportAnswer::of(ReportKind::Recorded, answer.report_id));
    }
    let new = NewBlock {
        org_id: reporter.org_id.to_owned(),
        ip: *ip,
        duration: *duration,
        agent_id: reporter.agent_id.to_owned(),
        rule: u64::try_from(report.record.rule).unwrap_or_default(),
        policy_version: report.record.policy_version,
        now_ms: clock::now_ms(),
    };
    let recorded = blocks::record(ctx.store, ctx.publisher, new, entry).await?;
    Ok(ReportAnswer {
        block: Some(block_view(&recorded.upserted.block)),
        changed: Some(recorded.upserted.changed),
        broadcasted_to: Some(recorded.broadcasted_to),
        ..answer
    })
}

/// An action awaiting approval: stored as a pending request until [`ReportContext::approval_ttl`].
async fn approval_request(
    ctx: ReportContext<'_>,
    reporter: Reporter<'_>,
    report: &Report,
    mut entry: NewEntry,
    answer: ReportAnswer,
) -> Result<ReportAnswer, Handled> {
    let Action::ApprovalRequest { request } = &report.record.action else {
        return Err(Handled::Failed(ApiError::internal(
            "an approval request report without a request",
        )));
    };
    let now = clock::now_ms();
    let approval = Approval {
        id: format!("apr_{}", random_hex(8)),
        org_id: reporter.org_id.to_owned(),
        agent_id: reporter.agent_id.to_owned(),
        request: ActionRecord {
            action: (**request).clone(),
            rule: report.record.rule,
            policy_version: report.record.policy_version,
            event_id: report.record.event_id.clone(),
        },
        status: ApprovalStatus::Pending,
        created_ms: now,
        expires_ms: now.saturating_add(clock::millis(ctx.approval_ttl)),
        decided_ms: None,
        decided_by: None,
        reason: None,
    };
    if let Some(detail) = entry.detail.as_mut().and_then(Value::as_object_mut) {
        detail.insert("approvalId".to_owned(), json!(approval.id));
    }
    ctx.store.insert_approval(approval.clone(), entry).await?;
    tracing::info!(
        org = reporter.org_id,
        agent = reporter.agent_id,
        approval = approval.id.as_str(),
        "approval requested"
    );
    Ok(ReportAnswer {
        approval: Some(approval_view(&approval)),
        ..answer
    })
}

/// An alert: its audit entry (with its receipt and answer) and one queued delivery per
/// configured channel, in one transaction; the notifier's worker delivers them after. A client
/// gone before the answer, or a server stopped before delivering, loses no alert.
async fn alert(
    ctx: ReportContext<'_>,
    reporter: Reporter<'_>,
    report: &Report,
    mut entry: NewEntry,
    answer: ReportAnswer,
) -> Result<ReportAnswer, Handled> {
    let Action::Alert { channels, .. } = &report.record.action else {
        return Err(Handled::Failed(ApiError::internal(
            "an alert report without an alert",
        )));
    };
    let hostname = ctx
        .store
        .agent(reporter.agent_id.to_owned())
        .await?
        .map(|a| a.hostname)
        .unwrap_or_default();
    let alert = Alert {
        org_id: reporter.org_id.to_owned(),
        agent_id: reporter.agent_id.to_owned(),
        hostname,
        record: serde_json::to_value(&report.record).unwrap_or(Value::Null),
        channels: channels.clone(),
        received_at: time::format(&clock::now()),
    };
    let (deliveries, skipped) = ctx.notifier.plan(&alert);
    let answer = ReportAnswer {
        notified: Some(deliveries.iter().map(|d| d.channel.clone()).collect()),
        ..answer
    };
    if let Some(receipt) = entry.receipt.as_mut() {
        receipt.answer = Some(to_json(&answer));
    }
    let entries = std::iter::once(entry).chain(skipped).collect();
    ctx.store
        .insert_alert(entries, deliveries, clock::now())
        .await?;
    ctx.notifier.wake();
    Ok(answer)
}

/// The report's audit entry alone. Without a report id a failure is only logged (the audit
/// never fails a request); with one the entry carries the receipt, which must be stored
/// before the report is acknowledged.
async fn recorded(ctx: ReportContext<'_>, entry: NewEntry) -> Result<(), StoreError> {
    if entry.receipt.is_some() {
        audit::write(ctx.store, entry).await
    } else {
        audit::record(ctx.store, entry).await;
        Ok(())
    }
}
