//! The warp filters every route is built from: authentication, role, org scope and strict
//! query parameters, body reading. A handler gets its inputs already authenticated, checked
//! and parsed; what a filter refuses is answered by the one
//! [`recover`](super::recover::recover) in the JSON error envelope.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{Ready, ready};
use serde_json::Value;
use warp::http::HeaderMap;
use warp::{Filter, Rejection};

use super::body::{MAX_BODY_BYTES, parse_json, read_limited};
use crate::app::AppState;
use crate::auth::{Found, Principal, unknown_token};
use crate::error::ApiError;
use crate::fleet::audit;
use crate::store::NewEntry;
use crate::transport::PeerAddr;
use policy_engine::DEFAULT_ORG;
use policy_engine::protocol::fields::{Fields, org_field};

/// The query parameters of a request, each given at most once.
pub type Query = HashMap<String, String>;

/// The shared state, for the handler.
pub fn with_state(
    state: &Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone + use<> {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

fn reject(error: ApiError) -> Rejection {
    warp::reject::custom(error)
}

/// Who the bearer token speaks for: 401 when the header is missing, not a bearer token, or
/// the token unknown; 400 when `Authorization` is given twice (which one would count is
/// ambiguous); 429 with `Retry-After` once the peer's address spent its failed-authentication
/// budget (audited once per address and minute).
pub fn principal(
    state: &Arc<AppState>,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone + use<> {
    let state = state.clone();
    warp::header::headers_cloned()
        .and(warp::ext::optional::<PeerAddr>())
        .and_then(move |headers: HeaderMap, peer: Option<PeerAddr>| {
            let state = state.clone();
            async move { authenticate(&state, &headers, peer).await.map_err(reject) }
        })
}

async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<PeerAddr>,
) -> Result<Principal, ApiError> {
    let mut values = headers.get_all(warp::http::header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "the `Authorization` header is given more than once",
        ));
    }
    let header = first.map(|v| {
        v.to_str()
            .map_err(|_| ApiError::unauthorized("the `Authorization` header is not ASCII"))
    });
    let result = match header.transpose() {
        Ok(header) => known_token(state, header).await,
        Err(error) => Err(error),
    };
    let (Err(error), Some(PeerAddr(peer))) = (&result, peer) else {
        return result;
    };
    match state.failed_auth.failed(peer.ip()) {
        Ok(()) => Err(error.clone()),
        Err(lockout) => {
            let secs = lockout.retry_after.secs();
            if lockout.audit {
                tracing::warn!(%peer, retry_after_secs = secs, "failed-authentication limit reached");
                audit::record(
                    &*state.store,
                    NewEntry {
                        org_id: DEFAULT_ORG.to_owned(),
                        actor: "server".to_owned(),
                        action: "auth_rate_limited".to_owned(),
                        ip: Some(peer.ip()),
                        outcome: "refused".to_owned(),
                        detail: Some(serde_json::json!({ "retryAfterSecs": secs })),
                        ..NewEntry::default()
                    },
                )
                .await;
            }
            Err(ApiError::too_many(
                format!("too many failed authentications from this address; retry in {secs} s"),
                secs,
            ))
        }
    }
}

/// The principal of `header`'s token: from the cache, or, with a store shared by several
/// replicas, from the store when the cache does not hold it yet (a token another replica has
/// just stored reaches this cache by a notice, a moment after its `201`; a client may use it
/// here first). An unknown token thus costs one indexed read on a shared store, at most
/// [`MISS_READS_PER_SEC`](crate::auth::MISS_READS_PER_SEC) a second.
async fn known_token(state: &AppState, header: Option<&str>) -> Result<Principal, ApiError> {
    let hash = match state.tokens.find(header)? {
        Found::Known(principal) => return Ok(principal),
        Found::Unknown(hash) => hash,
    };
    if state.tokens.may_read_miss() {
        if let Some(principal) = state.store.token(hash).await? {
            state.tokens.insert(hash, principal.clone());
            return Ok(principal);
        }
    }
    Err(unknown_token())
}

/// An admin (global or of an org): 403 for an agent token.
pub fn admin(
    state: &Arc<AppState>,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone + use<> {
    principal(state).and_then(|principal: Principal| async move {
        principal.require_admin().map_err(reject)?;
        Ok::<_, Rejection>(principal)
    })
}

/// An agent, as `(agent_id, org_id)`: 403 with `message` for an admin token.
pub fn agent_token(
    state: &Arc<AppState>,
    message: &'static str,
) -> impl Filter<Extract = (AgentToken,), Error = Rejection> + Clone + use<> {
    principal(state).and_then(move |principal: Principal| async move {
        match principal {
            Principal::Agent { agent_id, org_id } => Ok(AgentToken { agent_id, org_id }),
            _ => Err(reject(ApiError::forbidden(message))),
        }
    })
}

/// Checks the agent of an `/api/agents/:id/...` path against the token: only that agent's
/// own token may send its `what` (403 otherwise). Use with `.and(principal(..)).and_then(..)`
/// after the path.
pub fn own_agent(
    what: &'static str,
) -> impl Fn(String, Principal) -> Ready<Result<AgentToken, Rejection>> + Clone {
    move |id: String, principal: Principal| {
        ready(
            principal
                .require_agent(&id, what)
                .map(|org_id| AgentToken {
                    agent_id: id,
                    org_id,
                })
                .map_err(reject),
        )
    }
}

/// An agent speaking for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentToken {
    /// The agent.
    pub agent_id: String,
    /// Its org.
    pub org_id: String,
}

