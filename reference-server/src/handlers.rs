//! Request handlers: authenticate, read and validate the body, act on the store and the hub,
//! answer in the API's shapes. Each returns a complete response, errors included.

use std::sync::Arc;

use bytes::Buf;
use futures_util::Stream;
use policy_engine::Policy;
use policy_engine::policy::wire::RuleDocument;
use warp::Reply;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::audit::{self, NewEntry};
use crate::auth::{Principal, TokenHash, generate_token, random_hex};
use crate::body::{Fields, join_key, org_field, parse_json, read_limited};
use crate::error::ApiError;
use crate::filters::{Query, authorization, content_length};
use crate::fleet::actor;
use crate::hub::Frame;
use crate::models::{AgentStatus, TokenCreated, now_rfc3339, ok_reply, policy_view};
use crate::notify;
use crate::overrides::{self, Override};
use crate::serve::PeerAddr;
use crate::store::{AgentRecord, StoreError, StoredOverrides, StoredPolicy};
use crate::{AppState, MAX_BODY_BYTES};
use chrono::{DateTime, Utc};
use policy_engine::protocol::{
    AgentIdentity, AgentPolicyView, EnrollAnswer, EnrollRequest, HeartbeatAnswer, HeartbeatRequest,
};

pub(crate) type Result<T, E = ApiError> = std::result::Result<T, E>;

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::internal(error)
    }
}

pub(crate) fn respond(result: Result<Response>) -> Response {
    result.unwrap_or_else(|error| error.to_response())
}

pub(crate) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal> {
    state.tokens.authenticate(authorization(headers))
}

pub(crate) async fn read_body<S, B>(headers: &HeaderMap, body: S) -> Result<bytes::Bytes>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    read_limited(content_length(headers), body, MAX_BODY_BYTES).await
}

/// Reads a body (1 MiB limit) and parses it as strict JSON.
pub(crate) async fn read_json<S, B>(headers: &HeaderMap, body: S) -> Result<serde_json::Value>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    parse_json(&read_body(headers, body).await?)
}

pub(crate) fn org_query(query: &Query) -> Option<&str> {
    query
        .get("org_id")
        .or_else(|| query.get("orgId"))
        .map(String::as_str)
}

/// `POST /api/policy`
pub async fn post_policy<S, B>(
    state: Arc<AppState>,
    headers: HeaderMap,
    query: Query,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            principal.require_admin()?;
            let body = read_body(&headers, body).await?;
            let policy = Policy::from_json(&body).map_err(ApiError::from_policy)?;
            let unknown_channels = notify::check_policy(state.notify.as_ref(), &policy);
            if !unknown_channels.is_empty() {
                return Err(ApiError::from_validation(unknown_channels));
            }
            let org = principal.write_org(policy.org_id.as_deref().or(org_query(&query)))?;
            let guard = state.publish.lock().await;
            let stored = state
                .store
                .insert_policy(
                    org,
                    Arc::new(policy),
                    format!("pol_{}", random_hex(8)),
                    Utc::now(),
                )
                .await?;
            let delivery = state.hub.broadcast(&stored);
            drop(guard);
            audit::record(
                &state.store,
                NewEntry {
                    org_id: stored.org_id.clone(),
                    actor: actor(&principal),
                    policy_version: Some(stored.version.to_string()),
                    action: "policy_created".to_owned(),
                    outcome: "stored".to_owned(),
                    detail: Some(serde_json::json!({
                        "policyId": stored.id,
                        "name": stored.policy.name,
                        "broadcastedTo": delivery.queued,
                    })),
                    ..NewEntry::default()
                },
            )
            .await;
            tracing::info!(
                org = %stored.org_id,
                version = %stored.version,
                broadcasted_to = delivery.queued,
                dropped = delivery.dropped,
                "broadcast policy"
            );
            Ok(ok_reply(
                StatusCode::CREATED,
                &policy_view(&stored, Some(delivery.queued)),
            ))
        }
        .await,
    )
}

