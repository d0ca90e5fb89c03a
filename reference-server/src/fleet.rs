//! Handlers of the fleet loop: agent reports, fleet blocks, approvals and the audit trail, plus
//! the frames a new event stream gets after its policy and the approval expiry sweeper.

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Buf;
use futures_util::Stream;
use policy_engine::protocol::{
    ApprovalView, BlockView, FleetEvent, Report, ReportAnswer, ReportId, ReportKind, ReportOutcome,
    UnblockEvent,
};
use policy_engine::{Action, ActionRecord, Scope};
use serde::Serialize;
use serde_json::{Value, json};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::AppState;
use crate::approvals::{self, Approval, DecideError, Status};
use crate::audit::{self, NewEntry};
use crate::auth::{Principal, random_hex};
use crate::blocks::{self, NewBlock};
use crate::body::{Fields, parse_json};
use crate::error::ApiError;
use crate::filters::Query;
use crate::handlers::{Result, authenticate, org_query, read_body, read_json, respond};
use crate::hub::Frame;
use crate::models::{now_rfc3339, ok_reply};
use crate::notify::{self, Alert};
use crate::store::{ReportReceipt, StoreError};

/// Default and largest page of `GET /api/audit` and `GET /api/approvals`.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// How long the server remembers report ids (a report resent later is acted on again).
pub const REPORT_RECEIPT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The name shown as `actor` in the audit and `decidedBy`/`by` in fleet answers.
pub(crate) fn actor(principal: &Principal) -> String {
    match principal {
        Principal::GlobalAdmin => "admin".to_owned(),
        Principal::OrgAdmin { org_id } => format!("admin:{org_id}"),
        Principal::Agent { agent_id, .. } => agent_id.clone(),
    }
}

/// `POST /api/agents/:id/reports`
pub async fn post_report<S, B>(
    id: String,
    state: Arc<AppState>,
    headers: HeaderMap,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            let org = principal.require_agent(&id, "reports")?;
            let value = read_json(&headers, body).await?;
            let report = Report::from_value(&value)?;
            let answer = match &report.report_id {
                Some(report_id) => {
                    match replayed(&state, &id, report_id).await? {
                        Some(answer) => answer,
                        None => {
                            let report_id = report_id.clone();
                            match handle_report(&state, &org, &id, report).await {
                                Ok(answer) => {
                                    let json = serde_json::to_value(&answer)
                                        .map_err(ApiError::internal)?;
                                    state
                                        .store
                                        .set_report_answer(id.clone(), report_id, json.clone())
                                        .await?;
                                    json
                                }
                                // Received meanwhile (the agent resent while the first was
                                // being handled): this one changed nothing.
                                Err(Handled::Duplicate) => {
                                    replayed(&state, &id, &report_id).await?.ok_or_else(|| {
                                        ApiError::internal("a duplicate report has no receipt")
                                    })?
                                }
                                Err(Handled::Failed(error)) => return Err(error),
                            }
                        }
                    }
                }
                None => match handle_report(&state, &org, &id, report).await {
                    Ok(answer) => serde_json::to_value(&answer).map_err(ApiError::internal)?,
                    Err(Handled::Failed(error)) => return Err(error),
                    Err(Handled::Duplicate) => {
                        return Err(ApiError::internal("a report without id was a duplicate"));
                    }
                },
            };
            Ok(ok_reply(StatusCode::CREATED, &answer))
        }
        .await,
    )
}

/// The answer to a report this agent already sent, if it did: the stored one, or (when the
/// server stopped between the report's effect and its answer) what was done.
async fn replayed(state: &AppState, agent_id: &str, report_id: &ReportId) -> Result<Option<Value>> {
    let receipt = state
        .store
        .report_receipt(agent_id.to_owned(), report_id.clone())
        .await?;
    Ok(receipt.map(|receipt| {
        tracing::info!(agent = agent_id, report = %report_id, kind = receipt.kind.as_str(), "repeated report answered again");
        receipt.answer.unwrap_or_else(|| {
            serde_json::to_value(ReportAnswer::of(receipt.kind, Some(receipt.report_id)))
                .unwrap_or(Value::Null)
        })
    }))
}

