//! Routing: which path and method go to which handler, with the state, headers, query and body
//! each needs. Every handler answers its own errors; what is left (unknown path, wrong method,
//! bad query string) goes through the one [`recover`](crate::error::recover).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use warp::Filter;
use warp::http::HeaderMap;
use warp::reply::Response;

use crate::AppState;
use crate::fleet;
use crate::handlers;
use crate::serve::PeerAddr;

/// The query string as key/value pairs (`?org_id=acme`).
pub type Query = HashMap<String, String>;

/// Every route of the API, errors included.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let s = state.clone();
    let post_policy = warp::path!("api" / "policy")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .and(warp::body::stream())
        .then(handlers::post_policy);
    let s = state.clone();
    let active = warp::path!("api" / "policy" / "active")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(handlers::active_policy);
    let s = state.clone();
    let agent_policy = warp::path!("api" / "policy" / "agent" / String)
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .then(handlers::agent_policy);
    let s = state.clone();
    let overrides = warp::path!("api" / "policy" / "agent" / String / "overrides")
        .and(warp::put())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(handlers::put_overrides);
    let s = state.clone();
    let enroll = warp::path!("api" / "agents" / "enroll")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .and(warp::body::stream())
        .then(handlers::enroll);
    let s = state.clone();
    let heartbeat = warp::path!("api" / "agents" / String / "heartbeat")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(handlers::heartbeat);
    let s = state.clone();
    let agents = warp::path!("api" / "agents")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(handlers::list_agents);
    let s = state.clone();
    let events = warp::path!("api" / "events")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .then(handlers::events);
    let s = state.clone();
    let tokens = warp::path!("api" / "tokens")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(handlers::create_token);
    let s = state.clone();
    let reports = warp::path!("api" / "agents" / String / "reports")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(fleet::post_report);
    let s = state.clone();
    let blocks = warp::path!("api" / "blocks")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(fleet::list_blocks);
    let s = state.clone();
    let unblock = warp::path!("api" / "blocks" / String)
        .and(warp::delete())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(fleet::delete_block);
    let s = state.clone();
    let approvals = warp::path!("api" / "approvals")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(fleet::list_approvals);
    let s = state.clone();
    let decide = warp::path!("api" / "approvals" / String / String)
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(fleet::decide);
    let s = state;
    let audit = warp::path!("api" / "audit")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(fleet::get_audit);

    post_policy
        .or(active)
        .unify()
        .or(agent_policy)
        .unify()
        .or(overrides)
        .unify()
        .or(enroll)
        .unify()
        .or(heartbeat)
        .unify()
        .or(agents)
        .unify()
        .or(events)
        .unify()
        .or(tokens)
        .unify()
        .or(reports)
        .unify()
        .or(blocks)
        .unify()
        .or(unblock)
        .unify()
        .or(approvals)
        .unify()
        .or(decide)
        .unify()
        .or(audit)
        .unify()
        .recover(crate::error::recover)
        .unify()
}

fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

fn query() -> impl Filter<Extract = (Query,), Error = warp::Rejection> + Clone {
    warp::query::<Query>()
}

/// The `Authorization` header, if present and text.
pub fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(warp::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The `Content-Length` header, if present and a number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
