//! The endpoints the console needs, over real TLS: policy versions (listed, paged, one by
//! one), validating without storing, who an admin token is and which orgs it may pick, the
//! admin event stream (`ready`, then `changed` per org), and the console's static files with
//! their security headers and ETags.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::time::Instant;

use crate::common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest_eventsource::{Event, EventSource};
use serde_json::{Value, json};

fn named(name: &str, threshold: u32) -> Value {
    let mut policy = block_ip_policy(name, threshold);
    policy["rules"][1]["enabled"] = json!(false);
    policy
}

#[tokio::test]
async fn versions_are_listed_newest_first_in_pages_and_read_one_by_one() {
    let t = TestServer::start(true).await;
    let (status, empty) = t.get("/api/policy/versions", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["data"], json!({"versions": [], "nextCursor": null}));
    for (i, name) in ["first", "second", "third"].into_iter().enumerate() {
        t.post_policy(ADMIN, named(name, 5 + u32::try_from(i).unwrap()))
            .await;
    }

    let (status, page) = t.get("/api/policy/versions?limit=2", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let versions = page["data"]["versions"].as_array().unwrap();
    let names: Vec<(&str, &str)> = versions
        .iter()
        .map(|v| (v["version"].as_str().unwrap(), v["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("v3", "third"), ("v2", "second")]);
    assert_eq!(versions[0]["ruleCount"], 2);
    assert_eq!(versions[0]["enabledCount"], 1);
    assert_timestamp(&versions[0]["createdAt"]);
    assert!(versions[0]["id"].as_str().unwrap().starts_with("pol_"));
    assert_eq!(page["data"]["nextCursor"], 2);
    let (_, older) = t.get("/api/policy/versions?limit=2&cursor=2", ADMIN).await;
    assert_eq!(older["data"]["versions"].as_array().unwrap().len(), 1);
    assert_eq!(older["data"]["versions"][0]["version"], "v1");
    assert_eq!(older["data"]["nextCursor"], Value::Null);

    let (status, v2) = t.get("/api/policy/versions/v2", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    assert_eq!(v2["data"]["name"], "second");
    assert_eq!(v2["data"]["version"], "v2");
    assert_eq!(v2["data"]["rules"][0]["config"]["threshold"], 6);
    assert_eq!(v2["data"]["rules"][1]["enabled"], false);

    let errors = [
        (
            "/api/policy/versions/v9",
            StatusCode::NOT_FOUND,
            "no policy `v9` in org `default`",
        ),
        (
            "/api/policy/versions/3",
            StatusCode::BAD_REQUEST,
            "expected a policy version like `v3`, found `3`",
        ),
        (
            "/api/policy/versions?cursor=v2",
            StatusCode::BAD_REQUEST,
            "invalid query parameter `cursor`: expected a version number, found `v2`",
        ),
        (
            "/api/policy/versions?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid query parameter `limit`: expected 1 to 1000, found `0`",
        ),
    ];
    for (path, status, message) in errors {
        let (got, body) = t.get(path, ADMIN).await;
        assert_eq!(
            (got, body["error"]["message"].as_str()),
            (status, Some(message)),
            "{path}"
        );
    }

    // Org scoping as everywhere: an org admin sees its own org's versions only.
    let (_, token) = t
        .post(
            "/api/tokens",
            ADMIN,
            json!({"role": "admin", "org_id": "acme"}),
        )
        .await;
    let acme = token["data"]["token"].as_str().unwrap();
    let (status, body) = t.get("/api/policy/versions?org_id=default", acme).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, own) = t.get("/api/policy/versions", acme).await;
    assert_eq!(own["data"]["versions"], json!([]));
    let (status, _) = t.get("/api/policy/versions/v1", acme).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, agent) = t.enroll(ADMIN, "web-1").await;
    let (status, _) = t.get("/api/policy/versions", &agent).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn validate_answers_like_publishing_and_stores_nothing() {
    let t = TestServer::start(true).await;
    let valid = json!({"name": "check", "rules": [{"type": "auto_respond",
        "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.9}}]});
    let (status, body) = t.post("/api/policy/validate", ADMIN, valid).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({"valid": true, "orgId": "default", "name": "check", "rules": [{"type": "auto_respond",
            "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.9,
                       "requireApproval": false}, "enabled": true}]})
    );

    let invalid = json!({"name": "bad", "rules": [{"type": "block_ip",
        "config": {"trigger": "brute_force", "treshold": 5, "duration": "24h", "scope": "host"}}]});
    let (status, body) = t.post("/api/policy/validate", ADMIN, invalid.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, published) = t.post("/api/policy", ADMIN, invalid).await;
    assert_eq!(body, published, "validate and publish answer alike");
    let errors = error_list(&body);
    assert_eq!(
        errors,
        [
            (
                "rules[0].config.treshold",
                "unknown field `treshold`, expected one of `trigger`, `threshold`, `duration`, `scope`, `window`"
            ),
            (
                "rules[0].config.threshold",
                "missing required field `threshold`"
            )
        ]
    );

    let response = t
        .client
        .post(format!("{}/api/policy/validate", t.base))
        .bearer_auth(ADMIN)
        .body("{\"name\": \"x\",\n \"rules\": [}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON at line 2 column "),
        "{body}"
    );

    // An org admin may not check a document for another org, as it may not publish one.
    let (_, token) = t
        .post(
            "/api/tokens",
            ADMIN,
            json!({"role": "admin", "org_id": "acme"}),
        )
        .await;
    let acme = token["data"]["token"].as_str().unwrap();
    let other = json!({"name": "x", "org_id": "default", "rules": [{"type": "custom",
        "config": {"condition": "true", "action": "alert"}}]});
    let (status, body) = t.post("/api/policy/validate", acme, other).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["error"]["message"],
        "this token belongs to org `acme` and cannot act on org `default`"
    );

    // Nothing was stored: no version, no audit entry.
    let (_, versions) = t.get("/api/policy/versions", ADMIN).await;
    assert_eq!(versions["data"]["versions"], json!([]));
    let (_, trail) = t.get("/api/audit", ADMIN).await;
    assert_eq!(trail["data"]["entries"], json!([]));
}

#[tokio::test]
async fn an_admin_token_says_who_it_is_and_which_orgs_it_may_pick() {
    let t = TestServer::start(true).await;
    let (_, me) = t.get("/api/admin/me", ADMIN).await;
    assert_eq!(
        me["data"],
        json!({"actor": "admin", "global": true, "orgId": null})
    );
    let (_, orgs) = t.get("/api/admin/orgs", ADMIN).await;
    assert_eq!(orgs["data"], json!(["default"]));

    let (_, token) = t
        .post(
            "/api/tokens",
            ADMIN,
            json!({"role": "admin", "org_id": "zeta"}),
        )
        .await;
    let zeta = token["data"]["token"].as_str().unwrap();
    t.post(
        "/api/agents/enroll",
        ADMIN,
        json!({"hostname": "a", "org_id": "acme"}),
    )
    .await;
    t.post_policy(
        ADMIN,
        json!({"name": "b", "org_id": "beta", "rules": [{"type": "custom",
        "config": {"condition": "true", "action": "alert"}}]}),
    )
    .await;
    // An org whose only content is a shadow run is one to pick too (probe 3, finding 5).
    let (status, _) = t
        .post(
            "/api/policy?shadow=true",
            ADMIN,
            json!({"name": "s", "org_id": "gamma", "rules": [{"type": "custom",
            "config": {"condition": "true", "action": "alert"}}]}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, orgs) = t.get("/api/admin/orgs", ADMIN).await;
    assert_eq!(
        orgs["data"],
        json!(["acme", "beta", "default", "gamma", "zeta"])
    );

    let (_, me) = t.get("/api/admin/me", zeta).await;
    assert_eq!(
        me["data"],
        json!({"actor": "admin:zeta", "global": false, "orgId": "zeta"})
    );
    let (_, orgs) = t.get("/api/admin/orgs", zeta).await;
    assert_eq!(orgs["data"], json!(["zeta"]));

    let (_, agent) = t.enroll(ADMIN, "web-1").await;
    for path in ["/api/admin/me", "/api/admin/orgs", "/api/admin/events"] {
        let (status, body) = t.get(path, &agent).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            body["error"]["message"], "this endpoint needs an admin token",
            "{path}"
        );
    }
    let (status, _) = t.get("/api/admin/me", "nobody").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// An admin event stream as the console reads it.
struct AdminStream {
    source: EventSource,
}

impl AdminStream {
    /// Opens the stream and returns it with its `ready` event's data.
    async fn open(t: &TestServer, token: &str, query: &str) -> (Self, Value) {
        let request = t
            .client
            .get(format!("{}/api/admin/events{query}", t.base))
            .bearer_auth(token);
        let mut stream = Self {
            source: EventSource::new(request).unwrap(),
        };
        let (name, data) = stream.next().await;
        assert_eq!(name, "ready");
        (stream, data)
    }

    async fn next(&mut self) -> (String, Value) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.source.next()).await {
                Ok(Some(Ok(Event::Open))) => continue,
                Ok(Some(Ok(Event::Message(m)))) => {
                    return (m.event, serde_json::from_str(&m.data).unwrap());
                }
                other => panic!("expected an admin event, got {other:?}"),
            }
        }
    }

    /// The topics of `changed` events until every one of `expected` was named.
    async fn until(&mut self, expected: &[&str]) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        while !expected.iter().all(|e| seen.contains(*e)) {
            let (name, data) = self.next().await;
            assert_eq!(name, "changed", "{data}");
            for topic in data["topics"].as_array().unwrap() {
                seen.insert(topic.as_str().unwrap().to_owned());
            }
        }
        seen
    }
}

#[tokio::test]
async fn the_admin_stream_names_what_changed_in_its_org_only() {
    let t = TestServer::start(true).await;
    let (mut default, ready) = AdminStream::open(&t, ADMIN, "").await;
    assert_eq!(
        ready,
        json!({"orgId": "default", "topics": ["agents", "policies", "approvals", "blocks", "audit"]})
    );
    let (_, token) = t
        .post(
            "/api/tokens",
            ADMIN,
            json!({"role": "admin", "org_id": "acme"}),
        )
        .await;
    let acme_admin = token["data"]["token"].as_str().unwrap().to_owned();
    let (mut acme, ready) = AdminStream::open(&t, &acme_admin, "").await;
    assert_eq!(ready["orgId"], "acme");
    let (status, _) = t.get("/api/admin/events?org_id=default", &acme_admin).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (agent, agent_token) = t.enroll(ADMIN, "web-1").await;
    default.until(&["agents"]).await;
    // Rules that can produce what the agent reports below: a fleet block and an approval.
    let policy = json!({"name": "ssh", "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5,
         "duration": "1h", "scope": "fleet"}},
        {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
         "minConfidence": 0.9, "requireApproval": true}}
    ]});
    t.post_policy(ADMIN, policy).await;
    default.until(&["policies", "agents", "audit"]).await;
    let mut agent_stream = t.stream(&agent_token, "default").await;
    default.until(&["agents"]).await;
    let report = json!({"action": "approval_request",
        "request": {"action": "kill_process", "pid": 4242, "process": "nginx"},
        "rule": 1, "policyVersion": "v1", "eventId": "e-1"});
    let (status, answer) = t
        .post(
            &format!("/api/agents/{agent}/reports"),
            &agent_token,
            report,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    default.until(&["approvals", "audit"]).await;
    let id = answer["data"]["approval"]["id"].as_str().unwrap();
    let (status, _) = t
        .post(
            &format!("/api/approvals/{id}/approve"),
            ADMIN,
            json!({"reason": "ok"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    default.until(&["approvals", "audit"]).await;
    let block = json!({"action": "block_ip", "ip": "203.0.113.7", "duration": "1h",
        "scope": "fleet", "rule": 0, "policyVersion": "v1"});
    let (status, answer) = t
        .post(&format!("/api/agents/{agent}/reports"), &agent_token, block)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    default.until(&["blocks", "audit"]).await;
    let (status, _) = t
        .call(
            reqwest::Method::DELETE,
            "/api/blocks/203.0.113.7",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    default.until(&["blocks", "audit"]).await;
    agent_stream.next_event().await;
    agent_stream.close();
    default.until(&["agents"]).await;

    // Every change above was the default org's: acme's stream heard none of them. Its next
    // event is acme's own enrollment, and only that.
    t.post(
        "/api/agents/enroll",
        &acme_admin,
        json!({"hostname": "acme-1"}),
    )
    .await;
    let (name, data) = acme.next().await;
    assert_eq!(
        (name.as_str(), data),
        ("changed", json!({"topics": ["agents"]}))
    );
}

#[tokio::test]
async fn console_files_carry_a_strict_policy_and_revalidate_by_etag() {
    let t = TestServer::start(true).await;
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .add_root_certificate(
            reqwest::Certificate::from_pem(
                &std::fs::read(t.dir.path().join("tls/cert.pem")).unwrap(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let root = no_redirect
        .get(format!("{}/", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/console/");

    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
               connect-src 'self'; manifest-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
               form-action 'none'; require-trusted-types-for 'script'; trusted-types 'none'";
    for path in ["/console/", "/console", "/console/index.html"] {
        let page = t
            .client
            .get(format!("{}{path}", t.base))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        let headers = page.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["content-security-policy"], csp);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["cache-control"], "no-cache");
        assert!(headers.get("set-cookie").is_none());
        let body = page.text().await.unwrap();
        assert!(body.contains(r#"<script type="module" src="/console/js/main.js">"#));
    }

    let script = t
        .client
        .get(format!("{}/console/js/main.js", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = script.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag.len(), 34, "{etag}");
    let again = t
        .client
        .get(format!("{}/console/js/main.js", t.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"], etag.as_str());
    assert_eq!(again.headers()["content-security-policy"], csp);
    assert!(again.bytes().await.unwrap().is_empty());
    let stale = t
        .client
        .get(format!("{}/console/js/main.js", t.base))
        .header("if-none-match", "\"0000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);

    let missing = t
        .client
        .get(format!("{}/console/js/nope.js", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["content-security-policy"], csp);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["message"], "no console file `js/nope.js`");
}

/// The admin stream's frames are written as the agents' are and as the README shows them:
/// `event: ready`, then `data: ` and the JSON, then a blank line (warp's `sse` wrote
/// `event:ready` without the space).
#[tokio::test]
async fn the_admin_stream_writes_its_frames_as_documented() {
    let t = TestServer::start(true).await;
    let mut response = t
        .client
        .get(format!("{}/api/admin/events", t.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(DEADLINE, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(
        text,
        "event: ready\ndata: {\"orgId\":\"default\",\"topics\":[\"agents\",\"policies\",\"approvals\",\"blocks\",\"audit\"]}\n\n"
    );
}