/// Why a report was not handled.
enum Handled {
    /// The report id was received meanwhile; nothing was done.
    Duplicate,
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

impl From<ApiError> for Handled {
    fn from(error: ApiError) -> Self {
        Self::Failed(error)
    }
}

/// The kind of answer a report gets, decided before acting (its receipt records it).
fn report_kind(report: &Report) -> ReportKind {
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

async fn handle_report(
    state: &Arc<AppState>,
    org: &str,
    agent_id: &str,
    report: Report,
) -> std::result::Result<ReportAnswer, Handled> {
    let kind = report_kind(&report);
    let outcome = report.outcome();
    let record_json = serde_json::to_value(&report.record).unwrap_or(Value::Null);
    let report_id = report.report_id.clone();
    let entry = NewEntry {
        org_id: org.to_owned(),
        agent_id: Some(agent_id.to_owned()),
        actor: agent_id.to_owned(),
        rule: u64::try_from(report.record.rule).ok(),
        policy_version: Some(report.record.policy_version.to_string()),
        action: report.record.action.name().to_owned(),
        ip: approvals::target_ip(&report.record),
        outcome: outcome.as_str().to_owned(),
        detail: Some(json!({
            "record": record_json,
            "detail": report.detail,
            "approvalId": report.approval_id,
        })),
        receipt: report_id.clone().map(|report_id| ReportReceipt {
            agent_id: agent_id.to_owned(),
            report_id,
            kind,
            answer: None,
        }),
    };
    let answer = ReportAnswer::of(kind, report_id);
    let now = blocks::now_ms();
    if let Some(approval_id) = &report.approval_id {
        let counted = approvals::finish(
            &state.store,
            approval_id.clone(),
            agent_id.to_owned(),
            outcome == ReportOutcome::Executed,
            now,
            entry,
        )
        .await?;
        if !counted {
            tracing::warn!(agent = agent_id, approval = %approval_id, "outcome of an approval that is not approved for this agent");
        }
        return Ok(answer);
    }
    match (kind, &report.record.action) {
        (ReportKind::FleetBlock, Action::BlockIp { ip, duration, .. }) => {
            let new = NewBlock {
                org_id: org.to_owned(),
                ip: *ip,
                duration: *duration,
                agent_id: agent_id.to_owned(),
                rule: u64::try_from(report.record.rule).unwrap_or_default(),
                policy_version: report.record.policy_version,
                now_ms: now,
            };
            let guard = state.publish.lock().await;
            let upserted = blocks::upsert(&state.store, new, entry).await?;
            let delivery = if upserted.changed {
                blocks::event(&upserted.block, blocks::now_ms()).map(|event| {
                    state.hub.send_org(
                        org,
                        &Frame::fleet(&FleetEvent::Block(event)),
                        Some(agent_id),
                    )
                })
            } else {
                None
            };
            drop(guard);
            tracing::info!(
                org,
                agent = agent_id,
                ip = %upserted.block.ip,
                changed = upserted.changed,
                broadcasted_to = delivery.map_or(0, |d| d.queued),
                "fleet block"
            );
            Ok(ReportAnswer {
                block: Some(blocks::view(&upserted.block)),
                changed: Some(upserted.changed),
                broadcasted_to: Some(delivery.map_or(0, |d| d.queued)),
                ..answer
            })
        }
        (ReportKind::ApprovalRequest, Action::ApprovalRequest { request }) => {
            let ttl = i64::try_from(state.approval_ttl.as_millis()).unwrap_or(i64::MAX);
            let approval = Approval {
                id: format!("apr_{}", random_hex(8)),
                org_id: org.to_owned(),
                agent_id: agent_id.to_owned(),
                request: ActionRecord {
                    action: (**request).clone(),
                    rule: report.record.rule,
                    policy_version: report.record.policy_version,
                    event_id: report.record.event_id.clone(),
                },
                status: Status::Pending,
                created_ms: now,
                expires_ms: now.saturating_add(ttl),
                decided_ms: None,
                decided_by: None,
                reason: None,
            };
            let mut entry = entry;
            if let Some(detail) = entry.detail.as_mut().and_then(Value::as_object_mut) {
                detail.insert("approvalId".to_owned(), json!(approval.id));
            }
            approvals::insert(&state.store, approval.clone(), entry).await?;
            tracing::info!(org, agent = agent_id, approval = %approval.id, "approval requested");
            Ok(ReportAnswer {
                approval: Some(approvals::view(&approval)),
                ..answer
            })
        }
        (ReportKind::Alert, Action::Alert { channels, .. }) => {
            let channels = channels.clone();
            record_report_entry(state, entry).await?;
            let hostname = state
                .store
                .agent(agent_id.to_owned())
                .await?
                .map(|a| a.hostname)
                .unwrap_or_default();
            let alert = Alert {
                org_id: org.to_owned(),
                agent_id: agent_id.to_owned(),
                hostname,
                record: record_json,
                channels,
                received_at: now_rfc3339(),
            };
            let notified = notify::dispatch(state, alert).await;
            Ok(ReportAnswer {
                notified: Some(notified),
                ..answer
            })
        }
        _ => {
            record_report_entry(state, entry).await?;
            Ok(answer)
        }
    }
}

/// Writes the audit entry of a report. Without a report id a failure is only logged (the
/// audit never fails a request); with one the entry carries the receipt, which must be stored
/// before the report is acknowledged.
async fn record_report_entry(
    state: &AppState,
    entry: NewEntry,
) -> std::result::Result<(), Handled> {
    if entry.receipt.is_some() {
        audit::write(&state.store, entry).await?;
    } else {
        audit::record(&state.store, entry).await;
    }
    Ok(())
}

/// `GET /api/blocks`
pub async fn list_blocks(state: Arc<AppState>, headers: HeaderMap, query: Query) -> Response {
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            let org = principal.read_org(org_query(&query))?;
            let list = blocks::active(&state.store, org, blocks::now_ms()).await?;
            let views: Vec<BlockView> = list.iter().map(blocks::view).collect();
            Ok(ok_reply(StatusCode::OK, &views))
        }
        .await,
    )
}

