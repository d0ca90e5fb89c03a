//! `/api/policy`: publish a version, check one without storing it, the org's versions, the
//! active policy, an agent's resolved rules, overrides.

use std::sync::Arc;

use bytes::Bytes;
use policy_engine::policy::PolicyVersionError;
use policy_engine::policy::json::join_key;
use policy_engine::protocol::SignedPolicy;
use policy_engine::{Policy, PolicyVersion};
use serde_json::Value;
use warp::http::StatusCode;

use super::approvals::page_limit;
use super::{Answer, ok};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::fleet::policies::Publication;
use crate::fleet::{agents, plan, policies, shadows};
use crate::http::body::parse_json_collecting;
use crate::http::filters::{Query, org_query};
use crate::store::AgentRecord;

/// `POST /api/policy` (admin): 201 with the stored version and `broadcastedTo`. The body is a
/// policy document, or a signed policy file (`{"orgId", "version", "policy", "signature"}`,
/// told apart by its `signature` field). With `?dryRun=true`: 200 with the [`plan`] of what
/// the post would do, and nothing changes. With `?shadow=true`: 201 with the org's new
/// [shadow run](shadows), evaluated by every agent beside its enforced version and never
/// executed; the enforced version does not change.
pub async fn post(principal: Principal, query: Query, body: Bytes, state: Arc<AppState>) -> Answer {
    let dry_run = flag(&query, "dryRun")?;
    let shadow = flag(&query, "shadow")?;
    if dry_run && shadow {
        return Err(ApiError::bad_request(
            "query parameters `dryRun` and `shadow` cannot both be `true`",
        ));
    }
    let parsed = parse_json_collecting(&body)?;
    let publication = ApiError::with_duplicates(publication(&parsed.value, ""), parsed.duplicates)?;
    if shadow {
        let run = shadows::start(
            &*state.store,
            &state.publisher,
            state.notifier.config(),
            &principal,
            org_query(&query),
            publication,
        )
        .await?;
        return ok(StatusCode::CREATED, &run);
    }
    if dry_run {
        let checked = policies::check(
            state.notifier.config(),
            &state.signed_orgs,
            &principal,
            org_query(&query),
            publication,
        )?;
        let plan = plan::plan(&*state.store, &state.hub, checked).await?;
        return ok(StatusCode::OK, &plan);
    }
    let view = policies::publish(
        &*state.store,
        &state.publisher,
        state.notifier.config(),
        &state.signed_orgs,
        &principal,
        org_query(&query),
        publication,
    )
    .await?;
    ok(StatusCode::CREATED, &view)
}

/// `POST /api/policy/validate` (admin): 200 with the document as it would be stored, or the
/// errors `POST /api/policy` would answer (400, 403, 422); stores nothing.
pub async fn validate(
    principal: Principal,
    query: Query,
    body: Bytes,
    state: Arc<AppState>,
) -> Answer {
    // Read and checked as `POST /api/policy` reads and checks it: a document or a signed file.
    let parsed = parse_json_collecting(&body)?;
    let publication = ApiError::with_duplicates(publication(&parsed.value, ""), parsed.duplicates)?;
    let checked = policies::check(
        state.notifier.config(),
        &state.signed_orgs,
        &principal,
        org_query(&query),
        publication,
    )?;
    ok(StatusCode::OK, &policies::validated(checked))
}

/// `GET /api/policy/versions?limit=&cursor=` (admin): the org's versions, newest first.
pub async fn versions(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    let before = query
        .get("cursor")
        .map(|text| {
            text.parse::<u64>().map(PolicyVersion::new).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid query parameter `cursor`: expected a version number, found `{text}`"
                ))
            })
        })
        .transpose()?;
    let page = policies::versions(&*state.store, org, before, page_limit(&query)?).await?;
    ok(StatusCode::OK, &page)
}

/// `GET /api/policy/versions/:version` (admin): one version of the org (`v3`).
pub async fn version(
    version: String,
    principal: Principal,
    query: Query,
    state: Arc<AppState>,
) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    let version: PolicyVersion = version
        .parse()
        .map_err(|e: PolicyVersionError| ApiError::bad_request(e.to_string()))?;
    ok(
        StatusCode::OK,
        &policies::version(&*state.store, org, version).await?,
    )
}

