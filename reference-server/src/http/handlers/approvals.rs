//! `/api/approvals`: the list, and the decisions.

use std::sync::Arc;

use bytes::Bytes;
use policy_engine::protocol::ApprovalStatus;
use policy_engine::protocol::fields::Fields;
use warp::http::StatusCode;

use super::{Answer, ok};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::fleet::approvals;
use crate::http::body::parse_json;
use crate::http::filters::{Query, org_query};

/// Default and largest page of `GET /api/approvals` and `GET /api/audit`.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page.
pub const MAX_PAGE: u32 = 1000;

/// `GET /api/approvals?status=&limit=` (admin): newest first.
pub async fn list(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    let status = match query.get("status").map(String::as_str) {
        None | Some("all") => None,
        Some(name) => Some(ApprovalStatus::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid query parameter `status`: unknown status `{name}`, expected \
                 `pending`, `approved`, `denied`, `expired`, `executed`, `failed` or `all`"
            ))
        })?),
    };
    let limit = page_limit(&query)?;
    ok(
        StatusCode::OK,
        &approvals::list(&*state.store, org, status, limit).await?,
    )
}

/// `POST /api/approvals/:id/approve` and `/deny` (admin), optional body `{"reason": "..."}`.
pub async fn decide(
    id: String,
    approve: bool,
    principal: Principal,
    query: Query,
    body: Bytes,
    state: Arc<AppState>,
) -> Answer {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value = parse_json(&body)?;
        let mut fields = Fields::default();
        let reason = fields
            .object(&value, "", &["reason"])
            .and_then(|map| fields.opt_string(map, "", "reason"));
        fields.finish()?;
        reason
    };
    let scope = org_query(&query)
        .map(|org| principal.read_org(Some(org)))
        .transpose()?;
    let decided = approvals::decide(
        &*state.store,
        &state.publisher,
        &principal,
        scope,
        id,
        approve,
        reason,
    )
    .await?;
    ok(StatusCode::OK, &decided)
}

/// `limit=`: 1 to [`MAX_PAGE`], default [`DEFAULT_PAGE`].
pub fn page_limit(query: &Query) -> Result<u32, ApiError> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "invalid query parameter `limit`: expected 1 to {MAX_PAGE}, found `{text}`"
            ))),
        },
    }
}
