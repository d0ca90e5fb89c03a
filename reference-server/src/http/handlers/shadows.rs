//! `/api/policy/shadow`: the org's shadow run against its enforced version, and its end.

use std::sync::Arc;

use warp::http::StatusCode;

use super::{Answer, ok};
use crate::app::AppState;
use crate::auth::Principal;
use crate::fleet::shadows;
use crate::http::filters::{Query, org_query};

/// `GET /api/policy/shadow` (admin): the [`shadows::ShadowDiff`] of the org.
pub async fn diff(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    ok(StatusCode::OK, &shadows::diff(&*state.store, org).await?)
}

/// `DELETE /api/policy/shadow` (admin): ends the org's running shadow run (404 when none).
pub async fn end(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.write_org(org_query(&query))?;
    let run = shadows::end(&*state.store, &state.publisher, &principal, org).await?;
    ok(StatusCode::OK, &run)
}
