//! End-to-end tests over a real socket with real TLS (the self-signed certificate of the data
//! dir, verified by the client), real SSE clients and a real SQLite file.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn broadcast_reaches_every_stream_of_the_org_with_its_overrides() {
    let t = TestServer::start(true).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (_b, b_token) = t.enroll(ADMIN, "host-b").await;
    let mut a_stream = t.stream(&a_token, "default").await;
    let mut b_stream = t.stream(&b_token, "default").await;

    let v1 = t.post_policy(ADMIN, block_ip_policy("ssh", 50)).await;
    assert_eq!(v1["version"], "v1");
    assert_eq!(v1["broadcastedTo"], 2);
    for stream in [&mut a_stream, &mut b_stream] {
        let event = stream.next_policy().await;
        assert_eq!(event.id, "1");
        assert_eq!(event.data["policyId"], v1["id"]);
        assert_eq!(event.data["version"], "v1");
        assert_eq!(event.data["name"], "ssh");
        assert_eq!(event.data["rules"], v1["rules"]);
        assert_eq!(event.data["createdAt"], v1["createdAt"]);
    }

    // An override reaches only its agent, at once, with the same version.
    let (status, body) = t
        .put(
            &format!("/api/policy/agent/{a}/overrides"),
            ADMIN,
            json!([{"rule": 0, "config": {"threshold": 5}}, {"rule": 1, "enabled": false}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["broadcastedTo"], 1);
    assert_eq!(body["data"]["rules"][0]["config"]["threshold"], 5);
    let event = a_stream.next_policy().await;
    assert_eq!(event.id, "1");
    assert_eq!(event.data["rules"][0]["config"]["threshold"], 5);
    assert_eq!(event.data["rules"][1]["enabled"], false);

    let (status, body) = t.get(&format!("/api/policy/agent/{a}"), &a_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["agentId"], a.as_str());
    assert_eq!(body["data"]["policyVersion"], "v1");
    assert_eq!(body["data"]["rules"][0]["config"]["threshold"], 5);
    assert_timestamp(&body["data"]["appliedAt"]);

    // The next version keeps each agent's overrides.
    let v2 = t.post_policy(ADMIN, block_ip_policy("ssh", 40)).await;
    assert_eq!(v2["version"], "v2");
    assert_eq!(v2["broadcastedTo"], 2);
    let a_event = a_stream.next_policy().await;
    let b_event = b_stream.next_policy().await;
    assert_eq!((a_event.id.as_str(), b_event.id.as_str()), ("2", "2"));
    assert_eq!(a_event.data["rules"][0]["config"]["threshold"], 5);
    assert_eq!(b_event.data["rules"][0]["config"]["threshold"], 40);

    // A new stream starts with the current resolved policy.
    let mut again = t.stream(&a_token, "default").await;
    let first = again.next_policy().await;
    assert_eq!(first.id, "2");
    assert_eq!(first.data["rules"][0]["config"]["threshold"], 5);
}

#[tokio::test]
async fn the_api_page_example_round_trips_in_its_own_shape() {
    let t = TestServer::start(true).await;
    let request = json!({
        "name": "Block Brute Force Sources",
        "description": "Automatically block IPs after repeated SSH failures",
        "rules": [
            {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 50,
             "duration": "24h", "scope": "host"}, "enabled": true},
            {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
             "notifyChannels": ["telegram", "email"]}, "enabled": true}
        ]
    });
    let response = t
        .client
        .post(format!("{}/api/policy", t.base))
        .bearer_auth(ADMIN)
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let text = response.text().await.unwrap();
    // Rules come back in the page's field order, not sorted.
    assert!(
        text.contains(r#"{"type":"block_ip","config":{"trigger":"brute_force","threshold":50,"duration":"24h","scope":"host"},"enabled":true}"#),
        "{text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["ok"], true);
    let data = &body["data"];
    let keys: BTreeSet<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "id",
            "name",
            "description",
            "version",
            "rules",
            "broadcastedTo",
            "createdAt"
        ])
    );
    assert!(data["id"].as_str().unwrap().starts_with("pol_"));
    assert_eq!(data["version"], "v1");
    assert_eq!(data["rules"], request["rules"]);
    assert_eq!(data["broadcastedTo"], 0);
    assert_timestamp(&data["createdAt"]);

    let (status, active) = t.get("/api/policy/active", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    let mut expected = data.clone();
    expected.as_object_mut().unwrap().remove("broadcastedTo");
    assert_eq!(active["data"], expected);
}