/// `GET /api/policy/active`
pub async fn active_policy(state: Arc<AppState>, headers: HeaderMap, query: Query) -> Response {
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            let org = principal.read_org(org_query(&query))?;
            let policy = latest(&state, &org).await?;
            Ok(ok_reply(StatusCode::OK, &policy_view(&policy, None)))
        }
        .await,
    )
}

/// `GET /api/policy/agent/:id`
pub async fn agent_policy(id: String, state: Arc<AppState>, headers: HeaderMap) -> Response {
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            let agent = visible_agent(&state, &principal, &id).await?;
            let policy = latest(&state, &agent.org_id).await?;
            let stored = state.store.overrides(agent.id.clone()).await?;
            let list = stored_list(stored.as_ref());
            let frame_rules = resolve(&policy, &agent.id, &list);
            Ok(ok_reply(
                StatusCode::OK,
                &AgentPolicyView {
                    agent_id: agent.id,
                    policy_version: policy.version,
                    rules: frame_rules,
                    applied_at: applied_at(&policy, stored.as_ref()),
                    overrides: None,
                    broadcasted_to: None,
                },
            ))
        }
        .await,
    )
}

/// `PUT /api/policy/agent/:id/overrides`
pub async fn put_overrides<S, B>(
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
            principal.require_admin()?;
            let agent = visible_agent(&state, &principal, &id).await?;
            let value = read_json(&headers, body).await?;
            let guard = state.publish.lock().await;
            let policy = state
                .store
                .latest_policy(agent.org_id.clone())
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "no policy in org `{}`; overrides refer to the rules of its active policy",
                        agent.org_id
                    ))
                })?;
            let list = overrides::parse(&value, policy.policy.rules.len())?;
            let resolved = overrides::apply(&policy.policy.to_json_value(), &list)?;
            overrides::check_channels(state.notify.as_ref(), &resolved, &list)?;
            let rules = resolved.to_document().rules;
            let stored = StoredOverrides {
                list: overrides::to_value(&list),
                updated_at: Utc::now(),
            };
            state
                .store
                .set_overrides(agent.id.clone(), stored.clone())
                .await?;
            let frame = Frame::for_agent(&policy, &agent.id, &list);
            let delivery =
                state
                    .hub
                    .update_agent(&agent.org_id, &agent.id, Arc::new(list), Some(frame));
            drop(guard);
            audit::record(
                &state.store,
                NewEntry {
                    org_id: agent.org_id.clone(),
                    agent_id: Some(agent.id.clone()),
                    actor: actor(&principal),
                    policy_version: Some(policy.version.to_string()),
                    action: "overrides_set".to_owned(),
                    outcome: "stored".to_owned(),
                    detail: Some(serde_json::json!({ "overrides": stored.list })),
                    ..NewEntry::default()
                },
            )
            .await;
            tracing::info!(
                agent = %agent.id,
                version = %policy.version,
                broadcasted_to = delivery.queued,
                "broadcast overrides"
            );
            Ok(ok_reply(
                StatusCode::OK,
                &AgentPolicyView {
                    agent_id: agent.id,
                    policy_version: policy.version,
                    rules,
                    applied_at: applied_at(&policy, Some(&stored)),
                    overrides: Some(stored.list),
                    broadcasted_to: Some(delivery.queued),
                },
            ))
        }
        .await,
    )
}

/// `POST /api/agents/enroll`
pub async fn enroll<S, B>(
    state: Arc<AppState>,
    headers: HeaderMap,
    query: Query,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            principal.require_admin()?;
            let request = EnrollRequest::from_value(&read_json(&headers, body).await?)?;
            let org = principal.write_org(request.org_id.as_deref().or(org_query(&query)))?;
            let hostname = request.hostname;
            let token = generate_token("agt");
            let hash = TokenHash::of(&token);
            let agent = state
                .store
                .insert_agent(
                    AgentRecord {
                        id: format!("agent-{}", random_hex(6)),
                        org_id: org,
                        hostname,
                        enrolled_at: now_rfc3339(),
                        last_seen: None,
                        policy_version: None,
                        last_error: None,
                    },
                    hash,
                )
                .await?;
            state.tokens.insert(
                hash,
                Principal::Agent {
                    agent_id: agent.id.clone(),
                    org_id: agent.org_id.clone(),
                },
            );
            tracing::info!(agent = %agent.id, org = %agent.org_id, hostname = %agent.hostname, "enrolled agent");
            Ok(ok_reply(
                StatusCode::CREATED,
                &EnrollAnswer {
                    agent_id: agent.id,
                    token,
                    org_id: agent.org_id,
                    hostname: agent.hostname,
                },
            ))
        }
        .await,
    )
}

