//! `GET /api/events` (agent): the agent's event stream.

use std::sync::Arc;

use warp::Reply;

use super::Answer;
use crate::app::AppState;
use crate::fleet::streams;
use crate::http::filters::{AgentToken, Query};
use crate::transport::PeerAddr;

/// Opens the stream: the agent's current state first, then every change; a keep-alive comment
/// after each silence of the configured length.
pub async fn open(
    agent: AgentToken,
    _query: Query,
    peer: Option<PeerAddr>,
    state: Arc<AppState>,
) -> Answer {
    let (subscription, policy) = streams::open(
        &*state.store,
        &state.publisher,
        &agent.org_id,
        &agent.agent_id,
    )
    .await?;
    tracing::info!(
        agent = agent.agent_id.as_str(),
        org = agent.org_id.as_str(),
        peer = ?peer.map(|p| p.0),
        version = ?policy.map(|p| p.version.to_string()),
        "event stream opened"
    );
    let stream = warp::sse::keep_alive()
        .interval(state.hub.keep_alive())
        .stream(subscription);
    Ok(warp::sse::reply(stream).into_response())
}
