//! `/api/rollouts`: start a staged rollout of a new version, read it, pause, resume, advance
//! or abort it.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use warp::http::StatusCode;

use super::approvals::page_limit;
use super::policies::publication;
use super::{Answer, ok};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::fleet::rollouts::{self, Operation, RolloutRequest};
use crate::http::filters::{Query, org_query};
use crate::store::Rollout;

/// `POST /api/rollouts` (admin): stores `policy` as the org's next version and starts its
/// rollout; 201 with the rollout.
pub async fn create(
    principal: Principal,
    query: Query,
    body: Value,
    state: Arc<AppState>,
) -> Answer {
    let read = RolloutRequest::read(&body);
    let publication = match publication(&read.request.policy, "policy") {
        Ok(publication) => publication,
        Err(error) if read.errors.is_empty() => return Err(error),
        // Every error at once: the body's own first (as they always came), then the
        // document's, which a bad gate or stage used to hide.
        Err(error) if error.status == StatusCode::UNPROCESSABLE_ENTITY => {
            let mut errors = read.errors;
            errors.extend(error.errors);
            return Err(ApiError::from_validation(errors));
        }
        Err(_) => return Err(ApiError::from_validation(read.errors)),
    };
    let view = rollouts::create(
        &*state.store,
        &state.publisher,
        state.notifier.config(),
        &state.signed_orgs,
        &principal,
        org_query(&query),
        publication,
        read,
    )
    .await?;
    ok(StatusCode::CREATED, &view)
}

/// `GET /api/rollouts?limit=` (admin): the org's rollouts, newest first.
pub async fn list(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    let limit = page_limit(&query)?;
    let rollouts = rollouts::list(&*state.store, &state.publisher, org, limit).await?;
    ok(StatusCode::OK, &RolloutList { rollouts })
}

/// `GET /api/rollouts` answer.
#[derive(Debug, Serialize)]
struct RolloutList {
    /// Newest first.
    rollouts: Vec<Rollout>,
}

/// `GET /api/rollouts/:id` (admin of its org): the rollout and where each agent stands.
pub async fn get(id: String, principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let view = rollouts::get(
        &*state.store,
        &state.publisher,
        &principal,
        org_query(&query),
        &id,
    )
    .await?;
    ok(StatusCode::OK, &view)
}

/// `POST /api/rollouts/:id/{pause,resume,advance,abort}` (admin of its org).
pub async fn operate(
    id: String,
    operation: String,
    principal: Principal,
    query: Query,
    state: Arc<AppState>,
) -> Answer {
    let operation = Operation::parse(&operation).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown rollout operation `{operation}`, expected `pause`, `resume`, `advance` or `abort`"
        ))
    })?;
    let view = rollouts::operate(
        &*state.store,
        &state.publisher,
        &principal,
        org_query(&query),
        &id,
        operation,
    )
    .await?;
    ok(StatusCode::OK, &view)
}