/// `POST /api/agents/:id/heartbeat`
pub async fn heartbeat<S, B>(
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
            let org = principal.require_agent(&id, "heartbeat")?;
            let request = HeartbeatRequest::from_value(&read_json(&headers, body).await?)?;
            let (version, last_error) = (request.policy_version, request.last_error);
            let current = state.store.latest_policy(org).await?.map(|p| p.version);
            state
                .store
                .heartbeat(
                    id.clone(),
                    version.map(|v| v.to_string()),
                    last_error,
                    now_rfc3339(),
                )
                .await?;
            Ok(ok_reply(
                StatusCode::OK,
                &HeartbeatAnswer {
                    agent_id: id,
                    policy_version: version,
                    current_policy_version: current,
                    outdated: current.is_some() && version != current,
                },
            ))
        }
        .await,
    )
}

/// `GET /api/agents/me`: who an agent token is.
pub async fn me(state: Arc<AppState>, headers: HeaderMap) -> Response {
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            let Principal::Agent { agent_id, .. } = principal else {
                return Err(ApiError::forbidden(
                    "this endpoint needs an agent token (it says which agent the token is)",
                ));
            };
            let agent = state
                .store
                .agent(agent_id.clone())
                .await?
                .ok_or_else(|| ApiError::not_found(format!("unknown agent `{agent_id}`")))?;
            Ok(ok_reply(
                StatusCode::OK,
                &AgentIdentity {
                    agent_id: agent.id,
                    org_id: agent.org_id,
                    hostname: agent.hostname,
                },
            ))
        }
        .await,
    )
}

/// `GET /api/agents`
pub async fn list_agents(state: Arc<AppState>, headers: HeaderMap, query: Query) -> Response {
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            principal.require_admin()?;
            let org = principal.read_org(org_query(&query))?;
            let current = state
                .store
                .latest_policy(org.clone())
                .await?
                .map(|p| p.version.to_string());
            let agents = state.store.agents(org.clone()).await?;
            let streaming = state.hub.online_agents(&org);
            let now = chrono::Utc::now();
            let window = chrono::Duration::from_std(state.online_window).unwrap_or_default();
            let list: Vec<AgentStatus> = agents
                .into_iter()
                .map(|agent| {
                    let recent = agent
                        .last_seen
                        .as_deref()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| now.signed_duration_since(t) <= window);
                    AgentStatus {
                        online: streaming.contains(&agent.id) || recent,
                        outdated: current.is_some() && agent.policy_version != current,
                        agent_id: agent.id,
                        hostname: agent.hostname,
                        org_id: agent.org_id,
                        last_seen: agent.last_seen,
                        policy_version: agent.policy_version,
                        last_error: agent.last_error,
                        enrolled_at: agent.enrolled_at,
                    }
                })
                .collect();
            Ok(ok_reply(StatusCode::OK, &list))
        }
        .await,
    )
}