/// A `POST /api/policy` body (or a rollout's `policy`, at `at`): a policy document, or a
/// signed policy file told apart by its `signature` field; errors carry their paths under
/// `at` (a signed file's document is under `policy`). A signed file's own errors and its
/// document's are reported together.
pub fn publication(value: &Value, at: &str) -> Result<Publication, ApiError> {
    let under = |prefix: &str, mut errors: Vec<policy_engine::ValidationError>| {
        for e in &mut errors {
            e.path = match (prefix.is_empty(), e.path.is_empty()) {
                (true, _) => std::mem::take(&mut e.path),
                (false, true) => prefix.to_owned(),
                (false, false) => join_key(prefix, &e.path),
            };
        }
        errors
    };
    Ok(if SignedPolicy::is_signed_document(value) {
        let signed = SignedPolicy::from_value(value);
        // The document is read even when the file around it is wrong (a missing or
        // malformed `policy` is the file's own error).
        let policy = value
            .get("policy")
            .filter(|document| document.is_object())
            .map(Policy::from_value);
        match (signed, policy) {
            (Ok(signed), Some(Ok(policy))) => Publication::Signed {
                policy,
                org_id: signed.org_id,
                version: signed.version,
                signature: signed.signature,
            },
            (signed, policy) => {
                let mut errors = signed.err().map(|e| under(at, e)).unwrap_or_default();
                if let Some(Err(error)) = policy {
                    errors.extend(under(&join_key(at, "policy"), error.errors));
                }
                return Err(ApiError::from_validation(errors));
            }
        }
    } else if at.is_empty() {
        Publication::Unsigned(Policy::from_value(value).map_err(ApiError::from_policy)?)
    } else {
        Publication::Unsigned(
            Policy::from_value(value)
                .map_err(|e| ApiError::from_validation(under(at, e.errors)))?,
        )
    })
}

/// `name=true|false` (absent: false) for `dryRun` and `shadow`; any other value is a 400, so a
/// typo never publishes.
fn flag(query: &Query, name: &str) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => {
            let shown: String = other.chars().take(64).collect();
            Err(ApiError::bad_request(format!(
                "query parameter `{name}` must be `true` or `false`, found `{shown}`"
            )))
        }
    }
}

/// `GET /api/policy/active` (admin, or an agent for its org).
pub async fn active(principal: Principal, query: Query, state: Arc<AppState>) -> Answer {
    let org = principal.read_org(org_query(&query))?;
    ok(
        StatusCode::OK,
        &policies::active(&*state.store, &org).await?,
    )
}

/// `GET /api/policy/agent/:id` (admin of its org, or that agent).
pub async fn for_agent(
    id: String,
    principal: Principal,
    query: Query,
    state: Arc<AppState>,
) -> Answer {
    let agent = scoped_agent(&state, &principal, &query, &id).await?;
    ok(
        StatusCode::OK,
        &policies::for_agent(&*state.store, agent).await?,
    )
}

/// `PUT /api/policy/agent/:id/overrides` (admin of its org).
pub async fn set_overrides(
    id: String,
    principal: Principal,
    query: Query,
    body: Value,
    state: Arc<AppState>,
) -> Answer {
    let agent = scoped_agent(&state, &principal, &query, &id).await?;
    let view = policies::set_overrides(
        &*state.store,
        &state.publisher,
        state.notifier.config(),
        &state.signed_orgs,
        &principal,
        agent,
        &body,
    )
    .await?;
    ok(StatusCode::OK, &view)
}

/// Agent `id` as `principal` may see it, in the org the query names (if it names one).
async fn scoped_agent(
    state: &AppState,
    principal: &Principal,
    query: &Query,
    id: &str,
) -> Result<AgentRecord, ApiError> {
    let named = org_query(query)
        .map(|org| principal.read_org(Some(org)))
        .transpose()?;
    let agent = agents::visible(&*state.store, principal, id).await?;
    match named {
        Some(org) if org != agent.org_id => Err(ApiError::not_found(format!(
            "unknown agent `{id}` in org `{org}`"
        ))),
        _ => Ok(agent),
    }
}
