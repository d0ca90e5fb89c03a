//! `/api/admin`: what the console asks for itself: who the token is, the orgs it may pick,
//! and the admin event stream that tells it what changed.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde::Serialize;
use warp::http::StatusCode;

use super::{Answer, ok};
use crate::app::AppState;
use crate::auth::Principal;
use crate::fleet::admin;
use crate::fleet::changes::{Ready, Topic};
use crate::http::filters::{Query, org_query};
use crate::transport::{EventBody, Frame};

/// `GET /api/admin/me` (admin): `{actor, global, orgId}`.
pub async fn me(principal: Principal, _query: Query) -> Answer {
    ok(StatusCode::OK, &admin::identity(&principal)?)
}

/// `GET /api/admin/orgs` (admin): the orgs the token may act on.
pub async fn orgs(principal: Principal, _query: Query, state: Arc<AppState>) -> Answer {
    ok(
        StatusCode::OK,
        &admin::orgs(&*state.store, &principal).await?,
    )
}

/// `GET /api/admin/events?org_id=` (admin): SSE, `ready` first, then `changed` with the topics
/// that changed (at most one event per 250 ms); a keep-alive comment after each silence. The
/// frames are written as the agents' are ([`Frame`]: `event: ready`, `data: {...}`).
pub async fn events(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    let changes = state.publisher.changes().watch(&org)?;
    let ready = sse_event(
        "ready",
        &Ready {
            org_id: org,
            topics: Topic::ALL.to_vec(),
        },
    );
    let events = stream::once(async move { ready })
        .chain(changes.map(|changed| sse_event("changed", &changed)));
    Ok(EventBody::new(events, state.hub.keep_alive()).into_response())
}

fn sse_event<T: Serialize>(name: &'static str, data: &T) -> Bytes {
    // These shapes hold only strings and lists: serializing cannot fail.
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    Frame::new(name, None, &json).wire().clone()
}
