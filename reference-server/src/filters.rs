//! Routing: which path and method go to which handler, with the state, headers, query and body
//! each needs. Every handler answers its own errors; what is left (unknown path, wrong method,
//! bad query string) goes through the one [`recover`](crate::error::recover).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;

use crate::AppState;
use crate::fleet;
use crate::handlers;
use crate::serve::PeerAddr;

/// The query string as key/value pairs (`?org_id=acme`).
pub type Query = HashMap<String, String>;

/// Every route of the API, errors included.
pub fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = state.clone();
    let post_policy = warp::path!("api" / "policy")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .and(warp::body::stream())
        .then(handlers::post_policy)
        .boxed();
    let s = state.clone();
    let active = warp::path!("api" / "policy" / "active")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(handlers::active_policy)
        .boxed();
    let s = state.clone();
    let agent_policy = warp::path!("api" / "policy" / "agent" / String)
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .then(handlers::agent_policy)
        .boxed();
    let s = state.clone();
    let overrides = warp::path!("api" / "policy" / "agent" / String / "overrides")
        .and(warp::put())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(handlers::put_overrides)
        .boxed();
    let s = state.clone();
    let enroll = warp::path!("api" / "agents" / "enroll")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .and(warp::body::stream())
        .then(handlers::enroll)
        .boxed();
    let s = state.clone();
    let heartbeat = warp::path!("api" / "agents" / String / "heartbeat")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(handlers::heartbeat)
        .boxed();
    let s = state.clone();
    let me = warp::path!("api" / "agents" / "me")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .then(handlers::me)
        .boxed();
    let s = state.clone();
    let agents = warp::path!("api" / "agents")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(handlers::list_agents)
        .boxed();
    let s = state.clone();
    let events = warp::path!("api" / "events")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .then(handlers::events)
        .boxed();
    let s = state.clone();
    let tokens = warp::path!("api" / "tokens")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(handlers::create_token)
        .boxed();
    let s = state.clone();
    let reports = warp::path!("api" / "agents" / String / "reports")
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(fleet::post_report)
        .boxed();
    let s = state.clone();
    let blocks = warp::path!("api" / "blocks")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(fleet::list_blocks)
        .boxed();
    let s = state.clone();
    let unblock = warp::path!("api" / "blocks" / String)
        .and(warp::delete())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(fleet::delete_block)
        .boxed();
    let s = state.clone();
    let approvals = warp::path!("api" / "approvals")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(fleet::list_approvals)
        .boxed();
    let s = state.clone();
    let decide = warp::path!("api" / "approvals" / String / String)
        .and(warp::post())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(fleet::decide)
        .boxed();
    let s = state;
    let audit = warp::path!("api" / "audit")
        .and(warp::get())
        .and(with_state(s))
        .and(warp::header::headers_cloned())
        .and(query())
        .then(fleet::get_audit)
        .boxed();

    // Each route is boxed, and so is the tree: without the boxes the combined filter type nests
    // every route inside the next, which overflows the trait solver in release builds (E0275)
    // and makes the crate slow to compile.
    let api = [
        active,
        agent_policy,
        overrides,
        enroll,
        heartbeat,
        me,
        agents,
        events,
        tokens,
        reports,
        blocks,
        unblock,
        approvals,
        decide,
        audit,
    ]
    .into_iter()
    .fold(post_policy, |tree, route| tree.or(route).unify().boxed());
    api.recover(crate::error::recover).unify().boxed()
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
