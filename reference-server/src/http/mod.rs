//! The HTTP layer: the route table ([`routes`]) and the filters it is built from ([`filters`]:
//! auth, role, org scope, strict query parameters, body reading), thin handlers per resource
//! ([`handlers`]) that call the fleet domain, the body reader ([`body`]), the one
//! [`recover`](recover::recover) that answers every refusal in the JSON error envelope, and
//! the console's embedded static files ([`console`]).

pub mod body;
pub mod console;
pub mod filters;
pub mod handlers;
pub mod metrics;
pub mod openapi;
pub mod recover;

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use self::filters::{
    admin, agent_token, json_body, own_agent, principal, query, raw_body, with_state,
};
use self::handlers::{
    admin as admin_api, agents, approvals, audit, blocks, events, policies, reports, rollouts,
    shadows,
};
use self::recover::recover;
use crate::app::AppState;
use crate::transport::PeerAddr;

/// Query parameters a route takes. `org_id` also admits its alias `orgId`.
mod params {
    /// None.
    pub const NONE: &[&str] = &[];
    /// The org a global admin acts on.
    pub const ORG: &[&str] = &["org_id"];
    /// `POST /api/policy`.
    pub const PUBLISH: &[&str] = &["dryRun", "shadow", "org_id"];
    /// `GET /api/approvals`.
    pub const APPROVALS: &[&str] = &["status", "limit", "org_id"];
    /// `GET /api/audit`.
    pub const AUDIT: &[&str] = &[
        "agent", "ip", "action", "from", "to", "limit", "cursor", "org_id",
    ];
    /// `GET /api/rollouts`.
    pub const ROLLOUTS: &[&str] = &["limit", "org_id"];
    /// `GET /api/policy/versions`.
    pub const VERSIONS: &[&str] = &["limit", "cursor", "org_id"];
}

/// Every route of the API, errors included.
///
/// | route | who | query |
/// |---|---|---|
/// | `POST /api/policy` | admin | `dryRun`, `shadow`, `org_id` |
/// | `GET /api/policy/shadow` | admin | `org_id` |
/// | `DELETE /api/policy/shadow` | admin | `org_id` |
/// | `GET /api/policy/active` | admin, agent | `org_id` |
/// | `GET /api/policy/agent/:id` | admin, that agent | `org_id` |
/// | `PUT /api/policy/agent/:id/overrides` | admin | `org_id` |
/// | `POST /api/agents/enroll` | admin | `org_id` |
/// | `GET /api/agents/me` | agent | |
/// | `POST /api/agents/:id/heartbeat` | that agent | |
/// | `POST /api/agents/:id/reports` | that agent | |
/// | `GET /api/agents` | admin | `org_id` |
/// | `GET /api/events` | agent | |
/// | `POST /api/tokens` | global admin | |
/// | `GET /api/blocks` | admin, agent | `org_id` |
/// | `DELETE /api/blocks/:ip` | admin | `org_id` |
/// | `GET /api/approvals` | admin | `status`, `limit`, `org_id` |
/// | `POST /api/approvals/:id/approve`, `/deny` | admin | `org_id` |
/// | `GET /api/audit` | admin | `agent`, `ip`, `action`, `from`, `to`, `limit`, `cursor`, `org_id` |
/// | `POST /api/rollouts` | admin | `org_id` |
/// | `GET /api/rollouts` | admin | `limit`, `org_id` |
/// | `GET /api/rollouts/:id` | admin | `org_id` |
/// | `POST /api/rollouts/:id/{pause,resume,advance,abort}` | admin | `org_id` |
/// | `POST /api/policy/validate` | admin | `org_id` |
/// | `GET /api/policy/versions` | admin | `limit`, `cursor`, `org_id` |
/// | `GET /api/policy/versions/:version` | admin | `org_id` |
/// | `GET /api/admin/me`, `/api/admin/orgs` | admin | |
/// | `GET /api/admin/events` | admin | `org_id` |
/// | `GET /`, `/console/...` | anyone (the console's static files) | |
/// | `GET /api/openapi.json` | anyone | |
///
/// Every `/api` route is described in `reference-server/openapi.json` ([`openapi`]);
/// `tests/openapi.rs` fails when a route and the description disagree.
pub fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    // Each route is boxed, and so is the tree: without the boxes the combined filter type nests
    // every route inside the next, which overflows the trait solver in release builds (E0275)
    // and makes the crate slow to compile.
    let [first, policy_rest @ ..] = policy_routes(&state);
    let tree = policy_rest
        .into_iter()
        .chain(agent_routes(&state))
        .chain(fleet_routes(&state))
        .chain(admin_routes(&state))
        .chain(console::routes())
        .chain(docs_routes())
        .chain(rollout_routes(&state))
        .chain(shadow_routes(&state))
        .fold(first, |tree, route| tree.or(route).unify().boxed())
        .recover(recover)
        .unify()
        .boxed();
    metrics::observed(tree, state.metrics.clone())
}

