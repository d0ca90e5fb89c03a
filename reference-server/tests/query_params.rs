//! Unknown query parameters are refused on every endpoint (400 naming the parameter) and change
//! nothing: a typo such as `?dryrun=true` must never publish a policy.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn a_typo_in_the_query_is_refused_on_every_endpoint_and_changes_nothing() {
    let t = TestServer::start(false).await;
    let (agent, token) = t.enroll(ADMIN, "host-q").await;
    let policy = block_ip_policy("q", 5);

    // The policy is not published: no version, no audit entry.
    let (status, body) = t
        .call(
            Method::POST,
            "/api/policy?dryrun=true",
            Some(ADMIN),
            Some(policy.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"],
        json!({"code": "bad_request",
               "message": "unknown query parameter `dryrun`, expected one of `dryRun`, `shadow`, `org_id`"})
    );
    let (status, _) = t.get("/api/policy/active", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, trail) = t.get("/api/audit?action=policy_created", ADMIN).await;
    assert_eq!(trail["data"]["entries"], json!([]));
    t.post_policy(ADMIN, policy.clone()).await;

    let report = json!({"action": "kill_process", "pid": 9, "rule": 0, "policyVersion": "v1"});
    let cases: Vec<(Method, String, &str, Option<Value>, &str)> = vec![
        (
            Method::GET,
            "/api/policy/active".into(),
            ADMIN,
            None,
            "`org_id`",
        ),
        (
            Method::GET,
            format!("/api/policy/agent/{agent}"),
            ADMIN,
            None,
            "`org_id`",
        ),
        (
            Method::PUT,
            format!("/api/policy/agent/{agent}/overrides"),
            ADMIN,
            Some(json!([])),
            "`org_id`",
        ),
        (
            Method::POST,
            "/api/agents/enroll".into(),
            ADMIN,
            Some(json!({"hostname": "x"})),
            "`org_id`",
        ),
        (Method::GET, "/api/agents".into(), ADMIN, None, "`org_id`"),
        (Method::GET, "/api/blocks".into(), ADMIN, None, "`org_id`"),
        (
            Method::DELETE,
            "/api/blocks/203.0.113.7".into(),
            ADMIN,
            None,
            "`org_id`",
        ),
        (
            Method::GET,
            "/api/approvals".into(),
            ADMIN,
            None,
            "`status`, `limit`, `org_id`",
        ),
        (
            Method::POST,
            "/api/approvals/apr_x/approve".into(),
            ADMIN,
            None,
            "`org_id`",
        ),
        (
            Method::GET,
            "/api/audit".into(),
            ADMIN,
            None,
            "`agent`, `ip`, `action`, `from`, `to`, `limit`, `cursor`, `org_id`",
        ),
        (
            Method::POST,
            "/api/policy/validate".into(),
            ADMIN,
            Some(policy.clone()),
            "`org_id`",
        ),
        (
            Method::GET,
            "/api/policy/versions".into(),
            ADMIN,
            None,
            "`limit`, `cursor`, `org_id`",
        ),
        (
            Method::GET,
            "/api/policy/versions/v1".into(),
            ADMIN,
            None,
            "`org_id`",
        ),
        (
            Method::GET,
            "/api/admin/events".into(),
            ADMIN,
            None,
            "`org_id`",
        ),
    ];
    for (method, path, who, body, expected) in cases {
        let (status, answer) = t
            .call(
                method.clone(),
                &format!("{path}?dryrun=true"),
                Some(who),
                body,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {answer}");
        assert_eq!(
            answer["error"]["message"],
            format!("unknown query parameter `dryrun`, expected one of {expected}"),
            "{method} {path}"
        );
    }

    let none = "unknown query parameter `dryrun`: this endpoint takes no query parameters";
    let agent_cases: Vec<(Method, String, &str, Option<Value>)> = vec![
        (Method::GET, "/api/agents/me".into(), &token, None),
        (
            Method::POST,
            format!("/api/agents/{agent}/heartbeat"),
            &token,
            Some(json!({"policyVersion": "v1"})),
        ),
        (
            Method::POST,
            format!("/api/agents/{agent}/reports"),
            &token,
            Some(report.clone()),
        ),
        (Method::GET, "/api/events".into(), &token, None),
        (
            Method::POST,
            "/api/tokens".into(),
            ADMIN,
            Some(json!({"role": "admin", "org_id": "acme"})),
        ),
        (Method::GET, "/api/admin/me".into(), ADMIN, None),
        (Method::GET, "/api/admin/orgs".into(), ADMIN, None),
    ];
    for (method, path, who, body) in agent_cases {
        let (status, answer) = t
            .call(
                method.clone(),
                &format!("{path}?dryrun=true"),
                Some(who),
                body,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["message"], none, "{method} {path}");
    }
    // Nothing reached the store: no report, no heartbeat, no token, no second agent.
    let (_, trail) = t.get(&format!("/api/audit?agent={agent}"), ADMIN).await;
    assert_eq!(trail["data"]["entries"], json!([]));
    let (_, agents) = t.get("/api/agents", ADMIN).await;
    assert_eq!(agents["data"].as_array().unwrap().len(), 1);
    assert_eq!(agents["data"][0]["lastSeen"], Value::Null);

    // A parameter given twice is refused too; known ones still work.
    let (status, answer) = t.get("/api/audit?limit=1&limit=2", ADMIN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer["error"]["message"],
        "query parameter `limit` is given more than once"
    );
    let (status, answer) = t.get("/api/policy/active?orgId=default", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// A global admin naming one org in the body and another in the query gets a 400 and nothing
/// is written: the body used to win silently (audit, 2026-12-01). The same org named twice is
/// fine.
#[tokio::test]
async fn a_body_and_a_query_naming_two_orgs_are_refused() {
    let t = TestServer::start(false).await;
    let mut policy = block_ip_policy("two orgs", 5);
    policy["org_id"] = json!("beta");
    let message =
        "`?org_id=acme` names another org than the body's `org_id` (`beta`): name it once";
    for path in [
        "/api/policy?org_id=acme",
        "/api/policy?org_id=acme&dryRun=true",
        "/api/policy/validate?org_id=acme",
        "/api/policy?org_id=acme&shadow=true",
    ] {
        let (status, body) = t
            .call(Method::POST, path, Some(ADMIN), Some(policy.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(
            body["error"],
            json!({"code": "bad_request", "message": message}),
            "{path}"
        );
    }
    let (status, body) = t
        .call(
            Method::POST,
            "/api/agents/enroll?org_id=acme",
            Some(ADMIN),
            Some(json!({"hostname": "h", "org_id": "beta"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["message"], message);
    for org in ["acme", "beta"] {
        let (status, _) = t
            .get(&format!("/api/policy/active?org_id={org}"), ADMIN)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{org}");
        let (_, agents) = t.get(&format!("/api/agents?org_id={org}"), ADMIN).await;
        assert_eq!(agents["data"], json!([]), "{org}");
    }
    // Named twice, the same org: published there.
    let (status, body) = t
        .call(
            Method::POST,
            "/api/policy?org_id=beta",
            Some(ADMIN),
            Some(policy),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, active) = t.get("/api/policy/active?org_id=beta", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(active["data"]["version"], "v1");
}
