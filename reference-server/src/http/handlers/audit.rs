//! `GET /api/audit` (admin): the audit trail, filtered and paged.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use warp::http::StatusCode;

use super::approvals::page_limit;
use super::{Answer, ok};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::fleet::audit;
use crate::http::filters::{Query, org_query};
use crate::store::AuditFilter;

/// `GET /api/audit?agent=&ip=&action=&from=&to=&limit=&cursor=`: newest first.
pub async fn get(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    let ip = query
        .get("ip")
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map(policy_engine::event::canonical_ip)
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid query parameter `ip`: `{ip}` is not an IP address"
                    ))
                })
        })
        .transpose()?;
    let filter = AuditFilter {
        org_id: org,
        agent_id: query.get("agent").cloned(),
        ip,
        action: query.get("action").cloned(),
        from: time_param(&query, "from")?,
        to: time_param(&query, "to")?,
        before_id: query
            .get("cursor")
            .map(|c| {
                c.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid query parameter `cursor`: expected a number, found `{c}`"
                    ))
                })
            })
            .transpose()?,
        limit: page_limit(&query)?,
    };
    ok(StatusCode::OK, &audit::page(&*state.store, filter).await?)
}

/// An RFC 3339 time parameter.
fn time_param(query: &Query, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    query
        .get(name)
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "invalid query parameter `{name}`: `{text}` is not an RFC 3339 time ({e})"
                    ))
                })
        })
        .transpose()
}
