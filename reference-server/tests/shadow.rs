//! Shadow runs over real TLS with real event streams: `POST /api/policy?shadow=true` starts a
//! run without touching the enforced version, streams get `shadow` (and `shadow_end` when it
//! is ended), new streams get the running one after their policy; shadow reports in
//! heartbeats are checked against what the server sent (422 at their path, audited); checked
//! reports make the difference of `GET /api/policy/shadow`.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn candidate() -> Value {
    json!({"name": "candidate", "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 3, "duration": "24h", "scope": "host"}},
        {"type": "auto_respond", "mode": "shadow", "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.5}}
    ]})
}

fn report(version: &str, enforced: Value, candidate: Value) -> Value {
    let mut shadow = json!({"since": "2026-03-07T12:00:00.000Z",
        "enforced": {"version": version, "rules": enforced}});
    if !candidate.is_null() {
        shadow["candidate"] = candidate;
    }
    json!({"policyVersion": version, "shadow": shadow})
}

#[tokio::test]
async fn a_shadow_run_is_pushed_checked_and_compared_without_touching_the_enforced_version() {
    let t = TestServer::start(true).await;
    let (agent, token) = t.enroll(ADMIN, "web-shadow").await;
    let mut stream = t.stream(&token, "default").await;
    t.post_policy(ADMIN, block_ip_policy("base", 50)).await;
    assert_eq!(stream.next_policy().await.id, "1");

    // Flags: `true` or `false` only, and not both.
    for (query, message) in [
        (
            "shadow=yes",
            "query parameter `shadow` must be `true` or `false`, found `yes`",
        ),
        (
            "shadow=true&dryRun=true",
            "query parameters `dryRun` and `shadow` cannot both be `true`",
        ),
    ] {
        let (status, body) = t
            .call(
                Method::POST,
                &format!("/api/policy?{query}"),
                Some(ADMIN),
                Some(candidate()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["message"], message);
    }
    // The document is validated as a post is.
    let mut bad = candidate();
    bad["rules"][1]["mode"] = json!("dry");
    let (status, body) = t
        .call(
            Method::POST,
            "/api/policy?shadow=true",
            Some(ADMIN),
            Some(bad),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], "rules[1].mode");
    assert_eq!(
        body["error"]["message"],
        "unknown mode `dry`, expected `enforce` or `shadow`"
    );

    let (status, body) = t
        .call(
            Method::POST,
            "/api/policy?shadow=true",
            Some(ADMIN),
            Some(candidate()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = &body["data"];
    assert_eq!(
        (
            run["shadow"].clone(),
            run["rules"].clone(),
            run["sentTo"].clone()
        ),
        (json!(1), json!(2), json!(1))
    );
    let event = stream.next_event().await;
    // No `id:` of its own: the stream's last event id stays the policy version.
    assert_eq!((event.event.as_str(), event.id.as_str()), ("shadow", "1"));
    assert_eq!(event.data["shadow"], 1);
    assert_eq!(event.data["rules"][1]["mode"], "shadow");
    assert_eq!(event.data["rules"][0]["enabled"], true, "normalized");
    // Rules in the API page's field order, as the `policy` event writes them.
    assert!(
        event.raw.contains(r#"{"type":"block_ip","config":{"trigger":"brute_force","threshold":3,"duration":"24h","scope":"host"},"enabled":true}"#),
        "{}",
        event.raw
    );
    let (_, active) = t.get("/api/policy/active", ADMIN).await;
    assert_eq!(
        active["data"]["version"], "v1",
        "the enforced version stays"
    );
    // A stream opened while the run runs gets its policy, then the run.
    stream.close();
    let mut stream = t.stream(&token, "default").await;
    assert_eq!(stream.next_policy().await.id, "1");
    assert_eq!(stream.next_event().await.event, "shadow");

    // Reports are checked against what was sent to this agent.
    let beat = format!("/api/agents/{agent}/heartbeat");
    let refusals = [
        (
            report("v2", json!([]), Value::Null),
            "shadow.enforced.version",
            "policy version `v2` was not sent to this agent",
        ),
        (
            report(
                "v1",
                json!([{"rule": 2, "actions": {"alert": 1}}]),
                Value::Null,
            ),
            "shadow.enforced.rules[0].rule",
            "the version has no rule 2 (it has 2 rules)",
        ),
        (
            report(
                "v1",
                json!([{"rule": 0, "actions": {"kill_process": 1}}]),
                Value::Null,
            ),
            "shadow.enforced.rules[0].actions.kill_process",
            "rule 0 is `block_ip`, which cannot produce `kill_process`",
        ),
        (
            report("v1", json!([]), json!({"shadow": 9, "rules": []})),
            "shadow.candidate.shadow",
            "shadow run 9 was not sent to this agent",
        ),
        (
            report(
                "v1",
                json!([]),
                json!({"shadow": 1, "rules": [{"rule": 1, "actions": {"kill_process": 1},
                    "samples": [{"action": "block_ip", "target": "203.0.113.7", "at": "2026-03-07T12:00:01.000Z"}]}]}),
            ),
            "shadow.candidate.rules[0].samples[0].action",
            "`block_ip` is not among the rule's counted actions",
        ),
    ];
    for (body, path, message) in &refusals {
        let (status, answer) = t.post(&beat, &token, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(
            (
                answer["error"]["path"].as_str(),
                answer["error"]["message"].as_str()
            ),
            (Some(*path), Some(*message))
        );
    }
    // The refused heartbeats still counted: the agent was seen and runs v1.
    let (_, agents) = t.get("/api/agents", ADMIN).await;
    assert_eq!(agents["data"][0]["policyVersion"], "v1");
    assert!(agents["data"][0]["lastSeen"].is_string(), "{agents}");
    let (_, audit) = t.get("/api/audit?action=shadow_report", ADMIN).await;
    assert_eq!(
        audit["data"]["entries"].as_array().unwrap().len(),
        refusals.len()
    );
    assert_eq!(audit["data"]["entries"][0]["outcome"], "refused");
    // Every error of a report comes in one answer, the enforced side's and the candidate's
    // (probe 3, finding 6: only the first came).
    let (status, answer) = t
        .post(
            &beat,
            &token,
            report(
                "v1",
                json!([{"rule": 2, "actions": {"alert": 1}}, {"rule": 0, "actions": {"kill_process": 1}}]),
                json!({"shadow": 1, "rules": [{"rule": 5, "actions": {"alert": 1}}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let errors: Vec<(&str, &str)> = answer["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [
            (
                "shadow.enforced.rules[0].rule",
                "the version has no rule 2 (it has 2 rules)"
            ),
            (
                "shadow.enforced.rules[1].actions.kill_process",
                "rule 0 is `block_ip`, which cannot produce `kill_process`"
            ),
            (
                "shadow.candidate.rules[0].rule",
                "the version has no rule 5 (it has 2 rules)"
            ),
        ]
    );
    assert_eq!(
        answer["error"]["path"], "shadow.enforced.rules[0].rule",
        "the first error is the envelope's"
    );

    // Times of the agent's clock more than 5 minutes ahead of the server's are refused (probe
    // 3: a `since` in 2099 was counted); a clock 2 minutes ahead is within the tolerance.
    let mut ahead = report(
        "v1",
        json!([]),
        json!({"shadow": 1, "rules": [{"rule": 0, "actions": {"block_ip": 1}, "samples": [
            {"action": "block_ip", "target": "203.0.113.7", "at": "2099-01-01T00:00:01.000Z"}]}]}),
    );
    ahead["shadow"]["since"] = json!("2099-01-01T00:00:00.000Z");
    let (status, answer) = t.post(&beat, &token, ahead).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let errors = error_list(&answer);
    assert_eq!(
        errors.iter().map(|(path, _)| *path).collect::<Vec<_>>(),
        ["shadow.since", "shadow.candidate.rules[0].samples[0].at"],
        "{answer}"
    );
    for ((_, message), at) in errors
        .iter()
        .zip(["2099-01-01T00:00:00.000Z", "2099-01-01T00:00:01.000Z"])
    {
        let expected =
            format!("`{at}` is in the future: more than 5 minutes ahead of the server's clock (");
        assert!(message.starts_with(&expected), "{message}");
    }
    let mut skewed = report("v1", json!([]), Value::Null);
    let soon = chrono::Utc::now() + chrono::TimeDelta::minutes(2);
    skewed["shadow"]["since"] = json!(soon.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let (status, answer) = t.post(&beat, &token, skewed).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // A checked report makes the difference; the shadow-mode rule of the run is not counted
    // as something it would execute.
    let good = report(
        "v1",
        json!([{"rule": 0, "actions": {"block_ip": 1}}]),
        json!({"shadow": 1, "rules": [
            {"rule": 0, "actions": {"block_ip": 4}, "samples": [
                {"action": "block_ip", "target": "203.0.113.7", "at": "2026-03-07T12:00:01.000Z"},
                {"action": "block_ip", "target": "203.0.113.7", "at": "2026-03-07T12:00:02.000Z"}]},
            {"rule": 1, "actions": {"kill_process": 2}}]}),
    );
    let (status, answer) = t.post(&beat, &token, good).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["acceptsShadow"], true);
    let (status, diff) = t.get("/api/policy/shadow", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    assert_eq!(
        diff["data"]["rules"],
        json!([{"rule": 0, "type": "block_ip", "enforcedType": "block_ip",
            "shadow": {"block_ip": 4}, "enforced": {"block_ip": 1},
            "added": {"block_ip": 3}, "removed": {},
            "topTargets": [{"action": "block_ip", "target": "203.0.113.7", "count": 2}],
            "byAgent": [{"agentId": agent, "shadow": 4, "enforced": 1}]}])
    );
    assert_eq!(diff["data"]["agents"], json!({"total": 1, "reporting": 1}));
    assert_eq!(diff["data"]["shadowRules"], json!([]));

    // Ending it: the stream gets `shadow_end`; a second end is a 404.
    let (status, ended) = t
        .call(Method::DELETE, "/api/policy/shadow", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    let event = stream.next_event().await;
    assert_eq!(
        (event.event.as_str(), event.data.clone()),
        ("shadow_end", json!({"shadow": 1}))
    );
    let (status, again) = t
        .call(Method::DELETE, "/api/policy/shadow", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{again}");
    assert_eq!(again["error"]["message"], "no shadow run in org `default`");
    // An agent away when the run ended learns it on its next connect (it was never told, and
    // an agent ends a run only on `shadow_end`).
    let mut back = t.stream(&token, "default").await;
    assert_eq!(back.next_event().await.event, "policy");
    let event = back.next_event().await;
    assert_eq!(
        (event.event.as_str(), event.data.clone()),
        ("shadow_end", json!({"shadow": 1}))
    );
    back.close();
    let (_, audit) = t.get("/api/audit?action=shadow_started", ADMIN).await;
    assert_eq!(audit["data"]["entries"][0]["detail"]["shadow"], 1);
    stream.close();
}