/// The answer to `DELETE /api/blocks/:ip`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Unblocked {
    ip: IpAddr,
    block: BlockView,
    broadcasted_to: usize,
}

/// `DELETE /api/blocks/:ip`
pub async fn delete_block(
    ip: String,
    state: Arc<AppState>,
    headers: HeaderMap,
    query: Query,
) -> Response {
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            principal.require_admin()?;
            let org = principal.read_org(org_query(&query))?;
            let decoded = percent_decode(&ip);
            let addr: IpAddr = decoded
                .parse()
                .map_err(|_| ApiError::bad_request(format!("`{decoded}` is not an IP address")))?;
            let by = actor(&principal);
            let entry = NewEntry {
                org_id: org.clone(),
                agent_id: None,
                actor: by.clone(),
                action: "unblock".to_owned(),
                ip: Some(addr.to_string()),
                outcome: "lifted".to_owned(),
                ..NewEntry::default()
            };
            let guard = state.publish.lock().await;
            let removed = blocks::remove(&state.store, org.clone(), addr, blocks::now_ms(), entry)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!("no fleet block on `{addr}` in org `{org}`"))
                })?;
            let event = FleetEvent::Unblock(UnblockEvent { ip: addr, by });
            let delivery = state.hub.send_org(&org, &Frame::fleet(&event), None);
            drop(guard);
            tracing::info!(org, ip = %addr, broadcasted_to = delivery.queued, "fleet block lifted");
            Ok(ok_reply(
                StatusCode::OK,
                &Unblocked {
                    ip: addr,
                    block: blocks::view(&removed),
                    broadcasted_to: delivery.queued,
                },
            ))
        }
        .await,
    )
}

