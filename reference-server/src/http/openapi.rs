//! The API's OpenAPI 3.1 description: the committed `reference-server/openapi.json`, served at
//! `GET /api/openapi.json` (no token: it describes the API and holds no data), and the path
//! templates it names, which are the `route` label of the request metrics.
//!
//! `tests/openapi.rs` keeps the description true: every `/api` route of the route table is
//! described and every described operation is routed, each documented example goes through a
//! real server and its answer is validated against the description, and the policy document's
//! schema in it is the committed `policy.schema.json`.

use std::sync::LazyLock;

use serde_json::Value;

use warp::http::header::{CONTENT_TYPE, HeaderValue};
use warp::reply::Response;

/// The description, as committed.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

/// `GET /api/openapi.json`: the description as JSON.
pub fn reply() -> Response {
    let mut response = Response::new(DOCUMENT.into());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The description, parsed (`null` if the committed file were not JSON, which its test
/// refuses).
static PARSED: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(DOCUMENT).unwrap_or(Value::Null));

/// The described path templates (`/api/agents/{id}/heartbeat`), split into segments, literal
/// segments before parameters (so `/api/agents/me` wins over a `/api/agents/{id}`).
static TEMPLATES: LazyLock<Vec<(&'static str, Vec<&'static str>)>> = LazyLock::new(|| {
    let parsed: &'static Value = &PARSED;
    let mut templates: Vec<(&'static str, Vec<&'static str>)> = parsed["paths"]
        .as_object()
        .map(|paths| {
            paths
                .keys()
                .map(|path| (path.as_str(), path.split('/').skip(1).collect()))
                .collect()
        })
        .unwrap_or_default();
    templates.sort_by_key(|(_, segments)| {
        segments
            .iter()
            .map(|s| s.starts_with('{'))
            .collect::<Vec<bool>>()
    });
    templates
});

/// The described path template `path` matches, e.g. `/api/policy/agent/{id}` for
/// `/api/policy/agent/agent-1a2b`; `None` for a path the API does not have.
///
/// ```
/// use reference_server::http::openapi::route_template;
/// assert_eq!(route_template("/api/agents/agent-1/heartbeat"), Some("/api/agents/{id}/heartbeat"));
/// assert_eq!(route_template("/api/agents/me"), Some("/api/agents/me"));
/// assert_eq!(route_template("/api/nothing"), None);
/// ```
pub fn route_template(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    TEMPLATES
        .iter()
        .find(|(_, template)| {
            template.len() == segments.len()
                && template
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        })
        .map(|(path, _)| *path)
}
