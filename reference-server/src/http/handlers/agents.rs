//! `/api/agents` and `/api/tokens`: enrollment, identity, heartbeats, the status list, org
//! admin tokens.

use std::sync::Arc;

use policy_engine::protocol::fields::{Fields, org_field};
use policy_engine::protocol::{EnrollRequest, HeartbeatRequest};
use serde_json::Value;
use warp::http::StatusCode;

use super::{Answer, ok};
use crate::app::AppState;
use crate::auth::{Principal, named_org};
use crate::error::ApiError;
use crate::fleet::agents;
use crate::fleet::changes::Topic;
use crate::http::filters::{AgentToken, Query, org_query};

/// `POST /api/agents/enroll` (admin): 201 with the agent's id and token.
pub async fn enroll(
    principal: Principal,
    query: Query,
    body: Value,
    state: Arc<AppState>,
) -> Answer {
    let request = EnrollRequest::from_value(&body)?;
    let org = principal.write_org(named_org(request.org_id.as_deref(), org_query(&query))?)?;
    let answer = agents::enroll(&*state.store, &state.tokens, org, request).await?;
    state.publisher.changed(&answer.org_id, &[Topic::Agents]);
    ok(StatusCode::CREATED, &answer)
}

/// `GET /api/agents/me` (agent): who the token is.
pub async fn me(agent: AgentToken, _query: Query, state: Arc<AppState>) -> Answer {
    ok(
        StatusCode::OK,
        &agents::identity(&*state.store, &agent.agent_id).await?,
    )
}

/// `POST /api/agents/:id/heartbeat` (that agent).
pub async fn heartbeat(
    agent: AgentToken,
    _query: Query,
    body: Value,
    state: Arc<AppState>,
) -> Answer {
    let request = HeartbeatRequest::from_value(&body)?;
    let answer = agents::heartbeat(
        &*state.store,
        &state.publisher,
        agent.agent_id,
        agent.org_id.clone(),
        request,
    )
    .await?;
    state.publisher.changed(&agent.org_id, &[Topic::Agents]);
    ok(StatusCode::OK, &answer)
}

/// `GET /api/agents` (admin): every agent of the org with its status.
pub async fn list(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    let list = agents::statuses(&*state.store, &state.hub, state.online_window, org).await?;
    ok(StatusCode::OK, &list)
}

/// `POST /api/tokens` (global admin): `{"role":"admin","org_id":"acme"}` -> an org admin token.
pub async fn create_token(
    principal: Principal,
    _query: Query,
    body: Value,
    state: Arc<AppState>,
) -> Answer {
    if principal != Principal::GlobalAdmin {
        return Err(ApiError::forbidden(
            "only the global admin token can create tokens",
        ));
    }
    let org_id = token_request(&body)?;
    let created = agents::create_admin_token(&*state.store, &state.tokens, org_id).await?;
    ok(StatusCode::CREATED, &created)
}

/// Reads `{"role":"admin","org_id":"..."}` (or `orgId`), strictly; returns the org.
fn token_request(body: &Value) -> Result<String, ApiError> {
    let mut fields = Fields::default();
    let org = match fields.object(body, "", &["role", "org_id", "orgId"]) {
        Some(map) => {
            if let Some(role) = fields.req_string(map, "", "role") {
                if role != "admin" {
                    fields.push(
                        "role",
                        format!(
                            "unknown role `{role}`, expected `admin` (agent tokens come from enrollment)"
                        ),
                    );
                }
            }
            let org = org_field(&mut fields, map, "");
            if org.is_none() {
                // Required: `null` is no org here (it became an org named "").
                match ["org_id", "orgId"]
                    .into_iter()
                    .find(|name| map.get(*name).is_some_and(Value::is_null))
                {
                    Some(name) => fields.push(name, "expected an org id, found `null`"),
                    None if !map.contains_key("org_id") && !map.contains_key("orgId") => {
                        fields.push("org_id", "missing required field `org_id`")
                    }
                    // Given and refused: its error is reported already.
                    None => {}
                }
            }
            org
        }
        None => None,
    };
    fields.finish()?;
    org.ok_or_else(|| ApiError::invalid("org_id", "missing required field `org_id`"))
}