/// `GET /api/approvals`
pub async fn list_approvals(state: Arc<AppState>, headers: HeaderMap, query: Query) -> Response {
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            principal.require_admin()?;
            let org = principal.read_org(org_query(&query))?;
            let status = match query.get("status").map(String::as_str) {
                None | Some("all") => None,
                Some(name) => Some(Status::parse(name).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid query parameter `status`: unknown status `{name}`, expected \
                         `pending`, `approved`, `denied`, `expired`, `executed`, `failed` or `all`"
                    ))
                })?),
            };
            let limit = page_limit(&query)?;
            approvals::expire(&state.store, blocks::now_ms()).await?;
            let list = approvals::list(&state.store, org, status, limit).await?;
            let views: Vec<ApprovalView> = list.iter().map(approvals::view).collect();
            Ok(ok_reply(StatusCode::OK, &views))
        }
        .await,
    )
}

/// The answer to the decision endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Decided {
    #[serde(flatten)]
    approval: ApprovalView,
    /// Streams of the requesting agent the `approval` event was queued to (approve only).
    #[serde(skip_serializing_if = "Option::is_none")]
    broadcasted_to: Option<usize>,
}

/// `POST /api/approvals/:id/approve` and `/deny`
pub async fn decide<S, B>(
    id: String,
    decision: String,
    state: Arc<AppState>,
    headers: HeaderMap,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    respond(
        async {
            let approve = match decision.as_str() {
                "approve" => true,
                "deny" => false,
                _ => return Err(ApiError::not_found("no such endpoint")),
            };
            let principal = authenticate(&state, &headers)?;
            principal.require_admin()?;
            let body = read_body(&headers, body).await?;
            let reason = if body.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                let value = parse_json(&body)?;
                let mut fields = Fields::default();
                let reason = fields
                    .object(&value, "", &["reason"])
                    .and_then(|map| fields.opt_string(map, "", "reason"));
                fields.finish()?;
                reason
            };
            let org = match &principal {
                Principal::GlobalAdmin => None,
                Principal::OrgAdmin { org_id } | Principal::Agent { org_id, .. } => {
                    Some(org_id.clone())
                }
            };
            let guard = state.publish.lock().await;
            let decided = approvals::decide(
                &state.store,
                id.clone(),
                org,
                approve,
                actor(&principal),
                reason,
                blocks::now_ms(),
            )
            .await?;
            let approval = match decided {
                Ok(approval) => approval,
                Err(DecideError::NotFound) => {
                    return Err(ApiError::not_found(format!("unknown approval `{id}`")));
                }
                Err(DecideError::OtherOrg(other)) => {
                    return Err(principal.check_org(&other).err().unwrap_or_else(|| {
                        ApiError::forbidden("this approval belongs to another org")
                    }));
                }
                Err(DecideError::NotPending(approval)) => {
                    return Err(ApiError::conflict(format!(
                        "approval `{id}` is {}, not pending",
                        approval.status.as_str()
                    )));
                }
            };
            let delivery = approve.then(|| {
                state.hub.send_agent(
                    &approval.org_id,
                    &approval.agent_id,
                    &Frame::fleet(&FleetEvent::Approval(approvals::event(&approval))),
                )
            });
            drop(guard);
            tracing::info!(
                approval = %approval.id,
                agent = %approval.agent_id,
                status = approval.status.as_str(),
                "approval decided"
            );
            Ok(ok_reply(
                StatusCode::OK,
                &Decided {
                    approval: approvals::view(&approval),
                    broadcasted_to: delivery.map(|d| d.queued),
                },
            ))
        }
        .await,
    )
}