/// The query parameters, each at most once and each in `allowed`: 400 naming the parameter
/// otherwise, so that a typo (`?dryrun=true`, `?agnet=`) never silently does something else.
pub fn query(
    allowed: &'static [&'static str],
) -> impl Filter<Extract = (Query,), Error = Rejection> + Clone + use<> {
    warp::query::<Vec<(String, String)>>().and_then(move |pairs: Vec<(String, String)>| async move {
        check_query(pairs, allowed).map_err(reject)
    })
}

fn check_query(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Query, ApiError> {
    let known =
        |name: &str| allowed.contains(&name) || (name == "orgId" && allowed.contains(&"org_id"));
    let mut query = Query::new();
    for (name, value) in pairs {
        if !known(&name) {
            let shown: String = name.chars().take(64).collect();
            return Err(ApiError::bad_request(if allowed.is_empty() {
                format!(
                    "unknown query parameter `{shown}`: this endpoint takes no query parameters"
                )
            } else {
                let names: Vec<String> = allowed.iter().map(|n| format!("`{n}`")).collect();
                format!(
                    "unknown query parameter `{shown}`, expected one of {}",
                    names.join(", ")
                )
            }));
        }
        if query.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter `{name}` is given more than once"
            )));
        }
    }
    check_org_param(&query)?;
    Ok(query)
}

/// `org_id` (or `orgId`) in a query is checked by the very reader of bodies
/// ([`org_field`]): the same 422, message and path (the parameter's name).
fn check_org_param(query: &Query) -> Result<(), ApiError> {
    let named: serde_json::Map<String, Value> = ["org_id", "orgId"]
        .into_iter()
        .filter_map(|name| {
            query
                .get(name)
                .map(|v| (name.to_owned(), Value::String(v.clone())))
        })
        .collect();
    let mut fields = Fields::default();
    org_field(&mut fields, &named, "");
    fields.finish().map_err(ApiError::from)
}

/// The org named in the query (`org_id`, or its alias `orgId`).
pub fn org_query(query: &Query) -> Option<&str> {
    query
        .get("org_id")
        .or_else(|| query.get("orgId"))
        .map(String::as_str)
}

/// The whole body, at most [`MAX_BODY_BYTES`] (413 past it, whatever `Content-Length` says).
pub fn raw_body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(|length: Option<u64>, body| async move {
            read_limited(length, body, MAX_BODY_BYTES)
                .await
                .map_err(reject)
        })
}

/// The body as strict JSON (400 malformed, 422 duplicate keys or limits, 413 too large).
pub fn json_body() -> impl Filter<Extract = (Value,), Error = Rejection> + Clone {
    raw_body().and_then(|bytes: Bytes| async move { parse_json(&bytes).map_err(reject) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn unknown_and_repeated_query_parameters_are_refused_by_name() {
        let error = |query: &[(&str, &str)], allowed: &[&str]| {
            check_query(pairs(query), allowed).map_err(|e| (e.status.as_u16(), e.message))
        };
        assert_eq!(
            error(&[("dryrun", "true")], &["org_id"]),
            Err((
                400,
                "unknown query parameter `dryrun`, expected one of `org_id`".to_owned()
            ))
        );
        assert_eq!(
            error(&[("org_id", "a")], &[]),
            Err((
                400,
                "unknown query parameter `org_id`: this endpoint takes no query parameters"
                    .to_owned()
            ))
        );
        assert_eq!(
            error(
                &[("limit", "1"), ("limit", "2")],
                &["status", "limit", "org_id"]
            ),
            Err((
                400,
                "query parameter `limit` is given more than once".to_owned()
            ))
        );
        let query = check_query(
            pairs(&[("orgId", "acme"), ("status", "all")]),
            &["status", "limit", "org_id"],
        );
        assert_eq!(query.as_ref().map(org_query), Ok(Some("acme")));
    }

    /// Regression (issue 13, finding 6): `?org_id=` on writes created the orgs `""` and
    /// `../x y\nz`; it is now checked exactly like the body's `org_id`.
    #[test]
    fn org_ids_in_the_query_are_checked_like_bodies() {
        let error = |query: &[(&str, &str)]| {
            check_query(pairs(query), &["org_id"])
                .map(|_| ())
                .map_err(|e| (e.status.as_u16(), e.path, e.message))
        };
        let long = "a".repeat(65);
        for (name, value) in [
            ("org_id", ""),
            ("org_id", "../x y\nz"),
            ("orgId", long.as_str()),
        ] {
            assert_eq!(
                error(&[(name, value)]),
                Err((
                    422,
                    Some(name.to_owned()),
                    format!("expected 1 to 64 letters, digits, `-`, `_` or `.`, found `{value}`")
                ))
            );
        }
        assert_eq!(
            error(&[("org_id", "a"), ("orgId", "a")]),
            Err((
                422,
                Some("orgId".to_owned()),
                "`org_id` and its alias `orgId` are both given; use one".to_owned()
            ))
        );
        assert_eq!(error(&[("org_id", "acme-2.eu_west")]), Ok(()));
    }
}