/// `GET /api/events`
pub async fn events(state: Arc<AppState>, headers: HeaderMap, peer: Option<PeerAddr>) -> Response {
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            let Principal::Agent { agent_id, org_id } = principal else {
                return Err(ApiError::forbidden("the event stream needs an agent token"));
            };
            // Under the publish lock no policy or override change can slip between reading the
            // current state and registering the stream.
            let guard = state.publish.lock().await;
            let policy = state.store.latest_policy(org_id.clone()).await?;
            let stored = state.store.overrides(agent_id.clone()).await?;
            let list = stored_list(stored.as_ref());
            let mut initial: Vec<Frame> = policy
                .as_ref()
                .map(|p| Frame::for_agent(p, &agent_id, &list))
                .into_iter()
                .collect();
            initial.extend(crate::fleet::initial_frames(&state, &org_id, &agent_id).await?);
            let subscription = state
                .hub
                .subscribe(&org_id, &agent_id, Arc::new(list), initial)
                .ok_or_else(ApiError::unavailable)?;
            drop(guard);
            tracing::info!(
                agent = %agent_id,
                org = %org_id,
                peer = ?peer.map(|p| p.0),
                version = ?policy.map(|p| p.version.to_string()),
                "event stream opened"
            );
            let stream = warp::sse::keep_alive()
                .interval(state.hub.keep_alive())
                .stream(subscription);
            Ok(warp::sse::reply(stream).into_response())
        }
        .await,
    )
}

/// `POST /api/tokens`
pub async fn create_token<S, B>(state: Arc<AppState>, headers: HeaderMap, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    respond(
        async {
            let principal = authenticate(&state, &headers)?;
            if principal != Principal::GlobalAdmin {
                return Err(ApiError::forbidden(
                    "only the global admin token can create tokens",
                ));
            }
            let value = read_json(&headers, body).await?;
            let mut fields = Fields::default();
            let org = match fields.object(&value, "", &["role", "org_id", "orgId"]) {
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
                    if !map.contains_key("org_id") && !map.contains_key("orgId") {
                        fields.push(&join_key("", "org_id"), "missing required field `org_id`");
                    }
                    org
                }
                None => None,
            };
            fields.finish()?;
            let org_id = org.unwrap_or_default();
            let token = generate_token("adm");
            let hash = TokenHash::of(&token);
            let principal = Principal::OrgAdmin {
                org_id: org_id.clone(),
            };
            state
                .store
                .insert_token(hash, principal.clone(), now_rfc3339())
                .await?;
            state.tokens.insert(hash, principal);
            tracing::info!(org = %org_id, "created an org admin token");
            Ok(ok_reply(
                StatusCode::CREATED,
                &TokenCreated {
                    token,
                    role: "admin",
                    org_id,
                },
            ))
        }
        .await,
    )
}

async fn latest(state: &AppState, org: &str) -> Result<StoredPolicy> {
    state
        .store
        .latest_policy(org.to_owned())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no policy in org `{org}`")))
}

/// The agent `id` as `principal` may see it: an agent only itself, an admin those of its org.
async fn visible_agent(state: &AppState, principal: &Principal, id: &str) -> Result<AgentRecord> {
    if let Principal::Agent { agent_id, .. } = principal {
        if agent_id != id {
            return Err(ApiError::forbidden(format!(
                "this agent token may only act on agent `{agent_id}`"
            )));
        }
    }
    let agent = state
        .store
        .agent(id.to_owned())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown agent `{id}`")))?;
    principal.check_org(&agent.org_id)?;
    Ok(agent)
}

fn stored_list(stored: Option<&StoredOverrides>) -> Vec<Override> {
    stored
        .and_then(|s| overrides::parse(&s.list, usize::MAX).ok())
        .unwrap_or_default()
}

fn resolve(policy: &StoredPolicy, agent_id: &str, list: &[Override]) -> Vec<RuleDocument> {
    if !list.is_empty() {
        match overrides::apply(&policy.policy.to_json_value(), list) {
            Ok(resolved) => return resolved.to_document().rules,
            Err(error) => tracing::warn!(
                agent = agent_id,
                %error,
                "overrides do not fit this policy version; showing it unmodified"
            ),
        }
    }
    policy.policy.to_document().rules
}

fn applied_at(policy: &StoredPolicy, overrides: Option<&StoredOverrides>) -> DateTime<Utc> {
    match overrides {
        Some(o) if o.updated_at > policy.created_at => o.updated_at,
        _ => policy.created_at,
    }
}