/// `GET /api/audit`
pub async fn get_audit(state: Arc<AppState>, headers: HeaderMap, query: Query) -> Response {
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            principal.require_admin()?;
            let org = principal.read_org(org_query(&query))?;
            let known = [
                "org_id", "orgId", "agent", "ip", "action", "from", "to", "limit", "cursor",
            ];
            if let Some(unknown) = query.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{unknown}`, expected one of `agent`, `ip`, \
                     `action`, `from`, `to`, `limit`, `cursor`, `org_id`"
                )));
            }
            let ip = query
                .get("ip")
                .map(|ip| {
                    ip.parse::<IpAddr>().map(|a| a.to_string()).map_err(|_| {
                        ApiError::bad_request(format!(
                            "invalid query parameter `ip`: `{ip}` is not an IP address"
                        ))
                    })
                })
                .transpose()?;
            let filter = audit::Filter {
                org_id: org,
                agent_id: query.get("agent").cloned(),
                ip,
                action: query.get("action").cloned(),
                from: time_param(&query, "from")?,
                to: time_param(&query, "to")?,
                before_id: query
                    .get("cursor")
                    .map(|c| {
                        c.parse::<i64>().map_err(|_| {
                            ApiError::bad_request(format!(
                                "invalid query parameter `cursor`: expected a number, found `{c}`"
                            ))
                        })
                    })
                    .transpose()?,
                limit: page_limit(&query)?,
            };
            let page = audit::query(&state.store, filter).await?;
            Ok(ok_reply(StatusCode::OK, &page))
        }
        .await,
    )
}

fn page_limit(query: &Query) -> Result<u32> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "invalid query parameter `limit`: expected 1 to {MAX_PAGE}, found `{text}`"
            ))),
        },
    }
}

/// An RFC 3339 time parameter, normalized to the stored form (UTC, milliseconds) so that text
/// comparison is time comparison.
fn time_param(query: &Query, name: &str) -> Result<Option<String>> {
    query
        .get(name)
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| {
                    t.with_timezone(&chrono::Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                })
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "invalid query parameter `{name}`: `{text}` is not an RFC 3339 time ({e})"
                    ))
                })
        })
        .transpose()
}

/// IPv6 addresses in a path arrive percent-encoded (`%3A` for `:`).
fn percent_decode(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The fleet frames a new stream of `agent_id` gets right after its policy: every block of its
/// org still in force (reported by any agent: a restarted reporter needs them too), then its
/// approved requests not yet executed. Call under the publish lock.
pub async fn initial_frames(state: &AppState, org_id: &str, agent_id: &str) -> Result<Vec<Frame>> {
    let now = blocks::now_ms();
    let mut frames = Vec::new();
    for block in blocks::active(&state.store, org_id.to_owned(), now).await? {
        if let Some(event) = blocks::event(&block, now) {
            frames.push(Frame::fleet(&FleetEvent::Block(event)));
        }
    }
    for approval in approvals::approved_for(&state.store, agent_id.to_owned(), now).await? {
        frames.push(Frame::fleet(&FleetEvent::Approval(approvals::event(
            &approval,
        ))));
    }
    Ok(frames)
}

/// Marks expired approval requests every `every` until the server is gone.
pub fn spawn_sweeper(state: Weak<AppState>, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
        loop {
            ticks.tick().await;
            let Some(state) = state.upgrade() else { break };
            match approvals::expire(&state.store, blocks::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "approval requests expired"),
                Err(StoreError::Closed) => break,
                Err(error) => tracing::warn!(%error, "cannot expire approval requests"),
            }
            let ttl = i64::try_from(REPORT_RECEIPT_TTL.as_millis()).unwrap_or(i64::MAX);
            let before = blocks::now_ms().saturating_sub(ttl);
            match state.store.prune_report_receipts(before).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(forgotten = n, "old report ids forgotten"),
                Err(StoreError::Closed) => break,
                Err(error) => tracing::warn!(%error, "cannot forget old report ids"),
            }
        }
    });
}