/// `/api/policy/shadow`: the org's shadow run against its enforced version, and its end (a
/// run starts with `POST /api/policy?shadow=true`).
fn shadow_routes(s: &Arc<AppState>) -> [BoxedFilter<(Response,)>; 2] {
    let diff = warp::path!("api" / "policy" / "shadow")
        .and(warp::get())
        .and(admin(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(shadows::diff);
    let end = warp::path!("api" / "policy" / "shadow")
        .and(warp::delete())
        .and(admin(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(shadows::end);
    [boxed(diff), boxed(end)]
}

/// `/api/policy`: publish, validate, the versions, the active policy, an agent's rules, its
/// overrides.
fn policy_routes(s: &Arc<AppState>) -> [BoxedFilter<(Response,)>; 7] {
    let post = warp::path!("api" / "policy")
        .and(warp::post())
        .and(admin(s))
        .and(query(params::PUBLISH))
        .and(raw_body())
        .and(with_state(s))
        .then(policies::post);
    let active = warp::path!("api" / "policy" / "active")
        .and(warp::get())
        .and(principal(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(policies::active);
    let for_agent = warp::path!("api" / "policy" / "agent" / String)
        .and(warp::get())
        .and(principal(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(policies::for_agent);
    let overrides = warp::path!("api" / "policy" / "agent" / String / "overrides")
        .and(warp::put())
        .and(admin(s))
        .and(query(params::ORG))
        .and(json_body())
        .and(with_state(s))
        .then(policies::set_overrides);
    let validate = warp::path!("api" / "policy" / "validate")
        .and(warp::post())
        .and(admin(s))
        .and(query(params::ORG))
        .and(raw_body())
        .and(with_state(s))
        .then(policies::validate);
    let versions = warp::path!("api" / "policy" / "versions")
        .and(warp::get())
        .and(admin(s))
        .and(query(params::VERSIONS))
        .and(with_state(s))
        .then(policies::versions);
    let version = warp::path!("api" / "policy" / "versions" / String)
        .and(warp::get())
        .and(admin(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(policies::version);
    [
        boxed(post),
        boxed(active),
        boxed(for_agent),
        boxed(overrides),
        boxed(validate),
        boxed(versions),
        boxed(version),
    ]
}

/// `/api/agents`, `/api/events`, `/api/tokens`: what agents do, and enrolling them.
fn agent_routes(s: &Arc<AppState>) -> [BoxedFilter<(Response,)>; 7] {
    let enroll = warp::path!("api" / "agents" / "enroll")
        .and(warp::post())
        .and(admin(s))
        .and(query(params::ORG))
        .and(json_body())
        .and(with_state(s))
        .then(agents::enroll);
    let me = warp::path!("api" / "agents" / "me")
        .and(warp::get())
        .and(agent_token(
            s,
            "this endpoint needs an agent token (it says which agent the token is)",
        ))
        .and(query(params::NONE))
        .and(with_state(s))
        .then(agents::me);
    let heartbeat = warp::path!("api" / "agents" / String / "heartbeat")
        .and(warp::post())
        .and(principal(s))
        .and_then(own_agent("heartbeat"))
        .and(query(params::NONE))
        .and(json_body())
        .and(with_state(s))
        .then(agents::heartbeat);
    let reports = warp::path!("api" / "agents" / String / "reports")
        .and(warp::post())
        .and(principal(s))
        .and_then(own_agent("reports"))
        .and(query(params::NONE))
        .and(json_body())
        .and(with_state(s))
        .then(reports::post);
    let list = warp::path!("api" / "agents")
        .and(warp::get())
        .and(admin(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(agents::list);
    let events = warp::path!("api" / "events")
        .and(warp::get())
        .and(agent_token(s, "the event stream needs an agent token"))
        .and(query(params::NONE))
        .and(warp::header::optional::<String>("last-event-id"))
        .and(warp::ext::optional::<PeerAddr>())
        .and(with_state(s))
        .then(events::open);
    let tokens = warp::path!("api" / "tokens")
        .and(warp::post())
        .and(principal(s))
        .and(query(params::NONE))
        .and(json_body())
        .and(with_state(s))
        .then(agents::create_token);
    [
        boxed(enroll),
        boxed(me),
        boxed(heartbeat),
        boxed(reports),
        boxed(list),
        boxed(events),
        boxed(tokens),
    ]
}

/// `/api/blocks`, `/api/approvals`, `/api/audit`: the fleet loop's admin side.
fn fleet_routes(s: &Arc<AppState>) -> [BoxedFilter<(Response,)>; 5] {
    let blocks = warp::path!("api" / "blocks")
        .and(warp::get())
        .and(principal(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(blocks::list);
    let unblock = warp::path!("api" / "blocks" / String)
        .and(warp::delete())
        .and(admin(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(blocks::lift);
    let approvals = warp::path!("api" / "approvals")
        .and(warp::get())
        .and(admin(s))
        .and(query(params::APPROVALS))
        .and(with_state(s))
        .then(approvals::list);
    let approve = warp::path!("api" / "approvals" / String / "approve").map(|id| (id, true));
    let deny = warp::path!("api" / "approvals" / String / "deny").map(|id| (id, false));
    let decide = approve
        .or(deny)
        .unify()
        .untuple_one()
        .and(warp::post())
        .and(admin(s))
        .and(query(params::ORG))
        .and(raw_body())
        .and(with_state(s))
        .then(approvals::decide);
    let audit = warp::path!("api" / "audit")
        .and(warp::get())
        .and(admin(s))
        .and(query(params::AUDIT))
        .and(with_state(s))
        .then(audit::get);
    [
        boxed(blocks),
        boxed(unblock),
        boxed(approvals),
        boxed(decide),
        boxed(audit),
    ]
}

/// `/api/admin`: who the token is, its orgs, the admin event stream (for the console).
fn admin_routes(s: &Arc<AppState>) -> [BoxedFilter<(Response,)>; 3] {
    let me = warp::path!("api" / "admin" / "me")
        .and(warp::get())
        .and(admin(s))
        .and(query(params::NONE))
        .then(admin_api::me);
    let orgs = warp::path!("api" / "admin" / "orgs")
        .and(warp::get())
        .and(admin(s))
        .and(query(params::NONE))
        .and(with_state(s))
        .then(admin_api::orgs);
    let events = warp::path!("api" / "admin" / "events")
        .and(warp::get())
        .and(admin(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(admin_api::events);
    [boxed(me), boxed(orgs), boxed(events)]
}

/// `/api/openapi.json`: the API's description, for anyone.
fn docs_routes() -> [BoxedFilter<(Response,)>; 1] {
    let openapi = warp::path!("api" / "openapi.json")
        .and(warp::get())
        .and(query(params::NONE))
        .map(|_| openapi::reply());
    [boxed(openapi)]
}

/// `/api/rollouts`: staged rollouts and the operator's actions on them.
fn rollout_routes(s: &Arc<AppState>) -> [BoxedFilter<(Response,)>; 4] {
    let list = warp::path!("api" / "rollouts")
        .and(warp::get())
        .and(admin(s))
        .and(query(params::ROLLOUTS))
        .and(with_state(s))
        .then(rollouts::list);
    let create = warp::path!("api" / "rollouts")
        .and(warp::post())
        .and(admin(s))
        .and(query(params::ORG))
        .and(json_body())
        .and(with_state(s))
        .then(rollouts::create);
    let get = warp::path!("api" / "rollouts" / String)
        .and(warp::get())
        .and(admin(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(rollouts::get);
    let operate = warp::path!("api" / "rollouts" / String / String)
        .and(warp::post())
        .and(admin(s))
        .and(query(params::ORG))
        .and(with_state(s))
        .then(rollouts::operate);
    [boxed(list), boxed(create), boxed(get), boxed(operate)]
}

/// A route answering a reply (its own errors included), boxed.
fn boxed<F, R>(route: F) -> BoxedFilter<(Response,)>
where
    F: Filter<Extract = (R,), Error = Rejection> + Clone + Send + Sync + 'static,
    R: Reply + 'static,
{
    route.map(Reply::into_response).boxed()
}
