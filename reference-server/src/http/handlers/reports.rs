//! `POST /api/agents/:id/reports` (that agent).

use std::sync::Arc;

use policy_engine::protocol::{Report, ReportKind};
use serde_json::Value;
use warp::http::StatusCode;

use super::{Answer, ok};
use crate::app::AppState;
use crate::fleet::changes::Topic;
use crate::fleet::reports::{self, Reporter};
use crate::http::filters::{AgentToken, Query};

/// Reads the report strictly and hands it to the fleet: 201 with what the server did (the
/// first answer again for a repeated `reportId`).
pub async fn post(agent: AgentToken, _query: Query, body: Value, state: Arc<AppState>) -> Answer {
    let report = Report::from_value(&body)?;
    let reporter = Reporter {
        agent_id: &agent.agent_id,
        org_id: &agent.org_id,
    };
    let topics: &[Topic] = match reports::kind(&report) {
        ReportKind::ApprovalRequest | ReportKind::ApprovalOutcome => {
            &[Topic::Approvals, Topic::Audit]
        }
        _ => &[Topic::Audit],
    };
    let answer = reports::receive(state.reports(), reporter, report).await?;
    state.publisher.changed(&agent.org_id, topics);
    ok(StatusCode::CREATED, &answer)
}