#[tokio::test]
async fn heartbeats_report_outdated_agents() {
    let t = TestServer::start(true).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (b, _b_token) = t.enroll(ADMIN, "host-b").await;
    let heartbeat = format!("/api/agents/{a}/heartbeat");

    let (status, body) = t.post(&heartbeat, &a_token, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({"agentId": a, "policyVersion": null, "currentPolicyVersion": null, "outdated": false,
               "acceptsAcks": true, "acceptsShadow": true})
    );

    t.post_policy(ADMIN, block_ip_policy("one", 5)).await;
    t.post_policy(ADMIN, block_ip_policy("two", 6)).await;
    let (status, body) = t
        .post(
            &heartbeat,
            &a_token,
            json!({"policyVersion": "v1", "lastError": "nft failed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        json!({"agentId": a, "policyVersion": "v1", "currentPolicyVersion": "v2", "outdated": true,
               "acceptsAcks": true, "acceptsShadow": true})
    );

    let (status, body) = t.get("/api/agents", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let agents = body["data"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    let entry = agents.iter().find(|e| e["agentId"] == a.as_str()).unwrap();
    assert_eq!(entry["online"], true);
    assert_eq!(entry["policyVersion"], "v1");
    assert_eq!(entry["outdated"], true);
    assert_eq!(entry["lastError"], "nft failed");
    assert_eq!(entry["hostname"], "host-a");
    assert_timestamp(&entry["lastSeen"]);
    let other = agents.iter().find(|e| e["agentId"] == b.as_str()).unwrap();
    assert_eq!(other["online"], false);
    assert_eq!(other["lastSeen"], Value::Null);
    assert_eq!(other["outdated"], true);

    let (_, body) = t
        .post(&heartbeat, &a_token, json!({"policyVersion": "v2"}))
        .await;
    assert_eq!(body["data"]["outdated"], false);
}

#[tokio::test]
async fn concurrent_posts_get_every_version_exactly_once_in_order() {
    let t = TestServer::start(true).await;
    let (_a, a_token) = t.enroll(ADMIN, "host-a").await;
    let mut stream = t.stream(&a_token, "default").await;
    let posts = (0..20).map(|i| t.post_policy(ADMIN, block_ip_policy(&format!("p{i}"), i + 1)));
    let results = futures_util::future::join_all(posts).await;
    let versions: BTreeSet<String> = results
        .iter()
        .map(|r| r["version"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = (1..=20).map(|n| format!("v{n}")).collect();
    assert_eq!(versions, expected);
    for n in 1..=20 {
        assert_eq!(stream.next_policy().await.id, n.to_string());
    }
}

#[tokio::test]
async fn a_restart_on_the_same_data_dir_loses_nothing() {
    let t = TestServer::start(true).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (_, org) = t
        .post(
            "/api/tokens",
            ADMIN,
            json!({"role": "admin", "org_id": "acme"}),
        )
        .await;
    let org_token = org["data"]["token"].as_str().unwrap().to_owned();
    let v1 = t.post_policy(ADMIN, block_ip_policy("kept", 9)).await;
    t.put(
        &format!("/api/policy/agent/{a}/overrides"),
        ADMIN,
        json!([{"rule": 0, "config": {"threshold": 3}}]),
    )
    .await;
    t.post(
        &format!("/api/agents/{a}/heartbeat"),
        &a_token,
        json!({"policyVersion": "v1"}),
    )
    .await;
    let cert = std::fs::read(t.dir.path().join("tls/cert.pem")).unwrap();

    let t = t.restart().await;
    assert_eq!(
        std::fs::read(t.dir.path().join("tls/cert.pem")).unwrap(),
        cert
    );
    let (status, active) = t.get("/api/policy/active", &a_token).await;
    assert_eq!(status, StatusCode::OK, "{active}");
    let mut expected = v1.clone();
    expected.as_object_mut().unwrap().remove("broadcastedTo");
    assert_eq!(active["data"], expected);
    let (_, mine) = t.get(&format!("/api/policy/agent/{a}"), &a_token).await;
    assert_eq!(mine["data"]["rules"][0]["config"]["threshold"], 3);
    let (_, agents) = t.get("/api/agents", ADMIN).await;
    assert_eq!(agents["data"][0]["policyVersion"], "v1");
    assert_timestamp(&agents["data"][0]["lastSeen"]);
    let (status, _) = t.get("/api/agents", &org_token).await;
    assert_eq!(status, StatusCode::OK);
    let v2 = t.post_policy(ADMIN, block_ip_policy("next", 10)).await;
    assert_eq!(v2["version"], "v2");
}

#[tokio::test]
async fn orgs_never_see_each_other() {
    let t = TestServer::start(true).await;
    let (status, body) = t
        .post(
            "/api/tokens",
            ADMIN,
            json!({"role": "admin", "org_id": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["org_id"], "acme");
    let acme = body["data"]["token"].as_str().unwrap().to_owned();

    let (default_agent, default_token) = t.enroll(ADMIN, "d1").await;
    let (acme_agent, acme_token) = t.enroll(&acme, "a1").await;
    let mut default_stream = t.stream(&default_token, "default").await;
    let mut acme_stream = t.stream(&acme_token, "acme").await;

    let mut policy = block_ip_policy("acme only", 7);
    policy["org_id"] = json!("acme");
    let acme_v1 = t.post_policy(&acme, policy).await;
    assert_eq!(
        (
            acme_v1["version"].as_str(),
            acme_v1["broadcastedTo"].as_i64()
        ),
        (Some("v1"), Some(1))
    );
    let default_v1 = t.post_policy(ADMIN, block_ip_policy("default", 8)).await;
    assert_eq!(
        (
            default_v1["version"].as_str(),
            default_v1["broadcastedTo"].as_i64()
        ),
        (Some("v1"), Some(1))
    );
    assert_eq!(acme_stream.next_policy().await.data["name"], "acme only");
    assert_eq!(default_stream.next_policy().await.data["name"], "default");

    let forbidden = |body: &Value, message: &str| {
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        assert_eq!(body["error"]["message"], message);
    };
    let cross = "this token belongs to org `acme` and cannot act on org `default`";
    let (status, body) = t.get("/api/policy/active?org_id=default", &acme).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    forbidden(&body, cross);
    let (status, body) = t
        .post(
            "/api/policy",
            &acme,
            json!({"name": "x", "org_id": "default", "rules": block_ip_policy("x", 1)["rules"]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    forbidden(&body, cross);
    let (status, body) = t
        .get(&format!("/api/policy/agent/{default_agent}"), &acme)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    forbidden(&body, cross);
    let (status, body) = t
        .get(&format!("/api/policy/agent/{default_agent}"), &acme_token)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    forbidden(
        &body,
        &format!("this agent token may only act on agent `{acme_agent}`"),
    );

    let (_, acme_agents) = t.get("/api/agents", &acme).await;
    let ids: Vec<&str> = acme_agents["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agentId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [acme_agent.as_str()]);
    let (_, seen) = t.get("/api/policy/active", &acme_token).await;
    assert_eq!(seen["data"]["name"], "acme only");
    let (_, seen) = t.get("/api/policy/active?org_id=acme", ADMIN).await;
    assert_eq!(seen["data"]["name"], "acme only");
    let (_, seen) = t.get("/api/policy/active", ADMIN).await;
    assert_eq!(seen["data"]["name"], "default");
    let (status, body) = t
        .post(
            "/api/tokens",
            &acme,
            json!({"role": "admin", "org_id": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    forbidden(&body, "only the global admin token can create tokens");
}

/// Every error status, with its exact code and message, and no state change.
#[tokio::test]
async fn errors_use_the_envelope_and_change_nothing() {
    let t = TestServer::start(true).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let check =
        |got: (StatusCode, Value), status: u16, code: &str, message: &str, path: Option<&str>| {
            let (s, body) = got;
            assert_eq!(s.as_u16(), status, "{body}");
            assert_eq!(body["ok"], false, "{body}");
            assert_eq!(body["error"]["code"], code, "{body}");
            assert_eq!(body["error"]["message"], message, "{body}");
            assert_eq!(body["error"]["path"].as_str(), path, "{body}");
        };
    let no_policy = (404, "not_found", "no policy in org `default`");
    check(
        t.get("/api/policy/active", ADMIN).await,
        no_policy.0,
        no_policy.1,
        no_policy.2,
        None,
    );
    check(
        t.call(Method::GET, "/api/policy/active", None, None).await,
        401,
        "unauthorized",
        "missing bearer token",
        None,
    );
    check(
        t.get("/api/policy/active", "nope").await,
        401,
        "unauthorized",
        "unknown token",
        None,
    );
    check(
        t.post("/api/policy", &a_token, block_ip_policy("x", 1))
            .await,
        403,
        "forbidden",
        "this endpoint needs an admin token",
        None,
    );
    check(
        t.get("/api/nothing", ADMIN).await,
        404,
        "not_found",
        "no such endpoint",
        None,
    );
    check(
        t.get("/api/policy/agent/agent-missing", ADMIN).await,
        404,
        "not_found",
        "unknown agent `agent-missing`",
        None,
    );
    check(
        t.call(Method::DELETE, "/api/policy", Some(ADMIN), None)
            .await,
        405,
        "method_not_allowed",
        "method not allowed on this path",
        None,
    );
    check(
        t.get("/api/events", ADMIN).await,
        403,
        "forbidden",
        "the event stream needs an agent token",
        None,
    );

    let raw = |body: Vec<u8>| {
        let t = &t;
        async move {
            let response = t
                .client
                .post(format!("{}/api/policy", t.base))
                .bearer_auth(ADMIN)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    check(
        raw(vec![b' '; 1024 * 1024 + 1]).await,
        413,
        "payload_too_large",
        "request body is larger than the limit of 1048576 bytes",
        None,
    );
    check(
        raw(b"{\"name\": \"x\",".to_vec()).await,
        400,
        "malformed_json",
        "invalid JSON at line 1 column 13: EOF while parsing a value",
        None,
    );
    // A duplicate key comes first, with the document's other errors after it (contract: all
    // errors of a document), on `POST /api/policy` and `POST /api/policy/validate` alike.
    for path in ["/api/policy", "/api/policy/validate"] {
        let response = t
            .client
            .post(format!("{}{path}", t.base))
            .bearer_auth(ADMIN)
            .body(&br#"{"name":"x","name":"y","rules":[]}"#[..])
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        check(
            (status, body.clone()),
            422,
            "validation_failed",
            "duplicate key `name`",
            Some("name"),
        );
        assert_eq!(
            body["error"]["errors"],
            json!([
                {"path": "name", "message": "duplicate key `name`"},
                {"path": "rules", "message": "expected 1 to 1000 rules, found 0"}
            ]),
            "{path}"
        );
    }
    let mut bad = block_ip_policy("x", 1);
    bad["rules"][0]["config"]["treshold"] = json!(3);
    let (status, body) = t.post("/api/policy", ADMIN, bad).await;
    check(
        (status, body.clone()),
        422,
        "validation_failed",
        "unknown field `treshold`, expected one of `trigger`, `threshold`, `duration`, `scope`, `window`",
        Some("rules[0].config.treshold"),
    );
    assert_eq!(body["error"]["errors"].as_array().unwrap().len(), 1);

    check(
        t.put(
            &format!("/api/policy/agent/{a}/overrides"),
            ADMIN,
            json!([{"rule": 0}]),
        )
        .await,
        404,
        "not_found",
        "no policy in org `default`; overrides refer to the rules of its active policy",
        None,
    );
    check(
        t.post(
            &format!("/api/agents/{a}/heartbeat"),
            &a_token,
            json!({"policyVersion": "3"}),
        )
        .await,
        422,
        "validation_failed",
        "expected a policy version like `v3`, found `3`",
        Some("policyVersion"),
    );
    check(
        t.post(&format!("/api/agents/{a}/heartbeat"), ADMIN, json!({}))
            .await,
        403,
        "forbidden",
        &format!("only the token of agent `{a}` may send its heartbeat"),
        None,
    );
    check(
        t.post("/api/agents/enroll", ADMIN, json!({"hostname": ""}))
            .await,
        422,
        "validation_failed",
        "expected a non-empty string, found an empty one",
        Some("hostname"),
    );
    check(
        t.post(
            "/api/tokens",
            ADMIN,
            json!({"role": "agent", "org_id": "acme"}),
        )
        .await,
        422,
        "validation_failed",
        "unknown role `agent`, expected `admin` (agent tokens come from enrollment)",
        Some("role"),
    );
    // `null` is no org (it made an admin token of an org named "", which nobody else could
    // name); absent is missing, as before.
    for (body, path, message) in [
        (
            json!({"role": "admin", "org_id": null}),
            "org_id",
            "expected an org id, found `null`",
        ),
        (
            json!({"role": "admin", "orgId": null}),
            "orgId",
            "expected an org id, found `null`",
        ),
        (
            json!({"role": "admin"}),
            "org_id",
            "missing required field `org_id`",
        ),
    ] {
        check(
            t.post("/api/tokens", ADMIN, body).await,
            422,
            "validation_failed",
            message,
            Some(path),
        );
    }

    // Nothing above changed anything: still no policy, still one agent.
    check(
        t.get("/api/policy/active", ADMIN).await,
        no_policy.0,
        no_policy.1,
        no_policy.2,
        None,
    );
    let (_, agents) = t.get("/api/agents", ADMIN).await;
    assert_eq!(agents["data"].as_array().unwrap().len(), 1);

    // Override errors point into the override body.
    t.post_policy(ADMIN, block_ip_policy("p", 5)).await;
    check(
        t.put(
            &format!("/api/policy/agent/{a}/overrides"),
            ADMIN,
            json!([{"rule": 1, "enabled": true}, {"rule": 0, "config": {"threshold": 0}}]),
        )
        .await,
        422,
        "validation_failed",
        "expected an integer from 1 to 1000000, found `0`",
        Some("[1].config.threshold"),
    );
}

#[tokio::test]
async fn shutdown_ends_event_streams() {
    let t = TestServer::start(false).await;
    let (_a, a_token) = t.enroll(ADMIN, "host-a").await;
    let mut stream = t.stream(&a_token, "default").await;
    let mut t = t;
    t.server.take().unwrap().shutdown().await;
    let ended =
        tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut stream.source)).await;
    assert!(
        matches!(
            ended,
            Ok(Some(Err(reqwest_eventsource::Error::StreamEnded)))
        ),
        "{ended:?}"
    );
    stream.close();
}

#[tokio::test]
async fn idle_streams_get_keep_alive_comments() {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-server-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let t = TestServer::start_in(dir, |path| reference_server::ServerConfig {
        keep_alive: std::time::Duration::from_millis(100),
        ..config(path, false)
    })
    .await;
    let (_a, a_token) = t.enroll(ADMIN, "host-a").await;
    let mut response = t
        .client
        .get(format!("{}/api/events", t.base))
        .bearer_auth(&a_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // No policy yet, so the first bytes are a keep-alive comment.
    let chunk = tokio::time::timeout(DEADLINE, response.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(chunk.starts_with(b":"), "{chunk:?}");
}

/// Every way a connection ends gives its slot back (a leaked slot would, connection by
/// connection, lock everyone out under the cap): a request answered and closed, a silent socket
/// cut by the TLS handshake timeout, a socket closed by its client before the handshake, an
/// event stream dropped by its agent, and one over the cap refused at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ended_connection_gives_its_slot_back() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-server-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let t = TestServer::start_in(dir, |path| {
        let mut config = config(path, true);
        config.connections.max_connections = 8;
        config.connections.max_per_address = 8;
        config.connections.operator_reserve = 0;
        config.connections.tls_handshake_timeout = std::time::Duration::from_secs(2);
        config.keep_alive = std::time::Duration::from_millis(200);
        config
    })
    .await;
    let open = || t.server().open_connections();
    let until = |n: usize| async move {
        let deadline = std::time::Instant::now() + DEADLINE;
        while open() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} connections open, expected {n}",
                open()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    // Clients that close their connection after each answer (no idle pool).
    let pem = std::fs::read(t.dir.path().join("tls/cert.pem")).unwrap();
    let fresh = || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let enroll = fresh()
        .post(format!("{}/api/agents/enroll", t.base))
        .bearer_auth(ADMIN)
        .json(&json!({"hostname": "host-a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(enroll.status(), StatusCode::CREATED);
    let enrolled: Value = enroll.json().await.unwrap();
    let token = enrolled["data"]["token"].as_str().unwrap().to_owned();
    until(0).await;

    // An event stream holds a slot until its agent drops it.
    let agent = fresh();
    let mut events = agent
        .get(format!("{}/api/events", t.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    until(1).await;
    // Silent sockets fill the rest of the cap; one more is refused at accept, taking no slot.
    let addr = t.server().local_addr();
    let mut silent = Vec::new();
    for _ in 0..7 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    until(8).await;
    let mut buf = [0u8; 16];
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    let read = tokio::time::timeout(DEADLINE, over.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    assert_eq!(open(), 8, "a refused connection took a slot");
    // Three closed by their client before any handshake, four cut by the handshake timeout.
    silent.truncate(4);
    until(5).await;
    for socket in &mut silent {
        let read = tokio::time::timeout(DEADLINE, socket.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    }
    until(1).await;
    // The stream was alive all along; dropping it frees its slot.
    let first = tokio::time::timeout(DEADLINE, events.chunk()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "{first:?}");
    drop(events);
    drop(agent);
    until(0).await;
}
