//! `GET /api/events` (agent): the agent's event stream.

use std::sync::Arc;

use std::time::Duration;

use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

use super::Answer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::fleet::changes::{Changes, Topic};
use crate::fleet::streams;
use crate::http::filters::{AgentToken, Query};
use crate::transport::{EventBody, PeerAddr};

/// Opens the stream: the agent's current state first, then every change; a keep-alive comment
/// after each silence of the configured length. `Last-Event-ID` (the version the agent runs)
/// spares it a policy it already has. Beyond the admission limits (a reconnect storm): 503
/// `busy` with `Retry-After`, before any work.
pub async fn open(
    agent: AgentToken,
    _query: Query,
    last_event_id: Option<String>,
    peer: Option<PeerAddr>,
    state: Arc<AppState>,
) -> Answer {
    let last_event_id = last_event_id.and_then(|id| id.trim().parse::<u64>().ok());
    let admitted = match state.admission.admit() {
        Ok(admitted) => admitted,
        Err(wait) => return Ok(busy(wait)),
    };
    let (subscription, policy) = streams::open(
        &*state.store,
        &state.publisher,
        &agent.org_id,
        &agent.agent_id,
        last_event_id,
    )
    .await?;
    drop(admitted);
    tracing::info!(
        agent = agent.agent_id.as_str(),
        org = agent.org_id.as_str(),
        peer = ?peer.map(|p| p.0),
        version = ?policy.map(|p| p.version.to_string()),
        "event stream opened"
    );
    // The agent is online while its stream is open: the console hears of both ends.
    state.publisher.changed(&agent.org_id, &[Topic::Agents]);
    let closed = ChangedOnDrop {
        changes: state.publisher.changes().clone(),
        org_id: agent.org_id,
    };
    Ok(EventBody::of_hub(subscription, state.hub.keep_alive())
        .holding(closed)
        .into_response())
}

/// 503 `busy` with `Retry-After`: too many streams opening (a fleet reconnecting at once).
fn busy(wait: Duration) -> Response {
    let seconds = wait.as_secs().max(1);
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "busy",
        message: format!("too many event streams opening; retry in {seconds} s"),
        path: None,
        errors: Vec::new(),
        retry_after: Some(seconds),
    }
    .into_response()
}

/// Tells the admin streams that an agent's stream closed, when it is dropped with the stream.
struct ChangedOnDrop {
    changes: Changes,
    org_id: String,
}

impl Drop for ChangedOnDrop {
    fn drop(&mut self) {
        self.changes.changed(&self.org_id, &[Topic::Agents]);
    }
}
