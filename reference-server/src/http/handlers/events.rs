//! `GET /api/events` (agent): the agent's event stream.

use std::sync::Arc;

use futures_util::StreamExt;
use warp::Reply;

use super::Answer;
use crate::app::AppState;
use crate::fleet::changes::{Changes, Topic};
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
    // The agent is online while its stream is open: the console hears of both ends.
    state.publisher.changed(&agent.org_id, &[Topic::Agents]);
    let closed = ChangedOnDrop {
        changes: state.publisher.changes().clone(),
        org_id: agent.org_id,
    };
    let subscription = subscription.map(move |event| {
        let _held = &closed;
        event
    });
    let stream = warp::sse::keep_alive()
        .interval(state.hub.keep_alive())
        .stream(subscription);
    Ok(warp::sse::reply(stream).into_response())
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
